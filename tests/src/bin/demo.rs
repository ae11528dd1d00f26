//! `make demo`: the real state machine on moto's Step Functions interpreter, its Lambda tasks run
//! by the real function binaries behind `cargo lambda watch`, ECR and STS on moto, and distribution
//! registries as the data plane of a source account and two destination accounts/regions, each
//! behind a proxy that behaves as ECR's data plane does (`e2e::ecr_plane`).
//! Pushes sample images, runs a dry run and two real runs, prints the reports, checks every
//! destination with skopeo, and stops everything it started.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use e2e::image::{multi_arch, Format, ImageBuilder, TestImage};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST2, DEST2_ROLE, DEST_ROLE, SOURCE};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn samples() -> Vec<(&'static str, &'static str, TestImage)> {
    vec![
        (
            "services/api",
            "v1.2.3",
            ImageBuilder::new(Format::Docker)
                .layer(1, 2 << 20)
                .layer(2, 300_000)
                .build(),
        ),
        (
            "services/api",
            "v1.3.0",
            ImageBuilder::new(Format::Docker)
                .layer(1, 2 << 20)
                .layer(3, 400_000)
                .build(),
        ),
        (
            "services/api",
            "dev-7f3a",
            ImageBuilder::new(Format::Docker).layer(4, 100_000).build(),
        ),
        (
            "services/web",
            "v2024.6.0",
            // No 0-byte layer: ECR cannot store an empty blob (the data plane refuses it).
            ImageBuilder::new(Format::Oci)
                .layer(5, 1 << 20)
                .layer(10, 32)
                .build(),
        ),
        ("ml/base", "v12.4", multi_arch(6, 2, 1 << 20)),
        (
            "ml/pytorch",
            "v2.3.0",
            ImageBuilder::new(Format::Oci)
                .big_layer(7, 200 * MIB)
                .layer(8, 10_000)
                .build(),
        ),
        (
            "sandbox/tmp",
            "v0.0.1",
            ImageBuilder::new(Format::Oci).layer(9, 1000).build(),
        ),
    ]
}

fn print_report(title: &str, status: &str, report: &Value, note: &str) {
    println!(
        "{title:<28} {status:<10} images {:>3}  copied {:>3}  present {:>3}  planned {:>3}  failed {:>3}  {:>7.1} MiB  {note}",
        report["images"], report["copied"], report["present"], report["planned"], report["failed"],
        report["bytesCopied"].as_f64().unwrap_or(0.0) / MIB as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    println!("starting: registries (source, 2 destination accounts), moto (ECR, STS, Step Functions made as strict as AWS), cargo lambda watch, the functions");
    let (world, sfn) = EcrWorld::with_step_functions().await;
    for host in [SOURCE, DEST, DEST2] {
        println!(
            "  {host:<48} data plane http://{} (ECR's behaviour) over distribution at {}",
            world.plane(host).host,
            world.registry(host).host
        );
    }
    for (repo, tag, image) in samples() {
        world.seed(repo, tag, &image).await;
    }
    println!("pushed {} sample images to {SOURCE}\n", samples().len());
    let arn = sfn.create_state_machine("ecr-replicator").await;

    let job = json!({
        "source": {"registry": SOURCE},
        "destinations": [
            {"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"},
            {"registry": DEST2, "roleArn": DEST2_ROLE, "externalId": "ext-id-43", "repositoryPrefix": "mirror/"}
        ],
        "repositories": {"include": ["services/*", "ml/*"]},
        "tags": {"include": ["^v\\d+(\\.\\d+)+$"]},
        "rangeBytes": 64 * MIB,
        "maxConcurrency": 4
    });
    println!(
        "execution input:\n{}\n",
        serde_json::to_string_pretty(&job).unwrap()
    );
    let mut dry = job.clone();
    dry["dryRun"] = json!(true);
    let mut failures = 0;
    let mut calls_before = 0;
    for (title, input) in [
        ("dry run", &dry),
        ("first run", &job),
        ("second run (nothing to do)", &job),
    ] {
        let run = sfn.execute(&arn, input).await;
        let calls: usize = sfn.invocations().values().sum();
        // What the report says the run cost on AWS (a dry run: what the copy would cost).
        let report = run.output.clone().unwrap_or_default();
        let usd = |c: &serde_json::Value| c["estimatedUsd"].as_f64().unwrap_or(0.0);
        let cost = match report.get("plannedCost") {
            Some(planned) => format!("copy would cost ${:.5}", usd(planned)),
            None => format!("cost ${:.5}", usd(&report["cost"])),
        };
        let note = format!(
            "{:.1} s, {} Lambda invocations, {cost} {}",
            run.seconds,
            calls - calls_before,
            run.cause.trim()
        );
        calls_before = calls;
        print_report(title, &run.status, &run.output.unwrap_or_default(), &note);
        if run.status != "SUCCEEDED" {
            failures += 1;
        }
    }

    println!("\nchecked with skopeo inspect --raw (byte-identical manifests, same digests):");
    println!("{:<26} {:<10} {:<10} digest", "image", "dest 1", "dest 2");
    for (repo, tag, image) in samples() {
        let selected = !repo.starts_with("sandbox") && !tag.starts_with("dev");
        let mut cells = Vec::new();
        for (host, prefix) in [(DEST, ""), (DEST2, "mirror/")] {
            let reg = world.registry(host);
            let creds = ("AWS".to_string(), moto_token_password(host));
            let present = e2e::image::Pusher::new(&reg.host, Some(creds.clone()))
                .manifest(&format!("{prefix}{repo}"), tag)
                .await
                .is_some();
            let cell = match (selected, present) {
                (true, true)
                    if e2e::skopeo::inspect_raw(
                        &format!("{}/{prefix}{repo}:{tag}", reg.host),
                        Some(&creds),
                    ) == image.manifest.to_vec() =>
                {
                    "identical"
                }
                (false, false) => "skipped",
                _ => {
                    failures += 1;
                    "WRONG"
                }
            };
            cells.push(cell);
        }
        println!(
            "{:<26} {:<10} {:<10} {}",
            format!("{repo}:{tag}"),
            cells[0],
            cells[1],
            &image.digest[..19]
        );
    }
    drop(sfn);
    if failures > 0 {
        eprintln!("\ndemo: {failures} problems");
        std::process::exit(1);
    }
    println!("\ndemo: every selected image is in both destinations, unselected ones are not; everything stopped.");
}
