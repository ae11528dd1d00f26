//! An ECR-mode world: moto for the ECR and STS control planes and one distribution registry per
//! ECR registry for the data plane (moto has none), seeded consistently in both, with the
//! registries' htpasswd accepting the token moto hands out for their account.

use std::collections::HashMap;

use aws_sdk_ecr::types::ImageIdentifier;

use crate::image::{Pusher, TestImage};
use crate::moto::Moto;
use crate::registry::TestRegistry;

/// The source account (moto's default: no role needed).
pub const SOURCE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
/// A destination in another account and region, reached through a role.
pub const DEST: &str = "222222222222.dkr.ecr.eu-west-1.amazonaws.com";
/// The role in the destination account.
pub const DEST_ROLE: &str = "arn:aws:iam::222222222222:role/ecr-replicator-target";
/// A second destination, a third account and region.
pub const DEST2: &str = "333333333333.dkr.ecr.ap-south-1.amazonaws.com";
/// The role in the second destination's account.
pub const DEST2_ROLE: &str = "arn:aws:iam::333333333333:role/ecr-replicator-target";
/// The source account's registry in another region (same account: no role).
pub const SOURCE_OTHER_REGION: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

/// moto's ECR token password for an account.
pub fn moto_token_password(registry: &str) -> String {
    format!("{}-auth-token", &registry[..12])
}

/// moto plus a data-plane registry per ECR host.
pub struct EcrWorld {
    /// The control plane.
    pub moto: Moto,
    /// Data plane of each ECR host.
    pub registries: HashMap<String, TestRegistry>,
}

impl EcrWorld {
    /// Starts moto and a registry for `SOURCE` and `DEST`.
    pub fn start() -> Self {
        Self::with_moto(Moto::start())
    }

    /// A registry for each ECR host (`SOURCE`, `DEST`, `DEST2`, `SOURCE_OTHER_REGION`) on a given moto.
    pub fn with_moto(moto: Moto) -> Self {
        EcrWorld {
            moto,
            registries: Self::data_planes(),
        }
    }

    /// The data planes, then moto's Step Functions with the real functions under `cargo lambda
    /// watch` (told where the data planes are), and the world on that moto.
    pub async fn with_step_functions() -> (Self, crate::sfn::LocalStepFunctions) {
        let registries = Self::data_planes();
        let env = [(
            "ECR_REPLICATOR_REGISTRY_ENDPOINTS".to_string(),
            Self::endpoints_of(&registries),
        )];
        let sfn = crate::sfn::LocalStepFunctions::start(&env).await;
        let world = EcrWorld {
            moto: Moto::attach(&sfn.moto_url),
            registries,
        };
        (world, sfn)
    }

    /// The data-plane registries alone (start them before the moto they will pair with).
    pub fn data_planes() -> HashMap<String, TestRegistry> {
        [SOURCE, DEST, DEST2, SOURCE_OTHER_REGION]
            .iter()
            .map(|host| {
                (
                    host.to_string(),
                    TestRegistry::start_with_auth("AWS", &moto_token_password(host)),
                )
            })
            .collect()
    }

    /// `HOST=URL,...` for a set of data-plane registries.
    pub fn endpoints_of(registries: &HashMap<String, TestRegistry>) -> String {
        registries
            .iter()
            .map(|(host, reg)| format!("{host}=http://{}", reg.host))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Replication settings: AWS calls to moto, ECR hosts' data plane to their registries.
    pub fn settings(&self) -> replication::connect::Settings {
        let mut registry = crate::fast_retry_config(&[]);
        for (host, reg) in &self.registries {
            registry
                .endpoints
                .insert(host.clone(), format!("http://{}", reg.host));
        }
        replication::connect::Settings {
            aws: self.moto.aws_settings(),
            registry,
            credentials: oci::CredentialStore::new(),
            catalog_page_size: 0,
        }
    }

    /// The data-plane registry of an ECR host.
    pub fn registry(&self, host: &str) -> &TestRegistry {
        &self.registries[host]
    }

    /// Pushes an image to the source's data plane and records it in moto (repository created
    /// if needed) with its real digest.
    pub async fn seed(&self, repository: &str, tag: &str, image: &TestImage) {
        let reg = self.registry(SOURCE);
        Pusher::new(&reg.host, reg.credentials.clone())
            .push(repository, tag, image)
            .await;
        let ecr = self.moto.sdk(SOURCE, None).await;
        let _ = ecr
            .create_repository()
            .repository_name(repository)
            .send()
            .await;
        ecr.put_image()
            .repository_name(repository)
            .image_manifest(String::from_utf8(image.manifest.to_vec()).unwrap())
            .image_manifest_media_type(&image.media_type)
            .image_digest(&image.digest)
            .image_tag(tag)
            .send()
            .await
            .unwrap();
    }

    /// `HOST=URL,...` for `ECR_REPLICATOR_REGISTRY_ENDPOINTS` (the Lambda functions' view).
    pub fn endpoints_env(&self) -> String {
        Self::endpoints_of(&self.registries)
    }

    /// Digests moto lists in a destination repository.
    pub async fn listed(
        &self,
        host: &str,
        role: Option<&str>,
        repository: &str,
    ) -> Vec<ImageIdentifier> {
        let ecr = self.moto.sdk(host, role).await;
        ecr.list_images()
            .repository_name(repository)
            .send()
            .await
            .map(|o| o.image_ids().to_vec())
            .unwrap_or_default()
    }
}
