//! `make bench-scale`: a fabricated catalog (default 10,000 repositories x 10 tags = 100,000
//! images) in a local distribution registry, replicated to an empty destination (dry run) and
//! to a destination that already holds everything (no-op run), through the CLI (`plan`,
//! `sync`) and through the real state machine (strict local Step Functions, real functions).
//! Prints wall time, Lambda invocations and child executions per 1,000 images, the largest
//! parent history and state payload, peak memory of the CLI, and the blob requests each
//! registry saw (a no-op run must make none).
//!
//! `SCALE_REPOS` and `SCALE_TAGS` change the catalog; `SCALE_SKIP_SFN=1` runs the CLI only;
//! `SCALE_RUNS` picks runs by name (comma-separated: `cli-plan`, `cli-sync`, `cli-verify`,
//! `sfn-dry`, `sfn-noop`, `sfn-verify`; all by default). The verify runs compare the source with
//! the full destination (`"mode": "verify"`): they must read no blob and find no difference.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::Instant;

use e2e::registry::TestRegistry;
use e2e::sfn::LocalStepFunctions;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::Digest as _;

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
    let (repositories, tags) = (env("SCALE_REPOS", 10_000), env("SCALE_TAGS", 10));
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
    let chosen = std::env::var("SCALE_RUNS").ok();
    let wanted = |run: &str| {
        chosen
            .as_deref()
            .is_none_or(|list| list.split(',').any(|r| r.trim() == run))
    };

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
            let calls_before: usize = sfn.invocations().values().sum();
            let by_function_before = sfn.invocations();
            let run = rt.block_on(sfn.execute_within(
                &arn,
                &job(&dest.host, kind),
                std::time::Duration::from_secs(3 * 3600),
            ));
            assert_eq!(run.status, "SUCCEEDED", "{name}: {}", run.cause);
            let calls: usize = sfn.invocations().values().sum::<usize>() - calls_before;
            let by_function: Vec<String> = sfn
                .invocations()
                .iter()
                .map(|(f, n)| {
                    format!(
                        "{f} {}",
                        n - by_function_before.get(f).copied().unwrap_or(0)
                    )
                })
                .collect();
            let blobs = (
                blob_requests(&src) - before.0,
                blob_requests(dest) - before.1,
            );
            let report = run.output.clone().unwrap_or_default();
            // Child executions: one per repository (no ranges or image children when nothing
            // is copied; a dry run plans without copying).
            let children = repositories;
            eprintln!(
                "{name}: {:.0} s, invocations {calls} ({}), parent history {} events, largest payload {} bytes",
                run.seconds,
                by_function.join(", "),
                run.events,
                run.largest_payload
            );
            rows.push(format!(
                "| {name} | {:.0} s | {:.0} | {:.0} | {} events | {} KiB | - | {} / {} | {} |",
                run.seconds,
                per_thousand(calls, images),
                per_thousand(children, images),
                run.events,
                run.largest_payload / 1024,
                blobs.0,
                blobs.1,
                outcome(&report),
            ));
        }
    }

    println!("\nScale: {repositories} repositories x {tags} tags = {images} images, one destination, maxConcurrency 200, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| run | wall | invocations / 1,000 images | child executions / 1,000 images | parent history | largest state | peak RSS (CLI) | blob requests (source / destination) | planned/present/failed (verify: identical/differences) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}
