//! How failed requests are retried, and the per-host pause a throttling answer starts.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use url::Url;

use super::*;

/// How failed requests are retried. Throttling (429, and 503 as S3 behind ECR says it) slows a
/// run but does not fail it: it is waited out (`Retry-After`, else jittered backoff) for up to
/// `throttle_budget` per request or blob, without counting attempts. Other transient failures
/// (408, 5xx, connection errors) get `max_attempts` with jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first, for failures that are not throttling.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound for one backoff delay.
    pub max_backoff: Duration,
    /// Upper bound for a server's `Retry-After`.
    pub max_retry_after: Duration,
    /// How long one request (or one blob's upload) may be throttled before it is an error.
    pub throttle_budget: Duration,
}

/// Default for `RetryPolicy::throttle_budget`.
pub const DEFAULT_THROTTLE_BUDGET: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            throttle_budget: DEFAULT_THROTTLE_BUDGET,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (attempt counts from 1), unless the server said.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// `backoff` with equal jitter (between half and all of it), so parallel clients spread out.
    pub fn jittered_backoff(&self, attempt: u32) -> Duration {
        let full = self.backoff(attempt);
        full / 2 + jitter(full / 2)
    }

    /// How long to wait after a throttling answer: its `Retry-After` (capped) plus up to a
    /// quarter more, so the requests a pause held back do not all return at once; without one,
    /// the jittered backoff of the `throttled`-th throttling.
    pub fn throttle_delay(&self, headers: &HeaderMap, throttled: u32) -> Duration {
        match retry_after(headers) {
            Some(after) => {
                let after = after.min(self.max_retry_after);
                after + jitter(after / 4)
            }
            None => self.jittered_backoff(throttled),
        }
    }
}

/// A random duration in `0..=max` (no RNG dependency: std's randomly keyed hasher).
pub(super) fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_nanos(random % (nanos + 1))
}

impl RegistryClient {
    /// Waits while the URL's host is paused by an earlier throttling answer.
    pub(super) async fn wait_for_host(&self, url: &Url) {
        let key = host_key(url);
        loop {
            let until = lock(&self.inner.paused_until).get(&key).copied();
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => return,
            }
        }
    }

    /// Pauses every request to the URL's host for `delay` (never shortening a longer pause).
    pub(super) fn pause_host(&self, url: &Url, delay: Duration) {
        let until = Instant::now() + delay;
        let mut paused = lock(&self.inner.paused_until);
        let entry = paused.entry(host_key(url)).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}

/// `host:port` of a URL: the unit a registry throttles.
pub(super) fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// The registry asks clients to slow down (429; 503 is how S3 behind ECR says it).
pub(super) fn is_throttling(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 503)
}

pub(super) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500..=599)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
