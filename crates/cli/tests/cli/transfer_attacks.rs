//! Attacks on a signed OCI layout (issue 35, hostile review): a rollback to an older layout the
//! same key signed, an image planted in the directory before a signed export, a layout whose
//! statement was stripped, an `index.json` entry whose ref name is not a string, an 8 MiB
//! media type full of escape sequences, a destination naming another digest. Each is played
//! on real components (moto's KMS, distribution, skopeo) and checked at the destination.

use std::path::Path;
use std::process::Command;

use e2e::image::{multi_arch, Pusher};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::Value;

use crate::transfer::{succeeded, Signed, ENVELOPE, STATEMENT};

/// Replaces the files of `dir` with those of `from` (what a carrier with an old copy does).
fn put_back(from: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let status = Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", from.display()),
            &dir.display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    put_back(from, copy.path());
    copy
}

/// GIVEN a signed layout of team/app:v1 (statement A), a copy of it kept, then team/app:v1
/// rebuilt and exported again with the key (statement B), and the copy put back WHEN it is
/// imported trusting the key THEN without a pin the old layout imports (the rollback the pins
/// stop); with `--not-before` B's export time it is refused naming both times, with
/// `--statement-digest` B's digest (printed by the export) refused naming both digests: no
/// upload, no manifest, no tag. B's own layout imports under both pins.
#[tokio::test]
async fn a_rolled_back_layout_is_refused_under_not_before_or_a_pinned_statement_digest() {
    let signed = Signed::new().await;
    let old_exported_at = signed.statement()["run"]["exportedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let old = copy_dir(signed.dir.path());
    let newer = multi_arch(61, 2, 25_000);
    Pusher::new(&signed.src.host, None)
        .push("team/app", "v1", &newer)
        .await;
    let said = signed.export("team/app:v1", &signed.key_arn, signed.dir.path());
    let statement = signed.statement();
    let exported_at = statement["run"]["exportedAt"].as_str().unwrap().to_string();
    let digest = e2e::image::sha256(&std::fs::read(signed.dir.path().join(STATEMENT)).unwrap());
    assert!(
        said.contains(&digest),
        "the export prints the digest: {said}"
    );
    assert!(said.contains(&exported_at), "and the time: {said}");
    let current = copy_dir(signed.dir.path());
    let pem = signed.public_pem.display().to_string();
    let not_before = ["--trust-transfer-key", &pem, "--not-before", &exported_at];
    let pinned = ["--trust-transfer-key", &pem, "--statement-digest", &digest];

    put_back(old.path(), signed.dir.path());
    let dst = TestRegistry::start();
    let to = format!("{}/back/app", dst.host);
    succeeded(
        signed.import_to(&to, &dst.host, &["--trust-transfer-key", &pem]),
        "the rolled-back layout, unpinned",
    );
    assert_eq!(
        skopeo::inspect_raw(&format!("{to}:v1"), None),
        signed.image.manifest.to_vec(),
        "the old image"
    );
    signed.assert_refused_with(
        &not_before,
        &[
            &old_exported_at,
            &exported_at,
            "--not-before",
            "older layout",
        ],
    );
    signed.assert_refused_with(&pinned, &[&digest, "--statement-digest"]);

    put_back(current.path(), signed.dir.path());
    for flags in [&not_before, &pinned] {
        let dst = TestRegistry::start();
        let to = format!("{}/back/app", dst.host);
        succeeded(signed.import_to(&to, &dst.host, flags), "B under its pin");
        assert_eq!(
            skopeo::inspect_raw(&format!("{to}:v1"), None),
            newer.manifest.to_vec()
        );
    }
}

/// GIVEN a directory into which skopeo copied another image as `evil:1` WHEN team/app:v1 is
/// exported into it with the key THEN the export fails naming `evil:1` and writes no
/// statement: the key signs only what its own exports wrote.
#[tokio::test]
async fn an_image_planted_in_the_directory_is_not_signed() {
    let signed = Signed::new().await;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/team/lib:v2", signed.src.host),
            &format!("oci:{}:evil:1", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    signed.assert_export_not_signed(dir.path(), &["\"evil:1\"", "nothing signed"]);
    assert!(!dir.path().join(STATEMENT).exists());
    assert!(!dir.path().join(ENVELOPE).exists());
}

/// GIVEN a signed layout whose statement and envelope were removed WHEN it is imported with
/// `ECR_REPLICATOR_TRUST_TRANSFER_KEY` set (no flag) THEN it is refused, nothing tagged; a
/// signed layout imported with no key at all is refused unless `--allow-unverified-layout`.
#[tokio::test]
async fn verification_is_required_by_the_environment_and_by_a_statement() {
    let signed = Signed::new().await;
    let stderr = signed.assert_refused_with(&[], &["carries a signed transfer statement"]);
    assert!(stderr.contains("--allow-unverified-layout"), "{stderr}");

    std::fs::remove_file(signed.dir.path().join(STATEMENT)).unwrap();
    std::fs::remove_file(signed.dir.path().join(ENVELOPE)).unwrap();
    let dst = TestRegistry::start();
    let from = format!("oci:{}:team/app:v1", signed.dir.path().display());
    let to = format!("{}/back/app", dst.host);
    let out = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(["copy", &from, &to, "--insecure-registry", &dst.host])
        .env("ECR_REPLICATOR_TRUST_TRANSFER_KEY", &signed.public_pem)
        .env_remove("ECR_REPLICATOR_RECEIPT_KEY")
        .env("HOME", "/nonexistent")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported: {stderr}");
    assert!(stderr.contains("the layout has no"), "{stderr}");
    assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);
    assert!(!skopeo::exists(&format!("{to}:v1")));
}

/// GIVEN a signed layout whose `index.json` gains a copy of team/lib:v2's entry with a ref
/// name of `1`, or `null` (an entry neither named nor unnamed, which no check saw) WHEN it is
/// imported trusting the key THEN it is refused as not a string, nothing tagged.
#[tokio::test]
async fn an_index_entry_whose_ref_name_is_not_a_string_is_refused() {
    let signed = Signed::new().await;
    let path = signed.dir.path().join("index.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for name in [Value::from(1), Value::Null] {
        let mut index = original.clone();
        let mut entry = index["manifests"][1].clone();
        entry["annotations"]["org.opencontainers.image.ref.name"] = name;
        index["manifests"].as_array_mut().unwrap().push(entry);
        std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
        signed.assert_refused(&signed.public_pem, &["not a string"]);
    }
}

/// GIVEN a signed layout whose `index.json` gives team/app:v1 a media type of nearly 8 MiB
/// made of terminal escape sequences WHEN it is imported trusting the key THEN the error is
/// under 1 KiB and holds no control character.
#[tokio::test]
async fn an_8_mib_media_type_gives_a_short_clean_error() {
    let signed = Signed::new().await;
    let path = signed.dir.path().join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hostile = "\u{1b}[2J\u{1b}]0;owned\u{7}\r".repeat(8 * 1024 * 1024 / 32 - 100);
    for entry in index["manifests"].as_array_mut().unwrap() {
        if entry["annotations"]["org.opencontainers.image.ref.name"] == "team/app:v1" {
            entry["mediaType"] = format!("application/{hostile}").into();
        }
    }
    let bytes = serde_json::to_vec(&index).unwrap();
    assert!(bytes.len() > 7 * 1024 * 1024 && bytes.len() <= 8 * 1024 * 1024);
    std::fs::write(&path, bytes).unwrap();
    let stderr = signed.assert_refused_with(
        &[
            "--trust-transfer-key",
            &signed.public_pem.display().to_string(),
        ],
        &["is not a media type"],
    );
    assert!(stderr.len() < 1024, "{} bytes", stderr.len());
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "{stderr:?}"
    );
}

/// GIVEN a signed layout WHEN team/app:v1 is imported into `back/app@<another digest>` THEN it
/// is refused naming both digests, nothing put; into `back/app@<its digest>` it imports.
#[tokio::test]
async fn a_destination_naming_another_digest_is_refused() {
    let signed = Signed::new().await;
    let pem = signed.public_pem.display().to_string();
    for trust in [
        vec!["--trust-transfer-key", pem.as_str()],
        vec!["--allow-unverified-layout"],
    ] {
        let dst = TestRegistry::start();
        let to = format!("{}/back/app@{}", dst.host, signed.other.digest);
        let out = signed.import_to(&to, &dst.host, &trust);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "imported: {stderr}");
        assert!(
            stderr.contains(&signed.other.digest) && stderr.contains(&signed.image.digest),
            "{stderr}"
        );
        assert_eq!(dst.count_requests("POST", "/blobs/uploads/", 202), 0);
        assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);

        let to = format!("{}/back/app@{}", dst.host, signed.image.digest);
        succeeded(signed.import_to(&to, &dst.host, &trust), "the right digest");
        assert_eq!(
            skopeo::inspect_raw(&to, None),
            signed.image.manifest.to_vec()
        );
    }
}

/// GIVEN a signed layout into which an SBOM of team/app:v1 was put (its manifest and blobs
/// under `blobs/`, an `index.json` entry without a ref name, as a referrer is kept) WHEN
/// team/app:v1 is exported again with the key THEN the export refuses naming the referrer and
/// the statement stays the earlier one: the key does not sign a referrer it did not write.
#[tokio::test]
async fn a_referrer_planted_beside_a_signed_image_is_not_signed() {
    let signed = Signed::new().await;
    let blobs = signed.dir.path().join("blobs/sha256");
    let put = |bytes: &[u8]| {
        let digest = e2e::image::sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    };
    let (config, config_size) = put(b"{}");
    let (sbom, sbom_size) = put(br#"{"spdxVersion":"SPDX-2.3","name":"planted"}"#);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom, "size": sbom_size}],
        "subject": {"mediaType": signed.image.media_type, "digest": signed.image.digest,
                    "size": signed.image.manifest.len()},
    });
    let (digest, size) = put(&serde_json::to_vec(&manifest).unwrap());
    let path = signed.dir.path().join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
        "size": size, "artifactType": "application/spdx+json"}));
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    let named = format!("the referrer {digest} of \"team/app:v1\"");
    signed.assert_export_not_signed(signed.dir.path(), &[&named]);
}

/// GIVEN a signed layout in which one layer of team/lib:v2 had a byte changed (same size)
/// WHEN team/app:v1 is exported again with the key THEN the export refuses naming the blob,
/// and the statement stays the earlier one: a blob this run did not write is hashed before it
/// is signed (else the key would sign a layout no import can take).
#[tokio::test]
async fn a_damaged_blob_this_run_did_not_write_is_not_signed() {
    let signed = Signed::new().await;
    let layer = signed.other.children[0]
        .blobs
        .last()
        .unwrap()
        .digest
        .clone();
    let path = signed.dir.path().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    signed.assert_export_not_signed(signed.dir.path(), &[&layer[7..], "not signed"]);
}
