//! A burst of pushes (issue 34): 1,000 push messages, some repeated, some malformed, some for
//! tags the job excludes, go through `coalesce-pushes` in the batches an SQS event source
//! mapping would hand it, against moto's Step Functions. A few executions start (not one per
//! push), their jobs list exactly the valid pushes, the malformed messages are reported and
//! deleted (among them forged jobs: valid, but not the deployment's push job, as anyone with
//! `sqs:SendMessage` on the queue could send), a batch delivered again starts nothing new, and a
//! batch whose run cannot be started goes back to the queue whole.

use std::collections::{BTreeMap, BTreeSet};

use e2e::moto::Moto;
use replication::steps::coalesce_pushes::PushTemplate;
use replication::steps::{coalesce_pushes, SqsBatch, SqsMessage};
use serde_json::{json, Value};

const PUSHES: usize = 1000;
const BATCH: usize = 250;

/// The push rule's input for one image, as the CDK app writes it (`pushInput`).
fn push_job(image: Value) -> Value {
    json!({
        "repositorySettings": "copy",
        "source": { "registry": "111111111111.dkr.ecr.us-east-1.amazonaws.com" },
        "destinations": [{
            "registry": "222222222222.dkr.ecr.eu-west-1.amazonaws.com",
            "repositoryPrefix": "mirror/"
        }],
        "tags": { "exclude": [".*-dev"] },
        "requireSignature": { "policy": "release" },
        "images": [image],
    })
}

/// The deployment's push job as the CDK app pins it (`ECR_REPLICATOR_PUSH_JOB`): the push rule's
/// input without its image, here with its keys in another order and spaced (compared parsed).
fn template() -> PushTemplate {
    let mut job = push_job(Value::Null);
    job.as_object_mut().unwrap().remove("images");
    PushTemplate::from_json(&serde_json::to_string_pretty(&job).unwrap()).unwrap()
}

/// Forged jobs (valid, but not this deployment's push job) for images no valid push names: what
/// anyone with `sqs:SendMessage` on the queue could send to get a run of their choosing.
fn forged(k: usize) -> (String, &'static str) {
    let image = json!({
        "repository": format!("team{k}/forged"),
        "tag": if k % 5 == 3 { format!("v{k}-dev") } else { format!("v9.{k}.0") },
        "digest": digest(5000 + k),
    });
    let mut job = push_job(image);
    let field = match k % 5 {
        0 => {
            job.as_object_mut().unwrap().remove("requireSignature");
            "requireSignature"
        }
        1 => {
            job["destinations"].as_array_mut().unwrap().push(json!({
                "registry": "333333333333.dkr.ecr.eu-west-1.amazonaws.com"
            }));
            "destinations"
        }
        2 => {
            job["copyRepositoryPolicy"] = json!(true);
            "copyRepositoryPolicy"
        }
        3 => {
            job.as_object_mut().unwrap().remove("tags");
            "tags"
        }
        _ => {
            job["repositorySettings"] = json!("mirror");
            "repositorySettings"
        }
    };
    (job.to_string(), field)
}

fn digest(i: usize) -> String {
    oci::Digest::of(format!("image {i}").as_bytes()).to_string()
}

/// A valid push: repository, tag, digest.
fn valid(i: usize) -> (String, String, String) {
    (
        format!("team{}/app{}", i % 7, i % 40),
        format!("v1.{i}.0"),
        digest(i),
    )
}

fn body((repository, tag, digest): &(String, String, String)) -> String {
    push_job(json!({ "repository": repository, "tag": tag, "digest": digest })).to_string()
}

/// Malformed messages: each breaks one rule a push must keep.
fn malformed(i: usize) -> String {
    let (repository, tag, digest) = valid(i);
    let image = |r: &str, t: &str, d: &str| {
        push_job(json!({ "repository": r, "tag": t, "digest": d })).to_string()
    };
    match i % 8 {
        0 => image("Team/App With Space", &tag, &digest),
        1 => image(&repository, "..no-leading-dot", &digest),
        2 => image(&repository, &tag, "sha256:not-hex"),
        3 => "{\"source\": ".into(),
        4 => push_job(json!({ "repository": repository, "tag": tag })).to_string(),
        5 => {
            let mut job =
                push_job(json!({ "repository": repository, "tag": tag, "digest": digest }));
            job["images"] = json!([job["images"][0].clone(), job["images"][0].clone()]);
            job.to_string()
        }
        6 => {
            let mut job =
                push_job(json!({ "repository": repository, "tag": tag, "digest": digest }));
            job["smuggled"] = json!(true);
            job.to_string()
        }
        _ => image(&repository, &"x".repeat(129), &digest),
    }
}

struct Burst {
    batches: Vec<SqsBatch>,
    valid: BTreeSet<(String, String, String)>,
    malformed: BTreeSet<String>,
    /// Forged jobs' message IDs, the field each changes, and their images.
    forged: BTreeMap<String, &'static str>,
    forged_images: BTreeSet<(String, String, String)>,
    excluded: BTreeSet<String>,
    duplicates: usize,
}

/// 1,000 messages: 880 distinct valid pushes, 60 repeats of them, 20 malformed, 20 forged jobs,
/// 20 for an excluded tag, in a fixed shuffled order, cut into batches of 250.
fn burst() -> Burst {
    let mut messages: Vec<(String, String)> = Vec::new();
    let mut valid_set = BTreeSet::new();
    let (mut malformed_ids, mut excluded_ids) = (BTreeSet::new(), BTreeSet::new());
    let distinct = 880;
    for i in 0..distinct {
        let push = valid(i);
        messages.push((format!("m-valid-{i}"), body(&push)));
        valid_set.insert(push);
    }
    for k in 0..60 {
        messages.push((format!("m-again-{k}"), body(&valid(k * 13))));
    }
    for k in 0..20 {
        let id = format!("m-malformed-{k}");
        messages.push((id.clone(), malformed(k)));
        malformed_ids.insert(id);
    }
    let (mut forged_ids, mut forged_images) = (BTreeMap::new(), BTreeSet::new());
    for k in 0..20 {
        let id = format!("m-forged-{k}");
        let (body, field) = forged(k);
        let job: Value = serde_json::from_str(&body).unwrap();
        let image = &job["images"][0];
        forged_images.insert((
            image["repository"].as_str().unwrap().to_string(),
            image["tag"].as_str().unwrap().to_string(),
            image["digest"].as_str().unwrap().to_string(),
        ));
        // Each is a valid job on its own: only the pinned push job refuses it.
        replication::job::Job::parse(&body).unwrap();
        messages.push((id.clone(), body));
        malformed_ids.insert(id.clone());
        forged_ids.insert(id, field);
    }
    for k in 0..20 {
        let id = format!("m-excluded-{k}");
        let (repository, _, digest) = valid(k);
        messages.push((id.clone(), body(&(repository, format!("v{k}-dev"), digest))));
        excluded_ids.insert(id);
    }
    assert_eq!(messages.len(), PUSHES);
    // A fixed shuffle: repeats and their originals land in different batches.
    messages.sort_by_key(|(id, _)| oci::Digest::of(id.as_bytes()).to_string());
    let batches = messages
        .chunks(BATCH)
        .map(|chunk| SqsBatch {
            records: chunk
                .iter()
                .map(|(id, body)| SqsMessage {
                    message_id: id.clone(),
                    body: body.clone(),
                })
                .collect(),
        })
        .collect();
    Burst {
        batches,
        valid: valid_set,
        malformed: malformed_ids,
        forged: forged_ids,
        forged_images,
        excluded: excluded_ids,
        duplicates: 60,
    }
}

async fn state_machine(sfn: &aws_sdk_sfn::Client) -> String {
    let definition =
        json!({ "StartAt": "Run", "States": { "Run": { "Type": "Pass", "End": true } } });
    sfn.create_state_machine()
        .name("replicate")
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/replicate")
        .send()
        .await
        .unwrap()
        .state_machine_arn
}

/// Every execution of the state machine: name, ARN, status, input.
async fn executions(sfn: &aws_sdk_sfn::Client, arn: &str) -> Vec<(String, String, String, Value)> {
    let mut listed = Vec::new();
    let mut pages = sfn
        .list_executions()
        .state_machine_arn(arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        listed.extend(page.unwrap().executions);
    }
    let mut all = Vec::new();
    for e in listed {
        let d = sfn
            .describe_execution()
            .execution_arn(&e.execution_arn)
            .send()
            .await
            .unwrap();
        let input = serde_json::from_str(d.input().unwrap_or("{}")).unwrap();
        all.push((
            e.name,
            e.execution_arn,
            d.status.as_str().to_string(),
            input,
        ));
    }
    all
}

#[tokio::test]
async fn a_burst_of_pushes_starts_a_few_runs_covering_exactly_the_valid_pushes() {
    let moto = Moto::start();
    let sfn = ecr::sfn_client(&moto.aws_settings(), "us-east-1").await;
    let arn = state_machine(&sfn).await;
    let starter = ecr::Executions::new(sfn.clone(), arn.clone());
    let burst = burst();
    let template = template();

    let mut reports = Vec::new();
    for batch in &burst.batches {
        reports.push(coalesce_pushes(&starter, &template, batch).await);
    }
    let started: usize = reports.iter().map(|r| r.started.len()).sum();
    let listed = executions(&sfn, &arn).await;
    eprintln!(
        "{PUSHES} pushes in {} batches: {started} executions (images per execution: {:?})",
        burst.batches.len(),
        reports
            .iter()
            .flat_map(|r| r.started.iter().map(|s| s.run.images))
            .collect::<Vec<_>>()
    );
    // One execution per batch's job, each job as full as MAX_JOB_BYTES allows (~160 images of
    // this size): 2 per batch of 250, not one per push.
    assert_eq!(listed.len(), started, "every run started is one execution");
    assert!(
        started <= 2 * burst.batches.len(),
        "{started} executions for {PUSHES} pushes"
    );
    for report in &reports {
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert!(report.response().batch_item_failures.is_empty());
    }

    // The jobs cover exactly the valid pushes: each input a valid job, named as planned, and the
    // deployment's push job (no forged job's destination, settings or missing requireSignature).
    let mut covered = BTreeSet::new();
    for (name, _, status, input) in &listed {
        assert!(name.starts_with("push-") && name.len() <= 80, "{name}");
        assert_eq!(status, "RUNNING");
        let mut job = replication::job::Job::parse(&input.to_string())
            .unwrap()
            .job;
        let images = std::mem::take(&mut job.images);
        assert_eq!(
            &job,
            template.job(),
            "a run of another job than the push job"
        );
        for image in images {
            covered.insert((image.repository, image.tag.unwrap(), image.digest.unwrap()));
        }
    }
    assert_eq!(
        covered, burst.valid,
        "the runs' images are exactly the valid pushes"
    );
    assert!(
        covered.is_disjoint(&burst.forged_images),
        "a forged job's image was started"
    );

    // The malformed ones are reported, each naming what is wrong; excluded ones left out.
    let malformed: BTreeMap<String, String> = reports
        .iter()
        .flat_map(|r| {
            r.malformed
                .iter()
                .map(|m| (m.message_id.clone(), m.problem.clone()))
        })
        .collect();
    assert_eq!(
        malformed.keys().cloned().collect::<BTreeSet<_>>(),
        burst.malformed
    );
    assert!(
        malformed["m-malformed-0"].contains("images[0].repository"),
        "{malformed:?}"
    );
    assert!(
        malformed["m-malformed-1"].contains("images[0].tag"),
        "{malformed:?}"
    );
    assert!(
        malformed["m-malformed-2"].contains("images[0].digest"),
        "{malformed:?}"
    );
    assert!(
        malformed["m-malformed-4"].contains("digest"),
        "{malformed:?}"
    );
    assert!(
        malformed["m-malformed-5"].contains("exactly one image"),
        "{malformed:?}"
    );
    assert!(
        malformed["m-malformed-6"].contains("smuggled"),
        "{malformed:?}"
    );
    for (id, field) in &burst.forged {
        assert!(
            malformed[id].contains(&format!("not this deployment's push job: field {field}")),
            "{id}: {}",
            malformed[id]
        );
    }
    let excluded: BTreeSet<String> = reports.iter().flat_map(|r| r.excluded.clone()).collect();
    assert_eq!(excluded, burst.excluded);
    let duplicates: usize = reports.iter().map(|r| r.duplicates).sum();
    assert!(duplicates <= burst.duplicates);

    // Delivered again (SQS at least once), in another order: the same names and inputs, no
    // second execution, whether the first is still running or already closed.
    let mut reordered = burst.batches[0].clone();
    reordered.records.reverse();
    let again = coalesce_pushes(&starter, &template, &reordered).await;
    assert_eq!(
        again.started.iter().map(|s| &s.outcome).collect::<Vec<_>>(),
        reports[0]
            .started
            .iter()
            .map(|s| &s.outcome)
            .collect::<Vec<_>>()
    );
    let first = match &reports[1].started[0].outcome {
        ecr::StartOutcome::Running(arn) => arn.clone(),
        other => panic!("{other:?}"),
    };
    sfn.stop_execution()
        .execution_arn(&first)
        .send()
        .await
        .unwrap();
    let again = coalesce_pushes(&starter, &template, &burst.batches[1]).await;
    assert_eq!(again.started[0].outcome, ecr::StartOutcome::AlreadyClosed);
    assert!(again.failed.is_empty() && again.response().batch_item_failures.is_empty());
    assert_eq!(
        executions(&sfn, &arn).await.len(),
        started,
        "a batch delivered again started a run"
    );

    // StartExecution fails (no such state machine): the batch's runs go back to the queue,
    // every message of them; malformed and excluded ones are not retried.
    let missing = ecr::Executions::new(sfn.clone(), arn.replace(":replicate", ":missing"));
    let batch = &burst.batches[2];
    let failed = coalesce_pushes(&missing, &template, batch).await;
    assert!(failed.started.is_empty());
    let returned: BTreeSet<String> = failed
        .response()
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    let expected: BTreeSet<String> = batch
        .records
        .iter()
        .map(|m| m.message_id.clone())
        .filter(|id| !burst.malformed.contains(id) && !burst.excluded.contains(id))
        .collect();
    assert_eq!(returned, expected);
}

#[test]
fn one_batch_of_the_whole_burst_is_a_job_per_185_images_or_so() {
    // 1,000 pushes within one batching window: one batch (the mapping takes up to 1,000).
    let burst = burst();
    let whole = SqsBatch {
        records: burst
            .batches
            .iter()
            .flat_map(|b| b.records.clone())
            .collect(),
    };
    let plan = replication::steps::plan_batch(&template(), &whole);
    let images: Vec<usize> = plan.runs.iter().map(|r| r.images).collect();
    eprintln!(
        "{PUSHES} pushes in one batch: {} runs ({images:?})",
        plan.runs.len()
    );
    assert_eq!(images.iter().sum::<usize>(), burst.valid.len());
    assert_eq!(plan.runs.len(), burst.valid.len().div_ceil(185));
    for run in &plan.runs {
        assert!(run.input.len() <= replication::job::MAX_JOB_BYTES);
        replication::job::Job::parse(&run.input).unwrap();
    }
    assert_eq!(plan.duplicates, burst.duplicates);
    assert_eq!(plan.malformed.len(), burst.malformed.len());
    assert_eq!(plan.excluded.len(), burst.excluded.len());
}

#[test]
fn the_push_job_the_cdk_app_pins_accepts_the_push_rules_messages_and_only_them() {
    // The synthesized workflow stack (`make cdk-test` writes it; `make test` runs that first).
    let path = e2e::sfn::workspace().join("cdk/cdk.out/EcrReplicatorWorkflow.template.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make cdk-test`", path.display()));
    let template: Value = serde_json::from_str(&text).unwrap();
    let resources = template["Resources"].as_object().unwrap().values();
    let variables = resources
        .clone()
        .find(|r| {
            r["Type"] == "AWS::Lambda::Function"
                && r["Properties"]["Environment"]["Variables"]["ECR_REPLICATOR_PUSH_JOB"]
                    .is_string()
        })
        .map(|r| r["Properties"]["Environment"]["Variables"].clone())
        .expect("coalesce-pushes pins no push job");
    let pinned = PushTemplate::from_json(variables["ECR_REPLICATOR_PUSH_JOB"].as_str().unwrap())
        .expect("the pinned push job is read as the function reads it");
    // The push rule's message for one push, as EventBridge's transformer writes it.
    let rule = resources
        .filter(|r| r["Type"] == "AWS::Events::Rule")
        .find(|r| r["Properties"]["Description"] == "ecr-replicator: replicate a pushed image")
        .unwrap();
    let transformer = &rule["Properties"]["Targets"][0]["InputTransformer"];
    let mut message = transformer["InputTemplate"].as_str().unwrap().to_string();
    let samples = json!({
        "$.detail.repository-name": "services/web",
        "$.detail.image-tag": "v1.4.2",
        "$.detail.image-digest": digest(1),
    });
    for (name, path) in transformer["InputPathsMap"].as_object().unwrap() {
        message = message.replace(
            &format!("<{name}>"),
            &samples[path.as_str().unwrap()].to_string(),
        );
    }
    let mut forged: Value = serde_json::from_str(&message).unwrap();
    forged["imageEvents"] = json!(true);
    let batch = SqsBatch {
        records: vec![
            SqsMessage {
                message_id: "push".into(),
                body: message,
            },
            SqsMessage {
                message_id: "forged".into(),
                body: forged.to_string(),
            },
        ],
    };
    let plan = replication::steps::plan_batch(&pinned, &batch);
    assert_eq!(plan.runs.len(), 1, "{plan:?}");
    assert_eq!(plan.runs[0].message_ids, ["push"]);
    assert_eq!(plan.malformed.len(), 1);
    assert_eq!(plan.malformed[0].message_id, "forged");
    assert!(
        plan.malformed[0]
            .problem
            .contains("field imageEvents differs"),
        "{plan:?}"
    );
}
