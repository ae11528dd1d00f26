//! The registry the workflow's copy steps will export a layout into (issue 35): blob uploads
//! answered from S3 multipart uploads (moto), continued by other servers as another Lambda
//! invocation continues a range, and a blob visible at `blobs/sha256/<hex>` only once the server
//! hashed every byte it stored to the completing digest.

use std::sync::Arc;

use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::moto::{create_bucket_at, Moto};
use e2e::registry::TestRegistry;
use ecr::layout::{S3Layout, S3LayoutOptions, S3Location};
use oci::layout::{self, LayoutStore};
use oci::{
    copy_blob_segment, BlobRef, CredentialStore, Digest, RegistryClient, Repository,
    SegmentProgress,
};
use replication::layout_registry::{rehome, ExportNames, LayoutExportRegistry};

const BUCKET: &str = "exports";
const WORK_BUCKET: &str = "work";
const PREFIX: &str = "air-gap";
const MIB: u64 = 1 << 20;

struct Rig {
    _moto: Moto,
    s3: aws_sdk_s3::Client,
    store: Arc<S3Layout>,
    /// The names the export gives, in the deployment's work bucket.
    names: ExportNames,
}

impl Rig {
    async fn start() -> Self {
        let moto = Moto::start();
        create_bucket_at(&moto.url, BUCKET).await;
        create_bucket_at(&moto.url, WORK_BUCKET).await;
        let settings = moto.aws_settings();
        let config = ecr::sdk_config(&settings, "us-east-1", None).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        let location = S3Location::parse(&format!("s3://{BUCKET}/{PREFIX}")).unwrap();
        // Blobs over 5 MiB are moved from staging in a multipart copy of 5 MiB parts, as one
        // over 5 GB is on AWS (a single CopyObject below).
        let options = S3LayoutOptions {
            copy_part_bytes: Some(5 * MIB),
            ..Default::default()
        };
        let store = S3Layout::new(&settings, "us-east-1", location, options);
        let work = ecr::WorkBucket::new(&settings, "us-east-1", WORK_BUCKET.into()).await;
        Rig {
            _moto: moto,
            s3,
            store: Arc::new(store.await),
            names: ExportNames::new(work, &format!("s3://{BUCKET}/{PREFIX}")),
        }
    }

    /// A new server for the layout (a new invocation: another port, another credential) and a
    /// client holding its credential.
    async fn invocation(&self) -> (LayoutExportRegistry, RegistryClient) {
        let server = LayoutExportRegistry::serve(self.store.clone(), self.names.clone())
            .await
            .unwrap();
        let mut credentials = CredentialStore::new();
        credentials.insert(server.host(), server.credential());
        let client =
            RegistryClient::new(e2e::fast_retry_config(&[server.host()]), credentials).unwrap();
        (server, client)
    }

    /// The layout's `index.json`, as JSON.
    async fn index_json(&self) -> serde_json::Value {
        let index = self
            .store
            .read_file("index.json", 1 << 20)
            .await
            .unwrap()
            .expect("index.json");
        serde_json::from_slice(&index).unwrap()
    }

    /// Every key under the layout's prefix.
    async fn keys(&self) -> Vec<String> {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(PREFIX)
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect()
    }

    async fn uploads_in_progress(&self) -> usize {
        let listed = self
            .s3
            .list_multipart_uploads()
            .bucket(BUCKET)
            .prefix(PREFIX)
            .send()
            .await
            .unwrap();
        listed.uploads().len()
    }
}

/// `ml/model:<tag>` pushed to `src` with one layer of `size` bytes (from `seed`): the image
/// and the layer.
async fn image_with_layer(
    src: &TestRegistry,
    tag: &str,
    (seed, size): (u64, u64),
) -> (e2e::image::TestImage, BlobRef) {
    let image = ImageBuilder::new(Format::Oci).big_layer(seed, size).build();
    Pusher::new(&src.host, None)
        .push("ml/model", tag, &image)
        .await;
    let big = image.blobs.iter().find(|b| b.data.size() == size).unwrap();
    let blob = BlobRef {
        digest: Digest::parse(&big.digest).unwrap(),
        size,
    };
    (image, blob)
}

/// A source registry holding `team/app:v1` and its SBOM ([`app_with_sbom`]), a client of it,
/// and one invocation of the export registry with its client.
struct AppExport {
    src: TestRegistry,
    app: e2e::image::TestImage,
    sbom: e2e::image::TestImage,
    source: RegistryClient,
    server: LayoutExportRegistry,
    target: RegistryClient,
}

impl AppExport {
    /// Copies `team/app<from>` of the source into the export registry as `team/app<to>` (each
    /// `:TAG` or `@DIGEST`), as put-manifests and copy-blobs would.
    async fn copy(&self, from: &str, to: &str) {
        let at = |registry: &str, r: &str| {
            oci::Reference::parse(&format!("{registry}/team/app{r}")).unwrap()
        };
        replication::copy::copy_image(
            &self.source,
            &at(&self.src.host, from),
            &self.target,
            &at(self.server.host(), to),
            &replication::copy::CopyOptions::default(),
        )
        .await
        .unwrap();
    }
}

async fn app_export(rig: &Rig, seed: u64) -> AppExport {
    let src = TestRegistry::start();
    let (app, sbom) = app_with_sbom(&src, seed).await;
    let source =
        RegistryClient::new(e2e::fast_retry_config(&[&src.host]), CredentialStore::new()).unwrap();
    let (server, target) = rig.invocation().await;
    AppExport {
        src,
        app,
        sbom,
        source,
        server,
        target,
    }
}

/// `team/app:v1` (a multi-arch index from `seed`) pushed to `src` with an SBOM referring to
/// it (pushed by digest).
async fn app_with_sbom(
    src: &TestRegistry,
    seed: u64,
) -> (e2e::image::TestImage, e2e::image::TestImage) {
    let app = e2e::image::multi_arch(seed, 1, 2_000);
    let sbom = e2e::image::artifact(
        Some(&app),
        "application/spdx+json",
        "application/spdx+json",
        b"{}",
    );
    let pusher = Pusher::new(&src.host, None);
    pusher.push("team/app", "v1", &app).await;
    pusher.push("team/app", &sbom.digest, &sbom).await;
    (app, sbom)
}

fn blob_key(digest: &Digest) -> String {
    format!("{PREFIX}/blobs/sha256/{}", digest.hex())
}

/// GIVEN a 12 MiB layer in a registry WHEN it is copied into the S3 layout in 5 MiB segments,
/// each by a new server and client (as separate invocations are), one segment's answer lost
/// after S3 stored its part (a crash), the blob moved from staging in a multipart copy THEN the lost answer is refused with 416 and the blob
/// starts again; it arrives byte for byte at `blobs/sha256/<hex>`, with nothing left in
/// `uploads/` and no upload in progress (the refused one aborted); a second copy finds it present and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_written_in_ranges_by_separate_servers_and_resumed_after_a_lost_answer() {
    let rig = Rig::start().await;
    let src = TestRegistry::start();
    let (_, blob) = image_with_layer(&src, "v1", (31, 12 * MIB + 17)).await;
    let size = blob.size;
    let source =
        RegistryClient::new(e2e::fast_retry_config(&[&src.host]), CredentialStore::new()).unwrap();
    let from = Repository {
        registry: src.host.clone(),
        name: "ml/model".into(),
    };

    let mut state = None;
    let mut calls = 0;
    let mut lost_one = false;
    let mut sent = 0;
    let present = loop {
        calls += 1;
        assert!(calls < 10, "the blob never completed");
        let (server, target) = rig.invocation().await;
        let to = Repository {
            registry: server.host().to_string(),
            name: "ml/model".into(),
        };
        if let Some(oci::SegmentState { session, .. }) = state.as_mut() {
            rehome(session, server.host()).unwrap();
        }
        let progress =
            copy_blob_segment(&source, &from, &target, &to, &blob, state.clone(), 5 * MIB)
                .await
                .unwrap();
        match progress {
            SegmentProgress::InProgress { state: next, bytes } => {
                sent += bytes;
                // The second segment's answer is lost: its part is stored, its state is not.
                if calls == 2 && !lost_one {
                    lost_one = true;
                    continue;
                }
                state = Some(next);
            }
            SegmentProgress::Done { bytes, present } => {
                sent += bytes;
                break present;
            }
        }
    };
    assert!(!present);
    assert!(lost_one);
    // 12 MiB in 5 MiB segments is three calls; the lost answer made the blob start again.
    assert!(
        sent > size,
        "the blob was not sent again after the lost answer: {sent}"
    );

    let stored = layout::verify_blob(rig.store.as_ref(), &blob).await;
    assert!(stored.is_ok(), "{stored:?}");
    assert_eq!(
        rig.keys().await,
        [blob_key(&blob.digest)],
        "only the blob, no staging object"
    );
    // The refused session was dropped by the client (DELETE: AbortMultipartUpload).
    assert_eq!(
        rig.uploads_in_progress().await,
        0,
        "an upload left in progress"
    );

    // Exporting again: the blob is there, nothing is sent.
    let (server, target) = rig.invocation().await;
    let to = Repository {
        registry: server.host().to_string(),
        name: "other/repo".into(),
    };
    let again = copy_blob_segment(&source, &from, &target, &to, &blob, None, 5 * MIB)
        .await
        .unwrap();
    assert_eq!(
        again,
        SegmentProgress::Done {
            bytes: 0,
            present: true
        }
    );
}

/// GIVEN an upload of 6 MiB of bytes WHEN it is completed as another digest, or a PATCH claims
/// an offset the store does not hold, or a location names a blob's own key as its staging
/// object, or a PATCH follows one under S3's 5 MiB part minimum, or a forged location carries the hash state of other bytes (of an upload holding
/// bytes, and of an empty one) THEN each is refused (400 digest invalid, 416, 404; the forgery
/// by S3's own SHA-256 of what it holds) and no blob appears; an empty upload and a small one
/// complete as their blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_completed_as_another_digest_leaves_no_blob() {
    let rig = Rig::start().await;
    let (server, target) = rig.invocation().await;
    let to = Repository {
        registry: server.host().to_string(),
        name: "team/app".into(),
    };
    let bytes = vec![7u8; 6 * MIB as usize];
    let claimed = Digest::of(b"something else");
    let session = target.start_upload(&to).await.unwrap();
    let session = target
        .upload_part(session, bytes.clone().into(), bytes.len() as u64)
        .await
        .unwrap();
    let refused = target.complete_upload(session.clone(), &claimed).await;
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("400") || message.contains("DIGEST_INVALID"),
        "{message}"
    );
    assert_eq!(rig.store.blob_size(&claimed).await.unwrap(), None);
    assert_eq!(
        rig.store.blob_size(&Digest::of(&bytes)).await.unwrap(),
        None
    );
    assert!(rig.keys().await.is_empty(), "{:?}", rig.keys().await);

    // Attack: the session's state travels through the workflow, so a forged one names the
    // upload above with the hash state of other bytes of the same length; the server's own
    // check passes, S3's SHA-256 of what it holds does not, and no blob appears under either.
    // Both ways S3's check is made: a blob over the copy part size read back and hashed, a
    // smaller one hashed by S3 itself (CopyObject with ChecksumAlgorithm SHA256).
    for length in [bytes.len(), 1000] {
        let (mine, other) = (vec![7u8; length], vec![8u8; length]);
        let session = target.start_upload(&to).await.unwrap();
        let session = target
            .upload_part(session, mine.clone().into(), length as u64)
            .await
            .unwrap();
        let mut forged = session.clone();
        forged.location = forge(&session.location, |token| {
            let mut hash = oci::digest::Verifier::new();
            hash.update(&other);
            token["hash"] = serde_json::to_value(hash.export()).unwrap();
        });
        let refused = target.complete_upload(forged, &Digest::of(&other)).await;
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("DigestInvalid") && message.contains("/uploads/"),
            "{length}: {message}"
        );
        assert_eq!(
            rig.store.blob_size(&Digest::of(&other)).await.unwrap(),
            None
        );
        assert_eq!(rig.store.blob_size(&Digest::of(&mine)).await.unwrap(), None);
    }
    let other = vec![8u8; 1000];
    // The same forgery of an empty upload: S3 holds no byte, so only the empty digest is one.
    let session = target.start_upload(&to).await.unwrap();
    let mut forged = session.clone();
    forged.location = forge(&session.location, |token| {
        let mut hash = oci::digest::Verifier::new();
        hash.update(&other);
        let mut state = hash.export();
        state.seen = 0;
        token["hash"] = serde_json::to_value(state).unwrap();
    });
    let refused = target.complete_upload(forged, &Digest::of(&other)).await;
    assert!(
        refused.is_err(),
        "an empty upload completed as {}",
        Digest::of(&other)
    );
    assert!(rig.keys().await.is_empty(), "{:?}", rig.keys().await);

    // An empty blob (no part: S3 completes no upload of none) and a small one (one CopyObject).
    for bytes in [Vec::new(), vec![9u8; 1000]] {
        let blob = BlobRef {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
        };
        let session = target.start_upload(&to).await.unwrap();
        let session = if bytes.is_empty() {
            session
        } else {
            let len = bytes.len() as u64;
            target
                .upload_part(session, bytes.into(), len)
                .await
                .unwrap()
        };
        target.complete_upload(session, &blob.digest).await.unwrap();
        let stored = layout::verify_blob(rig.store.as_ref(), &blob).await;
        assert!(stored.is_ok(), "{stored:?}");
    }
    assert_eq!(rig.keys().await.len(), 2, "{:?}", rig.keys().await);

    // A PATCH after one under 5 MiB would leave a part S3 refuses at completion: refused now,
    // naming the range size.
    let session = target.start_upload(&to).await.unwrap();
    let session = target
        .upload_part(session, vec![1u8; 1000].into(), 1000)
        .await
        .unwrap();
    let small = target.upload_part(session, vec![1u8; 10].into(), 10).await;
    let message = small.unwrap_err().to_string();
    assert!(message.contains("rangeBytes"), "{message}");

    // A session whose offset is not what the store holds.
    let fresh = target.start_upload(&to).await.unwrap();
    let mut ahead = fresh.clone();
    ahead.offset = 5;
    let out_of_step = target.upload_part(ahead, vec![1u8; 10].into(), 10).await;
    assert!(
        matches!(
            out_of_step,
            Err(oci::Error::UploadSessionBroken { status: 416, .. })
        ),
        "{out_of_step:?}"
    );

    // A location whose staging object is a blob's place is no session of this server.
    let blob_place = format!("blobs/sha256/{}", Digest::of(b"x").hex());
    let forged_token = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&serde_json::json!({
            "upload": {"staging": blob_place, "uploadId": "x"},
            "hash": {"sha256State": "", "seen": 0}
        }))
        .unwrap(),
    );
    let mut forged = fresh.clone();
    forged.location = format!(
        "http://{}/v2/team/app/blobs/uploads/{forged_token}",
        server.host()
    );
    let forged_put = target.upload_part(forged, vec![1u8; 10].into(), 10).await;
    assert!(
        matches!(
            forged_put,
            Err(oci::Error::UploadSessionBroken { status: 404, .. })
        ),
        "{forged_put:?}"
    );
    assert_eq!(rig.keys().await.len(), 2, "{:?}", rig.keys().await);
}

/// A session location whose token (the last path segment, base64url JSON) `change` edits.
fn forge(location: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (base, token) = location.rsplit_once('/').unwrap();
    let mut token: serde_json::Value =
        serde_json::from_slice(&engine.decode(token).unwrap()).unwrap();
    change(&mut token);
    format!(
        "{base}/{}",
        engine.encode(serde_json::to_vec(&token).unwrap())
    )
}

/// GIVEN a deployment that allows exporting into `s3://exports/air-gap` WHEN the `copy-blobs`
/// step copies a 12 MiB layer into that layout destination in 5 MiB segments, each call with
/// a fresh connection cache (a new server on a new port) and its state carried as JSON THEN
/// the layer arrives byte for byte at its key; a deployment that does not allow exporting there
/// refuses the step naming `destinations[0].layout`, and nothing is written. With the image's
/// other blobs copied, the `put-manifests` step puts it into the layout, and the workflow's last
/// step (`summarise` with the job) seals it: the statement, signed with the deployment's KMS
/// receipt key, verifies with that key and states the image; its digest is in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_blobs_writes_a_layer_into_an_allowed_s3_layout_across_invocations() {
    use replication::connect::{Connections, Settings};
    use replication::plan::CopyRange;
    use replication::steps::{CopyBlobs, CopyBlobsInput, ImageTask};

    let rig = Rig::start().await;
    let src = TestRegistry::start();
    let (image, blob) = image_with_layer(&src, "v2", (41, 12 * MIB + 5)).await;
    let size = blob.size;
    let location = format!("s3://{BUCKET}/{PREFIX}");
    let allowlist = |export: bool| {
        serde_json::from_value(serde_json::json!({
            "sources": [{"registry": src.host}],
            "insecure": [src.host],
            "layouts": [{"location": location, "export": export, "import": !export,
                         "bucketOwner": "123456789012"}]
        }))
        .unwrap()
    };
    let settings = |export: bool| Settings {
        registry: e2e::fast_retry_config(&[&src.host]),
        aws: rig._moto.aws_settings(),
        allowlist: Some(allowlist(export)),
        work_bucket: Some(replication::connect::WorkBucketSettings {
            bucket: WORK_BUCKET.into(),
            region: "us-east-1".into(),
        }),
        ..Settings::default()
    };
    let job = replication::job::Job::from_json(
        &serde_json::json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"layout": location}],
            "rangeBytes": 5 * MIB
        })
        .to_string(),
    )
    .unwrap();
    let task = ImageTask {
        repository: "ml/model".into(),
        digest: Digest::parse(&image.digest).unwrap(),
        tags: vec!["v2".into()],
        destination: 0,
        // How enumerate-images names a layout destination.
        target_registry: format!("oci:{location}"),
        target_repository: "ml/model".into(),
        present: false,
        referrers: Vec::new(),
        tags_absent: false,
        repository_absent: false,
        pushed_at: None,
        target_digest: None,
        signed_by: None,
    };
    let input = |state| CopyBlobsInput {
        job: job.clone(),
        image: task.clone(),
        range: CopyRange::Segments {
            blob: blob.clone(),
            segments: 3,
        },
        state,
        bytes_before: 0,
    };
    let event = |input| lambda_runtime::LambdaEvent::new(input, lambda_runtime::Context::default());

    // Not allowed for export: refused before anything is written.
    let refused =
        functions::invoke::<CopyBlobs>(&Connections::new(settings(false)), event(input(None)))
            .await
            .unwrap_err();
    assert_eq!(
        refused.kind,
        replication::ErrorKind::InvalidInput,
        "{refused:?}"
    );
    assert!(
        refused.message.contains("destinations[0].layout"),
        "{}",
        refused.message
    );
    assert!(rig.keys().await.is_empty());

    let mut state = None;
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 3, "more calls than segments");
        let conns = Connections::new(settings(true));
        let carried: CopyBlobsInput =
            serde_json::from_str(&serde_json::to_string(&input(state)).unwrap()).unwrap();
        let out = functions::invoke::<CopyBlobs>(&conns, event(carried))
            .await
            .unwrap();
        if out.done {
            assert_eq!(out.range_bytes_copied, size - 10 * MIB);
            break;
        }
        state = out.state;
    }
    assert_eq!(calls, 3);
    let stored = layout::verify_blob(rig.store.as_ref(), &blob).await;
    assert!(stored.is_ok(), "{stored:?}");
    assert_eq!(rig.keys().await, [blob_key(&blob.digest)]);

    // The image's other blobs as a range of whole blobs, then put-manifests: the image is in
    // the layout under its tag, recorded for the seal, and the seal states it.
    let others: Vec<BlobRef> = image
        .blobs
        .iter()
        .filter(|b| b.digest != blob.digest.as_str())
        .map(|b| BlobRef {
            digest: Digest::parse(&b.digest).unwrap(),
            size: b.data.size(),
        })
        .collect();
    let conns = Connections::new(settings(true));
    let mut whole = input(None);
    whole.range = CopyRange::Blobs { blobs: others };
    functions::invoke::<CopyBlobs>(&conns, event(whole))
        .await
        .unwrap();
    let put = functions::invoke::<replication::steps::PutManifests>(
        &Connections::new(settings(true)),
        lambda_runtime::LambdaEvent::new(
            replication::steps::PutManifestsInput {
                job: job.clone(),
                image: task.clone(),
                copied: Vec::new(),
                execution: None,
            },
            lambda_runtime::Context::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        put.status,
        replication::report::ImageStatus::Copied,
        "{put:?}"
    );
    // The workflow's last step (`Finish`: summarise with the job) seals the export with the
    // deployment's receipt key (KMS).
    let (key_arn, public_der) = rig._moto.signing_key().await;
    let mut signing = settings(true);
    signing.receipt_key = Some(ecr::KmsKeyArn::parse(&key_arn).unwrap());
    let finish = replication::steps::SummariseInput {
        job: Some(job.clone()),
        fail_on_failure: true,
        execution: Some("arn:aws:states:us-east-1:123456789012:execution:replicate:run".into()),
        ..Default::default()
    };
    let report = functions::invoke::<replication::steps::Summarise>(
        &Connections::new(signing),
        lambda_runtime::LambdaEvent::new(finish, lambda_runtime::Context::default()),
    )
    .await
    .unwrap();
    let digest = report
        .layout_statement
        .expect("the statement's digest in the report");
    let trusted =
        replication::transfer_statement::TrustedTransferKey::from_der(&public_der).unwrap();
    let verified = replication::layout_registry::VerifiedLayout::read(rig.store.clone(), &trusted)
        .await
        .unwrap();
    let statement = verified.statement;
    assert_eq!(statement.digest, digest);
    let stated: Vec<&String> = statement.images.keys().collect();
    assert_eq!(stated, ["ml/model:v2"], "{stated:?}");
    assert_eq!(statement.images["ml/model:v2"].digest, image.digest);
}

/// GIVEN a multi-arch index and an SBOM referring to it in a registry WHEN both are copied into
/// the export registry with the library's image copy (blobs, children by digest, the index
/// under its tag, the SBOM by digest) THEN the layout holds every manifest byte for byte, the
/// tag and the referrer are recorded for the run's end (`uploads/refs/`), the tag answers with
/// the index's digest and a second copy finds the image present; a manifest naming a blob the
/// layout lacks, an index whose child (uploaded as bytes) names one, and a manifest put under a
/// digest it is not, are refused and record nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_kept_byte_for_byte_and_their_names_recorded_for_the_runs_end() {
    use replication::copy::{copy_image, CopyOptions};
    use replication::layout_registry::PendingRef;

    let rig = Rig::start().await;
    let AppExport {
        src,
        app,
        sbom,
        source,
        server,
        target,
    } = app_export(&rig, 51).await;
    let reference = |registry: &str, r: &str| {
        oci::Reference::parse(&format!("{registry}/team/app{r}")).unwrap()
    };
    let options = CopyOptions::default();
    let tagged = reference(server.host(), ":v1");
    let copied = copy_image(
        &source,
        &reference(&src.host, ":v1"),
        &target,
        &tagged,
        &options,
    )
    .await
    .unwrap();
    assert_eq!((copied.manifests_put, copied.already_present), (5, false));
    let by_digest = reference(server.host(), &format!("@{}", sbom.digest));
    let from = reference(&src.host, &format!("@{}", sbom.digest));
    copy_image(&source, &from, &target, &by_digest, &options)
        .await
        .unwrap();

    // Every manifest is in the layout byte for byte.
    for manifest in std::iter::once(&app).chain(&app.children).chain([&sbom]) {
        let blob = BlobRef {
            digest: Digest::parse(&manifest.digest).unwrap(),
            size: manifest.manifest.len() as u64,
        };
        let stored = layout::read_manifest(rig.store.as_ref(), &blob, None)
            .await
            .unwrap();
        assert_eq!(stored.bytes, manifest.manifest);
    }
    // The tag and the referrer, recorded; the children by digest are not names.
    let mut records: Vec<PendingRef> = Vec::new();
    for file in rig.names.list().await.unwrap() {
        records.push(rig.names.get(&file).await.unwrap().unwrap());
    }
    // None of it in the layout, where a writer of the bucket could plant one.
    assert!(
        !rig.keys().await.iter().any(|k| k.contains("refs")),
        "{:?}",
        rig.keys().await
    );
    records.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].digest, sbom.digest);
    assert_eq!(records[0].subject.as_deref(), Some(app.digest.as_str()));
    assert_eq!(
        records[0].artifact_type.as_deref(),
        Some("application/spdx+json")
    );
    assert_eq!(
        (records[1].tag.as_deref(), records[1].digest.as_str()),
        (Some("v1"), app.digest.as_str())
    );
    let head = target.head_manifest(&tagged).await.unwrap().unwrap();
    assert_eq!(head.digest.as_str(), app.digest);
    // The repository's tags, as enumerate-images lists them: the run's records.
    let repository = Repository {
        registry: server.host().to_string(),
        name: "team/app".into(),
    };
    assert_eq!(target.list_tags(&repository).await.unwrap(), ["v1"]);
    let again = copy_image(
        &source,
        &reference(&src.host, ":v1"),
        &target,
        &tagged,
        &options,
    )
    .await
    .unwrap();
    assert!(again.already_present, "{again:?}");

    // A manifest naming a blob the layout lacks, and one under another digest: refused.
    let lacking = ImageBuilder::new(Format::Oci).layer(52, 3_000).build();
    let manifest = oci::Manifest::from_bytes(lacking.manifest.clone(), None, "test").unwrap();
    let repo = Repository {
        registry: server.host().to_string(),
        name: "team/app".into(),
    };
    let refused = target.put_manifest(&repo, "v2", &manifest).await;
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("MANIFEST_BLOB_UNKNOWN") || message.contains("does not hold"),
        "{message}"
    );
    // An index whose child went in as mere bytes (a blob upload) naming what the layout lacks.
    let session = target.start_upload(&repo).await.unwrap();
    let len = manifest.bytes.len() as u64;
    let session = target
        .upload_part(session, manifest.bytes.clone().into(), len)
        .await
        .unwrap();
    target
        .complete_upload(session, &manifest.digest)
        .await
        .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest.media_type, "digest": manifest.digest.as_str(), "size": len}]
    }))
    .unwrap();
    let index = oci::Manifest::from_bytes(index.into(), None, "test").unwrap();
    let refused = target.put_manifest(&repo, "v3", &index).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("does not hold"), "{message}");
    assert_eq!(rig.store.blob_size(&index.digest).await.unwrap(), None);
    let refused = target.put_manifest(&repo, &app.digest, &manifest).await;
    assert!(refused.is_err());
    assert_eq!(
        rig.store.blob_size(&manifest.digest).await.unwrap(),
        Some(len),
        "only as the bytes uploaded above"
    );
    assert_eq!(
        rig.names.list().await.unwrap().len(),
        2,
        "a refused put recorded a name"
    );
}

/// GIVEN an index with an SBOM written into the export registry (as the workflow's steps write
/// them) WHEN the export is sealed with a statement key THEN `index.json` names the image and
/// lists the referrer, the records are gone, and the layout verifies with that key: served as
/// an import source, it copies into another registry byte for byte (skopeo); a second seal has
/// nothing to do; a later run that adds only a referrer states the image again with both; a
/// record planted in the layout is ignored, and one in the work bucket at a place its content
/// does not name refuses the seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_export_verifies_and_imports_byte_for_byte() {
    use e2e::image::{artifact, signing_key};
    use e2e::statements::LocalSigner;
    use replication::copy::{copy_image, CopyOptions};
    use replication::layout_registry::{LayoutRegistry, PendingRef, VerifiedLayout};
    use replication::layout_seal::seal_export;
    use replication::transfer_statement::TrustedTransferKey;
    let rig = Rig::start().await;
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (app, sbom) = app_with_sbom(&src, 61).await;
    let pusher = Pusher::new(&src.host, None);
    let source = RegistryClient::new(
        e2e::fast_retry_config(&[&src.host, &dst.host]),
        CredentialStore::new(),
    )
    .unwrap();
    let (server, target) = rig.invocation().await;
    let at = |registry: &str, r: &str| {
        oci::Reference::parse(&format!("{registry}/team/app{r}")).unwrap()
    };
    let options = CopyOptions::default();
    copy_image(
        &source,
        &at(&src.host, ":v1"),
        &target,
        &at(server.host(), ":v1"),
        &options,
    )
    .await
    .unwrap();
    let sbom_at = format!("@{}", sbom.digest);
    copy_image(
        &source,
        &at(&src.host, &sbom_at),
        &target,
        &at(server.host(), &sbom_at),
        &options,
    )
    .await
    .unwrap();

    let (key, pem) = signing_key(62);
    let signer = LocalSigner(key);
    // Where the image came from and what admitted it, as put-manifests records it under a
    // gate (the source repository is another name than the layout's).
    let line = "trust policy release: cosign key sha256:0f".to_string();
    let provenance = replication::layout_registry::Provenance {
        repository: "team/app".into(),
        digest: app.digest.clone(),
        source: format!("{}/upstream/app", src.host),
        admitted_by: vec![line.clone()],
    };
    rig.names.record_provenance(&provenance).await.unwrap();
    // Seals the export as the workflow's last step does.
    let seal = || seal_export((rig.store.as_ref(), &rig.names), Some(&signer), &src.host);
    let sealed = seal().await.unwrap();
    assert_eq!(sealed.named, 2);
    let statement = sealed.statement.expect("signed");
    assert_eq!(statement.images.len(), 1, "{:?}", statement.images);
    let stated = &statement.images["team/app:v1"];
    assert_eq!(stated.admitted_by, [line]);
    assert_eq!(stated.source, format!("{}/upstream/app:v1", src.host));
    // Stated, the record is gone: a later seal states only what its run recorded.
    assert_eq!(
        rig.names.provenance("team/app", &app.digest).await.unwrap(),
        None
    );
    assert!(rig.names.list().await.unwrap().is_empty(), "records left");
    // Sealed, the tags are index.json's (the referrers are no tags).
    let repository = Repository {
        registry: server.host().to_string(),
        name: "team/app".into(),
    };
    assert_eq!(target.list_tags(&repository).await.unwrap(), ["v1"]);

    // The import side: verified with the key, served, copied into another registry.
    let trusted = TrustedTransferKey::from_pem(&pem).unwrap();
    let verified = VerifiedLayout::read(rig.store.clone(), &trusted)
        .await
        .unwrap();
    assert_eq!(verified.repositories().collect::<Vec<_>>(), ["team/app"]);
    let served = LayoutRegistry::serve(verified).await.unwrap();
    let mut credentials = CredentialStore::new();
    credentials.insert(served.host(), served.credential());
    let reader = RegistryClient::new(
        e2e::fast_retry_config(&[served.host(), &dst.host]),
        credentials,
    )
    .unwrap();
    copy_image(
        &reader,
        &at(served.host(), ":v1"),
        &reader,
        &at(&dst.host, ":v1"),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/team/app:v1", dst.host), None),
        app.manifest.to_vec()
    );

    let again = seal().await.unwrap();
    assert_eq!((again.named, again.statement.is_some()), (0, false));

    // A later run adds only a referrer (a new SBOM) to the image an earlier one exported: the
    // image is stated again with it, and the layout still verifies.
    // A referrer pushed to the source and written into the layout, as a later run would.
    let export_referrer = async |media_type: &str, payload: &[u8]| {
        let referrer = artifact(Some(&app), media_type, media_type, payload);
        pusher.push("team/app", &referrer.digest, &referrer).await;
        let by_digest = format!("@{}", referrer.digest);
        let (from, to) = (at(&src.host, &by_digest), at(server.host(), &by_digest));
        copy_image(&source, &from, &target, &to, &options)
            .await
            .unwrap();
        referrer
    };
    let later = export_referrer("application/vnd.cyclonedx+json", b"[]").await;
    let restated = seal().await.unwrap().statement.expect("stated again");
    let referrers: Vec<&str> = restated
        .images
        .values()
        .flat_map(|i| i.referrers.iter().map(|r| r.digest.as_str()))
        .collect();
    assert!(
        referrers.contains(&later.digest.as_str()) && referrers.contains(&sbom.digest.as_str()),
        "{referrers:?}"
    );
    VerifiedLayout::read(rig.store.clone(), &trusted)
        .await
        .unwrap();

    // The export's blobs carry S3's SHA-256 of their bytes, so a seal does not read them again;
    // one rewritten behind its back (a plain PutObject) carries none and is hashed, and refused.
    let layer = Digest::parse(&app.children[0].blobs.last().unwrap().digest).unwrap();
    assert!(rig.store.attests_blob(&layer).await.unwrap());
    rig.s3
        .put_object()
        .bucket(BUCKET)
        .key(blob_key(&layer))
        .body(vec![0u8; app.children[0].blobs.last().unwrap().data.size() as usize].into())
        .send()
        .await
        .unwrap();
    assert!(!rig.store.attests_blob(&layer).await.unwrap());
    export_referrer("application/vnd.test+json", b"1").await;
    let damaged = seal().await.unwrap_err().to_string();
    assert!(damaged.contains("damaged"), "{damaged}");
    VerifiedLayout::read(rig.store.clone(), &trusted)
        .await
        .unwrap();
    for file in rig.names.list().await.unwrap() {
        rig.names.remove(&file).await.unwrap();
    }

    // A record planted in the layout is no record: the names are the work bucket's.
    let record = PendingRef {
        repository: "team/app".into(),
        tag: Some("evil".into()),
        digest: app.digest.clone(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: app.manifest.len() as u64,
        subject: None,
        artifact_type: None,
    };
    rig.store
        .write_file(
            &format!("uploads/refs/{}", record.file()),
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap();
    let ignored = seal().await.unwrap();
    assert_eq!((ignored.named, ignored.statement.is_some()), (0, false));
    // One in the work bucket at another place than its content names is refused.
    let mut moved = record.clone();
    moved.tag = Some("v1".into());
    rig.names.put(&moved).await.unwrap();
    let planted = moved.file();
    let bytes = serde_json::to_vec(&record).unwrap();
    rig.s3
        .put_object()
        .bucket(WORK_BUCKET)
        .key(format!(
            "layout-names/{}/{planted}",
            oci::Digest::of(format!("s3://{BUCKET}/{PREFIX}").as_bytes()).hex()
        ))
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    let refused = seal().await.unwrap_err().to_string();
    assert!(refused.contains("not written by this export"), "{refused}");
}

/// A layout store that, the first time `index.json` is about to be replaced conditionally,
/// plays another export writing it first (the same entries, with one annotation more): the
/// race a seal's conditional write is for. It counts the reads of `index.json`.
struct RacedStore {
    inner: Arc<S3Layout>,
    raced: std::sync::atomic::AtomicBool,
    index_reads: std::sync::atomic::AtomicUsize,
}

impl RacedStore {
    fn over(inner: &Arc<S3Layout>) -> Self {
        RacedStore {
            inner: inner.clone(),
            raced: Default::default(),
            index_reads: Default::default(),
        }
    }
}

impl oci::layout::PartUploads for RacedStore {
    fn begin_upload<'a>(
        &'a self,
        staging: &'a str,
    ) -> futures::future::BoxFuture<'a, oci::Result<String>> {
        self.inner.begin_upload(staging)
    }
    fn put_part<'a>(
        &'a self,
        upload: &'a oci::layout::PartUpload,
        number: u32,
        bytes: bytes::Bytes,
    ) -> futures::future::BoxFuture<'a, oci::Result<()>> {
        self.inner.put_part(upload, number, bytes)
    }
    fn stored_parts<'a>(
        &'a self,
        upload: &'a oci::layout::PartUpload,
    ) -> futures::future::BoxFuture<'a, oci::Result<Vec<u64>>> {
        self.inner.stored_parts(upload)
    }
    fn finish_upload<'a>(
        &'a self,
        upload: &'a oci::layout::PartUpload,
        blob: &'a BlobRef,
    ) -> futures::future::BoxFuture<'a, oci::Result<()>> {
        self.inner.finish_upload(upload, blob)
    }
    fn abort_upload<'a>(
        &'a self,
        upload: &'a oci::layout::PartUpload,
    ) -> futures::future::BoxFuture<'a, oci::Result<()>> {
        self.inner.abort_upload(upload)
    }
}

impl oci::layout::LayoutStore for RacedStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn blob_location(&self, digest: &Digest) -> String {
        self.inner.blob_location(digest)
    }
    fn blob_size<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> futures::future::BoxFuture<'a, oci::Result<Option<u64>>> {
        self.inner.blob_size(digest)
    }
    fn read_blob_range<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: Option<u64>,
    ) -> futures::future::BoxFuture<'a, oci::Result<oci::layout::BlobStream>> {
        self.inner.read_blob_range(digest, start, end)
    }
    fn attests_blob<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> futures::future::BoxFuture<'a, oci::Result<bool>> {
        self.inner.attests_blob(digest)
    }
    fn write_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        body: oci::layout::BlobStream,
    ) -> futures::future::BoxFuture<'a, oci::Result<()>> {
        self.inner.write_blob(blob, body)
    }
    fn read_file<'a>(
        &'a self,
        name: &'a str,
        limit: usize,
    ) -> futures::future::BoxFuture<'a, oci::Result<Option<bytes::Bytes>>> {
        if name == "index.json" {
            self.index_reads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.read_file(name, limit)
    }
    fn write_file<'a>(
        &'a self,
        name: &'a str,
        bytes: bytes::Bytes,
    ) -> futures::future::BoxFuture<'a, oci::Result<()>> {
        self.inner.write_file(name, bytes)
    }
    fn file_version<'a>(
        &'a self,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, oci::Result<oci::layout::FileVersion>> {
        self.inner.file_version(name)
    }
    fn replace_file_if<'a>(
        &'a self,
        name: &'a str,
        bytes: bytes::Bytes,
        version: &'a oci::layout::FileVersion,
    ) -> futures::future::BoxFuture<'a, oci::Result<bool>> {
        Box::pin(async move {
            if name == "index.json" && !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let now = self.inner.read_file(name, 1 << 20).await?.unwrap();
                let mut other: serde_json::Value = serde_json::from_slice(&now).unwrap();
                // Content of its own each time (an identical body would keep the ETag).
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                other["annotations"] =
                    serde_json::json!({"written.by": "another export", "at": nanos.to_string()});
                self.inner
                    .write_file(name, other.to_string().into())
                    .await?;
            }
            self.inner.replace_file_if(name, bytes, version).await
        })
    }
}

/// GIVEN an export into a layout that already has an `index.json` WHEN another export writes
/// `index.json` between the seal's read and its write THEN the seal's conditional write is
/// refused, it seals again from the new `index.json`, and both writers' content is there (the
/// other's annotation and this run's tag), stated and signed; without the condition the other
/// export's write would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_raced_by_another_writer_of_index_json_seals_again_and_loses_nothing() {
    use e2e::image::signing_key;
    use e2e::statements::LocalSigner;
    use replication::layout_seal::seal_export;

    let rig = Rig::start().await;
    let exported = app_export(&rig, 71).await;
    let (src, app) = (&exported.src, &exported.app);
    let (key, _) = signing_key(72);
    let signer = LocalSigner(key);
    // An earlier export: index.json exists (so the race has a version to lose).
    exported.copy(":v1", ":v1").await;
    seal_export((rig.store.as_ref(), &rig.names), Some(&signer), &src.host)
        .await
        .unwrap();
    // This run: one more tag, sealed through the racing store.
    exported.copy(":v1", ":v2").await;
    let raced = RacedStore::over(&rig.store);
    let sealed = seal_export((&raced, &rig.names), Some(&signer), &src.host)
        .await
        .unwrap();
    assert!(
        raced.raced.load(std::sync::atomic::Ordering::SeqCst),
        "the race was not played"
    );
    let statement = sealed.statement.expect("signed");
    assert!(
        statement.images.contains_key("team/app:v2"),
        "{:?}",
        statement.images.keys()
    );
    let index = rig.index_json().await;
    assert_eq!(
        index["annotations"]["written.by"], "another export",
        "the other writer's index.json was overwritten: {index}"
    );
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(
        names.contains(&"team/app:v1") && names.contains(&"team/app:v2"),
        "{names:?}"
    );
    assert_eq!(
        app.manifest.len() as u64,
        statement.images["team/app:v2"].size
    );
    assert!(rig.names.list().await.unwrap().is_empty(), "records left");

    // The command line's export job, raced the same way: refused, naming the cause, and the
    // other writer's index.json stays; run again, it names its image.
    use serde_json::json;
    let mut emptied = rig.index_json().await;
    let export = json!({"source": {"registry": src.host, "insecure": true},
                        "destinations": [{"layout": format!("s3://{BUCKET}/{PREFIX}")}],
                        "images": [{"repository": "team/app", "tag": "v1"}]});
    let job = || replication::Job::from_json(&export.to_string()).unwrap();
    let settings = replication::connect::Settings {
        registry: e2e::fast_retry_config(&[&src.host]),
        ..Default::default()
    };
    let conns = replication::connect::Connections::new(settings);
    // A layout whose index.json does not name team/app:v1 yet.
    emptied["manifests"] = json!([]);
    rig.store
        .write_file("index.json", emptied.to_string().into())
        .await
        .unwrap();
    let raced = RacedStore::over(&rig.store);
    let refused = replication::layout_run::run_layout_job(
        &conns,
        job(),
        &raced,
        Default::default(),
        &replication::run::Quiet,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("changed while this export ran"),
        "{refused}"
    );
    let after = rig.index_json().await;
    assert_eq!(
        after["annotations"]["written.by"], "another export",
        "{after}"
    );
    assert_eq!(after["manifests"], json!([]), "{after}");
    let again = replication::layout_run::run_layout_job(
        &conns,
        job(),
        rig.store.as_ref(),
        Default::default(),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(again.run.report.copied, 1, "{:?}", again.run.report);
}

/// GIVEN a layout whose `index.json` names `team/app:v1` WHEN the export registry is asked for
/// that tag again and again THEN it reads `index.json` once (a HEAD finds it unchanged each
/// time), and again only after another writer changed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_registry_reads_index_json_again_only_when_it_changed() {
    use oci::Repository;
    use replication::layout_seal::seal_export;
    use std::sync::atomic::Ordering;

    let rig = Rig::start().await;
    let exported = app_export(&rig, 75).await;
    let (src, app) = (&exported.src, &exported.app);
    let at = |registry: &str| oci::Reference::parse(&format!("{registry}/team/app:v1")).unwrap();
    exported.copy(":v1", ":v1").await;
    seal_export((rig.store.as_ref(), &rig.names), None, &src.host)
        .await
        .unwrap();
    let watched = Arc::new(RacedStore::over(&rig.store));
    let served = LayoutExportRegistry::serve(watched.clone(), rig.names.clone())
        .await
        .unwrap();
    let mut credentials = CredentialStore::new();
    credentials.insert(served.host(), served.credential());
    let client =
        RegistryClient::new(e2e::fast_retry_config(&[served.host()]), credentials).unwrap();
    let repository = Repository {
        registry: served.host().to_string(),
        name: "team/app".into(),
    };
    for _ in 0..3 {
        let found = client.head_manifest(&at(served.host())).await.unwrap();
        assert_eq!(
            found.map(|m| m.digest.to_string()),
            Some(app.digest.clone())
        );
        assert_eq!(client.list_tags(&repository).await.unwrap(), ["v1"]);
    }
    assert_eq!(watched.index_reads.load(Ordering::SeqCst), 1);
    // Another writer changes it: read again, once.
    let mut changed = rig.index_json().await;
    changed["annotations"] = serde_json::json!({"written.by": "another export"});
    rig.store
        .write_file("index.json", changed.to_string().into())
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(client.list_tags(&repository).await.unwrap(), ["v1"]);
    }
    assert_eq!(watched.index_reads.load(Ordering::SeqCst), 2);
}

/// GIVEN a sealed export of `team/app:v1` WHEN someone who may write the bucket adds another
/// name for that image to `index.json` (`team/app:stable`) and a later run gives the image a
/// new referrer THEN the seal does not state the planted name as this run's: it refuses the
/// layout as holding an entry the key's exports did not write, and the signed statement stays
/// the earlier one, which names no `stable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_planted_in_index_json_is_not_signed_when_its_image_gains_a_referrer() {
    use e2e::image::signing_key;
    use e2e::statements::LocalSigner;
    use replication::layout_seal::seal_export;
    use replication::transfer_statement::{verify_statement, TrustedTransferKey};

    let rig = Rig::start().await;
    let exported = app_export(&rig, 77).await;
    let (src, app, sbom) = (&exported.src, &exported.app, &exported.sbom);
    let (key, pem) = signing_key(78);
    let signer = LocalSigner(key);
    exported.copy(":v1", ":v1").await;
    let first = seal_export((rig.store.as_ref(), &rig.names), Some(&signer), &src.host)
        .await
        .unwrap()
        .statement
        .expect("signed");
    // The plant: another name, same digest.
    let mut planted = rig.index_json().await;
    let mut alias = planted["manifests"][0].clone();
    alias["annotations"]["org.opencontainers.image.ref.name"] = "team/app:stable".into();
    planted["manifests"].as_array_mut().unwrap().push(alias);
    rig.store
        .write_file("index.json", planted.to_string().into())
        .await
        .unwrap();
    // A later run: only the SBOM, a referrer of the image.
    let sbom_at = format!("@{}", sbom.digest);
    exported.copy(&sbom_at, &sbom_at).await;
    let refused = seal_export((rig.store.as_ref(), &rig.names), Some(&signer), &src.host)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("team/app:stable"), "{refused}");
    let trusted = TrustedTransferKey::from_pem(&pem).unwrap();
    let now = verify_statement(rig.store.as_ref(), &trusted)
        .await
        .unwrap();
    assert_eq!(now.digest, first.digest, "a statement was signed");
    assert!(!now.images.contains_key("team/app:stable"));
    assert_eq!(now.images["team/app:v1"].digest, app.digest);
}
