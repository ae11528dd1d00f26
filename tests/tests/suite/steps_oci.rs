//! The workflow's steps between plain OCI registries: catalog paging, planning an index,
//! nothing planned for a present image, and a large layer copied in segments by separate calls,
//! each with fresh clients as separate Lambda invocations would have.

use e2e::image::{multi_arch, Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use lambda_runtime::{Context, LambdaEvent};
use replication::connect::{Connections, Settings};
use replication::plan::CopyRange;
use replication::steps::*;
use replication::Job;
use serde_json::json;

fn event<T>(payload: T) -> LambdaEvent<T> {
    LambdaEvent::new(payload, Context::default())
}

fn job(src: &TestRegistry, dst: &TestRegistry, extra: serde_json::Value) -> Job {
    let mut base = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true, "repositoryPrefix": "mirror/"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    Job::from_json(&base.to_string()).unwrap()
}

fn settings(page_size: Option<usize>) -> Settings {
    Settings {
        registry: e2e::fast_retry_config(&[]),
        catalog_page_size: page_size,
        work_bucket: None,
        ..Settings::default()
    }
}

fn task(repository: &str, digest: &str, tags: &[&str], dst: &TestRegistry) -> ImageTask {
    ImageTask {
        repository: repository.into(),
        digest: oci::Digest::parse(digest).unwrap(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        destination: 0,
        target_registry: dst.host.clone(),
        target_repository: format!("mirror/{repository}"),
        present: false,
        referrers: Vec::new(),
        tags_absent: false,
        repository_absent: false,
        pushed_at: None,
        target_digest: None,
        signed_by: None,
    }
}

#[tokio::test]
async fn repositories_and_tags_are_read_across_link_pages() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci).layer(1, 100).build();
    for repo in ["a/one", "a/two", "a/three", "b/four", "a/five"] {
        pusher.push(repo, "v1", &image).await;
    }
    for tag in ["v2", "v3", "v4", "latest"] {
        pusher
            .push(
                "a/one",
                tag,
                &ImageBuilder::new(Format::Oci)
                    .layer(1, 100)
                    .annotation(tag)
                    .build(),
            )
            .await;
    }
    let conns = Connections::new(settings(Some(2)));
    let job = job(
        &src,
        &dst,
        json!({"repositories": {"include": ["a/*"]}, "tags": {"exclude": ["latest"]}}),
    );

    let pages = e2e::repository_pages(&conns, &job).await;
    let mut repositories: Vec<String> = pages.concat();
    let pages = pages.len();
    repositories.sort();
    assert_eq!(repositories, vec!["a/five", "a/one", "a/three", "a/two"]);
    // The catalog is read 2 names a request (this registry's page size); the filter applies
    // within those reads, so the 4 selected come back in one page of the step.
    assert_eq!(
        pages, 1,
        "5 repositories, 2 a listing request, 4 selected: one step page"
    );

    let images = functions::invoke::<EnumerateImages>(
        &conns,
        event(EnumerateImagesInput {
            job,
            repository: "a/one".into(),
            next_token: None,
            pack: Vec::new(),
        }),
    )
    .await
    .unwrap();
    let mut tags: Vec<String> = images.images.iter().flat_map(|t| t.tags.clone()).collect();
    tags.sort();
    assert_eq!(tags, vec!["v1", "v2", "v3", "v4"]);
    assert!(images
        .images
        .iter()
        .all(|t| t.target_repository == "mirror/a/one"));
}

/// An explicit image list naming many repositories is paged like the catalog (20 a page: the
/// parent's state holds one page), narrowed by the repository filter, and a token that is not
/// one of its pages is refused naming the field.
#[tokio::test]
async fn an_image_list_is_paged_like_the_catalog() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let conns = Connections::new(settings(None));
    let images: Vec<serde_json::Value> = (0..46)
        .map(|i| json!({"repository": format!("listed/r{i:02}"), "tag": "v1"}))
        .chain([json!({"repository": "other/x", "tag": "v1"})])
        .collect();
    let job = job(
        &src,
        &dst,
        json!({"images": images, "repositories": {"exclude": ["other/*", "listed/r45"]}}),
    );
    let pages = e2e::repository_pages(&conns, &job).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    let all: Vec<String> = pages.concat();
    let per_page = REPOSITORIES_PER_PAGE;
    assert_eq!(sizes, vec![per_page, per_page, 45 - 2 * per_page]);
    assert_eq!(all.len(), 45);
    assert!(!all.iter().any(|r| r == "other/x" || r == "listed/r45"));
    let bad = functions::invoke::<EnumerateRepositories>(
        &conns,
        event(EnumerateRepositoriesInput {
            job,
            next_token: Some("999".into()),
            report: None,
            pages: 0,
        }),
    )
    .await
    .unwrap_err();
    assert!(format!("{bad:?}").contains("nextToken"), "{bad:?}");
}

#[tokio::test]
async fn an_index_plans_every_child_and_a_present_image_plans_nothing() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let index = multi_arch(3, 2, 10_000);
    Pusher::new(&src.host, None).push("app", "v1", &index).await;
    let conns = Connections::new(settings(None));
    let job = job(&src, &dst, json!({}));
    let image = task("app", &index.digest, &["v1"], &dst);

    let plan = replication::steps::plan_image(
        &conns,
        PlanImageInput {
            job: job.clone(),
            image: image.clone(),
        },
    )
    .await
    .unwrap();

    assert_eq!(plan.manifests, 5);
    assert_eq!(plan.blobs, 12, "4 platforms x (config + 2 layers)");
    let planned: usize = plan
        .ranges
        .iter()
        .map(|r| match r {
            CopyRange::Blobs { blobs } => blobs.len(),
            CopyRange::Segments { .. } => 1,
        })
        .sum();
    assert_eq!(planned, 12);

    for range in plan.ranges {
        functions::invoke::<CopyBlobs>(
            &conns,
            event(CopyBlobsInput {
                job: job.clone(),
                image: image.clone(),
                range,
                state: None,
                bytes_before: 0,
            }),
        )
        .await
        .unwrap();
    }
    functions::invoke::<PutManifests>(
        &conns,
        event(PutManifestsInput {
            job: job.clone(),
            image: image.clone(),
            copied: Vec::new(),
            execution: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/mirror/app:v1", dst.host), None),
        index.manifest.to_vec()
    );

    let again = replication::steps::plan_image(&conns, PlanImageInput { job, image })
        .await
        .unwrap();
    assert!(again.image.present && again.ranges.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_300_mib_layer_is_copied_in_64_mib_segments_by_separate_invocations() {
    const MIB: u64 = 1 << 20;
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(77, 300 * MIB)
        .layer(78, 1000)
        .build();
    Pusher::new(&src.host, None)
        .push("ml/big", "v1", &image)
        .await;
    let job = job(&src, &dst, json!({"rangeBytes": 64 * MIB}));
    let image_task = task("ml/big", &image.digest, &["v1"], &dst);

    let plan = functions::invoke::<PlanImage>(
        &Connections::new(settings(None)),
        event(PlanPageInput {
            job: job.clone(),
            images: vec![image_task.clone()],
            pulls_before: 0,
            pulls_spent: 0,
        }),
    )
    .await
    .unwrap();
    let ranges: Vec<CopyRange> = plan.ranges.into_iter().map(|r| r.range).collect();
    let segmented = ranges
        .iter()
        .find(|r| matches!(r, CopyRange::Segments { .. }))
        .cloned()
        .expect("a segmented range");
    assert!(matches!(
        &segmented,
        CopyRange::Segments { segments: 5, .. }
    ));

    let mut state = None;
    let mut calls = 0;
    let mut total = 0;
    loop {
        // A fresh connection cache and client per call, as a new Lambda invocation would have.
        let conns = Connections::new(settings(None));
        let input = CopyBlobsInput {
            job: job.clone(),
            image: image_task.clone(),
            range: segmented.clone(),
            state,
            bytes_before: total,
        };
        // The state travels as JSON between invocations.
        let input: CopyBlobsInput =
            serde_json::from_str(&serde_json::to_string(&input).unwrap()).unwrap();
        let out = functions::invoke::<CopyBlobs>(&conns, event(input))
            .await
            .unwrap();
        calls += 1;
        total += out.bytes_copied;
        assert_eq!(
            out.range_bytes_copied, total,
            "the range's running byte count"
        );
        assert!(
            serde_json::to_string(&out).unwrap().len() < 4096,
            "state stays small"
        );
        if out.done {
            break;
        }
        state = out.state;
    }
    assert_eq!((calls, total), (5, 300 * MIB));
    for range in ranges
        .into_iter()
        .filter(|r| matches!(r, CopyRange::Blobs { .. }))
    {
        functions::invoke::<CopyBlobs>(
            &Connections::new(settings(None)),
            event(CopyBlobsInput {
                job: job.clone(),
                image: image_task.clone(),
                range,
                state: None,
                bytes_before: 0,
            }),
        )
        .await
        .unwrap();
    }
    functions::invoke::<PutManifests>(
        &Connections::new(settings(None)),
        event(PutManifestsInput {
            job,
            image: image_task,
            copied: vec![RangeOutcome {
                bytes: total,
                error: None,
            }],
            execution: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/mirror/ml/big:v1", dst.host), None),
        image.manifest.to_vec()
    );
    let layer = &image.blobs[1];
    assert_eq!(layer.data.size(), 300 * MIB);
    let stored = dst.blob_data_path(&layer.digest);
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), 300 * MIB);
    assert_eq!(
        e2e::image::BlobData::Bytes(std::fs::read(&stored).unwrap().into()).digest(),
        layer.digest
    );
}

#[tokio::test]
async fn summarise_counts_and_fails_naming_the_failed_image() {
    let conns = Connections::new(settings(None));
    let ok = |status| json!({"repository": "a", "digest": "sha256:1", "tags": ["v1"], "targetRegistry": "r", "targetRepository": "a", "status": status, "bytesCopied": 10, "error": null});
    let failed = json!({"repository": "b", "digest": "sha256:2", "tags": [], "targetRegistry": "r", "targetRepository": "b", "status": "failed", "bytesCopied": 0, "error": "blob gone"});
    let nested = json!([[ok("copied"), ok("present")], [failed.clone()], []]);
    let input = |reports, results, fail| SummariseInput {
        reports,
        results,
        fail_on_failure: fail,
        ..SummariseInput::default()
    };

    let page = functions::invoke::<Summarise>(&conns, event(input(json!(null), nested, false)))
        .await
        .unwrap();
    assert_eq!(
        (page.images, page.copied, page.present, page.failed),
        (3, 1, 1, 1)
    );

    let err = functions::invoke::<Summarise>(
        &conns,
        event(input(
            json!([page.clone(), [page.clone()]]),
            json!([]),
            true,
        )),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, replication::ErrorKind::Failed);
    assert!(
        err.message
            .contains("2 of 6 images and 0 repositories failed")
            && err.message.contains("b@sha256:2")
            && err.message.contains("blob gone"),
        "{}",
        err.message
    );

    let report = functions::invoke::<Summarise>(
        &conns,
        event(input(
            json!([]),
            json!([[ok("copied")], [ok("present")]]),
            true,
        )),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            report.images,
            report.copied,
            report.present,
            report.bytes_copied
        ),
        (2, 1, 1, 20)
    );

    // A repository child's report: present tasks counted without results, one failure listed,
    // the rest counted; a repository that failed as a whole fails the run, named.
    let child = functions::invoke::<Summarise>(
        &conns,
        event(SummariseInput {
            present: 5,
            list: Some(1),
            ..input(json!([]), json!([failed.clone(), failed.clone()]), false)
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            child.images,
            child.present,
            child.failed,
            child.failures.len(),
            child.failures_omitted
        ),
        (7, 5, 2, 1, 1)
    );
    let repository_failed = json!({"images": 0, "copied": 0, "present": 0, "planned": 0, "failed": 0,
        "bytesCopied": 0, "failures": [], "repositoriesFailed": 1,
        "repositoryFailures": [{"repository": "c", "error": "ReplicationRetryable: listing tags of c failed"}]});
    let err = functions::invoke::<Summarise>(
        &conns,
        event(input(json!([child, repository_failed]), json!([]), true)),
    )
    .await
    .unwrap_err();
    assert!(
        err.message
            .contains("2 of 7 images and 1 repositories failed")
            && err
                .message
                .contains("repository c: ReplicationRetryable: listing tags of c failed"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_explicit_image_list_copies_exactly_the_listed_images() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let one = ImageBuilder::new(Format::Oci).layer(1, 100).build();
    let two = ImageBuilder::new(Format::Oci).layer(2, 100).build();
    let three = ImageBuilder::new(Format::Oci).layer(3, 100).build();
    pusher.push("web", "v1.0", &one).await;
    pusher.push("web", "v1x0", &two).await; // a regex `v1.0` would match this one too
    pusher.push("web", "other", &one).await;
    pusher.push("api", "v7", &three).await;
    pusher.push("untouched", "v1.0", &one).await;
    let conns = Connections::new(settings(Some(100)));
    let listed = job(
        &src,
        &dst,
        json!({"images": [
            {"repository": "web", "tag": "v1.0"},
            {"repository": "api", "digest": three.digest},
        ]}),
    );

    let output = replication::run::run_job(&conns, listed, &replication::run::Quiet)
        .await
        .unwrap();

    assert_eq!((output.report.copied, output.report.failed), (2, 0));
    let target = Pusher::new(&dst.host, None);
    assert_eq!(
        target.manifest("mirror/web", "v1.0").await.unwrap(),
        one.manifest
    );
    assert!(target.manifest("mirror/web", "v1x0").await.is_none());
    assert!(target.manifest("mirror/web", "other").await.is_none());
    assert_eq!(
        target.manifest("mirror/api", &three.digest).await.unwrap(),
        three.manifest
    );
    assert!(target.manifest("mirror/untouched", "v1.0").await.is_none());

    // A listed tag that is gone fails its repository, named (the run goes on with the other
    // repositories and reports the failure).
    let failure_of = |output: replication::run::RunOutput| {
        assert_eq!(output.report.repositories_failed, 1, "{:?}", output.report);
        output.report.repository_failures[0].error.clone()
    };
    let missing = job(
        &src,
        &dst,
        json!({"images": [{"repository": "web", "tag": "v9"}]}),
    );
    let error = failure_of(
        replication::run::run_job(&conns, missing, &replication::run::Quiet)
            .await
            .unwrap(),
    );
    assert!(
        error.contains("/web:v9 is not in the source registry"),
        "{error}"
    );
    let moved = job(
        &src,
        &dst,
        json!({"images": [{"repository": "web", "tag": "v1.0", "digest": two.digest}]}),
    );
    // A tag listed with a digest it no longer names (a push overtaken by the next push) is
    // superseded: not copied, not failed, the destination left as it is.
    let report = replication::run::run_job(&conns, moved, &replication::run::Quiet)
        .await
        .unwrap()
        .report;
    assert_eq!(
        (
            report.superseded,
            report.copied,
            report.failed,
            report.repositories_failed
        ),
        (1, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(
        target.manifest("mirror/web", "v1.0").await.unwrap(),
        one.manifest
    );
}

#[tokio::test]
async fn prune_on_a_registry_that_cannot_untag_deletes_wholly_stale_manifests_only() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (one, two, three) = (
        ImageBuilder::new(Format::Oci).layer(1, 100).build(),
        ImageBuilder::new(Format::Oci).layer(2, 100).build(),
        ImageBuilder::new(Format::Oci).layer(3, 100).build(),
    );
    Pusher::new(&src.host, None).push("web", "v1", &one).await;
    let target = Pusher::new(&dst.host, None);
    for (tag, image) in [
        ("v1", &one),
        ("v0.8", &one),   // stale, but its manifest is also v1: kept with a reason
        ("v0", &two),     // stale, alone on its manifest: removed
        ("v0.9", &three), // stale, and `dev` (outside the filters) shares it: kept
        ("dev", &three),
    ] {
        target.push("mirror/web", tag, image).await;
    }
    let conns = Connections::new(settings(Some(100)));
    let pruning = |dry_run: bool| {
        job(
            &src,
            &dst,
            json!({"tags": {"include": ["v.*"]}, "prune": true, "dryRun": dry_run}),
        )
    };

    let planned = replication::run::run_job(&conns, pruning(true), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!(planned.repositories[0].pruned, vec!["v0", "v0.8", "v0.9"]);
    assert_eq!(planned.report.tags_pruned, 3);
    assert_eq!(
        planned.report.pruned[0],
        format!("{}/mirror/web:v0", dst.host)
    );

    let output = replication::run::run_job(&conns, pruning(false), &replication::run::Quiet)
        .await
        .unwrap();

    let repo = &output.repositories[0];
    assert_eq!(repo.pruned, vec!["v0"]);
    assert_eq!((output.report.tags_pruned, output.report.tags_kept), (1, 2));
    assert_eq!(repo.prune_kept.len(), 2, "{repo:?}");
    assert!(repo.prune_kept[0].starts_with("v0.8: the registry removes manifests, not single tags"));
    assert!(
        repo.prune_kept[1].ends_with("is also tagged dev"),
        "{repo:?}"
    );
    assert!(target.manifest("mirror/web", "v0").await.is_none());
    for tag in ["v1", "v0.8", "v0.9", "dev"] {
        assert!(target.manifest("mirror/web", tag).await.is_some(), "{tag}");
    }
}

/// Prune never breaks what stays (distribution: deleting a tag deletes its manifest): a stale
/// tag on a child of an index that stays, and the replicator's referrers fallback index
/// (`sha256-<hex>`, receipts and referrers where there is no referrers API) of an image that
/// stays, are kept, each with its reason; the fallback index of an image that goes goes too.
#[tokio::test]
async fn prune_keeps_an_index_child_and_the_fallback_index_of_an_image_that_stays() {
    use replication::artifacts::fallback_tag;
    const RECEIPT: &str = "application/vnd.in-toto+json";
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let index = multi_arch(960, 1, 200);
    let amd64 = index.children[0].clone();
    let old = ImageBuilder::new(Format::Oci).layer(970, 100).build();
    Pusher::new(&src.host, None).push("web", "v2", &index).await;
    let target = Pusher::new(&dst.host, None);
    target.push("mirror/web", "v2", &index).await;
    target.push("mirror/web", "v2-amd64", &amd64).await; // stale, but v2 lists it: kept
    target.push("mirror/web", "v0", &old).await; // stale: removed
    for subject in [&index, &old] {
        let receipt = e2e::image::artifact(
            Some(subject),
            RECEIPT,
            "application/vnd.dsse.envelope.v1+json",
            subject.digest.as_bytes(),
        );
        let fallback = e2e::image::referrers_index(vec![(receipt, RECEIPT)]);
        target
            .push("mirror/web", &fallback_tag(&subject.digest), &fallback)
            .await;
    }
    let conns = Connections::new(settings(Some(100)));
    let pruning = |dry_run: bool| job(&src, &dst, json!({"prune": true, "dryRun": dry_run}));
    let going = vec![fallback_tag(&old.digest), "v0".to_string()];

    let planned = replication::run::run_job(&conns, pruning(true), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!(planned.repositories[0].pruned, going, "{planned:?}");
    assert_eq!(planned.repositories[0].prune_kept.len(), 2, "{planned:?}");

    let output = replication::run::run_job(&conns, pruning(false), &replication::run::Quiet)
        .await
        .unwrap();

    let repo = &output.repositories[0];
    assert_eq!(repo.pruned, going, "{repo:?}");
    assert_eq!(
        (output.report.tags_pruned, output.report.tags_kept),
        (2, 2),
        "{:?}",
        output.report
    );
    let kept_fallback = format!(
        "{}: the referrers fallback index of v2 (",
        fallback_tag(&index.digest)
    );
    assert!(
        repo.prune_kept[0].starts_with(&kept_fallback),
        "{:?}",
        repo.prune_kept
    );
    assert!(
        repo.prune_kept[1].starts_with("v2-amd64: sha256:")
            && repo.prune_kept[1].contains("is listed by the index v2 (")
            && repo.prune_kept[1].ends_with("which stays; removing it would break that index"),
        "{:?}",
        repo.prune_kept
    );
    // The report's prune section names each kept tag with its reason.
    assert!(
        output
            .report
            .kept
            .iter()
            .any(|k| k.starts_with(&format!("{}/mirror/web:v2-amd64: ", dst.host))),
        "{:?}",
        output.report.kept
    );
    // What stays is whole: the index and every child it lists, and its fallback index.
    assert_eq!(
        target.manifest("mirror/web", "v2").await.unwrap(),
        index.manifest
    );
    for child in &index.children {
        assert!(
            target.manifest("mirror/web", &child.digest).await.is_some(),
            "{} is gone from under v2",
            child.digest
        );
    }
    for tag in ["v2-amd64".to_string(), fallback_tag(&index.digest)] {
        assert!(target.manifest("mirror/web", &tag).await.is_some(), "{tag}");
    }
    for tag in &going {
        assert!(target.manifest("mirror/web", tag).await.is_none(), "{tag}");
    }
}

/// A first sync into a repository the destination does not have asks it nothing it knows the
/// answer to (no blob or manifest HEAD), and reads each source manifest once (the listing's
/// read serves the plan); byte-identical, and the next sync finds everything present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_into_a_new_repository_asks_nothing_it_knows() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let tags = ["a", "b", "c", "d", "e"];
    let mut images = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let image = ImageBuilder::new(Format::Oci)
            .layer(900, 10_000)
            .layer(901 + i as u64, 2_000)
            .build();
        pusher.push("svc/new", tag, &image).await;
        images.push(image);
    }
    let index = multi_arch(950, 2, 3_000);
    pusher.push("svc/new", "multi", &index).await;
    let read_before = src.log().lines().count();
    let conns = Connections::new(settings(None));
    let job = job(&src, &dst, json!({"referrers": false}));

    let first = replication::run::run_job(&conns, job.clone(), &replication::run::Quiet)
        .await
        .unwrap()
        .report;

    assert_eq!((first.copied, first.failed), (6, 0), "{first:?}");
    let asked = dst
        .log()
        .lines()
        .filter(|l| l.contains("\"HEAD /v2/"))
        .count();
    assert_eq!(
        asked,
        0,
        "HEADs sent to a repository that did not exist:\n{}",
        dst.log()
    );
    let source_log: Vec<String> = src
        .log()
        .lines()
        .skip(read_before)
        .map(str::to_string)
        .collect();
    let manifest_reads = |part: &str| source_log.iter().filter(|l| l.contains(part)).count();
    assert_eq!(manifest_reads("\"HEAD /v2/svc/new/manifests/"), 0);
    for tag in tags.iter().chain(&["multi"]) {
        let by_tag = manifest_reads(&format!("\"GET /v2/svc/new/manifests/{tag} "));
        assert_eq!(by_tag, 1, "{tag}");
    }
    // The index's children are read by digest (they have no tag), each once; the tagged
    // manifests never are.
    let by_digest: Vec<&String> = source_log
        .iter()
        .filter(|l| l.contains("\"GET /v2/svc/new/manifests/sha256:"))
        .collect();
    let distinct: std::collections::HashSet<_> = by_digest.iter().collect();
    assert!(!by_digest.is_empty());
    assert_eq!(by_digest.len(), distinct.len(), "{by_digest:#?}");
    for (tag, image) in tags.iter().zip(&images).chain([(&"multi", &index)]) {
        let at = |name: String| e2e::skopeo::inspect_raw(&name, None);
        let copied = at(format!("{}/mirror/svc/new:{tag}", dst.host));
        assert_eq!(copied, image.manifest.to_vec(), "{tag}");
        assert_eq!(at(format!("{}/svc/new:{tag}", src.host)), copied, "{tag}");
    }
    let again = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap()
        .report;
    assert_eq!(
        (again.present, again.copied, again.failed),
        (6, 0, 0),
        "{again:?}"
    );
}

fn verifying(mut job: Job) -> Job {
    job.mode = replication::job::Mode::Verify;
    job
}

/// The kinds of difference a verification reports, as (kind, target) pairs.
fn differences(output: &replication::run::RunOutput) -> Vec<(&'static str, String)> {
    output
        .differences
        .iter()
        .map(|d| (d.kind.as_str(), d.target.clone()))
        .collect()
}

/// `verify` finds each kind of difference and names it (a tag missing, a tag naming another
/// digest, a tag only the destination has, an untagged image missing), writes nothing, and an
/// identical set reports none.
#[tokio::test]
async fn verify_names_every_difference_and_an_identical_set_has_none() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let target = Pusher::new(&dst.host, None);
    let image = |seed| ImageBuilder::new(Format::Oci).layer(seed, 100).build();
    let (one, two, three, four) = (image(1), image(2), image(3), multi_arch(4, 1, 100));
    source.push("app", "v1", &one).await;
    source.push("app", "v2", &two).await;
    source.push("lib", "v1", &four).await;
    let conns = Connections::new(settings(Some(100)));
    let replicate = || job(&src, &dst, json!({"tags": {"include": ["v.*"]}}));
    let copied = replication::run::run_job(&conns, replicate(), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!((copied.report.copied, copied.report.failed), (3, 0));

    let identical =
        replication::run::run_job(&conns, verifying(replicate()), &replication::run::Quiet)
            .await
            .unwrap();
    let report = identical.report.verify.clone().unwrap();
    assert_eq!((report.images, report.identical, report.total()), (3, 3, 0));
    assert!(
        identical.differences.is_empty(),
        "{:?}",
        identical.differences
    );

    source.push("app", "v3", &three).await; // missing in the destination
    target.push("mirror/app", "v2", &one).await; // the destination's v2 names another image
    target.push("mirror/lib", "v9", &three).await; // only the destination has it
    target.push("mirror/lib", "dev", &three).await; // outside the filters: not extra
    let found = replication::run::run_job(&conns, verifying(replicate()), &replication::run::Quiet)
        .await
        .unwrap();

    let at = |suffix: &str| format!("{}/mirror/{suffix}", dst.host);
    assert_eq!(
        differences(&found),
        vec![
            ("different", at("app:v2")),
            ("missing", at("app:v3")),
            ("extra", at("lib:v9")),
        ]
    );
    let different = &found.differences[0];
    assert_eq!(
        different.detail,
        format!("names {}, the source's names {}", one.digest, two.digest)
    );
    let report = found.report.verify.unwrap();
    assert_eq!(
        (
            report.images,
            report.identical,
            report.missing,
            report.different,
            report.extra
        ),
        (4, 2, 1, 1, 1)
    );
    // Nothing was written.
    assert!(target.manifest("mirror/app", "v3").await.is_none());
    assert_eq!(
        target.manifest("mirror/app", "v2").await.unwrap(),
        one.manifest
    );
}

/// Repository names rewritten per destination: replicated under the mapped names, verified
/// there (a stale tag found extra), and pruned there.
#[tokio::test]
async fn a_mapped_layout_is_replicated_verified_and_pruned() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let target = Pusher::new(&dst.host, None);
    let (one, two, three) = (
        ImageBuilder::new(Format::Oci).layer(1, 100).build(),
        ImageBuilder::new(Format::Oci).layer(2, 100).build(),
        ImageBuilder::new(Format::Oci).layer(3, 100).build(),
    );
    source.push("team-ml/bert", "v1", &one).await;
    source.push("tools/lint", "v1", &two).await;
    let mapped = |extra: serde_json::Value| {
        let mut job = job(&src, &dst, extra);
        job.destinations[0].repository_mapping = serde_json::from_value(json!([
            {"match": "team-(?P<team>[a-z]+)/(.*)", "replace": "teams/${team}/$2"},
            {"match": "tools/(.*)", "replace": "$1-tool"},
        ]))
        .unwrap();
        job.validate().unwrap().job
    };
    let conns = Connections::new(settings(Some(100)));

    let copied = replication::run::run_job(&conns, mapped(json!({})), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!((copied.report.copied, copied.report.failed), (2, 0));
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/mirror/teams/ml/bert:v1", dst.host), None),
        one.manifest.to_vec()
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/mirror/lint-tool:v1", dst.host), None),
        two.manifest.to_vec()
    );
    assert!(target.manifest("mirror/team-ml/bert", "v1").await.is_none());

    target.push("mirror/teams/ml/bert", "v0", &three).await; // stale: the source has no v0
    let verified = replication::run::run_job(
        &conns,
        verifying(mapped(json!({}))),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        differences(&verified),
        vec![("extra", format!("{}/mirror/teams/ml/bert:v0", dst.host))]
    );
    assert_eq!(verified.differences[0].repository, "team-ml/bert");

    let pruned = replication::run::run_job(
        &conns,
        mapped(json!({"prune": true})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(pruned.report.tags_pruned, 1, "{:?}", pruned.report);
    assert!(target
        .manifest("mirror/teams/ml/bert", "v0")
        .await
        .is_none());
    let clean = replication::run::run_job(
        &conns,
        verifying(mapped(json!({}))),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    let report = clean.report.verify.unwrap();
    assert_eq!((report.images, report.identical, report.total()), (2, 2, 0));
}

/// Artifacts that are not container images copy byte-identical and are filtered like images:
/// each kind pushed with the media types its tool uses (a Helm chart as `helm push` writes it,
/// no `artifactType`; `oras push` with its empty config and an `artifactType`; a WASM module;
/// an SBOM-only artifact with no layers at all).
#[tokio::test]
async fn every_kind_of_oci_artifact_copies_byte_identical_and_is_filtered_like_an_image() {
    use e2e::image::oci_artifact;
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let empty = ("application/vnd.oci.empty.v1+json", b"{}".as_slice());
    let helm = |version: &str| {
        oci_artifact(
            None,
            (
                "application/vnd.cncf.helm.config.v1+json",
                format!(r#"{{"name":"web","version":"{version}","apiVersion":"v2"}}"#).as_bytes(),
            ),
            &[(
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                format!("chart {version}").as_bytes(),
            )],
        )
    };
    let kinds = [
        ("charts/web", "1.2.3", helm("1.2.3")),
        (
            "models/llm",
            "v1",
            oci_artifact(
                Some("application/vnd.example.model.v1"),
                empty,
                &[
                    ("application/vnd.example.weights", b"weights".as_slice()),
                    ("application/vnd.example.tokenizer", b"tokens".as_slice()),
                ],
            ),
        ),
        (
            "wasm/filter",
            "v1",
            oci_artifact(
                None,
                (
                    "application/vnd.wasm.config.v0+json",
                    br#"{"architecture":"wasm"}"#,
                ),
                &[(
                    "application/vnd.wasm.content.layer.v1+wasm",
                    b"\0asm\x01\0\0\0".as_slice(),
                )],
            ),
        ),
        (
            "sbom/app",
            "v1",
            oci_artifact(Some("application/spdx+json"), empty, &[]),
        ),
    ];
    let pusher = Pusher::new(&src.host, None);
    for (repository, tag, artifact) in &kinds {
        pusher.push(repository, tag, artifact).await;
    }
    // A release candidate of the chart, which the tag filter leaves out.
    pusher
        .push("charts/web", "1.3.0-rc1", &helm("1.3.0-rc1"))
        .await;

    let conns = Connections::new(settings(None));
    let job = job(&src, &dst, json!({"tags": {"exclude": [".*-rc.*"]}}));
    let report = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap()
        .report;

    assert_eq!((report.copied, report.failed), (4, 0), "{report:?}");
    let target = Pusher::new(&dst.host, None);
    for (repository, tag, artifact) in &kinds {
        let at = format!("mirror/{repository}");
        assert_eq!(
            e2e::skopeo::inspect_raw(&format!("{}/{at}:{tag}", dst.host), None),
            artifact.manifest.to_vec(),
            "{repository}:{tag}"
        );
        for blob in &artifact.blobs {
            assert_eq!(
                target.blob_digest(&at, &blob.digest).await,
                Some((blob.digest.clone(), blob.data.size())),
                "{repository}: {}",
                blob.digest
            );
        }
    }
    assert!(target
        .manifest("mirror/charts/web", "1.3.0-rc1")
        .await
        .is_none());
}

/// `enumerate-repositories` settles the repositories with nothing to do (their present images
/// in the report, no child) and hands back a token when its time budget is spent (here: none,
/// so one batch of `TRIAGE_CONCURRENCY` per call); paged to the end, each repository is either
/// given to a child or settled, exactly once.
#[tokio::test]
async fn repositories_with_nothing_to_do_are_settled_and_a_spent_budget_hands_back() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (to_src, to_dst) = (Pusher::new(&src.host, None), Pusher::new(&dst.host, None));
    let image = ImageBuilder::new(Format::Oci).layer(7, 64).build();
    for i in 0..12 {
        let repository = format!("r{i:02}");
        to_src.push(&repository, "v1", &image).await;
        // Every third repository is not in the destination yet.
        if i % 3 != 0 {
            to_dst
                .push(&format!("mirror/{repository}"), "v1", &image)
                .await;
        }
    }
    let conns = Connections::new(settings(None));
    let job = job(&src, &dst, json!({"referrers": false}));

    let (mut with_work, mut settled, mut calls) = (Vec::new(), 0, 0);
    let mut input = EnumerateRepositoriesInput {
        job,
        next_token: None,
        report: None,
        pages: 0,
    };
    loop {
        let page = replication::steps::enumerate_and_settle(
            &conns,
            input.clone(),
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
        calls += 1;
        assert_eq!(page.selections.len(), page.repositories.len());
        with_work.extend(e2e::page_repositories(&page));
        settled += page.settled;
        input.report = page.report;
        match page.next_token {
            Some(token) => input.next_token = Some(token),
            None => break,
        }
    }

    assert_eq!(with_work, ["r00", "r03", "r06", "r09"]);
    assert_eq!(settled, 8);
    assert_eq!(calls, 2, "12 repositories, 8 checked per call");
    let report = input.report.unwrap();
    assert_eq!((report.images, report.present), (8, 8), "{report:?}");
}
