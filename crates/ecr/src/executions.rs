//! Starting named executions of one state machine (Step Functions `StartExecution`), for the
//! function that turns a batch of pushes into runs.

use crate::error::{Error, Result};

/// What `StartExecution` did with a named execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The execution runs: a new one, or (same name and same input while it is still open, which
    /// STANDARD workflows treat as idempotent) the one already started. Its ARN.
    Running(String),
    /// An execution of that name exists and is closed (`ExecutionAlreadyExists`; names are not
    /// reused for 90 days): started before, nothing new started.
    AlreadyClosed,
}

/// One state machine's executions.
#[derive(Debug, Clone)]
pub struct Executions {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl Executions {
    /// The executions of `state_machine_arn`, through `client`.
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: impl Into<String>) -> Self {
        Executions {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }

    /// The state machine's ARN.
    pub fn state_machine_arn(&self) -> &str {
        &self.state_machine_arn
    }

    /// Starts execution `name` with `input`. The same name with the same input is no second
    /// execution: an open one is returned (`Running`), a closed one is `AlreadyClosed`. Any other
    /// failure is an error (throttling and server errors retryable).
    pub async fn start(&self, name: &str, input: &str) -> Result<StartOutcome> {
        match self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input)
            .send()
            .await
        {
            Ok(started) => Ok(StartOutcome::Running(started.execution_arn().to_string())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_already_exists()) =>
            {
                Ok(StartOutcome::AlreadyClosed)
            }
            Err(e) => Err(Error::api(
                "states:StartExecution",
                format!("{}:{name}", self.state_machine_arn),
                &e,
            )),
        }
    }
}
