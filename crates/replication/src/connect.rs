//! Connections to the registries of a job: a registry client with fresh credentials, and for
//! ECR registries the control plane (`EcrAdmin`), built once per registry and role and reused.

use std::collections::HashMap;
use std::sync::Arc;

use ecr::{
    AssumeRole, AwsSettings, EcrAdmin, EcrRegistry, EcrTokenSource, RoleArn, SecretArn,
    SecretCredentialSource, WorkBucket,
};
use oci::{ClientConfig, Credential, CredentialStore, PullMeter, RegistryClient};
use tokio::sync::Mutex;

use crate::allowlist::{Allowlist, ALLOWLIST_VARIABLE};
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::job::{canonical_registry, Job, LayoutSide, ValidJob};
use crate::keys::SignaturePolicy;
use crate::sigstore::{BundleVerifier, TrustedRootPolicy, TrustedRootSource};
use crate::trust::PolicySource;

/// Settings read once at the edge (a Lambda's environment, the CLI's flags).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// AWS SDK settings (endpoint override for moto).
    pub aws: AwsSettings,
    /// Registry client template: retries, chunk sizes, endpoint overrides, plain-HTTP registries.
    pub registry: ClientConfig,
    /// Credentials for registries that are not ECR (ECR ones come from tokens).
    pub credentials: CredentialStore,
    /// Entries asked per page of an OCI registry's catalog and tag lists (`None`:
    /// `DEFAULT_CATALOG_PAGE_SIZE`).
    pub catalog_page_size: Option<usize>,
    /// The run's work bucket (S3), where `enumerate-images` keeps a repository's selection for
    /// its later pages; without one every page lists the repository again.
    pub work_bucket: Option<WorkBucketSettings>,
    /// Where jobs may go (`None`: anywhere, as the CLI allows unless given one). The functions
    /// always have one: from `ECR_REPLICATOR_ALLOWED_REGISTRIES`, or an empty one refusing
    /// every job.
    pub allowlist: Option<Allowlist>,
    /// How much work one invocation and one execution take on before handing back.
    pub limits: WorkflowLimits,
    /// Prices and assumptions the reports' costs are counted with (`ECR_REPLICATOR_PRICES`).
    pub cost_model: CostModel,
    /// The Sigstore trusted root bundles are verified against (`ECR_REPLICATOR_TRUSTED_ROOT`).
    pub trusted_root: TrustedRootSource,
    /// How that root is checked (a sha256 pin, its bucket's owner, CT logs) and how long one
    /// read from S3 is kept (`ECR_REPLICATOR_TRUSTED_ROOT_*`).
    pub trusted_root_policy: TrustedRootPolicy,
    /// The KMS key promotion receipts are signed with (`ECR_REPLICATOR_RECEIPT_KEY`); none:
    /// no receipts.
    pub receipt_key: Option<ecr::KmsKeyArn>,
}

/// How much work one invocation and one execution take on before handing the rest back, so no
/// history nears Step Functions' 25,000 events and no invocation its timeout. Lowered only to
/// reach the limits with a small catalog in tests (`ECR_REPLICATOR_TRIAGE_SECONDS`,
/// `ECR_REPLICATOR_PAGES_PER_CHILD`, `ECR_REPLICATOR_PAGES_PER_EXECUTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkflowLimits {
    /// How long `enumerate-repositories` checks repositories for work before handing back.
    pub triage_budget: std::time::Duration,
    /// Pages of images a repository child runs before it hands its token back to the parent
    /// (about 40 events a page: 400 pages stay near 16,000 events, retries included).
    pub pages_per_child: u32,
    /// Pages of repositories an execution runs before it continues as a new execution (about
    /// 30 events a page).
    pub pages_per_execution: u32,
    /// Selected images one `verify-repository` call compares with every destination at most
    /// (`VERIFY_IMAGES_PER_CALL`; `ECR_REPLICATOR_VERIFY_IMAGES_PER_CALL`): a larger
    /// repository is verified page by page.
    pub verify_images_per_call: usize,
    /// The concurrent executions the deployment reserves for each copying function
    /// (`copyConcurrency`, `ECR_REPLICATOR_COPY_CONCURRENCY`): a run's shares of `maxConcurrency`
    /// are cut to it (`None`: no reservation, no cap).
    pub copy_concurrency: Option<u32>,
}

impl WorkflowLimits {
    /// The copy invocations a run of `max_concurrency` starts at once: at most the copying
    /// functions' reservation. Lambda would throttle every invocation beyond it
    /// (`TooManyRequestsException`), each then waiting out retries while the reservation is
    /// full; capped, the run goes as fast as the reservation lets it without them.
    pub fn copies_at_once(&self, max_concurrency: u32) -> u32 {
        match self.copy_concurrency {
            Some(reserved) => max_concurrency.min(reserved.max(1)),
            None => max_concurrency,
        }
    }
}

/// Selected images one `verify-repository` call compares with every destination at most by
/// default (`WorkflowLimits::verify_images_per_call`); a repository with more is compared page
/// by page, the state machine calling the step again with the token it returns.
pub const VERIFY_IMAGES_PER_CALL: usize = 1000;

impl Default for WorkflowLimits {
    fn default() -> Self {
        WorkflowLimits {
            triage_budget: std::time::Duration::from_secs(120),
            pages_per_child: 400,
            pages_per_execution: 500,
            verify_images_per_call: VERIFY_IMAGES_PER_CALL,
            copy_concurrency: None,
        }
    }
}

/// Entries asked per page of an OCI catalog or tag list unless set: the most the distribution
/// registry serves in one page.
pub const DEFAULT_CATALOG_PAGE_SIZE: usize = 1000;

/// Where the work bucket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkBucketSettings {
    /// Bucket name.
    pub bucket: String,
    /// The bucket's region (the workflow's).
    pub region: String,
}

/// A registry reached with the right identity.
pub struct Connection {
    /// The registry host.
    pub registry: String,
    /// Page size for OCI catalog listings.
    pub catalog_page_size: usize,
    /// Data plane client.
    pub client: RegistryClient,
    /// Control plane, for ECR registries.
    pub ecr: Option<EcrAdmin>,
    token: Option<Arc<EcrTokenSource>>,
    secret: Option<Arc<SecretCredentialSource>>,
    /// Manifest GETs are pulls here (Docker Hub, or a budgeted source): listed with HEADs.
    counts_pulls: bool,
    current: Mutex<Option<Credential>>,
}

impl Connection {
    /// Whether this registry counts manifest GETs as pulls (Docker Hub, or a source the job
    /// gives a pull budget): listing and presence then use HEADs.
    pub fn counts_pulls(&self) -> bool {
        self.counts_pulls
    }

    /// A view of this connection (same client, credentials and caches) whose manifest GETs go
    /// through `meter` as well: every read a step makes through it is counted there, whichever
    /// module makes it (the signature gate, the platform subset, a listing), and judged
    /// against the lowest count the registry answered this connection.
    pub fn metered(&self, meter: Arc<PullMeter>) -> Connection {
        let current = self.current.try_lock().ok().and_then(|c| c.clone());
        Connection {
            registry: self.registry.clone(),
            catalog_page_size: self.catalog_page_size,
            client: self.client.metered(meter),
            ecr: self.ecr.clone(),
            token: self.token.clone(),
            secret: self.secret.clone(),
            counts_pulls: self.counts_pulls,
            current: Mutex::new(current),
        }
    }

    /// The manifest `digest` of `repository` in this registry, with the reference it was read
    /// by (for messages).
    pub async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &oci::Digest,
    ) -> oci::Result<(oci::Reference, oci::Manifest)> {
        let reference = oci::Reference {
            repository: oci::Repository {
                registry: self.registry.clone(),
                name: repository.to_string(),
            },
            tag: None,
            digest: Some(digest.clone()),
        };
        let manifest = self.client.get_manifest(&reference).await?;
        Ok((reference, manifest))
    }

    /// Makes sure the client holds an unexpired ECR token, or the credential the registry's
    /// secret holds (a no-op for other registries).
    pub async fn refresh_credentials(&self) -> Result<()> {
        let fetched = match (&self.token, &self.secret) {
            (Some(token), _) => token.credential().await,
            (None, Some(secret)) => secret.credential().await,
            (None, None) => return Ok(()),
        };
        let credential = fetched.map_err(|source| Error::Aws {
            context: format!("getting registry credentials for {}", self.registry),
            source,
        })?;
        let mut current = self.current.lock().await;
        if current.as_ref() != Some(&credential) {
            self.client
                .set_credential(&self.registry, credential.clone());
            *current = Some(credential);
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// A layout served on loopback (never shared with a job naming that host as a registry).
    layout: bool,
    registry: String,
    role: Option<String>,
    external_id: Option<String>,
    credential: Option<String>,
    insecure: bool,
    counts_pulls: bool,
}

/// How a job reaches one registry.
struct Reach<'a> {
    /// The registry is a layout served on loopback.
    layout: bool,
    registry: &'a str,
    role: Option<&'a str>,
    external_id: Option<&'a str>,
    credential: Option<&'a str>,
    insecure: bool,
    /// The registry counts manifest GETs as pulls (Docker Hub, or a source the job gives a
    /// pull budget): its listing resolves tags with HEADs.
    counts_pulls: bool,
}

/// Builds and caches connections (warm Lambda invocations reuse them).
pub struct Connections {
    settings: Settings,
    cache: Mutex<HashMap<Key, Arc<Connection>>>,
    work_bucket: tokio::sync::OnceCell<Option<WorkBucket>>,
    /// The trusted root's verifier and when it was read.
    bundle_verifier: Mutex<Option<(Arc<BundleVerifier>, std::time::Instant)>>,
    receipt_signer: tokio::sync::OnceCell<Option<Arc<ecr::KmsSigner>>>,
    /// Source layouts served to the steps as registries on loopback.
    layouts: crate::connect_layout::ServedLayouts,
}

impl Connections {
    /// A connection cache over these settings.
    pub fn new(settings: Settings) -> Self {
        Connections {
            settings,
            cache: Mutex::new(HashMap::new()),
            work_bucket: tokio::sync::OnceCell::new(),
            bundle_verifier: Mutex::new(None),
            receipt_signer: tokio::sync::OnceCell::new(),
            layouts: Default::default(),
        }
    }

    /// The signer of promotion receipts, when the settings name a key (built once).
    pub async fn receipt_signer(&self) -> Option<Arc<ecr::KmsSigner>> {
        self.receipt_signer
            .get_or_init(|| async {
                let key = self.settings.receipt_key.clone()?;
                Some(Arc::new(ecr::KmsSigner::new(&self.settings.aws, key).await))
            })
            .await
            .clone()
    }

    /// The deployment's Sigstore trusted root, read on the first signature check; one read from
    /// S3 is read again once older than `trusted_root_policy.max_age` (an hour), so a warm
    /// function takes a replaced root within that (a failed read fails the check, never falls
    /// back to the old root).
    pub async fn bundle_verifier(&self) -> Result<Arc<BundleVerifier>> {
        let mut held = self.bundle_verifier.lock().await;
        if let Some((verifier, read_at)) = held.as_ref() {
            let expires = matches!(self.settings.trusted_root, TrustedRootSource::S3 { .. });
            if !expires || read_at.elapsed() < self.settings.trusted_root_policy.max_age {
                return Ok(verifier.clone());
            }
        }
        *held = None;
        let verifier = BundleVerifier::load(
            &self.settings.trusted_root,
            &self.settings.trusted_root_policy,
            &self.settings.aws,
        )
        .await?;
        *held = Some((verifier.clone(), std::time::Instant::now()));
        Ok(verifier)
    }

    /// The run's work bucket, when the settings name one (built once).
    pub async fn work_bucket(&self) -> Option<&WorkBucket> {
        self.work_bucket
            .get_or_init(|| async {
                let settings = self.settings.work_bucket.as_ref()?;
                Some(
                    WorkBucket::new(
                        &self.settings.aws,
                        &settings.region,
                        settings.bucket.clone(),
                    )
                    .await,
                )
            })
            .await
            .as_ref()
    }

    /// `text` with each layout this process serves on loopback named as users know it
    /// (`127.0.0.1:PORT/team/app` becomes `oci:s3://BUCKET/PREFIX/team/app`).
    pub async fn name_served_layouts(&self, text: &str) -> String {
        let mut named = text.to_string();
        for (host, name) in self.layouts.names().await {
            for scheme in ["http://", ""] {
                named = named.replace(&format!("{scheme}{host}"), &name);
            }
        }
        named
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Refuses a job naming a registry, role or plain HTTP the deployment does not allow
    /// (every connection asks first, so no request reaches a registry the job may not name).
    pub fn admit(&self, job: &Job) -> Result<()> {
        match &self.settings.allowlist {
            Some(allowlist) => allowlist.check(job),
            None => Ok(()),
        }
    }

    /// The policies an image of `job` must pass, each: the deployment's policy the job names,
    /// the job's own keys and identities (where the deployment allows them), and the policy
    /// each destination requires. Empty: the run is not gated.
    pub fn signature_policies(&self, job: &ValidJob) -> Result<Vec<SignaturePolicy>> {
        let mut policies: Vec<SignaturePolicy> = Vec::new();
        let allowlist = self.settings.allowlist.as_ref();
        let required = job.job.require_signature.as_ref();
        if let Some(name) = required.and_then(|r| r.policy.as_deref()) {
            let policy = allowlist
                .and_then(|a| a.trust_policy(name))
                .ok_or_else(|| {
                    Error::invalid(
                        "requireSignature.policy",
                        format!("{name:?} is not one of the deployment's trust policies (the CLI reads them from --allowlist FILE, `trustPolicies`)"),
                    )
                })?;
            policies.push(policy);
        }
        if let Some(own) = &job.signature_policy {
            policies.push(own.clone());
        }
        let Some(allowlist) = allowlist else {
            return Ok(policies);
        };
        // Each destination's required policy, and an allowlisted layout's (either side).
        let layout = job
            .job
            .layout_side()
            .map(|side| match side {
                LayoutSide::Export(at) | LayoutSide::Import(at) => at,
            })
            .and_then(|at| crate::allowlist::layouts::find(&allowlist.layouts, at))
            .and_then(|entry| entry.require_signature.as_deref());
        let destinations = job.job.destinations.iter().filter_map(|d| {
            allowlist
                .destination(&d.registry)
                .and_then(|e| e.require_signature.as_deref())
                .map(|name| (name, format!("the destination {}", d.registry)))
        });
        let layout = layout.map(|name| (name, "the layout".to_string()));
        for (name, d) in destinations.chain(layout) {
            let named = |p: &SignaturePolicy| matches!(&p.source, PolicySource::Deployment { name: n, .. } if n == name);
            if !policies.iter().any(named) {
                let policy = allowlist.trust_policy(name).ok_or_else(|| {
                    Error::invalid(
                        "requireSignature",
                        format!("{d} requires the trust policy {name:?}, which the deployment does not define"),
                    )
                })?;
                policies.push(policy);
            }
        }
        Ok(policies)
    }

    /// A digest of the deployment's allowlist (registries, trust policies, destination scopes):
    /// what a kept selection's verdicts were judged under.
    pub fn deployment_digest(&self) -> String {
        let allowlist = serde_json::to_vec(&self.settings.allowlist).unwrap_or_default();
        oci::Digest::of(&allowlist).to_string()
    }

    /// Refuses writing the destination repository `target` in `registry` when the deployment
    /// keeps jobs to other repositories there (its destination's `repositories`).
    pub fn check_target_scope(&self, registry: &str, target: &str) -> Result<()> {
        let entry = self
            .settings
            .allowlist
            .as_ref()
            .and_then(|a| a.destination(registry));
        match entry.and_then(|e| e.scope_problem(target)) {
            Some(problem) => Err(Error::TargetNameInvalid {
                repository: format!("{registry}/{target}"),
                problem,
            }),
            None => Ok(()),
        }
    }

    /// The job's source registry; a source layout (`source.layout`, in S3, allowlisted for
    /// import with its `transferKey`) verified and served as one on loopback.
    pub async fn source(&self, job: &Job) -> Result<Arc<Connection>> {
        self.admit(job)?;
        let s = &job.source;
        if let Some(location) = &s.layout {
            let served = self
                .served_layout(location, s.statement_digest.as_deref())
                .await?;
            return self
                .connect_served(served.host(), served.credential())
                .await;
        }
        self.connect(Reach {
            layout: false,
            registry: &s.registry,
            role: s.role_arn.as_deref(),
            external_id: s.external_id.as_deref(),
            credential: s.credential_arn.as_deref(),
            insecure: s.insecure,
            counts_pulls: s.pull_budget.is_some()
                || canonical_registry(&s.registry) == oci::reference::DOCKER_HUB,
        })
        .await
    }

    /// Pins a layout source to the statement it verifies now (`source.statementDigest`, when
    /// the job names none; a job that names one must find it): every later step of the run
    /// then reads that statement or fails. With a work bucket, a statement older than the newest
    /// one a run imported from the same layout is refused (a rollback), pinned or not, and a
    /// newer one recorded. Every execution, continuations too, starts here.
    pub async fn pin_source_statement(&self, job: &mut Job) -> Result<()> {
        let Some(location) = job.source.layout.clone() else {
            return Ok(());
        };
        self.admit(job)?;
        let served = self
            .served_layout(&location, job.source.statement_digest.as_deref())
            .await?;
        let layout = served.layout();
        match self.work_bucket().await {
            Some(bucket) => {
                crate::connect_layout::refuse_rollback(bucket, &location, &layout.statement).await?
            }
            None => tracing::warn!(
                layout = %location,
                "no work bucket: an older statement than one imported before is not refused"
            ),
        }
        job.source.statement_digest = Some(layout.statement.digest.clone());
        Ok(())
    }

    /// The layout at `location` served on loopback, opened with the allowlist's entry for it,
    /// verified now or earlier under the same `pin`.
    async fn served_layout(
        &self,
        location: &str,
        pin: Option<&str>,
    ) -> Result<Arc<crate::layout_registry::LayoutRegistry>> {
        self.layouts
            .host(
                &self.settings.aws,
                location,
                self.allowed_layout(location),
                pin,
            )
            .await
    }

    /// Seals the job's export into a layout, if it has one and is no dry run: the names its
    /// steps gave written into `index.json`, the statement signed with the receipt key (when
    /// the deployment has one). The statement's digest.
    pub async fn seal_layout_export(&self, job: &Job) -> Result<Option<String>> {
        if job.dry_run || job.export_destination().is_none() {
            return Ok(None);
        }
        // Checked as every step checks its copy of the job (this one is Finish's state).
        let job = &job.clone().validate()?.job;
        self.admit(job)?;
        let Some((index, location)) = job.export_destination() else {
            return Ok(None);
        };
        let served = self.export_layout(location, index).await?;
        let signer = self.receipt_signer().await;
        let signer = signer
            .as_deref()
            .map(|s| s as &dyn crate::receipts::ReceiptSigner);
        let sealed =
            crate::layout_seal::seal_export(served.export(), signer, &job.source_name()).await?;
        Ok(sealed.statement.map(|s| s.digest))
    }

    /// The gate's line `signed_by` as the deployment certifies it: every admission in it under
    /// one of the deployment's own trust policies (`receipts::certified_admissions`), else
    /// `None` (keys a caller wrote in the job, or a line that does not parse).
    pub fn certified_admissions(&self, signed_by: &str) -> Option<Vec<crate::receipts::Certified>> {
        let allowlist = self.settings.allowlist.as_ref()?;
        crate::receipts::certified_admissions(signed_by, |name| {
            Some(allowlist.trust_policies.get(name)?.canonical_digest())
        })
    }

    /// Records, for the seal's statement, where the image `repository@digest` (its name in
    /// the layout) that destination `index` is given came from (the job's source repository
    /// `from`) and what admitted it: the
    /// gate's line `signed_by`, only when every policy in it is one of the deployment's own
    /// (keys a caller wrote in the job, or a line that does not parse, admit nothing here).
    pub async fn record_export_provenance(
        &self,
        job: &Job,
        index: usize,
        (repository, digest): (&str, &oci::Digest),
        (from, signed_by): (&str, Option<&str>),
    ) -> Result<()> {
        let certified = signed_by.filter(|line| self.certified_admissions(line).is_some());
        let location = job.destination(index)?.layout.clone().unwrap_or_default();
        let served = self.export_layout(&location, index).await?;
        let (_, names) = served.export();
        let provenance = crate::layout_registry::Provenance {
            repository: repository.to_string(),
            digest: digest.to_string(),
            source: format!("{}/{from}", job.source_name()),
            admitted_by: certified.into_iter().map(str::to_string).collect(),
        };
        names
            .record_provenance(&provenance)
            .await
            .map_err(|source| Error::Registry {
                image: format!("oci:{location}"),
                source,
            })
    }

    /// An export job's layout checked as its steps will open it, without a call: in S3, allowed
    /// for export by the deployment, with the work bucket its names wait in. Nothing for a job
    /// without a destination layout.
    pub async fn check_layout_export(&self, job: &Job) -> Result<()> {
        let Some((index, location)) = job.export_destination() else {
            return Ok(());
        };
        let field = format!("destinations[{index}].layout");
        crate::connect_layout::export_place(
            (location, &field),
            self.allowed_layout(location),
            self.work_bucket().await,
        )
        .map(|_| ())
    }

    /// The layout at `location` (destination `index`) served on loopback for export, opened
    /// with the allowlist's entry for it and the work bucket its names wait in.
    async fn export_layout(
        &self,
        location: &str,
        index: usize,
    ) -> Result<Arc<crate::layout_registry::LayoutExportRegistry>> {
        let field = format!("destinations[{index}].layout");
        self.layouts
            .export_host(
                &self.settings.aws,
                (location, &field),
                self.allowed_layout(location),
                self.work_bucket().await,
            )
            .await
    }

    /// The deployment's allowlist entry for the layout at `location`, if any.
    fn allowed_layout(&self, location: &str) -> Option<&crate::allowlist::layouts::AllowedLayout> {
        self.settings
            .allowlist
            .as_ref()
            .and_then(|a| crate::allowlist::layouts::find(&a.layouts, location))
    }

    /// Destination `index` of the job.
    pub async fn destination(&self, job: &Job, index: usize) -> Result<Arc<Connection>> {
        self.admit(job)?;
        let d = job.destination(index)?;
        if let Some(location) = &d.layout {
            // An S3 layout the deployment allows exporting into, served on loopback: blobs go
            // there as uploads (`layout_registry::LayoutExportRegistry`).
            let served = self.export_layout(location, index).await?;
            return self
                .connect_served(served.host(), served.credential())
                .await;
        }
        self.connect(Reach {
            layout: false,
            registry: &d.registry,
            role: d.role_arn.as_deref(),
            external_id: d.external_id.as_deref(),
            credential: d.credential_arn.as_deref(),
            insecure: d.insecure,
            counts_pulls: false,
        })
        .await
    }

    /// A layout served on loopback at `host`, reached with its server's `credential`.
    async fn connect_served(
        &self,
        host: &str,
        credential: oci::Credential,
    ) -> Result<Arc<Connection>> {
        let conn = self
            .connect(Reach {
                layout: true,
                registry: host,
                role: None,
                external_id: None,
                credential: None,
                insecure: true,
                counts_pulls: false,
            })
            .await?;
        conn.client.set_credential(host, credential);
        Ok(conn)
    }

    async fn connect(&self, reach: Reach<'_>) -> Result<Arc<Connection>> {
        let Reach {
            layout,
            registry,
            role,
            external_id,
            credential,
            insecure,
            counts_pulls,
        } = reach;
        let key = Key {
            layout,
            registry: registry.to_string(),
            role: role.map(str::to_string),
            external_id: external_id.map(str::to_string),
            credential: credential.map(str::to_string),
            insecure,
            counts_pulls,
        };
        let mut cache = self.cache.lock().await;
        if let Some(conn) = cache.get(&key) {
            let conn = conn.clone();
            drop(cache);
            conn.refresh_credentials().await?;
            return Ok(conn);
        }
        let mut config = self.settings.registry.clone();
        if insecure && !config.insecure_registries.iter().any(|r| r == registry) {
            config.insecure_registries.push(registry.to_string());
        }
        let mut client =
            RegistryClient::new(config, self.settings.credentials.clone()).map_err(|source| {
                Error::Listing {
                    what: format!("registry client for {registry}"),
                    source,
                }
            })?;
        if counts_pulls {
            // Every manifest GET this connection sends is counted here, whichever step or
            // module sends it, and the lowest count the registry answered holds for all of
            // them (a step's meter stacks on it).
            client = client.metered(Arc::new(PullMeter::counting(registry)));
        }
        let (ecr, token) = if EcrRegistry::is_ecr_host(registry) {
            let parsed = EcrRegistry::parse(registry).map_err(|source| Error::Aws {
                context: "reading the registry host".into(),
                source,
            })?;
            let assume = match role {
                Some(arn) => Some(AssumeRole::new(
                    RoleArn::parse(arn).map_err(|source| Error::Aws {
                        context: "reading the role".into(),
                        source,
                    })?,
                    external_id.map(str::to_string),
                )),
                None => None,
            };
            let aws = ecr::ecr_client(&self.settings.aws, &parsed, assume.as_ref()).await;
            let token = Arc::new(EcrTokenSource::new(aws.clone(), registry));
            // A token that expires mid-copy (or is revoked) is replaced and the request retried.
            let refresher_token = token.clone();
            client.set_refresher(
                registry,
                Arc::new(move || {
                    let token = refresher_token.clone();
                    Box::pin(async move {
                        token.invalidate().await;
                        token.credential().await.ok()
                    })
                }),
            );
            (Some(EcrAdmin::new(aws, parsed)), Some(token))
        } else {
            (None, None)
        };
        let secret = match credential {
            Some(arn) => {
                let arn = SecretArn::parse(arn).map_err(|e| Error::invalid("credentialArn", e))?;
                let secret = Arc::new(SecretCredentialSource::new(&self.settings.aws, arn).await);
                // A rotated secret: the registry refuses what was read, so read it again.
                let rereader = secret.clone();
                client.set_refresher(
                    registry,
                    Arc::new(move || {
                        let secret = rereader.clone();
                        Box::pin(async move { secret.reread().await.ok() })
                    }),
                );
                Some(secret)
            }
            None => None,
        };
        let conn = Arc::new(Connection {
            registry: registry.to_string(),
            catalog_page_size: self
                .settings
                .catalog_page_size
                .unwrap_or(DEFAULT_CATALOG_PAGE_SIZE)
                .max(1),
            client,
            ecr,
            token,
            secret,
            counts_pulls,
            current: Mutex::new(None),
        });
        cache.insert(key, conn.clone());
        drop(cache);
        conn.refresh_credentials().await?;
        Ok(conn)
    }
}

/// AWS settings from the environment and the registry client template, for Lambdas:
/// `AWS_ENDPOINT_URL`, `ECR_REPLICATOR_REGISTRY_ENDPOINTS` (`host=url,...`),
/// `ECR_REPLICATOR_INSECURE_REGISTRIES` (`host,...`), `ECR_REPLICATOR_THROTTLE_BUDGET_SECONDS`
/// (how long one request or blob may be throttled; default 300, keep it below the timeout),
/// `ECR_REPLICATOR_WORK_BUCKET` (the run's work bucket, in `AWS_REGION`),
/// `ECR_REPLICATOR_ALLOWED_REGISTRIES` (the deployment's allowlist, JSON; without it every job
/// is refused), `ECR_REPLICATOR_TRUSTED_ROOT` (the Sigstore trusted root: a file or
/// `s3://bucket/key`; default Sigstore's public-good root, built in),
/// `ECR_REPLICATOR_TRUSTED_ROOT_SHA256` (its pinned sha256), `ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER`
/// (the account its bucket must belong to; default the function's own),
/// `ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT` (`true`: accept a root without CT logs),
/// `ECR_REPLICATOR_RECEIPT_KEY` (the KMS key ARN promotion receipts are signed with).
pub fn settings_from_env() -> Result<Settings> {
    let mut registry = ClientConfig::default();
    if let Ok(seconds) = std::env::var("ECR_REPLICATOR_THROTTLE_BUDGET_SECONDS") {
        let seconds: u64 = seconds.trim().parse().map_err(|_| {
            Error::invalid(
                "ECR_REPLICATOR_THROTTLE_BUDGET_SECONDS",
                format!("{seconds:?} is not a whole number of seconds"),
            )
        })?;
        registry.retry.throttle_budget = std::time::Duration::from_secs(seconds);
    }
    if let Ok(map) = std::env::var("ECR_REPLICATOR_REGISTRY_ENDPOINTS") {
        for entry in map.split(',').filter(|e| !e.trim().is_empty()) {
            registry
                .add_endpoint(entry)
                .map_err(|problem| Error::invalid("ECR_REPLICATOR_REGISTRY_ENDPOINTS", problem))?;
        }
    }
    if let Ok(list) = std::env::var("ECR_REPLICATOR_INSECURE_REGISTRIES") {
        registry.insecure_registries = list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    // Fail closed: a function without the deployment's allowlist goes nowhere.
    let allowlist = match std::env::var(ALLOWLIST_VARIABLE) {
        Ok(text) => Allowlist::from_json(&text, ALLOWLIST_VARIABLE)?,
        Err(_) => Allowlist::default(),
    };
    let mut limits = WorkflowLimits::default();
    let whole = |name: &str| -> Result<Option<u32>> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| Error::invalid(name, format!("{text:?} is not a whole number"))),
        }
    };
    if let Some(seconds) = whole("ECR_REPLICATOR_TRIAGE_SECONDS")? {
        limits.triage_budget = std::time::Duration::from_secs(seconds.into());
    }
    if let Some(pages) = whole("ECR_REPLICATOR_PAGES_PER_CHILD")? {
        limits.pages_per_child = pages.max(1);
    }
    if let Some(pages) = whole("ECR_REPLICATOR_PAGES_PER_EXECUTION")? {
        limits.pages_per_execution = pages.max(1);
    }
    if let Some(images) = whole("ECR_REPLICATOR_VERIFY_IMAGES_PER_CALL")? {
        limits.verify_images_per_call = (images as usize).max(1);
    }
    limits.copy_concurrency = whole("ECR_REPLICATOR_COPY_CONCURRENCY")?;
    let aws = AwsSettings::from_env();
    if let Some(function) = &aws.app_name {
        // Registry requests name the function too (`function/<name>` in the user agent).
        registry.user_agent = format!("{} function/{function}", registry.user_agent);
    }
    Ok(Settings {
        aws,
        registry,
        credentials: CredentialStore::new(),
        catalog_page_size: None,
        work_bucket: std::env::var("ECR_REPLICATOR_WORK_BUCKET")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .map(|bucket| WorkBucketSettings {
                bucket: bucket.trim().to_string(),
                region: ecr::own_region(),
            }),
        allowlist: Some(allowlist),
        limits,
        cost_model: CostModel::from_env()?,
        trusted_root: TrustedRootSource::parse(
            &std::env::var("ECR_REPLICATOR_TRUSTED_ROOT").unwrap_or_default(),
        )
        .map_err(|problem| Error::invalid("ECR_REPLICATOR_TRUSTED_ROOT", problem))?,
        trusted_root_policy: trusted_root_policy_from_env()?,
        receipt_key: match std::env::var("ECR_REPLICATOR_RECEIPT_KEY") {
            Ok(arn) if !arn.trim().is_empty() => Some(
                ecr::KmsKeyArn::parse(&arn)
                    .map_err(|problem| Error::invalid("ECR_REPLICATOR_RECEIPT_KEY", problem))?,
            ),
            _ => None,
        },
    })
}

/// The trusted root's checks from `ECR_REPLICATOR_TRUSTED_ROOT_SHA256`,
/// `ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER` and `ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT`.
fn trusted_root_policy_from_env() -> Result<TrustedRootPolicy> {
    use crate::sigstore::{ALLOW_NO_CT_VARIABLE, BUCKET_OWNER_VARIABLE, SHA256_VARIABLE};
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Ok(TrustedRootPolicy {
        sha256: TrustedRootPolicy::parse_sha256(&var(SHA256_VARIABLE))
            .map_err(|problem| Error::invalid(SHA256_VARIABLE, problem))?,
        bucket_owner: TrustedRootPolicy::parse_account(&var(BUCKET_OWNER_VARIABLE))
            .map_err(|problem| Error::invalid(BUCKET_OWNER_VARIABLE, problem))?,
        allow_no_ct_logs: TrustedRootPolicy::parse_flag(&var(ALLOW_NO_CT_VARIABLE))
            .map_err(|problem| Error::invalid(ALLOW_NO_CT_VARIABLE, problem))?,
        ..TrustedRootPolicy::default()
    })
}
