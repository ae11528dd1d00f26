//! An ECR-mode world: moto for the ECR and STS control planes and, for the data plane (moto has
//! none), one distribution registry per ECR registry behind an `EcrPlane` that behaves as ECR
//! does; seeded consistently in both, with the registries' htpasswd accepting the token moto
//! hands out for their account.

use std::collections::HashMap;

use aws_sdk_ecr::types::ImageIdentifier;

use crate::ecr_plane::EcrPlane;
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

/// The role a world's client assumes to reach an ECR host's account (`None`: moto's default).
pub fn role_of(host: &str) -> Option<&'static str> {
    match host {
        DEST => Some(DEST_ROLE),
        DEST2 => Some(DEST2_ROLE),
        _ => None,
    }
}

fn endpoints_of(planes: &HashMap<String, EcrPlane>) -> String {
    planes
        .iter()
        .map(|(host, plane)| format!("{host}=http://{}", plane.host))
        .collect::<Vec<_>>()
        .join(",")
}

/// The data plane of every ECR host: a distribution registry (the storage, read directly by
/// checks) behind an ECR-behaving proxy (what every client under test talks to).
pub struct DataPlanes {
    /// Storage of each ECR host.
    pub registries: HashMap<String, TestRegistry>,
    /// ECR's behaviour in front of each.
    pub planes: HashMap<String, EcrPlane>,
}

impl DataPlanes {
    /// A registry and its plane for each ECR host (`SOURCE`, `DEST`, `DEST2`,
    /// `SOURCE_OTHER_REGION`); start them before the moto they will pair with.
    pub fn start() -> Self {
        let registries: HashMap<String, TestRegistry> = [SOURCE, DEST, DEST2, SOURCE_OTHER_REGION]
            .iter()
            .map(|host| {
                (
                    host.to_string(),
                    TestRegistry::start_with_auth("AWS", &moto_token_password(host)),
                )
            })
            .collect();
        let planes = registries
            .iter()
            .map(|(host, reg)| {
                (
                    host.clone(),
                    EcrPlane::start(host, &reg.host, reg.credentials.clone()),
                )
            })
            .collect();
        DataPlanes { registries, planes }
    }

    /// `HOST=URL,...` (for `ECR_REPLICATOR_REGISTRY_ENDPOINTS`): each ECR host at its plane.
    pub fn endpoints(&self) -> String {
        endpoints_of(&self.planes)
    }

    /// Lets each plane read repository settings (tag mutability) from moto.
    pub fn attach(&self, moto_url: &str) {
        for (host, plane) in &self.planes {
            plane.attach_control_plane(moto_url, role_of(host));
        }
    }
}

/// moto plus a data plane per ECR host.
pub struct EcrWorld {
    /// The control plane.
    pub moto: Moto,
    /// Storage of each ECR host's data plane (distribution, for direct checks).
    pub registries: HashMap<String, TestRegistry>,
    /// ECR's data plane of each host: what the code under test talks to.
    pub planes: HashMap<String, EcrPlane>,
}

impl EcrWorld {
    /// Starts moto and the data planes of every ECR host.
    pub fn start() -> Self {
        Self::with_moto(Moto::start())
    }

    /// The data planes of every ECR host on a given moto.
    pub fn with_moto(moto: Moto) -> Self {
        Self::assemble(moto, DataPlanes::start())
    }

    fn assemble(moto: Moto, data: DataPlanes) -> Self {
        data.attach(&moto.url);
        EcrWorld {
            moto,
            registries: data.registries,
            planes: data.planes,
        }
    }

    /// The data planes, then moto's Step Functions with the real functions under `cargo lambda
    /// watch` (told where the data planes are), and the world on that moto.
    pub async fn with_step_functions() -> (Self, crate::sfn::LocalStepFunctions) {
        Self::with_step_functions_env(&[]).await
    }

    /// [`EcrWorld::with_step_functions`] with more function environment (a variable given here
    /// replaces the rig's: `ECR_REPLICATOR_ALLOWED_REGISTRIES` for another allowlist).
    pub async fn with_step_functions_env(
        extra: &[(String, String)],
    ) -> (Self, crate::sfn::LocalStepFunctions) {
        let data = DataPlanes::start();
        // The rig deployment signs promotion receipts (gated runs only) with its seeded key.
        let env = [
            (
                "ECR_REPLICATOR_REGISTRY_ENDPOINTS".to_string(),
                data.endpoints(),
            ),
            (
                "ECR_REPLICATOR_RECEIPT_KEY".to_string(),
                crate::sfn::RIG_RECEIPT_KEY.to_string(),
            ),
            (
                "STRICT_MOTO_RECEIPT_KEY".to_string(),
                crate::sfn::RIG_RECEIPT_KEY.to_string(),
            ),
        ];
        let env: Vec<(String, String)> = env.into_iter().chain(extra.iter().cloned()).collect();
        let sfn = crate::sfn::LocalStepFunctions::start(&env).await;
        let world = Self::assemble(Moto::attach(&sfn.moto_url), data);
        (world, sfn)
    }

    /// Replication settings: AWS calls to moto, ECR hosts' data plane to their registries.
    pub fn settings(&self) -> replication::connect::Settings {
        let mut registry = crate::fast_retry_config(&[]);
        for (host, plane) in &self.planes {
            registry
                .endpoints
                .insert(host.clone(), format!("http://{}", plane.host));
        }
        replication::connect::Settings {
            aws: self.moto.aws_settings(),
            registry,
            credentials: oci::CredentialStore::new(),
            catalog_page_size: None,
            work_bucket: None,
            allowlist: None,
            limits: Default::default(),
            cost_model: Default::default(),
            trusted_root: Default::default(),
            trusted_root_policy: Default::default(),
            receipt_key: None,
        }
    }

    /// The storage registry of an ECR host (direct reads, bypassing ECR's behaviour).
    pub fn registry(&self, host: &str) -> &TestRegistry {
        &self.registries[host]
    }

    /// The ECR data plane of a host.
    pub fn plane(&self, host: &str) -> &EcrPlane {
        &self.planes[host]
    }

    /// Pushes an image to the source's data plane and records it in moto (repository created
    /// if needed) with its real digest.
    pub async fn seed(&self, repository: &str, tag: &str, image: &TestImage) {
        let reg = self.registry(SOURCE);
        Pusher::new(&self.plane(SOURCE).host, reg.credentials.clone())
            .push(repository, tag, image)
            .await;
        self.record(SOURCE, repository, tag, image).await;
    }

    /// Records an image under a tag in moto's ECR of a host (as that host's account; the
    /// repository created if needed), with its real digest; the data plane is not touched.
    pub async fn record(&self, host: &str, repository: &str, tag: &str, image: &TestImage) {
        let ecr = self.moto.sdk(host, role_of(host)).await;
        let _ = ecr
            .create_repository()
            .repository_name(repository)
            .send()
            .await;
        let put = ecr
            .put_image()
            .repository_name(repository)
            .image_manifest(String::from_utf8(image.manifest.to_vec()).unwrap())
            .image_manifest_media_type(&image.media_type)
            .image_digest(&image.digest)
            .image_tag(tag)
            .send()
            .await;
        if let Err(e) = put {
            // Listed already: the data plane wrote the push (`Behaviours::pushes_listed`).
            let listed = e
                .as_service_error()
                .is_some_and(|s| s.is_image_already_exists_exception());
            assert!(listed, "PutImage {repository}:{tag}: {e:?}");
        }
    }

    /// `HOST=URL,...` for `ECR_REPLICATOR_REGISTRY_ENDPOINTS` (the Lambda functions' view).
    pub fn endpoints_env(&self) -> String {
        endpoints_of(&self.planes)
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
