//! CloudWatch metrics in the embedded metric format (EMF): a function writes one JSON line per
//! measurement to stdout and CloudWatch Logs turns it into metrics, with no API call and no
//! extra permission ("Using the embedded metric format with Lambda"; the document follows
//! "Specification: Embedded metric format"). Written only where `ECR_REPLICATOR_METRICS_NAMESPACE`
//! is set (the deployed functions and the local rig); the CLI writes none.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

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
    /// Seconds from the image's push to the source until it arrived in the destination.
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
    let mut root = Map::new();
    let metrics: Vec<Value> = values
        .iter()
        .map(|(metric, _)| {
            let (name, unit) = metric.name_and_unit();
            json!({"Name": name, "Unit": unit})
        })
        .collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": at_ms as u64,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Destination"]],
                "Metrics": metrics,
            }],
        }),
    );
    root.insert("Destination".into(), json!(destination));
    for (metric, value) in values {
        root.insert(metric.name_and_unit().0.into(), json!(value));
    }
    Value::Object(root)
}

/// Writes one EMF line for a destination's values, when metrics are on.
pub fn emit(destination: &str, values: &[(Metric, f64)]) {
    let Ok(namespace) = std::env::var(NAMESPACE_VARIABLE) else {
        return;
    };
    if values.is_empty() || namespace.is_empty() {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    println!("{}", document(&namespace, destination, values, now));
}

/// Seconds since the epoch.
pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
