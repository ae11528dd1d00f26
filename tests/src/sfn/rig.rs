//! The rig deployment the local runs play: the workspace, the state machine definition with its
//! placeholders filled as CDK fills them, and the deployment's names, keys and allowlist.

use std::path::{Path, PathBuf};

/// The metrics namespace the deployment gives the functions (the CDK app's).
pub const METRICS_NAMESPACE: &str = "EcrReplicator";

/// Each step's function (binary) and the placeholder it fills in the definition, from the
/// step registry.
pub fn functions() -> Vec<(String, &'static str)> {
    replication::steps::STEP_NAMES
        .iter()
        .map(|name| (replication::steps::function_placeholder(name), *name))
        .collect()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The definition's placeholder for the EventBridge PutEvents integration (the CDK app fills it
/// with the stack's partition: `arn:aws-cn:states:::events:putEvents` in China).
pub const PUT_EVENTS_PLACEHOLDER: &str = "EventsPutEventsArn";

/// The definition's placeholder for the Step Functions `startExecution.sync:2` integration
/// (ContinueAsNew), filled the same way.
pub const START_EXECUTION_PLACEHOLDER: &str = "StatesStartExecutionSyncArn";

/// The state machine with every placeholder replaced by a function ARN and the integrations of
/// the `aws` partition, as CDK's `definitionSubstitutions` does.
/// `E2E_DEFINITION` names another definition file to run instead (e.g. to see a test fail on an
/// older Retry).
pub fn definition(account: &str, region: &str) -> String {
    let path = std::env::var_os("E2E_DEFINITION")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("statemachine/replicate.asl.json"));
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the state machine at {}: {e}", path.display()));
    for (placeholder, function) in functions() {
        text = text.replace(
            &format!("${{{placeholder}}}"),
            &format!("arn:aws:lambda:{region}:{account}:function:{function}"),
        );
    }
    text = text.replace(
        &format!("${{{PUT_EVENTS_PLACEHOLDER}}}"),
        "arn:aws:states:::events:putEvents",
    );
    text = text.replace(
        &format!("${{{START_EXECUTION_PLACEHOLDER}}}"),
        "arn:aws:states:::states:startExecution.sync:2",
    );
    assert!(!text.contains("${"), "a placeholder is left");
    text
}

/// Where moto's Step Functions interpreter is made as strict as AWS (`strict_moto.py`).
pub fn strict_moto_script() -> PathBuf {
    workspace().join("tests/aws_rules/strict_moto.py")
}

/// The work bucket every local run's functions use, in moto (the deployment's is the CDK app's
/// `WorkBucket`; the IAM check reads that bucket's ARN as this one's).
pub const WORK_BUCKET: &str = "ecr-replicator-work";
/// Its region, the functions' `AWS_REGION`.
pub const WORK_BUCKET_REGION: &str = "us-east-1";
/// The name of the upstream registry secret the rig deployment allows (a test creates it).
pub const RIG_UPSTREAM_SECRET_NAME: &str = "ecr-replicator-test/upstream";
/// Its ARN as jobs name it (without Secrets Manager's suffix), as `cdk/test/config.iam.json`
/// grants it.
pub const RIG_UPSTREAM_SECRET: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:ecr-replicator-test/upstream";

/// The KMS key the rig deployment signs promotion receipts with (`receiptKeyArn` in
/// `cdk/test/config.iam.json`); the harness seeds moto with it (`STRICT_MOTO_RECEIPT_KEY`).
pub const RIG_RECEIPT_KEY: &str =
    "arn:aws:kms:us-east-1:123456789012:key/0c7e5a1d-rig0-4ece-b1e7-000000000024";

/// The rig deployment's allowlist: the tests' registries (any port of 127.0.0.1, over plain
/// HTTP, with the rig's upstream secret) and the ECR hosts of the world with their roles, as
/// sources and destinations.
pub fn rig_allowlist() -> serde_json::Value {
    use crate::world::{role_of, DEST, DEST2, SOURCE, SOURCE_OTHER_REGION};
    let mut entries = vec![
        serde_json::json!({"registry": "127.0.0.1:*", "credentialArns": [RIG_UPSTREAM_SECRET]}),
    ];
    for host in [SOURCE, DEST, DEST2, SOURCE_OTHER_REGION] {
        entries.push(serde_json::json!({"registry": host, "roleArns": role_of(host).into_iter().collect::<Vec<_>>()}));
    }
    // The rig's destinations let jobs do everything a test plays: prune, every settings mode.
    let destinations: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            entry["prune"] = true.into();
            entry["settingsModes"] =
                serde_json::json!(["copy", "create", "mirror", "none", "copyRepositoryPolicy"]);
            entry
        })
        .collect();
    let (_, rig_key) = crate::image::signing_key(RIG_SIGNING_SEED);
    serde_json::json!({
        "sources": entries,
        "destinations": destinations,
        "insecure": ["127.0.0.1:*"],
        "trustPolicies": {RIG_TRUST_POLICY: {"publicKeys": [rig_key]}},
    })
}

/// The rig deployment's trust policy (`trustPolicies`): the key of `signing_key(RIG_SIGNING_SEED)`.
pub const RIG_TRUST_POLICY: &str = "rig-release";
/// The seed of the key the rig's trust policy trusts.
pub const RIG_SIGNING_SEED: u64 = 88;

/// Whether the path is inside the workspace.
pub fn inside_workspace(path: &Path) -> bool {
    path.starts_with(workspace())
}
