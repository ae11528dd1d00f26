//! The copy engine against ECR's data plane as it behaves (`e2e::ecr_plane`): each behaviour of
//! the profile is shown to fire (its counter, or a raw request that a distribution registry
//! would have accepted) and the engine to get through it with byte-identical results.

use base64::Engine as _;
use e2e::ecr_plane::{Throttle, MAX_MANIFEST_BYTES, MIN_PART_BYTES};
use e2e::image::{artifact, multi_arch, sha256, Format, ImageBuilder, Pusher, TestImage};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST2, DEST2_ROLE, DEST_ROLE, SOURCE};
use oci::{BlobRef, CredentialStore, Digest, RegistryClient, Repository, SegmentProgress};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn creds(host: &str) -> (String, String) {
    ("AWS".into(), moto_token_password(host))
}

/// A registry client that reaches every ECR host through its plane, with moto's tokens.
fn ecr_client(world: &EcrWorld, chunk: Option<u64>) -> RegistryClient {
    let mut store = CredentialStore::new();
    for host in [SOURCE, DEST] {
        store.insert(host, world.registry(host).credential().unwrap());
    }
    let mut config = world.settings().registry;
    if let Some(size) = chunk {
        config.chunk_sizes.insert(DEST.to_string(), size);
    }
    RegistryClient::new(config, store).unwrap()
}

fn repo(host: &str, name: &str) -> Repository {
    Repository {
        registry: host.to_string(),
        name: name.to_string(),
    }
}

fn blob_ref(image: &TestImage, index: usize) -> BlobRef {
    let blob = &image.blobs[index];
    BlobRef {
        digest: Digest::parse(&blob.digest).unwrap(),
        size: blob.data.size(),
    }
}

/// The next segment (of `MIN_PART_BYTES`) of a blob from SOURCE to DEST, as one call of the
/// copy step makes it.
async fn next_segment(
    client: &RegistryClient,
    repository: &str,
    layer: &BlobRef,
    state: Option<oci::SegmentState>,
) -> SegmentProgress {
    let (from, to) = (repo(SOURCE, repository), repo(DEST, repository));
    oci::copy_blob_segment(client, &from, client, &to, layer, state, MIN_PART_BYTES)
        .await
        .unwrap()
}

/// The blob as stored in the destination's storage: (sha256, size).
async fn stored(world: &EcrWorld, repository: &str, digest: &str) -> Option<(String, u64)> {
    Pusher::new(&world.registry(DEST).host, Some(creds(DEST)))
        .blob_digest(repository, digest)
        .await
}

fn job(repositories: &[&str], extra: serde_json::Value) -> replication::Job {
    let mut job = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        "repositories": {"include": repositories},
        "maxConcurrency": 4
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    replication::Job::from_json(&job.to_string()).unwrap()
}

async fn run(world: &EcrWorld, job: replication::Job) -> replication::steps::RunReport {
    let conns = replication::connect::Connections::new(world.settings());
    replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap()
        .report
}

/// Makes a source repository's tags immutable (copied to the destination with its settings).
async fn make_source_immutable(world: &EcrWorld, repository: &str) {
    world
        .moto
        .sdk(SOURCE, None)
        .await
        .put_image_tag_mutability()
        .repository_name(repository)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
}

/// A manifest PUT straight to the destination's data plane, as any client would send it.
async fn put_raw(
    world: &EcrWorld,
    repository: &str,
    tag: &str,
    image: &TestImage,
) -> reqwest::Response {
    let (user, password) = creds(DEST);
    reqwest::Client::new()
        .put(format!(
            "http://{}/v2/{repository}/manifests/{tag}",
            world.plane(DEST).host
        ))
        .basic_auth(&user, Some(&password))
        .header("content-type", &image.media_type)
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap()
}

/// The destination's manifest under a tag, read from its storage (None: absent).
async fn dest_manifest(world: &EcrWorld, repository: &str, tag: &str) -> Option<bytes::Bytes> {
    Pusher::new(&world.registry(DEST).host, Some(creds(DEST)))
        .manifest(repository, tag)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_in_five_segments_goes_through_a_sticky_range_without_restarting() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(31, 5 * MIN_PART_BYTES)
        .build();
    world.seed("big", "v1", &image).await;
    let layer = blob_ref(&image, 1);

    let mut state = None;
    let mut segments = 0;
    let mut reported_offsets = Vec::new();
    loop {
        segments += 1;
        // A fresh client per segment, as each segment runs in another Lambda invocation.
        let client = ecr_client(&world, None);
        match next_segment(&client, "big", &layer, state).await {
            SegmentProgress::InProgress { state: next, bytes } => {
                assert_eq!(bytes, MIN_PART_BYTES);
                reported_offsets.push((
                    next.session.offset,
                    client.upload_status(&next.session).await.unwrap(),
                ));
                state = Some(next);
            }
            SegmentProgress::Done { bytes, present } => {
                assert_eq!((bytes, present), (MIN_PART_BYTES, false));
                break;
            }
        }
    }

    assert_eq!(segments, 5);
    // ECR's Range stays at the first part's end while the counted offset advances.
    assert_eq!(
        reported_offsets,
        (1..=4)
            .map(|i| (i * MIN_PART_BYTES, MIN_PART_BYTES))
            .collect::<Vec<_>>()
    );
    let plane = world.plane(DEST);
    assert_eq!(
        (plane.count("patch"), plane.count("rewind_refused")),
        (5, 0)
    );
    assert_eq!(
        world
            .registry(DEST)
            .count_requests("POST", "/blobs/uploads/", 202),
        1,
        "the blob restarted"
    );
    assert_eq!(
        stored(&world, "big", layer.digest.as_str()).await,
        Some((layer.digest.to_string(), 5 * MIN_PART_BYTES))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_moved_behind_the_saved_state_is_refused_416_and_the_blob_restarts() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(32, 3 * MIN_PART_BYTES)
        .build();
    world.seed("crashed", "v1", &image).await;
    let client = ecr_client(&world, None);
    let layer = blob_ref(&image, 1);
    let SegmentProgress::InProgress { state, .. } =
        next_segment(&client, "crashed", &layer, None).await
    else {
        panic!("one segment finished the blob")
    };

    // A process sent the next part and died before saving its state: the session holds more
    // than the saved state says.
    let sent = next_segment(&client, "crashed", &layer, Some(state.clone())).await;
    assert!(matches!(sent, SegmentProgress::InProgress { .. }));

    // Its retry re-sends from the saved offset: ECR refuses (416); the blob restarts once.
    let mut next = Some(state);
    while let SegmentProgress::InProgress { state, .. } =
        next_segment(&client, "crashed", &layer, next).await
    {
        next = Some(state);
    }
    assert_eq!(world.plane(DEST).count("rewind_refused"), 1);
    assert_eq!(
        world
            .registry(DEST)
            .count_requests("POST", "/blobs/uploads/", 202),
        2
    );
    assert_eq!(
        stored(&world, "crashed", layer.digest.as_str()).await,
        Some((layer.digest.to_string(), 3 * MIN_PART_BYTES))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_under_5_mib_are_refused_and_5_mib_parts_are_accepted() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(33, 2 * MIN_PART_BYTES + 12_345)
        .build();
    world.seed("parts", "v1", &image).await;
    let layer = blob_ref(&image, 1);
    let (from, to) = (repo(SOURCE, "parts"), repo(DEST, "parts"));

    // A client that assumed distribution's any-size parts.
    let small = ecr_client(&world, Some(MIB));
    let err = oci::copy_blob(&small, &from, &small, &to, &layer, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 5MB"), "{err}");
    assert!(world.plane(DEST).count("part_too_small") >= 1);
    assert_eq!(stored(&world, "parts", layer.digest.as_str()).await, None);

    let parts = ecr_client(&world, Some(MIN_PART_BYTES));
    oci::copy_blob(&parts, &from, &parts, &to, &layer, None)
        .await
        .unwrap();
    assert_eq!(
        stored(&world, "parts", layer.digest.as_str()).await,
        Some((layer.digest.to_string(), layer.size))
    );
    // PATCH is answered 201 by ECR: the engine took every one.
    let patches = world.plane(DEST).count("patch");
    assert!(patches >= 3, "{patches} PATCHes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_with_an_empty_blob_fails_with_a_clear_error_and_nothing_is_tagged() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci)
        .layer(34, 10_000)
        .empty_layer()
        .build();
    // ECR could not hold it as a source either: seed the storage directly.
    let source = world.registry(SOURCE);
    Pusher::new(&source.host, Some(creds(SOURCE)))
        .push("empty", "v1", &image)
        .await;
    world.record(SOURCE, "empty", "v1", &image).await;

    let report = run(&world, job(&["empty"], json!({}))).await;

    assert_eq!((report.copied, report.failed), (0, 1), "{report:?}");
    let error = report.failures[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("empty (0-byte) blob") && error.contains(&sha256(b"")),
        "{error}"
    );
    assert_eq!(
        world.plane(DEST).count("empty_refused"),
        1,
        "retried: {error}"
    );
    assert_eq!(dest_manifest(&world, "empty", "v1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_read_from_presigned_urls_without_the_registry_credential() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Docker)
        .layer(35, 300_000)
        .layer(36, 1_000)
        .build();
    world.seed("presigned", "v1", &image).await;

    let report = run(&world, job(&["presigned"], json!({}))).await;

    assert_eq!((report.copied, report.failed), (1, 0), "{report:?}");
    assert_eq!(
        dest_manifest(&world, "presigned", "v1").await.unwrap(),
        image.manifest
    );
    let plane = world.plane(SOURCE);
    assert!(plane.count("redirect") >= 3, "{}", plane.count("redirect"));
    assert_eq!(plane.count("presigned_auth_refused"), 0);

    // What a client that kept its Authorization header across the redirect gets.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (user, password) = creds(SOURCE);
    let redirect = http
        .get(format!(
            "http://{}/v2/presigned/blobs/{}",
            plane.host, image.blobs[1].digest
        ))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    assert!(!location.contains(&plane.host), "{location}");
    let refused = http
        .get(&location)
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("Only one auth mechanism allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_image_throttling_slows_many_tags_of_one_repository_but_fails_none() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci).layer(37, 2_000).build();
    let tags: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    for tag in &tags {
        world.seed("tagged", tag, &image).await;
    }
    // Seeding itself hit the limit; count only the copy's refusals.
    let before = world.plane(DEST).count("put_image_throttled");

    let report = run(&world, job(&["tagged"], json!({}))).await;

    assert_eq!(report.failed, 0, "{report:?}");
    for tag in &tags {
        assert_eq!(
            dest_manifest(&world, "tagged", tag).await.as_ref(),
            Some(&image.manifest),
            "{tag}"
        );
    }
    assert!(
        world.plane(DEST).count("put_image_throttled") > before,
        "30 tags were put without reaching ECR's 10 PutImage per second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_repository_is_never_sent_an_existing_tag_again() {
    let world = EcrWorld::start();
    let single = ImageBuilder::new(Format::Oci).layer(38, 3_000).build();
    let index = multi_arch(39, 2, 4_000);
    world.seed("frozen", "v1", &single).await;
    world.seed("frozen", "v2", &index).await;
    make_source_immutable(&world, "frozen").await;

    let first = run(&world, job(&["frozen"], json!({}))).await;
    let second = run(&world, job(&["frozen"], json!({}))).await;

    assert_eq!((first.copied, first.failed), (2, 0), "{first:?}");
    assert_eq!((second.present, second.failed), (2, 0), "{second:?}");
    assert_eq!(world.plane(DEST).count("immutable_refused"), 0);
    assert_eq!(
        dest_manifest(&world, "frozen", "v2").await.unwrap(),
        index.manifest
    );
    // The destination is immutable, and ECR refuses the same digest under an existing tag.
    let again = put_raw(&world, "frozen", "v1", &single).await;
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("TAG_INVALID"));
    assert_eq!(world.plane(DEST).count("immutable_refused"), 1);
}

/// A task enumerated while its tags were absent puts them without asking first; retried after
/// its tag went in (a put that timed out after ECR stored it), the immutable repository refuses
/// the identical put, and the retry still succeeds because the tag already names the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_put_of_an_absent_tag_into_an_immutable_repository_succeeds() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci).layer(41, 3_000).build();
    world.seed("frozen2", "v1", &image).await;
    make_source_immutable(&world, "frozen2").await;
    let conns = replication::connect::Connections::new(world.settings());
    let job = job(&["frozen2"], json!({}));
    let enumerated = replication::steps::enumerate_images(
        &conns,
        replication::steps::EnumerateImagesInput {
            job: job.clone(),
            repository: "frozen2".into(),
            next_token: None,
            pack: Vec::new(),
        },
    )
    .await
    .unwrap();
    let task = enumerated.images[0].clone();
    assert!(task.tags_absent && task.repository_absent, "{task:?}");
    let first = run(&world, job.clone()).await;
    assert_eq!((first.copied, first.failed), (1, 0), "{first:?}");
    assert_eq!(world.plane(DEST).count("immutable_refused"), 0);

    let retried = replication::steps::put_manifests(
        &conns,
        replication::steps::PutManifestsInput {
            job,
            image: task,
            copied: Vec::new(),
            execution: None,
        },
    )
    .await;

    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(world.plane(DEST).count("immutable_refused"), 1);
    assert_eq!(
        dest_manifest(&world, "frozen2", "v1").await.as_ref(),
        Some(&image.manifest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_over_4_mib_are_refused_before_anything_is_written() {
    let world = EcrWorld::start();
    let (user, password) = creds(DEST);
    let huge = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": sha256(b"{}")},
        "layers": [],
        "annotations": {"padding": "x".repeat(MAX_MANIFEST_BYTES)},
    })
    .to_string();
    let refused = reqwest::Client::new()
        .put(format!(
            "http://{}/v2/huge/manifests/v1",
            world.plane(DEST).host
        ))
        .basic_auth(&user, Some(&password))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(world.plane(DEST).count("manifest_too_large"), 1);

    // (distribution 2.8 has the same 4 MiB cap, so no source can serve a larger one either.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_are_read_across_pages_of_at_most_1000() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci).layer(40, 100).build();
    let storage = Pusher::new(&world.registry(DEST).host, Some(creds(DEST)));
    for i in 0..1005 {
        storage.push("many", &format!("t{i:04}"), &image).await;
    }
    let client = ecr_client(&world, None);

    let tags = client.list_tags(&repo(DEST, "many")).await.unwrap();

    assert_eq!(tags.len(), 1005);
    assert_eq!(
        tags.iter().collect::<std::collections::BTreeSet<_>>().len(),
        1005
    );
    assert!(world.plane(DEST).count("tag_page_cut") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_fails_the_run_naming_the_registry_and_tags_nothing() {
    let world = EcrWorld::start();
    world
        .seed(
            "auth",
            "v1",
            &ImageBuilder::new(Format::Oci).layer(41, 5_000).build(),
        )
        .await;
    world
        .seed(
            "auth",
            "v2",
            &ImageBuilder::new(Format::Oci).layer(42, 5_000).build(),
        )
        .await;
    let report = run(&world, job(&["auth"], json!({"tags": {"include": ["v1"]}}))).await;
    assert_eq!((report.copied, report.failed), (1, 0), "{report:?}");
    assert_eq!(world.plane(DEST).count("auth_refused"), 0);

    // Revoked: every request with it is refused; the run fails by name and tags nothing.
    let (user, password) = creds(DEST);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    world
        .plane(DEST)
        .revoke_credential(&format!("Basic {token}"));
    let report = run(&world, job(&["auth"], json!({"tags": {"include": ["v2"]}}))).await;
    assert_eq!(report.copied, 0, "{report:?}");
    let failure = format!("{:?}", (report.failures, report.repository_failures));
    assert!(
        failure.contains(DEST) && failure.contains("authentication"),
        "{failure}"
    );
    assert!(world.plane(DEST).count("auth_refused") >= 1);
    assert_eq!(dest_manifest(&world, "auth", "v2").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_travel_through_ecrs_referrers_api_without_a_fallback_tag() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci).layer(43, 7_000).build();
    world.seed("signed", "v1", &image).await;
    let signature = artifact(
        Some(&image),
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        b"{\"critical\":{}}",
    );
    Pusher::new(&world.plane(SOURCE).host, Some(creds(SOURCE)))
        .push("signed", &signature.digest, &signature)
        .await;

    let report = run(&world, job(&["signed"], json!({}))).await;

    assert_eq!((report.copied, report.failed), (1, 0), "{report:?}");
    assert!(world.plane(SOURCE).count("referrers_served") >= 1);
    assert_eq!(
        dest_manifest(&world, "signed", &signature.digest)
            .await
            .unwrap(),
        signature.manifest
    );
    let (user, password) = creds(DEST);
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/signed/referrers/{}",
            world.plane(DEST).host,
            image.digest
        ))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["manifests"][0]["digest"], json!(signature.digest));
    let fallback = format!("sha256-{}", &image.digest["sha256:".len()..]);
    assert_eq!(dest_manifest(&world, "signed", &fallback).await, None);
}

/// A cosign signature found through ECR's referrers API (no `.sig` tag) admits its image under
/// `requireSignature`; an image whose API-listed signature was made with another key does not
/// pass, and neither travels with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signature_in_the_referrers_api_admits_its_image() {
    let world = EcrWorld::start();
    let (trusted, pem) = e2e::image::signing_key(11);
    let (other, _) = e2e::image::signing_key(12);
    let good = ImageBuilder::new(Format::Oci).layer(44, 5_000).build();
    let bad = ImageBuilder::new(Format::Oci).layer(45, 5_000).build();
    world.seed("signed", "good", &good).await;
    world.seed("signed", "bad", &bad).await;
    let pusher = Pusher::new(&world.plane(SOURCE).host, Some(creds(SOURCE)));
    let good_signature = e2e::image::cosign_signature(&good.digest, &trusted, false, Some(&good));
    let bad_signature = e2e::image::cosign_signature(&bad.digest, &other, false, Some(&bad));
    pusher
        .push("signed", &good_signature.digest, &good_signature)
        .await;
    pusher
        .push("signed", &bad_signature.digest, &bad_signature)
        .await;

    let report = run(
        &world,
        job(
            &["signed"],
            json!({"requireSignature": {"publicKeys": [pem]}}),
        ),
    )
    .await;

    assert_eq!(
        (report.copied, report.unsigned, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert!(world.plane(SOURCE).count("referrers_served") >= 2);
    assert_eq!(
        dest_manifest(&world, "signed", "good").await.unwrap(),
        good.manifest
    );
    assert_eq!(
        dest_manifest(&world, "signed", &good_signature.digest)
            .await
            .unwrap(),
        good_signature.manifest
    );
    assert_eq!(dest_manifest(&world, "signed", "bad").await, None);
    assert_eq!(
        dest_manifest(&world, "signed", &bad_signature.digest).await,
        None
    );
    assert_eq!(report.unsigned_images[0].tags, ["bad"]);
    assert!(
        report.unsigned_images[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no signature verifies"),
        "{report:?}"
    );
}

/// Throttling a third of all requests, `Retry-After: 1`, on both data planes for a whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_throttled_on_a_third_of_all_requests_fails_nothing() {
    let world = EcrWorld::start();
    let repositories: Vec<String> = (0..5).map(|r| format!("team{r}/app")).collect();
    let mut images = Vec::new();
    for (r, repository) in repositories.iter().enumerate() {
        for t in 0..10 {
            let seed = 100 + (r * 10 + t) as u64;
            let image = ImageBuilder::new(Format::Oci)
                .layer(1, 20_000)
                .layer(seed, 3_000)
                .build();
            world.seed(repository, &format!("v{t}"), &image).await;
            images.push((repository.clone(), format!("v{t}"), image));
        }
    }
    let throttle = Throttle {
        every: 3,
        retry_after_secs: 1,
    };
    world.plane(SOURCE).throttle(Some(throttle));
    world.plane(DEST).throttle(Some(throttle));

    let started = std::time::Instant::now();
    let report = run(&world, job(&["team*/*"], json!({"maxConcurrency": 8}))).await;
    let seconds = started.elapsed().as_secs_f64();

    eprintln!(
        "throttled sync: 50 images in {seconds:.1} s; throttled/all requests: source {}/{}, destination {}/{}",
        world.plane(SOURCE).count("throttled"),
        world.plane(SOURCE).count("request"),
        world.plane(DEST).count("throttled"),
        world.plane(DEST).count("request")
    );
    assert_eq!(
        (report.copied, report.failed, report.repositories_failed),
        (50, 0, 0),
        "{report:?}"
    );
    assert!(world.plane(DEST).count("throttled") > 50);
    for (repository, tag, image) in &images {
        assert_eq!(
            dest_manifest(&world, repository, tag).await.as_ref(),
            Some(&image.manifest)
        );
    }
}

/// The same throttling through the real state machine: every Lambda waits it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_machine_run_throttled_on_a_third_of_all_requests_fails_nothing() {
    let (world, sfn) = EcrWorld::with_step_functions().await;
    let mut images = Vec::new();
    for r in 0..2 {
        for t in 0..2 {
            let image = ImageBuilder::new(Format::Oci)
                .layer(2, 20_000)
                .layer(200 + r * 10 + t, 3_000)
                .build();
            let repository = format!("svc{r}/app");
            world.seed(&repository, &format!("v{t}"), &image).await;
            images.push((repository, format!("v{t}"), image));
        }
    }
    let arn = sfn.create_state_machine("throttled").await;
    let throttle = Throttle {
        every: 3,
        retry_after_secs: 1,
    };
    world.plane(SOURCE).throttle(Some(throttle));
    world.plane(DEST).throttle(Some(throttle));
    let input = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        "repositories": {"include": ["svc*/*"]},
        "maxConcurrency": 4
    });

    let run = sfn.execute(&arn, &input).await;

    eprintln!(
        "throttled state machine run: 4 images in {:.1} s (the functions' first build included when this test runs first), {} Lambda invocations; throttled/all requests: source {}/{}, destination {}/{}",
        run.seconds,
        sfn.invocations().values().sum::<usize>(),
        world.plane(SOURCE).count("throttled"),
        world.plane(SOURCE).count("request"),
        world.plane(DEST).count("throttled"),
        world.plane(DEST).count("request")
    );
    assert_eq!(run.status, "SUCCEEDED", "{}\n{}", run.cause, sfn.logs());
    let report = run.output.unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(4), Some(0)),
        "{report}"
    );
    assert!(world.plane(DEST).count("throttled") > 4);
    for (repository, tag, image) in &images {
        assert_eq!(
            dest_manifest(&world, repository, tag).await.as_ref(),
            Some(&image.manifest)
        );
    }
}

/// `IMMUTABLE_WITH_EXCLUSION`: ECR refuses the mode without its filters, so the filters travel
/// with it (created, compared, never weakened), and the destination enforces immutability with
/// the exceptions: `dev-*` tags move, release tags never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutability_with_exclusions_is_copied_and_enforced_tag_by_tag() {
    let world = EcrWorld::start();
    let release = ImageBuilder::new(Format::Oci).layer(61, 3_000).build();
    let dev = ImageBuilder::new(Format::Oci).layer(62, 3_000).build();
    world.seed("gated", "v1", &release).await;
    world.seed("gated", "dev-1", &dev).await;
    let source = world.moto.sdk(SOURCE, None).await;
    let filter = |f: &str| {
        aws_sdk_ecr::types::ImageTagMutabilityExclusionFilter::builder()
            .filter_type(aws_sdk_ecr::types::ImageTagMutabilityExclusionFilterType::Wildcard)
            .filter(f)
            .build()
            .unwrap()
    };
    source
        .put_image_tag_mutability()
        .repository_name("gated")
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::ImmutableWithExclusion)
        .image_tag_mutability_exclusion_filters(filter("dev-*"))
        .send()
        .await
        .unwrap();

    let first = run(&world, job(&["gated"], json!({}))).await;
    assert_eq!((first.copied, first.failed), (2, 0), "{first:?}");
    let dest = world.moto.ecr(DEST, Some(DEST_ROLE)).await;
    let settings = dest.read_settings("gated").await.unwrap().unwrap();
    assert_eq!(
        settings.mutability_text(),
        "IMMUTABLE_WITH_EXCLUSION [dev-*]"
    );

    // dev-1 moves in the source: the destination takes the move (the tag is excluded).
    let moved = ImageBuilder::new(Format::Oci).layer(63, 3_000).build();
    world.seed("gated", "dev-1", &moved).await;
    let second = run(&world, job(&["gated"], json!({}))).await;
    assert_eq!(
        (second.copied, second.present, second.failed),
        (1, 1, 0),
        "{second:?}"
    );
    assert_eq!(
        dest_manifest(&world, "gated", "dev-1").await.unwrap(),
        moved.manifest
    );
    assert_eq!(world.plane(DEST).count("immutable_refused"), 0);
    // v1 is immutable: ECR refuses any put under it.
    let overwrite = put_raw(&world, "gated", "v1", &moved).await;
    assert_eq!(overwrite.status(), 400);
    assert_eq!(world.plane(DEST).count("immutable_refused"), 1);

    // A source that widens the exclusions (every tag mutable but releases) would weaken the
    // destination: in the default mode it stays as it is, reported.
    source
        .put_image_tag_mutability()
        .repository_name("gated")
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::ImmutableWithExclusion)
        .image_tag_mutability_exclusion_filters(filter("dev-*"))
        .image_tag_mutability_exclusion_filters(filter("feature-*"))
        .send()
        .await
        .unwrap();
    let third = run(&world, job(&["gated"], json!({}))).await;
    assert_eq!(third.failed, 0, "{third:?}");
    assert_eq!(
        dest.read_settings("gated")
            .await
            .unwrap()
            .unwrap()
            .mutability_text(),
        "IMMUTABLE_WITH_EXCLUSION [dev-*]"
    );
}

/// ECR's archive storage class: an archived image is listed but answers pulls with 404. It is
/// reported archived (not failed, not copied) whether the filters select it or a job names it;
/// once restored, the next run copies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_image_is_reported_archived_and_copied_once_restored() {
    let world = EcrWorld::start();
    let cold = ImageBuilder::new(Format::Oci).layer(71, 3_000).build();
    let warm = ImageBuilder::new(Format::Oci).layer(72, 3_000).build();
    world.seed("vault", "v1", &cold).await;
    world.seed("vault", "v2", &warm).await;
    let source = world.moto.sdk(SOURCE, None).await;
    let storage_class = |class: &str| {
        source
            .update_image_storage_class()
            .repository_name("vault")
            .image_id(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag("v1")
                    .build(),
            )
            .target_storage_class(aws_sdk_ecr::types::TargetStorageClass::from(class))
            .send()
    };
    storage_class("ARCHIVE").await.unwrap();
    // The profile refuses the pull as ECR does.
    let (user, password) = creds(SOURCE);
    let pull = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/vault/manifests/v1",
            world.plane(SOURCE).host
        ))
        .basic_auth(&user, Some(&password))
        .header("accept", oci::manifest::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), 404);

    let filtered = run(&world, job(&["vault"], json!({}))).await;
    assert_eq!(
        (
            filtered.copied,
            filtered.archived,
            filtered.failed,
            filtered.repositories_failed
        ),
        (1, 1, 0, 0),
        "{filtered:?}"
    );
    assert!(dest_manifest(&world, "vault", "v1").await.is_none());
    let named = run(
        &world,
        job(
            &[],
            json!({"repositories": {}, "images": [{"repository": "vault", "tag": "v1"}]}),
        ),
    )
    .await;
    assert_eq!(
        (named.archived, named.failed, named.repositories_failed),
        (1, 0, 0),
        "{named:?}"
    );

    storage_class("STANDARD").await.unwrap();
    let restored = run(&world, job(&["vault"], json!({}))).await;
    assert_eq!(
        (restored.copied, restored.present, restored.archived),
        (1, 1, 0),
        "{restored:?}"
    );
    assert_eq!(
        dest_manifest(&world, "vault", "v1").await.unwrap(),
        cold.manifest
    );
}

/// Images archived in the source are results, not tasks: the workflow's check settles a
/// repository whose only images left are two archived in the source without a child, and its
/// report still counts them archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_archived_in_the_source_settle_their_repository_without_a_child() {
    let world = EcrWorld::start();
    let warm = ImageBuilder::new(Format::Oci).layer(91, 3_000).build();
    world.seed("attic", "v0", &warm).await;
    let source = world.moto.sdk(SOURCE, None).await;
    for (tag, layer) in [("v1", 92), ("v2", 93)] {
        let cold = ImageBuilder::new(Format::Oci).layer(layer, 3_000).build();
        world.seed("attic", tag, &cold).await;
        source
            .update_image_storage_class()
            .repository_name("attic")
            .image_id(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(tag)
                    .build(),
            )
            .target_storage_class(aws_sdk_ecr::types::TargetStorageClass::Archive)
            .send()
            .await
            .unwrap();
    }
    let first = run(&world, job(&["attic"], json!({}))).await;
    assert_eq!(
        (first.copied, first.archived, first.failed),
        (1, 2, 0),
        "{first:?}"
    );
    let conns = replication::connect::Connections::new(world.settings());
    let check = replication::steps::enumerate_repositories(
        &conns,
        replication::steps::EnumerateRepositoriesInput {
            job: job(&["attic"], json!({})),
            next_token: None,
            report: None,
            pages: 0,
        },
    )
    .await
    .unwrap();
    assert!(check.repositories.is_empty(), "{check:?}");
    let settled = check.report.unwrap();
    assert_eq!(
        (
            settled.archived,
            settled.present,
            settled.copied,
            settled.failed
        ),
        (2, 1, 0, 0),
        "{settled:?}"
    );
}

/// An image a destination keeps in ECR's archive storage class (its lifecycle rules archived
/// it) answers 404 to a pull there, and a push would restore it: it is reported `archived` for
/// that destination and nothing is pushed there, while another destination still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_archived_in_a_destination_is_reported_there_and_not_pushed_again() {
    let world = EcrWorld::start();
    let image = ImageBuilder::new(Format::Oci).layer(81, 3_000).build();
    world.seed("cold", "v1", &image).await;
    let first = run(&world, job(&["cold"], json!({}))).await;
    assert_eq!((first.copied, first.failed), (1, 0), "{first:?}");
    // The destination's control plane knows the image, then archives it.
    world.record(DEST, "cold", "v1", &image).await;
    world
        .moto
        .sdk(DEST, Some(DEST_ROLE))
        .await
        .update_image_storage_class()
        .repository_name("cold")
        .image_id(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(&image.digest)
                .build(),
        )
        .target_storage_class(aws_sdk_ecr::types::TargetStorageClass::Archive)
        .send()
        .await
        .unwrap();
    let dest = world.registry(DEST);
    let writes = |dest: &e2e::registry::TestRegistry| {
        (
            dest.count_requests("PUT", "/manifests/", 201),
            dest.count_requests("POST", "/blobs/uploads/", 202),
        )
    };
    let before = writes(dest);
    assert!(before.0 > 0, "the first run put the manifest");

    let both = json!({"destinations": [
        {"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"},
        {"registry": DEST2, "roleArn": DEST2_ROLE, "externalId": "ext-id-42"}
    ]});
    let conns = replication::connect::Connections::new(world.settings());
    let output = replication::run::run_job(
        &conns,
        job(&["cold"], both.clone()),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    let second = output.report;
    assert_eq!(
        (
            second.copied,
            second.archived,
            second.present,
            second.failed,
            second.repositories_failed
        ),
        (1, 1, 0, 0, 0),
        "{second:?}"
    );
    // The result names the destination that keeps it archived, and why.
    let archived: Vec<_> = output
        .images
        .iter()
        .filter(|r| r.status == replication::steps::ImageStatus::Archived)
        .collect();
    assert_eq!(archived.len(), 1, "{:?}", output.images);
    assert_eq!(
        (
            archived[0].target_registry.as_str(),
            archived[0].target_repository.as_str()
        ),
        (DEST, "cold")
    );
    let why = archived[0].error.as_deref().unwrap_or_default();
    assert!(
        why.contains("archived in the destination") && why.contains(&image.digest),
        "{why}"
    );
    // Nothing was written to the archiving destination; the other one has the image.
    assert_eq!(writes(dest), before, "pushed again to {DEST}");
    assert!(world.plane(DEST).count("archived_refused") > 0);
    assert_eq!(
        Pusher::new(&world.registry(DEST2).host, Some(creds(DEST2)))
            .manifest("cold", "v1")
            .await
            .unwrap(),
        image.manifest
    );
    // And the next run settles the same way: archived there, present in the other.
    let third = run(&world, job(&["cold"], both.clone())).await;
    assert_eq!(
        (third.copied, third.archived, third.present, third.failed),
        (0, 1, 1, 0),
        "{third:?}"
    );
    assert_eq!(writes(dest), before, "pushed again to {DEST}");
    // A verification agrees with the run: archived there is no difference (it counted the
    // tag missing before), identical in the other destination.
    let verified = replication::steps::verify_repository(
        &conns,
        replication::steps::VerifyRepositoryInput {
            job: job(&["cold"], both.clone()),
            repository: "cold".into(),
            next_token: None,
            report: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            verified.images,
            verified.identical,
            verified.archived,
            verified.total()
        ),
        (2, 1, 1, 0),
        "{verified:?}"
    );
    // The workflow's check settles the repository without a child, even with two images
    // archived there (a second one, copied to both, then archived in DEST too).
    let second_image = ImageBuilder::new(Format::Oci).layer(82, 3_000).build();
    world.seed("cold", "v2", &second_image).await;
    let fourth = run(&world, job(&["cold"], both.clone())).await;
    assert_eq!((fourth.copied, fourth.failed), (2, 0), "{fourth:?}");
    world.record(DEST, "cold", "v2", &second_image).await;
    world
        .moto
        .sdk(DEST, Some(DEST_ROLE))
        .await
        .update_image_storage_class()
        .repository_name("cold")
        .image_id(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(&second_image.digest)
                .build(),
        )
        .target_storage_class(aws_sdk_ecr::types::TargetStorageClass::Archive)
        .send()
        .await
        .unwrap();
    let check = replication::steps::enumerate_repositories(
        &conns,
        replication::steps::EnumerateRepositoriesInput {
            job: job(&["cold"], both),
            next_token: None,
            report: None,
            pages: 0,
        },
    )
    .await
    .unwrap();
    assert!(check.repositories.is_empty(), "{check:?}");
    let settled = check.report.unwrap();
    assert_eq!(
        (settled.archived, settled.present, settled.failed),
        (2, 2, 0),
        "{settled:?}"
    );
}
