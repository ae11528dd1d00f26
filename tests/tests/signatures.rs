//! Promotion gated on signatures (`requireSignature`): images signed by the tests with keys they
//! generate, in cosign's form. A valid signature is copied with its image; a missing, wrong-key
//! or tampered one is not, and each image is named in the report with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::image::{cosign_signature, signing_key, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use replication::connect::{Connections, Settings};
use replication::steps::ImageStatus;
use replication::Job;
use serde_json::json;

fn fallback(image: &TestImage) -> String {
    image.digest.replacen(':', "-", 1)
}

#[tokio::test]
async fn only_images_signed_with_a_trusted_key_are_copied_and_the_others_are_named() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let target = Pusher::new(&dst.host, None);
    let (trusted, trusted_pem) = signing_key(1);
    let (other, _) = signing_key(2);
    let image = |seed| ImageBuilder::new(Format::Oci).layer(seed, 1000).build();
    let (signed, unsigned, wrong_key, tampered) = (image(1), image(2), image(3), image(4));
    for (tag, img) in [
        ("signed", &signed),
        ("unsigned", &unsigned),
        ("wrong-key", &wrong_key),
        ("tampered", &tampered),
    ] {
        source.push("app", tag, img).await;
    }
    let signature = cosign_signature(&signed.digest, &trusted, false, None);
    source
        .push("app", &format!("{}.sig", fallback(&signed)), &signature)
        .await;
    let by_other = cosign_signature(&wrong_key.digest, &other, false, None);
    source
        .push("app", &format!("{}.sig", fallback(&wrong_key)), &by_other)
        .await;
    let changed = cosign_signature(&tampered.digest, &trusted, true, None);
    source
        .push("app", &format!("{}.sig", fallback(&tampered)), &changed)
        .await;
    // A valid signature of another image does not sign this one.
    let replayed = cosign_signature(&signed.digest, &trusted, false, None);
    let moved = image(5);
    source.push("app", "replayed", &moved).await;
    source
        .push("app", &format!("{}.sig", fallback(&moved)), &replayed)
        .await;

    let job = |extra: serde_json::Value| {
        let mut base = json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dst.host, "insecure": true}],
            "requireSignature": {"publicKeys": [trusted_pem]},
        });
        for (k, v) in extra.as_object().unwrap() {
            base["requireSignature"][k] = v.clone();
        }
        Job::from_json(&base.to_string()).unwrap()
    };
    let conns = Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    });

    let output = replication::run::run_job(&conns, job(json!({})), &replication::run::Quiet)
        .await
        .unwrap();

    let report = &output.report;
    // The signed image and its signature (a referrer, copied with it); nothing else.
    assert_eq!(
        (report.copied, report.unsigned, report.failed),
        (2, 4, 0),
        "{report:?}"
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/app:signed", dst.host), None),
        signed.manifest.to_vec()
    );
    assert_eq!(
        target
            .manifest("app", &format!("{}.sig", fallback(&signed)))
            .await
            .unwrap(),
        signature.manifest
    );
    for tag in ["unsigned", "wrong-key", "tampered", "replayed"] {
        assert!(
            target.manifest("app", tag).await.is_none(),
            "{tag} was copied"
        );
    }
    assert!(target
        .manifest("app", &format!("{}.sig", fallback(&wrong_key)))
        .await
        .is_none());
    let reason = |tag: &str| {
        let named = report
            .unsigned_images
            .iter()
            .find(|r| r.tags == [tag])
            .unwrap_or_else(|| panic!("{tag} not named: {:?}", report.unsigned_images));
        assert_eq!(named.status, ImageStatus::Unsigned);
        named.error.clone().unwrap()
    };
    assert!(
        reason("unsigned").contains("no cosign signature"),
        "{}",
        reason("unsigned")
    );
    assert!(
        reason("wrong-key").contains("no signature verifies"),
        "{}",
        reason("wrong-key")
    );
    assert!(
        reason("tampered").contains("no signature verifies"),
        "{}",
        reason("tampered")
    );
    assert!(
        reason("replayed").contains(&format!("signs {}, not this image", signed.digest)),
        "{}",
        reason("replayed")
    );
    assert_eq!(report.unsigned_images[0].repository, "app");

    // Asked to, unsigned images fail the run (named as failures).
    let strict = replication::run::run_job(
        &conns,
        job(json!({"failUnsigned": true})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            strict.report.failed,
            strict.report.unsigned,
            strict.report.present
        ),
        (4, 0, 2),
        "{:?}",
        strict.report
    );
}

#[test]
fn a_public_key_that_is_not_p256_pem_is_refused_naming_it() {
    let (_, pem) = signing_key(3);
    let input = json!({
        "source": {"registry": "ghcr.io"},
        "destinations": [{"registry": "quay.io"}],
        "requireSignature": {"publicKeys": [pem, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]},
    });
    match Job::parse(&input.to_string()) {
        Err(replication::Error::InvalidInput { problems }) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "requireSignature.publicKeys[1]");
        }
        other => panic!("{other:?}"),
    }
    let none = json!({
        "source": {"registry": "ghcr.io"},
        "destinations": [{"registry": "quay.io"}],
        "requireSignature": {"publicKeys": []},
    });
    assert!(Job::parse(&none.to_string()).is_err());
}
