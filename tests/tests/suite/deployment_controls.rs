//! The deployment owns trust and scope; a caller chooses within it, never around it. Each test
//! plays what someone allowed to start a run (or to push next to a signed image) would try, on
//! real registries, and checks what reached the destination and where requests went (a
//! recording proxy in front of each registry).

use e2e::hostile::HostileRegistry;
use e2e::image::{cosign_signature, signing_key, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use replication::allowlist::Allowlist;
use replication::connect::{Connections, Settings};
use replication::report::ImageStatus;
use replication::Job;
use serde_json::{json, Value};

/// A deployment allowing the loopback registries, with `destination` laid over its one
/// destination entry and the key of seed 61 as trust policy `release`.
fn deployment(destination: Value) -> Settings {
    let (_, pem) = signing_key(61);
    let mut entry = json!({"registry": "127.0.0.1:*"});
    for (k, v) in destination.as_object().unwrap() {
        entry[k] = v.clone();
    }
    let allowlist = Allowlist::from_json(
        &json!({
            "sources": [{"registry": "127.0.0.1:*"}],
            "destinations": [entry],
            "insecure": ["127.0.0.1:*"],
            "trustPolicies": {"release": {"publicKeys": [pem]}},
        })
        .to_string(),
        "test deployment",
    )
    .unwrap();
    Settings {
        registry: e2e::fast_retry_config(&[]),
        allowlist: Some(allowlist),
        ..Settings::default()
    }
}

fn job(source: &str, dest: &str, destination: Value, extra: Value) -> Job {
    let mut d = json!({"registry": dest, "insecure": true});
    for (k, v) in destination.as_object().unwrap() {
        d[k] = v.clone();
    }
    let mut job = json!({
        "source": {"registry": source, "insecure": true},
        "destinations": [d],
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    Job::from_json(&job.to_string()).unwrap()
}

/// A source with `app:v1` (signed with the `release` key, its `.sig` tag beside it) and
/// `app:v2` (unsigned).
async fn source_with_signed_and_unsigned() -> (TestRegistry, TestImage, TestImage) {
    let src = TestRegistry::start();
    let (key, _) = signing_key(61);
    let signed = ImageBuilder::new(Format::Oci).layer(61, 1500).build();
    let unsigned = ImageBuilder::new(Format::Oci).layer(62, 1500).build();
    let source = Pusher::new(&src.host, None);
    source.push("app", "v1", &signed).await;
    source.push("app", "v2", &unsigned).await;
    source
        .push(
            "app",
            &format!("{}.sig", signed.digest.replacen(':', "-", 1)),
            &cosign_signature(&signed.digest, &key, false, None),
        )
        .await;
    (src, signed, unsigned)
}

#[tokio::test]
async fn a_job_outside_the_destinations_scope_is_refused_before_any_request() {
    let (src, _, _) = source_with_signed_and_unsigned().await;
    let dst = TestRegistry::start();
    let (to_source, to_destination) = (
        HostileRegistry::start(&src.host),
        HostileRegistry::start(&dst.host),
    );
    let settings = deployment(json!({"repositories": ["mirror/**"]}));
    // Each is what a caller could do within IAM: prune, make repositories exactly the
    // source's (immutable to mutable), copy policies, write an explicit image outside the scope.
    for (extra, field) in [
        (json!({"prune": true}), "prune"),
        (
            json!({"repositorySettings": "mirror"}),
            "repositorySettings",
        ),
        (
            json!({"copyRepositoryPolicy": true}),
            "copyRepositoryPolicy",
        ),
        (
            json!({"images": [{"repository": "app", "tag": "v1"}]}),
            "images[0].repository",
        ),
    ] {
        let result = replication::run::run_job(
            &Connections::new(settings.clone()),
            job(
                &to_source.host,
                &to_destination.host,
                json!({}),
                extra.clone(),
            ),
            &replication::run::Quiet,
        )
        .await;
        match result {
            Err(replication::Error::InvalidInput { problems }) => {
                assert!(
                    problems.iter().any(|p| p.field == field),
                    "{extra}: {problems:?}"
                )
            }
            other => panic!("{extra}: not refused: {other:?}"),
        }
    }
    assert!(
        to_source.requests().is_empty(),
        "{:?}",
        to_source.requests()
    );
    assert!(
        to_destination.requests().is_empty(),
        "{:?}",
        to_destination.requests()
    );
}

#[tokio::test]
async fn a_mapping_onto_a_repository_outside_the_scope_writes_nothing_there() {
    let (src, signed, _) = source_with_signed_and_unsigned().await;
    let dst = TestRegistry::start();
    let recorder = HostileRegistry::start(&dst.host);
    let settings = deployment(json!({"repositories": ["mirror/**"]}));
    // The source is allowed, the registry too: only the name is the caller's.
    let hijack = json!({"repositoryMapping": [{"match": "app", "replace": "prod/payments"}]});
    let output = replication::run::run_job(
        &Connections::new(settings.clone()),
        job(&src.host, &recorder.host, hijack, json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(output.report.copied, 0, "{:?}", output.report);
    assert_eq!(output.report.repositories_failed, 1, "{:?}", output.report);
    let failures = format!("{:?}", output.report);
    assert!(
        failures.contains("prod/payments") && failures.contains("mirror/**"),
        "{failures}"
    );
    assert!(
        recorder
            .requests()
            .iter()
            .all(|r| !r.contains("prod/payments")),
        "{:?}",
        recorder.requests()
    );
    let target = Pusher::new(&dst.host, None);
    assert!(target.manifest("prod/payments", "v1").await.is_none());

    // Within the scope the same job copies.
    let output = replication::run::run_job(
        &Connections::new(settings),
        job(
            &src.host,
            &dst.host,
            json!({"repositoryPrefix": "mirror/"}),
            json!({}),
        ),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(output.report.failed, 0, "{:?}", output.report);
    assert_eq!(
        target.manifest("mirror/app", "v1").await.unwrap(),
        signed.manifest
    );
}

#[tokio::test]
async fn a_destination_that_requires_a_policy_gets_only_what_passes_it_whatever_the_job_says() {
    let (src, signed, unsigned) = source_with_signed_and_unsigned().await;
    let dst = TestRegistry::start();
    let settings = deployment(json!({"requireSignature": "release"}));
    // The job asks for no signature at all.
    let output = replication::run::run_job(
        &Connections::new(settings.clone()),
        job(&src.host, &dst.host, json!({}), json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    let target = Pusher::new(&dst.host, None);
    assert_eq!(target.manifest("app", "v1").await.unwrap(), signed.manifest);
    assert!(target.manifest("app", "v2").await.is_none());
    assert!(target.manifest("app", &unsigned.digest).await.is_none());
    assert_eq!(output.report.unsigned, 1, "{:?}", output.report);
    let admitted = output
        .images
        .iter()
        .find(|r| r.tags == ["v1"] && r.status == ImageStatus::Copied)
        .and_then(|r| r.signed_by.clone())
        .unwrap();
    assert!(
        admitted.starts_with("policy release: publicKeys[0] sha256:"),
        "{admitted}"
    );

    // A job naming a policy the deployment does not have is refused, naming the field.
    let unknown = replication::run::run_job(
        &Connections::new(settings),
        job(
            &src.host,
            &dst.host,
            json!({}),
            json!({"requireSignature": {"policy": "anything"}}),
        ),
        &replication::run::Quiet,
    )
    .await;
    assert!(
        matches!(&unknown, Err(replication::Error::InvalidInput { problems }) if problems[0].field == "requireSignature.policy"),
        "{unknown:?}"
    );
}

#[test]
fn a_deployment_with_a_bad_policy_or_scope_is_refused_naming_the_field() {
    for (allowlist, field) in [
        (
            json!({"trustPolicies": {"Release": {"publicKeys": []}}}),
            "trustPolicies.Release",
        ),
        (
            json!({"trustPolicies": {"release": {"identities": [{"issuer": "https://x"}]}}}),
            "trustPolicies.release.identities[0]",
        ),
        (
            json!({"destinations": [{"registry": "r.io", "requireSignature": "nope"}]}),
            "destinations[0].requireSignature",
        ),
        (
            json!({"destinations": [{"registry": "r.io", "settingsModes": ["everything"]}]}),
            "destinations[0].settingsModes[0]",
        ),
        (
            json!({"sources": [{"registry": "r.io", "prune": true}]}),
            "sources[0]",
        ),
    ] {
        match Allowlist::from_json(&allowlist.to_string(), "FILE") {
            Err(replication::Error::InvalidInput { problems }) => assert!(
                problems.iter().any(|p| p.field == format!("FILE: {field}")),
                "{allowlist}: {problems:?}"
            ),
            other => panic!("{allowlist}: {other:?}"),
        }
    }
}
