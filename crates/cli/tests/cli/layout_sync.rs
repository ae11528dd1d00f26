//! A job with a layout on one side (issue 35): `sync --input JOB` exports what a replication's
//! filters select into `{"layout": DIR}` and signs one transfer statement of the layout; an
//! import job verifies that statement, then puts the images its filters select into every
//! destination under their mapped names. Checked with skopeo, the statement itself, and the
//! destination registry's request log.

use std::process::Output;

use e2e::image::{multi_arch, Pusher, TestImage};
use e2e::registry::TestRegistry;
use e2e::skopeo;
use serde_json::{json, Value};

use crate::layout::blob_files;
use crate::transfer::{cli, pem_file, ref_names, stated_refs, STATEMENT};

/// A source registry with four images, a moto KMS key and an empty layout directory.
struct Rig {
    moto: e2e::moto::Moto,
    src: TestRegistry,
    app: TestImage,
    lib: TestImage,
    key_arn: String,
    public_pem: std::path::PathBuf,
    dir: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Self {
        let moto = e2e::moto::Moto::start();
        let (key_arn, der) = moto.signing_key().await;
        let files = tempfile::tempdir().unwrap();
        let public_pem = pem_file(files.path(), "transfer.pub", &der);
        let src = TestRegistry::start();
        let (app, lib) = (multi_arch(61, 2, 20_000), multi_arch(62, 1, 10_000));
        let pusher = Pusher::new(&src.host, None);
        pusher.push("team/app", "v1", &app).await;
        pusher
            .push("team/app", "v2-rc", &multi_arch(63, 1, 5_000))
            .await;
        pusher.push("team/lib", "v2", &lib).await;
        pusher
            .push("other/tool", "v1", &multi_arch(64, 1, 5_000))
            .await;
        Rig {
            moto,
            src,
            app,
            lib,
            key_arn,
            public_pem,
            dir: tempfile::tempdir().unwrap(),
            files,
        }
    }

    fn layout(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// `sync --input` of `job` with `extra` flags, reaching `registries` over plain HTTP.
    fn sync(&self, job: &Value, registries: &[&str], extra: &[&str]) -> Output {
        self.run("sync", job, registries, extra)
    }

    /// `command` (`sync`, `plan`) with the job.
    fn run(&self, command: &str, job: &Value, registries: &[&str], extra: &[&str]) -> Output {
        let path = self.files.path().join("job.json");
        std::fs::write(&path, serde_json::to_vec(job).unwrap()).unwrap();
        let path = path.display().to_string();
        let mut args = vec![command, "--input", &path, "--output", "json"];
        for host in registries {
            args.extend(["--insecure-registry", host]);
        }
        args.extend(extra);
        cli(&self.moto, &args)
    }

    fn export_job(&self) -> Value {
        json!({
            "source": {"registry": self.src.host, "insecure": true},
            "destinations": [{"layout": self.layout()}],
            "repositories": {"include": ["team/**"]},
            "tags": {"exclude": [".*-rc"]},
        })
    }

    fn export(&self) -> Value {
        let out = self.sync(
            &self.export_job(),
            &[&self.src.host],
            &["--receipt-key", &self.key_arn],
        );
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn import_job(&self, dst: &TestRegistry) -> Value {
        json!({
            "source": {"layout": self.layout()},
            "destinations": [{"registry": dst.host, "insecure": true, "repositoryPrefix": "mirror/"}],
        })
    }
}

/// GIVEN a source with team/app:v1, team/app:v2-rc, team/lib:v2 and other/tool:v1
/// WHEN an export job selects `team/**` without release candidates into a directory
/// THEN the layout names exactly team/app:v1 and team/lib:v2, skopeo reads them byte for byte,
/// and one signed statement covers both; a second export writes nothing and re-signs nothing;
/// an import job pinned to another statement digest is refused; pinned to this one and
/// verifying the statement, it puts both under `mirror/` byte-identical.
#[tokio::test]
async fn an_export_job_and_an_import_job_carry_the_selected_images_across() {
    let rig = Rig::new().await;
    let first = rig.export();
    assert_eq!(first["report"]["copied"], 2, "{first}");
    assert_eq!(ref_names(rig.dir.path()), ["team/app:v1", "team/lib:v2"]);
    for (name, image) in [("team/app:v1", &rig.app), ("team/lib:v2", &rig.lib)] {
        let at = format!("oci:{}:{name}", rig.layout());
        let raw = crate::layout::skopeo(&["inspect", "--raw", &at]);
        assert_eq!(raw, image.manifest.to_vec(), "{name}");
    }
    let statement_bytes = std::fs::read(rig.dir.path().join(STATEMENT)).unwrap();
    let statement: Value = serde_json::from_slice(&statement_bytes).unwrap();
    assert_eq!(stated_refs(rig.dir.path()), ["team/app:v1", "team/lib:v2"]);
    assert_eq!(
        statement["run"]["image"],
        format!("2 images from {}", rig.src.host)
    );

    let blobs = blob_files(rig.dir.path());
    let second = rig.export();
    assert_eq!(
        (&second["report"]["copied"], &second["report"]["present"]),
        (&json!(0), &json!(2)),
        "{second}"
    );
    assert_eq!(
        blob_files(rig.dir.path()),
        blobs,
        "a no-op export wrote blobs"
    );
    assert_eq!(
        std::fs::read(rig.dir.path().join(STATEMENT)).unwrap(),
        statement_bytes,
        "a no-op export re-signed the statement"
    );
    // The plan of a listed image the layout holds, of one it lacks, and of one the source
    // lacks; nothing written.
    let mut listed = rig.export_job();
    listed["images"] = json!([{"repository": "team/app", "tag": "v1"},
                              {"repository": "team/app", "tag": "v2-rc"},
                              {"repository": "team/lib", "tag": "v2-missing"}]);
    listed.as_object_mut().unwrap().remove("tags");
    let out = rig.run("plan", &listed, &[&rig.src.host], &[]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<&str> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["present", "planned", "failed"], "{plan}");
    assert_eq!(blob_files(rig.dir.path()), blobs, "a plan wrote blobs");

    let dst = TestRegistry::start();
    let pem = rig.public_pem.display().to_string();
    // The job's own pin (source.statementDigest): another statement is refused, nothing
    // imported; the one the export wrote is imported.
    let mut pinned = rig.import_job(&dst);
    pinned["source"]["statementDigest"] = json!(format!("sha256:{}", "0".repeat(64)));
    let out = rig.sync(&pinned, &[&dst.host], &["--trust-transfer-key", &pem]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "imported another statement: {stderr}"
    );
    assert!(stderr.contains("source.statementDigest"), "{stderr}");
    assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);
    pinned["source"]["statementDigest"] = json!(oci::Digest::of(&statement_bytes).to_string());
    let out = rig.sync(&pinned, &[&dst.host], &["--trust-transfer-key", &pem]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import: {stderr}");
    assert!(stderr.contains("verified"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["copied"], 2, "{report}");
    for (name, image) in [("team/app:v1", &rig.app), ("team/lib:v2", &rig.lib)] {
        let raw = skopeo::inspect_raw(&format!("{}/mirror/{name}", dst.host), None);
        assert_eq!(raw, image.manifest.to_vec(), "{name}");
    }
    assert!(!skopeo::exists(&format!(
        "{}/mirror/team/app:v2-rc",
        dst.host
    )));
}

/// GIVEN a signed layout WHEN an import job runs without the key THEN it is refused (the
/// layout carries a statement) and nothing reaches the destination; WHEN one of its blobs is
/// changed and the job runs with the key THEN the image needing it fails naming the digest, is
/// not tagged, and the other image still arrives.
#[tokio::test]
async fn an_import_job_refuses_an_unverified_or_tampered_layout() {
    let rig = Rig::new().await;
    rig.export();
    let dst = TestRegistry::start();
    let out = rig.sync(&rig.import_job(&dst), &[&dst.host], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported unverified: {stderr}");
    assert!(stderr.contains("--trust-transfer-key"), "{stderr}");
    assert_eq!(dst.count_requests("POST", "/blobs/uploads/", 202), 0);
    assert_eq!(dst.count_requests("PUT", "/manifests/", 201), 0);

    // A layer of team/app's first platform only (team/lib shares none of its blobs).
    let child: Value = serde_json::from_slice(&rig.app.children[0].manifest).unwrap();
    let layer = child["layers"][0]["digest"].as_str().unwrap();
    let path = rig
        .dir
        .path()
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let pem = rig.public_pem.display().to_string();
    let out = rig.sync(
        &rig.import_job(&dst),
        &[&dst.host],
        &["--trust-transfer-key", &pem],
    );
    assert!(!out.status.success(), "a tampered layout imported");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["report"]["copied"], &report["report"]["failed"]),
        (&json!(1), &json!(1)),
        "{report}"
    );
    assert!(report.to_string().contains(layer), "{report}");
    assert!(!skopeo::exists(&format!("{}/mirror/team/app:v1", dst.host)));
    let raw = skopeo::inspect_raw(&format!("{}/mirror/team/lib:v2", dst.host), None);
    assert_eq!(raw, rig.lib.manifest.to_vec());
}

/// A layout job's fields are checked like any job's, each named: a relative directory, a
/// registry beside a layout, a prefix on a layout, a layout the allowlist does not list or lets
/// only be imported from; and the state machine's first step refuses an export into a
/// directory, saying to run it with `sync`. Nothing is written into the layout.
#[tokio::test]
async fn layout_jobs_are_refused_with_the_field_named() {
    let rig = Rig::new().await;
    let mut cases = Vec::new();
    let mut relative = rig.export_job();
    relative["destinations"][0]["layout"] = json!("export/here");
    cases.push((relative, "destinations[0].layout", None));
    let mut both = rig.export_job();
    both["destinations"][0]["registry"] = json!(rig.src.host);
    cases.push((both, "destinations[0].registry", None));
    let mut prefixed = rig.export_job();
    prefixed["destinations"][0]["repositoryPrefix"] = json!("mirror/");
    cases.push((prefixed, "destinations[0].repositoryPrefix", None));
    let import_only = json!({
        "sources": [{"registry": rig.src.host}],
        "insecure": [rig.src.host],
        "layouts": [{"location": rig.layout(), "import": true}],
    });
    cases.push((
        rig.export_job(),
        "does not let jobs export here",
        Some(import_only),
    ));
    let unlisted = json!({
        "sources": [{"registry": rig.src.host}],
        "insecure": [rig.src.host],
        "layouts": [{"location": "s3://other-bucket/exports", "export": true}],
    });
    cases.push((
        rig.export_job(),
        "is not one of this deployment's layouts",
        Some(unlisted),
    ));
    let mut secret = rig.export_job();
    secret["source"]["credentialArn"] =
        json!("arn:aws:secretsmanager:eu-west-1:111111111111:secret:hub-AbCdEf");
    cases.push((secret, "source.credentialArn", None));
    for (job, said, allowlist) in cases {
        let mut extra = Vec::new();
        let path = rig.files.path().join("allowlist.json");
        let path_text = path.display().to_string();
        if let Some(allowlist) = allowlist {
            std::fs::write(&path, allowlist.to_string()).unwrap();
            extra.extend(["--allowlist", path_text.as_str()]);
        }
        let out = rig.sync(&job, &[&rig.src.host], &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{job} ran");
        assert!(stderr.contains(said), "{said:?} not in: {stderr}");
    }
    assert!(std::fs::read_dir(rig.dir.path()).unwrap().next().is_none());

    let step_input = json!({"job": rig.export_job()});
    let path = rig.files.path().join("step.json");
    std::fs::write(&path, step_input.to_string()).unwrap();
    let path = path.display().to_string();
    let out = cli(
        &rig.moto,
        &["step", "enumerate-repositories", "--input", &path],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("destinations[0].layout") && said.contains("ecr-replicator sync"),
        "{said}"
    );
}

/// GIVEN a layout a keyed export signed WHEN a later signing is told it wrote an image
/// `index.json` does not name (another export replaced `index.json` meanwhile) THEN nothing is
/// signed and the earlier statement stays; WHEN an unkeyed export then adds an image and a keyed
/// export finds nothing new to copy THEN it still signs a statement naming all three (the
/// layout's statement no longer matched its `index.json`).
#[tokio::test]
async fn a_statement_covers_exactly_what_index_json_names() {
    let rig = Rig::new().await;
    rig.export();
    let path = rig.dir.path().join(STATEMENT);
    let before = std::fs::read(&path).unwrap();
    let settings = ecr::AwsSettings {
        endpoint_url: Some(rig.moto.url.clone()),
        static_credentials: Some(("testing".into(), "testing".into())),
        app_name: None,
    };
    let signer = ecr::KmsSigner::new(&settings, ecr::KmsKeyArn::parse(&rig.key_arn).unwrap()).await;
    let store = oci::layout::DirLayout::new(rig.dir.path());
    let lost = replication::transfer_statement::ExportedImage {
        ref_name: "team/lib:v9".into(),
        digest: rig.lib.digest.clone(),
        source: format!("{}/team/lib:v9", rig.src.host),
        admitted_by: Vec::new(),
        tool: "test".into(),
        referrers: Vec::new(),
        written_blobs: Vec::new(),
    };
    let refused = replication::transfer_statement::write_statement(&store, &signer, &[lost])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("no longer names") && refused.contains("team/lib:v9"),
        "{refused}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    Pusher::new(&rig.src.host, None)
        .push("team/lib", "v3", &multi_arch(65, 1, 5_000))
        .await;
    let unkeyed = rig.sync(&rig.export_job(), &[&rig.src.host], &[]);
    assert!(unkeyed.status.success());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "signed without a key"
    );
    let again = rig.export();
    assert_eq!(again["report"]["copied"], 0, "{again}");
    let statement: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        statement["images"].as_array().unwrap().len(),
        3,
        "{statement}"
    );
}

/// GIVEN an allowlist that lists the layout for import with the exporting deployment's key
/// pinned WHEN an import job asks to skip verification, or names another key THEN it is
/// refused and nothing reaches the destination; WHEN it names no key THEN the pinned key
/// verifies the statement and the images arrive.
#[tokio::test]
async fn an_allowlisted_layout_imports_only_under_its_pinned_key() {
    let rig = Rig::new().await;
    rig.export();
    let (_, other) = rig.moto.signing_key().await;
    let other_pem = pem_file(rig.files.path(), "other.pub", &other);
    let dst = TestRegistry::start();
    let allowlist = json!({
        "destinations": [{"registry": dst.host}],
        "insecure": [dst.host],
        "layouts": [{"location": rig.layout(), "import": true,
                     "transferKey": std::fs::read_to_string(&rig.public_pem).unwrap()}],
    });
    let path = rig.files.path().join("pinned.json");
    std::fs::write(&path, allowlist.to_string()).unwrap();
    let path = path.display().to_string();
    let other_pem = other_pem.display().to_string();
    for (extra, said) in [
        (vec!["--allow-unverified-layout"], "pins"),
        (
            vec!["--trust-transfer-key", other_pem.as_str()],
            "is not the key the allowlist pins",
        ),
    ] {
        let mut flags = vec!["--allowlist", path.as_str()];
        flags.extend(extra);
        let out = rig.sync(&rig.import_job(&dst), &[&dst.host], &flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(said), "{stderr}");
    }
    assert_eq!(dst.count_requests("POST", "/blobs/uploads/", 202), 0);
    let out = rig.sync(&rig.import_job(&dst), &[&dst.host], &["--allowlist", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("verified"),
        "{stderr}"
    );
    let raw = skopeo::inspect_raw(&format!("{}/mirror/team/app:v1", dst.host), None);
    assert_eq!(raw, rig.app.manifest.to_vec());
}
