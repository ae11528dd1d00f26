//! Referrers and the signature gate across an air gap (issue 35): a signed image's cosign
//! signature (`.sig` tag), SBOM and promotion receipt (OCI 1.1 referrers, listed in the
//! fallback index: distribution has no referrers API) travel in the layout byte for byte and
//! arrive beside the image; `--require-signature POLICY --allowlist FILE` gates the export
//! (reading the source) and the import (reading the layout, offline); the transfer statement
//! lists every referrer, so one added to the layout is refused on a verified import.

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2e::image::{
    artifact, cosign_signature, referrers_index, signing_key, Format, ImageBuilder, Pusher,
    TestImage,
};
use e2e::moto::Moto;
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::{json, Value};

const SBOM: &str = "application/spdx+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

fn fallback(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A source holding `team/app:v1` signed by the policy's key (a `.sig` tag), an SBOM and a
/// receipt referring to it (in its fallback index), and `team/app:unsigned`.
struct Rig {
    moto: Moto,
    src: TestRegistry,
    image: TestImage,
    signature: TestImage,
    sbom: TestImage,
    receipt: TestImage,
    dir: tempfile::TempDir,
    files: tempfile::TempDir,
    allowlist: PathBuf,
    key_arn: String,
    public_pem: PathBuf,
}

impl Rig {
    async fn new() -> Self {
        let moto = Moto::start();
        let (key_arn, der) = moto.signing_key().await;
        let files = tempfile::tempdir().unwrap();
        let public_pem = pem_file(files.path(), &der);
        let src = TestRegistry::start();
        let pusher = Pusher::new(&src.host, None);
        let (key, pem) = signing_key(61);
        let image = ImageBuilder::new(Format::Oci).layer(61, 4000).build();
        let unsigned = ImageBuilder::new(Format::Oci).layer(62, 4000).build();
        let signature = cosign_signature(&image.digest, &key, false, None);
        let sbom = artifact(Some(&image), SBOM, SBOM, br#"{"spdxVersion":"SPDX-2.3"}"#);
        let receipt = artifact(Some(&image), DSSE, DSSE, br#"{"payloadType":"x"}"#);
        pusher.push("team/app", "v1", &image).await;
        pusher.push("team/app", "unsigned", &unsigned).await;
        let sig_tag = format!("{}.sig", fallback(&image.digest));
        pusher.push("team/app", &sig_tag, &signature).await;
        for referrer in [&sbom, &receipt] {
            pusher.push("team/app", &referrer.digest, referrer).await;
        }
        let index = referrers_index(vec![(sbom.clone(), SBOM), (receipt.clone(), DSSE)]);
        pusher
            .push("team/app", &fallback(&image.digest), &index)
            .await;
        let allowlist = files.path().join("allowlist.json");
        let dir = tempfile::tempdir().unwrap();
        let any = json!([{"registry": "127.0.0.1:*"}]);
        let layouts = json!([{"location": dir.path(), "export": true, "import": true}]);
        let policies = json!({"sources": any, "destinations": any, "insecure": ["127.0.0.1:*"],
                              "trustPolicies": {"release": {"publicKeys": [pem]}},
                              "layouts": layouts});
        std::fs::write(&allowlist, policies.to_string()).unwrap();
        Rig {
            moto,
            src,
            image,
            signature,
            sbom,
            receipt,
            dir,
            files,
            allowlist,
            key_arn,
            public_pem,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        crate::transfer::cli(&self.moto, args)
    }

    /// Exports `team/app:TAG` under the gate, signing the statement with the KMS key when
    /// `signed`.
    fn export(&self, tag: &str, signed: bool) -> Output {
        let from = format!("{}/team/app:{tag}", self.src.host);
        let to = format!("oci:{}", self.dir.path().display());
        let allowlist = self.allowlist.display().to_string();
        let mut args = vec![
            "copy",
            &from,
            &to,
            "--insecure-registry",
            &self.src.host,
            "--require-signature",
            "release",
            "--allowlist",
            &allowlist,
        ];
        if signed {
            args.extend(["--receipt-key", &self.key_arn]);
        }
        self.run(&args)
    }

    /// Imports `team/app:v1` into `dst` as `back/app`, gated when `gated`, verifying the
    /// statement when `verified`, signing receipts when `receipts`.
    fn import(&self, dst: &TestRegistry, gated: bool, verified: bool, receipts: bool) -> Output {
        let from = format!("oci:{}:team/app:v1", self.dir.path().display());
        let to = format!("{}/back/app", dst.host);
        let (allowlist, pem) = (
            self.allowlist.display().to_string(),
            self.public_pem.display().to_string(),
        );
        let mut args = vec!["copy", &from, &to, "--insecure-registry", &dst.host];
        if gated {
            args.extend(["--require-signature", "release", "--allowlist", &allowlist]);
        }
        if verified {
            args.extend(["--trust-transfer-key", &pem]);
        }
        if receipts {
            args.extend(["--receipt-key", &self.key_arn]);
        }
        self.run(&args)
    }

    fn index(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("index.json")).unwrap()).unwrap()
    }

    fn write_index(&self, index: &Value) {
        std::fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(index).unwrap(),
        )
        .unwrap();
    }

    /// Writes an artifact's manifest and blobs into the layout's blobs.
    fn write_blobs(&self, image: &TestImage) {
        let put = |digest: &str, bytes: &[u8]| {
            let path = self
                .dir
                .path()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            std::fs::write(path, bytes).unwrap();
        };
        put(&image.digest, &image.manifest);
        for blob in &image.blobs {
            let e2e::image::BlobData::Bytes(bytes) = &blob.data else {
                panic!("an artifact's blobs are bytes");
            };
            put(&blob.digest, bytes);
        }
    }
}

fn pem_file(dir: &Path, der: &[u8]) -> PathBuf {
    let body = B64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let path = dir.join("transfer.pub");
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

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

fn refused(out: Output, why: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "not refused: {stderr}");
    for part in why {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
    stderr
}

/// Nothing of the image reached `dst`: no manifest put, no tag.
fn nothing_tagged(dst: &TestRegistry) {
    assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
}

/// GIVEN a signed image with a cosign signature, an SBOM and a receipt WHEN it is exported
/// under `--require-signature release` with the receipt key and imported, verified and gated,
/// into another registry with the receipt key THEN the image, its signature, SBOM and receipt
/// are byte-identical there (the two referrers listed in the fallback index with a new receipt
/// signed on the far side), and the statement lists the three referrers and names the policy in
/// `admittedBy`.
#[tokio::test]
async fn a_signed_image_crosses_with_its_signature_sbom_and_receipt_byte_identical() {
    let rig = Rig::new().await;
    let stderr = ok(rig.export("v1", true), "gated export");
    assert!(stderr.contains("admitted"), "{stderr}");
    let statement: Value = serde_json::from_slice(
        &std::fs::read(rig.dir.path().join("ecr-replicator-transfer.json")).unwrap(),
    )
    .unwrap();
    let image = &statement["images"][0];
    assert_eq!(
        statement["images"].as_array().unwrap().len(),
        1,
        "{statement}"
    );
    let admitted = image["admittedBy"][0].as_str().unwrap();
    assert!(admitted.contains("policy release"), "{admitted}");
    assert!(admitted.contains(&rig.signature.digest), "{admitted}");
    let mut listed: Vec<(String, String, String)> = image["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["digest"].as_str().unwrap().to_string(),
                r["artifactType"].as_str().unwrap().to_string(),
                r["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let sig_tag = format!("{}.sig", fallback(&rig.image.digest));
    let mut expected = vec![
        (rig.sbom.digest.clone(), SBOM.to_string(), String::new()),
        (rig.receipt.digest.clone(), DSSE.to_string(), String::new()),
        (
            rig.signature.digest.clone(),
            "application/vnd.dev.cosign.artifact.sig.v1+json".to_string(),
            sig_tag.clone(),
        ),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    let dst = TestRegistry::start();
    let stderr = ok(rig.import(&dst, true, true, true), "gated verified import");
    assert!(stderr.contains("verified"), "{stderr}");
    assert!(stderr.contains("promotion receipt"), "{stderr}");
    let raw =
        |reference: &str| skopeo::inspect_raw(&format!("{}/back/app{reference}", dst.host), None);
    assert_eq!(raw(":v1"), rig.image.manifest.to_vec());
    assert_eq!(raw(&format!(":{sig_tag}")), rig.signature.manifest.to_vec());
    for referrer in [&rig.sbom, &rig.receipt] {
        assert_eq!(
            raw(&format!("@{}", referrer.digest)),
            referrer.manifest.to_vec()
        );
    }
    let target = Pusher::new(&dst.host, None);
    for blob in rig.sbom.blobs.iter().chain(&rig.receipt.blobs) {
        assert!(
            target.has_blob("back/app", &blob.digest).await,
            "{}",
            blob.digest
        );
    }
    let index: Value =
        serde_json::from_slice(&raw(&format!(":{}", fallback(&rig.image.digest)))).unwrap();
    let kinds: Vec<(&str, &str)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap(),
                m["artifactType"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(rig.sbom.digest.as_str(), SBOM)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(rig.receipt.digest.as_str(), DSSE)),
        "{kinds:?}"
    );
    let signed_here = kinds
        .iter()
        .filter(|(d, kind)| *kind == DSSE && *d != rig.receipt.digest)
        .count();
    assert_eq!(signed_here, 1, "the far side's receipt: {kinds:?}");
    drop(rig.files);
}

/// GIVEN an unsigned image WHEN it is exported under `--require-signature` THEN the export
/// fails naming it unsigned and the layout holds nothing.
#[tokio::test]
async fn an_unsigned_image_is_not_exported_under_the_gate() {
    let rig = Rig::new().await;
    refused(
        rig.export("unsigned", true),
        &["unsigned", "no cosign signature"],
    );
    assert!(!rig.dir.path().join("index.json").exists());
    assert!(!rig.dir.path().join("blobs").exists());
}

/// GIVEN a gated export WHEN the layout's signature is removed from `index.json`, or replaced
/// by a signature of the image with another key THEN a gated import refuses it as unsigned,
/// nothing tagged in the destination; the untouched layout imports.
#[tokio::test]
async fn a_gated_import_refuses_a_layout_whose_signature_was_removed_or_replaced() {
    let rig = Rig::new().await;
    ok(rig.export("v1", false), "gated export");
    let original = rig.index();
    let sig_ref = format!("team/app:{}.sig", fallback(&rig.image.digest));
    let is_sig = |m: &Value| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            == Some(sig_ref.as_str())
    };
    assert!(
        original["manifests"].as_array().unwrap().iter().any(is_sig),
        "{original}"
    );

    let mut removed = original.clone();
    removed["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|m| !is_sig(m));
    rig.write_index(&removed);
    let dst = TestRegistry::start();
    refused(
        rig.import(&dst, true, false, false),
        &["unsigned", "no cosign signature"],
    );
    nothing_tagged(&dst);

    let (other, _) = signing_key(62);
    let forged = cosign_signature(&rig.image.digest, &other, false, None);
    rig.write_blobs(&forged);
    let mut replaced = original.clone();
    for m in replaced["manifests"].as_array_mut().unwrap() {
        if is_sig(m) {
            m["digest"] = json!(forged.digest);
            m["size"] = json!(forged.manifest.len());
        }
    }
    rig.write_index(&replaced);
    let dst = TestRegistry::start();
    refused(
        rig.import(&dst, true, false, false),
        &["unsigned", "no signature verifies"],
    );
    nothing_tagged(&dst);

    rig.write_index(&original);
    let dst = TestRegistry::start();
    ok(
        rig.import(&dst, true, false, false),
        "gated import of the exported layout",
    );
    assert_eq!(
        skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None),
        rig.image.manifest.to_vec()
    );
}

/// GIVEN a signed export with its referrers listed in the statement WHEN an SBOM referring to
/// the image is added to the layout afterwards (its blobs, an `index.json` entry without a ref
/// name) THEN a verified import refuses it as added after the export, nothing tagged.
#[tokio::test]
async fn a_referrer_added_after_signing_is_refused_on_a_verified_import() {
    let rig = Rig::new().await;
    ok(rig.export("v1", true), "signed export");
    let added = artifact(Some(&rig.image), SBOM, SBOM, br#"{"spdxVersion":"forged"}"#);
    rig.write_blobs(&added);
    let mut index = rig.index();
    let entries = index["manifests"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|m| m["digest"] == json!(rig.sbom.digest)),
        "the SBOM was not exported: {index}"
    );
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": added.media_type, "digest": added.digest,
        "size": added.manifest.len(), "artifactType": SBOM,
    }));
    rig.write_index(&index);
    let dst = TestRegistry::start();
    refused(
        rig.import(&dst, false, true, false),
        &[
            &added.digest,
            "which the signed statement does not",
            "added",
        ],
    );
    nothing_tagged(&dst);
}

/// GIVEN an exported layout WHEN one referrer's blob is corrupted (same size, other bytes)
/// THEN the import fails naming that blob and the image's tag is not in the destination: the
/// tag goes on last, after every referrer (before, the image was tagged without its SBOM).
#[tokio::test]
async fn a_corrupt_referrer_blob_leaves_the_image_untagged() {
    let rig = Rig::new().await;
    ok(rig.export("v1", false), "gated export");
    let layer = &rig.sbom.blobs[rig.sbom.blobs.len() - 1];
    let path = rig
        .dir
        .path()
        .join("blobs/sha256")
        .join(layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let dst = TestRegistry::start();
    refused(rig.import(&dst, false, false, false), &[&layer.digest]);
    assert!(!skopeo::exists(&format!("{}/back/app:v1", dst.host)));
}

/// GIVEN a layout holding a signed and an unsigned image (exported without a gate) and an
/// allowlist whose destination entry requires the policy `release` WHEN the unsigned one is
/// imported with that allowlist and no --require-signature THEN it is refused as unsigned and
/// nothing is tagged (the deployment's control holds whatever the command says); the signed one
/// imports.
#[tokio::test]
async fn an_import_meets_the_policy_its_destination_requires() {
    let rig = Rig::new().await;
    let to = format!("oci:{}", rig.dir.path().display());
    for tag in ["v1", "unsigned"] {
        let from = format!("{}/team/app:{tag}", rig.src.host);
        ok(
            rig.run(&["copy", &from, &to, "--insecure-registry", &rig.src.host]),
            "ungated export",
        );
    }
    let mut allowlist: Value =
        serde_json::from_slice(&std::fs::read(&rig.allowlist).unwrap()).unwrap();
    allowlist["destinations"] = json!([{"registry": "127.0.0.1:*", "requireSignature": "release"}]);
    let path = rig.files.path().join("required.json");
    std::fs::write(&path, allowlist.to_string()).unwrap();
    let path = path.display().to_string();
    let dst = TestRegistry::start();
    let import = |tag: &str| {
        let from = format!("oci:{}:team/app:{tag}", rig.dir.path().display());
        let to = format!("{}/back/app", dst.host);
        rig.run(&[
            "copy",
            &from,
            &to,
            "--insecure-registry",
            &dst.host,
            "--allowlist",
            &path,
        ])
    };
    refused(import("unsigned"), &["unsigned"]);
    nothing_tagged(&dst);
    ok(import("v1"), "import of the signed image");
    let raw = skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None);
    assert_eq!(raw, rig.image.manifest.to_vec());
}

/// GIVEN a signed export and allowlists that each differ in one rule WHEN `copy` imports from
/// the layout with that allowlist THEN a destination the allowlist does not list (another
/// spelling of a host included), a layout it does not list, and an unverified import of a
/// layout whose key it pins are each refused with nothing tagged; the import that meets them all
/// verifies the statement with the pinned key.
#[tokio::test]
async fn copy_with_an_allowlist_keeps_to_its_registries_layouts_and_pinned_key() {
    let rig = Rig::new().await;
    ok(rig.export("v1", true), "signed export");
    let base: Value = serde_json::from_slice(&std::fs::read(&rig.allowlist).unwrap()).unwrap();
    let dst = TestRegistry::start();
    let pinned_layouts = json!([{"location": rig.dir.path(), "import": true,
                                 "transferKey": std::fs::read_to_string(&rig.public_pem).unwrap()}]);
    let write = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut allowlist = base.clone();
        change(&mut allowlist);
        let path = rig.files.path().join(name);
        std::fs::write(&path, allowlist.to_string()).unwrap();
        path.display().to_string()
    };
    let import = |allowlist: &str, to_host: &str, extra: &[&str]| {
        let from = format!("oci:{}:team/app:v1", rig.dir.path().display());
        let to = format!("{to_host}/back/app");
        let mut args = vec!["copy", &from, &to, "--insecure-registry", to_host];
        args.extend(["--allowlist", allowlist]);
        args.extend(extra);
        rig.run(&args)
    };
    let elsewhere = write("elsewhere.json", &|a| {
        a["destinations"] = json!([{"registry": "registry.internal:5000"}])
    });
    refused(
        import(&elsewhere, &dst.host, &[]),
        &["is not one of", "destinations"],
    );
    let shouting = dst.host.replace("127.0.0.1", "LOCALHOST");
    let exact = write("exact.json", &|a| {
        a["destinations"] = json!([{"registry": dst.host}])
    });
    refused(
        import(&exact, &shouting, &[]),
        &["is not one of", "destinations"],
    );
    let unlisted = write("unlisted.json", &|a| a["layouts"] = json!([]));
    refused(
        import(&unlisted, &dst.host, &[]),
        &["is not one of", "layouts"],
    );
    let pinned = write("pinned.json", &|a| a["layouts"] = pinned_layouts.clone());
    refused(
        import(&pinned, &dst.host, &["--allow-unverified-layout"]),
        &["pins"],
    );
    nothing_tagged(&dst);
    let said = ok(
        import(&pinned, &dst.host, &[]),
        "import under the pinned key",
    );
    assert!(said.contains("verified"), "{said}");
    let raw = skopeo::inspect_raw(&format!("{}/back/app:v1", dst.host), None);
    assert_eq!(raw, rig.image.manifest.to_vec());
}

/// GIVEN a repository whose listing holds a cosign signature tag and a referrers fallback index
/// tag beside its images WHEN an export job takes the whole repository with the receipt key
/// THEN the signature tags travel as the signed image's referrers, not as images: the signed
/// statement names the two images, and the signature is in the layout under its tag.
#[tokio::test]
async fn an_export_job_carries_signature_tags_as_referrers_not_images() {
    let rig = Rig::new().await;
    let job = rig.files.path().join("export.json");
    std::fs::write(
        &job,
        json!({
            "source": {"registry": rig.src.host, "insecure": true},
            "destinations": [{"layout": rig.dir.path()}],
            "repositories": {"include": ["team/app"]},
        })
        .to_string(),
    )
    .unwrap();
    let job = job.display().to_string();
    ok(
        rig.run(&[
            "sync",
            "--input",
            &job,
            "--insecure-registry",
            &rig.src.host,
            "--receipt-key",
            &rig.key_arn,
        ]),
        "export job",
    );
    assert_eq!(
        crate::transfer::stated_refs(rig.dir.path()),
        ["team/app:unsigned", "team/app:v1"]
    );
    let sig = format!("team/app:{}.sig", fallback(&rig.image.digest));
    let names = crate::transfer::ref_names(rig.dir.path());
    assert!(names.contains(&sig), "{names:?}");
}
