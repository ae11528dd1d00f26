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

/// Whether skopeo (containers/image, the Go code docker and podman share) reads `docker://IMAGE`
/// as an image a runtime could run: `Ok` when `skopeo inspect` takes it as an image (not a
/// non-image artifact) and `skopeo copy` to a `dir:` gives, for every layer, a tar stream
/// (plain, gzip or zstd: what a runtime unpacks); `Err` says why not.
pub fn runnable(image: &str) -> Result<(), String> {
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo not found: run `make setup` (Debian package skopeo)");
    if !inspect.status.success() {
        return Err(format!(
            "skopeo inspect: {}",
            String::from_utf8_lossy(&inspect.stderr).trim()
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--src-no-creds",
            "--quiet",
        ])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dir.path().display()))
        .output()
        .expect("skopeo");
    if !copy.status.success() {
        return Err(format!(
            "skopeo copy: {}",
            String::from_utf8_lossy(&copy.stderr).trim()
        ));
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let digest = layer["digest"].as_str().unwrap_or_default();
        let file = dir.path().join(digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&file).expect("layer file");
        let tar = bytes.get(257..262) == Some(b"ustar");
        let compressed =
            bytes.starts_with(&[0x1f, 0x8b]) || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        if !(tar || compressed) {
            return Err(format!("layer {digest} is no tar stream"));
        }
    }
    Ok(())
}

/// A one-file tar archive (`name` holding `content`), as a layer a runtime unpacks.
pub fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000755");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}
