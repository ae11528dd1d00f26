//! `coalesce-pushes`: turns a batch of ECR pushes into a few runs. Not a step of the state
//! machine: the function is fed by an SQS event source mapping (the push rule's queue), and each
//! message is the execution input the push rule used to start on its own (one image: repository,
//! tag, digest). A batch's pushes that share everything but the image become one job listing
//! them all (`images`, cut at `MAX_LISTED_IMAGES` and `MAX_JOB_BYTES`), started under a name
//! derived from that input and its messages, so a batch delivered again starts nothing new
//! (STANDARD workflows treat the same name with the same input as one execution).
//!
//! Every message is untrusted (anyone in the account with `sqs:SendMessage` on the queue can
//! send one): it must parse as a job naming exactly one image by tag and digest, pass the job's
//! validation (repository name, tag, digest and every other field), and, its image removed, be
//! this deployment's push job ([`PushTemplate`]: what the push rule sends, pinned by the CDK app
//! in `ECR_REPLICATOR_PUSH_JOB`), so a message can name at most one image, as a push can; one
//! that does not is reported (logged with its message ID and the field at fault, and in
//! [`CoalesceReport::malformed`]) and deleted, without holding up the rest of the batch. A push
//! the job's own repository or tag filters exclude is left out (the run would skip it anyway).
//! A run that cannot be started returns its messages to the queue
//! ([`BatchResponse::batch_item_failures`]); after the queue's receive limit they go to its
//! dead-letter queue.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{ImageSelector, Job, MAX_JOB_BYTES, MAX_LISTED_IMAGES};

/// The function's name.
pub const NAME: &str = "coalesce-pushes";

/// The environment variable naming the state machine the runs start in.
pub const STATE_MACHINE_VARIABLE: &str = "ECR_REPLICATOR_STATE_MACHINE_ARN";

/// The environment variable holding this deployment's push job without its image (JSON; the
/// CDK app writes what the push rule's input transformer produces, `images` left out).
pub const PUSH_JOB_VARIABLE: &str = "ECR_REPLICATOR_PUSH_JOB";

/// What every coalesced run's name starts with (the rest: 40 hex characters of a SHA-256).
pub const EXECUTION_PREFIX: &str = "push-";

/// An SQS event source mapping's event: the batch of messages.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SqsBatch {
    /// The messages.
    #[serde(rename = "Records", default)]
    pub records: Vec<SqsMessage>,
}

/// One SQS message (the fields the coalescer reads; the others are ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SqsMessage {
    /// The message's ID: the same when SQS delivers it again.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// The push rule's execution input for one pushed image.
    #[serde(default)]
    pub body: String,
}

/// What the function answers the event source mapping (`ReportBatchItemFailures`): the messages
/// to deliver again; every other message of the batch is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchResponse {
    /// The messages whose run could not be started.
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One message to deliver again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchItemFailure {
    /// Its message ID.
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// A message that is no push the coalescer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedPush {
    /// Its message ID.
    pub message_id: String,
    /// What is wrong, naming the field.
    pub problem: String,
}

/// A run to start: one job for some of a batch's pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRun {
    /// The execution's name: `push-` and the SHA-256 of its input and its message IDs.
    pub name: String,
    /// The execution input (a valid job).
    pub input: String,
    /// The images the job lists.
    pub images: usize,
    /// The messages it covers (duplicates of one push included).
    pub message_ids: Vec<String>,
}

/// What a batch comes to before anything is started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPlan {
    /// The runs, in a deterministic order.
    pub runs: Vec<PlannedRun>,
    /// Messages that are no valid push.
    pub malformed: Vec<MalformedPush>,
    /// Messages whose image the job's repository or tag filters exclude.
    pub excluded: Vec<String>,
    /// Messages naming an image another message of the batch already names.
    pub duplicates: usize,
}

/// A run the coalescer started (or found started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalescedRun {
    /// The run as planned.
    pub run: PlannedRun,
    /// What `StartExecution` did.
    pub outcome: ecr::StartOutcome,
}

/// A run that could not be started: its messages go back to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRun {
    /// The run as planned.
    pub run: PlannedRun,
    /// Why.
    pub error: String,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoalesceReport {
    /// Runs started (or already started by an earlier delivery).
    pub started: Vec<CoalescedRun>,
    /// Runs that could not be started.
    pub failed: Vec<FailedRun>,
    /// Messages that are no valid push (reported, deleted).
    pub malformed: Vec<MalformedPush>,
    /// Messages whose image the job's filters exclude (deleted).
    pub excluded: Vec<String>,
    /// Messages naming an image another message already names.
    pub duplicates: usize,
}

impl CoalesceReport {
    /// The answer to the event source mapping: the messages of the runs not started.
    pub fn response(&self) -> BatchResponse {
        BatchResponse {
            batch_item_failures: self
                .failed
                .iter()
                .flat_map(|f| &f.run.message_ids)
                .map(|id| BatchItemFailure {
                    item_identifier: id.clone(),
                })
                .collect(),
        }
    }
}

/// One image pushed: repository, tag, digest (ordered, so a batch's jobs list them in one order).
type PushedImage = (String, String, String);

/// The pushes of one job template (a push job without its image).
#[derive(Default)]
struct Group {
    template: Option<Job>,
    images: BTreeMap<PushedImage, Vec<String>>,
}

/// This deployment's push job without its image: the only job a message may ask for. Pinned at
/// start ([`PushTemplate::from_env`]); a message whose job, its one image removed, is not equal to
/// it (compared parsed, defaults filled in: not as text) is malformed.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTemplate {
    job: Job,
    /// Its compact JSON, parsed back: what a message's job is compared with to name a field.
    value: Value,
}

impl PushTemplate {
    /// Reads a push job template: strict JSON (no duplicate keys), a valid job, no `images`.
    pub fn from_json(text: &str) -> Result<Self> {
        let invalid = |problem: String| Error::invalid(PUSH_JOB_VARIABLE, problem);
        reject_duplicate_keys(text).map_err(invalid)?;
        let job = Job::from_json(text).map_err(|e| invalid(e.to_string()))?;
        if !job.images.is_empty() {
            return Err(invalid(
                "the push job template names no image (`images` is what each push adds)".into(),
            ));
        }
        let job = job
            .validate()
            .map_err(|e| invalid(format!("not a valid job: {e}")))?
            .job;
        let value = serde_json::to_value(&job).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { job, value })
    }

    /// The template in `ECR_REPLICATOR_PUSH_JOB`; missing or invalid, an error naming it.
    pub fn from_env() -> Result<Self> {
        let text = std::env::var(PUSH_JOB_VARIABLE).map_err(|_| {
            Error::invalid(
                PUSH_JOB_VARIABLE,
                "not set: the deployment's push job (the push rule's input without its image, JSON)",
            )
        })?;
        Self::from_json(&text)
    }

    /// The job itself (no images).
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// `None` when `job` (its images removed) is this template; else the first field that differs.
    fn difference(&self, job: &Job) -> Option<String> {
        if *job == self.job {
            return None;
        }
        let value = serde_json::to_value(job).unwrap_or(Value::Null);
        Some(
            first_difference(&self.value, &value, String::new())
                .unwrap_or_else(|| "(input)".into()),
        )
    }
}

/// The path of the first place `a` and `b` differ (`destinations[1].repositoryPrefix`), if any.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .find_map(|key| match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, at(key)),
                    _ => Some(at(key)),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ if path.is_empty() => Some("(input)".into()),
        _ => Some(path),
    }
}

/// Refuses JSON that repeats a key in any object (serde keeps the last of a map's, e.g.
/// `kmsKeyMapping`'s; a struct's is already an error).
fn reject_duplicate_keys(text: &str) -> std::result::Result<(), String> {
    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            d.deserialize_any(UniqueVisitor)
        }
    }
    struct UniqueVisitor;
    impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Unique, A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    serde_json::from_str::<Unique>(text)
        .map(|_| ())
        .map_err(|e| format!("(input): {e}"))
}

/// Reads one message: `Ok(None)` when the job's filters exclude its image.
fn read_push(
    template: &PushTemplate,
    body: &str,
) -> std::result::Result<Option<(Job, PushedImage)>, String> {
    reject_duplicate_keys(body)?;
    let mut job = Job::from_json(body).map_err(|e| e.to_string())?;
    let image = match job.images.as_slice() {
        [image] => image.clone(),
        images => {
            return Err(format!(
                "images: a push names exactly one image; this message names {}",
                images.len()
            ))
        }
    };
    let (Some(tag), Some(digest)) = (image.tag.clone(), image.digest.clone()) else {
        return Err("images[0]: a push names its tag and its digest".into());
    };
    let valid = job.clone().validate().map_err(|e| e.to_string())?;
    job.images.clear();
    if let Some(field) = template.difference(&job) {
        return Err(format!(
            "{field}: not this deployment's push job: field {field} differs"
        ));
    }
    if !valid.repositories.matches(&image.repository) || !valid.tags.tag_matches(&tag) {
        return Ok(None);
    }
    Ok(Some((job, (image.repository, tag, digest))))
}

/// Plans a batch: every message read, pushes grouped by job template, each group cut into jobs
/// of at most `MAX_LISTED_IMAGES` images and `MAX_JOB_BYTES` bytes; a message that is not
/// `template` with one image is malformed. Starts nothing.
pub fn plan_batch(template: &PushTemplate, batch: &SqsBatch) -> BatchPlan {
    let mut plan = BatchPlan::default();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for message in &batch.records {
        match read_push(template, &message.body) {
            Err(problem) => plan.malformed.push(MalformedPush {
                message_id: message.message_id.clone(),
                problem,
            }),
            Ok(None) => plan.excluded.push(message.message_id.clone()),
            Ok(Some((template, image))) => {
                let key = match serde_json::to_string(&template) {
                    Ok(key) => key,
                    Err(e) => {
                        plan.malformed.push(MalformedPush {
                            message_id: message.message_id.clone(),
                            problem: format!("(input): cannot be written back as JSON: {e}"),
                        });
                        continue;
                    }
                };
                let group = groups.entry(key).or_default();
                group.template.get_or_insert(template);
                let ids = group.images.entry(image).or_default();
                if !ids.is_empty() {
                    plan.duplicates += 1;
                }
                ids.push(message.message_id.clone());
            }
        }
    }
    for (key, group) in groups {
        let Some(template) = group.template else {
            continue;
        };
        let mut chunk: Vec<(ImageSelector, Vec<String>)> = Vec::new();
        let mut bytes = key.len();
        for ((repository, tag, digest), ids) in group.images {
            let selector = ImageSelector {
                repository,
                tag: Some(tag),
                digest: Some(digest),
            };
            // Compact JSON: the selector and a comma (one more than the list needs).
            let adds = serde_json::to_string(&selector).map_or(MAX_JOB_BYTES, |s| s.len() + 1);
            if !chunk.is_empty()
                && (chunk.len() >= MAX_LISTED_IMAGES || bytes + adds > MAX_JOB_BYTES)
            {
                plan_run(&template, std::mem::take(&mut chunk), &mut plan);
                bytes = key.len();
            }
            bytes += adds;
            chunk.push((selector, ids));
        }
        if !chunk.is_empty() {
            plan_run(&template, chunk, &mut plan);
        }
    }
    plan
}

/// One job of a group's images; a job that fails validation as a whole (it should not: each
/// image passed, and the size is kept) reports its messages malformed.
fn plan_run(template: &Job, chunk: Vec<(ImageSelector, Vec<String>)>, plan: &mut BatchPlan) {
    let mut job = template.clone();
    let mut message_ids = Vec::new();
    for (selector, ids) in chunk {
        job.images.push(selector);
        message_ids.extend(ids);
    }
    // The same messages in any order: the same name.
    message_ids.sort();
    let images = job.images.len();
    let checked = serde_json::to_string(&job)
        .map_err(|e| e.to_string())
        .and_then(|input| Job::parse(&input).map(|_| input).map_err(|e| e.to_string()));
    match checked {
        Ok(input) => {
            let mut named = input.clone();
            for id in &message_ids {
                named.push('\n');
                named.push_str(id);
            }
            let hash = oci::Digest::of(named.as_bytes());
            let name = format!("{EXECUTION_PREFIX}{}", &hash.hex()[..40]);
            plan.runs.push(PlannedRun {
                name,
                input,
                images,
                message_ids,
            });
        }
        Err(problem) => plan
            .malformed
            .extend(message_ids.into_iter().map(|message_id| MalformedPush {
                message_id,
                problem: format!("the batch's job for these pushes is invalid: {problem}"),
            })),
    }
}

/// Coalesces one batch: plans it ([`plan_batch`]), reports its malformed messages, and starts
/// each run in `executions`' state machine. Never fails as a whole: a run not started returns
/// its messages to the queue ([`CoalesceReport::response`]).
pub async fn coalesce_pushes(
    executions: &ecr::Executions,
    template: &PushTemplate,
    batch: &SqsBatch,
) -> CoalesceReport {
    let plan = plan_batch(template, batch);
    for m in &plan.malformed {
        tracing::error!(
            message_id = %m.message_id,
            problem = %m.problem,
            "malformed push event: not replicated (the daily reconciling run covers the repository)"
        );
    }
    let mut report = CoalesceReport {
        malformed: plan.malformed,
        excluded: plan.excluded,
        duplicates: plan.duplicates,
        ..CoalesceReport::default()
    };
    for run in plan.runs {
        match executions.start(&run.name, &run.input).await {
            Ok(outcome) => {
                tracing::info!(name = %run.name, images = run.images, messages = run.message_ids.len(), ?outcome, "pushes coalesced into a run");
                report.started.push(CoalescedRun { run, outcome });
            }
            Err(e) => {
                tracing::warn!(name = %run.name, error = %e, "run not started: its messages return to the queue");
                report.failed.push(FailedRun {
                    run,
                    error: e.to_string(),
                });
            }
        }
    }
    report
}

/// The state machine the coalesced runs start in, from `ECR_REPLICATOR_STATE_MACHINE_ARN`, and
/// a Step Functions client for this function's region (`AWS_ENDPOINT_URL` honoured).
pub async fn executions_from_env() -> Result<ecr::Executions> {
    let arn = std::env::var(STATE_MACHINE_VARIABLE)
        .ok()
        .filter(|arn| arn.starts_with("arn:") && arn.contains(":stateMachine:"))
        .ok_or_else(|| {
            Error::invalid(
                STATE_MACHINE_VARIABLE,
                "not set to a state machine ARN (arn:PARTITION:states:REGION:ACCOUNT:stateMachine:NAME)",
            )
        })?;
    let settings = ecr::AwsSettings::from_env();
    let client = ecr::sfn_client(&settings, &ecr::own_region()).await;
    Ok(ecr::Executions::new(client, arn))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{"source":{"registry":"111111111111.dkr.ecr.us-east-1.amazonaws.com"},"destinations":[{"registry":"222222222222.dkr.ecr.eu-west-1.amazonaws.com","kmsKeyMapping":{"*":"arn:aws:kms:eu-west-1:222222222222:key/good"}}]}"#;
    const IMAGE: &str = r#""images":[{"repository":"app","tag":"v1","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]"#;

    fn with_image(job: &str) -> String {
        format!("{},{IMAGE}}}", job.strip_suffix('}').unwrap())
    }

    #[test]
    fn a_push_is_the_template_with_one_image_whatever_its_key_order_and_spacing() {
        let template = PushTemplate::from_json(TEMPLATE).unwrap();
        let reordered = format!(
            r#"{{ {IMAGE}, "version": 1, "destinations": [{{"kmsKeyMapping": {{"*": "arn:aws:kms:eu-west-1:222222222222:key/good"}}, "registry": "222222222222.dkr.ecr.eu-west-1.amazonaws.com"}}],
            "source": {{"registry": "111111111111.dkr.ecr.us-east-1.amazonaws.com"}} }}"#
        );
        assert!(read_push(&template, &reordered).unwrap().is_some());
        let policy = with_image(&TEMPLATE.replacen('{', r#"{"copyRepositoryPolicy":true,"#, 1));
        assert_eq!(
            read_push(&template, &policy).unwrap_err(),
            "copyRepositoryPolicy: not this deployment's push job: field copyRepositoryPolicy differs"
        );
        let key = with_image(&TEMPLATE.replace("key/good", "key/other"));
        assert!(read_push(&template, &key)
            .unwrap_err()
            .contains("field destinations[0].kmsKeyMapping.* differs"));
    }

    #[test]
    fn a_repeated_key_is_refused_even_where_serde_would_keep_the_last() {
        let template = PushTemplate::from_json(TEMPLATE).unwrap();
        // A map's repeated key: the last wins in serde, so this would parse as the template.
        let repeated = with_image(&TEMPLATE.replace(
            r#"{"*":"arn"#,
            r#"{"*":"arn:aws:kms:eu-west-1:333333333333:key/evil","*":"arn"#,
        ));
        assert!(Job::from_json(&repeated).is_ok());
        let problem = read_push(&template, &repeated).unwrap_err();
        assert!(problem.contains("duplicate key `*`"), "{problem}");
        // A struct's: serde already refuses it.
        let twice = with_image(&TEMPLATE.replacen('{', r#"{"prune":true,"prune":false,"#, 1));
        assert!(read_push(&template, &twice).is_err());
        assert!(PushTemplate::from_json(&TEMPLATE.replacen(
            '{',
            r#"{"dryRun":true,"dryRun":false,"#,
            1
        ))
        .is_err());
    }

    #[test]
    fn the_template_names_no_image_and_is_a_valid_job() {
        let images = PushTemplate::from_json(&with_image(TEMPLATE)).unwrap_err();
        assert!(images.to_string().contains(PUSH_JOB_VARIABLE), "{images}");
        let invalid = PushTemplate::from_json(r#"{"source":{"registry":"x"}}"#).unwrap_err();
        assert!(invalid.to_string().contains(PUSH_JOB_VARIABLE), "{invalid}");
        let text = PushTemplate::from_json("not json").unwrap_err();
        assert!(text.to_string().contains(PUSH_JOB_VARIABLE), "{text}");
    }
}
