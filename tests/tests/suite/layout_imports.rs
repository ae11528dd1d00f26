//! Layout jobs against ECR (issue 35), on moto and ECR's data plane: an export job reads the
//! source through ECR's API, and an import job creates a missing destination repository only
//! for an image it admits (a gated import whose images are all refused creates nothing).

use e2e::image::{multi_arch, signing_key, Pusher};
use e2e::world::{moto_token_password, EcrWorld, DEST, DEST_ROLE, SOURCE};
use oci::layout::DirLayout;
use replication::allowlist::Allowlist;
use replication::connect::Connections;
use replication::layout_run::{run_layout_job, ImportTrust};
use replication::report::RunReport;
use serde_json::{json, Value};

async fn run(conns: &Connections, job: Value, store: &DirLayout) -> RunReport {
    let job = replication::Job::from_json(&job.to_string()).unwrap();
    let trust = ImportTrust {
        key: None,
        allow_unverified: true,
    };
    run_layout_job(conns, job, store, trust, &replication::run::Quiet)
        .await
        .unwrap()
        .run
        .report
}

/// Whether DEST has the repository (DescribeRepositories through the destination role).
async fn dest_has(world: &EcrWorld, repository: &str) -> bool {
    world
        .moto
        .sdk(DEST, Some(DEST_ROLE))
        .await
        .describe_repositories()
        .repository_names(repository)
        .send()
        .await
        .is_ok()
}

/// GIVEN an image in an ECR source exported into a directory layout by a job WHEN an import job
/// under a trust policy that admits nothing imports it into another account THEN the image is
/// reported unsigned and no repository is created there; WHEN the import runs ungated THEN the
/// repository is created (ECR's defaults) and holds the image byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_creates_a_repository_only_for_an_admitted_image() {
    let world = EcrWorld::start();
    let image = multi_arch(71, 1, 4_000);
    world.seed("team/app", "v1", &image).await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().display().to_string();
    let store = DirLayout::new(dir.path());
    let (_, pem) = signing_key(72);
    let mut settings = world.settings();
    settings.allowlist = Some(
        Allowlist::from_json(
            &json!({
                "sources": [{"registry": SOURCE}],
                "destinations": [{"registry": DEST, "roleArns": [DEST_ROLE]}],
                "trustPolicies": {"release": {"publicKeys": [pem]}},
                "layouts": [{"location": layout, "export": true, "import": true}],
            })
            .to_string(),
            "test",
        )
        .unwrap(),
    );
    let conns = Connections::new(settings);
    let export = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"layout": layout}],
        "repositories": {"include": ["team/**"]},
    });
    let exported = run(&conns, export, &store).await;
    assert_eq!((exported.copied, exported.failed), (1, 0), "{exported:?}");

    let mut import = json!({
        "source": {"layout": layout},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42",
                          "repositoryPrefix": "mirror/"}],
        "requireSignature": {"policy": "release"},
    });
    let gated = run(&conns, import.clone(), &store).await;
    assert_eq!((gated.unsigned, gated.copied), (1, 0), "{gated:?}");
    assert!(
        !dest_has(&world, "mirror/team/app").await,
        "created for a refused image"
    );

    import.as_object_mut().unwrap().remove("requireSignature");
    let imported = run(&conns, import, &store).await;
    assert_eq!((imported.copied, imported.failed), (1, 0), "{imported:?}");
    assert!(dest_has(&world, "mirror/team/app").await);
    let pusher = Pusher::new(
        &world.registry(DEST).host,
        Some(("AWS".into(), moto_token_password(DEST))),
    );
    assert_eq!(
        pusher.manifest("mirror/team/app", "v1").await.as_ref(),
        Some(&image.manifest)
    );
}

/// GIVEN two source repositories exported into a layout WHEN an import maps both onto one
/// destination repository that does not exist THEN it is created once and both images arrive
/// (two creations racing would fail one with RepositoryAlreadyExistsException).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_mapped_onto_one_are_created_once() {
    let world = EcrWorld::start();
    let (app, lib) = (multi_arch(73, 1, 4_000), multi_arch(74, 1, 4_000));
    world.seed("team/app", "v1", &app).await;
    world.seed("team/lib", "v2", &lib).await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().display().to_string();
    let store = DirLayout::new(dir.path());
    let conns = Connections::new(world.settings());
    let export = json!({
        "source": {"registry": SOURCE},
        "destinations": [{"layout": layout}],
        "repositories": {"include": ["team/**"]},
    });
    assert_eq!(run(&conns, export, &store).await.copied, 2);
    let import = json!({
        "source": {"layout": layout},
        "destinations": [{"registry": DEST, "roleArn": DEST_ROLE, "externalId": "ext-id-42",
                          "repositoryMapping": [{"match": "team/.*", "replace": "merged"}]}],
    });
    let imported = run(&conns, import, &store).await;
    assert_eq!((imported.copied, imported.failed), (2, 0), "{imported:?}");
    let pusher = Pusher::new(
        &world.registry(DEST).host,
        Some(("AWS".into(), moto_token_password(DEST))),
    );
    assert_eq!(
        pusher.manifest("merged", "v2").await.as_ref(),
        Some(&lib.manifest)
    );
}
