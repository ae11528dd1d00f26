//! The deployment's allowlist: a job naming a registry, a role or plain HTTP it does not allow
//! is refused with the field named, before any connection is made.

use replication::allowlist::Allowlist;
use replication::connect::{Connections, Settings};
use replication::{Error, Job};
use serde_json::json;

const SRC: &str = "111111111111.dkr.ecr.us-east-1.amazonaws.com";
const DST: &str = "222222222222.dkr.ecr.eu-west-1.amazonaws.com";
const ROLE: &str = "arn:aws:iam::222222222222:role/ecr-replicator-target";

fn deployment() -> Settings {
    let allowlist = Allowlist::from_json(
        &json!({
            "sources": [{"registry": SRC}],
            "destinations": [{"registry": DST, "roleArns": [ROLE]}],
        })
        .to_string(),
        "test",
    )
    .unwrap();
    Settings {
        allowlist: Some(allowlist),
        ..Settings::default()
    }
}

fn refused_fields(job: serde_json::Value) -> Vec<String> {
    let conns = Connections::new(deployment());
    let job = Job::from_json(&job.to_string()).unwrap();
    match conns.admit(&job) {
        Ok(()) => Vec::new(),
        Err(Error::InvalidInput { problems }) => problems.into_iter().map(|p| p.field).collect(),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn only_the_deployments_registries_and_roles_are_admitted() {
    let allowed = json!({
        "source": {"registry": SRC},
        "destinations": [{"registry": DST, "roleArn": ROLE, "externalId": "x1"}],
    });
    assert!(refused_fields(allowed).is_empty());

    // Exfiltration: the source copied to a registry of the caller's choosing.
    let exfiltrate = json!({
        "source": {"registry": SRC},
        "destinations": [{"registry": DST, "roleArn": ROLE, "externalId": "x1"},
                         {"registry": "attacker.example.com"}],
    });
    assert_eq!(refused_fields(exfiltrate), ["destinations[1].registry"]);

    // Import: anything pushed into the target account with its role, from anywhere.
    let import = json!({
        "source": {"registry": "attacker.example.com"},
        "destinations": [{"registry": DST, "roleArn": ROLE, "externalId": "x1"}],
    });
    assert_eq!(refused_fields(import), ["source.registry"]);

    // Another role for an allowed registry; plain HTTP the deployment does not allow.
    let other_role = json!({
        "source": {"registry": SRC, "roleArn": "arn:aws:iam::111111111111:role/admin"},
        "destinations": [{"registry": DST, "roleArn": "arn:aws:iam::222222222222:role/admin", "externalId": "x1"}],
    });
    assert_eq!(
        refused_fields(other_role),
        ["source.roleArn", "destinations[0].roleArn"]
    );
}

#[tokio::test]
async fn a_refused_job_makes_no_connection() {
    let conns = Connections::new(deployment());
    let job = Job::from_json(
        &json!({"source": {"registry": "127.0.0.1:1", "insecure": true},
                "destinations": [{"registry": DST}]})
        .to_string(),
    )
    .unwrap();
    let err = match conns.source(&job).await {
        Ok(_) => panic!("admitted"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("source.registry") && text.contains("source.insecure"),
        "{text}"
    );
}

#[test]
fn plain_http_to_an_ecr_host_is_refused_even_without_an_allowlist() {
    let job = json!({
        "source": {"registry": SRC, "insecure": true},
        "destinations": [{"registry": DST, "insecure": true}],
    });
    match Job::parse(&job.to_string()) {
        Err(Error::InvalidInput { problems }) => {
            let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, ["source.insecure", "destinations[0].insecure"]);
        }
        other => panic!("{other:?}"),
    }
}
