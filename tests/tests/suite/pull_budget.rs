//! Rate-limited sources (Docker Hub's pull limit, played by `e2e::pull_limit` in front of
//! distribution): a run spends at most the job's pull budget (`source.pullBudget`), keeps the
//! registry's remaining count above `keepRemaining`, leaves the rest for the next run
//! (`postponed`, not failed), and a run that finds the limit reached does not wait it out or
//! fail. Listing and presence read with HEADs, which the registry does not count.

use e2e::image::{multi_arch, Format, ImageBuilder, Pusher, TestImage};
use e2e::pull_limit::PullLimitedRegistry;
use e2e::registry::TestRegistry;
use replication::connect::{Connections, Settings};
use replication::report::RunReport;
use replication::run::{run_job, Quiet, RunOutput};
use replication::Job;
use serde_json::json;

fn connections() -> Connections {
    connections_with(e2e::fast_retry_config(&[]))
}

fn connections_with(registry: oci::ClientConfig) -> Connections {
    Connections::new(Settings {
        registry,
        ..Settings::default()
    })
}

/// Six images in two repositories (one of them a two-platform index), pushed to `src`.
async fn six_images(src: &TestRegistry) -> Vec<(String, TestImage)> {
    let pusher = Pusher::new(&src.host, None);
    let mut pushed = Vec::new();
    for (repo, tag, image) in [
        (
            "library/nginx",
            "1.25",
            ImageBuilder::new(Format::Oci).layer(1, 3000).build(),
        ),
        (
            "library/nginx",
            "1.26",
            ImageBuilder::new(Format::Oci).layer(2, 3000).build(),
        ),
        ("library/nginx", "1.27", multi_arch(3, 1, 2000)),
        (
            "library/redis",
            "7.0",
            ImageBuilder::new(Format::Oci).layer(4, 3000).build(),
        ),
        (
            "library/redis",
            "7.2",
            ImageBuilder::new(Format::Docker).layer(5, 3000).build(),
        ),
        (
            "library/redis",
            "7.4",
            ImageBuilder::new(Format::Oci).layer(6, 3000).build(),
        ),
    ] {
        pusher.push(repo, tag, &image).await;
        pushed.push((format!("{repo}:{tag}"), image));
    }
    pushed
}

fn job(source: &str, dst: &TestRegistry, budget: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "source": {"registry": source, "insecure": true, "pullBudget": budget},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "repositories": {"include": ["library/*"]},
        "referrers": false
    }))
    .unwrap()
}

/// The images of `pushed` the destination holds, each checked byte-identical to the source's
/// (by skopeo, an independent client); none other is there half-copied.
fn copied_images(pushed: &[(String, TestImage)], src: &TestRegistry, dst: &TestRegistry) -> usize {
    let mut copied = 0;
    for (name, _) in pushed {
        if !e2e::skopeo::exists(&format!("{}/{name}", dst.host)) {
            continue;
        }
        assert_eq!(
            e2e::skopeo::inspect_raw(&format!("{}/{name}", dst.host), None),
            e2e::skopeo::inspect_raw(&format!("{}/{name}", src.host), None),
            "{name} differs from the source"
        );
        copied += 1;
    }
    copied
}

fn counts(r: &RunReport) -> (usize, usize, usize, usize) {
    (r.copied, r.present, r.postponed, r.failed)
}

async fn run(job: Job) -> RunOutput {
    run_job(&connections(), job, &Quiet).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_spends_at_most_its_pull_budget_and_the_next_run_finishes_the_rest() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let pushed = six_images(&src).await;
    let hub = PullLimitedRegistry::start(&src.host, 100);
    let budget = json!({"maxPulls": 6});

    let first = run(job(&hub.host, &dst, budget.clone())).await;

    let r = &first.report;
    assert!(hub.pulls() <= 6, "{} pulls spent of 6", hub.pulls());
    assert_eq!(
        r.source_pulls,
        hub.pulls(),
        "the report counts what the registry counted"
    );
    assert_eq!(hub.refused(), 0);
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.copied >= 2 && r.postponed >= 1, "{r:?}");
    assert_eq!(r.copied + r.postponed, 6, "{r:?}");
    assert_eq!(copied_images(&pushed, &src, &dst), r.copied);

    // The next run (a larger budget, as after a quiet night) copies the rest.
    let second = run(job(&hub.host, &dst, json!({"maxPulls": 20}))).await;
    let spent_second = hub.pulls() - first.report.source_pulls;
    assert!(spent_second <= 20, "{spent_second} pulls spent of 20");
    assert_eq!(second.report.source_pulls, spent_second);
    assert_eq!(
        counts(&second.report),
        (r.postponed, r.copied, 0, 0),
        "{:?}",
        second.report
    );
    assert_eq!(copied_images(&pushed, &src, &dst), 6);

    // Everything is there: a run lists and checks with HEADs only, which cost no pull.
    let before = hub.pulls();
    let third = run(job(&hub.host, &dst, budget)).await;
    assert_eq!(counts(&third.report), (0, 6, 0, 0));
    assert_eq!(
        hub.pulls(),
        before,
        "a run with nothing to copy spent pulls"
    );
    assert!(hub
        .manifest_requests()
        .iter()
        .any(|r| r.starts_with("HEAD ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_the_registrys_remaining_pulls_and_a_reached_limit_postpones_without_waiting() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let pushed = six_images(&src).await;
    let hub = PullLimitedRegistry::start(&src.host, 6);

    // The budget is large; the registry's own count is what stops the run, 2 pulls above 0.
    let kept = run(job(
        &hub.host,
        &dst,
        json!({"maxPulls": 1000, "keepRemaining": 2}),
    ))
    .await;
    let r = &kept.report;
    assert_eq!(hub.refused(), 0, "the run went past the limit");
    assert!(
        hub.remaining() >= 2,
        "{} pulls left, 2 kept",
        hub.remaining()
    );
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.copied >= 1 && r.postponed >= 1, "{r:?}");
    assert_eq!(copied_images(&pushed, &src, &dst), r.copied);

    // Without a budget a run on Docker Hub (the proxy standing for registry-1.docker.io)
    // meets the limit itself: listed with HEADs, each image's first GET is refused once (429
    // with no pulls left is not retried: the window lasts hours) and postponed, not failed.
    let mut hub_endpoint = e2e::fast_retry_config(&[]);
    hub_endpoint
        .add_endpoint(&format!("docker.io=http://{}", hub.host))
        .unwrap();
    let spend_the_rest: Job = serde_json::from_value(json!({
        "source": {"registry": "docker.io"},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "repositories": {"include": ["nginx", "redis"]},
        "referrers": false
    }))
    .unwrap();
    let on_hub = |job| {
        let conns = connections_with(hub_endpoint.clone());
        async move { run_job(&conns, job, &Quiet).await.unwrap() }
    };
    let limited = on_hub(spend_the_rest.clone()).await;
    let r = &limited.report;
    assert_eq!(hub.remaining(), 0);
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.postponed >= 1, "{r:?}");
    assert_eq!(
        hub.refused() as usize,
        r.postponed,
        "a refused pull was retried (or an image was postponed without asking)"
    );
    assert_eq!(
        copied_images(&pushed, &src, &dst),
        kept.report.copied + r.copied
    );

    // The window moves on (with room for the rest): the next run copies what was left.
    hub.new_window(100);
    let next = on_hub(spend_the_rest).await;
    assert_eq!(next.report.failed, 0, "{:?}", next.report);
    assert_eq!(copied_images(&pushed, &src, &dst), 6);
}

#[test]
fn a_budget_is_refused_with_its_field_named_where_it_cannot_hold() {
    let dst_host = "127.0.0.1:5999";
    for (budget, mode, field) in [
        (
            json!({"maxPulls": 1}),
            "replicate",
            "source.pullBudget.maxPulls",
        ),
        (
            json!({"maxPulls": 0}),
            "replicate",
            "source.pullBudget.maxPulls",
        ),
        (
            json!({"maxPulls": 10, "keepRemaining": 10_000_000}),
            "replicate",
            "source.pullBudget.keepRemaining",
        ),
        (json!({"maxPulls": 10}), "verify", "source.pullBudget"),
    ] {
        let job: Job = serde_json::from_value(json!({
            "source": {"registry": "docker.io", "pullBudget": budget},
            "destinations": [{"registry": dst_host, "insecure": true}],
            "mode": mode
        }))
        .unwrap();
        let e = job.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("{field}:")), "{budget} ({mode}): {e}");
    }
    let unknown = serde_json::from_value::<Job>(json!({
        "source": {"registry": "docker.io", "pullBudget": {"maxPulls": 10, "pulls": 3}},
        "destinations": [{"registry": dst_host}]
    }));
    assert!(unknown.unwrap_err().to_string().contains("pulls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_names_work_as_users_write_them_and_no_catalog_is_asked() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let pusher = Pusher::new(&src.host, None);
    let nginx = ImageBuilder::new(Format::Docker).layer(7, 2000).build();
    let redis = ImageBuilder::new(Format::Oci).layer(8, 2000).build();
    pusher.push("library/nginx", "1.27", &nginx).await;
    pusher.push("bitnami/redis", "7.4", &redis).await;
    // Docker Hub (registry-1.docker.io) played by the pull-limited proxy.
    let hub = PullLimitedRegistry::start(&src.host, 100);
    let mut config = e2e::fast_retry_config(&[]);
    config
        .add_endpoint(&format!("docker.io=http://{}", hub.host))
        .unwrap();

    // `index.docker.io` as config files write it, `nginx` as `docker pull nginx` does.
    let job: Job = serde_json::from_value(json!({
        "source": {"registry": "index.docker.io", "pullBudget": {"maxPulls": 50}},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "repositories": {"include": ["nginx", "bitnami/redis"]},
        "referrers": false
    }))
    .unwrap();
    let output = run_job(&connections_with(config), job, &Quiet)
        .await
        .unwrap();

    assert_eq!(counts(&output.report), (2, 0, 0, 0), "{:?}", output.report);
    for name in ["library/nginx:1.27", "bitnami/redis:7.4"] {
        assert_eq!(
            e2e::skopeo::inspect_raw(&format!("{}/{name}", dst.host), None),
            e2e::skopeo::inspect_raw(&format!("{}/{name}", src.host), None),
        );
    }
    let requests = hub.requests();
    assert!(
        !requests.iter().any(|r| r.contains("_catalog")),
        "Docker Hub has no catalog: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == "GET /v2/library/nginx/tags/list"),
        "{requests:?}"
    );

    // A glob cannot be listed there: refused with the field named, before any request.
    let glob: Job = serde_json::from_value(json!({
        "source": {"registry": "registry-1.docker.io"},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "repositories": {"include": ["bitnami/*"]}
    }))
    .unwrap();
    let e = glob.validate().unwrap_err().to_string();
    assert!(
        e.contains("repositories.include: Docker Hub lists no catalog"),
        "{e}"
    );
}

/// Six single-platform images in `library/app` (tags `v1`..`v6`), pushed to `src`.
async fn six_small_images(src: &TestRegistry) -> Vec<(String, TestImage)> {
    let pusher = Pusher::new(&src.host, None);
    let mut pushed = Vec::new();
    for n in 1..=6u64 {
        let image = ImageBuilder::new(Format::Oci).layer(40 + n, 1500).build();
        pusher.push("library/app", &format!("v{n}"), &image).await;
        pushed.push((format!("library/app:v{n}"), image));
    }
    pushed
}

/// The registry's answers turn to claiming more pulls left than there are, after two pulls:
/// with the same limit, or an "upgraded" one. Neither raises the count the run keeps: it
/// stops at `keepRemaining` by its own count of what it sent since the lowest answer, and the
/// registry really keeps its 4 pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_remaining_count_never_raises_the_floor_whatever_limit_it_names() {
    for (claimed_limit, claimed_remaining) in [(8, 500), (1000, 990)] {
        let src = TestRegistry::start();
        let dst = TestRegistry::start();
        let pushed = six_small_images(&src).await;
        let hub = PullLimitedRegistry::start(&src.host, 8);
        hub.claim_after(2, claimed_limit, claimed_remaining);

        let output = run(job(
            &hub.host,
            &dst,
            json!({"maxPulls": 1000, "keepRemaining": 4}),
        ))
        .await;

        let r = &output.report;
        let case = format!("claiming {claimed_remaining} of {claimed_limit}");
        assert_eq!(hub.refused(), 0, "{case}: the run met the limit");
        assert!(
            hub.remaining() >= 4,
            "{case}: {} pulls left, 4 kept",
            hub.remaining()
        );
        assert_eq!(r.source_pulls, hub.pulls(), "{case}");
        assert_eq!(r.failed, 0, "{case}: {r:?}");
        assert!(r.copied >= 1 && r.postponed >= 1, "{case}: {r:?}");
        assert_eq!(r.copied + r.postponed, 6, "{case}: {r:?}");
        assert_eq!(copied_images(&pushed, &src, &dst), r.copied, "{case}");
    }
}

/// `requireSignature` reads each image's signature manifest, and `platforms` reads an index to
/// cut it down: on a rate-limited source those GETs are pulls like the plan's, so the run's
/// `sourcePulls` is what the registry counted, and they are inside the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_gates_and_platform_subsets_reads_are_counted_as_pulls() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let pusher = Pusher::new(&src.host, None);
    let (key, pem) = e2e::image::signing_key(7);
    let single = ImageBuilder::new(Format::Oci).layer(71, 2000).build();
    let multi = multi_arch(72, 1, 1500);
    for (repo, image) in [("library/app", &single), ("library/multi", &multi)] {
        pusher.push(repo, "v1", image).await;
        let signature = e2e::image::cosign_signature(&image.digest, &key, false, None);
        let tag = format!("{}.sig", image.digest.replacen(':', "-", 1));
        pusher.push(repo, &tag, &signature).await;
    }
    let hub = PullLimitedRegistry::start(&src.host, 100);
    let job: Job = serde_json::from_value(json!({
        "source": {"registry": hub.host, "insecure": true, "pullBudget": {"maxPulls": 40}},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "repositories": {"include": ["library/*"]},
        "tags": {"include": ["v1"]},
        "platforms": ["linux/amd64"],
        "requireSignature": {"publicKeys": [pem]},
        "referrers": false
    }))
    .unwrap();

    let output = run(job).await;

    let r = &output.report;
    assert_eq!((r.failed, r.unsigned, r.postponed), (0, 0, 0), "{r:?}");
    assert!(r.copied >= 2, "{r:?}");
    // The signatures were read with GETs (the gate), so was the index (the subset)...
    let gets: Vec<String> = hub
        .manifest_requests()
        .into_iter()
        .filter(|m| m.starts_with("GET "))
        .collect();
    assert!(gets.len() >= 3, "{gets:?}");
    // ...and every one of them is in the run's count, inside the budget.
    assert_eq!(r.source_pulls, hub.pulls(), "{gets:?}");
    assert!(hub.pulls() <= 40);
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/library/app:v1", dst.host), None),
        single.manifest.to_vec()
    );
    assert!(e2e::skopeo::exists(&format!(
        "{}/library/multi:v1",
        dst.host
    )));
}
