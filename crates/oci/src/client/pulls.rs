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
use std::time::{Duration, Instant};

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
/// under the floor the meter keeps.
///
/// The registry's count is estimated from the lowest `ratelimit-remaining` it answered, less
/// the GETs sent since: a later answer claiming more than that (a header that lies, or a
/// "new" limit) never raises it, whether or not its `ratelimit-limit` changed; only the
/// registry's window passing forgets it (the count can then only have grown). Views stack: a
/// step's meter over a connection's (`RegistryClient::metered` on a metered view), and a GET
/// is taken from each, every floor judged against the lowest estimate of any of them, so what
/// a connection saw in one step holds in the next.
#[derive(Debug)]
pub struct PullMeter {
    registry: String,
    sent: AtomicU64,
    allowance: Option<u64>,
    floor: Option<Floor>,
    seen: Mutex<Option<Seen>>,
}

/// A floor on the registry's remaining count.
#[derive(Debug, Clone, Copy)]
struct Floor {
    keep: u64,
    /// Further pulls each GET implies later (a plan's manifest is read again when the image's
    /// manifests are put, in another invocation).
    follow_ups: u64,
}

/// The lowest count a registry answered a meter.
#[derive(Debug, Clone, Copy)]
struct Seen {
    lowest: RateLimit,
    /// GETs the meter had sent when it was answered: those sent since are not in the count.
    sent_then: u64,
    at: Instant,
}

/// How long a count is kept when the registry names no window (Docker Hub's is 6 hours).
const DEFAULT_WINDOW: Duration = Duration::from_secs(6 * 3600);

impl Seen {
    fn expired(&self) -> bool {
        let window = self
            .lowest
            .window_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WINDOW);
        self.at.elapsed() > window
    }
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

    /// The lowest count the registry answered this meter (within its window), if it sends
    /// one.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.seen_now().map(|s| s.lowest)
    }

    fn seen_now(&self) -> Option<Seen> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.filter(|s| !s.expired())
    }

    /// The registry's remaining count as this meter knows it: the lowest it answered, less
    /// the GETs sent through this meter since; with the answer it comes from (for messages).
    pub fn remaining(&self) -> Option<(u64, RateLimit)> {
        let seen = self.seen_now()?;
        let since = self.sent().saturating_sub(seen.sent_then);
        Some((seen.lowest.remaining.saturating_sub(since), seen.lowest))
    }

    /// Takes one GET from the allowance, or refuses it (nothing is sent). `remaining` is the
    /// lowest estimate of the registry's count among the meters the GET goes through.
    fn take(&self, remaining: Option<(u64, RateLimit)>) -> Result<()> {
        if let (Some(floor), Some((remaining, seen))) = (self.floor, remaining) {
            let sent = self.sent();
            let needed = floor.keep + 1 + floor.follow_ups * (sent + 1);
            if remaining < needed {
                return Err(Error::PullBudgetSpent {
                    registry: self.registry.clone(),
                    reason: format!(
                        "the registry says {remaining} pulls are left in {}, and the job keeps \
                         {} of them (source.pullBudget.keepRemaining)",
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

    /// Gives back a GET taken but not sent (another meter of the stack refused it).
    fn give_back(&self) {
        self.sent.fetch_sub(1, Ordering::SeqCst);
    }

    /// Records the registry's count from an answer: kept when it is at most what the meter
    /// already knows (the lowest answer less the GETs since), never when it claims more.
    fn observe(&self, headers: &HeaderMap) {
        let Some(now) = RateLimit::from_headers(headers) else {
            return;
        };
        let known = self.remaining().map(|(remaining, _)| remaining);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none_or(|known| now.remaining <= known) {
            *seen = Some(Seen {
                lowest: now,
                sent_then: self.sent(),
                at: Instant::now(),
            });
        }
    }
}

/// Takes one GET from each meter of a stack (innermost first), or from none: a GET refused by
/// one is given back to those that took it. Every floor is judged against the lowest estimate
/// of the registry's count among them.
pub(super) fn take_all(meters: &[&PullMeter]) -> Result<()> {
    let lowest = meters
        .iter()
        .filter_map(|m| m.remaining())
        .min_by_key(|(remaining, _)| *remaining);
    for (at, meter) in meters.iter().enumerate() {
        if let Err(refused) = meter.take(lowest) {
            for taken in &meters[..at] {
                taken.give_back();
            }
            return Err(refused);
        }
    }
    Ok(())
}

/// Records an answer's count in each meter of a stack.
pub(super) fn observe_all(meters: &[&PullMeter], headers: &HeaderMap) {
    for meter in meters {
        meter.observe(headers);
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

    fn take(meter: &PullMeter) -> Result<()> {
        take_all(&[meter])
    }

    #[test]
    fn an_allowance_refuses_the_get_past_it() {
        let meter = PullMeter::counting("docker.io").with_allowance(2);
        assert!(take(&meter).is_ok());
        assert!(take(&meter).is_ok());
        let refused = take(&meter).unwrap_err();
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
        assert!(take(&meter).is_ok());
        observe_all(&[&meter], &headers("100;w=21600", "14;w=21600"));
        // 14 left: this GET (1), its later read and the first GET's (2) leave 11 >= 10.
        assert!(take(&meter).is_ok());
        observe_all(&[&meter], &headers("100;w=21600", "13;w=21600"));
        // 13 left: 1 + 3 later reads would leave 9 < 10.
        assert!(matches!(take(&meter), Err(Error::PullBudgetSpent { .. })));
        // A late answer with a higher count does not raise it.
        observe_all(&[&meter], &headers("100;w=21600", "20;w=21600"));
        assert_eq!(meter.rate_limit().unwrap().remaining, 13);
    }

    #[test]
    fn a_higher_count_never_raises_the_floor_whatever_limit_it_names() {
        for (limit, lie) in [
            ("100;w=21600", "95;w=21600"),
            ("5000;w=21600", "4990;w=21600"),
        ] {
            let meter = PullMeter::counting("docker.io").keeping(5, 0);
            assert!(take(&meter).is_ok());
            observe_all(&[&meter], &headers("100;w=21600", "9;w=21600"));
            // Later answers claim more (the same limit, or an "upgraded" one): ignored.
            for _ in 0..3 {
                assert!(take(&meter).is_ok(), "{limit}");
                observe_all(&[&meter], &headers(limit, lie));
            }
            // 9 seen, 3 GETs since: 6 left; one more would leave 5, the next goes under it.
            assert_eq!(meter.remaining().unwrap().0, 6, "{limit}");
            assert!(take(&meter).is_ok(), "{limit}");
            assert!(
                matches!(take(&meter), Err(Error::PullBudgetSpent { .. })),
                "{limit}: a lying count raised the floor"
            );
            assert_eq!(meter.rate_limit().unwrap().remaining, 9);
            // A lower answer (others pull too) is taken at once.
            observe_all(&[&meter], &headers(limit, "2;w=21600"));
            assert_eq!(meter.remaining().unwrap().0, 2);
        }
    }

    #[test]
    fn a_stack_of_meters_judges_every_floor_by_the_lowest_count_any_saw() {
        // The connection's meter saw the registry's count in an earlier step.
        let connection = PullMeter::counting("docker.io");
        assert!(take(&connection).is_ok());
        observe_all(&[&connection], &headers("100;w=21600", "8;w=21600"));
        // A step's meter, fresh, stacked on it: its first answer lies.
        let step = PullMeter::counting("docker.io").keeping(5, 0);
        let stack = [&step, &connection];
        assert!(take_all(&stack).is_ok());
        observe_all(&stack, &headers("1000;w=21600", "999;w=21600"));
        // 8 seen by the connection, 1 GET since: 7; then 6 would be left (>= 5) and then 5.
        assert!(take_all(&stack).is_ok());
        assert!(take_all(&stack).is_ok());
        assert!(take_all(&stack).is_err());
        assert_eq!((step.sent(), connection.sent()), (3, 4));
        // A GET the step's allowance refuses is not counted by the connection either.
        let capped = PullMeter::counting("docker.io").with_allowance(0);
        assert!(take_all(&[&capped, &connection]).is_err());
        assert_eq!(connection.sent(), 4);
    }
}
