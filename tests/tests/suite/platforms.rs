//! Platform subsets (`platforms`): an index is copied with only the children of the platforms a
//! job names, as a new index keeping the source's fields, annotations and order; the other
//! children and their blobs never reach the destination; a later run finds it present, and a
//! verification expects the subset (no false "different"). Real distribution registries,
//! skopeo to read back.

use e2e::image::{annotated_oci_index, sha256, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use replication::connect::{Connections, Settings};
use replication::report::ImageStatus;
use replication::run::{run_job, Quiet};
use replication::Job;
use serde_json::json;

/// An OCI index with annotations over one image per platform (`os/architecture[/variant]`).
fn annotated_index(platforms: &[&str], seed: u64) -> TestImage {
    let children: Vec<TestImage> = platforms
        .iter()
        .enumerate()
        .map(|(i, _)| {
            ImageBuilder::new(Format::Oci)
                .layer(seed * 100 + i as u64, 1500)
                .build()
        })
        .collect();
    let manifests: Vec<serde_json::Value> = platforms
        .iter()
        .zip(&children)
        .map(|(platform, child)| {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = json!({"architecture": parts[1], "os": parts[0]});
            if let Some(variant) = parts.get(2) {
                p["variant"] = json!(variant);
            }
            json!({"mediaType": child.media_type, "size": child.manifest.len(),
                   "digest": child.digest, "platform": p})
        })
        .collect();
    annotated_oci_index(
        manifests,
        children,
        Some(
            json!({"org.opencontainers.image.source": "https://example.com/app",
                    "org.opencontainers.image.version": "1.2.3"}),
        ),
    )
}

fn connections() -> Connections {
    Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    })
}

fn job(src: &TestRegistry, dst: &TestRegistry, extra: serde_json::Value) -> Job {
    let mut job = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "platforms": ["linux/amd64", "linux/arm64/v8"],
        "referrers": false
    });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(job).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_copied_with_only_the_platforms_asked_and_verified_as_such() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let app = annotated_index(
        &["linux/amd64", "linux/arm/v7", "linux/arm64", "linux/s390x"],
        1,
    );
    let single = ImageBuilder::new(Format::Docker).layer(50, 2000).build();
    let arm_only = annotated_index(&["linux/arm/v6"], 2);
    pusher.push("app", "1.2.3", &app).await;
    pusher.push("tool", "1.0", &single).await;
    pusher.push("legacy", "0.9", &arm_only).await;

    let output = run_job(&connections(), job(&src, &dst, json!({})), &Quiet)
        .await
        .unwrap();

    let r = &output.report;
    assert_eq!(
        (r.copied, r.refused, r.failed, r.platform_subsets),
        (2, 1, 0, 1),
        "{r:?}"
    );
    // The subset: the source's fields, annotations and order, two of its four descriptors.
    let copied = e2e::skopeo::inspect_raw(&format!("{}/app:1.2.3", dst.host), None);
    let subset: serde_json::Value = serde_json::from_slice(&copied).unwrap();
    let source: serde_json::Value = serde_json::from_slice(&app.manifest).unwrap();
    assert_eq!(subset["annotations"], source["annotations"]);
    assert_eq!(subset["mediaType"], source["mediaType"]);
    assert_eq!(
        subset["manifests"],
        json!([source["manifests"][0], source["manifests"][2]]),
        "amd64 and arm64 (its default variant is v8), in the source's order"
    );
    let subset_digest = sha256(&copied);
    assert_ne!(subset_digest, app.digest);
    let result = output
        .images
        .iter()
        .find(|i| i.repository == "app")
        .unwrap();
    assert_eq!(result.digest, app.digest, "the source's digest");
    assert_eq!(
        result.target_digest.as_deref(),
        Some(subset_digest.as_str())
    );
    // The kept children byte-identical; the others, and their blobs, never sent.
    let target = Pusher::new(&dst.host, None);
    for (i, child) in app.children.iter().enumerate() {
        let there = target.manifest("app", &child.digest).await;
        match i {
            0 | 2 => assert_eq!(there.as_ref(), Some(&child.manifest)),
            _ => {
                assert!(there.is_none(), "child {i} copied");
                for blob in &child.blobs {
                    assert!(
                        !dst.blob_data_path(&blob.digest).exists(),
                        "child {i}'s blob"
                    );
                }
            }
        }
    }
    // An image that is no index is copied as it is; an index with none of the platforms is
    // refused, saying what it offers.
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/tool:1.0", dst.host), None),
        single.manifest.to_vec()
    );
    let refused = output
        .images
        .iter()
        .find(|i| i.repository == "legacy")
        .unwrap();
    assert_eq!(refused.status, ImageStatus::Refused);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("it offers linux/arm/v6"),
        "{refused:?}"
    );
    assert!(target.manifest("legacy", "0.9").await.is_none());

    // The next run finds the subset present.
    let again = run_job(&connections(), job(&src, &dst, json!({})), &Quiet)
        .await
        .unwrap();
    assert_eq!(
        (
            again.report.present,
            again.report.copied,
            again.report.failed
        ),
        (2, 0, 0),
        "{:?}",
        again.report
    );

    // A verification with the same platforms finds the destinations as a replication leaves
    // them; without them it sees the subset as another image.
    let verify = |platforms: serde_json::Value| {
        job(
            &src,
            &dst,
            json!({"mode": "verify", "platforms": platforms}),
        )
    };
    let same = run_job(
        &connections(),
        verify(json!(["linux/amd64", "linux/arm64/v8"])),
        &Quiet,
    )
    .await
    .unwrap();
    let found = same.report.verify.unwrap();
    assert_eq!((found.identical, found.total()), (2, 0), "{found:?}");
    let all = run_job(&connections(), verify(json!([])), &Quiet)
        .await
        .unwrap();
    let found = all.report.verify.unwrap();
    assert!(
        found
            .differences
            .iter()
            .any(|d| d.target.ends_with("app:1.2.3") && d.kind.as_str() == "different"),
        "{found:?}"
    );
}

#[test]
fn platforms_are_refused_with_the_entry_named() {
    for (platforms, field) in [
        (json!(["linux/amd64", "amd64"]), "platforms[1]"),
        (json!(["Linux/AMD64"]), "platforms[0]"),
        (json!(vec!["linux/amd64"; 33]), "platforms"),
    ] {
        let job: Job = serde_json::from_value(json!({
            "source": {"registry": "r.example"},
            "destinations": [{"registry": "d.example"}],
            "platforms": platforms
        }))
        .unwrap();
        let e = job.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("{field}:")), "{e}");
    }
}
