//! The ECR profile's listing side: what a push does to the control plane's listing
//! (`Behaviours::pushes_listed`).

use sha2::Digest as _;

use super::control::control_client;
use super::PlaneState;

/// Writes a pushed manifest to the control plane's listing (`Behaviours::pushes_listed`): a
/// push by tag tags the image (moto refuses the same tag on the same image again, as ECR
/// answers `ImageAlreadyExistsException`; nothing changes), a push by digest adds the image
/// untagged unless it is listed already. Nothing is written where the repository is not in
/// moto.
pub(super) async fn list_pushed(
    state: &PlaneState,
    (name, reference): (&str, &str),
    media_type: &str,
    bytes: &[u8],
) {
    let Some(ecr) = control_client(state).await else {
        return;
    };
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let tag = (!reference.starts_with("sha256:")).then(|| reference.to_string());
    if tag.is_none() {
        let listed = ecr
            .describe_images()
            .repository_name(name)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_digest(&digest)
                    .build(),
            )
            .send()
            .await
            .is_ok_and(|out| !out.image_details().is_empty());
        if listed {
            return;
        }
    }
    let Ok(manifest) = String::from_utf8(bytes.to_vec()) else {
        return;
    };
    let _ = ecr
        .put_image()
        .repository_name(name)
        .image_manifest(manifest)
        .set_image_manifest_media_type((!media_type.is_empty()).then(|| media_type.to_string()))
        .image_digest(&digest)
        .set_image_tag(tag)
        .send()
        .await;
}
