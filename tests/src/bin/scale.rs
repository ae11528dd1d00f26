//! `make bench-scale`: the scale goals measured on the real state machine (strict local Step
//! Functions enforcing the 25,000-event history limit per execution, real functions under
//! `cargo lambda watch`), one `scale:` line per run:
//! `scale: run=<name> images=<n> repositories=<n> invocations=<n> children_standard=<n>
//! children_express=<n> states_entered=<n> billed_transitions=<n> parent_events=<n>
//! max_child_events=<n> failed=<n> wall_s=<n> stepfunctions_usd=<n> lambda_usd=<n>
//! estimated_usd=<n> report_invocations=<n> report_transitions=<n> report_usd=<n>`
//! (`states_entered`: in STANDARD executions, parent and children; `billed_transitions`: those
//! and one for each child a Distributed Map started, EXPRESS ones included, as AWS bills them;
//! the dollars at the cost model's prices, `replication::cost::CostModel`, us-east-1 unless
//! `ECR_REPLICATOR_PRICES` says otherwise: Step Functions from the rig's counts and its EXPRESS
//! children's measured time, Lambda from the invocations and their measured time at the
//! model's memory; `estimated_usd` is both; the last three: what the run's report counted,
//! its dollars including data transfer).
//!
//! The catalog runs: a fabricated catalog (default 10,000 repositories x 10 tags = 100,000
//! images, distinct manifests sharing one config and one layer) replicated to an empty
//! destination (dry run) and to one that holds everything (no-op), through the CLI (`cli-plan`,
//! `cli-sync`, `cli-verify`: wall time, peak RSS) and the state machine (`sfn-dry`, `sfn-noop`,
//! `sfn-verify`); blob requests are counted from each registry's access log (a no-op run must
//! make none). `SCALE_REPOS`/`SCALE_TAGS` change the catalog.
//!
//! The size cases (`size_cases`): `sfn-first-1k` (10 repositories x 100 tags),
//! `sfn-first-1k-repos` (1,000 repositories x 1 tag), `sfn-noop-10x10k`, `sfn-noop-1x30k`,
//! `sfn-filter-30k`, `sfn-noop-30k-repos`, `sfn-first-30k-3dest`; `SCALE_SIZE_PERCENT` shrinks
//! them. The slow-registry cases (`slow_cases`): `sfn-gated-slow`, `sfn-verify-slow`, a
//! repository a serial loop could not finish within the function's deployed timeout, each
//! request to the registries delayed. `sfn-gated-noop-ecr` (`gated_ecr`): a gated no-op with
//! referrers on, on the ECR profile, with the source's requests per image. `SCALE_RUNS` picks runs by name (comma-separated; all by default); `SCALE_SKIP_SFN=1`
//! runs the CLI only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::Instant;

use e2e::registry::TestRegistry;
use e2e::sfn::LocalStepFunctions;
use futures::StreamExt;
use replication::cost::{Cost, CostModel, MAP_CHILD_START_TRANSITIONS};
use serde_json::{json, Value};
use sha2::Digest as _;

#[path = "scale/gated_ecr.rs"]
mod gated_ecr;

const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
const LAYER: &[u8] = b"ecr-replicator scale catalog layer";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A distinct manifest per image, all sharing one config and one layer.
fn manifest(repository: &str, tag: &str) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(CONFIG), "size": CONFIG.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(LAYER), "size": LAYER.len()}],
        "annotations": {"org.example.image": format!("{repository}:{tag}")}
    })
    .to_string()
    .into_bytes()
}

fn repository(i: usize) -> String {
    format!("team{:03}/service{:05}", i % 100, i)
}

/// Pushes the catalog: per repository the two blobs (one POST each, monolithic) and a manifest
/// per tag.
async fn seed(registry: &str, repositories: usize, tags: usize) {
    let http = reqwest::Client::new();
    futures::stream::iter(0..repositories)
        .for_each_concurrent(32, |i| {
            let http = http.clone();
            async move {
                let repo = repository(i);
                for blob in [CONFIG, LAYER] {
                    // Monolithic: POST opens a session, one PUT with the bytes completes it.
                    let started = http
                        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(started.status(), 202, "blob upload to {repo}");
                    let location = started.headers()["location"].to_str().unwrap().to_string();
                    let separator = if location.contains('?') { '&' } else { '?' };
                    let url = if location.starts_with("http") {
                        location.clone()
                    } else {
                        format!("http://{registry}{location}")
                    };
                    let resp = http
                        .put(format!("{url}{separator}digest={}", digest(blob)))
                        .header("content-type", "application/octet-stream")
                        .body(blob.to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201, "blob upload to {repo}");
                }
                for t in 0..tags {
                    let tag = format!("v1.{t}.0");
                    let resp = http
                        .put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
                        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                        .body(manifest(&repo, &tag))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201, "manifest {repo}:{tag}");
                }
            }
        })
        .await;
}

fn blob_requests(registry: &TestRegistry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| {
            l.contains("\"GET /v2/")
                || l.contains("\"HEAD /v2/")
                || l.contains("\"PUT /v2/")
                || l.contains("\"POST /v2/")
                || l.contains("\"PATCH /v2/")
        })
        .filter(|l| l.contains("/blobs/"))
        .count()
}

/// What the rig counted for a run, as a cost (the report's fields) priced by the cost model:
/// invocations and their measured time at the model's memory (`copy-blobs` at its copy
/// memory, the others at a call's), executions, billed transitions (states entered in STANDARD
/// executions and one per child a Distributed Map started), EXPRESS children and their
/// measured time at 64 MB. Returns it with the Step Functions part of its dollars.
fn rig_cost(
    invocations: usize,
    seconds: &std::collections::BTreeMap<String, f64>,
    execution: &e2e::sfn::Execution,
    children: &[e2e::sfn::ChildExecution],
) -> (Cost, f64) {
    let model = CostModel::from_env().expect("ECR_REPLICATOR_PRICES");
    let memory_mb = |function: &str| {
        if function == "copy-blobs" {
            model.copy_memory_mb
        } else {
            model.call_memory_mb
        }
    };
    let standard: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "STANDARD")
        .collect();
    let express: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "EXPRESS")
        .collect();
    let states_entered =
        execution.transitions + standard.iter().map(|c| c.transitions).sum::<usize>();
    let step_functions = Cost {
        standard_executions: 1 + standard.len() as u64,
        standard_transitions: (states_entered
            + children.len() * MAP_CHILD_START_TRANSITIONS as usize)
            as u64,
        express_executions: express.len() as u64,
        // Billed per 100 ms at least, in the first 64 MB step (these children only wait).
        express_gb_seconds: express.iter().map(|c| c.seconds.max(0.1)).sum::<f64>() * 0.0625,
        ..Cost::default()
    };
    let mut cost = Cost {
        lambda_invocations: invocations as u64,
        lambda_gb_seconds: seconds
            .iter()
            .map(|(function, s)| s * memory_mb(function) / 1024.0)
            .sum(),
        ..Cost::default()
    };
    cost.add(&step_functions);
    let step_functions_usd = model.priced(step_functions).estimated_usd;
    (model.priced(cost), step_functions_usd)
}

/// Runs one execution and returns its `scale:` line (the counts the issue's goals are stated
/// in), the execution, and the Lambda invocations it made.
fn measure_run(
    rt: &tokio::runtime::Runtime,
    sfn: &LocalStepFunctions,
    arn: &str,
    run: &str,
    input: &Value,
    (images, repositories): (usize, usize),
) -> (String, e2e::sfn::Execution, usize) {
    let calls_before: usize = sfn.invocations().values().sum();
    let seconds_before = sfn.invocation_seconds();
    let children_before = sfn.child_executions().len();
    let execution =
        rt.block_on(sfn.execute_within(arn, input, std::time::Duration::from_secs(6 * 3600)));
    let calls: usize = sfn.invocations().values().sum::<usize>() - calls_before;
    let mut seconds = sfn.invocation_seconds();
    for (function, before) in seconds_before {
        *seconds.entry(function).or_default() -= before;
    }
    let children: Vec<_> = sfn.child_executions().split_off(children_before);
    let standard: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "STANDARD")
        .collect();
    let express: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "EXPRESS")
        .collect();
    let states_entered =
        execution.transitions + standard.iter().map(|c| c.transitions).sum::<usize>();
    let (counted, stepfunctions_usd) = rig_cost(calls, &seconds, &execution, &children);
    let report = execution.output.clone().unwrap_or_default();
    let failed = report["failed"].as_u64().unwrap_or(0)
        + report["repositoriesFailed"].as_u64().unwrap_or(0)
        + u64::from(execution.status != "SUCCEEDED");
    eprintln!(
        "{run}: {} in {:.0} s, report {report}, {}",
        execution.status, execution.seconds, execution.cause
    );
    // What the run's report says it cost (its own count, next to the rig's).
    let cost = &report["cost"];
    let line = format!(
        "scale: run={run} images={images} repositories={repositories} invocations={calls} \
         children_standard={} children_express={} states_entered={states_entered} \
         billed_transitions={} parent_events={} max_child_events={} failed={failed} wall_s={:.0} \
         stepfunctions_usd={stepfunctions_usd:.4} lambda_usd={:.4} estimated_usd={:.4} \
         report_invocations={} report_transitions={} report_usd={:.4}",
        standard.len(),
        express.len(),
        counted.standard_transitions,
        execution.events,
        standard.iter().map(|c| c.events).max().unwrap_or(0),
        execution.seconds,
        counted.estimated_usd - stepfunctions_usd,
        counted.estimated_usd,
        cost["lambdaInvocations"].as_u64().unwrap_or(0),
        cost["standardTransitions"].as_u64().unwrap_or(0),
        cost["estimatedUsd"].as_f64().unwrap_or(0.0),
    );
    (line, execution, calls)
}

/// One size case: a source of `repositories` x `tags`, replicated into `destinations`
/// (already holding everything when `full`), the repositories selected by `filter`.
struct SizeCase {
    run: &'static str,
    repositories: usize,
    tags: usize,
    destinations: usize,
    full: bool,
    filter: Option<&'static str>,
}

/// The size cases of the scale goals, each on its own registries: a first sync of 1,000 small
/// images, no-op runs over deep repositories, a registry of 30,000 repositories with a filter
/// selecting 10, 30,000 selected repositories, and a repository of 30,000 images first-synced
/// into 3 destinations. Sizes scale with `SCALE_SIZE_PERCENT` (100 by default).
fn size_cases(
    rt: &tokio::runtime::Runtime,
    sfn: &LocalStepFunctions,
    arn: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let percent = std::env::var("SCALE_SIZE_PERCENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100);
    let scaled = |n: usize| (n * percent / 100).max(1);
    let case = |run, repositories, tags, destinations, full, filter| SizeCase {
        run,
        repositories,
        tags,
        destinations,
        full,
        filter,
    };
    let cases = [
        case("sfn-first-1k", 10, 100, 1, false, None),
        case("sfn-first-1k-repos", 1_000, 1, 1, false, None),
        case("sfn-noop-10x10k", 10, scaled(10_000), 1, true, None),
        case("sfn-noop-1x30k", 1, scaled(30_000), 1, true, None),
        case(
            "sfn-filter-30k",
            scaled(30_000),
            1,
            1,
            false,
            Some("team000/service0?000"),
        ),
        case("sfn-noop-30k-repos", scaled(30_000), 1, 1, true, None),
        case("sfn-first-30k-3dest", 1, scaled(30_000), 3, false, None),
    ];
    let mut lines = Vec::new();
    for c in cases {
        let (run, repositories, tags) = (c.run, c.repositories, c.tags);
        if !wanted(run) {
            continue;
        }
        let src = TestRegistry::start();
        let dests: Vec<TestRegistry> = (0..c.destinations).map(|_| TestRegistry::start()).collect();
        let began = Instant::now();
        rt.block_on(async {
            seed(&src.host, repositories, tags).await;
            if c.full {
                for d in &dests {
                    seed(&d.host, repositories, tags).await;
                }
            }
        });
        eprintln!("{run}: seeded in {:.0} s", began.elapsed().as_secs_f64());
        let mut input = json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": dests.iter().map(|d| json!({"registry": d.host, "insecure": true})).collect::<Vec<_>>(),
            "referrers": false,
            "maxConcurrency": 200
        });
        let selected = match c.filter {
            Some(glob) => {
                input["repositories"] = json!({"include": [glob]});
                (0..repositories)
                    .filter(|i| i % 1000 == 0 && *i < 10_000)
                    .count()
            }
            None => repositories,
        };
        let (line, _, _) = measure_run(rt, sfn, arn, run, &input, (selected * tags, selected));
        eprintln!("{line}");
        lines.push(line);
    }
    lines
}

struct Measured {
    seconds: f64,
    max_rss_mib: f64,
    report: Value,
}

/// Runs the CLI to completion: wall time, peak RSS, its JSON report.
fn cli(args: &[&str]) -> Measured {
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("ecr-replicator");
    let out = tempfile::NamedTempFile::new().unwrap();
    let m = e2e::measure::run_measured(
        Command::new(exe)
            .args(args)
            .args(["--output", "json"])
            .stdout(out.reopen().unwrap()),
    );
    let text = std::fs::read_to_string(out.path()).unwrap();
    let output: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ecr-replicator {args:?}: {e}: {text}"));
    Measured {
        seconds: m.seconds,
        max_rss_mib: m.max_rss_kib as f64 / 1024.0,
        report: output["report"].clone(),
    }
}

/// What a run does: plan (dry run), replicate, or verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Dry,
    Sync,
    Verify,
}

/// The report's outcome column: planned/present/failed, or for a verification
/// identical/differences.
fn outcome(report: &Value) -> String {
    match report.get("verify") {
        Some(verify) => {
            let differences: u64 = ["missing", "different", "extra", "settings"]
                .iter()
                .filter_map(|k| verify[*k].as_u64())
                .sum();
            format!("{}/{differences} (verify)", verify["identical"])
        }
        None => format!(
            "{}/{}/{}",
            report["planned"], report["present"], report["failed"]
        ),
    }
}

fn per_thousand(count: usize, images: usize) -> f64 {
    count as f64 * 1000.0 / images as f64
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let chosen = std::env::var("SCALE_RUNS").ok();
    let wanted = |run: &str| {
        chosen
            .as_deref()
            .is_none_or(|list| list.split(',').any(|r| r.trim() == run))
    };
    let catalog_runs = [
        "cli-plan",
        "cli-sync",
        "cli-verify",
        "sfn-dry",
        "sfn-noop",
        "sfn-verify",
    ];
    let catalog = catalog_runs.iter().any(|r| wanted(r));
    let (repositories, tags) = if catalog {
        (env("SCALE_REPOS", 10_000), env("SCALE_TAGS", 10))
    } else {
        (0, 0)
    };
    let images = repositories * tags;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (src, empty, full) = (
        TestRegistry::start(),
        TestRegistry::start(),
        TestRegistry::start(),
    );
    eprintln!("seeding {repositories} repositories x {tags} tags into the source and the full destination ...");
    let began = Instant::now();
    rt.block_on(async {
        futures::join!(
            seed(&src.host, repositories, tags),
            seed(&full.host, repositories, tags)
        );
    });
    eprintln!("seeded in {:.0} s", began.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let job = |dest: &str, run: Run| {
        json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dest, "insecure": true}],
            "referrers": false,
            "dryRun": run == Run::Dry,
            "mode": if run == Run::Verify { "verify" } else { "replicate" },
            "maxConcurrency": 200
        })
    };
    let write = |name: &str, value: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path.display().to_string()
    };
    let insecure = [
        "--insecure-registry",
        &src.host,
        "--insecure-registry",
        &empty.host,
        "--insecure-registry",
        &full.host,
    ];
    let mut rows = Vec::new();
    let mut lines = Vec::new();

    // The CLI: a dry run against the empty destination, a no-op sync against the full one.
    for (run, name, dest, kind) in [
        ("cli-plan", "CLI dry run (plan)", &empty, Run::Dry),
        ("cli-sync", "CLI no-op sync", &full, Run::Sync),
        ("cli-verify", "CLI verify", &full, Run::Verify),
    ] {
        if !wanted(run) {
            continue;
        }
        let before = (blob_requests(&src), blob_requests(dest));
        let input = write("job.json", &job(&dest.host, kind));
        let command = match kind {
            Run::Dry => "plan",
            Run::Sync => "sync",
            Run::Verify => "verify",
        };
        let mut args = vec![command, "--input", &input];
        args.extend(insecure);
        let m = cli(&args);
        let blobs = (
            blob_requests(&src) - before.0,
            blob_requests(dest) - before.1,
        );
        eprintln!(
            "{name}: {:.1} s, {:.0} MiB, report {}",
            m.seconds, m.max_rss_mib, m.report
        );
        rows.push(format!(
            "| {name} | {:.0} s | - | - | - | - | {:.0} MiB | {} / {} | {} |",
            m.seconds,
            m.max_rss_mib,
            blobs.0,
            blobs.1,
            outcome(&m.report),
        ));
    }

    if std::env::var("SCALE_SKIP_SFN").is_err() {
        let sfn = rt.block_on(LocalStepFunctions::start(&[]));
        let arn = rt.block_on(sfn.create_state_machine("replicate"));
        for (run, name, dest, kind) in [
            ("sfn-dry", "state machine dry run", &empty, Run::Dry),
            ("sfn-noop", "state machine no-op run", &full, Run::Sync),
            ("sfn-verify", "state machine verify", &full, Run::Verify),
        ] {
            if !wanted(run) {
                continue;
            }
            let before = (blob_requests(&src), blob_requests(dest));
            let (run_line, execution, calls) = measure_run(
                &rt,
                &sfn,
                &arn,
                run,
                &job(&dest.host, kind),
                (images, repositories),
            );
            let blobs = (
                blob_requests(&src) - before.0,
                blob_requests(dest) - before.1,
            );
            let report = execution.output.clone().unwrap_or_default();
            lines.push(run_line);
            rows.push(format!(
                "| {name} | {:.0} s | {:.0} | {} events | {} KiB | - | {} / {} | {} |",
                execution.seconds,
                per_thousand(calls, images),
                execution.events,
                execution.largest_payload / 1024,
                blobs.0,
                blobs.1,
                outcome(&report),
            ));
        }
        drop((src, empty, full));
        lines.extend(size_cases(&rt, &sfn, &arn, &wanted));
        lines.extend(slow_cases(&rt, &sfn, &arn, &wanted));
        drop(sfn);
        lines.extend(gated_ecr::gated_noop_ecr(&rt, &wanted));
    }

    if catalog {
        print_catalog_table(repositories, tags, rows);
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

fn print_catalog_table(repositories: usize, tags: usize, rows: Vec<String>) {
    let images = repositories * tags;
    println!("\nScale: {repositories} repositories x {tags} tags = {images} images, one destination, maxConcurrency 200, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| run | wall | invocations / 1,000 images | parent history | largest state | peak RSS (CLI) | blob requests (source / destination) | planned/present/failed (verify: identical/differences) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

/// The slow-registry cases: a repository whose images a serial loop could not get through in
/// its function's deployed timeout. Every registry is reached through an ECR data plane
/// (`EcrPlane`, ECR's behaviours off) adding `SCALE_SLOW_LATENCY_MS` (200) to each request, as
/// a registry across a network does and loopback does not; the functions run under their
/// deployed timeouts (the rig reads them from the synthesized template). `sfn-gated-slow`: a
/// first run with `requireSignature` over `SCALE_SLOW_IMAGES` (2,000) signed images (the
/// signature gate reads each image's signature in `enumerate-images`); `sfn-verify-slow`: a
/// verification of the same repository against a destination holding it all
/// (`verify-repository`). Each prints its `scale:` line and
/// `scale-slow: run=<name> outcome=<..> plane_requests=<n> serial_s=<n> timeout_s=<n>
/// function=<f>`: `serial_s` is the requests the run made times the latency, what one request
/// after another would have taken, next to the function's deployed timeout.
fn slow_cases(
    rt: &tokio::runtime::Runtime,
    sfn: &LocalStepFunctions,
    arn: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let runs = ["sfn-gated-slow", "sfn-verify-slow"];
    if !runs.iter().any(|r| wanted(r)) {
        return Vec::new();
    }
    let number = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let latency = std::time::Duration::from_millis(number("SCALE_SLOW_LATENCY_MS", 200));
    let images = number("SCALE_SLOW_IMAGES", 2_000) as usize;
    let deployed = e2e::deployed::functions();
    let (src, copy_dst, full_dst) = (
        TestRegistry::start(),
        TestRegistry::start(),
        TestRegistry::start(),
    );
    let began = Instant::now();
    rt.block_on(async {
        seed(&src.host, 1, images).await;
        seed(&full_dst.host, 1, images).await;
        sign_catalog(&src.host, images).await;
        // The destination a verification finds identical holds the signatures too.
        sign_catalog(&full_dst.host, images).await;
    });
    eprintln!(
        "slow cases: {images} signed images seeded in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    let slow = |registry: &TestRegistry| {
        let plane = e2e::ecr_plane::EcrPlane::start("slow.registry.example", &registry.host, None);
        plane.set(|b| {
            *b = e2e::ecr_plane::Behaviours::plain();
            b.latency = latency;
        });
        plane
    };
    let (src_plane, copy_plane, full_plane) = (slow(&src), slow(&copy_dst), slow(&full_dst));
    let job = |dest: &str, gated: bool| {
        let mut job = json!({
            "source": {"registry": src_plane.host, "insecure": true},
            "destinations": [{"registry": dest, "insecure": true}],
            "referrers": false,
            "maxConcurrency": 200
        });
        if gated {
            job["requireSignature"] = json!({"policy": e2e::sfn::RIG_TRUST_POLICY});
        } else {
            job["mode"] = json!("verify");
        }
        job
    };
    let mut lines = Vec::new();
    for (run, dest, gated, function) in [
        ("sfn-gated-slow", &copy_plane, true, "enumerate-images"),
        ("sfn-verify-slow", &full_plane, false, "verify-repository"),
    ] {
        if !wanted(run) {
            continue;
        }
        let before = src_plane.count("request") + dest.count("request");
        let (line, execution, _) =
            measure_run(rt, sfn, arn, run, &job(&dest.host, gated), (images, 1));
        let requests = src_plane.count("request") + dest.count("request") - before;
        let report = execution.output.clone().unwrap_or_default();
        let outcome = if execution.status == "SUCCEEDED" {
            match report.get("verify") {
                Some(_) => outcome(&report).replace(' ', "_"),
                None => format!("copied:{},failed:{}", report["copied"], report["failed"]),
            }
        } else {
            format!("{}:{}", execution.status, execution.cause.trim()).replace(' ', "_")
        };
        let slow_line = format!(
            "scale-slow: run={run} outcome={} plane_requests={requests} serial_s={:.0} \
             timeout_s={} function={function} latency_ms={}",
            outcome.chars().take(300).collect::<String>(),
            requests as f64 * latency.as_secs_f64(),
            deployed[function].timeout.as_secs(),
            latency.as_millis(),
        );
        eprintln!("{line}\n{slow_line}");
        lines.push(line);
        lines.push(slow_line);
    }
    lines
}

/// Signs every image `seed` pushed to the catalog's first repository with the rig's trust
/// policy key: a cosign signature under each image's `sha256-<hex>.sig` tag.
async fn sign_catalog(registry: &str, tags: usize) {
    let (key, _) = e2e::image::signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let repo = repository(0);
    let pusher = e2e::image::Pusher::new(registry, None);
    let sign = |t: usize| {
        let (pusher, key, repo) = (&pusher, &key, &repo);
        async move {
            let tag = format!("v1.{t}.0");
            let subject = digest(&manifest(repo, &tag));
            let signature = e2e::image::cosign_signature(&subject, key, false, None);
            let signature_tag = format!("{}.sig", subject.replacen(':', "-", 1));
            pusher.push(repo, &signature_tag, &signature).await;
        }
    };
    // The first alone: the signatures share their config blob, which concurrent uploads of the
    // same digest would race for.
    sign(0).await;
    futures::stream::iter(1..tags)
        .for_each_concurrent(16, sign)
        .await;
}
