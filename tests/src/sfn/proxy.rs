//! The proxy at moto's `localhost:$MOTO_PORT`: Lambda invocations to watch (faults, reservations,
//! timeouts and counts applied), every other AWS call to moto, each function's call recorded for
//! the IAM check.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

use super::faults::{AwsFault, LambdaFault};
use super::INVOCATION_TIMEOUT;

pub(super) struct Proxy {
    pub(super) http: reqwest::Client,
    pub(super) moto: String,
    pub(super) watch: String,
    /// Per function, the Lambda service errors its next invocations answer with instead of
    /// running (see `LocalStepFunctions::fail_next_invocation`).
    pub(super) faults: std::sync::Mutex<std::collections::HashMap<String, Vec<LambdaFault>>>,
    /// Per IAM action (`ecr:CreateRepository`), the AWS error its next calls answer with instead
    /// of reaching moto (see `LocalStepFunctions::fail_next_api_call`).
    pub(super) api_faults: std::sync::Mutex<std::collections::HashMap<String, Vec<AwsFault>>>,
    /// Invocations per function (every child execution's included), faults counted too.
    pub(super) invocations: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Seconds the invocations took per function, as the proxy waited for each answer.
    pub(super) invocation_seconds: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    /// Copy and put invocations running now, and the most ever running at once.
    pub(super) copies_in_flight: std::sync::Mutex<(usize, usize)>,
    /// `invocations.log`: a line when each invocation starts and ends (a stuck run shows which).
    pub(super) journal: std::sync::Mutex<Option<std::fs::File>>,
    /// Every AWS API call the functions made (they reach moto through this proxy).
    pub(super) api_calls: std::sync::Mutex<Vec<ApiCall>>,
    /// Access key id of each assumed-role session handed out, to the role assumed.
    pub(super) sessions: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Each function's deployed timeout: an invocation still running then is answered
    /// `Sandbox.Timedout` and its instance stopped.
    pub(super) timeouts: std::collections::HashMap<String, Duration>,
    /// The Runtime API proxy's state (which instance runs which payload).
    pub(super) runtime: std::sync::Arc<crate::deployed::RuntimeApi>,
    /// Reservations played (`LocalStepFunctions::reserve`): invocations beyond one answered 429.
    pub(super) reservations: std::sync::Arc<crate::deployed::Reservations>,
}

/// An AWS API call made by a function, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// The function (`app/<name>` in the SDK's user agent).
    pub function: String,
    /// IAM action, e.g. `ecr:CreateRepository`, `sts:AssumeRole`.
    pub action: String,
    /// Region of the request's signature.
    pub region: String,
    /// The role whose session signed it (an assumed role), or `None`: the function's own role.
    pub assumed_role: Option<String>,
    /// Repositories named in the request (`repositoryName`, `repositoryNames`), the secret
    /// (`SecretId`), the KMS key (`KeyId`), or the role asked for by `AssumeRole`.
    pub resources: Vec<String>,
}

impl Proxy {
    fn note(&self, line: String) {
        use std::io::Write;
        if let Some(file) = self.journal.lock().unwrap().as_mut() {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The functions whose concurrent invocations `maxConcurrency` bounds.
const COPY_FUNCTIONS: [&str; 2] = ["copy-blobs", "put-manifests"];

pub(super) async fn forward(
    State(proxy): State<std::sync::Arc<Proxy>>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let invocation = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .map(|name| {
            let name = percent_decode(name);
            name.rsplit(':').next().unwrap_or(&name).to_string()
        });
    if let Some(function) = &invocation {
        *proxy
            .invocations
            .lock()
            .unwrap()
            .entry(function.clone())
            .or_default() += 1;
    }
    let fault = invocation.as_ref().and_then(|function| {
        let mut faults = proxy.faults.lock().unwrap();
        let queue = faults.get_mut(function)?;
        (!queue.is_empty()).then(|| queue.remove(0))
    });
    // A reservation played full: Lambda refuses the invocation, the function never runs.
    let held = match invocation.as_deref().map(|f| proxy.reservations.admit(f)) {
        Some(crate::deployed::Admission::Throttled) => {
            return crate::deployed::throttled_response()
        }
        Some(crate::deployed::Admission::Runs(held)) => held,
        None => None,
    };
    if let Some(fault) = fault {
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-amz-function-error", "Unhandled")
            .body(Body::from(fault.body()))
            .unwrap();
    }
    let counted = invocation
        .as_deref()
        .is_some_and(|f| COPY_FUNCTIONS.contains(&f));
    if counted {
        let mut in_flight = proxy.copies_in_flight.lock().unwrap();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
    }
    let started = std::time::Instant::now();
    let id = format!("{:x}", fingerprint(&body));
    if let Some(function) = &invocation {
        proxy.note(format!("START {function} {id}"));
    }
    let name = invocation.clone();
    let timeout = invocation
        .as_ref()
        .and_then(|f| proxy.timeouts.get(f).copied())
        .unwrap_or(INVOCATION_TIMEOUT);
    let payload = crate::deployed::fingerprint(&body);
    let response = match tokio::time::timeout(
        timeout,
        forward_to(&proxy, invocation, method, path, query, headers, body),
    )
    .await
    {
        Ok(response) => response,
        // Still running at the function's timeout: Lambda answers for it and ends its sandbox.
        Err(_) => {
            proxy.runtime.stop_running(payload);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-amz-function-error", "Unhandled")
                .body(Body::from(crate::deployed::timed_out_body(timeout)))
                .unwrap()
        }
    };
    drop(held);
    if let Some(function) = name {
        let seconds = started.elapsed().as_secs_f64();
        proxy.note(format!("END {function} {id} {seconds:.1}s"));
        *proxy
            .invocation_seconds
            .lock()
            .unwrap()
            .entry(function)
            .or_default() += seconds;
    }
    if counted {
        proxy.copies_in_flight.lock().unwrap().0 -= 1;
    }
    response
}

/// The AWS API call a function's request is: its action (ECR's JSON protocol names it in
/// `X-Amz-Target`, STS's query protocol in the form body), signer and resources. `None` for
/// requests that are not a function's (the harness's own have no `app/` in their user agent).
fn api_call(
    proxy: &Proxy,
    method: &axum::http::Method,
    (path, query): (&str, &str),
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Option<ApiCall> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let function = header("user-agent")
        .split_whitespace()
        .find_map(|part| part.strip_prefix("app/"))?
        .to_string();
    let scope: Vec<&str> = header("authorization")
        .split("Credential=")
        .nth(1)
        .unwrap_or("")
        .split(',')
        .next()
        .unwrap_or("")
        .split('/')
        .collect();
    let (key, region, service) = (
        scope.first().copied().unwrap_or(""),
        scope.get(2).copied().unwrap_or("").to_string(),
        scope.get(3).copied().unwrap_or(""),
    );
    let (action, resources) = if let Some(target) = headers.get("x-amz-target") {
        let operation = target.to_str().ok()?.rsplit('.').next()?.to_string();
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let mut names: Vec<String> = json["repositoryNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        names.extend(json["repositoryName"].as_str().map(str::to_string));
        // Secrets Manager: the secret asked for, as the caller named it; KMS: the key.
        names.extend(json["SecretId"].as_str().map(str::to_string));
        names.extend(json["KeyId"].as_str().map(str::to_string));
        (format!("{service}:{operation}"), names)
    } else if service == "s3" {
        // REST, path-style: the object's (or bucket's) ARN and the action S3 authorizes it as.
        let action = s3_action(method, path, query)?;
        // A bucket's ARN has no trailing `/` (ListObjectsV2 is `GET /BUCKET/?list-type=2`).
        let resource = match action {
            "s3:ListBucket" => path.trim_matches('/'),
            _ => path.trim_start_matches('/'),
        };
        (action.to_string(), vec![format!("arn:aws:s3:::{resource}")])
    } else {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let operation = form.get("Action")?.clone();
        (
            format!("{service}:{operation}"),
            form.get("RoleArn").cloned().into_iter().collect(),
        )
    };
    let assumed_role = proxy.sessions.lock().unwrap().get(key).cloned();
    Some(ApiCall {
        function,
        action,
        region,
        assumed_role,
        resources,
    })
}

/// The IAM action S3 authorizes a REST request as (path-style: `/BUCKET` or `/BUCKET/KEY`),
/// `None` for one the functions do not make. Amazon S3 API Reference, each operation's
/// "Permissions": HeadObject needs s3:GetObject ("To use HEAD, you must have the s3:GetObject
/// permission"), ListObjectsV2 s3:ListBucket; Amazon S3 User Guide, "Multipart upload API and
/// permissions": CreateMultipartUpload, UploadPart, UploadPartCopy and CompleteMultipartUpload
/// need s3:PutObject, ListParts s3:ListMultipartUploadParts, ListMultipartUploads
/// s3:ListBucketMultipartUploads, AbortMultipartUpload
/// s3:AbortMultipartUpload; CopyObject and UploadPartCopy also need s3:GetObject on the source
/// ([`copy_source_read`]).
fn s3_action(method: &axum::http::Method, path: &str, query: &str) -> Option<&'static str> {
    use axum::http::Method;
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    let has = |name: &str| {
        query
            .trim_start_matches('?')
            .split('&')
            .any(|p| p == name || p.starts_with(&format!("{name}=")))
    };
    let upload = has("uploadId");
    Some(match (method, object) {
        // ListMultipartUploads: s3:ListBucketMultipartUploads.
        (&Method::GET, false) if has("uploads") => "s3:ListBucketMultipartUploads",
        (&Method::GET, false) => "s3:ListBucket",
        (&Method::GET, true) if upload => "s3:ListMultipartUploadParts",
        (&Method::GET | &Method::HEAD, true) => "s3:GetObject",
        (&Method::PUT | &Method::POST, true) => "s3:PutObject",
        (&Method::DELETE, true) if upload => "s3:AbortMultipartUpload",
        (&Method::DELETE, true) => "s3:DeleteObject",
        _ => return None,
    })
}

/// The read a copy makes of its source (`x-amz-copy-source`: CopyObject and UploadPartCopy need
/// s3:GetObject on it, Amazon S3 API Reference, "CopyObject", Permissions).
fn copy_source_read(call: &ApiCall, headers: &axum::http::HeaderMap) -> Option<ApiCall> {
    let source = headers.get("x-amz-copy-source")?.to_str().ok()?;
    let source = source.split('?').next()?.trim_start_matches('/');
    let source = percent_decode(source);
    Some(ApiCall {
        action: "s3:GetObject".into(),
        resources: vec![format!("arn:aws:s3:::{source}")],
        ..call.clone()
    })
}

/// Records which role an `AssumeRole` answer's access key belongs to.
fn remember_session(proxy: &Proxy, call: &ApiCall, response: &[u8]) {
    let text = String::from_utf8_lossy(response);
    let key = text
        .split("<AccessKeyId>")
        .nth(1)
        .and_then(|rest| rest.split("</AccessKeyId>").next());
    if let (Some(key), Some(role)) = (key, call.resources.first()) {
        proxy
            .sessions
            .lock()
            .unwrap()
            .insert(key.to_string(), role.clone());
    }
}

/// A short fingerprint of an invocation's payload, to pair its START and END lines.
fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

async fn forward_to(
    proxy: &Proxy,
    invocation: Option<String>,
    method: axum::http::Method,
    path: String,
    query: String,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match invocation {
        Some(function) => {
            let resp = proxy
                .http
                .post(format!(
                    "{}/2015-03-31/functions/{function}/invocations",
                    proxy.watch
                ))
                .body(body)
                .send()
                .await;
            match resp {
                Ok(resp) => {
                    let failed = resp.status().is_server_error();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let mut out = Response::builder().status(200).header("content-type", "application/json");
                    if failed {
                        out = out.header("x-amz-function-error", "Unhandled");
                    }
                    out.body(Body::from(bytes)).unwrap()
                }
                Err(e) => Response::builder()
                    .status(200)
                    .header("x-amz-function-error", "Unhandled")
                    .body(Body::from(format!(r#"{{"errorType":"Lambda.ServiceException","errorMessage":"watch unreachable: {e}"}}"#)))
                    .unwrap(),
            }
        }
        None => {
            let call = api_call(proxy, &method, (&path, &query), &headers, &body);
            if let Some(read) = call.as_ref().and_then(|c| copy_source_read(c, &headers)) {
                proxy.api_calls.lock().unwrap().push(read);
            }
            let fault = call.as_ref().and_then(|call| {
                let mut faults = proxy.api_faults.lock().unwrap();
                let queue = faults.get_mut(&call.action)?;
                (!queue.is_empty()).then(|| queue.remove(0))
            });
            if let (Some(fault), Some(call)) = (fault, call.clone()) {
                proxy.api_calls.lock().unwrap().push(call);
                return fault.response();
            }
            // A HEAD's answer has no body: its Content-Length (S3's object size) is passed on.
            let head = method == axum::http::Method::HEAD;
            let mut rb = proxy
                .http
                .request(method, format!("{}{path}{query}", proxy.moto));
            for (k, v) in headers.iter() {
                if k != "host" && k != "content-length" {
                    rb = rb.header(k, v);
                }
            }
            match rb.body(body).send().await {
                Ok(resp) => {
                    let mut out = Response::builder().status(resp.status().as_u16());
                    for (k, v) in resp.headers() {
                        if (head || k != "content-length") && k != "transfer-encoding" {
                            out = out.header(k, v);
                        }
                    }
                    let missing = resp.status() == reqwest::StatusCode::NOT_FOUND;
                    let bytes = resp.bytes().await.unwrap_or_default();
                    // S3 answers a missing key 404 only to a caller that may list the bucket, 403
                    // AccessDenied otherwise ("GetObject"/"HeadObject", Amazon S3 API Reference),
                    // and whether a ListBucket grant limited by `s3:prefix` (the deployment's)
                    // earns the 404 is not written: the rig takes the stricter reading and
                    // answers a function's read of a missing key 403. The function then lists
                    // that key's prefix to tell (`ecr::store::denied_but_absent`), a ListBucket
                    // the IAM check sees.
                    if missing && call.as_ref().is_some_and(|c| c.action == "s3:GetObject") {
                        proxy.api_calls.lock().unwrap().extend(call);
                        return Response::builder()
                            .status(403)
                            .header("content-type", "application/xml")
                            .body(Body::from(if head {
                                String::new()
                            } else {
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_string()
                            }))
                            .unwrap();
                    }
                    if let Some(call) = call {
                        if call.action == "sts:AssumeRole" {
                            remember_session(proxy, &call, &bytes);
                        }
                        proxy.api_calls.lock().unwrap().push(call);
                    }
                    out.body(Body::from(bytes)).unwrap()
                }
                Err(e) => Response::builder()
                    .status(502)
                    .body(Body::from(e.to_string()))
                    .unwrap(),
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            ) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
