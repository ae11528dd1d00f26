//! The real state machine (statemachine/replicate.asl.json) executed by moto's Step Functions
//! interpreter, its Lambda tasks served by `cargo lambda watch` running the real functions.

use e2e::iam::{Performed, Policies};
use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::pull_limit::PullLimitedRegistry;
use e2e::registry::TestRegistry;
use e2e::sfn::{LambdaFault, LocalStepFunctions};
use serde_json::json;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_machine_copies_selected_images_and_a_second_run_finds_them_present() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci)
        .layer(1, 50_000)
        .layer(2, 1000)
        .build();
    pusher.push("team/app", "v1.0.0", &image).await;
    pusher
        .push(
            "team/app",
            "scratch",
            &ImageBuilder::new(Format::Oci).layer(3, 100).build(),
        )
        .await;
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    // No dryRun, no maxConcurrency: the state machine must use the normalised job (in AWS a
    // Choice or MaxConcurrencyPath on a missing field fails the execution).
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "tags": {"include": ["v.*"]}
    });
    // A copy invocation that times out, a put that runs out of memory, and the parent's first
    // Task killed for memory, once each: the Lambda service reports them as Sandbox.Timedout,
    // Lambda.Unknown and (a custom runtime killed) Runtime.ExitError, all retried.
    sfn.fail_next_invocation("copy-blobs", LambdaFault::Timeout);
    sfn.fail_next_invocation("put-manifests", LambdaFault::Unknown);
    sfn.fail_next_invocation("enumerate-repositories", LambdaFault::ExitError);

    let first = sfn.execute(&arn, &input).await;

    assert_eq!(
        first.status,
        "SUCCEEDED",
        "{}\n{}",
        first.cause,
        first.history_text(700)
    );
    let report = first.output.clone().unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0)),
        "{report}\n{}",
        first.history_text(700)
    );
    let blobs: u64 = image.blobs.iter().map(|b| b.data.size()).sum();
    assert_eq!(report["bytesCopied"].as_u64(), Some(blobs), "{report}");
    // Both faults were served (to invocations inside child executions, whose histories moto
    // keeps apart) and retried: the copy arrived.
    assert_eq!(
        (
            sfn.faults_left("copy-blobs"),
            sfn.faults_left("put-manifests"),
            sfn.faults_left("enumerate-repositories")
        ),
        (0, 0, 0)
    );
    let calls = sfn.invocations();
    assert!(
        calls["copy-blobs"] >= 2 && calls["put-manifests"] >= 2,
        "the faulted invocations were not retried: {calls:?}"
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/team/app:v1.0.0", dst.host), None),
        image.manifest.to_vec()
    );
    assert!(Pusher::new(&dst.host, None)
        .manifest("team/app", "scratch")
        .await
        .is_none());

    // Nothing to do: enumerate-repositories settles the repository (no child execution) and
    // the run is two invocations (it and the last summarise).
    let (children_before, calls_before) = (sfn.child_executions().len(), sfn.invocations());
    let second = sfn.execute(&arn, &input).await;
    assert_eq!(second.status, "SUCCEEDED");
    assert_eq!(second.output.unwrap()["present"].as_u64(), Some(1));
    assert_eq!(sfn.child_executions().len(), children_before);
    let calls = sfn.invocations();
    let invoked: usize = calls.values().sum::<usize>() - calls_before.values().sum::<usize>();
    assert_eq!(invoked, 2, "{calls_before:?} -> {calls:?}");

    // What the ECR push trigger sends: just the pushed image.
    let pushed = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "images": [{"repository": "team/app", "tag": "scratch"}]
    });
    let third = sfn.execute(&arn, &pushed).await;
    assert_eq!(third.status, "SUCCEEDED", "{}", third.cause);
    let report = third.output.unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["images"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert!(Pusher::new(&dst.host, None)
        .manifest("team/app", "scratch")
        .await
        .is_some());

    // Two quick pushes of one tag: the trigger carries each push's digest. The newer push's
    // run copies it; the older push's run, arriving late, finds the tag moved on and reports
    // the image superseded (not failed), leaving the destination on the newer image.
    let older = Pusher::new(&dst.host, None)
        .manifest("team/app", "scratch")
        .await
        .unwrap();
    let newer = ImageBuilder::new(Format::Oci).layer(5, 100).build();
    Pusher::new(&src.host, None)
        .push("team/app", "scratch", &newer)
        .await;
    let push_of = |digest: &str| {
        let mut event = pushed.clone();
        event["images"][0]["digest"] = json!(digest);
        event
    };
    let older_digest = oci::Digest::of(&older).to_string();
    let newer_run = sfn.execute(&arn, &push_of(&newer.digest)).await;
    assert_eq!(newer_run.status, "SUCCEEDED", "{}", newer_run.cause);
    assert_eq!(newer_run.output.unwrap()["copied"].as_u64(), Some(1));
    let late = sfn.execute(&arn, &push_of(&older_digest)).await;
    assert_eq!(late.status, "SUCCEEDED", "{}", late.cause);
    let report = late.output.unwrap();
    assert_eq!(
        counts(&report, ["superseded", "copied", "failed"]),
        [1, 0, 0],
        "{report}"
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/team/app:scratch", dst.host), None),
        newer.manifest.to_vec(),
        "the late run rolled the tag back"
    );
    // A push of a tag the deployment excludes copies nothing.
    let mut excluded = push_of(&newer.digest);
    excluded["tags"] = json!({"exclude": ["scr.*"]});
    let skipped = sfn.execute(&arn, &excluded).await;
    assert_eq!(skipped.status, "SUCCEEDED", "{}", skipped.cause);
    let report = skipped.output.unwrap();
    assert_eq!(
        (report["images"].as_u64(), report["copied"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );

    // Prune: a tag inside the filters that the source no longer has; the dry run's report
    // lists it, the real run removes it, `scratch` (outside the filters) stays.
    let stale = ImageBuilder::new(Format::Oci).layer(4, 100).build();
    let target = Pusher::new(&dst.host, None);
    target.push("team/app", "v0.9", &stale).await;
    let mut pruning = input.clone();
    pruning["prune"] = json!(true);
    pruning["dryRun"] = json!(true);
    let planned = sfn.execute(&arn, &pruning).await;
    assert_eq!(planned.status, "SUCCEEDED", "{}", planned.cause);
    let report = planned.output.unwrap();
    assert_eq!(
        report["pruned"],
        json!([format!("{}/team/app:v0.9", dst.host)]),
        "{report}"
    );
    assert!(target.manifest("team/app", "v0.9").await.is_some());
    pruning["dryRun"] = json!(false);
    let pruned = sfn.execute(&arn, &pruning).await;
    assert_eq!(pruned.status, "SUCCEEDED", "{}", pruned.cause);
    assert_eq!(pruned.output.unwrap()["tagsPruned"].as_u64(), Some(1));
    assert!(target.manifest("team/app", "v0.9").await.is_none());
    assert!(target.manifest("team/app", "scratch").await.is_some());
    assert!(target.manifest("team/app", "v1.0.0").await.is_some());

    // Verify through the state machine: one invocation per repository, nothing copied.
    let mut verifying = input.clone();
    verifying["mode"] = json!("verify");
    let before = sfn.invocations();
    let identical = sfn.execute(&arn, &verifying).await;
    assert_eq!(identical.status, "SUCCEEDED", "{}", identical.cause);
    let verify = identical.output.unwrap()["verify"].clone();
    assert_eq!(
        (verify["images"].as_u64(), verify["identical"].as_u64()),
        (Some(1), Some(1)),
        "{verify}"
    );
    let after = sfn.invocations();
    let delta = |f: &str| after.get(f).copied().unwrap_or(0) - before.get(f).copied().unwrap_or(0);
    assert_eq!(
        (
            delta("verify-repository"),
            delta("copy-blobs"),
            delta("put-manifests"),
            delta("ensure-repository")
        ),
        (1, 0, 0, 0)
    );
    // A tag only the destination has: the execution fails naming it.
    target.push("team/app", "v0.8", &stale).await;
    let differs = sfn.execute(&arn, &verifying).await;
    assert_eq!(differs.status, "FAILED");
    assert!(
        differs.cause.contains("ReplicationFailed")
            && differs.cause.contains("1 differences")
            && differs
                .cause
                .contains(&format!("extra {}/team/app:v0.8", dst.host)),
        "{}",
        differs.cause
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_input_fails_the_execution_with_the_field_named_and_no_retry() {
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;

    let run = sfn
        .execute(
            &arn,
            &json!({"source": {"registry": "ghcr.io"}, "destinations": [], "bogus": 1}),
        )
        .await;

    assert_eq!(run.status, "FAILED");
    assert!(
        run.cause.contains("ReplicationInvalidInput") && run.cause.contains("bogus"),
        "{}",
        run.cause
    );
    let attempts = run
        .history
        .iter()
        .filter(|l| l.contains("LambdaFunctionScheduled"))
        .count();
    assert_eq!(
        attempts,
        1,
        "invalid input must not be retried\n{}",
        run.history_text(300)
    );

    // Where images go is the deployment's to say: a valid input naming a destination outside
    // the functions' allowlist (a host the rig does not allow; plain HTTP there too) fails
    // before any request reaches it, naming the fields.
    let src = TestRegistry::start();
    let elsewhere = e2e::hostile::Sink::start("127.0.0.2", None);
    let outside = sfn
        .execute(
            &arn,
            &json!({
                "source": {"registry": src.host, "insecure": true},
                "destinations": [{"registry": elsewhere.host, "insecure": true}],
            }),
        )
        .await;
    assert_eq!(outside.status, "FAILED", "{}", outside.history_text(300));
    assert!(
        outside.cause.contains("ReplicationInvalidInput")
            && outside.cause.contains("destinations[0].registry")
            && outside.cause.contains("destinations[0].insecure"),
        "{}",
        outside.cause
    );
    assert_eq!(elsewhere.requests(), Vec::<String>::new());
}

/// A blob over 2 GiB (the old segment loop added its byte counts with States.MathAdd, 32-bit)
/// copied in 3 segments through the state machine, each a fresh invocation continuing the
/// upload session; the target holds it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_over_2_gib_is_copied_in_segments_through_the_state_machine() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let size = 2 * 1024 * MIB + 100 * MIB;
    let image = ImageBuilder::new(Format::Oci)
        .big_layer(21, size)
        .layer(22, 1000)
        .build();
    Pusher::new(&src.host, None)
        .push("ml/cuda", "12.4", &image)
        .await;
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "rangeBytes": 800 * MIB
    });

    let run = sfn.execute(&arn, &input).await;

    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\n{}",
        run.cause,
        run.history_text(400)
    );
    let report = run.output.clone().unwrap();
    assert_eq!(report["copied"].as_u64(), Some(1), "{report}");
    // Every blob once: the page's ranges are counted, not each image's share again.
    let blobs: u64 = image.blobs.iter().map(|b| b.data.size()).sum();
    assert_eq!(report["bytesCopied"].as_u64(), Some(blobs), "{report}");
    // One invocation per segment, plus one for the small layer's range (the proxy counts the
    // invocations of every child execution).
    let calls = sfn.invocations();
    eprintln!(
        "2.1 GiB blob in 800 MiB segments: invocations {calls:?}, {} parent history events",
        run.events
    );
    assert_eq!(calls["copy-blobs"], 3 + 1, "{calls:?}");
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/ml/cuda:12.4", dst.host), None),
        image.manifest.to_vec()
    );
    let big = &image
        .blobs
        .iter()
        .find(|b| b.data.size() == size)
        .unwrap()
        .digest;
    assert_eq!(
        Pusher::new(&dst.host, None)
            .blob_digest("ml/cuda", big)
            .await,
        Some((big.to_string(), size)),
        "the 2.1 GiB blob, streamed back and hashed"
    );
}

/// A repository with more work than a page (60 images: 3 pages of at most 25) is listed and
/// resolved once per run: the first `enumerate-images` keeps the selection in the work bucket
/// and the later pages read it from there, not from the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_of_many_pages_is_listed_and_resolved_once_per_run() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let tags: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
    for (i, tag) in tags.iter().enumerate() {
        let image = ImageBuilder::new(Format::Oci).layer(i as u64, 64).build();
        pusher.push("big/repo", tag, &image).await;
    }
    let (sfn, arn) = state_machine(&[]).await;
    let input = copy_all(&src, &dst);
    let listed_before = src.count_requests("GET", "/v2/big/repo/tags/list", 200);

    let run = sfn.execute(&arn, &input).await;

    assert_eq!(run.status, "SUCCEEDED", "{}", run.cause);
    let report = run.output.clone().unwrap();
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(60), Some(0)),
        "{report}"
    );
    let enumerations = sfn.invocations()["enumerate-images"];
    assert!(enumerations >= 3, "{enumerations} enumerate-images calls");
    assert_eq!(
        src.count_requests("GET", "/v2/big/repo/tags/list", 200) - listed_before,
        1,
        "the source repository was listed more than once in {enumerations} pages"
    );
    for tag in &tags {
        let resolved = src.count_requests("GET", &format!("/v2/big/repo/manifests/{tag} "), 200);
        assert_eq!(resolved, 1, "tag {tag} resolved {resolved} times");
    }
    let selections: Vec<_> = sfn
        .api_calls()
        .into_iter()
        .filter(|c| c.action.starts_with("s3:"))
        .map(|c| c.action)
        .collect();
    let (kept, read) = (
        selections.iter().filter(|a| *a == "s3:PutObject").count(),
        selections.iter().filter(|a| *a == "s3:GetObject").count(),
    );
    // Kept once, by enumerate-repositories when it found the repository had work; every page
    // of its child reads its stretch of it.
    assert_eq!(kept, 1, "{selections:?}");
    assert_eq!(read, enumerations, "{selections:?}");
    // IAM: the synthesized deployment grants exactly these calls to the function that made them
    // (`make cdk-test` synthesizes `cdk/cdk.out.iam`), and refuses them without its statement.
    let performed = Performed::of(
        sfn.api_calls()
            .into_iter()
            .filter(|c| c.action.starts_with("s3:")),
    );
    let mut policies = Policies::load(
        &e2e::sfn::workspace().join("cdk/cdk.out.iam"),
        "123456789012",
    );
    assert_eq!(policies.violations(&performed), Vec::<String>::new());
    for statements in policies.by_function.values_mut() {
        statements.retain(|s| s.sid != "RunSelections");
    }
    assert_eq!(policies.violations(&performed).len(), performed.len());
    // Every page's images arrived byte-identical (first, middle and last checked by skopeo).
    for tag in ["t00", "t30", "t59"] {
        assert_copied(&src, &dst, &format!("big/repo:{tag}"));
    }
}

/// Through the real state machine: only the signed image (and its signature) is copied, the
/// unsigned one is named; the run ends with its EventBridge event and, asked for, each image that
/// arrived announces itself (read back from an SQS queue a rule on the default bus feeds); the
/// functions' EMF lines carry the copies, bytes and presence per destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_copy_only_signed_images_announce_themselves_and_emit_metrics() {
    use e2e::image::{cosign_signature, signing_key};
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    // The deployment's trust policy trusts this key; the job names the policy.
    let (key, _) = signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let signed = ImageBuilder::new(Format::Oci).layer(1, 4000).build();
    let unsigned = ImageBuilder::new(Format::Oci).layer(2, 3000).build();
    let signature = cosign_signature(&signed.digest, &key, false, None);
    let signature_tag = format!("{}.sig", signed.digest.replacen(':', "-", 1));
    source.push("app", "v1", &signed).await;
    source.push("app", "v2", &unsigned).await;
    source.push("app", &signature_tag, &signature).await;
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    let queue = sfn
        .aws_json(
            "sqs",
            "AmazonSQS.CreateQueue",
            json!({"QueueName": "replicator-events"}),
        )
        .await["QueueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    sfn.aws_json(
        "events",
        "AWSEvents.PutRule",
        json!({"Name": "replicator", "EventPattern": json!({"source": ["ecr-replicator"]}).to_string()}),
    )
    .await;
    sfn.aws_json(
        "events",
        "AWSEvents.PutTargets",
        json!({"Rule": "replicator", "Targets": [{"Id": "queue", "Arn": "arn:aws:sqs:us-east-1:123456789012:replicator-events"}]}),
    )
    .await;
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "requireSignature": {"policy": e2e::sfn::RIG_TRUST_POLICY},
        "imageEvents": true
    });

    let run = sfn.execute(&arn, &input).await;

    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\n{}",
        run.cause,
        run.history_text(400)
    );
    let report = run.output.unwrap();
    assert_eq!(
        (&report["copied"], &report["unsigned"], &report["failed"]),
        (&json!(2), &json!(1), &json!(0)),
        "{report}"
    );
    assert_eq!(
        report["unsignedImages"][0]["tags"],
        json!(["v2"]),
        "{report}"
    );
    assert_eq!(report["unsignedImages"][0]["status"], "unsigned");
    let target = Pusher::new(&dst.host, None);
    assert_eq!(target.manifest("app", "v1").await.unwrap(), signed.manifest);
    assert!(target.manifest("app", "v2").await.is_none());

    let received = sfn
        .aws_json(
            "sqs",
            "AmazonSQS.ReceiveMessage",
            json!({"QueueUrl": queue, "MaxNumberOfMessages": 10}),
        )
        .await;
    let events: Vec<serde_json::Value> = received["Messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| serde_json::from_str(m["Body"].as_str().unwrap()).unwrap())
        .collect();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["detail-type"] == kind && e["source"] == "ecr-replicator")
            .collect::<Vec<_>>()
    };
    let finished = of("Replication Run Finished");
    assert_eq!(finished.len(), 1, "{events:?}");
    let detail = &finished[0]["detail"];
    assert_eq!(
        (
            &detail["mode"],
            &detail["dryRun"],
            &detail["report"]["copied"],
            &detail["report"]["unsigned"]
        ),
        (&json!("replicate"), &json!(false), &json!(2), &json!(1)),
        "{detail}"
    );
    assert!(
        detail["execution"]
            .as_str()
            .unwrap()
            .contains(":execution:"),
        "{detail}"
    );
    let mut arrived: Vec<String> = of("Replication Image Arrived")
        .iter()
        .map(|e| {
            assert_eq!(e["detail"]["image"]["status"], "copied", "{e}");
            assert_eq!(e["detail"]["image"]["targetRegistry"], dst.host);
            // The signed image's result names the key that admitted it; its signature (an
            // artifact travelling with it) was admitted by nothing of its own.
            let signed_by = e["detail"]["image"]["signedBy"].as_str();
            if e["detail"]["image"]["tags"][0] == "v1" {
                assert!(
                        signed_by.is_some_and(
                            |s| s.starts_with("policy rig-release: publicKeys[0] sha256:")
                        ),
                        "{e}"
                    );
            } else {
                assert_eq!(signed_by, None, "{e}");
            }
            e["detail"]["image"]["tags"][0]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    arrived.sort();
    assert_eq!(arrived, vec![signature_tag.clone(), "v1".to_string()]);

    // EMF: one document per measurement, namespace and dimension as the dashboard reads them.
    let documents = sfn.metric_documents();
    for d in &documents {
        let declared = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], e2e::sfn::METRICS_NAMESPACE, "{d}");
        // Per destination; a run's cost per state machine (once per run, by its last step).
        let dimension = declared["Dimensions"][0][0].as_str().unwrap_or_default();
        assert!(
            ["Destination", "StateMachine"].contains(&dimension)
                && declared["Dimensions"].as_array().unwrap().len() == 1,
            "{d}"
        );
        assert!(d[dimension].is_string(), "{d}");
        assert!(
            d["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000,
            "{d}"
        );
        for m in declared["Metrics"].as_array().unwrap() {
            assert!(d[m["Name"].as_str().unwrap()].is_number(), "{d}");
        }
    }
    let sum = |name: &str| metric_sum(&sfn, &dst.host, name);
    let mut blobs: Vec<(&String, u64)> = signed
        .blobs
        .iter()
        .chain(&signature.blobs)
        .map(|b| (&b.digest, b.data.size()))
        .collect();
    blobs.sort();
    blobs.dedup();
    let bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
    assert_eq!(
        (sum("ImagesCopied"), sum("BytesCopied"), sum("ImagesFailed")),
        (2.0, bytes as f64, 0.0),
        "{documents:?}"
    );

    let again = sfn.execute(&arn, &input).await;
    assert_eq!(again.status, "SUCCEEDED", "{}", again.cause);
    assert_eq!(sum("ImagesPresent"), 2.0);
}

/// A metric's values for one destination, added up over every EMF document so far.
fn metric_sum(sfn: &LocalStepFunctions, destination: &str, name: &str) -> f64 {
    sfn.metric_documents()
        .iter()
        .filter(|d| d["Destination"] == destination)
        .filter_map(|d| d[name].as_f64())
        .sum()
}

/// One repository cannot stop the others: a repository whose child execution passes its history
/// limit (AWS: 25,000 events, an uncatchable failure; lowered here so two pages reach it) is
/// recorded failed, named, while the other repositories are copied and the run reports both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_child_past_its_history_limit_is_recorded_and_the_others_copied() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for i in 0..30u64 {
        let image = ImageBuilder::new(Format::Oci).layer(i, 64).build();
        pusher.push("big", &format!("t{i:02}"), &image).await;
    }
    for name in ["small-a", "small-b"] {
        let image = ImageBuilder::new(Format::Oci).layer(99, 64).build();
        pusher.push(name, "v1", &image).await;
    }
    // Measured: a one-image repository's child writes 52 events, the 30-image one's (two pages)
    // about 90.
    let (sfn, arn) = state_machine(&[("STRICT_MOTO_HISTORY_LIMIT", "70")]).await;
    let input = copy_all(&src, &dst);

    let run = sfn.execute(&arn, &input).await;

    let children = sfn.child_executions();
    assert_eq!(run.status, "FAILED", "{}", run.history_text(200));
    assert!(
        run.cause
            .contains("repository big: its child execution ended without a report"),
        "{}",
        run.cause
    );
    let failed: Vec<_> = children.iter().filter(|c| c.failed).collect();
    assert_eq!(failed.len(), 1, "{children:?}");
    for name in ["small-a", "small-b"] {
        assert_copied(&src, &dst, &format!("{name}:v1"));
    }
}

/// An EXPRESS child runs at most 5 minutes (lowered here to none): every image whose child is
/// lost that way is recorded failed, named, and nothing is tagged in the destination; the run
/// fails naming them instead of hanging or reporting success.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_whose_express_children_are_lost_are_recorded_failed_and_named() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for tag in ["v1", "v2"] {
        let image = ImageBuilder::new(Format::Oci)
            .layer(tag.len() as u64 + tag.as_bytes()[1] as u64, 64)
            .build();
        pusher.push("app", tag, &image).await;
    }
    let (sfn, arn) = state_machine(&[("STRICT_MOTO_EXPRESS_SECONDS", "0")]).await;
    let input = copy_all(&src, &dst);

    let run = sfn.execute(&arn, &input).await;

    assert_eq!(run.status, "FAILED", "{}", run.history_text(200));
    // Both counted; a repository's report lists its first failure.
    assert!(
        run.cause.contains("2 of 2 images")
            && run
                .cause
                .contains("its child execution (ForEachImage) ended without a result"),
        "{}",
        run.cause
    );
    let children = sfn.child_executions();
    let express: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "EXPRESS")
        .collect();
    // The page's range child and its image child (both images share one: ItemBatcher), each
    // lost to the 0 s limit.
    assert!(
        express.len() == 2 && express.iter().all(|c| c.failed),
        "{children:?}"
    );
    for tag in ["v1", "v2"] {
        assert!(Pusher::new(&dst.host, None)
            .manifest("app", tag)
            .await
            .is_none());
    }
}

/// No history grows without bound: with the limits lowered to one page, a repository child
/// hands its token back after each page of images and the parent gives the repository a new
/// child; the parent continues as a new execution after each page, carrying the report. The
/// run is still one run to its caller: the first execution ends with the last one's output,
/// every image copied once, the report counting each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn children_hand_back_and_the_run_continues_as_new_executions() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for i in 0..30u64 {
        let image = ImageBuilder::new(Format::Oci).layer(1000 + i, 64).build();
        pusher.push("big", &format!("t{i:02}"), &image).await;
    }
    for name in ["small-a", "small-b"] {
        let image = ImageBuilder::new(Format::Oci).layer(7, 64).build();
        pusher.push(name, "v1", &image).await;
    }
    let (sfn, arn) = state_machine(&[
        ("ECR_REPLICATOR_PAGES_PER_CHILD", "1"),
        ("ECR_REPLICATOR_PAGES_PER_EXECUTION", "1"),
    ])
    .await;
    let input = copy_all(&src, &dst);
    let enumerations_before = sfn
        .invocations()
        .get("enumerate-images")
        .copied()
        .unwrap_or(0);

    let run = sfn.execute(&arn, &input).await;

    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\n{}",
        run.cause,
        run.history_text(300)
    );
    let report = run.output.clone().unwrap();
    assert_eq!(
        counts(&report, ["images", "copied", "failed"]),
        [32, 32, 0],
        "{report}"
    );
    assert!(report.get("continuations").is_none(), "{report}");
    // "big" has two pages of images (25 tasks a page): its first child handed back after one.
    // The two small ones share a child (a pack): one call for both.
    let enumerations = sfn.invocations()["enumerate-images"] - enumerations_before;
    assert_eq!(enumerations, 3, "big twice, the small ones' pack once");
    let sfn_client = ecr::sfn_client(&sfn.aws_settings(), "us-east-1").await;
    let executions = sfn_client
        .list_executions()
        .state_machine_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(executions.executions().len(), 2, "{executions:?}");
    assert!(executions
        .executions()
        .iter()
        .all(|e| e.status().as_str() == "SUCCEEDED"));
    for tag in ["t00", "t29"] {
        assert_copied(&src, &dst, &format!("big:{tag}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_report_counts_what_the_run_cost_and_a_dry_run_says_so_beforehand() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for (repository, tags) in [("svc/a", 3u64), ("svc/b", 1)] {
        for t in 0..tags {
            let image = ImageBuilder::new(Format::Oci)
                .layer(10 + t, 2000)
                .layer(99, 500)
                .build();
            pusher.push(repository, &format!("v{t}"), &image).await;
        }
    }
    let (sfn, arn) = state_machine(&[]).await;
    let input = copy_all(&src, &dst);
    let mut dry = input.clone();
    dry["dryRun"] = json!(true);

    let (plan, plan_counted) = run_counted(&sfn, &arn, &dry).await;
    // The CLI's `plan` (the same steps, in process) says it too.
    let conns = replication::connect::Connections::new(replication::connect::Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Default::default()
    });
    let job: replication::Job = serde_json::from_value(dry.clone()).unwrap();
    let cli_plan = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap();
    let cli_planned = serde_json::to_value(&cli_plan.report.planned_cost).unwrap();
    let (copy, copy_counted) = run_counted(&sfn, &arn, &input).await;
    let (again, again_counted) = run_counted(&sfn, &arn, &input).await;

    let plan = plan.output.unwrap();
    let copy = copy.output.unwrap();
    assert_eq!(counts(&copy, ["copied", "failed"]), [4, 0], "{copy}");
    // Each report counts what its run cost, as the rig counted it.
    assert_eq!(cost_counts(&plan["cost"]), plan_counted, "{plan}");
    assert_eq!(cost_counts(&copy["cost"]), copy_counted, "{copy}");
    let again = again.output.unwrap();
    assert_eq!(cost_counts(&again["cost"]), again_counted, "{again}");
    assert_eq!(
        again_counted,
        [2, 1, 8, 0],
        "a no-op run: two calls, eight states"
    );
    // The dry run said beforehand what the copy would cost.
    assert_eq!(cost_counts(&plan["plannedCost"]), copy_counted, "{plan}");
    assert_eq!(cost_counts(&cli_planned), copy_counted, "{cli_planned}");
    assert_eq!(cli_planned["internetBytes"], copy["bytesCopied"]);
    assert!(copy.get("plannedCost").is_none(), "{copy}");
    // Loopback registries are not ECR: every byte pushed counts as leaving AWS.
    assert_eq!(copy["cost"]["internetBytes"], copy["bytesCopied"], "{copy}");
    assert_eq!(plan["plannedCost"]["internetBytes"], copy["bytesCopied"]);
    let dollars = |c: &serde_json::Value| c["estimatedUsd"].as_f64().unwrap_or(0.0);
    assert!(dollars(&copy["cost"]) > dollars(&again["cost"]));
    assert!(dollars(&again["cost"]) > 0.0, "{again}");
    // The last step writes the run's cost as metrics too.
    assert_eq!(
        cost_metric(&sfn, "StandardTransitions"),
        (plan_counted[2] + copy_counted[2] + again_counted[2]) as f64
    );
}

/// Runs `input` and returns the execution with what the rig counted for it: Lambda
/// invocations, STANDARD executions (it and its STANDARD children), billed state transitions
/// (their states entered, and one for each child a Distributed Map started, EXPRESS ones
/// included, as AWS bills them), and EXPRESS executions.
async fn run_counted(
    sfn: &LocalStepFunctions,
    arn: &str,
    input: &serde_json::Value,
) -> (e2e::sfn::Execution, [u64; 4]) {
    let calls = |sfn: &LocalStepFunctions| sfn.invocations().values().sum::<usize>() as u64;
    let (calls_before, children_before) = (calls(sfn), sfn.child_executions().len());
    let execution = sfn.execute(arn, input).await;
    assert_eq!(execution.status, "SUCCEEDED", "{}", execution.cause);
    let children = sfn.child_executions().split_off(children_before);
    let standard: Vec<_> = children
        .iter()
        .filter(|c| c.execution_type == "STANDARD")
        .collect();
    let counted = [
        calls(sfn) - calls_before,
        1 + standard.len() as u64,
        (execution.transitions
            + standard.iter().map(|c| c.transitions).sum::<usize>()
            + children.len()) as u64,
        (children.len() - standard.len()) as u64,
    ];
    (execution, counted)
}

/// A report cost's counts in `run_counted`'s order (a count left out is 0).
fn cost_counts(cost: &serde_json::Value) -> [u64; 4] {
    [
        "lambdaInvocations",
        "standardExecutions",
        "standardTransitions",
        "expressExecutions",
    ]
    .map(|k| cost[k].as_u64().unwrap_or(0))
}

/// The sum of a cost metric the functions wrote (EMF lines with the `StateMachine` dimension).
fn cost_metric(sfn: &LocalStepFunctions, name: &str) -> f64 {
    sfn.metric_documents()
        .iter()
        .filter(|d| d.get("StateMachine").is_some())
        .filter_map(|d| d[name].as_f64())
        .sum()
}

/// The rig with `env` (functions' variables; `STRICT_MOTO_*` go to the interpreter) and the
/// state machine created.
async fn state_machine(env: &[(&str, &str)]) -> (LocalStepFunctions, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sfn = LocalStepFunctions::start(&env).await;
    let arn = sfn.create_state_machine("replicate").await;
    (sfn, arn)
}

/// A job copying everything from `src` to `dst`, referrers left out.
fn copy_all(src: &TestRegistry, dst: &TestRegistry) -> serde_json::Value {
    json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "referrers": false
    })
}

/// Both registries serve the same manifest bytes for `reference` (`repository:tag`), as skopeo
/// reads them.
fn assert_copied(src: &TestRegistry, dst: &TestRegistry, reference: &str) {
    let at = |host: &str| e2e::skopeo::inspect_raw(&format!("{host}/{reference}"), None);
    assert_eq!(at(&dst.host), at(&src.host), "{reference}");
}

/// The report's counts named by `keys` (a missing or non-numeric one fails the test).
fn counts<const N: usize>(report: &serde_json::Value, keys: [&str; N]) -> [u64; N] {
    keys.map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no count {k} in {report}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_budget_holds_across_the_fan_out_and_the_next_run_finishes_the_rest() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let mut references = Vec::new();
    for (r, repository) in ["library/alpine", "library/busybox", "library/debian"]
        .iter()
        .enumerate()
    {
        for t in 0..2u64 {
            let image = ImageBuilder::new(Format::Oci)
                .layer(40 + 2 * r as u64 + t, 2000)
                .build();
            pusher.push(repository, &format!("v{t}"), &image).await;
            references.push(format!("{repository}:v{t}"));
        }
    }
    // Docker Hub's pull limit in front of the source, with room to spare: the budget stops the
    // run, not the registry.
    let hub = PullLimitedRegistry::start(&src.host, 1000);
    let (sfn, arn) = state_machine(&[]).await;
    let job = |max_pulls: u64| {
        json!({
            "source": {"registry": hub.host, "insecure": true, "pullBudget": {"maxPulls": max_pulls}},
            "destinations": [{"registry": dst.host, "insecure": true}],
            "referrers": false
        })
    };

    let first = sfn.execute(&arn, &job(6)).await;
    assert_eq!(first.status, "SUCCEEDED", "{}", first.cause);
    let report = first.output.unwrap();
    // Each image is read twice in the workflow (planned, put): 3 fit in 6 pulls, whichever
    // repositories they are in; the rest waits, not failed.
    assert!(hub.pulls() <= 6, "{} pulls of 6: {report}", hub.pulls());
    assert_eq!(report["sourcePulls"], hub.pulls(), "{report}");
    assert_eq!(
        counts(&report, ["copied", "postponed", "failed"]),
        [3, 3, 0],
        "{report}"
    );
    let copied: Vec<&String> = references
        .iter()
        .filter(|r| e2e::skopeo::exists(&format!("{}/{r}", dst.host)))
        .collect();
    assert_eq!(copied.len(), 3, "{copied:?}");

    let spent = hub.pulls();
    let second = sfn.execute(&arn, &job(100)).await;
    assert_eq!(second.status, "SUCCEEDED", "{}", second.cause);
    let report = second.output.unwrap();
    assert_eq!(
        counts(&report, ["copied", "present", "postponed", "failed"]),
        [3, 3, 0, 0],
        "{report}"
    );
    assert_eq!(report["sourcePulls"], hub.pulls() - spent, "{report}");
    for reference in &references {
        assert_copied(&src, &dst, reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_cut_down_to_the_platforms_asked_travels_through_the_workflow() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let index = e2e::image::multi_arch(70, 1, 1500);
    Pusher::new(&src.host, None)
        .push("multi/app", "v1", &index)
        .await;
    let (sfn, arn) = state_machine(&[]).await;
    let mut input = copy_all(&src, &dst);
    input["platforms"] = json!(["linux/arm64"]);

    let first = sfn.execute(&arn, &input).await;
    assert_eq!(first.status, "SUCCEEDED", "{}", first.cause);
    let report = first.output.unwrap();
    assert_eq!(
        counts(&report, ["copied", "platformSubsets", "failed"]),
        [1, 1, 0],
        "{report}"
    );
    let copied = e2e::skopeo::inspect_raw(&format!("{}/multi/app:v1", dst.host), None);
    let subset: serde_json::Value = serde_json::from_slice(&copied).unwrap();
    let source: serde_json::Value = serde_json::from_slice(&index.manifest).unwrap();
    assert_eq!(subset["manifests"], json!([source["manifests"][1]]));

    let second = sfn.execute(&arn, &input).await;
    assert_eq!(second.status, "SUCCEEDED", "{}", second.cause);
    let report = second.output.unwrap();
    assert_eq!(
        counts(&report, ["copied", "present", "failed"]),
        [0, 1, 0],
        "{report}"
    );
}

/// A verification of a repository larger than one `verify-repository` call compares (lowered
/// to 2 images a call here) loops over its pages in one child: five images in three calls, the
/// totals those of the whole repository; an image missing in the destination on a later page
/// is found and fails the execution, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verify_of_a_repository_larger_than_one_call_goes_page_by_page() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (source, target) = (Pusher::new(&src.host, None), Pusher::new(&dst.host, None));
    for i in 0..5u64 {
        let image = ImageBuilder::new(Format::Oci).layer(3000 + i, 64).build();
        source.push("many", &format!("v{i}"), &image).await;
        target.push("many", &format!("v{i}"), &image).await;
    }
    let (sfn, arn) = state_machine(&[("ECR_REPLICATOR_VERIFY_IMAGES_PER_CALL", "2")]).await;
    let mut verifying = copy_all(&src, &dst);
    verifying["mode"] = json!("verify");
    let before = sfn.invocations();

    let identical = sfn.execute(&arn, &verifying).await;

    assert_eq!(
        identical.status,
        "SUCCEEDED",
        "{}\n{}",
        identical.cause,
        identical.history_text(100)
    );
    let verify = identical.output.unwrap()["verify"].clone();
    assert_eq!(
        counts(&verify, ["images", "identical", "missing", "extra"]),
        [5, 5, 0, 0],
        "{verify}"
    );
    assert!(verify.get("nextToken").is_none(), "{verify}");
    let calls = sfn.invocations()["verify-repository"]
        - before.get("verify-repository").copied().unwrap_or(0);
    assert_eq!(calls, 3, "5 images, 2 a call");

    // A sixth image only the source has (it sorts by digest into some page): found, named.
    let sixth = ImageBuilder::new(Format::Oci).layer(3999, 64).build();
    source.push("many", "v5", &sixth).await;
    let differs = sfn.execute(&arn, &verifying).await;
    assert_eq!(differs.status, "FAILED");
    assert!(
        differs.cause.contains("1 differences") && differs.cause.contains("many"),
        "{}",
        differs.cause
    );
}
