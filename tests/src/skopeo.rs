//! skopeo, the independent client that checks what ecr-replicator wrote.

use std::process::Command;

/// `skopeo inspect --raw` of `docker://IMAGE` over plain HTTP: the manifest bytes as served.
pub fn inspect_raw(image: &str, creds: Option<&(String, String)>) -> Vec<u8> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    match creds {
        Some((u, p)) => cmd.arg(format!("--creds={u}:{p}")),
        None => cmd.arg("--no-creds"),
    };
    let out = cmd
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo not found: run `make setup` (Debian package skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether `docker://IMAGE` exists (plain HTTP, no credentials), as skopeo sees it.
pub fn exists(image: &str) -> bool {
    Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo not found: run `make setup` (Debian package skopeo)")
        .status
        .success()
}
