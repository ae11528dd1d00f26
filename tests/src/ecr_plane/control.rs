//! What the data plane reads from ECR's control plane (moto): tag mutability and archived
//! images, through one client per plane.

use super::PlaneState;

/// Whether `tag` is immutable in the repository, from moto's DescribeRepositories: every tag
/// under IMMUTABLE, the tags no exclusion filter matches under IMMUTABLE_WITH_EXCLUSION, the
/// tags a filter matches under MUTABLE_WITH_EXCLUSION (ECR user guide, "Preventing image tags
/// from being overwritten").
pub(super) async fn tag_immutable(state: &PlaneState, name: &str, tag: &str) -> bool {
    let Some(client) = control_client(state).await else {
        return false;
    };
    let found = client
        .describe_repositories()
        .repository_names(name)
        .send()
        .await;
    let Some(repo) = found.ok().and_then(|o| o.repositories().first().cloned()) else {
        return false;
    };
    let (tag_mutability, tag_mutability_exclusions) = ecr::admin::tag_mutability_of(&repo);
    ecr::RepositorySettings {
        tag_mutability,
        tag_mutability_exclusions,
        ..ecr::RepositorySettings::default()
    }
    .tag_is_immutable(tag)
}

/// The ECR control plane (moto) this data plane belongs to, when it has one: built once, shared.
pub(super) async fn control_client(state: &PlaneState) -> Option<aws_sdk_ecr::Client> {
    let (moto_url, role) = state.control.lock().unwrap().clone()?;
    let mut ecr = state.ecr.lock().await;
    if ecr.is_none() {
        let moto = crate::moto::Moto::attach(&moto_url);
        // The plane's own calls (listing a push, reading an archive) retry briefly: moto answers
        // 500 for a push into a repository it does not hold, and the product's adaptive
        // 8-attempt backoff would stall the push for ~25 seconds.
        let client = moto.sdk(&state.ecr_host, role.as_deref()).await;
        let retry = aws_sdk_ecr::config::retry::RetryConfig::standard()
            .with_max_attempts(4)
            .with_initial_backoff(std::time::Duration::from_millis(10))
            .with_max_backoff(std::time::Duration::from_millis(100));
        let config = client.config().to_builder().retry_config(retry).build();
        *ecr = Some(aws_sdk_ecr::Client::from_conf(config));
    }
    ecr.clone()
}

/// Whether the control plane lists the image (a tag or a digest) as archived.
pub(super) async fn archived(state: &PlaneState, name: &str, reference: &str) -> bool {
    let Some(client) = control_client(state).await else {
        return false;
    };
    let id = aws_sdk_ecr::types::ImageIdentifier::builder();
    let id = if reference.starts_with("sha256:") {
        id.image_digest(reference)
    } else {
        id.image_tag(reference)
    };
    client
        .describe_images()
        .repository_name(name)
        .image_ids(id.build())
        .filter(
            aws_sdk_ecr::types::DescribeImagesFilter::builder()
                .image_status(aws_sdk_ecr::types::ImageStatusFilter::Any)
                .build(),
        )
        .send()
        .await
        .ok()
        .is_some_and(|out| {
            out.image_details()
                .iter()
                .any(|d| d.image_status() == Some(&aws_sdk_ecr::types::ImageStatus::Archived))
        })
}
