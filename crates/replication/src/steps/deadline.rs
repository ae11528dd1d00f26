//! When the invocation running a step must have answered: a Lambda function's deadline, given
//! to the step it runs (`within_deadline`), so a step with more work than one invocation holds
//! hands the rest to its next call (a page token) instead of timing out. Lambda's runtime API
//! gives it with each event: "Lambda-Runtime-Deadline-Ms – The date that the function times
//! out in Unix time milliseconds" (AWS Lambda developer guide, "Using the Lambda runtime API
//! for custom runtimes", Next invocation; `lambda_runtime::Context::deadline`). Without one
//! (the CLI, a test), a step takes its whole page.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// Time kept back before the deadline at most: what a step has started when it stops taking
/// more (reads of up to `PARALLEL_CHECKS` images, signature checks) finishes within it, and
/// its output is returned.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// When the step should stop taking on more work.
    static HAND_BACK_AT: Instant;
}

/// Runs `step` with the invocation's deadline: work it pages stops being taken on
/// `DEADLINE_MARGIN` before it (or a quarter of the time left when less remains), and the
/// rest goes to the next call.
pub async fn within_deadline<F: Future>(deadline: SystemTime, step: F) -> F::Output {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let margin = DEADLINE_MARGIN.min(left / 4);
    HAND_BACK_AT
        .scope(Instant::now() + left.saturating_sub(margin), step)
        .await
}

/// Whether the step should stop taking on more work now (never outside `within_deadline`).
pub fn time_to_hand_back() -> bool {
    HAND_BACK_AT
        .try_with(|at| Instant::now() >= *at)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_hands_back_only_near_its_deadline() {
        assert!(!time_to_hand_back());
        let far = SystemTime::now() + Duration::from_secs(300);
        assert!(!within_deadline(far, async { time_to_hand_back() }).await);
        let near = SystemTime::now() + Duration::from_millis(1);
        let late = within_deadline(near, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            time_to_hand_back()
        });
        assert!(late.await);
        assert!(within_deadline(SystemTime::UNIX_EPOCH, async { time_to_hand_back() }).await);
    }
}
