//! Promotion gated on signatures (`requireSignature`): images signed by the tests with keys they
//! generate, in cosign's form. A valid signature is copied with its image; a missing, wrong-key
//! or tampered one is not, and each image is named in the report with the reason.

use e2e::image::{cosign_signature, signing_key, Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use replication::connect::{Connections, Settings};
use replication::Job;
use serde_json::json;

fn fallback(image: &TestImage) -> String {
    image.digest.replacen(':', "-", 1)
}

#[tokio::test]
async fn only_images_signed_with_a_trusted_key_are_copied_and_the_others_are_named() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let target = Pusher::new(&dst.host, None);
    let (trusted, trusted_pem) = signing_key(1);
    let (other, _) = signing_key(2);
    let image = |seed| ImageBuilder::new(Format::Oci).layer(seed, 1000).build();
    let (signed, unsigned, wrong_key, tampered) = (image(1), image(2), image(3), image(4));
    for (tag, img) in [
        ("signed", &signed),
        ("unsigned", &unsigned),
        ("wrong-key", &wrong_key),
        ("tampered", &tampered),
    ] {
        source.push("app", tag, img).await;
    }
    let signature = cosign_signature(&signed.digest, &trusted, false, None);
    source
        .push("app", &format!("{}.sig", fallback(&signed)), &signature)
        .await;
    let by_other = cosign_signature(&wrong_key.digest, &other, false, None);
    source
        .push("app", &format!("{}.sig", fallback(&wrong_key)), &by_other)
        .await;
    let changed = cosign_signature(&tampered.digest, &trusted, true, None);
    source
        .push("app", &format!("{}.sig", fallback(&tampered)), &changed)
        .await;
    // A valid signature of another image does not sign this one.
    let replayed = cosign_signature(&signed.digest, &trusted, false, None);
    let moved = image(5);
    source.push("app", "replayed", &moved).await;
    source
        .push("app", &format!("{}.sig", fallback(&moved)), &replayed)
        .await;

    let job = |extra: serde_json::Value| {
        let mut base = json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": dst.host, "insecure": true}],
            "requireSignature": {"publicKeys": [trusted_pem]},
        });
        for (k, v) in extra.as_object().unwrap() {
            base["requireSignature"][k] = v.clone();
        }
        Job::from_json(&base.to_string()).unwrap()
    };
    let conns = Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    });

    let output = replication::run::run_job(&conns, job(json!({})), &replication::run::Quiet)
        .await
        .unwrap();

    let report = &output.report;
    // The signed image and its signature (a referrer, copied with it); nothing else.
    assert_eq!(
        (report.copied, report.unsigned, report.failed),
        (2, 4, 0),
        "{report:?}"
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/app:signed", dst.host), None),
        signed.manifest.to_vec()
    );
    assert_eq!(
        target
            .manifest("app", &format!("{}.sig", fallback(&signed)))
            .await
            .unwrap(),
        signature.manifest
    );
    for tag in ["unsigned", "wrong-key", "tampered", "replayed"] {
        assert!(
            target.manifest("app", tag).await.is_none(),
            "{tag} was copied"
        );
    }
    assert!(target
        .manifest("app", &format!("{}.sig", fallback(&wrong_key)))
        .await
        .is_none());
    let reason = |tag: &str| e2e::unsigned_reason(report, tag);
    assert!(
        reason("unsigned").contains("no cosign signature"),
        "{}",
        reason("unsigned")
    );
    assert!(
        reason("wrong-key").contains("no signature verifies"),
        "{}",
        reason("wrong-key")
    );
    assert!(
        reason("tampered").contains("no signature verifies"),
        "{}",
        reason("tampered")
    );
    assert!(
        reason("replayed").contains(&format!("signs {}, not this image", signed.digest)),
        "{}",
        reason("replayed")
    );
    assert_eq!(report.unsigned_images[0].repository, "app");

    // Asked to, unsigned images fail the run (named as failures).
    let strict = replication::run::run_job(
        &conns,
        job(json!({"failUnsigned": true})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            strict.report.failed,
            strict.report.unsigned,
            strict.report.present
        ),
        (4, 0, 2),
        "{:?}",
        strict.report
    );
}

#[test]
fn a_public_key_that_is_not_p256_pem_is_refused_naming_it() {
    let (_, pem) = signing_key(3);
    let input = json!({
        "source": {"registry": "ghcr.io"},
        "destinations": [{"registry": "quay.io"}],
        "requireSignature": {"publicKeys": [pem, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]},
    });
    match Job::parse(&input.to_string()) {
        Err(replication::Error::InvalidInput { problems }) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "requireSignature.publicKeys[1]");
        }
        other => panic!("{other:?}"),
    }
    let none = json!({
        "source": {"registry": "ghcr.io"},
        "destinations": [{"registry": "quay.io"}],
        "requireSignature": {"publicKeys": []},
    });
    assert!(Job::parse(&none.to_string()).is_err());
}

/// A source with a signed image `app:signed` (its `.sig` tag) and an unsigned runnable image;
/// returns (source, destination, signed, unsigned, trusted key PEM).
async fn signed_and_unsigned() -> (TestRegistry, TestRegistry, TestImage, TestImage, String) {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (key, pem) = signing_key(1);
    let signed = ImageBuilder::new(Format::Oci).layer(11, 1000).build();
    let unsigned = ImageBuilder::new(Format::Oci).layer(12, 1000).build();
    source.push("app", "signed", &signed).await;
    source
        .push(
            "app",
            &format!("{}.sig", fallback(&signed)),
            &cosign_signature(&signed.digest, &key, false, None),
        )
        .await;
    // The unsigned image is pushed by digest only: it reaches the destination only if the
    // attack below smuggles it through.
    source.push("app", &unsigned.digest, &unsigned).await;
    (src, dst, signed, unsigned, pem)
}

fn gated_job(src: &str, dst: &str, pem: &str, extra: serde_json::Value) -> Job {
    let mut job = json!({
        "source": {"registry": src, "insecure": true},
        "destinations": [{"registry": dst, "insecure": true}],
        "requireSignature": {"publicKeys": [pem]},
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    Job::from_json(&job.to_string()).unwrap()
}

/// Runs the gated job (with or without `referrers`) and checks the signed image arrived;
/// returns the report.
async fn run_gated(
    src: &str,
    dst: &str,
    pem: &str,
    referrers: bool,
    signed: &TestImage,
) -> replication::report::RunReport {
    let settings = Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    };
    let output = replication::run::run_job(
        &Connections::new(settings),
        gated_job(src, dst, pem, json!({"referrers": referrers})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        Pusher::new(dst, None)
            .manifest("app", "signed")
            .await
            .unwrap(),
        signed.manifest
    );
    output.report
}

#[tokio::test]
async fn an_unsigned_image_under_an_artifact_tag_of_a_signed_image_is_refused() {
    let (src, dst, signed, unsigned, pem) = signed_and_unsigned().await;
    // Anyone who can push can push a runnable image under an artifact-shaped tag.
    let smuggled = format!("{}.sbom", fallback(&signed));
    Pusher::new(&src.host, None)
        .push("app", &smuggled, &unsigned)
        .await;

    for referrers in [true, false] {
        let report = run_gated(&src.host, &dst.host, &pem, referrers, &signed).await;

        let target = Pusher::new(&dst.host, None);
        assert!(
            target.manifest("app", &unsigned.digest).await.is_none(),
            "the unsigned image reached the destination (referrers {referrers})"
        );
        assert!(target.manifest("app", &smuggled).await.is_none());
        assert_eq!(report.refused, 1, "{report:?}");
        assert!(
            report.refusals[0].contains("runnable image"),
            "{:?}",
            report.refusals
        );
    }
}

#[tokio::test]
async fn a_fallback_index_listing_an_unsigned_image_is_refused_with_what_it_lists() {
    let (src, dst, signed, unsigned, pem) = signed_and_unsigned().await;
    // The referrers fallback tag of the signed image, holding an index that lists the unsigned
    // image as if it were a referrer.
    let index = e2e::image::referrers_index(vec![(
        unsigned.clone(),
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    )]);
    Pusher::new(&src.host, None)
        .push("app", &fallback(&signed), &index)
        .await;

    for referrers in [true, false] {
        let report = run_gated(&src.host, &dst.host, &pem, referrers, &signed).await;

        let target = Pusher::new(&dst.host, None);
        assert!(target.manifest("app", &unsigned.digest).await.is_none());
        assert!(target.manifest("app", &index.digest).await.is_none());
        assert_eq!(report.refused, 1, "{report:?}");
    }
}

#[tokio::test]
async fn a_junk_signature_candidate_is_skipped_and_named_and_the_repository_goes_on() {
    let (src, dst, signed, unsigned, pem) = signed_and_unsigned().await;
    let (key, _) = signing_key(1);
    // A second image whose `.sig` the registry answers with bytes that are no manifest of it.
    let junk_signed = ImageBuilder::new(Format::Oci).layer(13, 1000).build();
    let junk = cosign_signature(&junk_signed.digest, &key, false, None);
    let source = Pusher::new(&src.host, None);
    source.push("app", "junk-signed", &junk_signed).await;
    source
        .push("app", &format!("{}.sig", fallback(&junk_signed)), &junk)
        .await;
    let hostile = e2e::hostile::HostileRegistry::start(&src.host);
    let junk_tag = format!("{}.sig", fallback(&junk_signed));
    hostile.attack(|a| a.corrupt_manifests = vec![junk.digest.clone(), junk_tag]);
    let _ = unsigned;

    let output = replication::run::run_job(
        &Connections::new(Settings {
            registry: e2e::fast_retry_config(&[]),
            ..Settings::default()
        }),
        gated_job(&hostile.host, &dst.host, &pem, json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let report = &output.report;
    assert_eq!(report.repositories_failed, 0, "{report:?}");
    let target = Pusher::new(&dst.host, None);
    assert_eq!(
        target.manifest("app", "signed").await.unwrap(),
        signed.manifest
    );
    assert!(target.manifest("app", "junk-signed").await.is_none());
    let named = report
        .unsigned_images
        .iter()
        .find(|r| r.tags == ["junk-signed"])
        .unwrap_or_else(|| panic!("{:?}", report.unsigned_images));
    assert!(
        named.error.as_deref().unwrap().contains("not a manifest"),
        "{named:?}"
    );
}

#[tokio::test]
async fn a_referrer_declaring_another_subject_is_not_written_into_its_fallback_index() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (x, y) = (
        ImageBuilder::new(Format::Oci).layer(14, 500).build(),
        ImageBuilder::new(Format::Oci).layer(15, 500).build(),
    );
    source.push("app", "x", &x).await;
    source.push("app", "y-untagged", &y).await;
    // An SBOM of y, which the source's referrers API lists as a referrer of x.
    let sbom = e2e::image::artifact(
        Some(&y),
        "application/spdx+json",
        "application/spdx+json",
        b"{}",
    );
    source.push("app", &sbom.digest, &sbom).await;
    let hostile = e2e::hostile::HostileRegistry::start(&src.host);
    let descriptor = json!({"mediaType": sbom.media_type, "digest": sbom.digest,
        "size": sbom.manifest.len(), "artifactType": "application/spdx+json"});
    hostile.attack(|a| {
        a.referrers = Some([(x.digest.clone(), vec![descriptor])].into_iter().collect())
    });

    let output = replication::run::run_job(
        &Connections::new(Settings {
            registry: e2e::fast_retry_config(&[]),
            ..Settings::default()
        }),
        Job::from_json(
            &json!({
                "source": {"registry": hostile.host, "insecure": true},
                "destinations": [{"registry": dst.host, "insecure": true}],
                "tags": {"include": ["x"]},
            })
            .to_string(),
        )
        .unwrap(),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let target = Pusher::new(&dst.host, None);
    assert_eq!(target.manifest("app", "x").await.unwrap(), x.manifest);
    assert!(target.manifest("app", &sbom.digest).await.is_none());
    // y is not replicated: no fallback index may be written for it.
    assert!(target.manifest("app", &fallback(&y)).await.is_none());
    assert_eq!(output.report.refused, 1, "{:?}", output.report);
    assert!(
        output.report.refusals[0].contains("declares subject"),
        "{:?}",
        output.report.refusals
    );
}

/// "Artifact, not runnable" is decided by what is known not to run, and checked against an
/// independent reader: skopeo (containers/image, the Go decoding docker and podman share). A
/// source pushes, under artifact tags of a signed image, images a runtime would run whatever
/// their layers' media types say (an image config with a tar behind a signature media type, or
/// behind a type no runtime list names): refused, absent from the destination. What the gate
/// does let through, skopeo cannot read as a runnable image.
#[tokio::test]
async fn what_travels_as_an_artifact_is_what_skopeo_cannot_run() {
    let (src, dst, signed, _, pem) = signed_and_unsigned().await;
    let source = Pusher::new(&src.host, None);
    let tar = e2e::skopeo::tar_with("bin/payload", b"#!/bin/sh\necho owned\n");
    let config = |layer: &[u8]| {
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [e2e::image::sha256(layer)]}
        }))
        .unwrap()
    };
    const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    let disguised = e2e::image::oci_artifact(
        None,
        (IMAGE_CONFIG, &config(&tar)),
        &[("application/vnd.dev.cosign.simplesigning.v1+json", &tar)],
    );
    let unlisted = e2e::image::oci_artifact(
        None,
        (IMAGE_CONFIG, &config(&tar)),
        &[("application/octet-stream", &tar)],
    );
    // Docker's classic store takes an application/json config as an image config, and unpacks
    // a layer whatever its media type (skopeo calls it a non-image artifact: it is not the
    // independent reader here).
    let json_config = e2e::image::oci_artifact(
        None,
        ("application/json", &config(&tar)),
        &[("application/octet-stream", &tar)],
    );
    let att = format!("{}.att", fallback(&signed));
    let sbom = format!("{}.sbom", fallback(&signed));
    source.push("app", &att, &disguised).await;
    source.push("app", &sbom, &unlisted).await;
    source.push("app", &json_config.digest, &json_config).await;
    source
        .push(
            "app",
            &fallback(&signed),
            &e2e::image::referrers_index(vec![(
                json_config.clone(),
                "application/vnd.example+json",
            )]),
        )
        .await;
    for tag in [&att, &sbom] {
        assert_eq!(
            e2e::skopeo::runnable(&format!("{}/app:{tag}", src.host)),
            Ok(()),
            "the attack needs a runnable image under {tag}"
        );
    }

    let report = run_gated(&src.host, &dst.host, &pem, false, &signed).await;

    assert_eq!(report.refused, 3, "{report:?}");
    assert!(
        report.refusals.iter().all(|r| r.contains("runnable image")),
        "{:?}",
        report.refusals
    );
    let target = Pusher::new(&dst.host, None);
    for image in [&disguised, &unlisted, &json_config] {
        assert!(target.manifest("app", &image.digest).await.is_none());
    }

    // What does travel: the legacy-shaped attestation (an image config, one JSON document
    // layer, as cosign writes its legacy signatures) and the signature; skopeo runs neither.
    let statement = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#;
    let attestation = e2e::image::oci_artifact(
        None,
        (IMAGE_CONFIG, &config(statement)),
        &[("application/vnd.dsse.envelope.v1+json", statement)],
    );
    source.push("app", &att, &attestation).await;
    source.push("app", &sbom, &attestation).await;
    source
        .push(
            "app",
            &fallback(&signed),
            &e2e::image::referrers_index(vec![(
                attestation.clone(),
                "application/vnd.dsse.envelope.v1+json",
            )]),
        )
        .await;
    let dst2 = TestRegistry::start();
    let report = run_gated(&src.host, &dst2.host, &pem, false, &signed).await;
    assert_eq!(report.refused, 0, "{report:?}");
    for tag in [att.clone(), sbom, format!("{}.sig", fallback(&signed))] {
        let at = format!("{}/app:{tag}", dst2.host);
        assert!(e2e::skopeo::exists(&at), "{tag} did not travel");
        assert!(e2e::skopeo::runnable(&at).is_err(), "skopeo runs {tag}");
    }
}

/// Source requests in a registry's access log beyond the repository's listing: what an OCI
/// registry's listing sends (the tag list, `/tags/list`, and a read of each tag's manifest for
/// its digest) and the API version check (`/v2/`) left out.
fn requests_beyond_the_listing(registry: &TestRegistry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| {
            let listing_head = l.contains("/manifests/") && !l.contains("/manifests/sha256:");
            ["\"GET /v2/", "\"HEAD /v2/"].iter().any(|m| l.contains(m))
                && !l.contains("/tags/list")
                && !l.contains("/v2/ HTTP")
                && !listing_head
        })
        .count()
}

/// The gate runs where the work is: a second run of a gated job, every image already in the
/// destination, verifies no signature again and reports them present (before: 3.04 source
/// requests per image beyond the listing, the gate's and the artifact check's reads of each
/// `.sig` manifest and payload). The first run copied each signed image once, its signature
/// with it.
#[tokio::test]
async fn a_gated_run_with_nothing_to_do_reads_no_signature_again() {
    const IMAGES: usize = 100;
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (key, pem) = signing_key(1);
    for seed in 0..IMAGES {
        let image = ImageBuilder::new(Format::Oci)
            .layer(1000 + seed as u64, 200)
            .build();
        source.push("app", &format!("v{seed}"), &image).await;
        let signature = cosign_signature(&image.digest, &key, false, None);
        source
            .push("app", &format!("{}.sig", fallback(&image)), &signature)
            .await;
    }
    let conns = Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    });
    let run = || async {
        let job = gated_job(&src.host, &dst.host, &pem, json!({}));
        replication::run::run_job(&conns, job, &replication::run::Quiet)
            .await
            .unwrap()
            .report
    };

    let first = run().await;
    assert_eq!(
        (first.copied, first.unsigned, first.failed),
        (2 * IMAGES, 0, 0),
        "{first:?}"
    );
    let before = requests_beyond_the_listing(&src);
    let second = run().await;
    let sent = requests_beyond_the_listing(&src) - before;

    assert_eq!(
        (
            second.copied,
            second.present,
            second.unsigned,
            second.failed
        ),
        (0, 2 * IMAGES, 0, 0),
        "{second:?}"
    );
    let per_image = sent as f64 / IMAGES as f64;
    eprintln!(
        "a gated no-op run: {sent} source requests beyond the listing, {per_image:.2} per image"
    );
    assert!(
        per_image <= 0.1,
        "{sent} source requests beyond the tag listing for {IMAGES} images present everywhere ({per_image:.2} per image)"
    );
}

/// "Held" is the exact digest under every tag a run would write, in every destination: an
/// unsigned image a destination already holds (untagged, under another tag, or, in a second
/// destination, under the very tags) is judged where anything of it would be written, so a
/// tag moved onto it in the source moves nowhere, and no new tag names it. Where every
/// destination holds it under every tag, nothing is written (counted present).
#[tokio::test]
async fn an_unsigned_image_a_destination_already_holds_is_not_tagged_or_moved_there() {
    let (src, one, two) = (
        TestRegistry::start(),
        TestRegistry::start(),
        TestRegistry::start(),
    );
    let source = Pusher::new(&src.host, None);
    let (key, pem) = signing_key(1);
    let signed = ImageBuilder::new(Format::Oci).layer(21, 1000).build();
    let unsigned = ImageBuilder::new(Format::Oci).layer(22, 1000).build();
    source.push("app", "v1", &signed).await;
    source
        .push(
            "app",
            &format!("{}.sig", fallback(&signed)),
            &cosign_signature(&signed.digest, &key, false, None),
        )
        .await;
    let conns = Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    });
    let run = |destinations: Vec<&str>, extra: serde_json::Value| {
        let mut job = json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": destinations
                .iter()
                .map(|d| json!({"registry": d, "insecure": true}))
                .collect::<Vec<_>>(),
            "requireSignature": {"publicKeys": [pem]},
        });
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        let job = Job::from_json(&job.to_string()).unwrap();
        let conns = &conns;
        async move {
            replication::run::run_job(conns, job, &replication::run::Quiet)
                .await
                .unwrap()
                .report
        }
    };
    let first = run(vec![&one.host, &two.host], json!({})).await;
    assert_eq!((first.copied, first.unsigned), (4, 0), "{first:?}");

    // Someone else put the unsigned image in the destinations: the first holds it by digest and
    // under `other`, the second under `v1` and `v2`. Then the source moves `v1` onto it and
    // tags it `v2`.
    let (first_dest, second_dest) = (Pusher::new(&one.host, None), Pusher::new(&two.host, None));
    first_dest.push("app", "other", &unsigned).await;
    for tag in ["v1", "v2"] {
        second_dest.push("app", tag, &unsigned).await;
        source.push("app", tag, &unsigned).await;
    }

    let report = run(vec![&one.host, &two.host], json!({})).await;
    assert_eq!(
        first_dest.manifest("app", "v1").await,
        Some(signed.manifest.clone()),
        "the tag moved onto the unsigned image in the first destination: {report:?}"
    );
    assert!(
        first_dest.manifest("app", "v2").await.is_none(),
        "the unsigned image was newly tagged in the first destination: {report:?}"
    );
    assert!(report.unsigned >= 1, "{report:?}");
    assert_eq!(report.copied, 0, "{report:?}");

    // Held by every destination (the second) at the same digest under every tag: nothing is
    // written and nothing is read again; it is counted present, not admitted.
    let held = run(vec![&two.host], json!({})).await;
    assert_eq!((held.copied, held.unsigned), (0, 0), "{held:?}");
    assert_eq!(
        second_dest.manifest("app", "v1").await,
        Some(unsigned.manifest.clone())
    );
}

/// Unsigned images are results, not tasks: the workflow's check settles a repository whose
/// only images left are two unsigned ones without a child, and its report still counts and
/// names them.
#[tokio::test]
async fn unsigned_images_settle_their_repository_without_a_child() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (key, pem) = signing_key(1);
    let signed = ImageBuilder::new(Format::Oci).layer(31, 1000).build();
    source.push("app", "signed", &signed).await;
    source
        .push(
            "app",
            &format!("{}.sig", fallback(&signed)),
            &cosign_signature(&signed.digest, &key, false, None),
        )
        .await;
    for (tag, layer) in [("u1", 32), ("u2", 33)] {
        let unsigned = ImageBuilder::new(Format::Oci).layer(layer, 1000).build();
        source.push("app", tag, &unsigned).await;
    }
    let first = run_gated(&src.host, &dst.host, &pem, false, &signed).await;
    assert_eq!((first.unsigned, first.failed), (2, 0), "{first:?}");

    let conns = Connections::new(Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    });
    let check = replication::steps::enumerate_repositories(
        &conns,
        replication::steps::EnumerateRepositoriesInput {
            job: gated_job(&src.host, &dst.host, &pem, json!({"referrers": false})),
            next_token: None,
            report: None,
            pages: 0,
        },
    )
    .await
    .unwrap();
    assert!(check.repositories.is_empty(), "{check:?}");
    let settled = check.report.unwrap();
    assert_eq!(
        (settled.unsigned, settled.copied, settled.failed),
        (2, 0, 0),
        "{settled:?}"
    );
    // Named as a child's report names them (at most `CHILD_LISTED` a repository).
    let named: Vec<_> = settled
        .unsigned_images
        .iter()
        .flat_map(|r| r.tags.clone())
        .collect();
    assert_eq!(
        named.len(),
        replication::report::CHILD_LISTED.min(2),
        "{settled:?}"
    );
    assert!(
        named.iter().all(|tag| tag == "u1" || tag == "u2"),
        "{settled:?}"
    );
}
