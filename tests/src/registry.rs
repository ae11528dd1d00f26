//! A real CNCF distribution registry (`docker-registry serve`) on a free loopback port, with
//! temporary storage and optional htpasswd auth; stopped on drop.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Credentials if the registry requires Basic auth.
    pub credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
    child: Child,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts a registry that requires `user`/`password` (htpasswd, Basic).
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(credentials: Option<(String, String)>) -> Self {
        let binary = which("docker-registry")
            .expect("docker-registry not found: run `make setup` (Debian package docker-registry)");
        let mut last_log = String::new();
        // A port found free can be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("ecr-replicator-registry-")
                .tempdir()
                .unwrap();
            let host = format!("127.0.0.1:{}", free_port());
            let auth = match &credentials {
                Some((user, password)) => {
                    let hash = bcrypt::hash(password, 4).unwrap();
                    let path = dir.path().join("htpasswd");
                    std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
                    format!(
                        "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                        path.display()
                    )
                }
                None => String::new(),
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {host}\n  secret: ecr-replicator-test\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n{auth}",
                data = dir.path().join("data").display()
            );
            std::fs::write(dir.path().join("config.yml"), config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut registry = TestRegistry {
                host,
                credentials: credentials.clone(),
                dir,
                child,
            };
            if registry.wait_ready(Duration::from_secs(15)) {
                return registry;
            }
            last_log = registry.log();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(&self.host) {
                let _ = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut stream, &mut buf).is_ok()
                    && (buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.0 401"))
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many requests of `method` to a path containing `path_part` the access log shows with
    /// HTTP status `status`.
    pub fn count_requests(&self, method: &str, path_part: &str, status: u16) -> usize {
        let status = format!("\" {status} ");
        self.log()
            .lines()
            .filter(|l| {
                l.contains(&format!("\"{method} /v2/"))
                    && l.contains(path_part)
                    && l.contains(&status)
            })
            .count()
    }

    /// Blob uploads completed so far (PUT on an upload session answered 201).
    pub fn completed_uploads(&self) -> usize {
        self.count_requests("PUT", "/blobs/uploads/", 201)
    }

    /// Where the registry stores a blob's bytes (to corrupt or remove it in tests).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Total bytes under the storage root (to show a dry run or failed copy wrote nothing).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The credential for the oci client, if auth is on.
    pub fn credential(&self) -> Option<oci::Credential> {
        self.credentials
            .as_ref()
            .map(|(u, p)| oci::Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            })
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The full path of a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    path.is_file()
}
