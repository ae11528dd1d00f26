//! The workflow's Lambda handlers, called with a `LambdaEvent` as Lambda would, against moto (ECR,
//! STS; a second account through AssumeRole) and distribution registries as the ECR data plane.

use std::collections::BTreeMap;

use e2e::image::{Format, ImageBuilder, TestImage};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST_ROLE, SOURCE};
use lambda_runtime::{Context, LambdaEvent};
use replication::connect::Connections;
use replication::steps::*;
use replication::Job;
use serde_json::json;

fn event<T>(payload: T) -> LambdaEvent<T> {
    LambdaEvent::new(payload, Context::default())
}

fn job(extra: serde_json::Value) -> Job {
    let mut base = json!({
        "source": {"registry": SOURCE},
        "destinations": [{
            "registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42",
            "kmsKeyMapping": {"arn:aws:kms:us-east-1:123456789012:key/source-key": "arn:aws:kms:eu-west-1:222222222222:key/dest-key"}
        }],
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    Job::from_json(&base.to_string()).unwrap()
}

const LIFECYCLE: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;

fn policy(account: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"pull","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{account}:root"}},"Action":["ecr:BatchGetImage","ecr:GetDownloadUrlForLayer"]}}]}}"#
    )
}

async fn source_repository_with_every_setting(world: &EcrWorld, name: &str) {
    use aws_sdk_ecr::types::*;
    let ecr = world.moto.sdk(SOURCE, None).await;
    ecr.create_repository()
        .repository_name(name)
        .image_tag_mutability(ImageTagMutability::Immutable)
        .image_scanning_configuration(
            ImageScanningConfiguration::builder()
                .scan_on_push(true)
                .build(),
        )
        .encryption_configuration(
            EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::Kms)
                .kms_key("arn:aws:kms:us-east-1:123456789012:key/source-key")
                .build()
                .unwrap(),
        )
        .tags(Tag::builder().key("team").value("ml").build().unwrap())
        .tags(
            Tag::builder()
                .key("cost-center")
                .value("42")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    put_policies(&ecr, name, "123456789012").await;
}

/// The lifecycle policy and a repository policy granting `account`.
async fn put_policies(ecr: &aws_sdk_ecr::Client, name: &str, account: &str) {
    ecr.put_lifecycle_policy()
        .repository_name(name)
        .lifecycle_policy_text(LIFECYCLE)
        .send()
        .await
        .unwrap();
    ecr.set_repository_policy()
        .repository_name(name)
        .policy_text(policy(account))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn settings_are_copied_to_another_account_and_a_second_run_changes_nothing() {
    let world = EcrWorld::start();
    source_repository_with_every_setting(&world, "ml/pytorch").await;
    let conns = Connections::new(world.settings());
    // The policy travels only when asked to (its statement names the source account alone).
    let input = EnsureRepositoryInput {
        job: job(json!({"copyRepositoryPolicy": true})),
        repository: "ml/pytorch".into(),
        destination: 0,
    };

    let first = functions::invoke::<EnsureRepository>(&conns, event(input.clone()))
        .await
        .unwrap();

    assert!(first.created, "{first:?}");
    assert!(first.drift.is_empty(), "{first:?}");
    let target = world.moto.ecr(DEST, Some(DEST_ROLE)).await;
    let settings = target
        .read_settings("ml/pytorch")
        .await
        .unwrap()
        .expect("target repository exists");
    assert_eq!(settings.tag_mutability, ecr::ImageTagMutability::Immutable);
    assert!(settings.scan_on_push);
    assert_eq!(settings.encryption_type, ecr::EncryptionType::Kms);
    assert_eq!(
        settings.kms_key.as_deref(),
        Some("arn:aws:kms:eu-west-1:222222222222:key/dest-key")
    );
    let lifecycle: serde_json::Value =
        serde_json::from_str(settings.lifecycle_policy.as_deref().unwrap()).unwrap();
    assert_eq!(
        lifecycle,
        serde_json::from_str::<serde_json::Value>(LIFECYCLE).unwrap()
    );
    let policy_json: serde_json::Value =
        serde_json::from_str(settings.repository_policy.as_deref().unwrap()).unwrap();
    assert_eq!(
        policy_json,
        serde_json::from_str::<serde_json::Value>(&policy("222222222222")).unwrap(),
        "account id rewritten"
    );
    assert_eq!(
        settings.tags,
        BTreeMap::from([
            ("team".into(), "ml".into()),
            ("cost-center".into(), "42".into())
        ])
    );
    // Nothing was created in the source account by mistake.
    assert!(world
        .moto
        .ecr(SOURCE, None)
        .await
        .read_settings("ml/pytorch")
        .await
        .unwrap()
        .is_some());

    let second = functions::invoke::<EnsureRepository>(&conns, event(input))
        .await
        .unwrap();

    assert!(
        !second.created && second.changes.is_empty() && second.drift.is_empty(),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_changed_source_setting_is_reported_and_applied_and_dry_run_writes_nothing() {
    let world = EcrWorld::start();
    source_repository_with_every_setting(&world, "svc/api").await;
    let conns = Connections::new(world.settings());
    let input = |extra| EnsureRepositoryInput {
        job: job(extra),
        repository: "svc/api".into(),
        destination: 0,
    };

    let dry = functions::invoke::<EnsureRepository>(&conns, event(input(json!({"dryRun": true}))))
        .await
        .unwrap();
    assert!(dry.created);
    assert!(
        world
            .moto
            .ecr(DEST, Some(DEST_ROLE))
            .await
            .read_settings("svc/api")
            .await
            .unwrap()
            .is_none(),
        "dry run created it"
    );
    let absent = verify(&conns, "svc/api").await;
    assert_eq!(
        (absent.missing, absent.differences[0].detail.as_str()),
        (1, "the repository does not exist")
    );

    functions::invoke::<EnsureRepository>(&conns, event(input(json!({}))))
        .await
        .unwrap();
    let src = world.moto.sdk(SOURCE, None).await;
    // (moto ignores scanOnPush=false from the Rust SDK, which omits false booleans: change
    // tag mutability instead.)
    src.put_image_tag_mutability()
        .repository_name("svc/api")
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await
        .unwrap();
    src.delete_lifecycle_policy()
        .repository_name("svc/api")
        .send()
        .await
        .unwrap();

    let create_only = functions::invoke::<EnsureRepository>(
        &conns,
        event(input(json!({"repositorySettings": "create"}))),
    )
    .await
    .unwrap();
    assert!(
        create_only.changes.is_empty() && create_only.drift.len() == 2,
        "{create_only:?}"
    );

    // A verification names the differences a copy would remove, and changes nothing.
    let verified = verify(&conns, "svc/api").await;
    let details: Vec<&str> = verified
        .differences
        .iter()
        .map(|d| d.detail.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        (verified.settings, verified.total(), details),
        (2, 2, vec!["tagMutability", "lifecyclePolicy"])
    );
    assert!(verified
        .differences
        .iter()
        .all(|d| d.kind == DifferenceKind::Settings && d.target == format!("{DEST}/svc/api")));
    assert_eq!(
        verify(&conns, "svc/api").await,
        verified,
        "verify wrote something"
    );

    // Both differences weaken the destination: the default mode keeps its protection and says
    // so; only "mirror" applies them.
    let copied = functions::invoke::<EnsureRepository>(&conns, event(input(json!({}))))
        .await
        .unwrap();
    assert!(copied.changes.is_empty(), "{copied:?}");
    let kept: Vec<&str> = copied
        .drift
        .iter()
        .map(|d| d.split(' ').next().unwrap())
        .collect();
    assert_eq!(kept, vec!["tagMutability", "lifecyclePolicy"]);
    let third = functions::invoke::<EnsureRepository>(
        &conns,
        event(input(json!({"repositorySettings": "mirror"}))),
    )
    .await
    .unwrap();
    let changed: Vec<&str> = third.changes.iter().map(|c| c.setting.as_str()).collect();
    assert_eq!(changed, vec!["tagMutability", "lifecyclePolicy"]);
    let settings = world
        .moto
        .ecr(DEST, Some(DEST_ROLE))
        .await
        .read_settings("svc/api")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.tag_mutability, ecr::ImageTagMutability::Mutable);
    assert!(settings.lifecycle_policy.is_none() && settings.scan_on_push);
}

/// A protected destination repository: IMMUTABLE tags, a lifecycle policy and a repository
/// policy (granting its own account).
async fn protected_destination(world: &EcrWorld, name: &str) {
    let ecr = world.moto.sdk(DEST, Some(DEST_ROLE)).await;
    ecr.create_repository()
        .repository_name(name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    put_policies(&ecr, name, "222222222222").await;
}

async fn assert_still_protected(world: &EcrWorld, name: &str, why: &str) {
    let settings = world
        .moto
        .ecr(DEST, Some(DEST_ROLE))
        .await
        .read_settings(name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        settings.tag_mutability,
        ecr::ImageTagMutability::Immutable,
        "{why}"
    );
    assert!(
        settings.lifecycle_policy.is_some(),
        "{why}: lifecycle policy removed"
    );
    let policy_json: serde_json::Value =
        serde_json::from_str(settings.repository_policy.as_deref().expect(why)).unwrap();
    assert_eq!(
        policy_json,
        serde_json::from_str::<serde_json::Value>(&policy("222222222222")).unwrap(),
        "{why}"
    );
}

#[tokio::test]
async fn a_source_without_settings_and_the_default_modes_never_weaken_a_destination() {
    let world = EcrWorld::start();
    protected_destination(&world, "svc/web").await;
    let conns = Connections::new(world.settings());
    let ensure = |job: Job, repository: &str| EnsureRepositoryInput {
        job,
        repository: repository.into(),
        destination: 0,
    };
    let destination = json!([{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}]);

    // A plain OCI registry has no settings: "all defaults" is not what it asks for.
    let plain = e2e::registry::TestRegistry::start();
    let from_plain = Job::from_json(
        &json!({"source": {"registry": plain.host, "insecure": true}, "destinations": destination})
            .to_string(),
    )
    .unwrap();
    let out = functions::invoke::<EnsureRepository>(&conns, event(ensure(from_plain, "svc/web")))
        .await
        .unwrap();
    assert!(out.changes.is_empty() && out.drift.is_empty(), "{out:?}");
    assert_still_protected(&world, "svc/web", "a sync from a plain registry").await;
    // An `images` entry naming a repository the plain registry lacks creates nothing.
    let listed = Job::from_json(
        &json!({"source": {"registry": plain.host, "insecure": true}, "destinations": destination,
                "images": [{"repository": "svc/ghost", "tag": "v1"}]})
        .to_string(),
    )
    .unwrap();
    let ghost = functions::invoke::<EnsureRepository>(&conns, event(ensure(listed, "svc/ghost")))
        .await
        .unwrap();
    assert!(ghost.skipped.is_some() && !ghost.created, "{ghost:?}");
    assert!(world
        .moto
        .ecr(DEST, Some(DEST_ROLE))
        .await
        .read_settings("svc/ghost")
        .await
        .unwrap()
        .is_none());

    // An ECR source repository that is MUTABLE, without policies: the default mode and "create"
    // keep the destination's protection (and say what they kept); "mirror" is the opt-in.
    world
        .moto
        .sdk(SOURCE, None)
        .await
        .create_repository()
        .repository_name("svc/web")
        .send()
        .await
        .unwrap();
    for mode in ["copy", "create"] {
        let out = functions::invoke::<EnsureRepository>(
            &conns,
            event(ensure(
                job(json!({"repositorySettings": mode, "copyRepositoryPolicy": true})),
                "svc/web",
            )),
        )
        .await
        .unwrap();
        assert!(out.changes.is_empty(), "{mode}: {out:?}");
        assert!(
            out.drift.iter().any(|d| d.starts_with("tagMutability")),
            "{mode}: {out:?}"
        );
        assert_still_protected(&world, "svc/web", mode).await;
    }

    // A repository the source lacks (an `images` entry naming it): nothing created or changed.
    let missing =
        functions::invoke::<EnsureRepository>(&conns, event(ensure(job(json!({})), "svc/nowhere")))
            .await
            .unwrap();
    assert!(missing.skipped.is_some() && !missing.created, "{missing:?}");
    assert!(world
        .moto
        .ecr(DEST, Some(DEST_ROLE))
        .await
        .read_settings("svc/nowhere")
        .await
        .unwrap()
        .is_none());

    let mirrored = functions::invoke::<EnsureRepository>(
        &conns,
        event(ensure(
            job(json!({"repositorySettings": "mirror"})),
            "svc/web",
        )),
    )
    .await
    .unwrap();
    let changed: Vec<&str> = mirrored
        .changes
        .iter()
        .map(|c| c.setting.as_str())
        .collect();
    assert_eq!(
        changed,
        vec!["tagMutability", "lifecyclePolicy"],
        "{mirrored:?}"
    );
    // The policy is not the source's business unless asked: it stays even in "mirror".
    let after = world
        .moto
        .ecr(DEST, Some(DEST_ROLE))
        .await
        .read_settings("svc/web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.tag_mutability, ecr::ImageTagMutability::Mutable);
    assert!(after.repository_policy.is_some());
}

#[tokio::test]
async fn a_copied_policy_keeps_only_the_source_accounts_grants_and_names_the_others() {
    let world = EcrWorld::start();
    let src = world.moto.sdk(SOURCE, None).await;
    src.create_repository()
        .repository_name("svc/db")
        .send()
        .await
        .unwrap();
    // ECR accepts a policy only when IAM has each role it names.
    world.moto.create_role("123456789012", "ci").await;
    let granting = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "ci", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/ci"},
         "Action": ["ecr:BatchGetImage"]},
        {"Sid": "outsider-push", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
         "Action": ["ecr:PutImage", "ecr:InitiateLayerUpload"]},
        {"Sid": "everyone", "Effect": "Allow", "Principal": "*", "Action": ["ecr:BatchGetImage"]},
        {"Sid": "mixed", "Effect": "Allow",
         "Principal": {"AWS": ["123456789012", "arn:aws:iam::888888888888:root"]}, "Action": ["ecr:PutImage"]},
        {"Sid": "service", "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
         "Action": ["ecr:BatchGetImage"]}
    ]});
    src.set_repository_policy()
        .repository_name("svc/db")
        .policy_text(granting.to_string())
        .send()
        .await
        .unwrap();
    // The kept statement names the destination account's `ci` role, which exists there too.
    world.moto.create_role("222222222222", "ci").await;
    let conns = Connections::new(world.settings());
    let input = |extra| EnsureRepositoryInput {
        job: job(extra),
        repository: "svc/db".into(),
        destination: 0,
    };

    // Without the opt-in no policy travels.
    functions::invoke::<EnsureRepository>(&conns, event(input(json!({}))))
        .await
        .unwrap();
    let target = world.moto.ecr(DEST, Some(DEST_ROLE)).await;
    assert!(target
        .read_settings("svc/db")
        .await
        .unwrap()
        .unwrap()
        .repository_policy
        .is_none());

    let out = functions::invoke::<EnsureRepository>(
        &conns,
        event(input(json!({"copyRepositoryPolicy": true}))),
    )
    .await
    .unwrap();

    let policy_json: serde_json::Value = serde_json::from_str(
        &target
            .read_settings("svc/db")
            .await
            .unwrap()
            .unwrap()
            .repository_policy
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy_json["Statement"],
        json!([{"Sid": "ci", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:role/ci"},
                "Action": ["ecr:BatchGetImage"]}])
    );
    for sid in ["outsider-push", "everyone", "mixed", "service"] {
        assert!(
            out.drift.iter().any(|d| d.contains(&format!("{sid:?}"))),
            "{sid} not reported: {out:?}"
        );
    }
}

/// `verify-repository` through its function handler: the repository's findings.
async fn verify(conns: &Connections, repository: &str) -> VerifyReport {
    functions::invoke::<VerifyRepository>(
        conns,
        event(VerifyRepositoryInput {
            job: job(json!({"mode": "verify"})),
            repository: repository.into(),
            next_token: None,
            report: None,
        }),
    )
    .await
    .unwrap()
    .verify
    .unwrap()
}

fn small_image(seed: u64) -> TestImage {
    ImageBuilder::new(Format::Oci)
        .layer(seed, 20_000)
        .layer(seed + 1, 3_000)
        .build()
}

#[tokio::test]
async fn enumeration_filters_repositories_and_tags_and_counts_present_images() {
    let world = EcrWorld::start();
    // Before any push: the image's lag is bounded by the time the test has taken.
    let started = std::time::Instant::now();
    for (repo, tag, seed) in [
        ("ml/pytorch", "v1.2.3", 1),
        ("ml/pytorch", "latest", 3),
        ("ml/scratch", "v1.0.0", 5),
        ("web/site", "v2.0.0", 7),
    ] {
        world.seed(repo, tag, &small_image(seed)).await;
    }
    let conns = Connections::new(world.settings());
    let job = job(
        json!({"repositories": {"include": ["ml/*"], "exclude": ["**/scratch"]}, "tags": {"include": ["v.*"]}}),
    );

    let repos = functions::invoke::<EnumerateRepositories>(
        &conns,
        event(EnumerateRepositoriesInput {
            job: job.clone(),
            next_token: None,
            report: None,
            pages: 0,
        }),
    )
    .await
    .unwrap();
    assert_eq!(repos.repositories, vec!["ml/pytorch".to_string()]);

    let images_input = EnumerateImagesInput {
        job: job.clone(),
        repository: "ml/pytorch".into(),
        next_token: None,
        pack: Vec::new(),
    };
    let images = functions::invoke::<EnumerateImages>(&conns, event(images_input.clone()))
        .await
        .unwrap();
    assert_eq!(images.selected, 1);
    let task = &images.images[0];
    assert_eq!(
        (
            task.tags.clone(),
            task.present,
            task.target_repository.as_str()
        ),
        (vec!["v1.2.3".to_string()], false, "ml/pytorch")
    );
    assert_eq!(task.digest.as_str(), small_image(1).digest);

    // Copy it through the steps, then enumeration reports it present.
    functions::invoke::<EnsureRepository>(
        &conns,
        event(EnsureRepositoryInput {
            job: job.clone(),
            repository: "ml/pytorch".into(),
            destination: 0,
        }),
    )
    .await
    .unwrap();
    let plan = replication::steps::plan_image(
        &conns,
        PlanImageInput {
            job: job.clone(),
            image: task.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!((plan.blobs, plan.manifests, plan.ranges.len()), (3, 1, 1));
    let mut bytes = 0;
    for range in plan.ranges {
        let out = functions::invoke::<CopyBlobs>(
            &conns,
            event(CopyBlobsInput {
                job: job.clone(),
                image: task.clone(),
                range,
                state: None,
                bytes_before: 0,
            }),
        )
        .await
        .unwrap();
        assert!(out.done);
        bytes += out.bytes_copied;
    }
    let result = functions::invoke::<PutManifests>(
        &conns,
        event(PutManifestsInput {
            job: job.clone(),
            image: task.clone(),
            copied: vec![RangeOutcome { bytes, error: None }],
            execution: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(result.status, ImageStatus::Copied);
    // Its lag (source push to arrival), in the result and so in its image event: ECR reports
    // the push time, whole seconds, so it is at most the test's elapsed time rounded up.
    let elapsed = started.elapsed().as_secs() + 1;
    let lag = result
        .lag_seconds
        .expect("an ECR source reports push times");
    assert!(lag <= elapsed, "lag {lag} s after {elapsed} s");
    let announced = serde_json::to_value(&result).unwrap();
    assert_eq!(announced["lagSeconds"], json!(lag), "{announced}");
    let dest = world.registry(DEST);
    let raw = e2e::skopeo::inspect_raw(
        &format!("{}/ml/pytorch:v1.2.3", dest.host),
        Some(&("AWS".into(), moto_token_password(DEST))),
    );
    assert_eq!(raw, small_image(1).manifest.to_vec());

    // Then enumeration counts it present and hands out no task for it (no child execution).
    let again = functions::invoke::<EnumerateImages>(&conns, event(images_input))
        .await
        .unwrap();
    assert_eq!(
        (again.images.len(), again.present, again.selected),
        (0, 1, 1)
    );
}

#[tokio::test]
async fn handler_errors_carry_the_type_step_functions_matches() {
    let world = EcrWorld::start();
    let conns = Connections::new(world.settings());
    let mut bad = job(json!({}));
    bad.destinations[0].registry = "not a host".into();
    let err = functions::invoke::<EnumerateRepositories>(
        &conns,
        event(EnumerateRepositoriesInput {
            job: bad,
            next_token: None,
            report: None,
            pages: 0,
        }),
    )
    .await
    .unwrap_err();
    let diagnostic: lambda_runtime::Diagnostic = err.into();
    assert_eq!(diagnostic.error_type, "ReplicationInvalidInput");
    assert!(
        diagnostic
            .error_message
            .contains("destinations[0].registry"),
        "{}",
        diagnostic.error_message
    );

    // A source image that is gone: planned as failed (not retryable, named); the page goes on.
    let task = ImageTask {
        repository: "ml/missing".into(),
        digest: oci::Digest::parse(&small_image(9).digest).unwrap(),
        tags: vec!["v1".into()],
        destination: 0,
        target_registry: DEST.into(),
        target_repository: "ml/missing".into(),
        present: false,
        referrers: Vec::new(),
        tags_absent: false,
        repository_absent: false,
        pushed_at: None,
        target_digest: None,
        signed_by: None,
    };
    let plan = functions::invoke::<PlanImage>(
        &conns,
        event(PlanPageInput {
            job: job(json!({})),
            images: vec![task],
            pulls_before: 0,
            pulls_spent: 0,
        }),
    )
    .await
    .unwrap();
    let error = plan.images[0].error.clone().unwrap_or_default();
    assert!(
        error.starts_with("ReplicationFailed: ")
            && error.contains("ml/missing")
            && error.contains("not found"),
        "{error}"
    );
    assert!(plan.ranges.is_empty());
}

#[tokio::test]
async fn an_ecr_token_that_reports_an_expiry_in_the_past_is_used_without_looping() {
    let world = EcrWorld::start();
    let client = world.moto.sdk(SOURCE, None).await;
    let tokens = ecr::EcrTokenSource::new(client, SOURCE);
    let started = std::time::Instant::now();
    let first = tokens.credential().await.unwrap();
    let second = tokens.credential().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        first.basic_header(),
        oci::Credential::Basic {
            username: "AWS".into(),
            password: moto_token_password(SOURCE)
        }
        .basic_header()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Puts an image into a moto repository under each tag (creating the repository).
async fn put_tagged(ecr: &aws_sdk_ecr::Client, repository: &str, image: &TestImage, tags: &[&str]) {
    let _ = ecr
        .create_repository()
        .repository_name(repository)
        .send()
        .await;
    for tag in tags {
        ecr.put_image()
            .repository_name(repository)
            .image_manifest(String::from_utf8(image.manifest.to_vec()).unwrap())
            .image_manifest_media_type(&image.media_type)
            .image_tag(*tag)
            .send()
            .await
            .unwrap();
    }
}

async fn tags_in(ecr: &aws_sdk_ecr::Client, repository: &str) -> Vec<String> {
    let out = ecr
        .list_images()
        .repository_name(repository)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<String> = out
        .image_ids()
        .iter()
        .filter_map(|i| i.image_tag().map(str::to_string))
        .collect();
    tags.sort();
    tags
}

#[tokio::test]
async fn prune_removes_exactly_the_stale_tags_inside_the_filters_and_dry_run_lists_them() {
    let world = EcrWorld::start();
    let (one, two, three) = (
        ImageBuilder::new(Format::Oci).layer(1, 100).build(),
        ImageBuilder::new(Format::Oci).layer(2, 100).build(),
        ImageBuilder::new(Format::Oci).layer(3, 100).build(),
    );
    world.seed("web", "v1", &one).await;
    world.seed("web", "v2", &two).await;
    let target = world.moto.sdk(DEST, Some(DEST_ROLE)).await;
    // In the target: v1 and v2 (still in the source), v0 and v0.9 (gone from the source: stale),
    // v0.8 on the same image as v1 (stale tag of a live image), dev (gone, but outside the
    // filters), latest (outside the filters).
    put_tagged(&target, "web", &one, &["v1", "v0.8", "latest"]).await;
    put_tagged(&target, "web", &two, &["v2"]).await;
    put_tagged(&target, "web", &three, &["v0", "v0.9", "dev"]).await;
    let conns = Connections::new(world.settings());
    let input = |dry_run: bool| EnsureRepositoryInput {
        job: job(json!({"tags": {"include": ["v.*"]}, "prune": true, "dryRun": dry_run})),
        repository: "web".into(),
        destination: 0,
    };
    let before = tags_in(&target, "web").await;

    let planned = functions::invoke::<EnsureRepository>(&conns, event(input(true)))
        .await
        .unwrap();

    let stale = vec!["v0".to_string(), "v0.8".into(), "v0.9".into()];
    assert_eq!(planned.pruned, stale);
    assert_eq!(
        tags_in(&target, "web").await,
        before,
        "dry run removed nothing"
    );

    let pruned = functions::invoke::<EnsureRepository>(&conns, event(input(false)))
        .await
        .unwrap();

    assert_eq!(
        (pruned.pruned.clone(), pruned.prune_kept.clone()),
        (stale, vec![])
    );
    assert_eq!(
        tags_in(&target, "web").await,
        vec!["dev", "latest", "v1", "v2"]
    );
    let again = functions::invoke::<EnsureRepository>(&conns, event(input(false)))
        .await
        .unwrap();
    assert!(again.pruned.is_empty(), "{again:?}");
}

#[tokio::test]
async fn prune_in_an_immutable_repository_reports_the_stale_tags_and_keeps_them() {
    let world = EcrWorld::start();
    let (one, old) = (
        ImageBuilder::new(Format::Oci).layer(1, 100).build(),
        ImageBuilder::new(Format::Oci).layer(9, 100).build(),
    );
    world.seed("web", "v1", &one).await;
    let target = world.moto.sdk(DEST, Some(DEST_ROLE)).await;
    target
        .create_repository()
        .repository_name("web")
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    put_tagged(&target, "web", &old, &["v0"]).await;
    let conns = Connections::new(world.settings());
    let input = EnsureRepositoryInput {
        job: job(json!({"prune": true, "repositorySettings": "create"})),
        repository: "web".into(),
        destination: 0,
    };

    let output = functions::invoke::<EnsureRepository>(&conns, event(input))
        .await
        .unwrap();

    assert!(output.pruned.is_empty(), "{output:?}");
    assert_eq!(output.prune_kept.len(), 1, "{output:?}");
    assert!(output.prune_kept[0].starts_with("v0: the repository's tags are immutable"));
    assert_eq!(tags_in(&target, "web").await, vec!["v0"]);
}

/// A world whose `repository` holds 30 small images (seeds from `seed`, two apart), and
/// connections that keep selections in the rig's work bucket.
async fn thirty_images_with_a_work_bucket(repository: &str, seed: u64) -> (EcrWorld, Connections) {
    let world = EcrWorld::start();
    for i in 0..30 {
        world
            .seed(repository, &format!("v{i}"), &small_image(seed + 2 * i))
            .await;
    }
    let (bucket, region) = (e2e::sfn::WORK_BUCKET, e2e::sfn::WORK_BUCKET_REGION);
    e2e::moto::create_bucket_at(&world.moto.url, bucket).await;
    let mut settings = world.settings();
    settings.work_bucket = Some(replication::connect::WorkBucketSettings {
        bucket: bucket.into(),
        region: region.into(),
    });
    (world, Connections::new(settings))
}

/// A repository with more work than a page: the first page keeps the selection in the work
/// bucket and names it in the token; the next page reads its stretch from there. A token whose
/// selection is gone (expired) still gives the same page, from a new listing; a token this step
/// did not write is refused naming the field.
#[tokio::test]
async fn later_pages_read_the_kept_selection_and_a_gone_one_is_listed_again() {
    let (world, conns) = thirty_images_with_a_work_bucket("pages/repo", 100).await;
    let (bucket, region) = (e2e::sfn::WORK_BUCKET, e2e::sfn::WORK_BUCKET_REGION);
    let page = |token: Option<&str>| {
        functions::invoke::<EnumerateImages>(
            &conns,
            event(EnumerateImagesInput {
                job: job(json!({})),
                repository: "pages/repo".into(),
                next_token: token.map(str::to_string),
                pack: Vec::new(),
            }),
        )
    };

    let first = page(None).await.unwrap();
    let token = first.next_token.clone().expect("a second page");
    let (id, offset) = token
        .split_once(':')
        .expect("the token names a kept selection");
    assert_eq!((first.images.len(), offset), (25, "25"), "{token}");
    let second = page(Some(&token)).await.unwrap();
    assert_eq!((second.images.len(), second.next_token.clone()), (5, None));
    let mut digests: Vec<_> = first
        .images
        .iter()
        .chain(&second.images)
        .map(|t| t.digest.clone())
        .collect();
    digests.sort();
    digests.dedup();
    assert_eq!((digests.len(), second.selected), (30, 30));

    // The kept selection is an object of the bucket, under the prefix the deployment expires.
    let store = ecr::WorkBucket::new(&world.moto.aws_settings(), region, bucket.into()).await;
    let kept = store.get(&format!("selections/{id}/0.json")).await.unwrap();
    let kept: serde_json::Value = serde_json::from_slice(&kept.expect("kept")).unwrap();
    assert_eq!(kept["total"], 30);

    let gone = page(Some(&format!("{}:25", "0".repeat(32)))).await.unwrap();
    assert_eq!(
        gone.images, second.images,
        "a gone selection lists the repository again"
    );

    for bad in ["x y:25", ":25", "abc:many", "../x:1", "many"] {
        let err = page(Some(bad)).await.unwrap_err();
        assert_eq!(err.kind, replication::ErrorKind::InvalidInput, "{bad}");
        assert!(err.message.contains("nextToken"), "{bad}: {}", err.message);
    }
}

/// Attack: a kept selection carries its job's verdicts (an image with no verified signature is
/// marked unsigned there), and a continuation in the execution input can name any token. A run
/// requiring signatures, handed the token of a selection an ungated job kept for the same
/// repository, must not read it: every image is checked again and reported unsigned, none
/// becomes a task for the destination.
#[tokio::test]
async fn a_selection_kept_for_another_job_is_never_read_past_the_signature_gate() {
    let (_world, conns) = thirty_images_with_a_work_bucket("gated/repo", 300).await;
    let (_, pem) = e2e::image::signing_key(9);
    let gated = job(json!({"requireSignature": {"publicKeys": [pem]}}));
    let images = |job: &Job, token: Option<String>| {
        functions::invoke::<EnumerateImages>(
            &conns,
            event(EnumerateImagesInput {
                job: job.clone(),
                repository: "gated/repo".into(),
                next_token: token,
                pack: Vec::new(),
            }),
        )
    };
    // An ungated job's first page keeps the selection (every image without a verdict).
    let kept = images(&job(json!({})), None).await.unwrap();
    let token = kept.next_token.expect("a kept selection");
    let forged = token.split_once(':').unwrap().0.to_string() + ":0";

    // The forged continuation reaches the repository's child as its first token...
    let page = replication::steps::enumerate_and_settle(
        &conns,
        EnumerateRepositoriesInput {
            job: gated.clone(),
            next_token: None,
            report: Some(RunReport {
                continuations: vec![Continuation {
                    repository: "gated/repo".into(),
                    next_token: forged.clone(),
                }],
                ..RunReport::default()
            }),
            pages: 0,
        },
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(page.repositories[0], "gated/repo");
    assert_eq!(page.selections[0].as_deref(), Some(forged.as_str()));
    // ...which reads nothing of it: the gate sees every image.
    let checked = images(&gated, Some(forged)).await.unwrap();
    assert_eq!(checked.images.len(), 0, "{:?}", checked.images);
    assert_eq!(checked.unsigned.len(), 5, "one page's worth, each unsigned");
    assert!(checked
        .unsigned
        .iter()
        .all(|r| r.status == ImageStatus::Unsigned));
}

/// The repository filter is applied within ECR's large listing pages (1,000 names a request),
/// not per page of 16: a registry of 1,030 repositories of which the filter selects 30 gives the
/// parent 2 pages (16, then 14, the second continuing inside the listing page the first
/// stopped in and across ECR's page boundary), not 52. moto pages DescribeRepositories as ECR
/// does (tests/aws_rules/ecr_gaps.py).
#[tokio::test]
async fn repositories_are_filtered_within_large_listing_pages() {
    let world = EcrWorld::start();
    let ecr = world.moto.sdk(SOURCE, None).await;
    let mut wanted = Vec::new();
    for i in 0..1030 {
        let name = if i % 35 == 5 {
            wanted.push(format!("keep/r{i:04}"));
            format!("keep/r{i:04}")
        } else {
            format!("noise/r{i:04}")
        };
        ecr.create_repository()
            .repository_name(name)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(wanted.len(), 30);
    let conns = Connections::new(world.settings());
    let job = job(json!({"repositories": {"include": ["keep/*"]}}));
    let pages = e2e::repository_pages(&conns, &job).await;
    let per_page = replication::steps::REPOSITORIES_PER_PAGE;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![per_page, 30 - per_page]
    );
    let mut all: Vec<String> = pages.concat();
    all.sort();
    assert_eq!(all, wanted);
    // A token the step did not give is refused, naming the field.
    let bad = functions::invoke::<EnumerateRepositories>(
        &conns,
        event(EnumerateRepositoriesInput {
            job,
            next_token: Some("not-a-token".into()),
            report: None,
            pages: 0,
        }),
    )
    .await
    .unwrap_err();
    assert!(format!("{bad:?}").contains("nextToken"), "{bad:?}");
}

/// A copied repository policy ECR refuses ("Invalid parameter at 'PolicyText' failed to satisfy
/// constraint: 'Principal not found'": the rig's SetRepositoryPolicy, `tests/aws_rules/ecr_gaps.py`)
/// is drift, remembered on the destination: the next run's check counts it as no change, so a
/// repository with nothing else to do settles without a child, the refusal reported. A changed
/// source policy is tried again.
#[tokio::test]
async fn a_refused_policy_is_remembered_as_drift_and_the_repository_settles() {
    let world = EcrWorld::start();
    world.seed("svc/api", "v1", &small_image(21)).await;
    let src = world.moto.sdk(SOURCE, None).await;
    let granting = |role: &str| {
        json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "deploy", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::123456789012:role/{role}")},
             "Action": ["ecr:BatchGetImage"]}
        ]})
        .to_string()
    };
    // The source account has the roles; the destination account has no `deployer`: ECR
    // refuses the rewritten policy there.
    for role in ["deployer", "releaser"] {
        world.moto.create_role("123456789012", role).await;
    }
    src.set_repository_policy()
        .repository_name("svc/api")
        .policy_text(granting("deployer"))
        .send()
        .await
        .unwrap();
    let conns = Connections::new(world.settings());
    let job = job(json!({"copyRepositoryPolicy": true, "repositories": {"include": ["svc/api"]}}));
    let check = || {
        functions::invoke::<EnumerateRepositories>(
            &conns,
            event(EnumerateRepositoriesInput {
                job: job.clone(),
                next_token: None,
                report: None,
                pages: 0,
            }),
        )
    };

    let first = check().await.unwrap();
    assert_eq!(first.repositories, vec!["svc/api".to_string()]);
    let copy = replication::run::run_job(&conns, job.clone(), &replication::run::Quiet)
        .await
        .unwrap()
        .report;
    assert_eq!((copy.copied, copy.failed), (1, 0), "{copy:?}");
    assert!(
        copy.settings_drift
            .iter()
            .any(|d| d.contains("ECR refused") && d.contains("Principal not found")),
        "{copy:?}"
    );
    let target = world.moto.ecr(DEST, Some(DEST_ROLE)).await;
    let settings = target.read_settings("svc/api").await.unwrap().unwrap();
    assert!(settings.repository_policy.is_none());
    assert!(settings.refused_policy.is_some(), "{settings:?}");
    assert!(
        !settings.tags.contains_key(ecr::REFUSED_POLICY_TAG),
        "the memory is no repository tag: {settings:?}"
    );

    // Nothing else to do: settled, no child, the refusal reported as drift.
    let second = check().await.unwrap();
    assert!(second.repositories.is_empty(), "{second:?}");
    assert_eq!(second.settled, 1);
    let report = second.report.unwrap();
    assert_eq!((report.present, report.failed), (1, 0), "{report:?}");
    assert!(
        report.settings_drift.iter().any(|d| d
            .starts_with(&format!("{DEST}/svc/api: repositoryPolicy: ECR refused"))
            && d.contains("Principal not found")),
        "{report:?}"
    );

    // Another source policy is another put: tried again.
    src.set_repository_policy()
        .repository_name("svc/api")
        .policy_text(granting("releaser"))
        .send()
        .await
        .unwrap();
    let changed = check().await.unwrap();
    assert_eq!(
        changed.repositories,
        vec!["svc/api".to_string()],
        "{changed:?}"
    );
}

/// The work bucket's conditional writes, which keep a layout's newest-statement mark from being
/// set back by two imports at once (`refuse_rollback` reads, compares, and writes only if the
/// mark is still what it read): a create refused when the key exists, an update refused when
/// the object changed since it was read, and accepted when it did not.
#[tokio::test]
async fn the_work_bucket_writes_only_under_the_condition_it_is_given() {
    let moto = e2e::moto::Moto::start();
    e2e::moto::create_bucket_at(&moto.url, "work").await;
    let bucket = ecr::WorkBucket::new(&moto.aws_settings(), "us-east-1", "work".into()).await;
    let key = "layout-statements/mark.json";
    let put = |body: &str, condition| bucket.put_if(key, body.as_bytes().to_vec(), condition);

    assert!(put("first", ecr::WriteIf::Absent).await.unwrap());
    assert!(
        !put("second", ecr::WriteIf::Absent).await.unwrap(),
        "created twice"
    );
    let (bytes, read) = bucket.get_tagged(key).await.unwrap().unwrap();
    assert_eq!(bytes, b"first");
    // Another run writes between this one's read and its write.
    assert!(put("newer", ecr::WriteIf::Unchanged(&read)).await.unwrap());
    assert!(
        !put("older", ecr::WriteIf::Unchanged(&read)).await.unwrap(),
        "a write under a stale read went through"
    );
    assert_eq!(bucket.get(key).await.unwrap().unwrap(), b"newer");
}
