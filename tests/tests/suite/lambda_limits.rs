//! The Lambda service's limits through the real state machine: each function runs under its
//! deployed timeout and memory (read from the synthesized template), and a reservation smaller
//! than the run's concurrency throttles invocations (HTTP 429 `TooManyRequestsException`),
//! which the Tasks' Retry rides out.

use e2e::ecr_plane::{Behaviours, EcrPlane};
use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use e2e::sfn::LocalStepFunctions;
use serde_json::json;

/// Images of the throttled run: more than a reservation of one runs in the old Retry's window
/// (6 attempts, about a minute at most, scaled).
const IMAGES: usize = 20;

/// Retry waits scaled 1:100 (`STRICT_MOTO_RETRY_SCALE`): minutes of waiting run in seconds.
const RETRY_SCALE: &str = "0.01";

/// Each request to the destination takes this long (the ECR data plane's `latency`): a
/// put-manifests invocation holds its reservation for its few requests' round trips, as it
/// does in AWS, not the loopback's microseconds.
const DESTINATION_LATENCY: std::time::Duration = std::time::Duration::from_millis(50);

/// A reservation of one execution for each copying function under a run of `maxConcurrency` 5
/// (5 put-manifests children at once): every invocation beyond the one running is answered 429.
/// The destination answers through an ECR data plane with its round trip (`DESTINATION_LATENCY`).
/// The run copies every image, none failed, the reservation throttled many invocations, and no
/// more than one ran at once. With the Retry this replaced (6 attempts, at most 2+4+...+60 s)
/// the images still queued after that window failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_smaller_than_the_runs_concurrency_throttles_and_every_image_arrives() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for i in 0..IMAGES {
        let image = ImageBuilder::new(Format::Oci)
            .layer(100 + i as u64, 2000)
            .build();
        pusher.push("team/app", &format!("v{i}"), &image).await;
    }
    let env = [(
        "STRICT_MOTO_RETRY_SCALE".to_string(),
        RETRY_SCALE.to_string(),
    )];
    let plane = EcrPlane::start("dest.registry.example", &dst.host, None);
    plane.set(|b| {
        *b = Behaviours::plain();
        b.latency = DESTINATION_LATENCY;
    });
    let sfn = LocalStepFunctions::start(&env).await;
    let arn = sfn.create_state_machine("replicate").await;
    sfn.reserve("put-manifests", 1);
    sfn.reserve("copy-blobs", 1);
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": plane.host, "insecure": true}],
        "referrers": false,
        "maxConcurrency": 5
    });

    let run = sfn.execute(&arn, &input).await;

    let throttled = sfn.throttled();
    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\nthrottled: {throttled:?}\n{}",
        run.cause,
        run.history_text(400)
    );
    let report = run.output.clone().unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(IMAGES as u64), Some(0)),
        "throttled: {throttled:?}\n{report}"
    );
    let puts_throttled = throttled.get("put-manifests").copied().unwrap_or(0);
    assert!(puts_throttled > 0, "nothing was throttled: {throttled:?}");
    assert!(
        sfn.max_concurrent_copies() <= 2,
        "more than the reservations ran at once: {}",
        sfn.max_concurrent_copies()
    );
    for i in [0, IMAGES / 2, IMAGES - 1] {
        let reference = format!("team/app:v{i}");
        let at = |host: &str| e2e::skopeo::inspect_raw(&format!("{host}/{reference}"), None);
        assert_eq!(at(&dst.host), at(&src.host), "{reference}");
    }
    eprintln!(
        "lambda_limits: {IMAGES} images, reservation 1, maxConcurrency 5: throttled {throttled:?}, \
         {:.1} s",
        run.seconds
    );
}

/// Each function is told the deadline and memory of its deployed configuration (the template
/// `make cdk-test` synthesizes), not one value for all: every invocation's
/// `Lambda-Runtime-Deadline-Ms` is its start plus the function's `Timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_function_runs_under_its_deployed_timeout() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci).layer(7, 1000).build();
    pusher.push("team/app", "v1", &image).await;
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "referrers": false
    });
    let run = sfn.execute(&arn, &input).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.cause);
    let deployed = e2e::deployed::functions();
    let deadlines = sfn.deadlines();
    let invoked: std::collections::BTreeSet<&str> =
        deadlines.iter().map(|(f, _)| f.as_str()).collect();
    for function in [
        "enumerate-repositories",
        "copy-blobs",
        "put-manifests",
        "summarise",
    ] {
        assert!(invoked.contains(function), "{function}: {deadlines:?}");
    }
    for (function, millis) in &deadlines {
        assert_eq!(
            *millis,
            deployed[function].timeout.as_millis() as u64,
            "{function}"
        );
    }
    // Not one timeout for all: the deployment gives them different ones.
    let distinct: std::collections::BTreeSet<u64> = deadlines.iter().map(|(_, m)| *m).collect();
    assert!(distinct.len() > 1, "{deadlines:?}");
}
