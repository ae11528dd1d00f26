//! `requireSignature` with Sigstore bundles, as cosign 3 and CI signers attach them: a private
//! Sigstore instance of the rig (its own CA for Fulcio, its own log key for Rekor, its
//! `trusted_root.json`) signs images keyless for CI identities and with a key; the bundles are
//! attached as OCI 1.1 referrers (distribution has no referrers API: through the
//! `sha256-<hex>` fallback index, as cosign writes it there). Only images a trusted identity or
//! key signed reach the destination, byte for byte; every other one is named with its reason,
//! and every promoted image names what admitted it.

use e2e::image::{signing_key, sigstore_bundle_referrer, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use e2e::sigstore::{Keyless, PrivateSigstore};
use replication::connect::{Connections, Settings};
use replication::sigstore::{TrustedRootPolicy, TrustedRootSource};
use replication::steps::ImageStatus;
use replication::Job;
use serde_json::json;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const RELEASE: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Pushes `image` under `tag` and `bundle` as its referrer, listed in its fallback index.
async fn push_signed(source: &Pusher, tag: &str, image: &TestImage, bundle: &[u8]) -> TestImage {
    source.push("app", tag, image).await;
    let referrer = sigstore_bundle_referrer(image, bundle);
    source.push("app", &referrer.digest, &referrer).await;
    let index = e2e::image::referrers_index(vec![(referrer.clone(), BUNDLE)]);
    source
        .push("app", &image.digest.replacen(':', "-", 1), &index)
        .await;
    referrer
}

fn job(src: &str, dst: &str, key_pem: &str) -> Job {
    Job::from_json(
        &json!({
            "source": {"registry": src, "insecure": true},
            "destinations": [{"registry": dst, "insecure": true}],
            "referrers": true,
            "requireSignature": {
                "publicKeys": [key_pem],
                "identities": [{
                    "issuer": GITHUB,
                    "subjectRegExp": "https://github.com/acme/[^/]+/.github/workflows/release.yml@refs/tags/.+"
                }]
            }
        })
        .to_string(),
    )
    .unwrap()
}

/// The rig's private Sigstore has no CT log: its deployments say so
/// (`ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT=true`).
fn settings(root: TrustedRootSource) -> Settings {
    Settings {
        registry: e2e::fast_retry_config(&[]),
        trusted_root: root,
        trusted_root_policy: TrustedRootPolicy {
            allow_no_ct_logs: true,
            ..TrustedRootPolicy::default()
        },
        ..Settings::default()
    }
}

/// Puts `body` under `bucket/key` in the moto at `url`, as `account` (moto's account header;
/// an `Authorization`, which moto does not check, lets it replace an object).
async fn put_object(url: &str, account: &str, bucket: &str, key: &str, body: String) {
    let put = reqwest::Client::new()
        .put(format!("{url}/{bucket}/{key}"))
        .header("x-moto-account-id", account)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
}

/// The one image `release` signed keyless by the release workflow, with its bundle, in a new
/// source registry; the registry and the job's key (unused).
async fn signed_release(
    sigstore: &PrivateSigstore,
    seed: u64,
) -> (TestRegistry, TestImage, String) {
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci).layer(seed, 900).build();
    let bundle = sigstore.keyless_bundle(&image.digest, &Keyless::new(RELEASE, GITHUB));
    push_signed(&Pusher::new(&src.host, None), "release", &image, &bundle).await;
    let (_, key_pem) = signing_key(seed);
    (src, image, key_pem)
}

/// The run's repository failure, or `None` when no repository failed.
async fn repository_failure(conns: &Connections, src: &str, key_pem: &str) -> Option<String> {
    let dst = TestRegistry::start();
    let report = replication::run::run_job(
        conns,
        job(src, &dst.host, key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .report;
    let failure = report.repository_failures.first().map(|f| f.error.clone());
    let copied = Pusher::new(&dst.host, None)
        .manifest("app", "release")
        .await
        .is_some();
    if failure.is_some() {
        assert_eq!(report.copied, 0, "{report:?}");
        assert!(!copied);
    } else {
        assert_eq!((report.unsigned, report.failed), (0, 0), "{report:?}");
        assert!(copied, "{report:?}");
    }
    failure
}

#[tokio::test]
async fn bundles_admit_what_a_trusted_identity_or_key_signed_and_name_why_the_rest_did_not() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let sigstore = PrivateSigstore::new();
    let elsewhere = sigstore.with_another_ca();
    let (key, key_pem) = signing_key(31);
    let (other_key, _) = signing_key(32);
    let image = |seed| ImageBuilder::new(Format::Oci).layer(seed, 1500).build();
    let images: Vec<(&str, TestImage)> = [
        "release",
        "keyed",
        "wrong-identity",
        "wrong-issuer",
        "unlogged",
        "other-digest",
        "tampered",
        "other-root",
        "other-key",
    ]
    .into_iter()
    .zip(40..)
    .map(|(tag, seed)| (tag, image(seed)))
    .collect();
    let digest = |tag: &str| {
        images
            .iter()
            .find(|(t, _)| *t == tag)
            .unwrap()
            .1
            .digest
            .clone()
    };
    let mut referrers = std::collections::HashMap::new();
    for (tag, img) in &images {
        let bundle = match *tag {
            "release" => sigstore.keyless_bundle(&img.digest, &Keyless::new(RELEASE, GITHUB)),
            "keyed" => sigstore.key_bundle(&img.digest, &key),
            "wrong-identity" => sigstore.keyless_bundle(
                &img.digest,
                &Keyless::new(
                    // The pattern is anchored: a look-alike around a trusted identity fails.
                    "https://github.com/evil/x/.github/workflows/release.yml@refs/tags/v1?https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1",
                    GITHUB,
                ),
            ),
            "wrong-issuer" => sigstore
                .keyless_bundle(&img.digest, &Keyless::new(RELEASE, "https://gitlab.com")),
            "unlogged" => sigstore.keyless_bundle(
                &img.digest,
                &Keyless {
                    logged: false,
                    ..Keyless::new(RELEASE, GITHUB)
                },
            ),
            // A valid bundle of another image attached to this one.
            "other-digest" => {
                sigstore.keyless_bundle(&digest("release"), &Keyless::new(RELEASE, GITHUB))
            }
            "tampered" => {
                let mut bundle: serde_json::Value = serde_json::from_slice(
                    &sigstore.keyless_bundle(&img.digest, &Keyless::new(RELEASE, GITHUB)),
                )
                .unwrap();
                let statement = json!({
                    "_type": "https://in-toto.io/Statement/v1",
                    "subject": [{"name": "x", "digest": {"sha256": img.digest.trim_start_matches("sha256:")}}],
                    "predicateType": "https://sigstore.dev/cosign/sign/v1",
                    "predicate": {"changed": true}
                });
                use base64::Engine;
                bundle["dsseEnvelope"]["payload"] = json!(base64::engine::general_purpose::STANDARD
                    .encode(statement.to_string()));
                serde_json::to_vec(&bundle).unwrap()
            }
            "other-root" => elsewhere.keyless_bundle(&img.digest, &Keyless::new(RELEASE, GITHUB)),
            "other-key" => sigstore.key_bundle(&img.digest, &other_key),
            _ => unreachable!(),
        };
        let referrer = push_signed(&source, tag, img, &bundle).await;
        referrers.insert(*tag, referrer);
    }
    let dir = tempfile::tempdir().unwrap();
    let root = sigstore.write_trusted_root(dir.path());

    let output = replication::run::run_job(
        &Connections::new(settings(TrustedRootSource::File(root))),
        job(&src.host, &dst.host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let report = &output.report;
    assert_eq!((report.unsigned, report.failed), (7, 0), "{report:?}");
    let target = Pusher::new(&dst.host, None);
    for tag in ["release", "keyed"] {
        // The image byte for byte (skopeo reads it), and its bundle with it.
        assert_eq!(
            e2e::skopeo::inspect_raw(&format!("{}/app:{tag}", dst.host), None),
            images
                .iter()
                .find(|(t, _)| *t == tag)
                .unwrap()
                .1
                .manifest
                .to_vec()
        );
        let referrer = &referrers[tag];
        assert_eq!(
            target.manifest("app", &referrer.digest).await.unwrap(),
            referrer.manifest,
            "{tag}'s bundle did not travel with it"
        );
    }
    let signed_by = |tag: &str| {
        output
            .images
            .iter()
            .find(|r| r.tags == [tag] && r.status == ImageStatus::Copied)
            .unwrap_or_else(|| panic!("{tag} not copied: {:?}", output.images))
            .signed_by
            .clone()
            .unwrap()
    };
    assert!(
        signed_by("release").starts_with(&format!(
            "job: identities[0] {RELEASE:?} (issuer {GITHUB:?}), signature sha256:"
        )),
        "{}",
        signed_by("release")
    );
    assert!(
        signed_by("keyed").starts_with("job: publicKeys[0] sha256:"),
        "{}",
        signed_by("keyed")
    );
    let reason = |tag: &str| e2e::unsigned_reason(report, tag);
    for (tag, expected) in [
        (
            "wrong-identity",
            "a keyless dsse bundle by https://github.com/evil/x/",
        ),
        (
            "wrong-issuer",
            "(issuer https://gitlab.com), which none of requiresignature.identities allows",
        ),
        // An expired certificate (as every Fulcio one is, minutes after signing) with nothing
        // proving it was valid when it signed.
        ("unlogged", "must have an inclusion proof"),
        ("other-digest", "does not match any subject"),
        ("tampered", "signature verification failed"),
        ("other-root", "certificate chain"),
        ("other-key", "signature verification failed"),
    ] {
        let why = reason(tag);
        assert!(
            why.to_lowercase().contains(expected),
            "{tag}: {why:?} does not say {expected:?}"
        );
        assert!(
            target.manifest("app", tag).await.is_none(),
            "{tag} reached the destination"
        );
    }

    // The same source against Sigstore's public-good root (built in, read offline): the
    // private CA and log are not trusted there, so nothing is admitted.
    let public = TestRegistry::start();
    let output = replication::run::run_job(
        &Connections::new(settings(TrustedRootSource::Bundled)),
        job(&src.host, &public.host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (output.report.copied, output.report.unsigned),
        (0, 9),
        "{:?}",
        output.report
    );

    // A job trusting only keys names what a keyless bundle would need.
    let keys_only = Job::from_json(
        &json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": public.host, "insecure": true}],
            "images": [{"repository": "app", "tag": "release"}],
            "requireSignature": {"publicKeys": [key_pem]}
        })
        .to_string(),
    )
    .unwrap();
    let output = replication::run::run_job(
        &Connections::new(settings(TrustedRootSource::File(
            sigstore.write_trusted_root(dir.path()),
        ))),
        keys_only,
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    let why = output.report.unsigned_images[0].error.clone().unwrap();
    assert!(
        why.contains("the job trusts no identities (requireSignature.identities)"),
        "{why}"
    );
}

#[test]
fn signer_identities_are_checked_naming_the_field() {
    let parse = |require: serde_json::Value| {
        let input = json!({
            "source": {"registry": "ghcr.io"},
            "destinations": [{"registry": "quay.io"}],
            "requireSignature": require,
        });
        match Job::parse(&input.to_string()) {
            Err(replication::Error::InvalidInput { problems }) => {
                problems.into_iter().map(|p| p.field).collect::<Vec<_>>()
            }
            Ok(_) => Vec::new(),
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(parse(json!({})), ["requireSignature"]);
    assert_eq!(
        parse(
            json!({"identities": [{"issuer": GITHUB, "subject": RELEASE, "subjectRegExp": ".*"}]})
        ),
        ["requireSignature.identities[0]"]
    );
    assert_eq!(
        parse(json!({"identities": [{"issuer": GITHUB}]})),
        ["requireSignature.identities[0]"]
    );
    assert_eq!(
        parse(
            json!({"identities": [{"issuer": GITHUB, "subject": RELEASE}, {"issuer": GITHUB, "subjectRegExp": "(unclosed"}]})
        ),
        ["requireSignature.identities[1].subjectRegExp"]
    );
    assert_eq!(
        parse(json!({"identities": [{"issuer": " ", "subject": RELEASE}]})),
        ["requireSignature.identities[0].issuer"]
    );
    assert!(parse(json!({"identities": [{"issuer": GITHUB, "subject": RELEASE}]})).is_empty());
}

#[tokio::test]
async fn an_unusable_trusted_root_fails_the_run_naming_it() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let image = ImageBuilder::new(Format::Oci).layer(60, 100).build();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trusted_root.json");
    std::fs::write(&path, "{\"mediaType\": 1}").unwrap();
    let (_, pem) = signing_key(33);
    let report = replication::run::run_job(
        &Connections::new(settings(TrustedRootSource::File(path.clone()))),
        job(&src.host, &dst.host, &pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .report;
    // The repository fails (so the run does), naming the setting and the file.
    assert_eq!(
        (report.repositories_failed, report.copied),
        (1, 0),
        "{report:?}"
    );
    let error = &report.repository_failures[0].error;
    assert!(error.contains("ECR_REPLICATOR_TRUSTED_ROOT"), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(Pusher::new(&dst.host, None)
        .manifest("app", "v1")
        .await
        .is_none());
}

#[tokio::test]
async fn a_bundle_listed_by_the_referrers_api_admits_its_image_past_junk_referrers() {
    // A source with the OCI 1.1 referrers API (one referrer per page): a junk manifest typed as
    // a bundle first, then the real bundle; no fallback index.
    let sigstore = PrivateSigstore::new();
    let image = ImageBuilder::new(Format::Oci).layer(70, 1200).build();
    let junk = e2e::image::oci_artifact(
        Some(BUNDLE),
        ("application/vnd.oci.empty.v1+json", b"{}"),
        &[(BUNDLE, b"{\"not\": \"a bundle\"}")],
    );
    let bundle = sigstore.keyless_bundle(&image.digest, &Keyless::new(RELEASE, GITHUB));
    let referrer = sigstore_bundle_referrer(&image, &bundle);
    let source = e2e::fake::FakeRegistry::start_with_referrers(
        &image,
        "release",
        &[(junk, BUNDLE), (referrer.clone(), BUNDLE)],
    )
    .await;
    let dst = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, key_pem) = signing_key(34);

    let output = replication::run::run_job(
        &Connections::new(settings(TrustedRootSource::File(
            sigstore.write_trusted_root(dir.path()),
        ))),
        job(&source.host, &dst.host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    assert_eq!(
        (output.report.unsigned, output.report.failed),
        (0, 0),
        "{:?}",
        output.report
    );
    let copied = output
        .images
        .iter()
        .find(|r| r.tags == ["release"])
        .unwrap();
    assert!(
        copied
            .signed_by
            .as_deref()
            .unwrap()
            .starts_with("job: identities[0] \""),
        "{copied:?}"
    );
    let target = Pusher::new(&dst.host, None);
    assert_eq!(
        target.manifest("app", "release").await.unwrap(),
        image.manifest
    );
    assert_eq!(
        target.manifest("app", &referrer.digest).await.unwrap(),
        referrer.manifest
    );
}

#[tokio::test]
async fn a_trusted_root_kept_in_s3_is_read_from_there() {
    // The deployment's `trustedRoot: "s3://bucket/key"`: an object in moto's S3 (unsigned
    // anonymous PUT, as the rig creates its buckets), read by the functions' S3 client.
    let moto = e2e::moto::Moto::start();
    let sigstore = PrivateSigstore::new();
    e2e::moto::create_bucket_at(&moto.url, "sigstore-roots").await;
    let put = reqwest::Client::new()
        .put(format!(
            "{}/sigstore-roots/private/trusted_root.json",
            moto.url
        ))
        .body(sigstore.trusted_root())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci).layer(80, 900).build();
    let bundle = sigstore.keyless_bundle(&image.digest, &Keyless::new(RELEASE, GITHUB));
    push_signed(&source, "release", &image, &bundle).await;
    let (_, key_pem) = signing_key(35);
    let root = TrustedRootSource::parse("s3://sigstore-roots/private/trusted_root.json").unwrap();
    let settings = Settings {
        aws: moto.aws_settings(),
        ..settings(root)
    };

    let output = replication::run::run_job(
        &Connections::new(settings.clone()),
        job(&src.host, &dst.host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    assert_eq!(output.report.unsigned, 0, "{:?}", output.report);
    assert_eq!(
        Pusher::new(&dst.host, None)
            .manifest("app", "release")
            .await
            .unwrap(),
        image.manifest
    );
    // An object that is not there fails the repository, naming it.
    let missing = Settings {
        trusted_root: TrustedRootSource::parse("s3://sigstore-roots/none.json").unwrap(),
        ..settings
    };
    let report = replication::run::run_job(
        &Connections::new(missing),
        job(&src.host, &TestRegistry::start().host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .report;
    assert_eq!(report.repositories_failed, 1, "{report:?}");
    assert!(
        report.repository_failures[0]
            .error
            .contains("s3://sigstore-roots/none.json: no such object"),
        "{:?}",
        report.repository_failures
    );
}

/// A trusted root without certificate transparency logs turns off the SCT check of keyless
/// certificates: refused, naming the setting, unless the deployment allows it; the same root
/// with `ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT=true` admits the image.
#[tokio::test]
async fn a_trusted_root_without_ct_logs_is_refused_unless_the_deployment_allows_it() {
    let sigstore = PrivateSigstore::new();
    let (src, _, key_pem) = signed_release(&sigstore, 90).await;
    let dir = tempfile::tempdir().unwrap();
    let root = TrustedRootSource::File(sigstore.write_trusted_root(dir.path()));
    let refusing = Settings {
        trusted_root_policy: TrustedRootPolicy::default(),
        ..settings(root.clone())
    };
    assert!(!refusing.trusted_root_policy.allow_no_ct_logs);

    let error = repository_failure(&Connections::new(refusing), &src.host, &key_pem)
        .await
        .expect("a root without CT logs was taken");
    assert!(
        error.contains("ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT")
            && error.contains("lists no certificate transparency log"),
        "{error}"
    );
    assert!(error.contains(&dir.path().display().to_string()), "{error}");

    let allowed = repository_failure(&Connections::new(settings(root)), &src.host, &key_pem).await;
    assert_eq!(allowed, None);
}

/// A pinned trusted root (`ECR_REPLICATOR_TRUSTED_ROOT_SHA256`) whose bytes differ is refused,
/// naming both digests; the right pin admits.
#[tokio::test]
async fn a_trusted_root_whose_sha256_is_not_the_pinned_one_is_refused_naming_both() {
    let sigstore = PrivateSigstore::new();
    let (src, _, key_pem) = signed_release(&sigstore, 91).await;
    let dir = tempfile::tempdir().unwrap();
    let path = sigstore.write_trusted_root(dir.path());
    let actual = oci::Digest::of(&std::fs::read(&path).unwrap()).to_string();
    let other = oci::Digest::of(sigstore.with_another_ca().trusted_root().as_bytes()).to_string();
    let pinned = |pin: &str| {
        let mut settings = settings(TrustedRootSource::File(path.clone()));
        settings.trusted_root_policy.sha256 = TrustedRootPolicy::parse_sha256(pin).unwrap();
        Connections::new(settings)
    };

    let error = repository_failure(&pinned(&other), &src.host, &key_pem)
        .await
        .expect("a root that is not the pinned one was taken");
    assert!(
        error.contains("ECR_REPLICATOR_TRUSTED_ROOT_SHA256")
            && error.contains(&format!("has sha256 {actual}, not the pinned {other}")),
        "{error}"
    );
    // The pin as the hex alone, upper case: the same digest.
    let hex = actual.trim_start_matches("sha256:").to_uppercase();
    assert_eq!(
        repository_failure(&pinned(&hex), &src.host, &key_pem).await,
        None
    );
    assert!(TrustedRootPolicy::parse_sha256("sha256:abc").is_err());
}

/// A trusted root in S3 is read with `ExpectedBucketOwner`: by default the process's own account
/// (STS GetCallerIdentity; moto's default account here), else the configured one. A bucket of
/// that name in another account is refused (S3 answers 403 AccessDenied), naming the object and
/// the account; configured with that account, it is read.
#[tokio::test]
async fn a_trusted_root_in_s3_is_read_only_from_a_bucket_the_expected_account_owns() {
    const OTHER: &str = "210987654321";
    let moto = e2e::moto::Moto::start();
    let sigstore = PrivateSigstore::new();
    let create = reqwest::Client::new()
        .put(format!("{}/foreign-roots", moto.url))
        .header("x-moto-account-id", OTHER)
        .send()
        .await
        .unwrap();
    assert!(create.status().is_success(), "{}", create.status());
    put_object(
        &moto.url,
        OTHER,
        "foreign-roots",
        "trusted_root.json",
        sigstore.trusted_root(),
    )
    .await;
    let (src, _, key_pem) = signed_release(&sigstore, 92).await;
    let owned_by = |owner: Option<&str>| {
        let mut settings = Settings {
            aws: moto.aws_settings(),
            ..settings(TrustedRootSource::parse("s3://foreign-roots/trusted_root.json").unwrap())
        };
        settings.trusted_root_policy.bucket_owner = owner.map(str::to_string);
        Connections::new(settings)
    };

    for expected in [None, Some("123456789012")] {
        let error = repository_failure(&owned_by(expected), &src.host, &key_pem)
            .await
            .expect("a root from a bucket of another account was read");
        assert!(
            error.contains("s3://foreign-roots/trusted_root.json")
                && error.contains("account 123456789012 owns")
                && error.contains("AccessDenied"),
            "{expected:?}: {error}"
        );
    }
    assert_eq!(
        repository_failure(&owned_by(Some(OTHER)), &src.host, &key_pem).await,
        None
    );
}

/// A warm function reads a trusted root kept in S3 again once it is older than the policy's
/// `max_age` (an hour by default): a root replaced there (another CA) is in force for the next
/// check, and the bundle the old root admitted is refused.
#[tokio::test]
async fn a_trusted_root_in_s3_is_read_again_once_older_than_its_max_age() {
    let moto = e2e::moto::Moto::start();
    let sigstore = PrivateSigstore::new();
    let rotated = sigstore.with_another_ca();
    e2e::moto::create_bucket_at(&moto.url, "sigstore-roots").await;
    let put = |root: String| {
        put_object(
            &moto.url,
            "123456789012",
            "sigstore-roots",
            "root.json",
            root,
        )
    };
    put(sigstore.trusted_root()).await;
    let (src, _, key_pem) = signed_release(&sigstore, 93).await;
    let connections = |max_age: std::time::Duration| {
        let mut settings = Settings {
            aws: moto.aws_settings(),
            ..settings(TrustedRootSource::parse("s3://sigstore-roots/root.json").unwrap())
        };
        settings.trusted_root_policy.max_age = max_age;
        Connections::new(settings)
    };
    assert_eq!(
        TrustedRootPolicy::default().max_age,
        std::time::Duration::from_secs(3600)
    );
    let sha = |root: String| oci::Digest::of(root.as_bytes()).to_string();

    // Within its hour, the root read first is the one in use.
    let warm = connections(TrustedRootPolicy::default().max_age);
    let first = warm.bundle_verifier().await.unwrap();
    assert_eq!(first.sha256, sha(sigstore.trusted_root()));
    put(rotated.trusted_root()).await;
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &warm.bundle_verifier().await.unwrap()
    ));
    put(sigstore.trusted_root()).await;

    // Past it, the next check reads the object again.
    let warm = connections(std::time::Duration::ZERO);
    assert_eq!(repository_failure(&warm, &src.host, &key_pem).await, None);
    put(rotated.trusted_root()).await;
    assert_eq!(
        warm.bundle_verifier().await.unwrap().sha256,
        sha(rotated.trusted_root())
    );
    let dst = TestRegistry::start();
    let report = replication::run::run_job(
        &warm,
        job(&src.host, &dst.host, &key_pem),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .report;
    assert_eq!((report.copied, report.unsigned), (0, 1), "{report:?}");
    assert!(
        e2e::unsigned_reason(&report, "release").contains("certificate chain"),
        "{report:?}"
    );
}
