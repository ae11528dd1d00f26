//! Malformed execution inputs are rejected with the field named, never a panic.

use replication::{Error, Job};
use serde_json::{json, Value};

const SRC: &str = "111111111111.dkr.ecr.us-east-1.amazonaws.com";
const DST: &str = "222222222222.dkr.ecr.eu-west-1.amazonaws.com";

fn valid() -> Value {
    json!({
        "source": {"registry": SRC},
        "destinations": [{"registry": DST, "roleArn": "arn:aws:iam::222222222222:role/target", "externalId": "ext-1"}],
        "repositories": {"include": ["ml/*"], "exclude": ["**/scratch"]},
        "tags": {"include": ["^v\\d+\\.\\d+\\.\\d+$"], "semver": ">=1.4", "latest": 10, "untagged": false},
        "repositorySettings": "copy",
        "dryRun": false,
        "maxConcurrency": 10
    })
}

/// Applies `edit` to a valid input and returns the field paths the error names.
fn problems(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut input = valid();
    edit(&mut input);
    match Job::parse(&input.to_string()) {
        Ok(_) => vec![],
        Err(Error::InvalidInput { problems }) => problems.into_iter().map(|p| p.field).collect(),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

#[test]
fn the_documented_example_is_valid() {
    assert!(Job::parse(&valid().to_string()).is_ok());
    let job = Job::parse(r#"{"source":{"registry":"ghcr.io"},"destinations":[{"registry":"222222222222.dkr.ecr.eu-west-1.amazonaws.com"}]}"#).unwrap().job;
    assert!(
        job.referrers && !job.dry_run && job.max_concurrency == 10 && job.range_bytes == 2 << 30
    );
}

#[test]
fn malformed_inputs_name_the_field() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "source",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("source");
            }),
        ),
        (
            "destinations",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("destinations");
            }),
        ),
        ("destinations", Box::new(|v| v["destinations"] = json!([]))),
        (
            "source.registry",
            Box::new(|v| v["source"]["registry"] = json!("")),
        ),
        (
            "source.registry",
            Box::new(|v| v["source"]["registry"] = json!("https://ghcr.io")),
        ),
        (
            "source.registry",
            Box::new(|v| v["source"]["registry"] = json!("ghcr.io/team")),
        ),
        (
            "source.registry",
            Box::new(|v| v["source"]["registry"] = json!("1111.dkr.ecr.us-east-1.amazonaws.com")),
        ),
        (
            "source.registry",
            Box::new(|v| v["source"]["registry"] = json!(42)),
        ),
        (
            "source.roleArn",
            Box::new(|v| v["source"]["roleArn"] = json!("arn:aws:iam::1:role/x")),
        ),
        (
            "source.externalId",
            Box::new(|v| v["source"]["externalId"] = json!("x")),
        ),
        (
            "destinations[0].registry",
            Box::new(|v| v["destinations"][0]["registry"] = json!("not a host")),
        ),
        (
            "destinations[0].registry",
            Box::new(|v| v["destinations"][0]["registry"] = json!(SRC)),
        ),
        (
            "destinations[0].roleArn",
            Box::new(|v| {
                v["destinations"][0]["roleArn"] = json!("arn:aws:iam::222222222222:user/bob")
            }),
        ),
        (
            "destinations[0].externalId",
            Box::new(|v| v["destinations"][0]["externalId"] = json!("has spaces in it")),
        ),
        (
            "destinations[0].repositoryPrefix",
            Box::new(|v| v["destinations"][0]["repositoryPrefix"] = json!("Mirror/")),
        ),
        (
            "destinations[0].repositoryPrefix",
            Box::new(|v| v["destinations"][0]["repositoryPrefix"] = json!("mirror")),
        ),
        (
            "destinations[0].kmsKeyMapping.*",
            Box::new(|v| v["destinations"][0]["kmsKeyMapping"] = json!({"*": "alias/mine"})),
        ),
        (
            "destinations[1]",
            Box::new(|v| {
                let d = v["destinations"][0].clone();
                v["destinations"].as_array_mut().unwrap().push(d);
            }),
        ),
        (
            "destinations[0].bogus",
            Box::new(|v| v["destinations"][0]["bogus"] = json!(1)),
        ),
        (
            "repositories.include[0]",
            Box::new(|v| v["repositories"]["include"] = json!(["ml/["])),
        ),
        (
            "repositories.exclude[1]",
            Box::new(|v| v["repositories"]["exclude"] = json!(["ok/*", "{unclosed"])),
        ),
        (
            "repositories.include",
            Box::new(|v| v["repositories"]["include"] = json!("ml/*")),
        ),
        (
            "tags.include[0]",
            Box::new(|v| v["tags"]["include"] = json!(["(unclosed"])),
        ),
        (
            "tags.exclude[0]",
            Box::new(|v| v["tags"]["exclude"] = json!(["*bad"])),
        ),
        (
            "tags.semver",
            Box::new(|v| v["tags"]["semver"] = json!(">>1.4")),
        ),
        ("tags.latest", Box::new(|v| v["tags"]["latest"] = json!(0))),
        ("tags.latest", Box::new(|v| v["tags"]["latest"] = json!(-3))),
        (
            "tags.maxAgeDays",
            Box::new(|v| v["tags"]["maxAgeDays"] = json!(0)),
        ),
        (
            "tags.untagged",
            Box::new(|v| v["tags"]["untagged"] = json!("yes")),
        ),
        (
            "repositorySettings",
            // ("mirror" is a mode now: an unknown one is still refused.)
            Box::new(|v| v["repositorySettings"] = json!("overwrite")),
        ),
        (
            "maxConcurrency",
            Box::new(|v| v["maxConcurrency"] = json!(0)),
        ),
        (
            "maxConcurrency",
            Box::new(|v| v["maxConcurrency"] = json!(5000)),
        ),
        (
            "maxConcurrency",
            Box::new(|v| v["maxConcurrency"] = json!(1.5)),
        ),
        ("rangeBytes", Box::new(|v| v["rangeBytes"] = json!(1024))),
        ("dryRun", Box::new(|v| v["dryRun"] = json!("false"))),
        ("version", Box::new(|v| v["version"] = json!(2))),
        (
            "bogusTopLevel",
            Box::new(|v| v["bogusTopLevel"] = json!(true)),
        ),
    ];
    assert!(cases.len() >= 30);
    for (field, edit) in cases {
        let named = problems(edit);
        assert!(
            named.iter().any(|n| n == field),
            "expected a problem naming {field:?}, got {named:?}"
        );
    }
}

#[test]
fn not_json_at_all_is_a_named_error() {
    for text in ["", "[]", "null", "{", "{\"source\": "] {
        match Job::parse(text) {
            Err(Error::InvalidInput { problems }) => assert!(!problems.is_empty(), "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let named = problems(|v| {
        v["maxConcurrency"] = json!(0);
        v["tags"]["latest"] = json!(0);
        v["destinations"][0]["registry"] = json!("");
    });
    assert_eq!(named.len(), 3, "{named:?}");
}

/// A valid input naming images instead of filters (what the push trigger sends).
fn listed(images: Value) -> Value {
    let mut v = valid();
    let o = v.as_object_mut().unwrap();
    o.remove("repositories");
    o.remove("tags");
    o.insert("images".into(), images);
    v
}

fn listed_problems(v: Value) -> Vec<String> {
    match Job::parse(&v.to_string()) {
        Ok(_) => vec![],
        Err(Error::InvalidInput { problems }) => problems.into_iter().map(|p| p.field).collect(),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

#[test]
fn an_explicit_image_list_is_checked_entry_by_entry() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let ok = listed(json!([
        {"repository": "ml/train", "tag": "v1.2.3"},
        {"repository": "ml/train", "digest": digest},
        {"repository": "web", "tag": "latest", "digest": digest},
    ]));
    assert_eq!(listed_problems(ok), Vec::<String>::new());

    let bad = listed(json!([
        {"repository": "ml/train"},
        {"repository": "ML/Train", "tag": "v1"},
        {"repository": "web", "tag": ".hidden"},
        {"repository": "web", "digest": "sha256:short"},
        {"repository": "web", "tag": "v1", "platform": "linux/amd64"},
    ]));
    let named = listed_problems(bad);
    // Unknown fields stop parsing first, at their path.
    assert_eq!(named, vec!["images[4].platform"]);

    let bad = listed(json!([
        {"repository": "ml/train"},
        {"repository": "ML/Train", "tag": "v1"},
        {"repository": "web", "tag": ".hidden"},
        {"repository": "web", "digest": "sha256:short"},
    ]));
    assert_eq!(
        listed_problems(bad),
        vec![
            "images[0]",
            "images[1].repository",
            "images[2].tag",
            "images[3].digest"
        ]
    );

    // The name filters narrow a list (a push trigger keeps the deployment's exclusions); the
    // filters that choose among a whole listing are refused, each named.
    let mut with_filters = listed(json!([{"repository": "web", "tag": "v1"}]));
    with_filters["tags"] = json!({"include": ["v.*"], "exclude": ["rc.*"], "semver": ">=1"});
    with_filters["repositories"] = json!({"include": ["web"]});
    assert_eq!(listed_problems(with_filters), Vec::<String>::new());
    let mut with_listing_filters = listed(json!([{"repository": "web", "tag": "v1"}]));
    with_listing_filters["tags"] = json!({"latest": 3, "maxAgeDays": 7, "untagged": true});
    assert_eq!(
        listed_problems(with_listing_filters),
        vec!["tags.latest", "tags.maxAgeDays", "tags.untagged"]
    );

    let mut with_prune = listed(json!([{"repository": "web", "tag": "v1"}]));
    with_prune["prune"] = json!(true);
    assert_eq!(listed_problems(with_prune), vec!["prune"]);

    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"repository": "web", "tag": format!("t{i}")}))
        .collect();
    // Over 1000 entries, and over the job's size bound (it travels in every state).
    assert_eq!(
        listed_problems(listed(Value::Array(many))),
        vec!["(whole job)", "images"]
    );
}

#[test]
fn repository_mapping_rules_are_checked_and_the_first_match_wins() {
    let with_rules = |rules: Value| {
        move |v: &mut Value| {
            v["destinations"][0]["repositoryMapping"] = rules;
            v["destinations"][0]["repositoryPrefix"] = json!("mirror/");
        }
    };
    assert_eq!(
        problems(with_rules(json!([{"match": "team-(", "replace": "x"}]))),
        ["destinations[0].repositoryMapping[0].match"]
    );
    assert_eq!(
        problems(with_rules(
            json!([{"match": "team-(.*)", "replace": "teams/$2"}])
        )),
        ["destinations[0].repositoryMapping[0].replace"]
    );
    assert_eq!(
        problems(with_rules(
            json!([{"match": "(?P<t>.*)", "replace": "${team}"}])
        )),
        ["destinations[0].repositoryMapping[0].replace"]
    );
    // Upper case is no repository name: the rule is refused before any run.
    assert_eq!(
        problems(with_rules(
            json!([{"match": "ok/(.*)", "replace": "a/$1"}, {"match": "x", "replace": "Teams/x"}])
        )),
        ["destinations[0].repositoryMapping[1].replace"]
    );
    assert_eq!(
        problems(with_rules(
            json!([{"match": "a", "replace": "b", "extra": 1}])
        )),
        ["destinations[0].repositoryMapping[0].extra"]
    );

    let mut input = valid();
    with_rules(json!([
        {"match": "team-(?P<team>[a-z]+)/(.*)", "replace": "teams/${team}/$2"},
        {"match": "team-.*", "replace": "never"},
        {"match": "ml/(.*)", "replace": "models/$1"}
    ]))(&mut input);
    let job = Job::parse(&input.to_string()).unwrap().job;
    let d = &job.destinations[0];
    assert_eq!(d.target_repository("team-ml/api"), "mirror/teams/ml/api");
    assert_eq!(d.target_repository("ml/bert"), "mirror/models/bert");
    assert_eq!(d.target_repository("other/app"), "mirror/other/app");
}
