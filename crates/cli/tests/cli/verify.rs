//! `ecr-replicator verify` against real distribution registries: exit 0 when every destination
//! is what the source says, exit 1 naming each difference (text and JSON), and no blob read.

use std::process::{Command, Output};

use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use serde_json::{json, Value};

fn verify(src: &TestRegistry, dst: &TestRegistry, job: &std::path::Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"));
    cmd.arg("verify")
        .arg("--input")
        .arg(job)
        .args([
            "--insecure-registry",
            &src.host,
            "--insecure-registry",
            &dst.host,
        ])
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent");
    if json {
        cmd.args(["--output", "json"]);
    }
    cmd.output().unwrap()
}

/// Requests for blobs (GET, HEAD, uploads) a registry has served so far.
fn blob_requests(registry: &TestRegistry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("/v2/") && l.contains("/blobs/"))
        .count()
}

#[tokio::test]
async fn verify_exits_0_when_identical_and_1_naming_each_difference_reading_no_blob() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let one = ImageBuilder::new(Format::Oci).layer(1, 500).build();
    let two = ImageBuilder::new(Format::Oci).layer(2, 500).build();
    Pusher::new(&src.host, None).push("app", "v1", &one).await;
    Pusher::new(&src.host, None).push("app", "v2", &two).await;
    let target = Pusher::new(&dst.host, None);
    target.push("app", "v1", &one).await;
    target.push("app", "v2", &two).await;
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dst.host, "insecure": true}]
        })
        .to_string(),
    )
    .unwrap();
    let blobs_before = (blob_requests(&src), blob_requests(&dst));

    let same = verify(&src, &dst, &job, false);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    let text = String::from_utf8_lossy(&same.stdout);
    assert!(
        text.contains(
            "2 image x destination pairs compared: 2 identical; 0 missing, 0 different, 0 extra"
        ),
        "{text}"
    );

    assert_eq!(
        (blob_requests(&src), blob_requests(&dst)),
        blobs_before,
        "a verify run read a blob"
    );

    target.push("app", "v2", &one).await; // now names another image
    target.push("app", "v3", &two).await; // only the destination has it
    let blobs_before_diff = (blob_requests(&src), blob_requests(&dst));
    let differs = verify(&src, &dst, &job, true);
    assert_eq!(differs.status.code(), Some(1));
    let output: Value = serde_json::from_slice(&differs.stdout).unwrap();
    let found: Vec<(&str, &str)> = output["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d["target"].as_str().unwrap()))
        .collect();
    let v2 = format!("{}/app:v2", dst.host);
    let v3 = format!("{}/app:v3", dst.host);
    assert_eq!(
        found,
        vec![("different", v2.as_str()), ("extra", v3.as_str())]
    );
    assert_eq!(output["report"]["verify"]["identical"], 1);
    let text = verify(&src, &dst, &job, false);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("different {v2}: names {}", one.digest)),
        "{text}"
    );
    assert!(
        text.contains(&format!("extra     {v3}: the source has no such tag")),
        "{text}"
    );

    // Listings and manifests only (the pushes above made their own blob requests).
    assert_eq!(
        (blob_requests(&src), blob_requests(&dst)),
        blobs_before_diff,
        "a verify run read a blob"
    );
}
