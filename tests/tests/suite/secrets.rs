//! Registry credentials from AWS Secrets Manager (moto's): a job names a secret
//! (`credentialArn`) for a registry that is not ECR; the steps read it, send it to that registry
//! only (the deployment binds each secret to its registry), and read it again when the registry
//! refuses what it held (a rotated secret). Registries: distribution with htpasswd (Basic), and
//! the in-process fake for a Bearer token flow (as Docker Hub and GHCR answer) and for a password
//! that changes mid-run.

use e2e::fake::FakeRegistry;
use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::moto::Moto;
use e2e::registry::TestRegistry;
use replication::allowlist::{AllowedRegistry, Allowlist};
use replication::connect::{Connections, Settings};
use replication::run::{run_job, Quiet};
use replication::Job;
use serde_json::json;

/// Stores `value` as a secret's string in moto; returns the secret's ARN.
async fn secret(moto: &Moto, name: &str, value: &serde_json::Value) -> String {
    let sm = secrets_client(moto).await;
    let out = sm
        .create_secret()
        .name(name)
        .secret_string(value.to_string())
        .send()
        .await
        .unwrap();
    out.arn().unwrap().to_string()
}

/// Stores a registry login as the secret `name`, in the shape ECR pull-through cache rules use.
async fn login_secret(moto: &Moto, name: &str, username: &str, token: &str) -> String {
    secret(
        moto,
        name,
        &json!({"username": username, "accessToken": token}),
    )
    .await
}

async fn secrets_client(moto: &Moto) -> aws_sdk_secretsmanager::Client {
    let config = ecr::sdk_config(&moto.aws_settings(), "us-east-1", None).await;
    aws_sdk_secretsmanager::Client::new(&config)
}

fn connections(moto: &Moto, allowlist: Option<Allowlist>) -> Connections {
    Connections::new(Settings {
        aws: moto.aws_settings(),
        registry: e2e::fast_retry_config(&[]),
        allowlist,
        ..Settings::default()
    })
}

/// The run copied its one image and nothing failed.
fn assert_one_copied(output: &replication::run::RunOutput) {
    let r = &output.report;
    assert_eq!((r.copied, r.failed), (1, 0), "{r:?}");
}

/// A job copying everything from `source` (read with `credential`, if any) to `dst`.
fn job(source: &str, credential: Option<&str>, dst: &TestRegistry) -> Job {
    serde_json::from_value(json!({
        "source": {"registry": source, "insecure": true, "credentialArn": credential},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "referrers": false
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_behind_basic_auth_is_read_with_the_secret_the_job_names() {
    let moto = Moto::start();
    let (user, token) = ("mirror-bot", "dckr_pat_not-a-real-token");
    let src = TestRegistry::start_with_auth(user, token);
    let dst = TestRegistry::start();
    let image = ImageBuilder::new(Format::Oci).layer(1, 4000).build();
    Pusher::new(&src.host, Some((user.into(), token.into())))
        .push("library/nginx", "1.27", &image)
        .await;
    let arn = login_secret(&moto, "ecr-pullthroughcache/hub", user, token).await;

    // Without the secret the registry refuses: the run fails, naming why.
    let anonymous = run_job(
        &connections(&moto, None),
        job(&src.host, None, &dst),
        &Quiet,
    )
    .await;
    let e = anonymous.unwrap_err().to_string();
    assert!(e.contains("wants credentials"), "{e}");

    let output = run_job(
        &connections(&moto, None),
        job(&src.host, Some(&arn), &dst),
        &Quiet,
    )
    .await
    .unwrap();

    assert_one_copied(&output);
    let creds = (user.to_string(), token.to_string());
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/library/nginx:1.27", dst.host), None),
        e2e::skopeo::inspect_raw(&format!("{}/library/nginx:1.27", src.host), Some(&creds)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_is_not_a_registry_credential_is_named_and_never_shown() {
    let moto = Moto::start();
    let src = TestRegistry::start_with_auth("u", "the-password-value");
    let dst = TestRegistry::start();
    Pusher::new(&src.host, Some(("u".into(), "the-password-value".into())))
        .push(
            "app",
            "v1",
            &ImageBuilder::new(Format::Oci).layer(2, 100).build(),
        )
        .await;
    let arn = secret(
        &moto,
        "wrong-shape",
        &json!({"user": "u", "password": "the-password-value"}),
    )
    .await;

    let output = run_job(
        &connections(&moto, None),
        job(&src.host, Some(&arn), &dst),
        &Quiet,
    )
    .await;

    let text = match output {
        Ok(o) => format!("{:?}", o.report.repository_failures),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains(&arn) && text.contains("accessToken"),
        "{text}"
    );
    assert!(
        !text.contains("the-password-value"),
        "the secret leaked: {text}"
    );
    assert!(Pusher::new(&dst.host, None)
        .manifest("app", "v1")
        .await
        .is_none());
}

/// A hostile job names the deployment's Docker Hub secret for a registry it controls: the job
/// is refused before any request, and the registry never sees the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_goes_only_to_the_registry_the_deployment_allows_it_for() {
    let moto = Moto::start();
    let image = ImageBuilder::new(Format::Oci).layer(3, 100).build();
    let hub = FakeRegistry::start_with_bearer(&image, "v1", "robot", "hub-token").await;
    let attacker = FakeRegistry::start(&image, "v1", Vec::new()).await;
    let dst = TestRegistry::start();
    let arn = login_secret(&moto, "hub", "robot", "hub-token").await;
    let allowlist = Allowlist {
        sources: vec![
            AllowedRegistry {
                registry: hub.host.clone(),
                credential_arns: vec![arn.clone()],
                ..AllowedRegistry::default()
            },
            AllowedRegistry {
                registry: attacker.host.clone(),
                ..AllowedRegistry::default()
            },
        ],
        destinations: vec![AllowedRegistry {
            registry: dst.host.clone(),
            ..AllowedRegistry::default()
        }],
        insecure: vec!["127.0.0.1:*".into()],
        ..Allowlist::default()
    };
    let conns = connections(&moto, Some(allowlist));

    let refused = run_job(&conns, job(&attacker.host, Some(&arn), &dst), &Quiet).await;

    let e = refused.unwrap_err();
    assert!(e.to_string().contains("source.credentialArn"), "{e}");
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());

    // The same secret for the registry it belongs to: a Bearer token flow, copied.
    let output = run_job(&conns, job(&hub.host, Some(&arn), &dst), &Quiet)
        .await
        .unwrap();
    assert_one_copied(&output);
    assert!(!hub.token_scopes().is_empty());
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/app:v1", dst.host), None),
        image.manifest.to_vec()
    );
}

/// The registry starts refusing the password the secret held when the run began (rotated);
/// the secret now holds the new one: it is read again and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_read_again_when_the_registry_refuses_the_old_one() {
    let moto = Moto::start();
    let image = ImageBuilder::new(Format::Oci)
        .layer(4, 3000)
        .layer(5, 3000)
        .build();
    let src = FakeRegistry::start_with_expiring_basic(&image, "v1", "bot", "old", 3, "new").await;
    let dst = TestRegistry::start();
    let arn = login_secret(&moto, "rotating", "bot", "old").await;
    let conns = connections(&moto, None);
    let job = job(&src.host, Some(&arn), &dst);
    // The connection reads the secret now (the run will use what it read)...
    conns.source(&job).await.unwrap();
    // ... and then it is rotated.
    secrets_client(&moto)
        .await
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(json!({"username": "bot", "accessToken": "new"}).to_string())
        .send()
        .await
        .unwrap();

    let output = run_job(&conns, job, &Quiet).await.unwrap();

    assert_one_copied(&output);
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/app:v1", dst.host), None),
        image.manifest.to_vec()
    );

    // The control: the same registry, the secret not rotated: refused, named, nothing copied.
    let stale = FakeRegistry::start_with_expiring_basic(&image, "v1", "bot", "old", 3, "new").await;
    let other = TestRegistry::start();
    let arn = login_secret(&moto, "stale", "bot", "old").await;
    let output = run_job(&conns, self::job(&stale.host, Some(&arn), &other), &Quiet)
        .await
        .unwrap();
    assert_eq!(output.report.copied, 0, "{:?}", output.report);
    assert!(Pusher::new(&other.host, None)
        .manifest("app", "v1")
        .await
        .is_none());
}

/// The deployment allows a secret for any port of a host (`127.0.0.1:*`); the job names one
/// port. That registry answers 401 with a Bearer realm on another port of the same host (which
/// the allowlist pattern would also match): the secret's credentials go to the exact
/// `host:port` the job names and nowhere else, so the realm is not asked, and the run fails
/// naming why. A registry whose realm is its own origin (the token flow) still works under the
/// same pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_allowed_for_any_port_of_a_host_goes_only_to_the_port_the_job_names() {
    let moto = Moto::start();
    let image = ImageBuilder::new(Format::Oci).layer(6, 100).build();
    let src = TestRegistry::start();
    Pusher::new(&src.host, None).push("app", "v1", &image).await;
    let hostile = e2e::hostile::HostileRegistry::start(&src.host);
    let other_port = e2e::hostile::Sink::start("127.0.0.1", None);
    hostile.attack(|a| a.bearer_realm = Some(format!("http://{}/token", other_port.host)));
    let hub = FakeRegistry::start_with_bearer(&image, "v1", "robot", "hub-token").await;
    let dst = TestRegistry::start();
    let arn = login_secret(&moto, "any-port", "robot", "hub-token").await;
    let allowlist = Allowlist {
        sources: vec![AllowedRegistry {
            registry: "127.0.0.1:*".into(),
            credential_arns: vec![arn.clone()],
            ..AllowedRegistry::default()
        }],
        destinations: vec![AllowedRegistry {
            registry: dst.host.clone(),
            ..AllowedRegistry::default()
        }],
        insecure: vec!["127.0.0.1:*".into()],
        ..Allowlist::default()
    };
    let conns = connections(&moto, Some(allowlist));

    let output = run_job(&conns, job(&hostile.host, Some(&arn), &dst), &Quiet).await;

    let text = match output {
        Ok(o) => format!("{:?}", o.report),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains(&other_port.host) && text.contains("another origin"),
        "{text}"
    );
    assert_eq!(
        other_port.requests(),
        Vec::<String>::new(),
        "the secret's credentials went to another port"
    );
    assert!(!text.contains("hub-token"), "{text}");
    assert!(Pusher::new(&dst.host, None)
        .manifest("app", "v1")
        .await
        .is_none());

    // The same secret and pattern for a registry whose realm is its own origin: copied.
    let copied = run_job(&conns, job(&hub.host, Some(&arn), &dst), &Quiet)
        .await
        .unwrap();
    assert_one_copied(&copied);
    assert!(!hub.token_scopes().is_empty());
}
