//! Repositories with little work share a STANDARD child (a pack, `enumerate_pack`): a first
//! sync of many single-image repositories starts a child per page of tasks, not per
//! repository, and its report still counts what it cost as the rig counted it.

use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use e2e::sfn::LocalStepFunctions;
use serde_json::json;

/// Single-image repositories: three packs of at most 25 tasks (one child each, 60 before packs).
const SINGLES: u64 = 60;
/// Tags of a repository with more than a page of work: a child of its own, as before.
const BIG_TAGS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_image_repositories_share_children_and_the_report_counts_what_they_cost() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    for r in 0..SINGLES {
        let image = ImageBuilder::new(Format::Oci)
            .layer(1000 + r, 300)
            .layer(7, 200)
            .build();
        pusher.push(&format!("fleet/svc{r:02}"), "v1", &image).await;
    }
    for t in 0..BIG_TAGS {
        let image = ImageBuilder::new(Format::Oci).layer(5000 + t, 300).build();
        pusher.push("big/app", &format!("t{t:02}"), &image).await;
    }
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "referrers": false
    });
    let mut dry = input.clone();
    dry["dryRun"] = json!(true);

    let (plan, plan_counted, _) = run_counted(&sfn, &arn, &dry).await;
    // The CLI's `plan` (the same steps in process, before the copy) packs them as the
    // workflow does.
    let conns = replication::connect::Connections::new(replication::connect::Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Default::default()
    });
    let job: replication::Job = serde_json::from_value(dry.clone()).unwrap();
    let cli = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap();
    let cli_planned = serde_json::to_value(&cli.report.planned_cost).unwrap();
    let (copy, copy_counted, standard) = run_counted(&sfn, &arn, &input).await;
    let (again, again_counted, again_standard) = run_counted(&sfn, &arn, &input).await;

    let copy = copy.output.unwrap();
    assert_eq!(
        [copy["copied"].as_u64(), copy["failed"].as_u64()],
        [Some(SINGLES + BIG_TAGS), Some(0)],
        "{copy}"
    );
    // Three packs (25, 25 and 10 single-image repositories) and the large repository alone:
    // one STANDARD child each (61 without packs).
    assert!(
        standard <= 4,
        "{standard} STANDARD children for {SINGLES} single-image repositories and one large one"
    );
    // A pack's ranges share an EXPRESS child (CopyBatchedRanges), as its images do: two a pack
    // and two a page of the large repository (64 before batching: a range child per repository).
    assert!(
        copy_counted[3] <= 10,
        "{} EXPRESS children",
        copy_counted[3]
    );
    for r in [0, 24, 25, 59] {
        let reference = format!("fleet/svc{r:02}:v1");
        let at = |host: &str| e2e::skopeo::inspect_raw(&format!("{host}/{reference}"), None);
        assert_eq!(at(&dst.host), at(&src.host), "{reference}");
    }
    // Each report counts what its run cost, as the rig counted it; the dry run said beforehand
    // what the copy would cost.
    let plan = plan.output.unwrap();
    assert_eq!(cost_counts(&plan["cost"]), plan_counted, "{plan}");
    assert_eq!(cost_counts(&plan["plannedCost"]), copy_counted, "{plan}");
    assert_eq!(cost_counts(&copy["cost"]), copy_counted, "{copy}");
    assert_eq!(cost_counts(&cli_planned), copy_counted, "{cli_planned}");
    // Nothing left: every repository is settled without a child.
    let again = again.output.unwrap();
    assert_eq!(
        again["present"].as_u64(),
        Some(SINGLES + BIG_TAGS),
        "{again}"
    );
    assert_eq!(again_standard, 0);
    assert_eq!(cost_counts(&again["cost"]), again_counted, "{again}");
}

/// Runs `input`; returns the execution, what the rig counted for it (Lambda invocations,
/// STANDARD executions, billed transitions: states entered in it and its STANDARD children
/// and one per child a Distributed Map started; EXPRESS executions) and its STANDARD children.
async fn run_counted(
    sfn: &LocalStepFunctions,
    arn: &str,
    input: &serde_json::Value,
) -> (e2e::sfn::Execution, [u64; 4], u64) {
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
    (execution, counted, standard.len() as u64)
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
