//! moto server (PyPI `moto[server]`, installed by `make setup` into `.venv`) on a free loopback
//! port: ECR, STS and Step Functions. Started through `tests/aws_rules/strict_moto.py`, which
//! makes its Step Functions interpreter as strict as AWS. Stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::free_port;

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn venv_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.is_file(),
        "{} not found: run `make setup` (installs moto[server] into .venv)",
        venv.display()
    );
    venv
}

/// Whether moto's own API answers on `port` (`GET /moto-api/data.json`: 200 from its Werkzeug
/// server), not merely something listening there.
pub(crate) fn answers_as_moto(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = "GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 512];
    let read = stream.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..read]);
    head.split_whitespace().nth(1) == Some("200") && head.contains("Werkzeug")
}

/// How moto's Step Functions interpreter behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpreter {
    /// Patched to fail where AWS fails (what every test uses).
    Strict,
    /// moto as released (only to show a rule is needed).
    AsReleased,
}

impl Moto {
    /// Starts moto (strict interpreter) and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(Interpreter::Strict)
    }

    /// Starts moto with the given interpreter.
    pub fn start_with(interpreter: Interpreter) -> Self {
        Self::start_with_env(interpreter, &[])
    }

    /// Starts moto with the given interpreter and environment (`STRICT_MOTO_HISTORY_LIMIT`,
    /// `STRICT_MOTO_STATS`: see `tests/aws_rules/strict_moto.py`).
    pub fn start_with_env(interpreter: Interpreter, env: &[(&str, &str)]) -> Self {
        // The port is free when asked, not when moto binds it: another server of the test
        // (a registry proxy on port 0) can take it in between. Moto then exits, and whatever
        // holds the port must not pass for it: ready means moto's own API answered.
        for _ in 0..3 {
            if let Some(moto) = Self::try_start(interpreter, env) {
                return moto;
            }
        }
        panic!("moto_server did not start: its port was taken three times");
    }

    /// Starts moto on a free port; `None` when it exited without answering (port taken).
    fn try_start(interpreter: Interpreter, env: &[(&str, &str)]) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ecr-replicator-moto-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let mut command = Command::new(venv_python());
        match interpreter {
            Interpreter::Strict => command.arg(crate::sfn::strict_moto_script()),
            Interpreter::AsReleased => command.args(["-m", "moto.server"]),
        };
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_remove("MOTO_ACCOUNT_ID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = moto.child.as_mut().map(|c| c.try_wait()) {
                eprintln!("moto_server exited ({status}) before answering on port {port}; again");
                return None;
            }
            if answers_as_moto(port) {
                return Some(moto);
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A moto started elsewhere (the Step Functions harness's), not stopped on drop.
    pub fn attach(url: &str) -> Self {
        Moto {
            url: url.to_string(),
            child: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Lets moto's Step Functions run executions (not just store them).
    pub async fn enable_executions(&self) {
        let resp = reqwest::Client::new()
            .post(format!("{}/moto-api/config", self.url))
            .body(
                r#"{"stepfunctions":{"execute_state_machine":true},"lambda":{"use_docker":false}}"#,
            )
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "moto config: {}", resp.status());
    }

    /// AWS settings that send every call to this moto.
    pub fn aws_settings(&self) -> ecr::AwsSettings {
        ecr::AwsSettings {
            endpoint_url: Some(self.url.clone()),
            static_credentials: Some(("testing".into(), "testing".into())),
            app_name: None,
        }
    }

    /// A new asymmetric signing key in this moto's KMS (ECC_NIST_P256, SIGN_VERIFY, in
    /// eu-west-1): its ARN and its public key as SubjectPublicKeyInfo DER (GetPublicKey).
    pub async fn signing_key(&self) -> (String, Vec<u8>) {
        let config = ecr::sdk_config(&self.aws_settings(), "eu-west-1", None).await;
        let kms = aws_sdk_kms::Client::new(&config);
        let key = kms
            .create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
            .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        let arn = key.arn.unwrap();
        let public = kms.get_public_key().key_id(&arn).send().await.unwrap();
        (arn, public.public_key.unwrap().into_inner())
    }

    /// The public key of this moto's KMS key `arn` (GetPublicKey in its region), as
    /// SubjectPublicKeyInfo DER.
    pub async fn public_key(&self, arn: &str) -> Vec<u8> {
        let region = arn.split(':').nth(3).unwrap_or("us-east-1").to_string();
        let config = ecr::sdk_config(&self.aws_settings(), &region, None).await;
        let kms = aws_sdk_kms::Client::new(&config);
        let public = kms.get_public_key().key_id(arn).send().await.unwrap();
        public.public_key.unwrap().into_inner()
    }

    /// An ECR client for a registry, as its own account (moto's default account needs no role;
    /// another account is reached by assuming a role in it).
    pub async fn ecr(&self, registry: &str, role: Option<&str>) -> ecr::EcrAdmin {
        let parsed = ecr::EcrRegistry::parse(registry).unwrap();
        let assume = role.map(|r| {
            ecr::AssumeRole::new(ecr::RoleArn::parse(r).unwrap(), Some("ext-id-42".into()))
        });
        let client = ecr::ecr_client(&self.aws_settings(), &parsed, assume.as_ref()).await;
        ecr::EcrAdmin::new(client, parsed)
    }

    /// Creates an IAM role in an account of this moto (IAM's query API, the account named by
    /// moto's `x-moto-account-id` header): a repository policy may then name it (the rig's
    /// SetRepositoryPolicy refuses a principal IAM does not have, as ECR does:
    /// `tests/aws_rules/ecr_gaps.py`).
    pub async fn create_role(&self, account: &str, name: &str) {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let resp = reqwest::Client::new()
            .post(format!("{}/", self.url))
            .header("x-moto-account-id", account)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .form(&[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", trust),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_success(),
            "moto CreateRole {name} in {account}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// The raw SDK client, for seeding.
    pub async fn sdk(&self, registry: &str, role: Option<&str>) -> aws_sdk_ecr::Client {
        let parsed = ecr::EcrRegistry::parse(registry).unwrap();
        let assume = role.map(|r| {
            ecr::AssumeRole::new(ecr::RoleArn::parse(r).unwrap(), Some("ext-id-42".into()))
        });
        ecr::ecr_client(&self.aws_settings(), &parsed, assume.as_ref()).await
    }
}

/// Lets the moto at `url` run Step Functions executions, its Lambda invocations going to
/// `localhost:$MOTO_PORT` (no Docker).
pub async fn enable_executions_at(url: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/moto-api/config"))
        .body(r#"{"stepfunctions":{"execute_state_machine":true},"lambda":{"use_docker":false}}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "moto config: {}", resp.status());
}

/// Creates an S3 bucket (in us-east-1) in the moto server at `url`.
pub async fn create_bucket_at(url: &str, bucket: &str) {
    let resp = reqwest::Client::new()
        .put(format!("{url}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "moto CreateBucket {bucket}: {}",
        resp.status()
    );
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
