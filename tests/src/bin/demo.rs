//! `make demo` (copy-engine stage): starts a source registry and two destinations standing for two
//! accounts/regions, pushes sample images, copies them with the real `ecr-replicator` binary,
//! prints what happened and checks every destination with skopeo. Stops everything on exit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use e2e::image::{multi_arch, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use e2e::skopeo;

fn main() {
    let cli = std::env::current_exe()
        .unwrap()
        .with_file_name("ecr-replicator");
    assert!(
        cli.exists(),
        "build the CLI first: cargo build --release -p ecr-replicator"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = TestRegistry::start();
    let destinations = [TestRegistry::start(), TestRegistry::start()];
    println!("source registry       {}", source.host);
    println!("destination 'eu-west' {}", destinations[0].host);
    println!("destination 'ap-south' {}", destinations[1].host);

    let images: Vec<(&str, &str, TestImage)> = vec![
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
            "services/web",
            "2024.06",
            ImageBuilder::new(Format::Oci)
                .layer(4, 1 << 20)
                .empty_layer()
                .build(),
        ),
        ("ml/base", "cuda-12", multi_arch(5, 2, 1 << 20)),
        (
            "ml/pytorch",
            "2.3",
            ImageBuilder::new(Format::Oci)
                .big_layer(6, 200 << 20)
                .layer(7, 10_000)
                .build(),
        ),
    ];
    let pusher = Pusher::new(&source.host, None);
    rt.block_on(async {
        for (repo, tag, image) in &images {
            pusher.push(repo, tag, image).await;
        }
    });
    println!("\npushed {} sample images to the source\n", images.len());

    println!(
        "{:<24} {:<9} {:<12} {:>7} {:>10} {:>8}",
        "image", "dest", "result", "blobs", "MiB", "seconds"
    );
    let mut failures = 0;
    for round in ["first run", "second run (nothing to do)"] {
        println!("-- {round}");
        for (repo, tag, image) in &images {
            for (d, dest) in destinations.iter().enumerate() {
                let out = Command::new(&cli)
                    .args([
                        "copy",
                        &format!("{}/{repo}:{tag}", source.host),
                        &format!("{}/{repo}:{tag}", dest.host),
                    ])
                    .args([
                        "--insecure-registry",
                        &source.host,
                        "--insecure-registry",
                        &dest.host,
                        "--output",
                        "json",
                    ])
                    .output()
                    .unwrap();
                if !out.status.success() {
                    failures += 1;
                    println!(
                        "{repo}:{tag} -> dest {d}: FAILED {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    continue;
                }
                let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let result = if r["alreadyPresent"] == true {
                    "present"
                } else {
                    "copied"
                };
                println!(
                    "{:<24} {:<9} {:<12} {:>7} {:>10.1} {:>8.2}",
                    format!("{repo}:{tag}"),
                    ["eu-west", "ap-south"][d],
                    result,
                    r["blobsCopied"].as_u64().unwrap_or(0),
                    r["bytesCopied"].as_f64().unwrap_or(0.0) / 1048576.0,
                    r["seconds"].as_f64().unwrap_or(0.0)
                );
                let raw = skopeo::inspect_raw(&format!("{}/{repo}:{tag}", dest.host), None);
                if raw != image.manifest.to_vec() {
                    failures += 1;
                    println!(
                        "  skopeo: manifest of {repo}:{tag} in dest {d} differs from the source!"
                    );
                }
            }
        }
    }
    if failures > 0 {
        eprintln!("\ndemo: {failures} failures");
        std::process::exit(1);
    }
    println!("\nskopeo confirms every destination holds byte-identical manifests (same digests).");
}
