//! A whole `sync` at debug log level leaks no secret: no registry password or ECR token (raw or
//! base64), no AWS secret key, no Authorization header value, in any log line, error or report.

use std::process::Command;

use base64::Engine as _;
use e2e::image::{Format, ImageBuilder};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST_ROLE, SOURCE};

const AWS_SECRET: &str = "AwsSecretKey-do-not-log-4242";

#[tokio::test]
async fn a_debug_level_sync_prints_no_secret() {
    let world = EcrWorld::start();
    world
        .seed(
            "services/api",
            "v1.0.0",
            &ImageBuilder::new(Format::Oci).layer(1, 10_000).build(),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        serde_json::json!({
            "source": {"registry": SOURCE},
            "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"));
    cmd.args(["sync", "--output", "json", "--input"])
        .arg(&job)
        .args(["--aws-endpoint-url", &world.moto.url]);
    for (host, reg) in &world.registries {
        cmd.args([
            "--registry-endpoint",
            &format!("{host}=http://{}", reg.host),
        ]);
    }
    let out = cmd
        .env("RUST_LOG", "debug")
        .env("AWS_ACCESS_KEY_ID", "AKIATESTING")
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The run really happened.
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON report:\n{text}"));
    assert_eq!(report["report"]["copied"], 1, "{text}");
    assert!(
        text.lines().count() > 20,
        "debug logging was not on:\n{text}"
    );

    let mut secrets = vec![AWS_SECRET.to_string()];
    for host in [SOURCE, DEST] {
        let password = moto_token_password(host);
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}")));
        secrets.push(password);
    }
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "secret {secret:?} appears in the output"
        );
    }
    for header in [
        "Basic ",
        "Bearer ",
        "authorization: ",
        "Authorization: ",
        "X-Amz-Security-Token",
        "x-amz-security-token: ",
    ] {
        assert!(!text.contains(header), "{header:?} appears in the output");
    }
}

/// A job naming a Secrets Manager secret (`credentialArn`) is refused by every command that
/// runs it in-process unless an allowlist binds the secret to its registry: the error names
/// each such field and says to pass `--allowlist FILE`; no secret is read and the registry the
/// job names (a recorder here) sees no request.
#[test]
fn a_job_naming_a_secret_is_refused_without_an_allowlist() {
    let src = e2e::registry::TestRegistry::start();
    let recorder = e2e::hostile::HostileRegistry::start(&src.host);
    let dir = tempfile::tempdir().unwrap();
    let secret = "arn:aws:secretsmanager:us-east-1:111111111111:secret:hub-AbC123";
    let job = serde_json::json!({
        "source": {"registry": recorder.host, "insecure": true, "credentialArn": secret},
        "destinations": [
            {"registry": "127.0.0.2:5998", "insecure": true},
            {"registry": "127.0.0.2:5999", "insecure": true, "credentialArn": secret},
        ],
    });
    let path = dir.path().join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let step_input = dir.path().join("step.json");
    std::fs::write(
        &step_input,
        serde_json::json!({"job": job, "repository": "app"}).to_string(),
    )
    .unwrap();

    for args in [
        vec!["sync", "--input"],
        vec!["plan", "--input"],
        vec!["verify", "--input"],
        vec!["step", "enumerate-images", "--input"],
    ] {
        let input = if args[0] == "step" {
            &step_input
        } else {
            &path
        };
        let out = Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
            .args(&args)
            .arg(input)
            // Were a secret read, it would be from here: nothing listens.
            .args(["--aws-endpoint-url", "http://127.0.0.1:1"])
            .env("AWS_ACCESS_KEY_ID", "AKIATESTING")
            .env("AWS_SECRET_ACCESS_KEY", "not-used")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        for named in [
            "source.credentialArn",
            "destinations[1].credentialArn",
            "--allowlist FILE",
        ] {
            assert!(
                text.contains(named),
                "{args:?} does not name {named}: {text}"
            );
        }
        assert!(!text.contains("destinations[0].credentialArn"), "{text}");
    }
    assert_eq!(recorder.requests(), Vec::<String>::new());
}
