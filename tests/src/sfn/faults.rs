//! The faults a test queues: Lambda invocations ending without the function answering, and AWS
//! API calls answered with an error moto does not produce; the proxy serves them in order.

use axum::body::Body;
use axum::response::Response;

use super::LocalStepFunctions;

/// How a Lambda invocation can end without the function answering, as Step Functions reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LambdaFault {
    /// The function ran past its timeout ("Task timed out after 900.00 seconds"), reported as
    /// `Sandbox.Timedout` by newer runtimes.
    Timeout,
    /// The runtime died (out of memory, or a timeout on older runtimes) and returned no error
    /// type: `Lambda.Unknown`. "Unhandled errors in Lambda are reported as Lambda.Unknown ...
    /// These include out-of-memory errors and function timeouts."
    /// <https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html>
    Unknown,
    /// A custom runtime (provided.al2023, our binaries) killed for memory: the process exits and
    /// Lambda reports `Runtime.ExitError` ("Runtime exited with error: signal: killed"; AWS
    /// re:Post knowledge center, "Lambda runtime exit error"), not `Lambda.Unknown`.
    ExitError,
}

/// An AWS API error as the service answers it (JSON protocol: the code in `__type` and in
/// `x-amzn-ErrorType`), for errors moto does not produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFault {
    /// HTTP status.
    pub status: u16,
    /// Error code, e.g. `LimitExceededException`.
    pub code: String,
    /// The service's message.
    pub message: String,
}

impl AwsFault {
    /// ECR's answer when a service quota is reached, e.g. CreateRepository past the repositories
    /// per registry (ECR API reference, CreateRepository "Errors": LimitExceededException, HTTP
    /// 400, "The operation did not succeed because it would have exceeded a service limit for
    /// your account").
    pub fn ecr_limit_exceeded() -> Self {
        AwsFault {
            status: 400,
            code: "LimitExceededException".into(),
            message: "The operation did not succeed because it would have exceeded a service limit for your account.".into(),
        }
    }

    pub(super) fn response(&self) -> Response {
        Response::builder()
            .status(self.status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", &self.code)
            .body(Body::from(
                serde_json::json!({"__type": self.code, "message": self.message}).to_string(),
            ))
            .unwrap()
    }
}

impl LambdaFault {
    pub(super) fn body(self) -> &'static str {
        match self {
            LambdaFault::Timeout => {
                r#"{"errorType":"Sandbox.Timedout","errorMessage":"RequestId: 00000000 Error: Task timed out after 900.00 seconds"}"#
            }
            LambdaFault::ExitError => {
                r#"{"errorType":"Runtime.ExitError","errorMessage":"RequestId: 00000000 Error: Runtime exited with error: signal: killed"}"#
            }
            LambdaFault::Unknown => {
                r#"{"errorType":"Lambda.Unknown","errorMessage":"The cause could not be determined because Lambda did not return an error type. Returned payload: {\"errorType\":\"Runtime.OutOfMemory\"}"}"#
            }
        }
    }
}

impl LocalStepFunctions {
    /// The next invocation of `function` ends with `fault` instead of running (the Lambda
    /// service's answer for a timed-out or crashed function); later ones run as usual.
    pub fn fail_next_invocation(&self, function: &str, fault: LambdaFault) {
        self.proxy_state
            .faults
            .lock()
            .unwrap()
            .entry(function.to_string())
            .or_default()
            .push(fault);
    }

    /// The next call of `action` (an IAM action, `ecr:CreateRepository`) by any function answers
    /// `fault` instead of reaching moto (queued: one call per queued fault).
    pub fn fail_next_api_call(&self, action: &str, fault: AwsFault) {
        self.proxy_state
            .api_faults
            .lock()
            .unwrap()
            .entry(action.to_string())
            .or_default()
            .push(fault);
    }

    /// AWS faults queued for `action` and not served yet.
    pub fn api_faults_left(&self, action: &str) -> usize {
        self.proxy_state
            .api_faults
            .lock()
            .unwrap()
            .get(action)
            .map_or(0, Vec::len)
    }

    /// Faults queued for `function` and not yet consumed by an invocation.
    pub fn faults_left(&self, function: &str) -> usize {
        self.proxy_state
            .faults
            .lock()
            .unwrap()
            .get(function)
            .map_or(0, Vec::len)
    }
}
