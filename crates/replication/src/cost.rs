//! What a run costs: Lambda invocations and GB-seconds, Step Functions executions and state
//! transitions by workflow type, bytes moved across regions or out to the internet, and an
//! estimate in dollars from a price table.
//!
//! The counts follow the state machine state by state (`statemachine/replicate.asl.json`): each
//! step that returns a report adds the states and calls of the part of the workflow it ends
//! (a page of repositories, a page of images, a repository's child). Step Functions bills a
//! STANDARD workflow per state entered (retries included) and an EXPRESS one per execution and
//! GB-second of duration in 64 MB steps; Lambda per request and GB-second ("AWS Step Functions
//! Pricing", "AWS Lambda Pricing"). A Distributed Map is billed one state transition for each
//! child execution it starts, EXPRESS children included ("Transitions in Distributed Map
//! states", <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-transitions.html>):
//! [`MAP_CHILD_START_TRANSITIONS`]. Data between ECR and a function in another region is billed
//! as data transfer on both sides ("Understanding data transfer costs for AWS container
//! services"). What the counts leave out: retries (each retried call and state is billed
//! again), failed states' Catch paths, and EventBridge events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::CopyRange;

/// The environment variable with the price table's overrides (JSON, any of its fields).
pub const PRICES_VARIABLE: &str = "ECR_REPLICATOR_PRICES";

/// What a run cost (or, for `plannedCost`, will cost), by what AWS bills.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// Lambda invocations.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lambda_invocations: u64,
    /// Lambda GB-seconds: measured by the functions that return a report, estimated from the
    /// price table's assumptions for the others (copies from their bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lambda_gb_seconds: f64,
    /// STANDARD executions: the run's, each repository's child, each range copied in segments.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub standard_executions: u64,
    /// State transitions as Step Functions bills them: states entered in STANDARD executions
    /// (parent and children), and one for each child execution a Distributed Map starts
    /// (EXPRESS children included).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub standard_transitions: u64,
    /// EXPRESS executions: a page's small ranges and each image's manifests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub express_executions: u64,
    /// EXPRESS GB-seconds (estimated: the child's calls' time at 64 MB).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub express_gb_seconds: f64,
    /// Bytes that crossed between AWS regions (each side counted: pulled from an ECR registry
    /// of another region than the functions', pushed to one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cross_region_bytes: u64,
    /// Bytes pushed out of AWS (to a destination that is not ECR).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub internet_bytes: u64,
    /// The dollars of all the above at the price table's prices.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_usd: f64,
}

/// Whether a count or figure is zero: such fields are left out of reports (serde's
/// `skip_serializing_if`), here and in the report and plan types.
pub(crate) fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A figure rounded to `places` decimals (reports stay small; these are estimates).
fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

impl Cost {
    /// Adds another cost.
    pub fn add(&mut self, other: &Cost) {
        self.lambda_invocations += other.lambda_invocations;
        self.lambda_gb_seconds += other.lambda_gb_seconds;
        self.standard_executions += other.standard_executions;
        self.standard_transitions += other.standard_transitions;
        self.express_executions += other.express_executions;
        self.express_gb_seconds += other.express_gb_seconds;
        self.cross_region_bytes += other.cross_region_bytes;
        self.internet_bytes += other.internet_bytes;
        self.estimated_usd += other.estimated_usd;
    }

    /// Takes away another cost's counts (an estimate replacing a part: never below zero).
    pub fn subtract(&mut self, other: &Cost) {
        self.lambda_invocations = self
            .lambda_invocations
            .saturating_sub(other.lambda_invocations);
        self.lambda_gb_seconds = (self.lambda_gb_seconds - other.lambda_gb_seconds).max(0.0);
        self.standard_executions = self
            .standard_executions
            .saturating_sub(other.standard_executions);
        self.standard_transitions = self
            .standard_transitions
            .saturating_sub(other.standard_transitions);
        self.express_executions = self
            .express_executions
            .saturating_sub(other.express_executions);
        self.express_gb_seconds = (self.express_gb_seconds - other.express_gb_seconds).max(0.0);
        self.cross_region_bytes = self
            .cross_region_bytes
            .saturating_sub(other.cross_region_bytes);
        self.internet_bytes = self.internet_bytes.saturating_sub(other.internet_bytes);
        self.estimated_usd = (self.estimated_usd - other.estimated_usd).max(0.0);
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Cost::default()
    }

    /// States entered in a STANDARD workflow.
    pub fn transitions(states: u64) -> Self {
        Cost {
            standard_transitions: states,
            ..Cost::default()
        }
    }

    /// The calling function's own invocation: one call, its time so far at its memory
    /// (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, set by Lambda; outside Lambda no GB-seconds).
    pub fn this_call(started: std::time::Instant) -> Self {
        let memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|m| m.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Cost {
            lambda_invocations: 1,
            lambda_gb_seconds: started.elapsed().as_secs_f64() * memory_mb / 1024.0,
            ..Cost::default()
        }
    }
}

/// Prices (US dollars, us-east-1, arm64 functions, on-demand, no free tier) and the
/// assumptions behind the estimated parts. Other regions differ: a deployment sets its own in
/// `ECR_REPLICATOR_PRICES` (the CDK config's `prices`), any field, the others keeping these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CostModel {
    /// Per Lambda request ($0.20 per million).
    pub lambda_request: f64,
    /// Per Lambda GB-second (arm64, first tier).
    pub lambda_gb_second: f64,
    /// Per STANDARD state transition ($0.025 per 1,000).
    pub standard_transition: f64,
    /// Per EXPRESS request ($1.00 per million).
    pub express_request: f64,
    /// Per EXPRESS GB-second (first tier).
    pub express_gb_second: f64,
    /// Per GB between regions, each side.
    pub cross_region_gb: f64,
    /// Per GB out to the internet (first tier).
    pub internet_gb: f64,
    /// Assumed: seconds of a call that does not measure itself (listing, planning, putting
    /// manifests, ensuring a repository).
    pub call_seconds: f64,
    /// Assumed: the memory of such a call, MB (the CDK app's default).
    pub call_memory_mb: f64,
    /// The copy function's memory, MB (the CDK app's `copy-blobs`).
    pub copy_memory_mb: f64,
    /// Assumed: megabytes a copy call streams per second.
    pub copy_megabytes_per_second: f64,
    /// The region the functions run in (`AWS_REGION`): ECR registries elsewhere are across
    /// regions.
    pub region: String,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            lambda_request: 0.000_000_2,
            lambda_gb_second: 0.000_013_333_4,
            standard_transition: 0.000_025,
            express_request: 0.000_001,
            express_gb_second: 0.000_016_67,
            cross_region_gb: 0.02,
            internet_gb: 0.09,
            call_seconds: 1.0,
            call_memory_mb: 256.0,
            copy_memory_mb: 3008.0,
            copy_megabytes_per_second: 80.0,
            region: ecr::own_region(),
        }
    }
}

/// The state transitions Step Functions bills a Distributed Map for each child execution it
/// starts, STANDARD or EXPRESS: "you're charged one state transition for each child workflow
/// execution that the Distributed Map state starts" ("Transitions in Distributed Map states",
/// <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-transitions.html>). Billed on
/// top of the states a STANDARD child enters; an EXPRESS child's states are not transitions.
pub const MAP_CHILD_START_TRANSITIONS: u64 = 1;

/// Tasks a `ForEachImage` child takes (its `ItemBatcher`'s `MaxItemsPerBatch`, a page's
/// tasks at most: one child a page; `tests/tests/suite/asl.rs` checks the definition says so).
pub const IMAGES_PER_CHILD: u64 = 25;

/// Billed memory of an EXPRESS execution that only waits on its calls (the first 64 MB step).
const EXPRESS_GB: f64 = 64.0 / 1024.0;

impl CostModel {
    /// The default table with the overrides of `ECR_REPLICATOR_PRICES`, if set; an unknown
    /// field or a negative price is an error naming it.
    pub fn from_env() -> Result<Self> {
        match std::env::var(PRICES_VARIABLE) {
            Ok(text) if !text.trim().is_empty() => Self::from_json(&text),
            _ => Ok(Self::default()),
        }
    }

    /// The default table with the overrides of a JSON object.
    pub fn from_json(text: &str) -> Result<Self> {
        let model: CostModel = serde_json::from_str(text)
            .map_err(|e| Error::invalid(PRICES_VARIABLE, e.to_string()))?;
        let numbers = [
            ("lambdaRequest", model.lambda_request),
            ("lambdaGbSecond", model.lambda_gb_second),
            ("standardTransition", model.standard_transition),
            ("expressRequest", model.express_request),
            ("expressGbSecond", model.express_gb_second),
            ("crossRegionGb", model.cross_region_gb),
            ("internetGb", model.internet_gb),
            ("callSeconds", model.call_seconds),
            ("callMemoryMb", model.call_memory_mb),
            ("copyMemoryMb", model.copy_memory_mb),
        ];
        for (field, value) in numbers {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::invalid(
                    format!("{PRICES_VARIABLE}.{field}"),
                    format!("{value} is not a price or size (a number of at least 0)"),
                ));
            }
        }
        if !(model.copy_megabytes_per_second.is_finite() && model.copy_megabytes_per_second > 0.0) {
            return Err(Error::invalid(
                format!("{PRICES_VARIABLE}.copyMegabytesPerSecond"),
                "must be a number above 0",
            ));
        }
        Ok(model)
    }

    /// The cost with its dollars computed at these prices.
    pub fn priced(&self, mut cost: Cost) -> Cost {
        const GB: f64 = 1e9;
        cost.estimated_usd = cost.lambda_invocations as f64 * self.lambda_request
            + cost.lambda_gb_seconds * self.lambda_gb_second
            + cost.standard_transitions as f64 * self.standard_transition
            + cost.express_executions as f64 * self.express_request
            + cost.express_gb_seconds * self.express_gb_second
            + cost.cross_region_bytes as f64 / GB * self.cross_region_gb
            + cost.internet_bytes as f64 / GB * self.internet_gb;
        cost.estimated_usd = rounded(cost.estimated_usd, 6);
        cost.lambda_gb_seconds = rounded(cost.lambda_gb_seconds, 3);
        cost.express_gb_seconds = rounded(cost.express_gb_seconds, 3);
        cost
    }

    /// A repository child's execution and what it does before its first page: its start (a
    /// transition of `ForEachRepository`), its states and one `ensure-repository` call per
    /// destination.
    pub fn child_start(&self, destinations: usize) -> Cost {
        let mut cost = self.calls(destinations as u64);
        cost.standard_executions = 1;
        cost.standard_transitions =
            MAP_CHILD_START_TRANSITIONS + child_start_states(destinations as u64);
        cost
    }

    /// `calls` invocations that do not measure themselves, at the assumed time and memory.
    pub fn calls(&self, calls: u64) -> Cost {
        Cost {
            lambda_invocations: calls,
            lambda_gb_seconds: calls as f64 * self.call_seconds * self.call_memory_mb / 1024.0,
            ..Cost::default()
        }
    }

    /// Seconds the copy calls of a range take for `bytes` (assumed throughput, plus a call's
    /// own time for each segment).
    fn copy_seconds(&self, bytes: u64, segments: u64) -> f64 {
        bytes as f64 / (self.copy_megabytes_per_second * 1e6) + segments as f64 * 0.5
    }

    /// Bytes counted across regions and out of AWS for `bytes` moved from `source` to
    /// `destination` (registry hosts) by a function in `self.region`.
    fn transfer(&self, source: &str, destination: &str, bytes: u64) -> Cost {
        let region = |host: &str| ecr::EcrRegistry::parse(host).ok().map(|r| r.region);
        let crossing = |host: &str| matches!(region(host), Some(r) if r != self.region);
        let sides = u64::from(crossing(source)) + u64::from(crossing(destination));
        Cost {
            cross_region_bytes: bytes * sides,
            internet_bytes: if region(destination).is_none() {
                bytes
            } else {
                0
            },
            ..Cost::default()
        }
    }

    /// One range's copy: a STANDARD child (its segment loop: `CopyBlobs`, `MoreSegments` and
    /// `NextSegment` per segment, `RangeDone`) or an EXPRESS one, its start (a transition of
    /// the range Map either way), its calls, and its bytes.
    pub fn range_copy(
        &self,
        range: &CopyRange,
        express: bool,
        (source, destination): (&str, &str),
        bytes: u64,
    ) -> Cost {
        let segments = match range {
            CopyRange::Blobs { .. } => 1,
            CopyRange::Segments { segments, .. } => (*segments).max(1),
        };
        let seconds = self.copy_seconds(bytes, segments);
        let mut cost = Cost {
            lambda_invocations: segments,
            lambda_gb_seconds: seconds * self.copy_memory_mb / 1024.0,
            ..Cost::default()
        };
        cost.standard_transitions = MAP_CHILD_START_TRANSITIONS;
        if express {
            cost.express_executions = 1;
            cost.express_gb_seconds = seconds * EXPRESS_GB;
        } else {
            cost.standard_executions = 1;
            cost.standard_transitions += 3 * segments;
        }
        cost.add(&self.transfer(source, destination, bytes));
        cost
    }

    /// The EXPRESS children of `ForEachImage` for a page of `images` tasks: one per batch of
    /// [`IMAGES_PER_CHILD`] (each start a transition of the Map), `puts` of the tasks calling
    /// `put-manifests` (their time counted whole: an upper bound, the batch runs several at
    /// once).
    pub fn image_children(&self, images: u64, puts: u64) -> Cost {
        let mut cost = self.calls(puts);
        let children = images.div_ceil(IMAGES_PER_CHILD);
        cost.standard_transitions = children * MAP_CHILD_START_TRANSITIONS;
        cost.express_executions = children;
        cost.express_gb_seconds = puts as f64 * self.call_seconds * EXPRESS_GB;
        cost
    }
}

/// States a repository child enters for one page of images (`SummariseImages` to the next):
/// how the page was taken (`EnumerateImages`, `TakePage`, `AnyWork`; or `TakeDeferred`),
/// planning it (`PlanPage`, `DryRunOrCopy`), copying it (`SmallRanges`, the range Map,
/// `ForEachImage`), `SummariseImages`, `MoreDeferred`, and unless more of the page is deferred
/// `MoreImages` and where it goes (`NextImagesPage`, `RepositoryDone` or `HandBack`).
pub fn page_states(enumerated: bool, planned: bool, copied: bool, deferred: bool) -> u64 {
    (if enumerated { 3 } else { 1 })
        + if planned { 2 } else { 0 }
        + if copied { 3 } else { 0 }
        + 2
        + if deferred { 0 } else { 2 }
}

/// States a repository child enters before its first page: `ReplicateOrVerify`,
/// `EnsureRepositories` and one `EnsureRepository` per destination.
pub fn child_start_states(destinations: u64) -> u64 {
    2 + destinations
}

/// States the parent enters for a page of repositories (`EnumerateRepositories`,
/// `UseValidatedJob`, `AnyRepositoryWork`, `MoreRepositories`, and two more: `PagesLeft` with
/// `NextRepositoriesPage` or `ContinueAsNew`, or `AnnounceRun` with `Finish`); and, in the first
/// page of an execution, `Continued` and `Start` or `Resume`.
pub fn repositories_page_states(first_of_execution: bool) -> u64 {
    6 + if first_of_execution { 2 } else { 0 }
}

/// States the parent adds when a page of repositories has children: `ForEachRepository`,
/// `SummariseRepositories`, and `ResumeHandedBack` when a child handed work back.
pub fn children_page_states(handed_back: bool) -> u64 {
    2 + u64::from(handed_back)
}

/// States of a repository child that verifies one page: `ReplicateOrVerify`,
/// `VerifyRepository`, `MoreToVerify`, `RepositoryDone` (its start,
/// [`MAP_CHILD_START_TRANSITIONS`], comes on top; each further page adds `VerifyNextPage` and
/// `MoreToVerify`).
pub const VERIFY_CHILD_STATES: u64 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_override_keeps_the_other_prices_and_refuses_unknown_fields() {
        let model = CostModel::from_json(r#"{"standardTransition": 0.00003}"#).unwrap();
        assert_eq!(model.standard_transition, 0.00003);
        assert_eq!(model.lambda_request, CostModel::default().lambda_request);
        let e = CostModel::from_json(r#"{"standardTransitions": 1}"#).unwrap_err();
        assert!(e.to_string().contains("standardTransitions"), "{e}");
        let e = CostModel::from_json(r#"{"internetGb": -1}"#).unwrap_err();
        assert!(e.to_string().contains("internetGb"), "{e}");
    }

    #[test]
    fn dollars_add_up_every_billed_count() {
        let model = CostModel {
            region: "us-east-1".into(),
            ..CostModel::default()
        };
        let cost = model.priced(Cost {
            lambda_invocations: 1_000_000,
            standard_transitions: 1_000,
            express_executions: 1_000_000,
            cross_region_bytes: 1_000_000_000,
            ..Cost::default()
        });
        // $0.20 + $0.025 + $1.00 + $0.02
        assert!(
            (cost.estimated_usd - 1.245).abs() < 1e-9,
            "{}",
            cost.estimated_usd
        );
    }

    #[test]
    fn bytes_count_for_each_side_in_another_region_and_out_of_aws() {
        let model = CostModel {
            region: "us-east-1".into(),
            ..CostModel::default()
        };
        let east = "111111111111.dkr.ecr.us-east-1.amazonaws.com";
        let west = "222222222222.dkr.ecr.us-west-2.amazonaws.com";
        let eu = "333333333333.dkr.ecr.eu-west-1.amazonaws.com";
        let range = CopyRange::Blobs { blobs: vec![] };
        let moved = |s, d| model.range_copy(&range, true, (s, d), 100);
        assert_eq!(moved(east, east).cross_region_bytes, 0);
        assert_eq!(moved(east, west).cross_region_bytes, 100);
        assert_eq!(moved(eu, west).cross_region_bytes, 200);
        assert_eq!(moved(east, "ghcr.io").internet_bytes, 100);
        assert_eq!(moved("ghcr.io", east).internet_bytes, 0);
    }

    #[test]
    fn a_segment_loop_enters_three_states_a_segment_and_calls_once_each() {
        let model = CostModel::default();
        let blob = oci::BlobRef {
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            size: 1 << 30,
        };
        let range = CopyRange::Segments { blob, segments: 4 };
        let cost = model.range_copy(&range, false, ("a.example", "b.example"), 1 << 30);
        assert_eq!(
            (
                cost.lambda_invocations,
                cost.standard_executions,
                cost.standard_transitions
            ),
            (4, 1, 13),
            "12 states and the child's start"
        );
        assert_eq!(cost.express_executions, 0);
    }

    #[test]
    fn every_child_a_map_starts_is_a_billed_transition_express_ones_too() {
        let model = CostModel {
            region: "us-east-1".into(),
            ..CostModel::default()
        };
        let range = CopyRange::Blobs { blobs: vec![] };
        let express = model.range_copy(&range, true, ("a.example", "b.example"), 0);
        assert_eq!(
            (express.express_executions, express.standard_transitions),
            (1, 1)
        );
        let images = model.image_children(25, 25);
        assert_eq!(
            (images.express_executions, images.standard_transitions),
            (1, 1),
            "a page's tasks share one child"
        );
        let two = model.image_children(26, 26);
        assert_eq!((two.express_executions, two.standard_transitions), (2, 2));
        let child = model.child_start(2);
        assert_eq!(
            child.standard_transitions,
            1 + child_start_states(2),
            "the repository child's start and its states"
        );
        // Priced as transitions: 2 EXPRESS children cost 2 transitions more than requests.
        let priced = model.priced(two.clone());
        let without_starts = model.priced(Cost {
            standard_transitions: 0,
            ..two
        });
        assert!(
            (priced.estimated_usd - without_starts.estimated_usd - 2.0 * 0.000_025).abs() < 1e-6,
            "{} vs {}",
            priced.estimated_usd,
            without_starts.estimated_usd
        );
    }
}
