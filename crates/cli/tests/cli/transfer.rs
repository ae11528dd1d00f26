//! The signed transfer statement of an OCI layout (issue 35): `copy ... oci:DIR --receipt-key`
//! signs a statement of the whole layout with a KMS key (moto's), and `copy oci:DIR:REF ...
//! --trust-transfer-key FILE.pem` verifies it before reading anything else, refusing a layout
//! that differs from it. The signature is also checked with openssl, by the commands of the
//! air-gap chapter as written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2e::image::{multi_arch, Pusher, TestImage};
use e2e::moto::Moto;
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::Value;

pub(crate) const STATEMENT: &str = "ecr-replicator-transfer.json";
pub(crate) const ENVELOPE: &str = "ecr-replicator-transfer.dsse.json";

pub(crate) fn cli(moto: &Moto, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(args)
        .env_remove("ECR_REPLICATOR_SRC_CREDS")
        .env_remove("ECR_REPLICATOR_DEST_CREDS")
        .env_remove("ECR_REPLICATOR_RECEIPT_KEY")
        .env_remove("ECR_REPLICATOR_TRUST_TRANSFER_KEY")
        .env_remove("ECR_REPLICATOR_TRUSTED_ROOT")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

pub(crate) fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The refs the transfer statement in the layout `dir` names, in its order.
pub(crate) fn stated_refs(dir: &Path) -> Vec<String> {
    let statement: Value =
        serde_json::from_slice(&std::fs::read(dir.join(STATEMENT)).unwrap()).unwrap();
    statement["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ref"].as_str().unwrap().to_string())
        .collect()
}

/// The ref names the layout `dir`'s `index.json` holds, sorted.
pub(crate) fn ref_names(dir: &Path) -> Vec<String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut names: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// A public key (SubjectPublicKeyInfo DER) as a PEM file in `dir`.
pub(crate) fn pem_file(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let body = B64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    path
}

/// Two images exported into one layout with the key: the statement covers both.
pub(crate) struct Signed {
    pub(crate) moto: Moto,
    pub(crate) src: TestRegistry,
    pub(crate) image: TestImage,
    pub(crate) other: TestImage,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) keys: tempfile::TempDir,
    pub(crate) key_arn: String,
    pub(crate) public_pem: PathBuf,
}

impl Signed {
    pub(crate) async fn new() -> Self {
        let moto = Moto::start();
        let (key_arn, der) = moto.signing_key().await;
        let keys = tempfile::tempdir().unwrap();
        let public_pem = pem_file(keys.path(), "transfer.pub", &der);
        let src = TestRegistry::start();
        let image = multi_arch(51, 2, 30_000);
        let other = multi_arch(52, 1, 20_000);
        let pusher = Pusher::new(&src.host, None);
        pusher.push("team/app", "v1", &image).await;
        pusher.push("team/lib", "v2", &other).await;
        let signed = Signed {
            moto,
            src,
            image,
            other,
            dir: tempfile::tempdir().unwrap(),
            keys,
            key_arn,
            public_pem,
        };
        for name in ["team/app:v1", "team/lib:v2"] {
            signed.export(name, &signed.key_arn.clone(), signed.dir.path());
        }
        signed
    }

    pub(crate) fn export(&self, name: &str, key_arn: &str, dir: &Path) -> String {
        succeeded(
            self.export_output(name, key_arn, dir),
            &format!("export {name}"),
        )
    }

    /// `copy` of the source's `name` into the layout `dir` with `key_arn`, as it ended.
    fn export_output(&self, name: &str, key_arn: &str, dir: &Path) -> Output {
        let from = format!("{}/{name}", self.src.host);
        let to = format!("oci:{}", dir.display());
        cli(
            &self.moto,
            &[
                "copy",
                &from,
                &to,
                "--insecure-registry",
                &self.src.host,
                "--receipt-key",
                key_arn,
            ],
        )
    }

    /// A keyed export of `team/app:v1` into `dir` fails naming each of `why`, and the layout's
    /// statement is what it was before (or still absent). Returns stderr.
    pub(crate) fn assert_export_not_signed(&self, dir: &Path, why: &[&str]) -> String {
        let before = std::fs::read(dir.join(STATEMENT)).ok();
        let out = self.export_output("team/app:v1", &self.key_arn, dir);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "signed: {stderr}");
        for part in why {
            assert!(stderr.contains(part), "{part:?} not in: {stderr}");
        }
        assert_eq!(std::fs::read(dir.join(STATEMENT)).ok(), before);
        stderr
    }

    fn import(&self, dst: &TestRegistry, trust: Option<&Path>) -> Output {
        let pem = trust.map(|p| p.display().to_string());
        let extra = match &pem {
            Some(pem) => vec!["--trust-transfer-key", pem.as_str()],
            None => vec!["--allow-unverified-layout"],
        };
        self.import_to(&format!("{}/back/app", dst.host), &dst.host, &extra)
    }

    /// Imports `team/app:v1` into `to` with `extra` flags.
    pub(crate) fn import_to(&self, to: &str, host: &str, extra: &[&str]) -> Output {
        let from = format!("oci:{}:team/app:v1", self.dir.path().display());
        let mut args = vec!["copy", &from, to, "--insecure-registry", host];
        args.extend(extra);
        cli(&self.moto, &args)
    }

    pub(crate) fn statement(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join(STATEMENT)).unwrap()).unwrap()
    }

    fn write_statement(&self, statement: &Value) {
        std::fs::write(
            self.dir.path().join(STATEMENT),
            serde_json::to_vec(statement).unwrap(),
        )
        .unwrap();
    }

    /// An import verifying with `trust` fails naming `why`; the destination got no upload, no
    /// manifest and no tag.
    pub(crate) fn assert_refused(&self, trust: &Path, why: &[&str]) {
        let pem = trust.display().to_string();
        self.assert_refused_with(&["--trust-transfer-key", &pem], why);
    }

    /// An import with `extra` flags fails naming `why`; nothing reaches the destination.
    pub(crate) fn assert_refused_with(&self, extra: &[&str], why: &[&str]) -> String {
        let dst = TestRegistry::start();
        let out = self.import_to(&format!("{}/back/app", dst.host), &dst.host, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "imported: {stderr}");
        eprintln!("refused as expected: {stderr}");
        for part in why {
            assert!(stderr.contains(part), "{part:?} not in: {stderr}");
        }
        assert_eq!(dst.count_requests("POST", "/blobs/uploads/", 202), 0);
        assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);
        assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
        stderr.into_owned()
    }
}

/// The fenced ```sh block after `<!-- test: MARKER -->` in the air-gap chapter.
fn documented_commands(marker: &str) -> String {
    let chapter = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/air-gap.md"),
    )
    .unwrap();
    let after = chapter
        .split(&format!("<!-- test: {marker} -->"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/air-gap.md has no `<!-- test: {marker} -->`"));
    let block = after.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_string()
}

/// GIVEN two images exported into one layout with `--receipt-key` WHEN the statement is read
/// THEN it names both refs with their digests, media types and sizes, canonically, and the
/// chapter's openssl commands verify it with the key's public key; an import trusting that key
/// verifies it and copies the image byte-identical (skopeo); without the flag it says the
/// statement was not verified.
#[tokio::test]
async fn a_signed_export_verifies_with_openssl_and_imports_byte_identical() {
    let signed = Signed::new().await;
    let bytes = std::fs::read(signed.dir.path().join(STATEMENT)).unwrap();
    let statement = signed.statement();
    assert_eq!(
        serde_json::to_vec(&statement).unwrap(),
        bytes,
        "not canonical"
    );
    assert_eq!(statement["_type"], "https://ecr-replicator.dev/transfer/v1");
    let images = statement["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{statement}");
    for (entry, image, name) in [
        (&images[0], &signed.image, "team/app:v1"),
        (&images[1], &signed.other, "team/lib:v2"),
    ] {
        assert_eq!(entry["ref"], name);
        assert_eq!(entry["digest"], image.digest);
        assert_eq!(entry["mediaType"], image.media_type);
        assert_eq!(entry["size"], image.manifest.len());
        assert_eq!(entry["manifests"], image.children.len() + 1);
        assert_eq!(
            entry["source"],
            format!("{}/{name}", signed.src.host),
            "{entry}"
        );
    }
    assert_eq!(
        statement["run"]["image"],
        format!("{}/team/lib:v2", signed.src.host)
    );

    let script = documented_commands("verify-statement");
    std::fs::copy(&signed.public_pem, signed.dir.path().join("transfer.pub")).unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(signed.dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("Verified OK") && said.contains("statement OK"),
        "the chapter's commands: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dst = TestRegistry::start();
    let stderr = succeeded(
        signed.import(&dst, Some(&signed.public_pem)),
        "verified import",
    );
    assert!(stderr.contains("verified"), "{stderr}");
    let back = skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None);
    assert_eq!(back, signed.image.manifest.to_vec());
    for child in &signed.image.children {
        let raw = skopeo::inspect_raw(&format!("{}/back/app@{}", dst.host, child.digest), None);
        assert_eq!(raw, child.manifest.to_vec());
    }

    let unverified = TestRegistry::start();
    let stderr = succeeded(signed.import(&unverified, None), "unverified import");
    assert!(stderr.contains("NOT verified"), "{stderr}");
}

/// GIVEN a signed layout whose statement has one digest changed, and whose blobs and
/// `index.json` are then removed WHEN it is imported trusting the key THEN the import fails on
/// the statement (changed after it was signed), not on a missing file: nothing else was read;
/// nothing reaches the destination.
#[tokio::test]
async fn a_tampered_statement_is_refused_before_any_other_file_is_read() {
    let signed = Signed::new().await;
    let mut statement = signed.statement();
    statement["images"][0]["digest"] = Value::String(signed.other.digest.clone());
    signed.write_statement(&statement);
    std::fs::remove_dir_all(signed.dir.path().join("blobs")).unwrap();
    std::fs::remove_file(signed.dir.path().join("index.json")).unwrap();

    signed.assert_refused(
        &signed.public_pem,
        &[
            "transfer statement",
            STATEMENT,
            "changed after it was signed",
        ],
    );
}

/// GIVEN a layout whose statement was signed with another KMS key (exported into another
/// directory: a layout the first key signed is not re-signed by another, see
/// `transfer_attacks`) WHEN it is imported trusting the first key THEN it is refused naming the
/// trusted key's fingerprint and the one the envelope claims; without the envelope it is
/// refused too (an unsigned layout is not a verified one).
#[tokio::test]
async fn a_statement_signed_by_an_untrusted_key_is_refused() {
    let signed = Signed::new().await;
    let (other_arn, other_der) = signed.moto.signing_key().await;
    let elsewhere = tempfile::tempdir().unwrap();
    signed.export("team/app:v1", &other_arn, elsewhere.path());
    for name in [STATEMENT, ENVELOPE] {
        std::fs::copy(elsewhere.path().join(name), signed.dir.path().join(name)).unwrap();
    }
    let _ = pem_file(signed.keys.path(), "other.pub", &other_der);
    let other_fingerprint = e2e::image::sha256(&other_der);

    signed.assert_refused(
        &signed.public_pem,
        &[
            ENVELOPE,
            "no signature verifies with the trusted key",
            &other_fingerprint,
        ],
    );

    std::fs::remove_file(signed.dir.path().join(ENVELOPE)).unwrap();
    signed.assert_refused(&signed.public_pem, &["the layout has no", ENVELOPE]);
}

/// GIVEN a signed layout whose `index.json` then names another ref (the same image under
/// `team/evil:v1`), or names the ref at another digest WHEN it is imported trusting the key
/// THEN each is refused naming the ref and the statement.
#[tokio::test]
async fn an_index_json_that_differs_from_the_statement_is_refused() {
    let signed = Signed::new().await;
    let index_path = signed.dir.path().join("index.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();

    let mut extra = original.clone();
    let mut entry = extra["manifests"][0].clone();
    entry["annotations"]["org.opencontainers.image.ref.name"] = "team/evil:v1".into();
    extra["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(&index_path, serde_json::to_vec(&extra).unwrap()).unwrap();
    signed.assert_refused(
        &signed.public_pem,
        &["\"team/evil:v1\"", "which the signed statement does not"],
    );

    let mut moved = original.clone();
    for entry in moved["manifests"].as_array_mut().unwrap() {
        if entry["annotations"]["org.opencontainers.image.ref.name"] == "team/app:v1" {
            let child = &signed.image.children[0];
            entry["digest"] = child.digest.clone().into();
            entry["size"] = child.manifest.len().into();
            entry["mediaType"] = child.media_type.clone().into();
        }
    }
    std::fs::write(&index_path, serde_json::to_vec(&moved).unwrap()).unwrap();
    signed.assert_refused(
        &signed.public_pem,
        &[
            "\"team/app:v1\"",
            &signed.image.children[0].digest,
            "changed after the export",
        ],
    );
}

/// GIVEN a signed layout with one layer's bytes changed (the statement and `index.json`
/// untouched) WHEN it is imported trusting the key THEN the statement verifies and the blob is
/// refused naming its path and digest; nothing is tagged.
#[tokio::test]
async fn a_tampered_blob_under_a_verified_statement_is_refused() {
    let signed = Signed::new().await;
    let layer = signed.image.children[0]
        .blobs
        .last()
        .unwrap()
        .digest
        .clone();
    let path = signed.dir.path().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let dst = TestRegistry::start();
    let out = signed.import(&dst, Some(&signed.public_pem));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported: {stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains(&layer), "{stderr}");
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
    assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);
}

/// GIVEN an image exported with the key into an S3 layout (moto's S3) WHEN it is imported
/// trusting the key THEN it arrives byte-identical; once the statement object is rewritten with
/// one digest changed, the import is refused as changed after signing, nothing tagged.
#[tokio::test]
async fn an_s3_layout_carries_the_statement_too() {
    let moto = Moto::start();
    e2e::moto::create_bucket_at(&moto.url, "air-gap").await;
    let (key_arn, der) = moto.signing_key().await;
    let keys = tempfile::tempdir().unwrap();
    let pem = pem_file(keys.path(), "transfer.pub", &der);
    let src = TestRegistry::start();
    let image = multi_arch(53, 1, 20_000);
    Pusher::new(&src.host, None)
        .push("team/app", "v1", &image)
        .await;
    let from = format!("{}/team/app:v1", src.host);
    let export = [
        "copy",
        &from,
        "oci:s3://air-gap/q4",
        "--insecure-registry",
        &src.host,
        "--receipt-key",
        &key_arn,
    ];
    succeeded(cli(&moto, &export), "export to S3");

    let dst = TestRegistry::start();
    let import = |dst: &TestRegistry| {
        let to = format!("{}/back/app", dst.host);
        let pem = pem.display().to_string();
        cli(
            &moto,
            &[
                "copy",
                "oci:s3://air-gap/q4:team/app:v1",
                &to,
                "--insecure-registry",
                &dst.host,
                "--trust-transfer-key",
                &pem,
            ],
        )
    };
    succeeded(import(&dst), "verified import from S3");
    let back = skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None);
    assert_eq!(back, image.manifest.to_vec());

    let config = ecr::sdk_config(&moto.aws_settings(), "us-east-1", None).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let key = format!("q4/{STATEMENT}");
    let stored = s3
        .get_object()
        .bucket("air-gap")
        .key(&key)
        .send()
        .await
        .unwrap();
    let stored = stored.body.collect().await.unwrap().into_bytes();
    let mut statement: Value = serde_json::from_slice(&stored).unwrap();
    statement["images"][0]["digest"] = Value::String(image.children[0].digest.clone());
    s3.put_object()
        .bucket("air-gap")
        .key(&key)
        .body(serde_json::to_vec(&statement).unwrap().into())
        .send()
        .await
        .unwrap();
    let other = TestRegistry::start();
    let out = import(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported: {stderr}");
    assert!(stderr.contains("changed after it was signed"), "{stderr}");
    assert!(!skopeo::exists(&format!("{}/back/app:v1", other.host)));
}
