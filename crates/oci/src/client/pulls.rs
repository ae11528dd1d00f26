//! Pulls as rate-limited registries count them, and a meter that keeps a client inside a budget.
//!
//! Docker Hub counts a pull for each manifest GET (`/v2/<name>/manifests/<reference>`); a HEAD
//! is not counted, and blob downloads are not either. Every manifest answer carries
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (pulls per window of
//! 21,600 seconds, and the pulls left in it); past the limit a GET answers 429
//! `TOOMANYREQUESTS` with `ratelimit-remaining: 0`. (Docker Hub documentation, "Docker Hub
//! pull usage and limits": the definition of a pull and "View pull rate and limit".)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use reqwest::header::HeaderMap;

use crate::error::{Error, Result};

/// A registry's own count of the pulls left, as its `ratelimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window (`ratelimit-limit`), when sent.
    pub limit: Option<u64>,
    /// Pulls left in the current window (`ratelimit-remaining`).
    pub remaining: u64,
    /// The window in seconds (`;w=`), when sent.
    pub window_seconds: Option<u64>,
}

impl RateLimit {
    /// Reads `ratelimit-remaining` (and `ratelimit-limit`) from an answer; `None` when the
    /// registry sends no such header or one that is not `<count>[;w=<seconds>]`.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let (remaining, window_seconds) = parse_quota(headers.get("ratelimit-remaining")?)?;
        let limit = headers
            .get("ratelimit-limit")
            .and_then(parse_quota)
            .map(|(limit, _)| limit);
        Some(RateLimit {
            limit,
            remaining,
            window_seconds,
        })
    }

    /// The registry's count when an answer says no pulls are left (`ratelimit-remaining: 0`):
    /// a pull limit, which lasts the registry's window, not a burst to wait out.
    pub fn exhausted(headers: &HeaderMap) -> Option<RateLimit> {
        RateLimit::from_headers(headers).filter(|r| r.remaining == 0)
    }

    /// The window in words, for messages.
    pub fn window(&self) -> String {
        match self.window_seconds {
            Some(s) if s % 3600 == 0 => format!("{} hours", s / 3600),
            Some(s) => format!("{s} seconds"),
            None => "the registry's window".to_string(),
        }
    }
}

/// `<count>` or `<count>;w=<seconds>` (other parameters ignored).
fn parse_quota(value: &reqwest::header::HeaderValue) -> Option<(u64, Option<u64>)> {
    let text = value.to_str().ok()?;
    let mut parts = text.split(';').map(str::trim);
    let count = parts.next()?.parse().ok()?;
    let window = parts
        .filter_map(|p| p.strip_prefix("w="))
        .find_map(|w| w.parse().ok());
    Some((count, window))
}

/// Counts the manifest GETs a client view sends to one registry, and refuses one before it is
/// sent when it would pass the meter's allowance, or bring the registry's own remaining count
/// (last seen in a `ratelimit-remaining` header) under the floor the meter keeps.
#[derive(Debug)]
pub struct PullMeter {
    registry: String,
    sent: AtomicU64,
    allowance: Option<u64>,
    floor: Option<Floor>,
    seen: Mutex<Option<RateLimit>>,
}

/// A floor on the registry's remaining count.
#[derive(Debug, Clone, Copy)]
struct Floor {
    keep: u64,
    /// Further pulls each GET implies later (a plan's manifest is read again when the image's
    /// manifests are put, in another invocation).
    follow_ups: u64,
}

impl PullMeter {
    /// A meter that only counts the GETs sent to `registry`.
    pub fn counting(registry: &str) -> Self {
        PullMeter {
            registry: registry.to_string(),
            sent: AtomicU64::new(0),
            allowance: None,
            floor: None,
            seen: Mutex::new(None),
        }
    }

    /// At most `gets` manifest GETs are sent through this meter.
    pub fn with_allowance(mut self, gets: u64) -> Self {
        self.allowance = Some(gets);
        self
    }

    /// No GET is sent when the registry's remaining count, less what this meter's GETs imply
    /// later (`follow_ups` each), would fall under `keep`.
    pub fn keeping(mut self, keep: u64, follow_ups: u64) -> Self {
        self.floor = Some(Floor { keep, follow_ups });
        self
    }

    /// The registry it meters.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Manifest GETs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// The registry's count as last seen, if it sends one.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one GET from the allowance, or refuses it (nothing is sent).
    pub(super) fn take(&self) -> Result<()> {
        let seen = self.rate_limit();
        if let (Some(floor), Some(seen)) = (self.floor, seen) {
            let sent = self.sent();
            let needed = floor.keep + 1 + floor.follow_ups * (sent + 1);
            if seen.remaining < needed {
                return Err(Error::PullBudgetSpent {
                    registry: self.registry.clone(),
                    reason: format!(
                        "the registry says {} pulls are left in {}, and the job keeps {} of them \
                         (source.pullBudget.keepRemaining)",
                        seen.remaining,
                        seen.window(),
                        floor.keep
                    ),
                });
            }
        }
        let taken = self
            .sent
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |sent| {
                match self.allowance {
                    Some(max) if sent >= max => None,
                    _ => Some(sent + 1),
                }
            });
        taken.map(|_| ()).map_err(|sent| Error::PullBudgetSpent {
            registry: self.registry.clone(),
            reason: format!(
                "this step may send {} manifest GETs (source.pullBudget.maxPulls, less what \
                 the run spent and what its planned images will read again) and sent {sent}",
                self.allowance.unwrap_or_default()
            ),
        })
    }

    /// Records the registry's count from an answer (the lowest seen wins within a window).
    pub(super) fn observe(&self, headers: &HeaderMap) {
        if let Some(now) = RateLimit::from_headers(headers) {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            *seen = Some(match *seen {
                Some(before) if before.remaining < now.remaining && before.limit == now.limit => {
                    // Answers of parallel GETs arrive out of order: keep the lower count.
                    before
                }
                _ => now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(limit: &str, remaining: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", HeaderValue::from_str(limit).unwrap());
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_str(remaining).unwrap(),
        );
        h
    }

    #[test]
    fn docker_hub_headers_are_read_with_their_window() {
        let seen = RateLimit::from_headers(&headers("100;w=21600", "76;w=21600")).unwrap();
        assert_eq!(
            seen,
            RateLimit {
                limit: Some(100),
                remaining: 76,
                window_seconds: Some(21600)
            }
        );
        assert_eq!(seen.window(), "6 hours");
        assert_eq!(
            RateLimit::from_headers(&headers("100", "7"))
                .unwrap()
                .remaining,
            7
        );
        assert!(RateLimit::from_headers(&headers("100", "lots")).is_none());
        assert!(RateLimit::from_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn an_allowance_refuses_the_get_past_it() {
        let meter = PullMeter::counting("docker.io").with_allowance(2);
        assert!(meter.take().is_ok());
        assert!(meter.take().is_ok());
        let refused = meter.take().unwrap_err();
        assert!(
            matches!(refused, Error::PullBudgetSpent { .. }),
            "{refused}"
        );
        assert_eq!(meter.sent(), 2);
    }

    #[test]
    fn a_floor_counts_the_reads_each_get_implies_later() {
        let meter = PullMeter::counting("docker.io").keeping(10, 1);
        // Nothing seen yet: the first GET goes (it is what reads the count).
        assert!(meter.take().is_ok());
        meter.observe(&headers("100;w=21600", "14;w=21600"));
        // 14 left: this GET (1), its later read and the first GET's (2) leave 11 >= 10.
        assert!(meter.take().is_ok());
        meter.observe(&headers("100;w=21600", "13;w=21600"));
        // 13 left: 1 + 3 later reads would leave 9 < 10.
        assert!(matches!(meter.take(), Err(Error::PullBudgetSpent { .. })));
        // A late answer with a higher count does not raise it.
        meter.observe(&headers("100;w=21600", "20;w=21600"));
        assert_eq!(meter.rate_limit().unwrap().remaining, 13);
    }
}
