//! `sfn-gated-noop-ecr`: a gated no-op run with referrers on, on the ECR profile (moto's ECR
//! listing what is pushed, `Behaviours::pushes_listed`, and ECR's data plane with its referrers
//! API): `SCALE_GATED_IMAGES` (300) signed images in one source repository, copied by a first
//! run, then the measured run with nothing to do. Its `scale:` line ends with
//! `source_requests=<n> source_requests_per_image=<n>`: the requests the source's data plane
//! received (its own log of requests that need an ECR action), tag listings left out (the
//! listing itself is `DescribeImages`, a control-plane call). Goal: at most 0.1 per image.

use e2e::image::{cosign_signature, signing_key, Format, ImageBuilder, Pusher};
use e2e::world::{EcrWorld, DEST, DEST_ROLE, SOURCE};
use futures::StreamExt;
use serde_json::json;

/// The run's name in `SCALE_RUNS`.
pub const RUN: &str = "sfn-gated-noop-ecr";

/// Runs the case when `wanted`; its `scale:` line.
pub fn gated_noop_ecr(rt: &tokio::runtime::Runtime, wanted: &dyn Fn(&str) -> bool) -> Vec<String> {
    if !wanted(RUN) {
        return Vec::new();
    }
    let images: usize = std::env::var("SCALE_GATED_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (world, sfn) = rt.block_on(EcrWorld::with_step_functions());
    let began = std::time::Instant::now();
    rt.block_on(seed_signed(&world, images));
    eprintln!(
        "{RUN}: {images} signed images seeded in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    let arn = rt.block_on(sfn.create_state_machine("gated-noop-ecr"));
    let input = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        "repositories": {"include": ["app"]},
        "referrers": true,
        "requireSignature": {"policy": e2e::sfn::RIG_TRUST_POLICY},
        "maxConcurrency": 200
    });
    let first = rt.block_on(sfn.execute_within(&arn, &input, std::time::Duration::from_secs(3600)));
    eprintln!(
        "{RUN}: first run {} in {:.0} s, report {}",
        first.status,
        first.seconds,
        first.output.clone().unwrap_or_default()
    );
    let before = world.plane(SOURCE).operations().len();
    let (line, _, _) = super::measure_run(rt, &sfn, &arn, RUN, &input, (images, 1));
    let sent = world.plane(SOURCE).operations()[before..]
        .iter()
        .filter(|op| op.action != "ecr:ListImages")
        .count();
    vec![format!(
        "{line} source_requests={sent} source_requests_per_image={:.3}",
        sent as f64 / images as f64
    )]
}

/// `images` distinct small images in the source's `app` (`v<n>`), each signed with the rig's
/// trust policy key (a cosign signature under `sha256-<hex>.sig`).
async fn seed_signed(world: &EcrWorld, images: usize) {
    let (key, _) = signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let pusher = Pusher::new(
        &world.plane(SOURCE).host,
        world.registry(SOURCE).credentials.clone(),
    );
    let one = |n: usize| {
        let (key, pusher) = (&key, &pusher);
        async move {
            let image = ImageBuilder::new(Format::Oci)
                .layer(50_000 + n as u64, 100)
                .build();
            world.seed("app", &format!("v{n}"), &image).await;
            let signature = cosign_signature(&image.digest, key, false, None);
            let tag = format!("{}.sig", image.digest.replacen(':', "-", 1));
            pusher.push("app", &tag, &signature).await;
        }
    };
    // The first alone: images and signatures share config blobs, which concurrent uploads of
    // the same digest would race for.
    one(0).await;
    futures::stream::iter(1..images)
        .for_each_concurrent(8, one)
        .await;
}
