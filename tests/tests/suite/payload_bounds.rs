//! Every state of the workflow stays under Step Functions' 256 KiB payload limit in the worst
//! case the code allows (`States.DataLimitExceeded` cannot be caught: it would end the run with
//! no report). The worst case is built from the step types themselves with every bounded field
//! at its bound: names at ECR's maximum lengths, the job at `MAX_JOB_BYTES`, pages full, errors
//! at `MAX_ERROR_MESSAGE_CHARS`, every list at its listing limit. The state shapes mirror
//! `statemachine/replicate.asl.json`; the test reads the definition to check it still has them.
//! <https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html> (256 KiB)

use ecr::SettingChange;
use functions::MAX_ERROR_MESSAGE_CHARS;
use replication::job::{Mode, MAX_DESTINATIONS, MAX_JOB_BYTES};
use replication::steps::*;
use replication::steps::{
    MAX_PLAN_BYTES, PACKED_NAME_BYTES, PAGE_PLAN_BYTES, PAGE_TASK_BYTES, REPOSITORIES_PER_PACK,
    REPOSITORIES_PER_PAGE, TASKS_PER_PAGE,
};
use serde_json::{json, Value};

const LIMIT: usize = 256 * 1024;
/// ECR: repository names up to 256 characters, tags up to 128; a registry host (FIPS, China).
const REPOSITORY: usize = 256;
const TAG: usize = 128;
const HOST: usize = 80;
/// An ECR `nextToken` is opaque; those seen are well under this.
const NEXT_TOKEN: usize = 2048;

fn text(n: usize) -> String {
    "x".repeat(n)
}

fn digest() -> String {
    format!("sha256:{}", "a".repeat(64))
}

/// A job of exactly `MAX_JOB_BYTES` (what validation lets through), as JSON.
fn job() -> Value {
    json!({"source": {"registry": text(HOST)}, "destinations": [], "pad": text(MAX_JOB_BYTES)})
}

/// The Cause Step Functions records for a Lambda error: the error payload as JSON.
fn caught_error() -> String {
    let payload =
        json!({"errorType": "ReplicationRetryable", "errorMessage": text(MAX_ERROR_MESSAGE_CHARS)});
    format!("ReplicationRetryable: {payload}")
}

fn task(tags: usize) -> ImageTask {
    ImageTask {
        repository: text(REPOSITORY),
        digest: oci::Digest::parse(&digest()).unwrap(),
        tags: vec![text(TAG); tags],
        destination: MAX_DESTINATIONS - 1,
        target_registry: text(HOST),
        target_repository: text(REPOSITORY),
        present: false,
        referrers: Vec::new(),
        // Both hints on: they are serialised only when true, so this is the longer form.
        tags_absent: true,
        repository_absent: true,
        pushed_at: Some(i64::MIN),
        // A platform subset's digest: present only then, so this is the longer form.
        target_digest: Some(oci::Digest::parse(&digest()).unwrap()),
        // What admitted a signed image: at most MAX_ADMISSION_CHARS.
        signed_by: Some(text(replication::signatures::MAX_ADMISSION_CHARS)),
    }
}

/// A full page: at most `TASKS_PER_PAGE` tasks, their tags filling `PAGE_TASK_BYTES`.
fn full_page() -> Vec<ImageTask> {
    let base = serde_json::to_vec(&task(0)).unwrap().len();
    // A page ends before TASKS_PER_PAGE tasks or PAGE_TASK_BYTES of them, whichever comes
    // first: worst-case tasks (longest names, `signedBy`) fill it by bytes.
    let count = TASKS_PER_PAGE.min(PAGE_TASK_BYTES / (base + 1)).max(1);
    let tags_each = (PAGE_TASK_BYTES / count).saturating_sub(base) / (TAG + 3);
    let page = vec![task(tags_each); count];
    assert!(serde_json::to_vec(&page).unwrap().len() <= PAGE_TASK_BYTES + 1024);
    page
}

fn failed_result(task: &ImageTask) -> ImageResult {
    ImageResult::for_task(task, ImageStatus::Failed, 0, Some(caught_error()))
}

fn ensure_output() -> EnsureRepositoryOutput {
    EnsureRepositoryOutput {
        registry: text(HOST),
        repository: text(REPOSITORY),
        created: true,
        // The longest each change can be: tag mutability with ECR's 5 exclusion filters of 128
        // characters a side; resource tags as a count and 5 keys; policies shortened to 100.
        changes: vec![
            change("tagMutability", 30 + 5 * 130, 30 + 5 * 130),
            change("scanOnPush", 5, 5),
            change("lifecyclePolicy", 100, 100),
            change("repositoryPolicy", 100, 100),
            change("tags", 20, 20 + 5 * 67 + 20),
        ],
        // The kept-protection notes (tag mutability names both sides), the policy statements
        // left out.
        drift: [vec![text(1600), text(500)], vec![text(300); 6]].concat(),
        skipped: Some(text(200)),
        pruned: vec![text(TAG); 1000],
        prune_kept: vec![format!("{}: {}", text(TAG), text(200)); 1000],
        pruned_count: 0,
        prune_kept_count: 0,
    }
    .bounded()
}

fn change(setting: &str, from: usize, to: usize) -> SettingChange {
    SettingChange {
        setting: setting.into(),
        from: text(from),
        to: text(to),
    }
}

/// A difference with the longest target and detail a verification writes.
fn longest_difference(kind: DifferenceKind) -> Difference {
    Difference {
        kind,
        repository: text(REPOSITORY),
        target: format!("{}/{}:{}", text(HOST), text(REPOSITORY), text(TAG)),
        detail: text(MAX_ERROR_CHARS + 100),
    }
}

/// An unsigned image's result with the longest reason, as `enumerate-images` lists it.
fn unsigned_result(task: &ImageTask) -> ImageResult {
    let mut result = failed_result(task);
    result.status = ImageStatus::Unsigned;
    result.listed()
}

/// A refused name's result (an invalid tag, an artifact the gate does not cover) with the
/// longest reason; it travels as unsigned results do.
fn refused_result(task: &ImageTask) -> ImageResult {
    let mut result = failed_result(task);
    result.status = ImageStatus::Refused;
    result.listed()
}

/// An image archived in the source or a destination, with the longest reason: listed in the
/// report's `archivedImages`.
fn archived_result(task: &ImageTask) -> ImageResult {
    let mut result = failed_result(task);
    result.status = ImageStatus::Archived;
    result.listed()
}

/// A report whose lists are full, built the way `summarise` builds it: a replication's (image
/// failures, prune lists, unsigned, refused and archived images) or a verification's (differences); both with failed
/// repositories. A run is one or the other (`mode`).
fn full_report(listed: usize, mode: Mode) -> RunReport {
    let mut report = RunReport::default();
    let t = task(50);
    match mode {
        Mode::Replicate => {
            for _ in 0..100 {
                report.add(&failed_result(&t));
                report.add_repository(&ensure_output());
                report.add(&unsigned_result(&t));
                report.add(&refused_result(&t));
                report.add(&archived_result(&t));
            }
        }
        Mode::Verify => {
            let mut verify = VerifyReport::default();
            for kind in [
                DifferenceKind::Missing,
                DifferenceKind::Different,
                DifferenceKind::Extra,
            ] {
                for _ in 0..100 {
                    verify.add(longest_difference(kind));
                }
            }
            report.verify = Some(verify);
        }
    }
    report.repositories_failed = 100;
    report.repository_failures = vec![
        RepositoryFailure {
            repository: text(REPOSITORY),
            error: caught_error(),
        };
        MAX_FAILURES_LISTED
    ];
    // Every cost counted, at widths a run does not reach (a billion calls, states and
    // executions; a petabyte each way; a million dollars); a dry run's planned cost too.
    let wide = replication::cost::Cost {
        lambda_invocations: 10u64.pow(9),
        lambda_gb_seconds: 1e9 + 0.123,
        standard_executions: 10u64.pow(9),
        standard_transitions: 10u64.pow(9),
        express_executions: 10u64.pow(9),
        express_gb_seconds: 1e9 + 0.123,
        cross_region_bytes: 10u64.pow(15),
        internet_bytes: 10u64.pow(15),
        estimated_usd: 1e6 + 0.123456,
    };
    report.cost = wide.clone();
    report.planned_cost = Some(wide);
    let mut merged = RunReport::default();
    merged.merge(&report);
    merged.limit_lists(listed);
    merged
}

/// A repository child's output: its report (lists of `CHILD_LISTED`), or the same with its own
/// failure added by the `RepositoryFailed` Pass (not truncated there).
fn child_output(mode: Mode) -> Value {
    let mut report = serde_json::to_value(full_report(CHILD_LISTED, mode)).unwrap();
    report["repositoriesFailed"] = json!(1);
    report["repositoryFailures"] =
        json!([{"repository": text(REPOSITORY), "error": caught_error()}]);
    // A child that handed back names where to go on (an enumerate-images token: a kept
    // selection's id of at most 64 characters and an offset).
    json!({"repository": text(REPOSITORY), "report": report, "nextToken": text(85)})
}

/// A page's packs (`enumerate-repositories`' `packs`) at their bound: ECR's longest names
/// filling `PACKED_NAME_BYTES` (as the page counts a name: its length and 3), in packs of at
/// most `REPOSITORIES_PER_PACK`, one entry per item of the page.
fn full_packs(items: usize) -> Vec<Vec<String>> {
    let names = PACKED_NAME_BYTES / (REPOSITORY + 3);
    let mut packs: Vec<Vec<String>> = vec![Vec::new(); items];
    for (at, pack) in packs.iter_mut().enumerate() {
        let start = at * REPOSITORIES_PER_PACK;
        *pack = vec![text(REPOSITORY); names.saturating_sub(start).min(REPOSITORIES_PER_PACK)];
    }
    assert_eq!(
        packs.iter().flatten().count(),
        names.min(items * REPOSITORIES_PER_PACK)
    );
    packs
}

/// The largest pack one child can be given.
fn full_pack() -> Vec<String> {
    full_packs(1).remove(0)
}

fn size(what: &str, value: &Value) -> usize {
    let bytes = serde_json::to_vec(value).unwrap().len();
    eprintln!(
        "{what}: {bytes} bytes ({:.0}% of 256 KiB)",
        bytes as f64 * 100.0 / LIMIT as f64
    );
    assert!(
        bytes < LIMIT,
        "{what} can reach {bytes} bytes, over 256 KiB"
    );
    bytes
}

#[test]
fn the_largest_state_of_every_execution_fits_256_kib() {
    let definition: Value = serde_json::from_str(
        &std::fs::read_to_string(e2e::sfn::workspace().join("statemachine/replicate.asl.json"))
            .unwrap(),
    )
    .unwrap();
    let states = &definition["States"];
    // The shapes below are those of the definition.
    assert_eq!(
        states["ForEachRepository"]["ResultPath"],
        "$.repositoryReports"
    );
    let repo = &states["ForEachRepository"]["ItemProcessor"]["States"];
    assert_eq!(
        repo["SummariseImages"]["Parameters"]["list"],
        json!(CHILD_LISTED)
    );
    assert_eq!(repo["ForEachImage"]["ResultPath"], "$.results");
    assert_eq!(repo["ForEachImage"]["ItemsPath"], "$.page.images");
    assert_eq!(
        repo["RepositoryDone"]["Parameters"],
        json!({"repository.$": "$.repository", "report.$": "$.report"})
    );

    // Parent, at the end of ForEachRepository: the page, the running report, one report per
    // repository of the page; a page holding packs holds one repository fewer (their names take
    // its room: `Packer::used`), a verification's none (only a replication's check packs).
    for (mode, packed) in [
        (Mode::Replicate, false),
        (Mode::Replicate, true),
        (Mode::Verify, false),
    ] {
        // Repositories handed back by the previous page's children wait in the report.
        let mut report = serde_json::to_value(full_report(MAX_FAILURES_LISTED, mode)).unwrap();
        report["continuations"] = json!(vec![
            json!({"repository": text(REPOSITORY), "nextToken": text(85)});
            REPOSITORIES_PER_PAGE
        ]);
        let items = REPOSITORIES_PER_PAGE - usize::from(packed);
        let packs = match packed {
            true => full_packs(items),
            false => vec![Vec::new(); items],
        };
        let parent = json!({
            "job": job(),
            "concurrency": {"repositories": 1000, "images": 5},
            "repositories": vec![text(REPOSITORY); items],
            "packs": packs,
            "nextToken": text(NEXT_TOKEN),
            "report": report,
            "repositoryReports": vec![child_output(mode); items],
            "pages": 500,
            "pagesPerExecution": 500,
            "pagesPerChild": 400,
        });
        size(
            &format!("parent state after ForEachRepository ({mode:?}, packs: {packed})"),
            &parent,
        );
    }

    // Parent, after EnumerateRepositories: its result replaces the state (the running report
    // given comes back with the settled repositories added, the job validated).
    assert_eq!(states["EnumerateRepositories"]["ResultPath"], "$");
    assert_eq!(
        states["UseValidatedJob"]["Parameters"]["report.$"],
        "$.report"
    );
    let parent = json!({
        "job": job(),
        "concurrency": {"repositories": 1000, "images": 5},
        "repositories": vec![text(REPOSITORY); REPOSITORIES_PER_PAGE - 1],
        "packs": full_packs(REPOSITORIES_PER_PAGE - 1),
        "report": full_report(MAX_FAILURES_LISTED, Mode::Replicate),
        "settled": 1_000_000,
        "refused": vec![text(REPOSITORY); ENSURE_LISTED],
        "nextToken": text(NEXT_TOKEN),
    });
    size("parent state after EnumerateRepositories", &parent);

    // A repository's child execution, at the end of ForEachImage: its page plan at its bound,
    // every image failed with the longest error (results in their listed form, as
    // `put-manifests` returns them), every range failed (only the error name is kept), every
    // destination's ensure output.
    let assert_shapes = |state: &str, expected: &[&str]| {
        let params = repo[state]["Parameters"].as_object().unwrap();
        for key in expected {
            assert!(params.contains_key(*key), "{state} lost {key}");
        }
    };
    assert_shapes(
        "TakePage",
        &["page.$", "results", "copied", "present.$", "unsigned.$"],
    );
    assert_eq!(repo["PlanPage"]["ResultPath"], "$.page");
    // A dry run's plan stays in `$.page` (held once): no state copies it elsewhere.
    assert_eq!(
        repo["DryRunOrCopy"]["Choices"][0]["Next"],
        "SummariseImages"
    );
    assert_eq!(repo["SummariseImages"]["Parameters"]["plan.$"], "$.page");
    assert!(!serde_json::to_string(repo).unwrap().contains("$.dryRun"));
    assert_eq!(repo["CopyPageRanges"]["ResultPath"], "$.copied");
    let range_failed = &repo["CopyPageRanges"]["ItemProcessor"]["States"]["RangeFailed"];
    assert_eq!(range_failed["Parameters"]["error.$"], "$.error.Error");
    let page = full_page();
    let results: Vec<ImageResult> = page.iter().map(|t| failed_result(t).listed()).collect();
    let results_of_page = results.clone();
    // A range is at least its representative task and one blob.
    let mut representative = task(0);
    representative.tags.clear();
    let range_bytes = serde_json::to_vec(&representative).unwrap().len() + 100;
    let ranges = PAGE_PLAN_BYTES / range_bytes;
    // Step Functions error names are at most 256 characters.
    let copied = vec![json!({"bytes": 0, "error": text(256)}); ranges];
    let child = json!({
        "job": job(),
        "imageConcurrency": 5,
        "repository": text(REPOSITORY),
        "pack": [],
        "packReport": null,
        "nextToken": text(20),
        "present": 1000,
        "report": full_report(CHILD_LISTED, Mode::Replicate),
        "repositories": vec![ensure_output(); MAX_DESTINATIONS],
        "page": text(PAGE_PLAN_BYTES),
        "unsigned": vec![unsigned_result(&task(50)); UNSIGNED_PER_PAGE],
        "results": results,
        "copied": copied.clone(),
        "error": {"Error": "ReplicationFailed", "Cause": caught_error()},
    });
    size("repository child after ForEachImage", &child);
    packs_and_range_batches(repo, &child, &page);
    size("repository child output", &child_output(Mode::Replicate));
    // The page itself, from enumerate-images, before it is planned.
    size(
        "repository child after EnumerateImages",
        &json!({"job": job(), "repositories": vec![ensure_output(); MAX_DESTINATIONS],
            "images": {"images": page, "present": 1, "selected": 1, "nextToken": text(20)},
            "report": full_report(CHILD_LISTED, Mode::Replicate)}),
    );

    // The page's image child (ForEachImage's ItemBatcher: one batch of the page's tasks): its
    // input, the page's planned images (within the page plan) and the batch input (the job,
    // the range results); its output, every task's result. Each within 256 KiB whatever the
    // batcher's own bound (MaxInputBytesPerBatch, at most 256 KiB) does.
    let batcher = &repo["ForEachImage"]["ItemBatcher"];
    assert_eq!(
        batcher["BatchInput"],
        json!({"job.$": "$.job", "copied.$": "$.copied", "imageConcurrency.$": "$.imageConcurrency"})
    );
    assert!(batcher["MaxInputBytesPerBatch"].as_u64().unwrap() <= 256 * 1024);
    size(
        "image child (a page's tasks) input",
        &json!({"Items": [text(PAGE_PLAN_BYTES)],
            "BatchInput": {"job": job(), "copied": copied.clone(), "imageConcurrency": 5}}),
    );
    size(
        "image child (a page's tasks) output",
        &json!(results_of_page),
    );
    // Each of its tasks (PutImages' iteration, as an image's child was): its task, alone on a
    // page at most, its planned entry (the task again, with an error) and the page's range
    // results.
    let alone = task((PAGE_TASK_BYTES - 1024) / (TAG + 3));
    let image = json!({
        "job": job(),
        "image": alone,
        "planned": {"image": alone, "bytes": 1, "present": false, "error": caught_error()},
        "copied": copied,
        "error": {"Error": "ReplicationFailed", "Cause": caught_error()},
    });
    size("image child", &image);
    // A page plan is at most PAGE_PLAN_BYTES, but one image is always planned: its plan alone
    // (its ranges at most MAX_PLAN_BYTES), the page's tasks and every other image's error
    // must fit that bound too.
    let errors = TASKS_PER_PAGE * (caught_error().len() + 100);
    assert!(
        PAGE_TASK_BYTES + errors + MAX_PLAN_BYTES <= PAGE_PLAN_BYTES,
        "a one-image plan can exceed PAGE_PLAN_BYTES"
    );
    // A segment loop's state: the upload state is small.
    let segment = json!({"job": job(), "image": alone, "range": text(200), "state": text(2048),
        "bytesBefore": u64::MAX, "out": {"range": text(200), "state": text(2048)}});
    size("segment loop state", &segment);
}

/// A pack's child (its pack and the page's report of its repositories instead of ensure
/// outputs) and a batch of a page's ranges, beside `child`, a repository child's largest state,
/// and `page`, a full page of tasks.
fn packs_and_range_batches(repo: &Value, child: &Value, page: &[ImageTask]) {
    // A pack's child: no ensure outputs (its calls ensure its repositories themselves), its
    // pack and the page's report of them (lists of `CHILD_LISTED`, as the child's own) instead.
    let params = repo["TakePage"]["Parameters"].as_object().unwrap();
    assert!(params.contains_key("pack.$") && params.contains_key("packReport.$"));
    let mut pack_child = child.clone();
    pack_child["pack"] = json!(full_pack());
    pack_child["repositories"] = json!([]);
    pack_child["packReport"] = json!(full_report(CHILD_LISTED, Mode::Replicate));
    size("pack child after ForEachImage", &pack_child);
    size(
        "pack child after EnumerateImages",
        &json!({"job": job(), "repository": text(REPOSITORY), "pack": full_pack(),
            "repositories": [], "report": full_report(CHILD_LISTED, Mode::Replicate),
            "images": {"images": page, "present": 1, "selected": 1, "nextToken": text(20),
                "report": full_report(CHILD_LISTED, Mode::Replicate)}}),
    );
    // A batch of a page's ranges (CopyBatchedRanges' ItemBatcher): its input, the ranges (a
    // part of the page plan) and the job; its output, each range's outcome.
    let ranges_batcher = &repo["CopyBatchedRanges"]["ItemBatcher"];
    assert_eq!(
        ranges_batcher["BatchInput"],
        json!({"job.$": "$.job", "imageConcurrency.$": "$.imageConcurrency"})
    );
    assert_eq!(
        ranges_batcher["MaxItemsPerBatch"].as_u64(),
        Some(replication::steps::RANGES_PER_CHILD)
    );
    size(
        "range batch child input",
        &json!({"Items": [text(PAGE_PLAN_BYTES)],
            "BatchInput": {"job": job(), "imageConcurrency": 5}}),
    );
    size(
        "range batch child output",
        &json!(vec![json!({"bytes": u64::MAX, "error": text(256)}); 25]),
    );
}
