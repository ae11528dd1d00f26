//! CloudWatch metrics in the embedded metric format (EMF): a function writes one JSON line per
//! measurement to stdout and CloudWatch Logs turns it into metrics, with no API call and no
//! extra permission ("Using the embedded metric format with Lambda"; the document follows
//! "Specification: Embedded metric format"). Written only where `ECR_REPLICATOR_METRICS_NAMESPACE`
//! is set (the deployed functions and the local rig); the CLI writes none.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::cost::Cost;

/// The environment variable naming the metrics' namespace; unset: no metrics.
pub const NAMESPACE_VARIABLE: &str = "ECR_REPLICATOR_METRICS_NAMESPACE";

/// One metric of the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Images whose manifests were put now.
    ImagesCopied,
    /// Images the destination already had.
    ImagesPresent,
    /// Images that failed.
    ImagesFailed,
    /// Bytes streamed to the destination.
    BytesCopied,
    /// Seconds from the image's push to the source until it arrived in the destination: one
    /// value per copied image, written by `put-manifests` (namespace from
    /// `ECR_REPLICATOR_METRICS_NAMESPACE`, `EcrReplicator` when deployed; metric
    /// `ReplicationLag`, unit `Seconds`; dimension `Destination`, the destination registry
    /// host), so a dashboard or alarm reads p50/p99 per destination
    /// (`SELECT`/`Statistic: "p99"` over `EcrReplicator ReplicationLag Destination=<host>`).
    /// The value is the image result's `lagSeconds` (`ImageResult::lag_seconds` defines it);
    /// images of a source that reports no push time (not ECR) write none.
    ReplicationLag,
}

impl Metric {
    /// The metric's name and unit.
    pub fn name_and_unit(self) -> (&'static str, &'static str) {
        match self {
            Metric::ImagesCopied => ("ImagesCopied", "Count"),
            Metric::ImagesPresent => ("ImagesPresent", "Count"),
            Metric::ImagesFailed => ("ImagesFailed", "Count"),
            Metric::BytesCopied => ("BytesCopied", "Bytes"),
            Metric::ReplicationLag => ("ReplicationLag", "Seconds"),
        }
    }
}

/// The EMF document for some values of one destination (the `Destination` dimension).
pub fn document(
    namespace: &str,
    destination: &str,
    values: &[(Metric, f64)],
    at_ms: u128,
) -> Value {
    let values: Vec<_> = values
        .iter()
        .map(|(m, v)| (m.name_and_unit(), *v))
        .collect();
    document_with(namespace, ("Destination", destination), &values, at_ms)
}

/// The EMF document for named values under one dimension.
fn document_with(
    namespace: &str,
    (dimension, value): (&str, &str),
    values: &[((&str, &str), f64)],
    at_ms: u128,
) -> Value {
    let mut root = Map::new();
    let metrics: Vec<Value> = values
        .iter()
        .map(|((name, unit), _)| json!({"Name": name, "Unit": unit}))
        .collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": at_ms as u64,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [[dimension]],
                "Metrics": metrics,
            }],
        }),
    );
    root.insert(dimension.into(), json!(value));
    for ((name, _), value) in values {
        root.insert((*name).into(), json!(value));
    }
    Value::Object(root)
}

/// Writes one EMF line for a destination's values, when metrics are on.
pub fn emit(destination: &str, values: &[(Metric, f64)]) {
    if let Some((namespace, now)) = metrics_on() {
        if !values.is_empty() {
            println!("{}", document(&namespace, destination, values, now));
        }
    }
}

/// The namespace and the time in milliseconds, when metrics are on.
fn metrics_on() -> Option<(String, u128)> {
    let namespace = std::env::var(NAMESPACE_VARIABLE).ok()?;
    if namespace.is_empty() {
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Some((namespace, now))
}

/// The EMF document of a run's cost, under its state machine's name (the `StateMachine`
/// dimension; written once per run by its last step): the same counts as the report's `cost`.
pub fn cost_document(namespace: &str, state_machine: &str, cost: &Cost, at_ms: u128) -> Value {
    let values = [
        (
            ("LambdaInvocations", "Count"),
            cost.lambda_invocations as f64,
        ),
        (("LambdaGbSeconds", "None"), cost.lambda_gb_seconds),
        (
            ("StandardExecutions", "Count"),
            cost.standard_executions as f64,
        ),
        (
            ("StandardTransitions", "Count"),
            cost.standard_transitions as f64,
        ),
        (
            ("ExpressExecutions", "Count"),
            cost.express_executions as f64,
        ),
        (("ExpressGbSeconds", "None"), cost.express_gb_seconds),
        (
            ("CrossRegionBytes", "Bytes"),
            cost.cross_region_bytes as f64,
        ),
        (("InternetBytes", "Bytes"), cost.internet_bytes as f64),
        (("EstimatedCostUsd", "None"), cost.estimated_usd),
    ];
    document_with(namespace, ("StateMachine", state_machine), &values, at_ms)
}

/// Writes the EMF line of a run's cost, when metrics are on: `execution` is the execution's
/// ARN (`arn:<partition>:states:<region>:<account>:execution:<state machine>:<name>`).
pub fn emit_cost(execution: &str, cost: &Cost) {
    let state_machine = execution.split(':').nth(6).unwrap_or("unknown");
    if let Some((namespace, now)) = metrics_on() {
        println!("{}", cost_document(&namespace, state_machine, cost, now));
    }
}

/// Seconds since the epoch.
pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
