//! The layout registry the workflow's steps read an import from (issue 35), asked over HTTP as
//! a hostile client and a hostile layout would: only its own credential is answered, and only
//! what the verified statement names is served (tags, manifests by digest, referrers), however
//! `index.json` and `blobs/` were changed after signing.

use std::sync::Arc;

use e2e::image::{
    artifact, multi_arch, referrers_index, signing_key, Format, ImageBuilder, Pusher,
};
use e2e::registry::TestRegistry;
use e2e::statements::{sign_layout, LocalSigner};
use oci::layout::{DirLayout, LayoutStore};
use replication::connect::{Connections, Settings};
use replication::layout_registry::{LayoutRegistry, VerifiedLayout};
use replication::layout_run::{run_layout_job, ImportTrust};
use replication::transfer_statement::TrustedTransferKey;
use serde_json::{json, Value};

const SBOM: &str = "application/spdx+json";

/// The served registry, asked with its credential.
struct WithCredential {
    http: reqwest::Client,
    base: String,
    username: String,
    password: String,
}

impl WithCredential {
    /// `GET /v2/PATH` (with `range`, a `Range` header), accepting indexes and manifests.
    async fn get(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .get(format!("{}/{path}", self.base))
            .basic_auth(&self.username, Some(&self.password))
            .header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
            );
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.unwrap()
    }

    /// `GET /v2/PATH`, its JSON body.
    async fn json(&self, path: &str) -> Value {
        self.get(path, None).await.json().await.unwrap()
    }
}

/// GIVEN a signed layout of `team/app:v1` (an index, with an SBOM referrer) and `team/lib:v2`,
/// then a manifest no statement names added to its blobs WHEN it is served
/// THEN a request without the server's credential is refused 401; the catalog and tags are the
/// statement's; a manifest by digest is served when the statement names it or it is a child of
/// its index, and not when it is only in `blobs/`; the referrers API lists the SBOM with its
/// artifactType; a blob is served in ranges (206, Content-Range) and a range past its end is 416.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_layout_answers_its_client_only_and_only_with_the_statements_content() {
    let src = TestRegistry::start();
    let pusher = Pusher::new(&src.host, None);
    let app = multi_arch(81, 1, 3_000);
    let lib = ImageBuilder::new(Format::Oci).layer(82, 70_000).build();
    let sbom = artifact(Some(&app), SBOM, SBOM, br#"{"spdxVersion":"SPDX-2.3"}"#);
    pusher.push("team/app", "v1", &app).await;
    pusher.push("team/lib", "v2", &lib).await;
    pusher.push("team/app", &sbom.digest, &sbom).await;
    let fallback = app.digest.replacen(':', "-", 1);
    pusher
        .push(
            "team/app",
            &fallback,
            &referrers_index(vec![(sbom.clone(), SBOM)]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = DirLayout::new(dir.path());
    let settings = Settings {
        registry: e2e::fast_retry_config(&[&src.host]),
        ..Settings::default()
    };
    let export = json!({"source": {"registry": src.host, "insecure": true},
                        "destinations": [{"layout": dir.path()}]});
    let exported = run_layout_job(
        &Connections::new(settings),
        replication::Job::from_json(&export.to_string()).unwrap(),
        &store,
        ImportTrust::default(),
        &replication::run::Quiet,
    )
    .await
    .unwrap()
    .run
    .report;
    assert_eq!(exported.copied, 2, "{exported:?}");
    let (key, pem) = signing_key(83);
    let statement = sign_layout(&store, &LocalSigner(key)).await;

    // After signing: a manifest only in blobs/, which no statement names.
    let stray = ImageBuilder::new(Format::Oci).layer(84, 1_000).build();
    std::fs::write(
        dir.path()
            .join("blobs/sha256")
            .join(stray.digest.trim_start_matches("sha256:")),
        &stray.manifest,
    )
    .unwrap();

    let store: Arc<dyn LayoutStore> = Arc::new(DirLayout::new(dir.path()));
    let key = TrustedTransferKey::from_pem(&pem).unwrap();
    let verified = VerifiedLayout::read(store, &key).await.unwrap();
    assert_eq!(verified.statement.digest, statement.digest);
    assert_eq!(
        verified.repositories().collect::<Vec<_>>(),
        ["team/app", "team/lib"]
    );
    let served = LayoutRegistry::serve(verified).await.unwrap();
    let base = format!("http://{}/v2", served.host());
    let oci::Credential::Basic { username, password } = served.credential() else {
        unreachable!("the served registry's credential is Basic")
    };
    let http = reqwest::Client::new();
    let client = WithCredential {
        http: http.clone(),
        base: base.clone(),
        username: username.clone(),
        password: password.clone(),
    };

    // No credential, or another one: 401, whatever the path.
    let bare = http
        .get(format!("{base}/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    assert!(bare.headers().contains_key("www-authenticate"));
    let wrong = http
        .get(format!("{base}/_catalog"))
        .basic_auth(&username, Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let catalog = client.json("_catalog").await;
    assert_eq!(catalog["repositories"], json!(["team/app", "team/lib"]));
    let tags = client.json("team/app/tags/list").await;
    assert_eq!(tags["tags"], json!(["v1"]));

    // Manifests: by tag and by digest as stated, a child of the stated index, not the stray.
    let by_tag = client.get("team/app/manifests/v1", None).await;
    assert_eq!(by_tag.status(), 200);
    assert_eq!(
        by_tag.headers()["docker-content-digest"].to_str().unwrap(),
        app.digest
    );
    assert_eq!(by_tag.bytes().await.unwrap(), app.manifest);
    let child = &app.children[0];
    let by_digest = client
        .get(&format!("team/app/manifests/{}", child.digest), None)
        .await;
    assert_eq!(by_digest.status(), 200);
    assert_eq!(by_digest.bytes().await.unwrap(), child.manifest);
    for path in [
        format!("team/app/manifests/{}", stray.digest),
        // team/lib's image is stated for team/lib, not for team/app.
        format!("team/app/manifests/{}", lib.digest),
        "other/manifests/v1".to_string(),
    ] {
        let answer = client.get(&path, None).await;
        assert_eq!(answer.status(), 404, "{path}");
    }

    // Referrers: the statement's, with its artifactType; filtered by it.
    let referrers = client
        .json(&format!("team/app/referrers/{}", app.digest))
        .await;
    assert_eq!(
        referrers["manifests"],
        json!([{"mediaType": sbom.media_type, "digest": sbom.digest,
                "size": sbom.manifest.len(), "artifactType": SBOM}])
    );
    let none = client
        .json(&format!(
            "team/app/referrers/{}?artifactType=application/vnd.dev.sigstore.bundle.v0.3%2Bjson",
            app.digest
        ))
        .await;
    assert_eq!(none["manifests"], json!([]));

    // Blobs in ranges, as copy-blobs asks for a segment; past the end, 416 with the size.
    let layer = &lib
        .blobs
        .iter()
        .find(|b| b.data.size() == 70_000)
        .unwrap()
        .digest;
    let blob = format!("team/lib/blobs/{layer}");
    let ranged = client.get(&blob, Some("bytes=65536-")).await;
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        "bytes 65536-69999/70000"
    );
    assert_eq!(ranged.bytes().await.unwrap().len(), 70_000 - 65_536);
    let past = client.get(&blob, Some("bytes=70000-")).await;
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"].to_str().unwrap(),
        "bytes */70000"
    );
    // Read-only.
    let write = http
        .put(format!("{base}/team/app/manifests/v2"))
        .basic_auth(&username, Some(&password))
        .body(app.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 405);
}
