//! The workflow imports an OCI layout from S3 (issue 35): the real state machine on moto, the
//! real functions, moto's S3 as the layout store and ECR's data plane as the destination. The
//! layout is exported from an ECR source by the library and its transfer statement signed with
//! the key the deployment's allowlist pins for it; the functions verify the statement before
//! they read anything else, and the steps read the layout through its loopback registry.

use e2e::iam::{Performed, Policies};
use e2e::image::{cosign_signature, multi_arch, signing_key, Format, ImageBuilder, TestImage};
use e2e::statements::{sign_layout, LocalSigner};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST_ROLE, SOURCE};
use ecr::{S3Layout, S3LayoutOptions, S3Location};
use oci::layout::LayoutStore;
use replication::allowlist::{Allowlist, ALLOWLIST_VARIABLE};
use replication::connect::Connections;
use replication::layout_run::{run_layout_job, ImportTrust};
use replication::transfer_statement::{SIGNATURE_FILE, STATEMENT_FILE};
use serde_json::{json, Value};

const BUCKET: &str = "ecr-replicator-layouts";
/// The layout `cdk/test/config.iam.json` lets the functions read (its `layouts[]`).
const LAYOUT: &str = "s3://ecr-replicator-layouts/air-gap";
/// moto's account: the bucket's owner.
const OWNER: &str = "123456789012";
const MIB: u64 = 1 << 20;

/// The rig's allowlist with the layout allowed for import, its statement key pinned.
fn allowlist_with_layout(pem: &str) -> Value {
    let mut allowlist = e2e::sfn::rig_allowlist();
    allowlist["layouts"] = json!([{
        "location": LAYOUT, "import": true, "transferKey": pem, "bucketOwner": OWNER
    }]);
    allowlist
}

fn import_job(prefix: &str, extra: Value) -> Value {
    let mut job = json!({
        "source": {"layout": LAYOUT},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42",
                          "repositoryPrefix": prefix}],
        "rangeBytes": 5 * MIB,
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    job
}

fn creds() -> (String, String) {
    ("AWS".into(), moto_token_password(DEST))
}

/// The destination's manifest of `repository:tag` (or `@digest`), as skopeo reads it, if any.
async fn in_destination(world: &EcrWorld, repository: &str, reference: &str) -> Option<Vec<u8>> {
    e2e::image::Pusher::new(&world.registry(DEST).host, Some(creds()))
        .manifest(repository, reference)
        .await
        .map(|m| m.to_vec())
}

/// Every manifest of `image` (its children too) is byte for byte in the destination, read by
/// skopeo.
fn assert_arrived(world: &EcrWorld, repository: &str, tag: &str, image: &TestImage) {
    let host = &world.registry(DEST).host;
    let top = format!("{host}/{repository}:{tag}");
    assert_eq!(
        e2e::skopeo::inspect_raw(&top, Some(&creds())),
        image.manifest.to_vec(),
        "{top}"
    );
    for child in &image.children {
        let reference = format!("{host}/{repository}@{}", child.digest);
        assert_eq!(
            e2e::skopeo::inspect_raw(&reference, Some(&creds())),
            child.manifest.to_vec(),
            "{reference}"
        );
    }
}

/// Exports every image of the source into the layout, as `sync` of an export job does.
async fn export_into(
    store: &S3Layout,
    settings: replication::connect::Settings,
) -> replication::report::RunReport {
    let export = json!({"source": {"registry": SOURCE}, "destinations": [{"layout": LAYOUT}]});
    run_layout_job(
        &Connections::new(settings),
        replication::Job::from_json(&export.to_string()).unwrap(),
        store,
        ImportTrust::default(),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .run
    .report
}

/// Removes the newest statements the workflow recorded (`layout-statements/` in the work
/// bucket), as an operator would to import an older layout deliberately.
async fn remove_newest_statements(world: &EcrWorld) {
    let config = ecr::sdk_config(&world.moto.aws_settings(), "us-east-1", None).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let listed = s3
        .list_objects_v2()
        .bucket(e2e::sfn::WORK_BUCKET)
        .prefix("layout-statements/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert_eq!(keys.len(), 1, "one layout, one newest statement: {keys:?}");
    for key in keys {
        s3.delete_object()
            .bucket(e2e::sfn::WORK_BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
    }
}

/// GIVEN images in an ECR source (one signed by the deployment's trust policy's key, one with
/// a 12 MiB layer) exported into an S3 layout and signed with the key the allowlist pins WHEN
/// `index.json` is changed after signing THEN the execution fails naming the statement and
/// nothing reaches the destination; an image named by digest alone is refused; WHEN it is
/// restored (with a signature entry moved under another repository name) THEN an import pinned
/// to the statement copies every image byte for byte (the large layer in 5 MiB ranges across
/// invocations), from the layout only, and nothing under the moved name; WHEN an import requires the
/// trust policy THEN only the signed image and its signature arrive and the other is named
/// unsigned; WHEN a layer's bytes are changed in the bucket THEN that image fails, named, and is
/// not tagged, while the others arrive. Every S3 call the functions made is under the layout's
/// prefix, and the roles the CDK app synthesizes allow each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workflow_imports_a_signed_s3_layout_and_refuses_one_changed_after_signing() {
    let (statement_key, pem) = signing_key(95);
    let allowlist = allowlist_with_layout(&pem);
    let (world, sfn) = EcrWorld::with_step_functions_env(&[(
        ALLOWLIST_VARIABLE.to_string(),
        allowlist.to_string(),
    )])
    .await;
    e2e::moto::create_bucket_at(&world.moto.url, BUCKET).await;

    // The source: a signed image, an unsigned one, and one with a large layer.
    let (release_key, _) = signing_key(e2e::sfn::RIG_SIGNING_SEED);
    let signed = multi_arch(96, 1, 6_000);
    let unsigned = ImageBuilder::new(Format::Oci).layer(97, 5_000).build();
    let large = ImageBuilder::new(Format::Oci)
        .big_layer(98, 12 * MIB)
        .layer(99, 3_000)
        .build();
    let signature = cosign_signature(&signed.digest, &release_key, false, None);
    let signature_tag = format!("{}.sig", signed.digest.replacen(':', "-", 1));
    world.seed("team/app", "v1", &signed).await;
    world.seed("team/app", "v2", &unsigned).await;
    world.seed("team/app", &signature_tag, &signature).await;
    world.seed("ml/model", "v3", &large).await;

    // Exported by the library (the CLI's `sync` of an export job), signed with the pinned key.
    let store = S3Layout::new(
        &world.moto.aws_settings(),
        "us-east-1",
        S3Location::parse(LAYOUT).unwrap(),
        S3LayoutOptions {
            expected_owner: Some(OWNER.into()),
            ..Default::default()
        },
    )
    .await;
    let mut export_settings = world.settings();
    export_settings.allowlist = Some(
        Allowlist::from_json(
            &json!({"sources": [{"registry": SOURCE}],
                    "layouts": [{"location": LAYOUT, "export": true}]})
            .to_string(),
            "test",
        )
        .unwrap(),
    );
    let exported = export_into(&store, export_settings.clone()).await;
    assert_eq!((exported.copied, exported.failed), (3, 0), "{exported:?}");
    let statement = sign_layout(&store, &LocalSigner(statement_key)).await;
    // From here on the source registry is not read: every image comes from the layout.
    let source_requests = world.plane(SOURCE).operations().len();

    let arn = sfn.create_state_machine("replicate").await;

    // index.json changed after signing: team/app:v1 now names the unsigned image.
    let index = store
        .read_file("index.json", 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let changed = String::from_utf8(index.to_vec())
        .unwrap()
        .replace(&signed.digest, &unsigned.digest);
    assert_ne!(changed.as_bytes(), &index[..]);
    store
        .write_file("index.json", changed.into())
        .await
        .unwrap();
    let refused = sfn.execute(&arn, &import_job("refused/", json!({}))).await;
    assert_eq!(refused.status, "FAILED", "{}", refused.history_text(300));
    assert!(
        refused.cause.contains("transfer statement") && refused.cause.contains("team/app:v1"),
        "{}",
        refused.cause
    );
    for (repository, tag) in [("refused/team/app", "v2"), ("refused/ml/model", "v3")] {
        assert!(in_destination(&world, repository, tag).await.is_none());
    }

    // An image named by digest alone is refused before anything is read (a digest could name
    // any manifest the bucket still holds).
    let by_digest = sfn
        .execute(
            &arn,
            &import_job(
                "refused/",
                json!({"images": [{"repository": "team/app", "digest": unsigned.digest}]}),
            ),
        )
        .await;
    assert_eq!(by_digest.status, "FAILED");
    assert!(
        by_digest.cause.contains("images[0].tag"),
        "{}",
        by_digest.cause
    );

    // Restored, with one more entry the statement does not bind to a repository: the
    // signature's tag-scheme entry under another repository name. Nothing serves it: the
    // layout's repositories and tags are the statement's.
    let mut relocated: Value = serde_json::from_slice(&index).unwrap();
    let signature_entry = relocated["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == json!(signature.digest))
        .unwrap()
        .clone();
    let mut moved = signature_entry.clone();
    moved["annotations"]["org.opencontainers.image.ref.name"] =
        json!(format!("evil:{signature_tag}"));
    relocated["manifests"].as_array_mut().unwrap().push(moved);
    store
        .write_file("index.json", relocated.to_string().into())
        .await
        .unwrap();
    let run = sfn.execute(&arn, &import_job("airgap/", json!({}))).await;
    assert_eq!(
        run.status,
        "SUCCEEDED",
        "{}\n{}",
        run.cause,
        run.history_text(300)
    );
    let report = run.output.clone().unwrap();
    // The first step pinned the run to the statement it verified.
    let pinned = format!("\"statementDigest\":\"{}\"", statement.digest);
    assert!(run.history_text(usize::MAX).contains(&pinned), "{pinned}");
    assert!(in_destination(&world, "airgap/evil", &signature_tag)
        .await
        .is_none());
    // Three images and the signature's tag, listed as a registry lists it.
    assert_eq!(
        (&report["copied"], &report["failed"]),
        (&json!(4), &json!(0)),
        "{report}"
    );
    assert_arrived(&world, "airgap/team/app", "v1", &signed);
    assert_arrived(&world, "airgap/team/app", "v2", &unsigned);
    assert_arrived(&world, "airgap/ml/model", "v3", &large);
    assert_eq!(
        in_destination(&world, "airgap/team/app", &signature_tag).await,
        Some(signature.manifest.to_vec()),
        "the signature travels with its image"
    );
    // The large layer was read in 5 MiB ranges across copy-blobs calls: each call a HEAD for
    // its size and a ranged GET (both s3:GetObject to IAM); read whole, it would be one of each.
    let big = large
        .blobs
        .iter()
        .find(|b| b.data.size() == 12 * MIB)
        .unwrap();
    let big_key = format!(
        "air-gap/blobs/sha256/{}",
        big.digest.trim_start_matches("sha256:")
    );
    let ranged_reads = sfn
        .api_calls()
        .iter()
        .filter(|c| {
            c.function.contains("copy-blobs")
                && c.action == "s3:GetObject"
                && c.resources.iter().any(|r| r.ends_with(&big_key))
        })
        .count();
    assert_eq!(ranged_reads, 3 * 2, "reads of {big_key}");

    // Gated: only what the deployment's policy admits.
    let gated = sfn
        .execute(
            &arn,
            &import_job(
                "gated/",
                json!({"requireSignature": {"policy": e2e::sfn::RIG_TRUST_POLICY}}),
            ),
        )
        .await;
    assert_eq!(gated.status, "SUCCEEDED", "{}", gated.cause);
    let report = gated.output.unwrap();
    assert_eq!(
        (&report["copied"], &report["unsigned"]),
        (&json!(2), &json!(2)),
        "{report}"
    );
    assert_arrived(&world, "gated/team/app", "v1", &signed);
    assert_eq!(
        in_destination(&world, "gated/team/app", &signature_tag).await,
        Some(signature.manifest.to_vec())
    );
    assert!(in_destination(&world, "gated/team/app", "v2")
        .await
        .is_none());
    assert!(in_destination(&world, "gated/ml/model", "v3")
        .await
        .is_none());

    // A layer changed in the bucket after signing (same size): that image fails, named, and is
    // not tagged; the others arrive.
    let layer = unsigned
        .blobs
        .iter()
        .find(|b| b.data.size() == 5_000)
        .unwrap();
    let layer_name = format!(
        "blobs/sha256/{}",
        layer.digest.trim_start_matches("sha256:")
    );
    store
        .write_file(&layer_name, vec![7u8; 5_000].into())
        .await
        .unwrap();
    let broken = sfn.execute(&arn, &import_job("tampered/", json!({}))).await;
    assert_eq!(broken.status, "FAILED", "{}", broken.cause);
    // It alone: the images whose blobs were copied in the same range are put (a range's
    // copy goes on past a failed blob).
    assert!(
        broken.cause.contains("1 of 4 images")
            && broken.cause.contains("team/app")
            && broken.cause.contains(&unsigned.digest),
        "{}",
        broken.cause
    );
    // The layout is named as the job names it, not by the function's loopback port.
    assert!(
        !broken.cause.contains("127.0.0.1") && broken.cause.contains("oci:s3://"),
        "{}",
        broken.cause
    );
    assert!(in_destination(&world, "tampered/team/app", "v2")
        .await
        .is_none());
    assert_arrived(&world, "tampered/team/app", "v1", &signed);
    assert_arrived(&world, "tampered/ml/model", "v3", &large);
    let e2e::image::BlobData::Bytes(original) = &layer.data else {
        unreachable!("a small layer is held in memory")
    };
    store
        .write_file(&layer_name, original.clone())
        .await
        .unwrap();

    assert_eq!(
        world.plane(SOURCE).operations().len(),
        source_requests,
        "an import read the source registry"
    );

    // A rollback: a newer export is imported, then the older layout (which the same key
    // signed) is put back: refused, naming both statements; imported when a job pins it.
    let mut older = Vec::new();
    for name in [STATEMENT_FILE, SIGNATURE_FILE, "index.json"] {
        let bytes = store.read_file(name, 8 << 20).await.unwrap().unwrap();
        older.push((name, bytes));
    }
    world
        .seed(
            "team/app",
            "v4",
            &ImageBuilder::new(Format::Oci).layer(100, 4_000).build(),
        )
        .await;
    let exported = export_into(&store, export_settings).await;
    assert_eq!(exported.copied, 1, "{exported:?}");
    let (statement_key, _) = signing_key(95);
    let newer = sign_layout(&store, &LocalSigner(statement_key)).await;
    assert_ne!(newer.digest, statement.digest);
    let run = sfn.execute(&arn, &import_job("newer/", json!({}))).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.cause);
    for (name, bytes) in older {
        store.write_file(name, bytes).await.unwrap();
    }
    let rolled = sfn.execute(&arn, &import_job("rolled/", json!({}))).await;
    assert_eq!(rolled.status, "FAILED", "{}", rolled.history_text(300));
    assert!(
        rolled.cause.contains("not after") && rolled.cause.contains(&newer.digest),
        "{}",
        rolled.cause
    );
    assert!(in_destination(&world, "rolled/team/app", "v1")
        .await
        .is_none());
    // A job's own pin does not get past it (job input is not trusted to roll back); an operator
    // who means it removes the newest statement from the work bucket.
    let pinned_job = import_job(
        "pinned/",
        json!({"source": {"layout": LAYOUT, "statementDigest": statement.digest}}),
    );
    let refused = sfn.execute(&arn, &pinned_job).await;
    assert_eq!(refused.status, "FAILED", "{}", refused.cause);
    assert!(refused.cause.contains("not after"), "{}", refused.cause);
    remove_newest_statements(&world).await;
    let pinned = sfn.execute(&arn, &pinned_job).await;
    assert_eq!(pinned.status, "SUCCEEDED", "{}", pinned.cause);
    assert_arrived(&world, "pinned/team/app", "v1", &signed);
    assert!(in_destination(&world, "pinned/team/app", "v4")
        .await
        .is_none());

    // The functions' S3 calls: only the layout's objects (and the work bucket), each allowed by
    // the synthesized roles.
    let policies = Policies::load(&e2e::sfn::workspace().join("cdk/cdk.out.iam"), OWNER);
    let performed = Performed::of(sfn.api_calls().into_iter().filter(|c| {
        c.action.starts_with("s3:")
            && (c.action == "s3:ListBucket"
                || c.resources
                    .iter()
                    .any(|r| r.contains(BUCKET) || r.contains("/layout-statements/")))
    }));
    assert!(!performed.is_empty());
    for call in &performed {
        let layout = call
            .resource
            .starts_with(&format!("arn:aws:s3:::{BUCKET}/air-gap/"));
        let newest = call.function.contains("enumerate-repositories")
            && call.resource.starts_with(&format!(
                "arn:aws:s3:::{}/layout-statements/",
                e2e::sfn::WORK_BUCKET
            ));
        // A missing key answered 404 needs s3:ListBucket (the rig records it): the layout's
        // bucket, or the work bucket (the first import from a layout finds no mark).
        let listed = call.action == "s3:ListBucket"
            && [BUCKET, e2e::sfn::WORK_BUCKET]
                .iter()
                .any(|b| call.resource == format!("arn:aws:s3:::{b}"));
        assert!(layout || newest || listed, "{call:?}");
    }
    assert!(performed.iter().any(|c| c.action == "s3:ListBucket"
        && c.resource == format!("arn:aws:s3:::{}", e2e::sfn::WORK_BUCKET)));
    assert!(performed
        .iter()
        .any(|c| c.action == "s3:PutObject" && c.resource.contains("/layout-statements/")));
    let violations = policies.violations(&performed);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The check bites: without the layout's grant, those reads are refused.
    let mut no_layout = policies.clone();
    for statements in no_layout.by_function.values_mut() {
        statements.retain(|s| !s.resources.iter().any(|r| r.contains(BUCKET)));
    }
    assert!(
        no_layout
            .violations(&performed)
            .iter()
            .any(|v| v.contains("s3:GetObject") && v.contains("air-gap/blobs/")),
        "the layout's reads were allowed without its grant"
    );
}
