//! `ecr-replicator copy` to and from an OCI image layout in S3 (`oci:s3://BUCKET/PREFIX:REF`),
//! on moto's S3 with bucket versioning on: every `PutObject` and completed multipart upload adds
//! a version, so counting versions counts writes (moto keeps no request log).

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{BucketVersioningStatus, ServerSideEncryption, VersioningConfiguration};
use axum::http::Method;
use e2e::fake::{FakeRegistry, Fault, FaultRule};
use e2e::image::{multi_arch, Format, ImageBuilder, Pusher, TestImage};
use e2e::moto::{create_bucket_at, Moto};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::Value;

const BUCKET: &str = "air-gap";

/// moto with a versioned bucket, and an S3 client on it.
struct S3Rig {
    moto: Moto,
    s3: aws_sdk_s3::Client,
}

impl S3Rig {
    async fn start() -> Self {
        let moto = Moto::start();
        create_bucket_at(&moto.url, BUCKET).await;
        let config = ecr::sdk_config(&moto.aws_settings(), "us-east-1", None).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        s3.put_bucket_versioning()
            .bucket(BUCKET)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        S3Rig { moto, s3 }
    }

    /// A new symmetric KMS key in moto (SSE-KMS): its ARN and id.
    async fn kms_key(&self) -> (String, String) {
        let config = ecr::sdk_config(&self.moto.aws_settings(), "us-east-1", None).await;
        let created = aws_sdk_kms::Client::new(&config)
            .create_key()
            .send()
            .await
            .unwrap();
        let key = created.key_metadata().unwrap();
        (key.arn().unwrap().to_string(), key.key_id().to_string())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"));
        command.args(args);
        self.environment(&mut command);
        command
    }

    /// The CLI's environment: moto for AWS, no registry credentials.
    fn environment(&self, command: &mut Command) {
        command
            .env_remove("ECR_REPLICATOR_SRC_CREDS")
            .env_remove("ECR_REPLICATOR_DEST_CREDS")
            .env_remove("AWS_PROFILE")
            .env("REGISTRY_AUTH_FILE", "/nonexistent")
            .env("HOME", "/nonexistent")
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    fn copy(&self, from: &str, to: &str, insecure: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "copy",
            from,
            to,
            "--output",
            "json",
            "--insecure-registry",
            insecure,
        ];
        args.extend_from_slice(extra);
        self.command(&args).output().unwrap()
    }

    fn copy_ok(&self, from: &str, to: &str, insecure: &str, extra: &[&str]) -> Value {
        let out = self.copy(from, to, insecure, extra);
        assert!(
            out.status.success(),
            "copy {from} {to} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every key under `prefix` with how many versions it has (one per write).
    async fn versions(&self, prefix: &str) -> BTreeMap<String, usize> {
        let listed = self
            .s3
            .list_object_versions()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        assert!(!listed.is_truncated().unwrap_or(false), "more than a page");
        let mut counts = BTreeMap::new();
        for version in listed.versions() {
            *counts
                .entry(version.key().unwrap().to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        let object = self
            .s3
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
        object.body.collect().await.unwrap().into_bytes().to_vec()
    }

    /// The keys of multipart uploads in progress under `prefix` (moto's ListParts answer is
    /// one the SDK cannot read, so parts are not counted).
    async fn uploads_in_progress(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .s3
            .list_multipart_uploads()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        listed
            .uploads()
            .iter()
            .map(|u| u.key().unwrap().to_string())
            .collect()
    }
}

fn blob_key(prefix: &str, digest: &str) -> String {
    format!("{prefix}/blobs/sha256/{}", &digest[7..])
}

/// Every blob of an image and its children.
fn all_blobs(image: &TestImage) -> Vec<String> {
    let mut blobs: Vec<String> = image.blobs.iter().map(|b| b.digest.clone()).collect();
    for child in &image.children {
        blobs.extend(all_blobs(child));
    }
    blobs
}

async fn push(registry: &TestRegistry, repository: &str, image: &TestImage) {
    Pusher::new(&registry.host, None)
        .push(repository, "v1", image)
        .await;
}

/// GIVEN an index image and an image with a 20 MiB layer (three parts) in a registry WHEN the
/// CLI exports both to one S3 layout with a KMS key and imports them into another registry
/// THEN the manifests (skopeo inspect --raw) and every layer's bytes are the source's, each
/// object is SSE-KMS under the key; a second export reads no source blob and writes nothing.
#[tokio::test]
async fn s3_layout_round_trip_is_byte_identical_and_a_second_export_writes_nothing() {
    let rig = S3Rig::start().await;
    let (key_arn, key_id) = rig.kms_key().await;
    let src = TestRegistry::start();
    let index = multi_arch(45, 2, 60_000);
    let big = ImageBuilder::new(Format::Oci)
        .layer(46, 4096)
        .big_layer(47, 20 << 20)
        .build();
    push(&src, "team/app", &index).await;
    push(&src, "team/big", &big).await;
    let layout = format!("oci:s3://{BUCKET}/exports/q4");
    let kms_flag = ["--layout-kms-key", key_arn.as_str()];
    for repository in ["team/app", "team/big"] {
        let from = format!("{}/{repository}:v1", src.host);
        let report = rig.copy_ok(&from, &layout, &src.host, &kms_flag);
        assert_eq!(report["alreadyPresent"], false);
        assert_eq!(
            report["target"],
            format!("oci:s3://{BUCKET}/exports/q4:{repository}:v1")
        );
    }
    let written = rig.versions("exports/q4/").await;
    assert_eq!(
        rig.get("exports/q4/oci-layout").await,
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let layer = &big.blobs.last().unwrap().digest;
    let head = rig
        .s3
        .head_object()
        .bucket(BUCKET)
        .key(blob_key("exports/q4", layer))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(20 << 20));
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    assert!(head.ssekms_key_id().unwrap_or_default().contains(&key_id));

    let dst = TestRegistry::start();
    for (repository, image) in [("team/app", &index), ("team/big", &big)] {
        let from = format!("{layout}:{repository}:v1");
        let report = rig.copy_ok(
            &from,
            &format!("{}/back/{repository}", dst.host),
            &dst.host,
            &[],
        );
        assert_eq!(report["digest"], image.digest);
        let raw = skopeo::inspect_raw(&format!("{}/back/{repository}:v1", dst.host), None);
        assert_eq!(
            raw,
            image.manifest.to_vec(),
            "{repository}: manifest changed"
        );
        assert_eq!(
            skopeo::inspect_raw(&format!("{}/{repository}:v1", src.host), None),
            raw
        );
        for blob in all_blobs(image) {
            let copied = std::fs::read(dst.blob_data_path(&blob)).unwrap();
            assert_eq!(
                copied,
                std::fs::read(src.blob_data_path(&blob)).unwrap(),
                "{blob}"
            );
        }
    }

    let gets = src.count_requests("GET", "/blobs/", 200);
    for repository in ["team/app", "team/big"] {
        let from = format!("{}/{repository}:v1", src.host);
        let again = rig.copy_ok(&from, &layout, &src.host, &kms_flag);
        assert_eq!(again["alreadyPresent"], true, "{again}");
        assert_eq!(again["blobsCopied"], 0);
    }
    assert_eq!(
        src.count_requests("GET", "/blobs/", 200),
        gets,
        "a source blob was read"
    );
    assert_eq!(
        rig.versions("exports/q4/").await,
        written,
        "an object was written again"
    );
}

/// GIVEN an export killed while a 128 MiB layer's multipart upload is under way WHEN it runs
/// again THEN the layout ends complete and imports, the blobs written before the kill are not
/// written again, and the killed upload never became an object (it stays incomplete, ignored).
#[tokio::test]
async fn a_killed_export_resumes_without_rewriting_what_it_wrote() {
    let rig = S3Rig::start().await;
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci)
        .layer(50, 2048)
        .layer(51, 300_000)
        .big_layer(52, 128 << 20)
        .build();
    push(&src, "team/big", &image).await;
    let from = format!("{}/team/big:v1", src.host);
    let layout = format!("oci:s3://{BUCKET}/resume");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = rig
        .command(&["copy", &from, &layout, "--insecure-registry", &src.host])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    // The 128 MiB upload takes seconds on moto: killed a second into it, parts are up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the export ended ({status}) before it was killed: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        if seen.is_none() && !rig.uploads_in_progress("resume/").await.is_empty() {
            seen = Some(Instant::now());
        }
        if seen.is_some_and(|at| at.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "no multipart upload seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let big = blob_key("resume", &image.blobs.last().unwrap().digest);
    let before = rig.versions("resume/").await;
    assert!(
        !before.contains_key(&big),
        "the cut upload became an object"
    );
    assert!(
        !before.contains_key("resume/index.json"),
        "index.json written"
    );

    let report = rig.copy_ok(&from, &layout, &src.host, &[]);
    let total = image.blobs.len();
    let already = before.len();
    assert_eq!(
        report["blobsCopied"],
        total - already,
        "{report} ({before:?})"
    );
    let after = rig.versions("resume/").await;
    for (key, count) in &before {
        assert_eq!(after.get(key), Some(count), "{key} was written again");
    }
    assert_eq!(after.get(&big), Some(&1));
    let stale = rig.uploads_in_progress("resume/").await;
    assert_eq!(
        stale.len(),
        1,
        "the killed upload is left for the lifecycle rule: {stale:?}"
    );

    let dst = TestRegistry::start();
    let back = format!("{}/back/big", dst.host);
    rig.copy_ok(&format!("{layout}:team/big:v1"), &back, &dst.host, &[]);
    assert_eq!(
        skopeo::inspect_raw(&format!("{back}:v1"), None),
        image.manifest.to_vec()
    );
}

/// GIVEN an S3 layout whose layer object was overwritten with other bytes WHEN it is imported
/// THEN the copy fails naming the object's key and the digest, and nothing is tagged.
#[tokio::test]
async fn tampered_blob_in_s3_is_refused_naming_its_key() {
    let rig = S3Rig::start().await;
    let src = TestRegistry::start();
    let image = multi_arch(53, 2, 50_000);
    push(&src, "team/app", &image).await;
    let layout = format!("oci:s3://{BUCKET}/tamper");
    rig.copy_ok(
        &format!("{}/team/app:v1", src.host),
        &layout,
        &src.host,
        &[],
    );
    let layer = image.children[0].blobs.last().unwrap().digest.clone();
    let key = blob_key("tamper", &layer);
    let mut bytes = rig.get(&key).await;
    bytes[0] ^= 0xff;
    rig.put(&key, bytes).await;

    let dst = TestRegistry::start();
    let out = rig.copy(
        &format!("{layout}:team/app:v1"),
        &format!("{}/back/app:v1", dst.host),
        &dst.host,
        &[],
    );
    assert!(!out.status.success(), "a tampered layout was imported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("s3://{BUCKET}/{key}")), "{stderr}");
    assert!(stderr.contains(&layer), "{stderr}");
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
}

/// Peak resident memory (KiB) of the CLI running `args`, as GNU time reports it.
fn peak_rss_kib(rig: &S3Rig, args: &[&str]) -> u64 {
    let mut command = Command::new("/usr/bin/time");
    command
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(args);
    rig.environment(&mut command);
    let out = command
        .output()
        .expect("GNU time (/usr/bin/time) is needed for this measurement");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap().trim().parse().unwrap()
}

/// GIVEN an image with a 256 MiB layer WHEN it is exported to S3 and imported back THEN the
/// CLI's peak memory stays far below the layer's size: one part at a time, never the blob.
#[tokio::test]
async fn a_256_mib_layer_goes_through_s3_in_flat_memory() {
    let rig = S3Rig::start().await;
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(54, 256 << 20)
        .build();
    push(&src, "team/big", &image).await;
    let layout = format!("oci:s3://{BUCKET}/big");
    let from = format!("{}/team/big:v1", src.host);
    let export = peak_rss_kib(
        &rig,
        &["copy", &from, &layout, "--insecure-registry", &src.host],
    );
    let dst = TestRegistry::start();
    let back = format!("{}/back/big", dst.host);
    let from_layout = format!("{layout}:team/big:v1");
    let import = peak_rss_kib(
        &rig,
        &[
            "copy",
            &from_layout,
            &back,
            "--insecure-registry",
            &dst.host,
        ],
    );
    eprintln!("peak RSS through S3: export {export} KiB, import {import} KiB (256 MiB layer)");
    assert!(export < 96 * 1024, "export peaked at {export} KiB");
    assert!(import < 96 * 1024, "import peaked at {import} KiB");
    assert_eq!(
        skopeo::inspect_raw(&format!("{back}:v1"), None),
        image.manifest.to_vec()
    );
}

/// GIVEN a source that drops the connection halfway through a 32 MiB layer WHEN it is exported
/// to S3 THEN the export fails naming the layer, its multipart upload is aborted (none left in
/// progress) and neither the layer nor index.json exists; run again on a healthy source, only
/// that layer is written, the others are not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_mid_blob_aborts_the_upload_and_the_rerun_writes_only_what_is_missing() {
    let rig = S3Rig::start().await;
    let image = ImageBuilder::new(Format::Oci)
        .layer(55, 2048)
        .layer(56, 32 << 20)
        .build();
    let layer = image.blobs.last().unwrap().digest.clone();
    let rule = FaultRule::new(Method::GET, &layer, Fault::ResetMidBody, 1);
    let src = FakeRegistry::start(&image, "v1", vec![rule]).await;
    let from = format!("{}/team/big:v1", src.host);
    let layout = format!("oci:s3://{BUCKET}/cut");

    let out = rig.copy(&from, &layout, &src.host, &[]);
    assert!(!out.status.success(), "a cut blob was exported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&layer[7..]), "{stderr}");
    let key = blob_key("cut", &layer);
    let before = rig.versions("cut/").await;
    assert!(!before.contains_key(&key), "the cut blob became an object");
    assert!(!before.contains_key("cut/index.json"), "index.json written");
    assert!(
        rig.uploads_in_progress("cut/").await.is_empty(),
        "the cut upload was not aborted"
    );

    let report = rig.copy_ok(&from, &layout, &src.host, &[]);
    assert_eq!(
        report["blobsCopied"],
        image.blobs.len() - before.len(),
        "{report}"
    );
    let after = rig.versions("cut/").await;
    for (key, count) in &before {
        assert_eq!(after.get(key), Some(count), "{key} was written again");
    }
    assert_eq!(after.get(&key), Some(&1));
}

/// GIVEN an S3 layout whose bucket is no S3 bucket name WHEN it is copied to THEN the CLI
/// refuses it naming the bucket, before any request.
#[test]
fn a_bad_bucket_name_is_refused_before_any_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args([
            "copy",
            "registry.example/team/app:v1",
            "oci:s3://Air_Gap/q4:team/app:v1",
        ])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"Air_Gap\" is not an S3 bucket name"),
        "{stderr}"
    );
}

/// GIVEN no bucket of the layout's name WHEN an image is exported to it THEN the export fails
/// naming the object it could not write and S3's NoSuchBucket.
#[tokio::test]
async fn a_missing_bucket_fails_the_export_naming_it() {
    let rig = S3Rig::start().await;
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci).layer(57, 1024).build();
    push(&src, "team/app", &image).await;
    let out = rig.copy(
        &format!("{}/team/app:v1", src.host),
        "oci:s3://no-such-bucket/q4",
        &src.host,
        &[],
    );
    assert!(!out.status.success(), "exported into no bucket");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("s3://no-such-bucket/q4/") && stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
}

/// GIVEN an allowlist listing `s3://air-gap/jobs` for export with a bucket owner and a KMS key
/// WHEN an export job names that layout (and the CLI no key) THEN the objects are SSE-KMS under
/// the allowlist's key; WHEN an import job reads it back with the same allowlist (import
/// allowed) into a registry THEN the image is byte-identical; the same import under an
/// allowlist that lets the layout only be exported into is refused naming the field.
#[tokio::test]
async fn layout_jobs_use_the_allowlists_bucket_owner_and_kms_key() {
    let rig = S3Rig::start().await;
    let (key_arn, key_id) = rig.kms_key().await;
    let src = TestRegistry::start();
    let image = multi_arch(48, 1, 30_000);
    push(&src, "team/app", &image).await;
    let dst = TestRegistry::start();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, value: Value| {
        let path = files.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path.display().to_string()
    };
    let allowlist = |import: bool| {
        serde_json::json!({
            "sources": [{"registry": src.host}],
            "destinations": [{"registry": dst.host}],
            "insecure": [src.host, dst.host],
            "layouts": [{"location": format!("s3://{BUCKET}/jobs"), "export": true,
                         "import": import, "bucketOwner": "123456789012", "kmsKey": key_arn}],
        })
    };
    let export = write(
        "export.json",
        serde_json::json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"layout": format!("s3://{BUCKET}/jobs")}],
        }),
    );
    let import = write(
        "import.json",
        serde_json::json!({
            "source": {"layout": format!("s3://{BUCKET}/jobs/")},
            "destinations": [{"registry": dst.host, "insecure": true}],
        }),
    );
    let both = write("both.json", allowlist(true));
    let sync = |input: &str, allowlist: &str| {
        rig.command(&[
            "sync",
            "--input",
            input,
            "--allowlist",
            allowlist,
            "--allow-unverified-layout",
        ])
        .output()
        .unwrap()
    };
    let out = sync(&export, &both);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = rig
        .s3
        .head_object()
        .bucket(BUCKET)
        .key("jobs/index.json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    assert!(head.ssekms_key_id().unwrap_or_default().contains(&key_id));

    let export_only = write("export-only.json", allowlist(false));
    let out = sync(&import, &export_only);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported: {stderr}");
    assert!(
        stderr.contains("source.layout") && stderr.contains("does not let jobs import here"),
        "{stderr}"
    );
    assert!(!skopeo::exists(&format!("{}/team/app:v1", dst.host)));

    let out = sync(&import, &both);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = skopeo::inspect_raw(&format!("{}/team/app:v1", dst.host), None);
    assert_eq!(raw, image.manifest.to_vec());
}
