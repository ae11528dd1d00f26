//! Every input a real deployment sends runs end to end through the real state machine (strict
//! local Step Functions, real functions, ECR mode): the schedule rule's input and the push rule's
//! input transformer exactly as the CDK app synthesizes them from `cdk/config.example.json`
//! (read from `cdk/cdk.out`, which `make test` synthesizes first), the transformer applied to
//! AWS's documented sample "ECR Image Action" event; every file in `examples/`; the smallest
//! console input. Then a repository that cannot be replicated to one destination is recorded,
//! named, and every other image still arrives.
//!
//! The inputs name account 111111111111 as the source; locally the source is moto's default
//! account (123456789012), so that account number is translated, nothing else.

use e2e::image::{Format, ImageBuilder, Pusher, TestImage};
use e2e::sfn::{workspace, Execution};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST2, SOURCE, SOURCE_OTHER_REGION};
use std::collections::BTreeSet;

use e2e::iam::{ecr_host, repository_arn, Performed, Policies};
use serde_json::{json, Value};

const CONFIG_SOURCE_ACCOUNT: &str = "111111111111";
const LOCAL_SOURCE_ACCOUNT: &str = "123456789012";

fn image(seed: u64) -> TestImage {
    ImageBuilder::new(Format::Oci)
        .layer(seed, 20_000)
        .layer(seed + 100, 1_000)
        .build()
}

/// The source's images: what the inputs select.
fn catalog() -> Vec<(&'static str, &'static str, TestImage)> {
    vec![
        ("services/web", "v1.4.2", image(1)),
        ("services/api", "v1.5.0", image(2)),
        ("services/api", "sha-abc123", image(3)),
        ("ml/pytorch", "2.3.1-cuda12", image(4)),
        ("tools/jq", "1.7", image(5)),
    ]
}

fn local(text: &str) -> Value {
    serde_json::from_str(&text.replace(CONFIG_SOURCE_ACCOUNT, LOCAL_SOURCE_ACCOUNT)).unwrap()
}

/// The synthesized workflow stack (`make cdk-test` writes it; `make test` runs that first).
fn workflow_template() -> Value {
    let path = workspace().join("cdk/cdk.out/EcrReplicatorWorkflow.template.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `make cdk-test` (or `make test`, which runs it first)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The first EventBridge rule target of the rule whose properties satisfy `pick`.
fn rule_target(template: &Value, pick: impl Fn(&Value) -> bool) -> (Value, Value) {
    template["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == "AWS::Events::Rule")
        .map(|r| &r["Properties"])
        .find(|p| pick(p))
        .map(|p| (p["Targets"][0].clone(), p["EventPattern"].clone()))
        .expect("rule not in the synthesized template")
}

/// EventBridge's input transformer: each `<name>` of the template replaced by the JSON value at
/// its path in the event (strings quoted, as EventBridge does for a placeholder outside quotes).
fn transform(transformer: &Value, event: &Value) -> Value {
    let mut text = transformer["InputTemplate"].as_str().unwrap().to_string();
    for (name, path) in transformer["InputPathsMap"].as_object().unwrap() {
        let mut value = event;
        for key in path.as_str().unwrap().trim_start_matches("$.").split('.') {
            value = &value[key];
        }
        text = text.replace(&format!("<{name}>"), &value.to_string());
    }
    local(&text)
}

/// Whether an event matches a rule's pattern (the operators this app uses: values, `prefix`,
/// `anything-but`).
fn matches(pattern: &Value, event: &Value) -> bool {
    pattern.as_object().unwrap().iter().all(|(key, want)| {
        let got = &event[key];
        match want {
            Value::Object(_) => matches(want, got),
            Value::Array(options) => options.iter().any(|o| match o {
                Value::Object(op) if op.contains_key("prefix") => got
                    .as_str()
                    .is_some_and(|g| g.starts_with(op["prefix"].as_str().unwrap())),
                Value::Object(op) if op.contains_key("anything-but") => {
                    !got.is_null() && *got != op["anything-but"]
                }
                value => got == value,
            }),
            _ => false,
        }
    })
}

/// AWS's sample "ECR Image Action" event for a completed push (Amazon ECR User Guide,
/// "Amazon ECR events and EventBridge"), for this account, region and image.
fn push_event(repository: &str, tag: &str, digest: &str) -> Value {
    json!({
        "version": "0",
        "id": "13cde686-328b-6117-af20-0e5566167482",
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": LOCAL_SOURCE_ACCOUNT,
        "time": "2019-11-16T01:54:34Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "result": "SUCCESS",
            "repository-name": repository,
            "image-digest": digest,
            "action-type": "PUSH",
            "image-tag": tag
        }
    })
}

fn example(name: &str) -> Value {
    local(&std::fs::read_to_string(workspace().join("examples").join(name)).unwrap())
}

fn creds(host: &str) -> Option<(String, String)> {
    Some(("AWS".into(), moto_token_password(host)))
}

/// The destination holds the image byte for byte (skopeo).
fn assert_holds(world: &EcrWorld, host: &str, repository: &str, tag: &str, image: &TestImage) {
    let reg = world.registry(host);
    assert_eq!(
        e2e::skopeo::inspect_raw(
            &format!("{}/{repository}:{tag}", reg.host),
            creds(host).as_ref()
        ),
        image.manifest.to_vec(),
        "{host}/{repository}:{tag}"
    );
}

fn counts(run: &Execution) -> (u64, u64, u64, u64) {
    let r = run
        .output
        .as_ref()
        .unwrap_or_else(|| panic!("{} {}\n{}", run.status, run.cause, run.history_text(400)));
    let n = |k: &str| r[k].as_u64().unwrap();
    (n("copied"), n("present"), n("planned"), n("failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_real_input_runs_end_to_end_and_a_failing_repository_is_isolated() {
    let (world, sfn) = EcrWorld::with_step_functions().await;
    for (repository, tag, image) in catalog() {
        world.seed(repository, tag, &image).await;
    }
    let arn = sfn.create_state_machine("replicate").await;
    let template = workflow_template();
    let find = |repository: &str, tag: &str| {
        catalog()
            .into_iter()
            .find(|(r, t, _)| *r == repository && *t == tag)
            .unwrap()
            .2
    };

    // 1. The console example: a dry run (filters, semver, latest, KMS mapping): a plan only.
    let console = sfn.execute(&arn, &example("console-start.json")).await;
    assert_eq!(counts(&console), (0, 0, 2, 0), "console-start.json");
    assert!(Pusher::new(&world.registry(DEST).host, creds(DEST))
        .manifest("services/web", "v1.4.2")
        .await
        .is_none());

    // 2. The push rule: its synthesized input transformer applied to AWS's sample event.
    let (target, pattern) = rule_target(&template, |p| {
        p["EventPattern"]["source"] == json!(["aws.ecr"])
    });
    let pattern = local(&pattern.to_string());
    let web = find("services/web", "v1.4.2");
    let event = push_event("services/web", "v1.4.2", &web.digest);
    assert!(
        matches(&pattern, &event),
        "the sample event does not match {pattern}"
    );
    let pushed = sfn
        .execute(&arn, &transform(&target["InputTransformer"], &event))
        .await;
    assert_eq!(counts(&pushed), (2, 0, 0, 0), "push trigger");
    assert_holds(&world, DEST, "services/web", "v1.4.2", &web);
    assert_holds(&world, DEST2, "mirror/services/web", "v1.4.2", &web);

    // 3. The schedule rule's input, as synthesized.
    let (target, _) = rule_target(&template, |p| p["ScheduleExpression"].is_string());
    let scheduled = sfn
        .execute(&arn, &local(target["Input"].as_str().unwrap()))
        .await;
    assert_eq!(counts(&scheduled), (4, 2, 0, 0), "schedule rule");
    assert_holds(
        &world,
        DEST2,
        "mirror/services/api",
        "sha-abc123",
        &find("services/api", "sha-abc123"),
    );

    // 4. examples/schedule.json: the same account in another region (no role), and a prefix.
    let regional = sfn.execute(&arn, &example("schedule.json")).await;
    assert_eq!(counts(&regional), (2, 2, 0, 0), "schedule.json");
    assert_holds(
        &world,
        SOURCE_OTHER_REGION,
        "services/api",
        "v1.5.0",
        &find("services/api", "v1.5.0"),
    );

    // 5. examples/pipeline.json: one CUDA tag, settings created only.
    let pipeline = sfn.execute(&arn, &example("pipeline.json")).await;
    assert_eq!(counts(&pipeline), (1, 0, 0, 0), "pipeline.json");
    let pytorch = find("ml/pytorch", "2.3.1-cuda12");
    assert_holds(&world, DEST, "ml/pytorch", "2.3.1-cuda12", &pytorch);

    // 6. examples/release-images.json: its digest stands for a pipeline's build; the seeded one
    // is swapped in. Both images are already there.
    let mut release = example("release-images.json");
    release["images"][1]["digest"] = json!(pytorch.digest);
    let released = sfn.execute(&arn, &release).await;
    assert_eq!(counts(&released), (0, 2, 0, 0), "release-images.json");

    // 7. The smallest console input: a source and a destination; everything is selected.
    let smallest = json!({"source": {"registry": SOURCE}, "destinations": [{"registry": DEST,
        "roleArn": "arn:aws:iam::222222222222:role/ecr-replicator-target", "externalId": "x1"}]});
    let all = sfn.execute(&arn, &smallest).await;
    assert_eq!(counts(&all), (1, 4, 0, 0), "smallest input");
    assert_holds(&world, DEST, "tools/jq", "1.7", &find("tools/jq", "1.7"));

    // 8. A repository whose name with the second destination's prefix is longer than a
    // repository name may be (ECR and distribution: 255/256 characters) fails there as a whole;
    // the run goes on, every other image arrives, and the run fails naming the repository.
    let long = format!("ml/{}", "a".repeat(247));
    let long_image = image(6);
    world.seed(&long, "v1", &long_image).await;
    let extra = image(7);
    world.seed("tools/yq", "4.0", &extra).await;
    let mut both = smallest.clone();
    both["destinations"].as_array_mut().unwrap().push(
        json!({"registry": DEST2, "roleArn": "arn:aws:iam::333333333333:role/ecr-replicator-target",
            "externalId": "x2", "repositoryPrefix": "mirror/"}),
    );
    let isolated = sfn.execute(&arn, &both).await;
    assert_eq!(isolated.status, "FAILED", "{}", isolated.history_text(300));
    assert!(
        isolated.cause.contains("1 repositories failed")
            && isolated.cause.contains(&format!("repository {long}")),
        "{}",
        isolated.cause
    );
    assert_holds(&world, DEST, "tools/yq", "4.0", &extra);
    assert_holds(&world, DEST2, "mirror/tools/yq", "4.0", &extra);
    assert_holds(
        &world,
        DEST2,
        "mirror/tools/jq",
        "1.7",
        &find("tools/jq", "1.7"),
    );
    eprintln!(
        "real inputs: push {} events, schedule {} events, isolated run {} events",
        pushed.events, scheduled.events, isolated.events
    );

    // 9. Prune: a tag in the destination that the source does not have goes.
    let target = world
        .moto
        .sdk(
            DEST,
            Some("arn:aws:iam::222222222222:role/ecr-replicator-target"),
        )
        .await;
    world.record(DEST, "tools/jq", "0.9-stale", &image(8)).await;
    let mut prune = smallest.clone();
    prune["repositories"] = json!({"include": ["tools/*"]});
    prune["prune"] = json!(true);
    let pruned = sfn.execute(&arn, &prune).await;
    assert_eq!(pruned.status, "SUCCEEDED", "{}", pruned.cause);
    assert_eq!(
        pruned.output.as_ref().unwrap()["tagsPruned"],
        json!(1),
        "{:?}",
        pruned.output
    );
    let left = target
        .list_images()
        .repository_name("tools/jq")
        .send()
        .await
        .unwrap();
    assert!(
        !left
            .image_ids()
            .iter()
            .any(|id| id.image_tag() == Some("0.9-stale")),
        "{left:?}"
    );

    // 10. An upstream that is not ECR (as Docker Hub is), behind a login, mirrored into ECR with
    // the deployment's secret (`credentialArn`, read from Secrets Manager by the functions).
    let (user, token) = ("hub-mirror", "dckr_pat_rig-token");
    let upstream = e2e::registry::TestRegistry::start_with_auth(user, token);
    let nginx = image(77);
    Pusher::new(&upstream.host, Some((user.into(), token.into())))
        .push("library/nginx", "1.27.1", &nginx)
        .await;
    let secrets = aws_sdk_secretsmanager::Client::new(
        &ecr::sdk_config(&sfn.aws_settings(), "us-east-1", None).await,
    );
    secrets
        .create_secret()
        .name(e2e::sfn::RIG_UPSTREAM_SECRET_NAME)
        .secret_string(json!({"username": user, "accessToken": token}).to_string())
        .send()
        .await
        .unwrap();
    let mirror = json!({
        "source": {"registry": upstream.host, "insecure": true,
                   "credentialArn": e2e::sfn::RIG_UPSTREAM_SECRET},
        "destinations": [{"registry": DEST,
            "roleArn": "arn:aws:iam::222222222222:role/ecr-replicator-target", "externalId": "x1"}]
    });
    let mirrored = sfn.execute(&arn, &mirror).await;
    assert_eq!(
        counts(&mirrored),
        (1, 0, 0, 0),
        "mirror of an upstream behind a login"
    );
    assert_holds(&world, DEST, "library/nginx", "1.27.1", &nginx);

    // 11. A gated promotion: the image's cosign signature admits it, and put-manifests signs its
    // receipt with the deployment's KMS key (`receiptKeyArn`), attached through ECR's referrers
    // API with the image child's execution ARN.
    let (signer, pem) = e2e::image::signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let signed = image(88);
    world.seed("signed/app", "v1", &signed).await;
    let signature = e2e::image::cosign_signature(&signed.digest, &signer, false, None);
    world
        .seed(
            "signed/app",
            &format!("{}.sig", signed.digest.replacen(':', "-", 1)),
            &signature,
        )
        .await;
    let mut gated = smallest.clone();
    gated["repositories"] = json!({"include": ["signed/*"]});
    // A caller's own key, even the right one, is refused by a deployment that names its trust
    // policies: it could otherwise sign anything with a throwaway key and get a receipt.
    gated["requireSignature"] = json!({"publicKeys": [pem]});
    let inline = sfn.execute(&arn, &gated).await;
    assert_eq!(inline.status, "FAILED", "{}", inline.cause);
    assert!(
        inline.cause.contains("ReplicationInvalidInput")
            && inline.cause.contains("requireSignature.publicKeys"),
        "{}",
        inline.cause
    );
    assert!(!sfn.api_calls().iter().any(|c| c.action == "kms:Sign"));
    gated["requireSignature"] = json!({"policy": e2e::sfn::RIG_TRUST_POLICY});
    let promoted = sfn.execute(&arn, &gated).await;
    assert_eq!(counts(&promoted), (2, 0, 0, 0), "gated promotion");
    assert_holds(&world, DEST, "signed/app", "v1", &signed);
    let receipt_signed = sfn
        .api_calls()
        .into_iter()
        .any(|c| c.action == "kms:Sign" && c.resources == [e2e::sfn::RIG_RECEIPT_KEY]);
    assert!(
        receipt_signed,
        "no receipt was signed with the deployment's key"
    );

    // 12. Everything the functions did in these runs, against the roles the CDK app synthesizes
    // for these accounts (`cdk/test/config.iam.json`, by `make cdk-test`).
    let policies = Policies::load(&workspace().join("cdk/cdk.out.iam"), LOCAL_SOURCE_ACCOUNT);
    let performed = performed(&world, &sfn);
    let actions: BTreeSet<&str> = performed.iter().map(|p| p.action.as_str()).collect();
    for needed in [
        "sts:AssumeRole",
        "ecr:GetAuthorizationToken",
        "ecr:CreateRepository",
        "ecr:DescribeImages",
        "ecr:BatchGetImage",
        "ecr:InitiateLayerUpload",
        "ecr:PutImage",
        "ecr:BatchDeleteImage",
        "secretsmanager:GetSecretValue",
        "kms:Sign",
    ] {
        assert!(
            actions.contains(needed),
            "{needed} was not seen: {actions:?}"
        );
    }
    let violations = policies.violations(&performed);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The check bites: the target role without its push statement is refused its pushes.
    let target = "arn:aws:iam::222222222222:role/ecr-replicator-target";
    let refused = policies
        .without(target, "PushImages")
        .violations(&performed);
    assert!(
        refused.iter().any(|v| v.contains("ecr:PutImage")),
        "{refused:?}"
    );
    // And the functions without the upstream's secret grant are refused reading it.
    let mut no_secret = policies.clone();
    for statements in no_secret.by_function.values_mut() {
        statements.retain(|s| s.sid != "ReadUpstreamSecrets");
    }
    let unread = no_secret.violations(&performed);
    assert!(
        unread
            .iter()
            .any(|v| v.contains("secretsmanager:GetSecretValue")
                && v.contains(e2e::sfn::RIG_UPSTREAM_SECRET)),
        "{unread:?}"
    );
    // And without the receipt key's grant, the receipt's signature is refused.
    let mut no_sign = policies.clone();
    for statements in no_sign.by_function.values_mut() {
        statements.retain(|s| s.sid != "SignPromotionReceipts");
    }
    assert!(
        no_sign
            .violations(&performed)
            .iter()
            .any(|v| v.contains("kms:Sign") && v.contains(e2e::sfn::RIG_RECEIPT_KEY)),
        "kms:Sign was allowed without SignPromotionReceipts"
    );
    eprintln!(
        "IAM: {} distinct (identity, action, resource) checked, none refused; without {target}'s PushImages {} would be; actions: {actions:?}",
        performed.len(),
        refused.len()
    );
}

/// What the functions did: their AWS API calls and their registry requests, each with the
/// identity that made it.
fn performed(world: &EcrWorld, sfn: &e2e::sfn::LocalStepFunctions) -> BTreeSet<Performed> {
    let mut done = BTreeSet::new();
    for call in sfn.api_calls() {
        let account = call
            .assumed_role
            .as_deref()
            .and_then(|arn| arn.split(':').nth(4))
            .unwrap_or(LOCAL_SOURCE_ACCOUNT)
            .to_string();
        let resources: Vec<String> = match call.action.as_str() {
            "ecr:GetAuthorizationToken" => vec!["*".into()],
            a if a.starts_with("sts:")
                || a.starts_with("s3:")
                || a.starts_with("secretsmanager:")
                || a.starts_with("kms:") =>
            {
                call.resources.clone()
            }
            _ if call.resources.is_empty() => vec![repository_arn(&call.region, &account, "*")],
            _ => call
                .resources
                .iter()
                .map(|name| repository_arn(&call.region, &account, name))
                .collect(),
        };
        for resource in resources {
            done.insert(Performed {
                function: call.function.clone(),
                assumed_role: call.assumed_role.clone(),
                action: call.action.clone(),
                resource,
            });
        }
    }
    for (host, plane) in &world.planes {
        let (account, region) = ecr_host(host);
        // The registry token of another account comes from its target role.
        let assumed = (account != LOCAL_SOURCE_ACCOUNT)
            .then(|| format!("arn:aws:iam::{account}:role/ecr-replicator-target"));
        for op in plane
            .operations()
            .into_iter()
            .filter(|op| !op.function.is_empty())
        {
            done.insert(Performed {
                function: op.function,
                assumed_role: assumed.clone(),
                action: op.action.to_string(),
                resource: repository_arn(&region, &account, &op.repository),
            });
        }
    }
    done
}

/// The transformer helper itself: placeholders become JSON values, so a tag with a quote
/// cannot break the input.
#[test]
fn the_input_transformer_quotes_values_as_json() {
    let transformer = json!({"InputPathsMap": {"t": "$.detail.image-tag"},
        "InputTemplate": "{\"images\":[{\"tag\":<t>}]}"});
    let out = transform(&transformer, &json!({"detail": {"image-tag": "v1\"x"}}));
    assert_eq!(out, json!({"images": [{"tag": "v1\"x"}]}));
}
