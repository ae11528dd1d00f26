//! Referrers every destination already holds (issue 34): in ECR a referrer is an image of its
//! subject's repository, and the listing (`DescribeImages`) names every image, tagged or not,
//! so a gated no-op with referrers on asks the source's referrers API about nothing when every
//! image of the source is in every destination; a referrer pushed since still travels. The
//! planes list what is pushed to them (`Behaviours::pushes_listed`, on by default), as ECR
//! does.

use e2e::image::{
    artifact, cosign_signature, signing_key, Format, ImageBuilder, Pusher, TestImage,
};
use e2e::world::{EcrWorld, DEST, DEST_ROLE, SOURCE};
use replication::connect::Connections;
use replication::steps::{PageBounds, Selection};
use serde_json::json;

fn fallback(image: &TestImage) -> String {
    image.digest.replacen(':', "-", 1)
}

fn gated_job(pem: &str) -> replication::Job {
    let job = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        "repositories": {"include": ["app"]},
        "referrers": true,
        "requireSignature": {"publicKeys": [pem]},
        "maxConcurrency": 4
    });
    replication::Job::from_json(&job.to_string()).unwrap()
}

/// A world whose ECR planes list what is pushed, with `images` signed images in the source's
/// `app` (`v<n>`, each with its cosign signature under `sha256-<hex>.sig`), the first with an
/// SBOM attached as an OCI 1.1 referrer (pushed by digest: untagged).
async fn signed_world(images: usize) -> (EcrWorld, Vec<TestImage>, String) {
    let world = EcrWorld::start();
    let (key, pem) = signing_key(1);
    let source = source_pusher(&world);
    let mut pushed = Vec::new();
    for seed in 0..images {
        let image = ImageBuilder::new(Format::Oci)
            .layer(3000 + seed as u64, 200)
            .build();
        world.seed("app", &format!("v{seed}"), &image).await;
        let signature = cosign_signature(&image.digest, &key, false, None);
        source
            .push("app", &format!("{}.sig", fallback(&image)), &signature)
            .await;
        pushed.push(image);
    }
    let sbom = sbom_of(&pushed[0], b"first sbom");
    source.push("app", &sbom.digest, &sbom).await;
    (world, pushed, pem)
}

/// Whether an ECR host's storage holds `digest` in `repository`.
async fn has_manifest(world: &EcrWorld, host: &str, repository: &str, digest: &str) -> bool {
    let registry = world.registry(host);
    let (user, password) = registry.credentials.clone().unwrap();
    reqwest::Client::new()
        .head(format!(
            "http://{}/v2/{repository}/manifests/{digest}",
            registry.host
        ))
        .basic_auth(user, Some(password))
        .header("accept", oci::manifest::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
}

fn source_pusher(world: &EcrWorld) -> Pusher {
    Pusher::new(
        &world.plane(SOURCE).host,
        world.registry(SOURCE).credentials.clone(),
    )
}

fn sbom_of(subject: &TestImage, payload: &[u8]) -> TestImage {
    artifact(
        Some(subject),
        "application/spdx+json",
        "application/spdx+json",
        payload,
    )
}

/// Requests the source's ECR data plane received since `before` (its own log of requests that
/// need an ECR action), the tag listings (`ListImages`) left out.
fn source_requests_since(world: &EcrWorld, before: usize) -> usize {
    world.plane(SOURCE).operations()[before..]
        .iter()
        .filter(|op| op.action != "ecr:ListImages")
        .count()
}

async fn run(world: &EcrWorld, pem: &str) -> replication::steps::RunReport {
    let conns = Connections::new(world.settings());
    replication::run::run_job(&conns, gated_job(pem), &replication::run::Quiet)
        .await
        .unwrap()
        .report
}

/// A gated no-op with referrers on sends no referrers lookup (before: one per image and one
/// per signature, 2.1 requests per image beyond the listing), and a referrer pushed to the
/// source since (untagged, so no destination holds every image of the source any more) still
/// travels on the next run, which asks the referrers API again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_no_op_on_ecr_asks_no_referrers_and_a_new_referrer_still_travels() {
    const IMAGES: usize = 30;
    let (world, images, pem) = signed_world(IMAGES).await;
    let first = run(&world, &pem).await;
    // Each image and its signature; the SBOM travels inside the first image's task.
    assert_eq!(
        (first.copied, first.unsigned, first.failed),
        (2 * IMAGES, 0, 0),
        "{first:?}"
    );
    let sbom = sbom_of(&images[0], b"first sbom");
    assert!(
        has_manifest(&world, DEST, "app", &sbom.digest).await,
        "the SBOM did not travel"
    );

    let before = world.plane(SOURCE).operations().len();
    let noop = run(&world, &pem).await;
    let sent = source_requests_since(&world, before);
    assert_eq!(
        (noop.copied, noop.present, noop.unsigned, noop.failed),
        (0, 2 * IMAGES, 0, 0),
        "{noop:?}"
    );
    let per_image = sent as f64 / IMAGES as f64;
    eprintln!("a gated no-op on ECR with referrers: {sent} source requests beyond the listing, {per_image:.2} per image");
    assert!(
        per_image <= 0.1,
        "{sent} source requests beyond the listing for {IMAGES} images every destination holds ({per_image:.2} per image)"
    );

    // A new SBOM of the second image, pushed by digest: untagged, in no destination.
    let late = sbom_of(&images[1], b"a later sbom");
    source_pusher(&world).push("app", &late.digest, &late).await;
    let before = world.plane(SOURCE).operations().len();
    let again = run(&world, &pem).await;
    assert_eq!((again.copied, again.failed), (1, 0), "{again:?}");
    assert!(
        has_manifest(&world, DEST, "app", &late.digest).await,
        "the referrer pushed since did not travel"
    );
    assert!(
        world.plane(SOURCE).count("referrers_served") > 0
            && source_requests_since(&world, before) > 0,
        "the referrers were not asked for"
    );
    let before = world.plane(SOURCE).operations().len();
    let settled = run(&world, &pem).await;
    assert_eq!((settled.copied, settled.failed), (0, 0), "{settled:?}");
    assert_eq!(source_requests_since(&world, before), 0);
}

/// An image the selection found held everywhere (its referrers unread) that a page then finds
/// missing has its referrers asked for by the page, so they travel; and beside a destination
/// that is not ECR (its listing names tagged images only) every image's referrers are asked
/// for, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_asked_for_unless_every_destination_lists_everything() {
    const IMAGES: usize = 4;
    let (world, images, pem) = signed_world(IMAGES).await;
    let first = run(&world, &pem).await;
    assert_eq!((first.copied, first.failed), (2 * IMAGES, 0), "{first:?}");

    // Held everywhere: the selection leaves every referrer unread.
    let conns = Connections::new(world.settings());
    let job = gated_job(&pem).validate().unwrap();
    let selected = replication::steps::selected_images(&conns, &job, "app")
        .await
        .unwrap();
    assert!(
        selected
            .iter()
            .all(|s| s.referrers_unread && s.referrers.is_empty()),
        "{selected:?}"
    );
    // Then the destination's v0 moves to another image: the page asks for v0's referrers
    // (the SBOM), so they travel with it.
    let other = ImageBuilder::new(Format::Oci).layer(3999, 200).build();
    Pusher::new(
        &world.plane(DEST).host,
        world.registry(DEST).credentials.clone(),
    )
    .push("app", "v0", &other)
    .await;
    let page = replication::steps::page_of_work(
        &conns,
        &job,
        "app",
        Selection::whole(&selected),
        0,
        PageBounds::IN_PROCESS,
    )
    .await
    .unwrap();
    let sbom = sbom_of(&images[0], b"first sbom");
    let task = page
        .images
        .iter()
        .find(|t| t.digest.as_str() == images[0].digest)
        .unwrap_or_else(|| panic!("no task for v0: {page:?}"));
    assert_eq!(
        task.referrers
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        vec![sbom.digest.clone()]
    );

    // A destination that is not ECR (a registry whose listing names tagged images only)
    // beside it: each image is asked about again.
    let plain = e2e::registry::TestRegistry::start();
    let mut two = serde_json::to_value(gated_job(&pem)).unwrap();
    two["destinations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"registry": plain.host, "insecure": true}));
    let two = replication::Job::from_json(&two.to_string())
        .unwrap()
        .validate()
        .unwrap();
    let served = world.plane(SOURCE).count("referrers_served");
    let selected = replication::steps::selected_images(&conns, &two, "app")
        .await
        .unwrap();
    assert!(selected.iter().all(|s| !s.referrers_unread), "{selected:?}");
    assert!(world.plane(SOURCE).count("referrers_served") - served >= IMAGES);
}
