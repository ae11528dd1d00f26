//! Upload modes against a real registry: chunked parts, a session continued by another client,
//! cross-repository mounts, foreign layers.

use bytes::Bytes;
use e2e::image::{pseudo_random, sha256, Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use oci::{BlobOutcome, BlobRef, Digest, Reference, Repository};
use replication::{copy_image, CopyOptions};

fn repo(host: &str, name: &str) -> Repository {
    Repository {
        registry: host.to_string(),
        name: name.to_string(),
    }
}

#[tokio::test]
async fn chunked_mode_sends_parts_of_the_configured_size() {
    const MIB: usize = 1 << 20;
    let image = ImageBuilder::new(Format::Oci)
        .layer(1, 12 * MIB + 123)
        .build();
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let mut config = e2e::fast_retry_config(&[&src.host, &dst.host]);
    config.chunk_sizes.insert(dst.host.clone(), 5 * MIB as u64);
    let client = oci::RegistryClient::new(config, oci::CredentialStore::new()).unwrap();
    let from = Reference::parse(&format!("{}/app:v1", src.host)).unwrap();
    let to = Reference::parse(&format!("{}/app:v1", dst.host)).unwrap();

    let report = copy_image(&client, &from, &client, &to, &CopyOptions::default())
        .await
        .unwrap();

    assert_eq!(report.blobs_copied, 2);
    // The 12 MiB layer in 5 + 5 + 2 MiB parts; the small config in one part.
    assert_eq!(dst.count_requests("PATCH", "/blobs/uploads/", 202), 4);
    assert_eq!(
        skopeo::inspect_raw(&format!("{}/app:v1", dst.host), None),
        image.manifest.to_vec()
    );
    let layer = &image.blobs[1];
    let stored = std::fs::read(dst.blob_data_path(&layer.digest)).unwrap();
    assert_eq!(sha256(&stored), layer.digest);
}

#[tokio::test]
async fn an_upload_session_is_continued_by_another_client_from_its_offset() {
    let dst = TestRegistry::start();
    let data = Bytes::from(pseudo_random(9, 3 * 1024 * 1024 + 17));
    let digest = Digest::parse(&sha256(&data)).unwrap();
    let target = repo(&dst.host, "resumed");

    // First "invocation": open a session, send the first part, persist the state.
    let first = e2e::client(&[&dst.host], &[]);
    let session = first.start_upload(&target).await.unwrap();
    let session = first
        .upload_part(session, data.slice(..1_000_000).into(), 1_000_000)
        .await
        .unwrap();
    let saved = serde_json::to_string(&session).unwrap();
    drop(first);

    // Second "invocation": a fresh client restores the state and finishes.
    let second = e2e::client(&[&dst.host], &[]);
    let session: oci::UploadSession = serde_json::from_str(&saved).unwrap();
    assert_eq!(session.offset, 1_000_000);
    assert_eq!(second.upload_status(&session).await.unwrap(), 1_000_000);
    let rest = data.slice(1_000_000..);
    let len = rest.len() as u64;
    let session = second.upload_part(session, rest.into(), len).await.unwrap();
    second.complete_upload(session, &digest).await.unwrap();

    assert_eq!(
        second.head_blob(&target, &digest).await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        std::fs::read(dst.blob_data_path(digest.as_str())).unwrap(),
        data.to_vec()
    );
}

#[tokio::test]
async fn completing_with_the_wrong_digest_is_refused_by_the_registry() {
    let dst = TestRegistry::start();
    let client = e2e::client(&[&dst.host], &[]);
    let target = repo(&dst.host, "bad");
    let session = client.start_upload(&target).await.unwrap();
    let session = client
        .upload_part(session, Bytes::from_static(b"hello").into(), 5)
        .await
        .unwrap();

    let err = client
        .complete_upload(session, &Digest::of(b"other"))
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            oci::Error::Registry {
                status: 400,
                code: Some(oci::error::ErrorCode::DigestInvalid),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        client
            .head_blob(&target, &Digest::of(b"other"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn within_one_registry_blobs_are_mounted_not_copied() {
    let image = ImageBuilder::new(Format::Docker)
        .layer(3, 100_000)
        .layer(4, 100)
        .build();
    let reg = TestRegistry::start();
    Pusher::new(&reg.host, None)
        .push("team/app", "v1", &image)
        .await;
    let client = e2e::client(&[&reg.host], &[]);
    let from = Reference::parse(&format!("{}/team/app:v1", reg.host)).unwrap();
    let to = Reference::parse(&format!("{}/other/app:v1", reg.host)).unwrap();
    let uploads_before = reg.completed_uploads();

    let report = copy_image(&client, &from, &client, &to, &CopyOptions::default())
        .await
        .unwrap();

    assert_eq!((report.blobs_mounted, report.blobs_copied), (3, 0));
    assert_eq!(reg.completed_uploads(), uploads_before);
    assert_eq!(
        skopeo::inspect_raw(&format!("{}/other/app:v1", reg.host), None),
        image.manifest.to_vec()
    );
}

#[tokio::test]
async fn foreign_layers_are_not_copied_and_their_reference_is_kept() {
    let image = ImageBuilder::new(Format::Docker)
        .layer(5, 1000)
        .foreign_layer(6, 5000)
        .build();
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let client = e2e::client(&[&src.host, &dst.host], &[]);
    let from = Reference::parse(&format!("{}/app:v1", src.host)).unwrap();
    let to = Reference::parse(&format!("{}/app:v1", dst.host)).unwrap();

    let report = copy_image(&client, &from, &client, &to, &CopyOptions::default())
        .await
        .unwrap();

    assert_eq!((report.foreign_layers, report.blobs_copied), (1, 2));
    assert_eq!(
        skopeo::inspect_raw(&format!("{}/app:v1", dst.host), None),
        image.manifest.to_vec()
    );
}

#[tokio::test]
async fn copy_blob_skips_a_blob_the_target_has() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let blob = e2e::image::Blob::from_bytes(pseudo_random(7, 4096));
    Pusher::new(&src.host, None).push_blob("a", &blob).await;
    let client = e2e::client(&[&src.host, &dst.host], &[]);
    let blob_ref = BlobRef {
        digest: Digest::parse(&blob.digest).unwrap(),
        size: 4096,
    };
    let (from, to) = (repo(&src.host, "a"), repo(&dst.host, "b"));
    let copy = || oci::copy_blob(&client, &from, &client, &to, &blob_ref, None);

    assert_eq!(copy().await.unwrap(), BlobOutcome::Copied);
    assert_eq!(copy().await.unwrap(), BlobOutcome::Present);
    assert_eq!(dst.completed_uploads(), 1);
}

/// Attack: a blob's segment state travels between invocations (in the workflow's state), so a
/// forged one can name a session on another registry. `copy_blob_segment` must not continue it:
/// the blob starts again on the target, and the other registry receives no byte of it.
#[tokio::test]
async fn a_carried_session_of_another_registry_is_not_continued() {
    let (src, dst, other) = (
        TestRegistry::start(),
        TestRegistry::start(),
        TestRegistry::start(),
    );
    let data = Bytes::from(pseudo_random(12, 6 * 1024 * 1024 + 5));
    let image = ImageBuilder::new(Format::Oci).layer(12, data.len()).build();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let layer = image
        .blobs
        .iter()
        .find(|b| b.data.size() == data.len() as u64)
        .unwrap();
    let blob = BlobRef {
        digest: Digest::parse(&layer.digest).unwrap(),
        size: layer.data.size(),
    };
    let client = e2e::client(&[&src.host, &dst.host, &other.host], &[]);
    // A session opened on the other registry, with a consistent (empty) hash state.
    let stolen = client
        .start_upload(&repo(&other.host, "app"))
        .await
        .unwrap();
    let forged: oci::SegmentState = serde_json::from_value(serde_json::json!({
        "session": stolen,
        "hash": oci::digest::Verifier::new().export(),
    }))
    .unwrap();

    let progress = oci::copy_blob_segment(
        &client,
        &repo(&src.host, "app"),
        &client,
        &repo(&dst.host, "app"),
        &blob,
        Some(forged.clone()),
        5 * 1024 * 1024,
    )
    .await
    .unwrap();
    let oci::SegmentProgress::InProgress { state, .. } = progress else {
        panic!("one segment of two: {progress:?}");
    };
    assert_eq!(state.session.registry, dst.host, "continued elsewhere");
    // distribution answers an empty session's status `Range: 0-0`, read as one byte: the
    // segment's 5 MiB did not go there.
    let held = client.upload_status(&forged.session).await.unwrap();
    assert!(held <= 1, "{held} bytes reached the other registry");
}
