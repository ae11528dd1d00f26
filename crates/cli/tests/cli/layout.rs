//! `ecr-replicator copy` to and from an OCI image layout directory (`oci:DIR:REF`), checked
//! with skopeo reading the directory as is.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use e2e::image::{multi_arch, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::Value;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(args)
        .env_remove("ECR_REPLICATOR_SRC_CREDS")
        .env_remove("ECR_REPLICATOR_DEST_CREDS")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn copy(from: &str, to: &str, insecure: &str) -> Output {
    cli(&[
        "copy",
        from,
        to,
        "--output",
        "json",
        "--insecure-registry",
        insecure,
    ])
}

fn copy_ok(from: &str, to: &str, insecure: &str) -> Value {
    let out = copy(from, to, insecure);
    assert!(
        out.status.success(),
        "copy {from} {to} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every blob file's (inode, mtime), to see a second export rewrites none.
pub(crate) fn blob_files(dir: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.mtime(), m.mtime_nsec()),
            )
        })
        .collect()
}

async fn exported() -> (TestRegistry, TestImage, tempfile::TempDir) {
    let src = TestRegistry::start();
    let image = multi_arch(35, 2, 60_000);
    Pusher::new(&src.host, None)
        .push("team/app", "v1", &image)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}", dir.path().display());
    let report = copy_ok(&format!("{}/team/app:v1", src.host), &layout, &src.host);
    assert_eq!(report["digest"], image.digest);
    assert_eq!(report["alreadyPresent"], false);
    (src, image, dir)
}

/// GIVEN an index image in a registry WHEN the CLI exports it to a directory THEN skopeo reads
/// `oci:DIR:team/app:v1` with the same manifest bytes and copies it to a registry byte for
/// byte; the CLI imports it back byte-identical; a second export reads and writes no blob.
#[tokio::test]
async fn export_is_a_layout_skopeo_reads_and_imports_back_byte_identical() {
    let (src, image, dir) = exported().await;
    let root = dir.path().display().to_string();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let oci_ref = format!("oci:{root}:team/app:v1");
    let raw = skopeo(&["inspect", "--raw", &oci_ref]);
    assert_eq!(raw, image.manifest.to_vec(), "skopeo reads other bytes");
    for child in &image.children {
        let stored = std::fs::read(dir.path().join("blobs/sha256").join(&child.digest[7..]));
        assert_eq!(stored.unwrap(), child.manifest.to_vec());
    }

    let dst = TestRegistry::start();
    let to = format!("docker://{}/skopeo/app:v1", dst.host);
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &oci_ref,
        &to,
    ]);
    let copied = skopeo::inspect_raw(&format!("{}/skopeo/app:v1", dst.host), None);
    assert_eq!(
        copied,
        image.manifest.to_vec(),
        "skopeo copy changed the manifest"
    );

    let report = copy_ok(&oci_ref, &format!("{}/back/app", dst.host), &dst.host);
    assert_eq!(report["digest"], image.digest);
    assert_eq!(report["target"], format!("{}/back/app:v1", dst.host));
    let back = skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None);
    assert_eq!(back, image.manifest.to_vec(), "import changed the manifest");
    for child in &image.children {
        let raw = skopeo::inspect_raw(&format!("{}/back/app@{}", dst.host, child.digest), None);
        assert_eq!(raw, child.manifest.to_vec());
    }

    let before = blob_files(dir.path());
    let gets = src.count_requests("GET", "/blobs/", 200);
    let again = copy_ok(
        &format!("{}/team/app:v1", src.host),
        &format!("oci:{root}"),
        &src.host,
    );
    assert_eq!(again["alreadyPresent"], true, "{again}");
    assert_eq!(again["blobsCopied"], 0);
    assert_eq!(
        src.count_requests("GET", "/blobs/", 200),
        gets,
        "a blob was read"
    );
    assert_eq!(blob_files(dir.path()), before, "a blob file was rewritten");
}

/// GIVEN an exported layout with one layer's bytes changed WHEN it is imported THEN the copy
/// fails naming the blob's path and digest, and the destination has no tag.
#[tokio::test]
async fn tampered_blob_is_refused_on_import_and_nothing_is_tagged() {
    let (_src, image, dir) = exported().await;
    let layer = image.children[0].blobs.last().unwrap().digest.clone();
    let path = dir.path().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let dst = TestRegistry::start();
    let from = format!("oci:{}:team/app:v1", dir.path().display());
    let out = copy(&from, &format!("{}/back/app:v1", dst.host), &dst.host);

    assert!(!out.status.success(), "a tampered layout was imported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains(&layer), "{stderr}");
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
}

/// GIVEN a layout whose `index.json` is ambiguous (a repeated key) or names an image by a name
/// no registry accepts WHEN it is imported THEN the copy fails naming `index.json` and why, and
/// the destination has no tag.
#[tokio::test]
async fn untrusted_index_json_is_read_strictly_and_its_names_validated() {
    let (_src, image, dir) = exported().await;
    let index_path = dir.path().join("index.json");
    let entry = |name: &str, extra: &str| {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{}{extra},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}]}}"#,
            image.media_type,
            image.digest,
            image.manifest.len()
        )
    };
    let dst = TestRegistry::start();
    let cases = [
        (
            "team/app:v1",
            entry("team/app:v1", r#","digest":"sha256:00""#),
            "refused",
        ),
        ("Team/App:v1", entry("Team/App:v1", ""), "not a valid name"),
    ];
    for (name, index, why) in cases {
        std::fs::write(&index_path, index).unwrap();
        let from = format!("oci:{}:{name}", dir.path().display());
        let out = copy(&from, &format!("{}/back/app:v1", dst.host), &dst.host);
        assert!(!out.status.success(), "{name}: imported");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("index.json") && stderr.contains(why),
            "{name}: {stderr}"
        );
    }
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
}

/// GIVEN a registry serving a layer whose bytes do not match its digest WHEN the image is
/// exported THEN the export fails naming the digest, and the layout holds neither that blob
/// nor a temporary file (a blob is renamed into place only after its check).
#[tokio::test]
async fn corrupt_source_blob_never_lands_in_the_layout() {
    let src = TestRegistry::start();
    let image = multi_arch(36, 1, 40_000);
    Pusher::new(&src.host, None)
        .push("team/app", "v1", &image)
        .await;
    let layer = image.children[0].blobs.last().unwrap().digest.clone();
    let stored = src.blob_data_path(&layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let out = copy(
        &format!("{}/team/app:v1", src.host),
        &format!("oci:{}", dir.path().display()),
        &src.host,
    );

    assert!(!out.status.success(), "a corrupt blob was exported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&layer), "{stderr}");
    assert!(!dir.path().join("blobs/sha256").join(&layer[7..]).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(
        !dir.path().join("index.json").exists(),
        "index.json written"
    );
}

/// Peak resident memory (KiB) of the CLI running `args`, as GNU time reports it.
fn peak_rss_kib(args: &[&str]) -> u64 {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
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

/// GIVEN an image with a 256 MiB layer WHEN it is exported and imported THEN the CLI's peak
/// memory stays far below the layer's size: blobs are streamed, never held whole.
#[tokio::test]
async fn a_large_blob_is_streamed_both_ways() {
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(37, 256 << 20)
        .build();
    Pusher::new(&src.host, None)
        .push("team/big", "v1", &image)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}", dir.path().display());
    let from = format!("{}/team/big:v1", src.host);
    let export = peak_rss_kib(&["copy", &from, &layout, "--insecure-registry", &src.host]);
    let dst = TestRegistry::start();
    let back = format!("{}/back/big", dst.host);
    let from_layout = format!("{layout}:team/big:v1");
    let import = peak_rss_kib(&[
        "copy",
        &from_layout,
        &back,
        "--insecure-registry",
        &dst.host,
    ]);
    eprintln!("peak RSS: export {export} KiB, import {import} KiB (256 MiB layer)");
    assert!(export < 96 * 1024, "export peaked at {export} KiB");
    assert!(import < 96 * 1024, "import peaked at {import} KiB");
    let raw = skopeo::inspect_raw(&format!("{back}:v1"), None);
    assert_eq!(raw, image.manifest.to_vec());
}
