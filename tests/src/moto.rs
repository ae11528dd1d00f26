//! moto server (PyPI `moto[server]`, installed by `make setup` into `.venv`) on a free loopback
//! port: ECR and STS control planes. Stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{free_port, which};

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn moto_binary() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    which("moto_server")
        .expect("moto_server not found: run `make setup` (installs moto[server] into .venv)")
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ecr-replicator-moto-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_remove("MOTO_ACCOUNT_ID")
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
                panic!("moto_server exited: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
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

    /// AWS settings that send every call to this moto.
    pub fn aws_settings(&self) -> ecr::AwsSettings {
        ecr::AwsSettings {
            endpoint_url: Some(self.url.clone()),
            static_credentials: Some(("testing".into(), "testing".into())),
        }
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

    /// The raw SDK client, for seeding.
    pub async fn sdk(&self, registry: &str, role: Option<&str>) -> aws_sdk_ecr::Client {
        let parsed = ecr::EcrRegistry::parse(registry).unwrap();
        let assume = role.map(|r| {
            ecr::AssumeRole::new(ecr::RoleArn::parse(r).unwrap(), Some("ext-id-42".into()))
        });
        ecr::ecr_client(&self.aws_settings(), &parsed, assume.as_ref()).await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
