//! The whole workflow end to end, ECR mode: moto for ECR, STS and Step Functions; distribution
//! registries as the ECR data plane of a source and two destination accounts; the real state
//! machine run by moto's interpreter with the real functions under `cargo lambda watch`; and the
//! same job through `replication::run::run_job` (the CLI's `sync`).

use e2e::image::{multi_arch, Format, ImageBuilder, TestImage};
use e2e::sfn::AwsFault;
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST2, DEST2_ROLE, DEST_ROLE, SOURCE};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// 5 repositories, 20 images; 11 selected (`services/*` and `ml/*`, tags `v*`).
fn catalog() -> Vec<(&'static str, &'static str, TestImage, bool)> {
    let small = |seed: u64| {
        ImageBuilder::new(Format::Oci)
            .layer(seed, 30_000)
            .layer(seed + 500, 2_000)
            .build()
    };
    let docker = |seed: u64| {
        ImageBuilder::new(Format::Docker)
            .layer(seed, 20_000)
            .build()
    };
    vec![
        ("services/api", "v1.0.0", small(1), true),
        ("services/api", "v1.1.0", small(2), true),
        ("services/api", "v1.2.0", small(3), true),
        ("services/api", "dev-1234", small(4), false),
        ("services/web", "v2.0.0", docker(5), true),
        ("services/web", "v2.1.0", docker(6), true),
        ("services/web", "latest", docker(7), false),
        (
            "services/web",
            "v2.2.0",
            // No empty layer: ECR cannot store a 0-byte blob (ecr_data_plane.rs shows the error).
            ImageBuilder::new(Format::Oci)
                .layer(8, 10_000)
                .layer(22, 1)
                .build(),
            true,
        ),
        ("ml/base", "v1", multi_arch(9, 2, 20_000), true),
        ("ml/base", "v2", small(10), true),
        ("ml/base", "nightly", small(11), false),
        (
            "ml/pytorch",
            "v2.3",
            ImageBuilder::new(Format::Oci)
                .big_layer(12, 300 * MIB)
                .layer(13, 5_000)
                .build(),
            true,
        ),
        ("ml/pytorch", "v2.2", small(14), true),
        ("ml/pytorch", "scratch", small(15), false),
        ("ml/pytorch", "v2.1", small(16), true),
        ("sandbox/tmp", "v1", small(17), false),
        ("sandbox/tmp", "v2", small(18), false),
        ("sandbox/tmp", "v3", small(19), false),
        ("sandbox/tmp", "v4", small(20), false),
        ("sandbox/tmp", "v5", small(21), false),
    ]
}

fn job(extra: Value) -> Value {
    let mut job = json!({
        "source": {"registry": SOURCE},
        "destinations": [
            {"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"},
            {"registry": DEST2, "roleArn": DEST2_ROLE, "externalId": "ext-id-43", "repositoryPrefix": "mirror/"}
        ],
        "repositories": {"include": ["services/*", "ml/*"]},
        "tags": {"include": ["v.*"]},
        "rangeBytes": 64 * MIB,
        "maxConcurrency": 4
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    job
}

async fn seed(world: &EcrWorld) {
    for (repo, tag, image, _) in catalog() {
        world.seed(repo, tag, &image).await;
    }
}

fn creds(host: &str) -> (String, String) {
    ("AWS".into(), moto_token_password(host))
}

/// Every selected image is byte-identical in both destinations (skopeo), unselected ones absent.
async fn assert_destinations_match(world: &EcrWorld) {
    for (repo, tag, image, selected) in catalog() {
        for (host, prefix) in [(DEST, ""), (DEST2, "mirror/")] {
            let reg = world.registry(host);
            let reference = format!("{}/{prefix}{repo}:{tag}", reg.host);
            let present = e2e::image::Pusher::new(&reg.host, Some(creds(host)))
                .manifest(&format!("{prefix}{repo}"), tag)
                .await;
            if selected {
                assert_eq!(
                    e2e::skopeo::inspect_raw(&reference, Some(&creds(host))),
                    image.manifest.to_vec(),
                    "{reference}"
                );
                for child in &image.children {
                    let child_ref = format!("{}/{prefix}{repo}@{}", reg.host, child.digest);
                    assert_eq!(
                        e2e::skopeo::inspect_raw(&child_ref, Some(&creds(host))),
                        child.manifest.to_vec(),
                        "{child_ref}"
                    );
                }
            } else {
                assert!(present.is_none(), "{reference} should not have been copied");
            }
        }
    }
}

fn storage_files(world: &EcrWorld, host: &str) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&world.registry(host).storage_root())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_machine_replicates_to_two_accounts_isolates_failures_and_dry_runs_write_nothing()
{
    let (world, sfn) = EcrWorld::with_step_functions().await;
    seed(&world).await;
    let arn = sfn.create_state_machine("replicate").await;

    // Dry run: the plan, nothing written.
    let before = (storage_files(&world, DEST), storage_files(&world, DEST2));
    let dry = sfn.execute(&arn, &job(json!({"dryRun": true}))).await;
    assert_eq!(dry.status, "SUCCEEDED", "{}\n{}", dry.cause, sfn.logs());
    let plan = dry.output.unwrap();
    assert_eq!(
        (plan["planned"].as_u64(), plan["copied"].as_u64()),
        (Some(22), Some(0)),
        "{plan}"
    );
    assert_eq!(
        (storage_files(&world, DEST), storage_files(&world, DEST2)),
        before,
        "a dry run wrote to a destination"
    );
    assert!(
        world
            .moto
            .ecr(DEST, Some(DEST_ROLE))
            .await
            .read_settings("services/api")
            .await
            .unwrap()
            .is_none(),
        "a dry run created a repository"
    );

    // First run: 11 selected images x 2 destinations.
    let first = sfn.execute(&arn, &job(json!({}))).await;
    assert_eq!(first.status, "SUCCEEDED", "{}\n{}", first.cause, sfn.logs());
    let report = first.output.unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(22), Some(0)),
        "{report}"
    );
    assert!(report["bytesCopied"].as_u64().unwrap() >= 2 * 300 * MIB);
    // maxConcurrency 4 bounds the whole run's copy and put invocations (measured at the
    // proxy, across every child execution).
    assert!(
        (1..=4).contains(&sfn.max_concurrent_copies()),
        "{} copy/put invocations ran at once",
        sfn.max_concurrent_copies()
    );
    eprintln!(
        "first run: invocations {:?}, at most {} copies at once",
        sfn.invocations(),
        sfn.max_concurrent_copies()
    );
    assert_destinations_match(&world).await;
    assert!(world
        .moto
        .ecr(DEST2, Some(DEST2_ROLE))
        .await
        .read_settings("mirror/ml/pytorch")
        .await
        .unwrap()
        .is_some());

    // Second run: nothing to copy.
    let second = sfn.execute(&arn, &job(json!({}))).await;
    assert_eq!(second.status, "SUCCEEDED", "{}", second.cause);
    let report = second.output.unwrap();
    assert_eq!(
        (report["present"].as_u64(), report["copied"].as_u64()),
        (Some(22), Some(0)),
        "{report}"
    );

    // A broken image fails alone; the execution fails naming it.
    let broken = ImageBuilder::new(Format::Oci).layer(99, 40_000).build();
    world.seed("services/api", "v9.9.9", &broken).await;
    std::fs::remove_file(
        world
            .registry(SOURCE)
            .blob_data_path(&broken.blobs[1].digest),
    )
    .unwrap();
    let fixed = ImageBuilder::new(Format::Oci).layer(98, 4_000).build();
    world.seed("services/web", "v3.0.0", &fixed).await;
    let third = sfn.execute(&arn, &job(json!({}))).await;
    assert_eq!(third.status, "FAILED");
    assert!(
        third.cause.contains("ReplicationFailed")
            && third.cause.contains(&broken.digest)
            && third
                .cause
                .contains("2 of 26 images and 0 repositories failed"),
        "{}",
        third.cause
    );
    for host in [DEST, DEST2] {
        let prefix = if host == DEST2 { "mirror/" } else { "" };
        let reg = world.registry(host);
        assert_eq!(
            e2e::skopeo::inspect_raw(
                &format!("{}/{prefix}services/web:v3.0.0", reg.host),
                Some(&creds(host))
            ),
            fixed.manifest.to_vec()
        );
        assert!(e2e::image::Pusher::new(&reg.host, Some(creds(host)))
            .manifest(&format!("{prefix}services/api"), "v9.9.9")
            .await
            .is_none());
    }

    // A hard quota is final: ECR answers CreateRepository for the new repository in one
    // destination with LimitExceededException (repositories per registry). Neither the SDK (whose
    // standard classifier counts that code as throttling) nor the state machine retries it: the
    // one queued fault is enough to fail that repository, named, while the run goes on.
    let quota = ImageBuilder::new(Format::Oci).layer(97, 2_000).build();
    world.seed("services/quota", "v1", &quota).await;
    sfn.fail_next_api_call("ecr:CreateRepository", AwsFault::ecr_limit_exceeded());
    let fourth = sfn.execute(&arn, &job(json!({}))).await;
    assert_eq!(fourth.status, "FAILED");
    assert_eq!(sfn.api_faults_left("ecr:CreateRepository"), 0);
    assert!(
        fourth.cause.contains("1 repositories failed")
            && fourth.cause.contains("LimitExceededException")
            && fourth
                .cause
                .contains("LimitExceededException (a service quota"),
        "{}",
        fourth.cause
    );
    let creates = sfn
        .api_calls()
        .iter()
        .filter(|c| {
            c.action == "ecr:CreateRepository"
                && c.resources.iter().any(|r| r.ends_with("services/quota"))
        })
        .count();
    assert_eq!(
        creates, 2,
        "one CreateRepository per destination, the refused one not retried"
    );

    eprintln!(
        "scale: first run {} events, largest state payload {} bytes; second run {} events",
        first.events, first.largest_payload, second.events
    );
    assert!(
        first.largest_payload < 64 * 1024,
        "a state payload of {} bytes",
        first.largest_payload
    );
}

#[tokio::test]
async fn sync_in_process_gives_the_same_destinations() {
    let world = EcrWorld::start();
    seed(&world).await;
    let conns = replication::connect::Connections::new(world.settings());
    let job = replication::Job::from_json(&job(json!({})).to_string()).unwrap();

    let output = replication::run::run_job(&conns, job.clone(), &replication::run::Quiet)
        .await
        .unwrap();

    assert_eq!(
        (output.report.copied, output.report.failed),
        (22, 0),
        "{:?}",
        output.report
    );
    assert_destinations_match(&world).await;
    let again = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!((again.report.present, again.report.copied), (22, 0));
}
