//! Every JSON example in the guide (docs/**/*.md) and README.md is checked: each ```json fence
//! carries a marker on the line before it, `<!-- example: KIND -->`, saying what it is, and the
//! check for that kind runs (docs/contributing.md, "Examples in the docs"):
//!
//! - `job`: a whole execution input, parsed and validated exactly as the CLI's `validate` and
//!   every step do (`Job::parse`: unknown fields, wrong types and bad values are refused);
//! - `job-fields`: some of a job's fields (an object, or `"field": value, ...` members), laid
//!   over a minimal job (one ECR source, one ECR destination), then validated the same way;
//! - `allowlist`: a deployment's allowlist (`ECR_REPLICATOR_ALLOWED_REGISTRIES`, the CLI's
//!   `--allowlist FILE`), read and checked as the functions read it;
//! - `config`, `config-fields`: a CDK deployment configuration (or some of its fields): JSON,
//!   and every field, top-level or of a destination or upstream, one that `cdk/lib/config.ts`
//!   declares (the CDK tests validate the example configuration itself);
//! - `other`: anything else (reports, events, statements, IAM policies): it must be JSON (or
//!   `"field": value` members).
//!
//! A fence without a marker fails, as does any example that does not pass, naming file:line.

use std::path::{Path, PathBuf};

use e2e::sfn::workspace;
use replication::allowlist::Allowlist;
use replication::Job;
use serde_json::{Map, Value};

/// One fenced ```json block: where it starts, its marker, its text.
#[derive(Debug)]
struct Example {
    file: String,
    line: usize,
    kind: Option<String>,
    text: String,
}

/// The fenced ```json blocks of one markdown text, each with the marker the line before names.
fn json_blocks(file: &str, markdown: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut previous = "";
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let fence_indent = line.len() - trimmed.len();
            let mut body = Vec::new();
            for (_, inner) in lines.by_ref() {
                if inner.trim() == "```" {
                    break;
                }
                body.push(inner.get(fence_indent..).unwrap_or(inner.trim_start()));
            }
            if info.trim() == "json" {
                let kind = previous
                    .trim()
                    .strip_prefix("<!-- example:")
                    .and_then(|rest| rest.strip_suffix("-->"))
                    .map(|kind| kind.trim().to_string());
                examples.push(Example {
                    file: file.to_string(),
                    line: index + 1,
                    kind,
                    text: body.join("\n"),
                });
            }
            previous = "";
            continue;
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    examples
}

/// The block as one JSON value: an object, array or scalar, or `"field": value, ...` members
/// (wrapped in braces).
fn as_json(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let wrapped;
    let text = if trimmed.starts_with('"') {
        wrapped = format!("{{{trimmed}}}");
        &wrapped
    } else {
        trimmed
    };
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn as_object(value: Value) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!("expected an object of fields, found {other}")),
    }
}

/// The job a `job-fields` example is laid over: the smallest valid one.
fn minimal_job() -> Map<String, Value> {
    as_object(serde_json::json!({
        "source": {"registry": "111111111111.dkr.ecr.us-east-1.amazonaws.com"},
        "destinations": [{"registry": "222222222222.dkr.ecr.eu-west-1.amazonaws.com"}]
    }))
    .unwrap()
}

fn validate_job(job: &Value) -> Result<(), String> {
    Job::parse(&job.to_string())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The fields an interface of `cdk/lib/config.ts` declares (its two-space-indented members).
fn interface_fields(source: &str, interface: &str) -> Vec<String> {
    let body = source
        .split(&format!("export interface {interface} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("cdk/lib/config.ts declares no {interface}"))
        .split("\n}")
        .next()
        .unwrap();
    body.lines()
        .filter_map(|line| {
            let line = line.strip_prefix("  ")?;
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let rest = &line[name.len()..];
            (!name.is_empty() && (rest.starts_with(':') || rest.starts_with("?:"))).then_some(name)
        })
        .collect()
}

/// What the deployment configuration may hold (`cdk/lib/config.ts`): its own fields, and those
/// of each destination and upstream.
struct ConfigFields {
    top: Vec<String>,
    destination: Vec<String>,
    upstream: Vec<String>,
}

fn config_fields() -> ConfigFields {
    let source = std::fs::read_to_string(workspace().join("cdk/lib/config.ts")).unwrap();
    ConfigFields {
        top: interface_fields(&source, "ReplicatorConfig"),
        destination: interface_fields(&source, "DestinationConfig"),
        upstream: interface_fields(&source, "UpstreamConfig"),
    }
}

/// The fields of `object` that `known` lacks, named by their path under `at`.
fn unknown_fields(object: &Map<String, Value>, known: &[String], at: &str) -> Vec<String> {
    object
        .keys()
        .filter(|field| !known.contains(field))
        .map(|field| format!("{at}{field}"))
        .collect()
}

fn check_config(value: Value, known: &ConfigFields) -> Result<(), String> {
    let config = as_object(value)?;
    let mut unknown = unknown_fields(&config, &known.top, "");
    for (list, fields) in [
        ("destinations", &known.destination),
        ("upstreams", &known.upstream),
    ] {
        let entries = config.get(list).and_then(Value::as_array);
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            let entry = entry
                .as_object()
                .ok_or_else(|| format!("{list}[{i}] is not an object"))?;
            unknown.extend(unknown_fields(entry, fields, &format!("{list}[{i}].")));
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not a field of the deployment configuration (cdk/lib/config.ts: ReplicatorConfig, DestinationConfig, UpstreamConfig)",
            unknown.join(", ")
        ))
    }
}

/// Runs the check the example's marker names.
fn check(example: &Example, config_fields: &ConfigFields) -> Result<(), String> {
    let kind = example.kind.as_deref().ok_or_else(|| {
        "a ```json block without a marker: put `<!-- example: job|job-fields|allowlist|config|config-fields|other -->` on the line before it".to_string()
    })?;
    let value = as_json(&example.text)?;
    match kind {
        "job" => validate_job(&value),
        "job-fields" => {
            let mut job = minimal_job();
            job.extend(as_object(value)?);
            validate_job(&Value::Object(job))
        }
        "allowlist" => Allowlist::from_json(&value.to_string(), "example")
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "config" | "config-fields" => check_config(value, config_fields),
        "other" => Ok(()),
        other => Err(format!(
            "unknown marker `{other}`: job, job-fields, allowlist, config, config-fields or other"
        )),
    }
}

fn markdown_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "md") {
            into.push(path);
        }
    }
}

/// Every example of `markdown` that fails its check, as `file:line: kind: problem`.
fn failures(examples: &[Example], config_fields: &ConfigFields) -> Vec<String> {
    examples
        .iter()
        .filter_map(|example| {
            check(example, config_fields).err().map(|problem| {
                format!(
                    "{}:{}: {}: {problem}",
                    example.file,
                    example.line,
                    example.kind.as_deref().unwrap_or("(no marker)")
                )
            })
        })
        .collect()
}

#[test]
fn every_json_example_in_the_guide_and_readme_is_valid_for_its_kind() {
    let root = workspace();
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut files);
    files.sort();
    let mut examples = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        examples.extend(json_blocks(&name, &text));
    }
    let fields = config_fields();
    assert!(
        fields.top.len() > 20
            && fields.top.iter().any(|f| f == "destinations")
            && fields.destination.iter().any(|f| f == "account")
            && fields.upstream.iter().any(|f| f == "registry"),
        "read too few fields from cdk/lib/config.ts: {:?}, {:?}, {:?}",
        fields.top,
        fields.destination,
        fields.upstream
    );
    let jobs = examples
        .iter()
        .filter(|e| matches!(e.kind.as_deref(), Some("job" | "job-fields")))
        .count();
    // The guide holds a dozen execution inputs: finding fewer means the markers went unread.
    assert!(
        jobs >= 8,
        "found only {jobs} job examples in {} files",
        files.len()
    );
    let failed = failures(&examples, &fields);
    assert!(
        failed.is_empty(),
        "{} of {} JSON examples fail their check:\n{}",
        failed.len(),
        examples.len(),
        failed.join("\n")
    );
}

/// The checker itself: a broken example of each kind fails, naming the file, line and field.
#[test]
fn a_broken_example_fails_naming_file_line_and_field() {
    let markdown = "# t\n\n<!-- example: job -->\n```json\n{\"source\": {\"registry\": \"111111111111.dkr.ecr.us-east-1.amazonaws.com\"},\n \"destinations\": [{\"registry\": \"222222222222.dkr.ecr.eu-west-1.amazonaws.com\"}],\n \"tagz\": {}}\n```\n\n\
        1. a list item\n\n   <!-- example: job-fields -->\n   ```json\n   \"maxConcurrency\": 0\n   ```\n\n\
        <!-- example: config-fields -->\n```json\n\"sourceAcount\": \"111111111111\", \"destinations\": [{\"acount\": \"2\"}]\n```\n\n\
        ```json\n{}\n```\n\n\
        <!-- example: job-fields -->\n```json\n\"dryRun\": true\n```\n";
    let examples = json_blocks("guide.md", markdown);
    assert_eq!(examples.len(), 5, "{examples:?}");
    let failed = failures(&examples, &config_fields());
    assert_eq!(failed.len(), 4, "{failed:#?}");
    assert!(
        failed[0].starts_with("guide.md:4: job:") && failed[0].contains("tagz"),
        "{}",
        failed[0]
    );
    assert!(
        failed[1].starts_with("guide.md:13: job-fields:") && failed[1].contains("maxConcurrency"),
        "{}",
        failed[1]
    );
    assert!(
        failed[2].starts_with("guide.md:18: config-fields:")
            && failed[2].contains("sourceAcount, destinations[0].acount"),
        "{}",
        failed[2]
    );
    assert!(
        failed[3].starts_with("guide.md:22: (no marker):"),
        "{}",
        failed[3]
    );
}
