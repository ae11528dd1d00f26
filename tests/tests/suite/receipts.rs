//! Promotion receipts with moto's KMS: an image promoted under `requireSignature` gets a DSSE
//! envelope signed by the deployment's KMS key (ECC_NIST_P256), attached as a referrer (listed in
//! the fallback index on distribution, which has no referrers API). The test verifies it the way
//! a consumer would, independently of the code under test: the KMS public key (GetPublicKey),
//! p256 over DSSE's pre-authentication encoding, the in-toto subject and predicate.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2e::image::{cosign_signature, signing_key, Format, ImageBuilder, Pusher, TestImage};
use e2e::moto::Moto;
use e2e::registry::TestRegistry;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use replication::connect::{Connections, Settings};
use replication::Job;
use serde_json::{json, Value};

const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

/// An asymmetric signing key in moto's KMS: its ARN and public key.
async fn receipt_key(moto: &Moto) -> (String, p256::ecdsa::VerifyingKey) {
    let (arn, der) = moto.signing_key().await;
    (
        arn,
        p256::ecdsa::VerifyingKey::from_public_key_der(&der).unwrap(),
    )
}

/// The receipts the destination lists for `image` (its fallback index), as parsed envelopes.
async fn receipts(target: &Pusher, image: &TestImage) -> Vec<Value> {
    let Some(index) = target
        .manifest("app", &image.digest.replacen(':', "-", 1))
        .await
    else {
        return Vec::new();
    };
    let index: Value = serde_json::from_slice(&index).unwrap();
    let mut found = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        if entry["artifactType"] != DSSE {
            continue;
        }
        let manifest: Value = serde_json::from_slice(
            &target
                .manifest("app", entry["digest"].as_str().unwrap())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["subject"]["digest"], image.digest.as_str());
        assert_eq!(
            manifest["layers"][0]["annotations"]["predicateType"],
            "urn:ecr-replicator:promotion:v1"
        );
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let blob = target.blob("app", layer).await.unwrap();
        found.push(serde_json::from_slice(&blob).unwrap());
    }
    found
}

/// Verifies a DSSE envelope with `key` and returns its in-toto statement.
fn verified_statement(envelope: &Value, key: &p256::ecdsa::VerifyingKey) -> Value {
    let payload = B64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let payload_type = envelope["payloadType"].as_str().unwrap();
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let signature = B64
        .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    let signature = p256::ecdsa::DerSignature::try_from(signature.as_slice()).unwrap();
    key.verify(&pae, &signature)
        .expect("the receipt does not verify with the KMS key's public key");
    serde_json::from_slice(&payload).unwrap()
}

#[tokio::test]
async fn a_promoted_image_carries_a_receipt_signed_with_the_kms_key_and_others_none() {
    let moto = Moto::start();
    let (key_arn, public_key) = receipt_key(&moto).await;
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let target = Pusher::new(&dst.host, None);
    let (signer, pem) = signing_key(51);
    let signed = ImageBuilder::new(Format::Oci).layer(51, 800).build();
    let unsigned = ImageBuilder::new(Format::Oci).layer(52, 800).build();
    source.push("app", "signed", &signed).await;
    source.push("app", "unsigned", &unsigned).await;
    source
        .push(
            "app",
            &format!("{}.sig", signed.digest.replacen(':', "-", 1)),
            &cosign_signature(&signed.digest, &signer, false, None),
        )
        .await;
    // The deployment names the policy; the job refers to it. With `allowJobTrustPolicies`, a
    // job may also write keys itself, which admits images but never yields a receipt.
    let policy = json!({"publicKeys": [pem]});
    let allowlist = |job_policies: bool| {
        let any = json!([{"registry": "127.0.0.1:*"}]);
        replication::allowlist::Allowlist::from_json(
            &json!({
                "sources": any, "destinations": any, "insecure": ["127.0.0.1:*"],
                "trustPolicies": {"release": policy},
                "allowJobTrustPolicies": job_policies,
            })
            .to_string(),
            "test allowlist",
        )
        .unwrap()
    };
    let settings = Settings {
        aws: moto.aws_settings(),
        registry: e2e::fast_retry_config(&[]),
        receipt_key: Some(ecr::KmsKeyArn::parse(&key_arn).unwrap()),
        allowlist: Some(allowlist(false)),
        ..Settings::default()
    };
    let job_with = |dst: &str, gate: Option<Value>| {
        let mut job = json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dst, "insecure": true}],
        });
        if let Some(gate) = gate {
            job["requireSignature"] = gate;
        }
        Job::from_json(&job.to_string()).unwrap()
    };
    let job = |dst: &str, gate: bool| job_with(dst, gate.then(|| json!({"policy": "release"})));

    let output = replication::run::run_job(
        &Connections::new(settings.clone()),
        job(&dst.host, true),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    assert_eq!(
        (output.report.failed, output.report.unsigned),
        (0, 1),
        "{:?}",
        output.report
    );
    let found = receipts(&target, &signed).await;
    assert_eq!(found.len(), 1, "one receipt for the promoted image");
    assert_eq!(found[0]["signatures"][0]["keyid"], key_arn.as_str());
    let statement = verified_statement(&found[0], &public_key);
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        signed.digest.trim_start_matches("sha256:")
    );
    assert_eq!(statement["subject"][0]["name"], format!("{}/app", dst.host));
    let predicate = &statement["predicate"];
    assert_eq!(predicate["source"]["registry"], src.host.as_str());
    assert_eq!(predicate["source"]["repository"], "app");
    assert_eq!(predicate["source"]["digest"], signed.digest.as_str());
    // What it certifies, checked as a consumer would: the policy they reviewed (its name and
    // the SHA-256 of its canonical JSON), the key (its SubjectPublicKeyInfo fingerprint) and the
    // signature manifest.
    let admitted = &predicate["admittedBy"][0];
    assert_eq!(
        predicate["admittedBy"].as_array().unwrap().len(),
        1,
        "{predicate}"
    );
    assert_eq!(admitted["policy"]["name"], "release");
    let canonical = format!(
        r#"{{"publicKeys":[{}]}}"#,
        serde_json::to_string(&pem).unwrap()
    );
    assert_eq!(
        admitted["policy"]["sha256"],
        e2e::image::sha256(canonical.as_bytes()).trim_start_matches("sha256:")
    );
    let spki = {
        use p256::pkcs8::EncodePublicKey;
        signer.verifying_key().to_public_key_der().unwrap()
    };
    assert_eq!(
        admitted["publicKey"]["sha256"],
        e2e::image::sha256(spki.as_bytes()).trim_start_matches("sha256:")
    );
    let signature_manifest = cosign_signature(&signed.digest, &signer, false, None);
    assert_eq!(admitted["signature"], signature_manifest.digest.as_str());
    assert!(predicate["run"].as_str().unwrap().contains("CLI"));
    // A receipt with another statement does not verify: the signature covers the payload.
    let mut forged = found[0].clone();
    let mut changed = statement.clone();
    changed["predicate"]["source"]["registry"] = json!("elsewhere.example");
    forged["payload"] = json!(B64.encode(changed.to_string()));
    let result = std::panic::catch_unwind(|| verified_statement(&forged, &public_key));
    assert!(result.is_err(), "a changed statement still verified");
    // Not promoted, no receipt.
    assert!(target.manifest("app", "unsigned").await.is_none());
    assert!(receipts(&target, &unsigned).await.is_empty());
    // The receipt's fallback index (distribution has no referrers API) is no extra tag to a
    // verification: the destination is what the source says it should be.
    let mut verify = job(&dst.host, true);
    verify.mode = replication::job::Mode::Verify;
    let checked = replication::run::run_job(
        &Connections::new(settings.clone()),
        verify,
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    let report = checked.report.verify.clone().unwrap();
    // The image and its `.sig` artifact, both identical.
    assert_eq!(
        (
            report.identical,
            report.missing + report.different + report.extra
        ),
        (2, 0),
        "{:?}",
        checked.differences
    );

    // The job's own key (allowed by this deployment) admits the image, but certifies nothing.
    let inline = TestRegistry::start();
    let output = replication::run::run_job(
        &Connections::new(Settings {
            allowlist: Some(allowlist(true)),
            ..settings.clone()
        }),
        job_with(&inline.host, Some(json!({"publicKeys": [pem]}))),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (output.report.failed, output.report.unsigned),
        (0, 1),
        "{:?}",
        output.report
    );
    let own = Pusher::new(&inline.host, None);
    assert_eq!(
        own.manifest("app", "signed").await.unwrap(),
        signed.manifest
    );
    assert!(
        receipts(&own, &signed).await.is_empty(),
        "a job's own key yielded a receipt"
    );
    // Where the deployment does not allow it, the job is refused before any request.
    let refused = replication::run::run_job(
        &Connections::new(settings.clone()),
        job_with(&inline.host, Some(json!({"publicKeys": [pem]}))),
        &replication::run::Quiet,
    )
    .await;
    assert!(
        matches!(&refused, Err(replication::Error::InvalidInput { problems }) if problems[0].field == "requireSignature.publicKeys"),
        "{refused:?}"
    );

    // Without requireSignature nothing is promoted through the gate: copied, no receipt.
    let ungated = TestRegistry::start();
    let output = replication::run::run_job(
        &Connections::new(settings),
        job(&ungated.host, false),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(output.report.failed, 0, "{:?}", output.report);
    let plain = Pusher::new(&ungated.host, None);
    assert_eq!(
        plain.manifest("app", "signed").await.unwrap(),
        signed.manifest
    );
    assert!(receipts(&plain, &signed).await.is_empty());
}
