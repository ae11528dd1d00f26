//! Referrers travel with their image: a signed image with an SBOM (OCI 1.1 manifests with
//! `subject`, listed in the `sha256-<hex>` fallback index as clients write it on registries
//! without the referrers API, as distribution 2.8 is), a cosign-legacy `.sig` tag, and a
//! signature of the SBOM one level down. The target must hold the same manifests, byte for byte,
//! under the same tags, so clients find them the same way.

use e2e::image::{artifact, referrers_index, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use replication::connect::{Connections, Settings};
use replication::referrers::fallback_tag;
use serde_json::json;

const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SPDX: &str = "application/spdx+json";

struct Signed {
    image: TestImage,
    signature: TestImage,
    sbom: TestImage,
    sbom_signature: TestImage,
    index: TestImage,
    sbom_index: TestImage,
    legacy: TestImage,
}

/// Pushes `app:v1` signed (signature + SBOM in the fallback index, a legacy `.sig`, and a
/// signature of the SBOM), and `app:v2` with a signature of its own.
async fn push_signed(src: &TestRegistry) -> (Signed, TestImage) {
    let pusher = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci).layer(1, 2000).build();
    let signature = artifact(Some(&image), SIG, SIMPLESIGNING, b"{\"critical\":{}}");
    let sbom = artifact(Some(&image), SPDX, SPDX, b"{\"spdxVersion\":\"SPDX-2.3\"}");
    let sbom_signature = artifact(Some(&sbom), SIG, SIMPLESIGNING, b"{\"sbom\":1}");
    let index = referrers_index(vec![(signature.clone(), SIG), (sbom.clone(), SPDX)]);
    let sbom_index = referrers_index(vec![(sbom_signature.clone(), SIG)]);
    let legacy = artifact(None, SIG, SIMPLESIGNING, b"{\"legacy\":true}");
    pusher.push("app", "v1", &image).await;
    pusher
        .push("app", &fallback_tag(&image.digest), &index)
        .await;
    pusher
        .push("app", &fallback_tag(&sbom.digest), &sbom_index)
        .await;
    pusher
        .push(
            "app",
            &format!("{}.sig", fallback_tag(&image.digest)),
            &legacy,
        )
        .await;

    let other = ImageBuilder::new(Format::Oci).layer(2, 2000).build();
    let other_sig = artifact(Some(&other), SIG, SIMPLESIGNING, b"{\"other\":1}");
    pusher.push("app", "v2", &other).await;
    pusher
        .push(
            "app",
            &fallback_tag(&other.digest),
            &referrers_index(vec![(other_sig, SIG)]),
        )
        .await;
    (
        Signed {
            image,
            signature,
            sbom,
            sbom_signature,
            index,
            sbom_index,
            legacy,
        },
        other,
    )
}

fn job(src: &TestRegistry, dst: &TestRegistry, referrers: bool) -> replication::Job {
    replication::Job::from_json(
        &json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dst.host, "insecure": true, "repositoryPrefix": "mirror/"}],
            "tags": {"include": ["v1"]},
            "referrers": referrers,
        })
        .to_string(),
    )
    .unwrap()
}

fn settings() -> Settings {
    Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    }
}

async fn tags(registry: &TestRegistry, repo: &str) -> Vec<String> {
    let client = oci::RegistryClient::new(
        e2e::fast_retry_config(&[&registry.host]),
        oci::CredentialStore::default(),
    )
    .unwrap();
    let mut tags = client
        .list_tags(&oci::Repository {
            registry: registry.host.clone(),
            name: repo.into(),
        })
        .await
        .unwrap();
    tags.sort();
    tags
}

#[tokio::test]
async fn a_signed_image_arrives_with_its_signature_sbom_and_their_referrers() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (signed, other) = push_signed(&src).await;
    let conns = Connections::new(settings());

    let output = replication::run::run_job(&conns, job(&src, &dst, true), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!(output.report.failed, 0, "{:?}", output.report);

    let fallback = fallback_tag(&signed.image.digest);
    let mut expected = vec![
        "v1".to_string(),
        fallback.clone(),
        format!("{fallback}.sig"),
        fallback_tag(&signed.sbom.digest),
    ];
    expected.sort();
    assert_eq!(tags(&dst, "mirror/app").await, expected);

    // Every manifest byte-identical as the independent client sees it, by tag and by digest.
    let at = |reference: &str| {
        let sep = if reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{}/mirror/app{sep}{reference}", dst.host)
    };
    let from = |reference: &str| {
        let sep = if reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{}/app{sep}{reference}", src.host)
    };
    for (reference, manifest) in [
        ("v1".to_string(), &signed.image),
        (fallback.clone(), &signed.index),
        (format!("{fallback}.sig"), &signed.legacy),
        (fallback_tag(&signed.sbom.digest), &signed.sbom_index),
        (signed.signature.digest.clone(), &signed.signature),
        (signed.sbom.digest.clone(), &signed.sbom),
        (signed.sbom_signature.digest.clone(), &signed.sbom_signature),
    ] {
        let copied = e2e::skopeo::inspect_raw(&at(&reference), None);
        assert_eq!(copied, manifest.manifest.to_vec(), "{reference}");
        assert_eq!(copied, e2e::skopeo::inspect_raw(&from(&reference), None));
    }
    // The referrers' blobs are there too (a verifier downloads the signature payload).
    let target = Pusher::new(&dst.host, None);
    for blob in signed.signature.blobs.iter().chain(&signed.sbom.blobs) {
        assert!(
            target.has_blob("mirror/app", &blob.digest).await,
            "{}",
            blob.digest
        );
    }
    // Nothing of the unselected image came along.
    assert!(target.manifest("mirror/app", &other.digest).await.is_none());

    let again = replication::run::run_job(&conns, job(&src, &dst, true), &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!(
        (again.report.copied, again.report.present),
        (0, 4),
        "{:?}",
        again.report
    );
}

#[tokio::test]
async fn referrers_false_copies_the_image_alone() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let (signed, _) = push_signed(&src).await;
    let conns = Connections::new(settings());

    let output =
        replication::run::run_job(&conns, job(&src, &dst, false), &replication::run::Quiet)
            .await
            .unwrap();

    assert_eq!((output.report.copied, output.report.failed), (1, 0));
    assert_eq!(tags(&dst, "mirror/app").await, vec!["v1".to_string()]);
    let target = Pusher::new(&dst.host, None);
    assert!(target
        .manifest("mirror/app", &signed.signature.digest)
        .await
        .is_none());
}

#[tokio::test]
async fn referrers_the_source_lists_through_its_api_arrive_listed_in_the_targets_fallback_index() {
    let image = ImageBuilder::new(Format::Oci).layer(5, 1000).build();
    let signature = artifact(Some(&image), SIG, SIMPLESIGNING, b"{\"api\":1}");
    let sbom = artifact(Some(&image), SPDX, SPDX, b"{\"api\":2}");
    // distribution 2.8 has no referrers API: the in-process fake serves one, a page per referrer.
    let fake = e2e::fake::FakeRegistry::start_with_referrers(
        &image,
        "v1",
        &[(signature.clone(), SIG), (sbom.clone(), SPDX)],
    )
    .await;
    let dst = TestRegistry::start();
    let client = e2e::client(&[&fake.host, &dst.host], &[]);
    let digest = oci::Digest::parse(&image.digest).unwrap();
    let at = |host: &str, name: &str| oci::Repository {
        registry: host.to_string(),
        name: name.to_string(),
    };

    let listed = client
        .referrers(&at(&fake.host, "app"), &digest)
        .await
        .unwrap()
        .expect("the fake serves the API");
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.digest.as_str(), r.artifact_type.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            (signature.digest.as_str(), Some(SIG)),
            (sbom.digest.as_str(), Some(SPDX))
        ]
    );
    assert_eq!(fake.count("GET", "/referrers/"), 2, "both pages read");
    assert!(
        client
            .referrers(&at(&dst.host, "app"), &digest)
            .await
            .unwrap()
            .is_none(),
        "distribution answers 404: no API"
    );

    let job = replication::Job::from_json(
        &json!({
            "source": {"registry": fake.host, "insecure": true},
            "destinations": [{"registry": dst.host, "insecure": true}],
            "tags": {"include": ["v1"]},
        })
        .to_string(),
    )
    .unwrap();
    let conns = Connections::new(settings());
    let output = replication::run::run_job(&conns, job.clone(), &replication::run::Quiet)
        .await
        .unwrap();

    // The referrers travel inside the image's task: one image copied.
    assert_eq!(
        (output.report.copied, output.report.failed),
        (1, 0),
        "{:?}",
        output.report
    );
    let target = Pusher::new(&dst.host, None);
    for manifest in [&image, &signature, &sbom] {
        assert_eq!(
            target.manifest("app", &manifest.digest).await.unwrap(),
            manifest.manifest
        );
    }
    // The target has no referrers API: they are listed in the fallback index, as OCI 1.1
    // clients write it, so they are discoverable there.
    let fallback = fallback_tag(&image.digest);
    assert_eq!(
        tags(&dst, "app").await,
        vec![fallback.clone(), "v1".to_string()]
    );
    let index: serde_json::Value =
        serde_json::from_slice(&target.manifest("app", &fallback).await.unwrap()).unwrap();
    assert_eq!(
        index["mediaType"],
        json!("application/vnd.oci.image.index.v1+json")
    );
    let listed: Vec<(String, String, u64)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().to_string(),
                d["artifactType"].as_str().unwrap().to_string(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                signature.digest.clone(),
                SIG.to_string(),
                signature.manifest.len() as u64
            ),
            (
                sbom.digest.clone(),
                SPDX.to_string(),
                sbom.manifest.len() as u64
            ),
        ]
    );

    // A second run finds everything present (image, tag and referrers) and writes nothing.
    let again = replication::run::run_job(&conns, job, &replication::run::Quiet)
        .await
        .unwrap();
    assert_eq!((again.report.copied, again.report.present), (0, 1));
}
