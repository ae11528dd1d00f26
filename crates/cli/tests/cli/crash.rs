//! Crash safety of the copy steps. A 1 GiB image (a 664 MiB layer copied in 128 MiB segments
//! carried across invocations, three 120 MiB layers in whole-blob ranges) is replicated by
//! running each workflow step as its own process (`ecr-replicator step`, the Lambda functions'
//! code), the way the state machine chains them. In each of 10 rounds one process is killed
//! with SIGKILL at a random moment, as a Lambda timeout would, and the killed step is re-run
//! with the same input, as the state machine's retry does. After each kill no tag may point at
//! an incomplete image; after each re-run the target must hold the image byte for byte
//! (manifest via skopeo, every blob streamed and hashed). Prints how much work the re-runs
//! repeated.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::image::{Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 10;

fn image() -> TestImage {
    ImageBuilder::new(Format::Oci)
        .big_layer(11, 664 * MIB)
        .big_layer(12, 120 * MIB)
        .big_layer(13, 120 * MIB)
        .big_layer(14, 120 * MIB)
        .build()
}

/// Runs steps as processes; kills the one running when the deadline passes.
struct Driver<'a> {
    src: &'a TestRegistry,
    dst: &'a TestRegistry,
    image: &'a TestImage,
    started: Instant,
    kill_at: Option<Duration>,
    killed: Option<(String, Duration)>,
    /// Bytes reported by completed copy invocations.
    bytes_copied: u64,
    /// The blobs of the range being copied, and the bytes completed invocations reported for it.
    range_blobs: Vec<(String, u64)>,
    range_reported: u64,
    /// Bytes of blobs a killed invocation completed before it died: its re-run finds them
    /// present and reports nothing for them.
    completed_by_killed: u64,
    invocations: usize,
}

impl Driver<'_> {
    async fn step(&mut self, name: &str, input: &Value) -> Value {
        let mut retries = 0;
        loop {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
                .args(["step", name, "--input", "-"])
                .args(["--insecure-registry", &self.src.host])
                .args(["--insecure-registry", &self.dst.host])
                .env("HOME", "/nonexistent")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.to_string().as_bytes()).await.unwrap();
            drop(stdin);
            self.invocations += 1;
            let deadline = self
                .kill_at
                .map(|at| at.saturating_sub(self.started.elapsed()));
            let output = match deadline {
                Some(left) => {
                    let wait = child.wait();
                    tokio::pin!(wait);
                    tokio::select! {
                        _ = &mut wait => None,
                        _ = tokio::time::sleep(left) => Some(()),
                    }
                }
                None => None,
            };
            if output.is_some() {
                child.start_kill().unwrap(); // SIGKILL
                child.wait().await.unwrap();
                self.killed = Some((name.to_string(), self.started.elapsed()));
                self.kill_at = None;
                self.assert_no_partial_image_tagged().await;
                if name == "copy-blobs" {
                    self.count_blobs_completed_by_killed().await;
                }
                continue; // the state machine retries the step with the same input
            }
            let out = child.wait_with_output().await.unwrap();
            if out.status.success() {
                let value: Value = serde_json::from_slice(&out.stdout).unwrap();
                if name == "copy-blobs" {
                    let bytes = value["bytesCopied"].as_u64().unwrap();
                    self.bytes_copied += bytes;
                    self.range_reported += bytes;
                }
                return value;
            }
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            retries += 1;
            assert!(
                stderr.contains("ReplicationRetryable") && retries < 4,
                "{name} failed: {stderr}"
            );
        }
    }

    /// The killed copy's range: bytes of its blobs now complete in the target that no completed
    /// invocation reported (the killed one finished them).
    async fn count_blobs_completed_by_killed(&mut self) {
        let target = Pusher::new(&self.dst.host, None);
        let mut present = 0;
        for (digest, size) in &self.range_blobs {
            if target.has_blob("mirror/app", digest).await {
                present += size;
            }
        }
        self.completed_by_killed += present.saturating_sub(self.range_reported);
    }

    /// A tag in the target only ever names a complete image.
    async fn assert_no_partial_image_tagged(&self) {
        let target = Pusher::new(&self.dst.host, None);
        if target.manifest("mirror/app", "v1").await.is_some() {
            for blob in &self.image.blobs {
                assert!(
                    target.has_blob("mirror/app", &blob.digest).await,
                    "v1 is tagged but blob {} is missing",
                    blob.digest
                );
            }
        }
    }
}

/// What one replication did: the step killed and when, bytes copied, processes run.
struct Outcome {
    killed: Option<(String, Duration)>,
    bytes_copied: u64,
    completed_by_killed: u64,
    invocations: usize,
}

impl Outcome {
    /// Bytes sent twice: everything the completed invocations reported plus what killed ones
    /// completed, beyond the image's size.
    fn repeated(&self, total: u64) -> u64 {
        let sent = self.bytes_copied + self.completed_by_killed;
        assert!(
            sent >= total,
            "the run accounts for {sent} bytes of a {total}-byte image"
        );
        sent - total
    }
}

/// One replication of the image through the steps.
async fn replicate(
    src: &TestRegistry,
    dst: &TestRegistry,
    image: &TestImage,
    kill_at: Option<Duration>,
) -> Outcome {
    let job = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true, "repositoryPrefix": "mirror/"}],
        "rangeBytes": 128 * MIB,
    });
    let task = json!({
        "repository": "app", "digest": image.digest, "tags": ["v1"], "destination": 0,
        "targetRegistry": dst.host, "targetRepository": "mirror/app", "present": false,
    });
    let mut driver = Driver {
        src,
        dst,
        image,
        started: Instant::now(),
        kill_at,
        killed: None,
        bytes_copied: 0,
        range_blobs: Vec::new(),
        range_reported: 0,
        completed_by_killed: 0,
        invocations: 0,
    };
    let plan = driver
        .step("plan-image", &json!({"job": job, "images": [task]}))
        .await;
    let ranges = plan["ranges"].as_array().unwrap().clone();
    assert_eq!(ranges.len(), 4, "one segmented range and three blob ranges");
    let mut copies = Vec::new();
    for page_range in ranges {
        let (range, range_task) = (page_range["range"].clone(), page_range["image"].clone());
        let mut state = Value::Null;
        let blobs = match range.get("blobs") {
            Some(blobs) => blobs.as_array().unwrap().clone(),
            None => vec![range["blob"].clone()],
        };
        driver.range_blobs = blobs
            .iter()
            .map(|b| {
                (
                    b["digest"].as_str().unwrap().to_string(),
                    b["size"].as_u64().unwrap(),
                )
            })
            .collect();
        driver.range_reported = 0;
        loop {
            let out = driver
                .step(
                    "copy-blobs",
                    &json!({"job": job, "image": range_task, "range": range, "state": state}),
                )
                .await;
            state = out["state"].clone();
            if out["done"].as_bool().unwrap() {
                copies.push(out);
                break;
            }
        }
    }
    driver
        .step(
            "put-manifests",
            &json!({"job": job, "image": task, "copied": copies}),
        )
        .await;
    Outcome {
        killed: driver.killed,
        bytes_copied: driver.bytes_copied,
        completed_by_killed: driver.completed_by_killed,
        invocations: driver.invocations,
    }
}

async fn assert_target_holds(dst: &TestRegistry, src: &TestRegistry, image: &TestImage) {
    let copied = e2e::skopeo::inspect_raw(&format!("{}/mirror/app:v1", dst.host), None);
    assert_eq!(copied, image.manifest.to_vec());
    assert_eq!(
        copied,
        e2e::skopeo::inspect_raw(&format!("{}/app:v1", src.host), None)
    );
    let target = Pusher::new(&dst.host, None);
    for blob in &image.blobs {
        let (digest, size) = target
            .blob_digest("mirror/app", &blob.digest)
            .await
            .unwrap_or_else(|| panic!("blob {} missing", blob.digest));
        assert_eq!(
            (digest.as_str(), size),
            (blob.digest.as_str(), blob.data.size())
        );
    }
}

/// xorshift: reproducible kill times from a printed seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_copy_steps_resume_to_a_byte_identical_image_every_time() {
    let src = TestRegistry::start();
    let image = image();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let total: u64 = image.blobs.iter().map(|b| b.data.size()).sum();

    // A clean run sets the time scale.
    let clean_target = TestRegistry::start();
    let clean_started = Instant::now();
    let clean = replicate(&src, &clean_target, &image, None).await;
    let clean_time = clean_started.elapsed();
    assert_eq!(clean.bytes_copied, total);
    assert_target_holds(&clean_target, &src, &image).await;
    let clean_invocations = clean.invocations;
    drop(clean_target);

    let mut seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    eprintln!(
        "crash test: seed {seed}, clean run {clean_time:.1?} in {clean_invocations} invocations"
    );
    let mut repeated_total = 0;
    for round in 0..ROUNDS {
        let mut fraction = 0.02 + (next(&mut seed) % 1000) as f64 / 1000.0 * 0.9;
        let (dst, run, step, at) = loop {
            let dst = TestRegistry::start();
            let run = replicate(&src, &dst, &image, Some(clean_time.mul_f64(fraction))).await;
            match run.killed.clone() {
                Some((step, at)) => break (dst, run, step, at),
                // This run was faster than the clean one and ended first: kill earlier.
                None => fraction /= 2.0,
            }
        };
        assert_target_holds(&dst, &src, &image).await;
        let repeated = run.repeated(total);
        repeated_total += repeated;
        eprintln!(
            "round {round}: killed {step} at {at:.2?} ({:.0}% of a clean run); re-run ended byte-identical; repeated {} MiB in {} invocations",
            fraction * 100.0,
            repeated / MIB,
            run.invocations
        );
    }
    eprintln!(
        "crash test: {ROUNDS} of {ROUNDS} rounds byte-identical; repeated {} MiB in all, {:.1}% of the {} MiB copied per round on average",
        repeated_total / MIB,
        repeated_total as f64 / (ROUNDS as f64 * total as f64) * 100.0,
        total / MIB
    );
}
