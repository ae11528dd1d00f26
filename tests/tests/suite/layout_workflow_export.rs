//! The workflow exports into an OCI layout in S3 and another deployment imports it across an
//! air gap (issue 35): two rigs, each the real state machine on its own moto with the real
//! functions, no path between them but the layout's objects carried from one bucket to the
//! other. The exporting run writes the blobs in ranges across invocations, seals the layout at
//! `Finish` with its deployment's receipt key (KMS), and states what admitted each image; the
//! importing deployment trusts only that key and copies every image byte for byte.

use e2e::iam::{Performed, Policies};
use e2e::image::{cosign_signature, multi_arch, signing_key, Format, ImageBuilder, TestImage};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST_ROLE, SOURCE};
use ecr::{S3Layout, S3LayoutOptions, S3Location};
use replication::allowlist::ALLOWLIST_VARIABLE;
use replication::layout_registry::VerifiedLayout;
use replication::transfer_statement::TrustedTransferKey;
use serde_json::{json, Value};

const BUCKET: &str = "ecr-replicator-layouts";
/// The layout `cdk/test/config.iam.json` lets the functions export into.
const EXPORT: &str = "s3://ecr-replicator-layouts/export";
/// The layout it lets them import from: where the carrier puts the export on the far side.
const IMPORT: &str = "s3://ecr-replicator-layouts/air-gap";
/// moto's account: both buckets' owner.
const OWNER: &str = "123456789012";
const MIB: u64 = 1 << 20;

/// An S3 client of one rig's moto.
async fn s3_of(world: &EcrWorld) -> aws_sdk_s3::Client {
    let config = ecr::sdk_config(&world.moto.aws_settings(), "us-east-1", None).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// Every key under `prefix` in `bucket`.
async fn keys_under(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return keys;
        }
    }
}

/// The carrier: every object of the export, read from one side's bucket and written under the
/// import's prefix on the other (a data diode, a disk, a Snowball).
async fn carry(from: &EcrWorld, to: &EcrWorld) -> usize {
    let (src, dst) = (s3_of(from).await, s3_of(to).await);
    let keys = keys_under(&src, BUCKET, "export/").await;
    for key in &keys {
        let body = src
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let carried = key.replacen("export/", "air-gap/", 1);
        dst.put_object()
            .bucket(BUCKET)
            .key(carried)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
    keys.len()
}

/// What the functions of `sfn` did in S3 and KMS, as IAM sees it.
fn performed(sfn: &e2e::sfn::LocalStepFunctions) -> std::collections::BTreeSet<Performed> {
    Performed::of(
        sfn.api_calls()
            .into_iter()
            .filter(|c| c.action.starts_with("s3:") || c.action.starts_with("kms:")),
    )
}

/// Every manifest of `image` (its children too) is byte for byte at `repository:tag` of the
/// far side's destination, read by skopeo.
fn assert_arrived(world: &EcrWorld, repository: &str, tag: &str, image: &TestImage) {
    let host = &world.registry(DEST).host;
    let creds = ("AWS".to_string(), moto_token_password(DEST));
    let top = format!("{host}/{repository}:{tag}");
    assert_eq!(
        e2e::skopeo::inspect_raw(&top, Some(&creds)),
        image.manifest.to_vec(),
        "{top}"
    );
    for child in &image.children {
        let reference = format!("{host}/{repository}@{}", child.digest);
        assert_eq!(
            e2e::skopeo::inspect_raw(&reference, Some(&creds)),
            child.manifest.to_vec(),
            "{reference}"
        );
    }
}

/// GIVEN an ECR source with a signed multi-arch image and a signed image with a 12 MiB layer
/// WHEN the workflow runs an export job gated by the deployment's trust policy THEN it writes
/// the layout in 5 MiB ranges across invocations, seals it at `Finish` with the receipt key
/// (the report names the statement), the statement verifies with that key's public half and
/// states both images with what admitted them, nothing is left staged and no name waits in the
/// work bucket; a second export with nothing new writes no blob and signs nothing; WHEN the
/// layout is carried to another deployment that trusts only that key THEN its workflow imports
/// every image, signatures included, byte for byte. Every S3 and KMS call of the exporting
/// functions is allowed by the roles the CDK app synthesizes, and refused without the export's
/// grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workflow_exports_a_sealed_layout_that_another_deployment_imports_byte_for_byte() {
    // The exporting side: its allowlist lets jobs export into the layout.
    let mut allowlist = e2e::sfn::rig_allowlist();
    allowlist["layouts"] = json!([{"location": EXPORT, "export": true, "bucketOwner": OWNER}]);
    let (near, near_sfn) = EcrWorld::with_step_functions_env(&[(
        ALLOWLIST_VARIABLE.to_string(),
        allowlist.to_string(),
    )])
    .await;
    e2e::moto::create_bucket_at(&near.moto.url, BUCKET).await;
    let (release_key, _) = signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let app = multi_arch(131, 1, 6_000);
    let model = ImageBuilder::new(Format::Oci)
        .big_layer(132, 12 * MIB)
        .layer(133, 3_000)
        .build();
    let mut signatures = Vec::new();
    for (repository, tag, image) in [("team/app", "v1", &app), ("ml/model", "v2", &model)] {
        near.seed(repository, tag, image).await;
        let signature = cosign_signature(&image.digest, &release_key, false, None);
        let signature_tag = format!("{}.sig", image.digest.replacen(':', "-", 1));
        near.seed(repository, &signature_tag, &signature).await;
        signatures.push((repository, signature_tag, signature));
    }
    let arn = near_sfn.create_state_machine("replicate").await;
    let export_job = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"layout": EXPORT}],
        "requireSignature": {"policy": e2e::sfn::RIG_TRUST_POLICY},
        "rangeBytes": 5 * MIB,
    });
    let run = near_sfn.execute(&arn, &export_job).await;
    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\n{}",
        run.cause,
        run.history_text(400)
    );
    let report = run.output.clone().unwrap();
    // Two images and their signatures' tags, listed as a registry lists them.
    assert_eq!(
        (&report["copied"], &report["failed"]),
        (&json!(4), &json!(0)),
        "{report}"
    );
    // What the export cost, for the guide's sizes and costs (printed, not asserted).
    let mut layout_calls = std::collections::BTreeMap::new();
    for call in near_sfn.api_calls() {
        if call
            .resources
            .iter()
            .any(|r| r.contains(":::ecr-replicator-layouts/export/"))
        {
            *layout_calls.entry(call.action).or_insert(0) += 1;
        }
    }
    eprintln!(
        "export of 2 images (12.6 MB): {} state transitions, cost {}, S3 calls on the layout {layout_calls:?}",
        run.transitions, report["cost"]
    );
    let statement_digest = report["layoutStatement"]
        .as_str()
        .unwrap_or_else(|| panic!("no statement in {report}"))
        .to_string();

    // The statement verifies with the public half of the deployment's receipt key.
    let public = near.moto.public_key(e2e::sfn::RIG_RECEIPT_KEY).await;
    let trusted = TrustedTransferKey::from_der(&public).unwrap();
    let store = std::sync::Arc::new(
        S3Layout::new(
            &near.moto.aws_settings(),
            "us-east-1",
            S3Location::parse(EXPORT).unwrap(),
            S3LayoutOptions {
                expected_owner: Some(OWNER.into()),
                ..Default::default()
            },
        )
        .await,
    );
    let verified = VerifiedLayout::read(store.clone(), &trusted).await.unwrap();
    let statement = &verified.statement;
    assert_eq!(statement.digest, statement_digest);
    let stated: Vec<&String> = statement.images.keys().collect();
    assert_eq!(stated, ["ml/model:v2", "team/app:v1"]);
    let mut receipts = Vec::new();
    for (name, image) in [("team/app:v1", &app), ("ml/model:v2", &model)] {
        let stated = &statement.images[name];
        assert_eq!(stated.digest, image.digest, "{name}");
        assert_eq!(stated.source, format!("{SOURCE}/{name}"));
        // What admitted it: the gate's line, naming the deployment's trust policy.
        assert!(
            stated
                .admitted_by
                .iter()
                .any(|l| l.contains(e2e::sfn::RIG_TRUST_POLICY)),
            "{name}: {:?}",
            stated.admitted_by
        );
        // Its promotion receipt (put-manifests signed it under the deployment's policy) is one
        // of the referrers the statement binds to it.
        let receipt = stated
            .referrers
            .iter()
            .find(|r| {
                r.artifact_type == replication::receipts::DSSE_MEDIA_TYPE
                    && r.subject == image.digest
            })
            .unwrap_or_else(|| panic!("{name}: no receipt among {:?}", stated.referrers));
        receipts.push((stated.repository.clone(), receipt.digest.clone()));
    }
    // The large layer was written as parts of one upload across copy-blobs calls.
    let calls = near_sfn.api_calls();
    let parts = calls
        .iter()
        .filter(|c| {
            c.function.contains("copy-blobs")
                && c.action == "s3:PutObject"
                && c.resources.iter().any(|r| r.contains("/export/uploads/"))
        })
        .count();
    assert!(parts >= 3, "12 MiB in 5 MiB ranges: {parts} upload writes");
    let s3 = s3_of(&near).await;
    assert_eq!(
        keys_under(&s3, BUCKET, "export/uploads/").await,
        Vec::<String>::new()
    );
    let open = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .prefix("export/")
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
    for waiting in ["layout-names/", "layout-provenance/"] {
        assert_eq!(
            keys_under(&s3, e2e::sfn::WORK_BUCKET, waiting).await,
            Vec::<String>::new(),
            "{waiting}"
        );
    }

    // Nothing new: nothing written into the layout, nothing signed.
    let before = near_sfn.api_calls().len();
    let again = near_sfn.execute(&arn, &export_job).await;
    assert_eq!(again.status, "SUCCEEDED", "{}", again.cause);
    let again_report = again.output.clone().unwrap();
    assert_eq!(again_report["copied"], json!(0), "{again_report}");
    assert!(
        again_report
            .get("layoutStatement")
            .is_none_or(Value::is_null),
        "{again_report}"
    );
    let writes: Vec<_> = near_sfn.api_calls()[before..]
        .iter()
        .filter(|c| {
            c.action == "s3:PutObject" && c.resources.iter().any(|r| r.contains("/export/"))
        })
        .cloned()
        .collect();
    assert!(writes.is_empty(), "{writes:?}");

    // IAM: every S3 and KMS call of the exporting functions, against the synthesized roles.
    let policies = Policies::load(&e2e::sfn::workspace().join("cdk/cdk.out.iam"), OWNER);
    let performed = performed(&near_sfn);
    for needed in [
        "s3:PutObject",
        "s3:ListMultipartUploadParts",
        "s3:DeleteObject",
        "kms:Sign",
    ] {
        assert!(
            performed.iter().any(|p| p.action == needed),
            "{needed} was not seen"
        );
    }
    let violations = policies.violations(&performed);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The check bites: without the export's grants, its writes are refused.
    let mut no_export = policies.clone();
    for statements in no_export.by_function.values_mut() {
        statements.retain(|s| !s.resources.iter().any(|r| r.contains("/export")));
    }
    assert!(
        no_export
            .violations(&performed)
            .iter()
            .any(|v| v.contains("s3:PutObject") && v.contains("export/blobs/")),
        "the export's writes were allowed without its grant"
    );

    // The far side: another deployment, which trusts only the exporting deployment's key.
    let pem = {
        use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
        p256::PublicKey::from_public_key_der(&public)
            .unwrap()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    };
    let mut far_allowlist = e2e::sfn::rig_allowlist();
    far_allowlist["layouts"] = json!([{
        "location": IMPORT, "import": true, "transferKey": pem, "bucketOwner": OWNER
    }]);
    let (far, far_sfn) = EcrWorld::with_step_functions_env(&[(
        ALLOWLIST_VARIABLE.to_string(),
        far_allowlist.to_string(),
    )])
    .await;
    e2e::moto::create_bucket_at(&far.moto.url, BUCKET).await;
    assert!(carry(&near, &far).await > 0);
    let far_arn = far_sfn.create_state_machine("replicate").await;
    let import = json!({
        "source": {"layout": IMPORT},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42"}],
        "rangeBytes": 5 * MIB,
    });
    let imported = far_sfn.execute(&far_arn, &import).await;
    assert_eq!(
        imported.status,
        "SUCCEEDED",
        "{}\n{}",
        imported.cause,
        imported.history_text(400)
    );
    // The import pinned the statement the export signed.
    let pinned = format!("\"statementDigest\":\"{statement_digest}\"");
    assert!(
        imported.history_text(usize::MAX).contains(&pinned),
        "{pinned}"
    );
    assert_arrived(&far, "team/app", "v1", &app);
    assert_arrived(&far, "ml/model", "v2", &model);
    let creds = ("AWS".to_string(), moto_token_password(DEST));
    // The receipts crossed with their images, at the digests the statement binds.
    let far_side = e2e::image::Pusher::new(&far.registry(DEST).host, Some(creds.clone()));
    for (repository, receipt) in &receipts {
        assert!(
            far_side.manifest(repository, receipt).await.is_some(),
            "{repository}@{receipt}: the receipt did not cross"
        );
    }
    for (repository, signature_tag, signature) in &signatures {
        let at = format!("{}/{repository}:{signature_tag}", far.registry(DEST).host);
        assert_eq!(
            e2e::skopeo::inspect_raw(&at, Some(&creds)),
            signature.manifest.to_vec(),
            "the signature travels with its image: {at}"
        );
    }
}
