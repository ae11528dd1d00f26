//! `ecr-replicator copy` against real distribution registries, checked with skopeo.

use std::process::{Command, Output};

use e2e::image::{index, multi_arch, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::Value;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecr-replicator"))
        .args(args)
        .env_remove("ECR_REPLICATOR_SRC_CREDS")
        .env_remove("ECR_REPLICATOR_DEST_CREDS")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn copy_json(
    src: &TestRegistry,
    dst: &TestRegistry,
    from: &str,
    to: &str,
    extra: &[&str],
) -> Value {
    let from = format!("{}/{from}", src.host);
    let to = format!("{}/{to}", dst.host);
    let mut args = vec![
        "copy",
        &from,
        &to,
        "--output",
        "json",
        "--insecure-registry",
        &src.host,
        "--insecure-registry",
        &dst.host,
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(
        out.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GIVEN an image in a source registry WHEN the CLI copies it THEN skopeo reads the same manifest
/// bytes (same digest) for it and every child from the target, and every blob is there.
async fn assert_copies_byte_identical(image: TestImage) {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    Pusher::new(&src.host, None)
        .push("team/app", "v1", &image)
        .await;

    let report = copy_json(&src, &dst, "team/app:v1", "mirror/app:v1", &[]);

    assert_eq!(report["digest"], image.digest);
    assert_eq!(report["alreadyPresent"], false);
    let raw = skopeo::inspect_raw(&format!("{}/mirror/app:v1", dst.host), None);
    assert_eq!(raw, image.manifest.to_vec(), "top manifest bytes differ");
    assert_eq!(e2e::image::sha256(&raw), image.digest);
    let target = Pusher::new(&dst.host, None);
    for child in &image.children {
        let raw = skopeo::inspect_raw(&format!("{}/mirror/app@{}", dst.host, child.digest), None);
        assert_eq!(
            raw,
            child.manifest.to_vec(),
            "child {} differs",
            child.digest
        );
        for blob in &child.blobs {
            assert!(
                target.has_blob("mirror/app", &blob.digest).await,
                "child blob {} missing",
                blob.digest
            );
        }
    }
    for blob in &image.blobs {
        assert!(
            target.has_blob("mirror/app", &blob.digest).await,
            "blob {} missing",
            blob.digest
        );
    }
}

#[tokio::test]
async fn docker_v2_image_is_byte_identical() {
    assert_copies_byte_identical(
        ImageBuilder::new(Format::Docker)
            .layer(1, 300_000)
            .layer(2, 1 << 20)
            .build(),
    )
    .await;
}

#[tokio::test]
async fn oci_image_is_byte_identical() {
    assert_copies_byte_identical(
        ImageBuilder::new(Format::Oci)
            .layer(3, 200_000)
            .layer(4, 5_000)
            .build(),
    )
    .await;
}

#[tokio::test]
async fn multi_arch_index_and_every_child_are_byte_identical() {
    assert_copies_byte_identical(multi_arch(5, 2, 100_000)).await;
}

#[tokio::test]
async fn image_with_an_empty_layer_is_byte_identical() {
    assert_copies_byte_identical(
        ImageBuilder::new(Format::Oci)
            .layer(6, 10_000)
            .empty_layer()
            .build(),
    )
    .await;
}

#[tokio::test]
async fn image_with_a_repeated_layer_is_byte_identical() {
    assert_copies_byte_identical(
        ImageBuilder::new(Format::Docker)
            .layer(7, 50_000)
            .repeat_last_layer()
            .layer(8, 10)
            .build(),
    )
    .await;
}

#[tokio::test]
async fn index_sharing_a_layer_between_children_copies_it_once() {
    let shared = |arch: &str, seed| {
        ImageBuilder::new(Format::Oci)
            .arch(arch)
            .layer(100, 64_000)
            .layer(seed, 1000)
            .build()
    };
    let image = index(vec![shared("amd64", 11), shared("arm64", 12)]);
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    Pusher::new(&src.host, None).push("app", "v1", &image).await;

    let report = copy_json(&src, &dst, "app:v1", "app:v1", &[]);

    // 2 configs + 2 own layers + 1 shared layer.
    assert_eq!(report["blobsCopied"], 5);
    assert_eq!(dst.completed_uploads(), 5);
    assert_eq!(report["manifestsPut"], 3);
}

#[tokio::test]
async fn second_copy_uploads_no_blob_and_reports_present() {
    let image = ImageBuilder::new(Format::Oci)
        .layer(20, 400_000)
        .layer(21, 1000)
        .build();
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let first = copy_json(&src, &dst, "app:v1", "app:v1", &[]);
    assert_eq!(first["blobsCopied"], 3);
    let uploads = dst.completed_uploads();
    assert_eq!(uploads, 3);

    let second = copy_json(&src, &dst, "app:v1", "app:v1", &[]);

    assert_eq!(second["alreadyPresent"], true);
    assert_eq!(second["blobsCopied"], 0);
    assert_eq!(
        dst.completed_uploads(),
        uploads,
        "a second copy uploaded blobs"
    );
    assert_eq!(
        dst.count_requests("PUT", "/manifests/", 201),
        1,
        "a second copy put a manifest"
    );

    // The same image under a new tag: blobs are all present, only the manifest is put.
    let third = copy_json(&src, &dst, "app:v1", "app:v2", &[]);
    assert_eq!(third["alreadyPresent"], false);
    assert_eq!(third["blobsSkipped"], 3);
    assert_eq!(dst.completed_uploads(), uploads);
    assert_eq!(
        skopeo::inspect_raw(&format!("{}/app:v2", dst.host), None),
        image.manifest.to_vec()
    );
}

#[tokio::test]
async fn basic_auth_works_and_wrong_credentials_fail_naming_the_registry() {
    let image = ImageBuilder::new(Format::Docker).layer(30, 10_000).build();
    let src = TestRegistry::start_with_auth("reader", "src-pass-123");
    let dst = TestRegistry::start_with_auth("writer", "dst-pass-456");
    Pusher::new(&src.host, src.credentials.clone())
        .push("app", "v1", &image)
        .await;
    let from = format!("{}/app:v1", src.host);
    let to = format!("{}/app:v1", dst.host);
    let base = [
        "copy",
        &from,
        &to,
        "--insecure-registry",
        &src.host,
        "--insecure-registry",
        &dst.host,
    ];

    let mut good = base.to_vec();
    good.extend([
        "--src-creds",
        "reader:src-pass-123",
        "--dest-creds",
        "writer:dst-pass-456",
    ]);
    let out = cli(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        skopeo::inspect_raw(&to, dst.credentials.as_ref()),
        image.manifest.to_vec()
    );

    let mut bad = base.to_vec();
    bad.extend([
        "--src-creds",
        "reader:src-pass-123",
        "--dest-creds",
        "writer:WRONG-secret-789",
    ]);
    let out = cli(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&dst.host),
        "error does not name the registry: {stderr}"
    );
    assert!(stderr.contains("authentication"), "{stderr}");
    assert!(
        !stderr.contains("WRONG-secret-789") && !stderr.contains("src-pass-123"),
        "secret leaked: {stderr}"
    );

    let mut none = base.to_vec();
    none.extend(["--dest-creds", "writer:dst-pass-456"]);
    let out = cli(&none);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&src.host) && stderr.contains("none were given"),
        "{stderr}"
    );
}

#[tokio::test]
async fn all_tags_copies_every_tag() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let mut images = Vec::new();
    for (i, tag) in ["v1.0.0", "v1.1.0", "latest"].iter().enumerate() {
        let image = ImageBuilder::new(Format::Oci)
            .layer(40 + i as u64, 2000)
            .build();
        pusher.push("app", tag, &image).await;
        images.push((tag, image));
    }

    let summary = copy_json(&src, &dst, "app", "copy/app", &["--all-tags"]);

    assert_eq!(summary["images"].as_array().unwrap().len(), 3);
    assert_eq!(summary["failures"].as_array().unwrap().len(), 0);
    for (tag, image) in images {
        assert_eq!(
            skopeo::inspect_raw(&format!("{}/copy/app:{tag}", dst.host), None),
            image.manifest.to_vec()
        );
    }
}

#[tokio::test]
async fn missing_source_and_bad_references_fail_with_a_named_error() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let from = format!("{}/app:nope", src.host);
    let to = format!("{}/app:v1", dst.host);
    let out = cli(&[
        "copy",
        &from,
        &to,
        "--insecure-registry",
        &src.host,
        "--insecure-registry",
        &dst.host,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("not found") && stderr.contains("app:nope"),
        "{stderr}"
    );

    let out = cli(&["copy", "Bad Ref", &to]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference \"Bad Ref\""));
}

#[tokio::test]
async fn tls_is_required_unless_the_registry_is_listed_insecure() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let from = format!("{}/app:v1", src.host);
    let to = format!("{}/app:v1", dst.host);
    let out = cli(&["copy", &from, &to, "--insecure-registry", &dst.host]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("https://{}", src.host)) && stderr.contains("--insecure-registry"),
        "{stderr}"
    );
}
