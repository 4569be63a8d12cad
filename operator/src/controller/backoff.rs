//! Retry delays: per object after failed reconciles (exponential, reset by a success), and of the watches after
//! the API server failed them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures per (controller, object).
#[derive(Default)]
pub(super) struct Backoff(Mutex<HashMap<(&'static str, String), u32>>);

impl Backoff {
    /// Counts a failure of `name` in `controller` and returns how long to wait before retrying it:
    /// 1 s, 2 s, 4 s ... doubling up to 256 s (the 5-minute ceiling below is never reached).
    pub(super) fn failed(&self, controller: &'static str, name: &str) -> Duration {
        let mut failures = self.0.lock().expect("failures poisoned");
        let n = failures.entry((controller, name.to_string())).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets the failures of `name` in `controller`: its next failure waits 1 s again.
    pub(super) fn succeeded(&self, controller: &'static str, name: &str) {
        let mut failures = self.0.lock().expect("failures poisoned");
        failures.remove(&(controller, name.to_string()));
    }
}

/// First retry of a failed watch.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between retries of a failed watch. kube's default backoff grows to 30 s with up to as much again of
/// jitter, so after an API server outage of a minute the operator's caches, and the pool status computed from
/// them, could stay stale for up to a minute after the server was back; three watches of one leader retrying every
/// few seconds cost the server nothing.
pub(super) const WATCH_RETRY_MAX: Duration = Duration::from_secs(4);

/// The watches' retry delays: 0.5 s doubling up to [`WATCH_RETRY_MAX`], back to 0.5 s after an event arrives
/// (`StreamBackoff` resets it).
#[derive(Debug, Clone)]
pub(super) struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(WATCH_RETRY_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_retries_within_seconds_however_long_the_outage() {
        let mut b = WatchBackoff::default();
        let first: Vec<u64> = b.by_ref().take(5).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, [500, 1000, 2000, 4000, 4000]);
        // A 10-minute outage: never a longer wait than the cap, so the watch is back within 4 s of the server.
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(600) {
            let d = b.next().unwrap();
            assert!(d <= WATCH_RETRY_MAX, "{d:?}");
            waited += d;
        }
        kube::runtime::utils::Backoff::reset(&mut b);
        assert_eq!(b.next(), Some(WATCH_RETRY_MIN));
    }

    fn secs(b: &Backoff, controller: &'static str, name: &str) -> u64 {
        b.failed(controller, name).as_secs()
    }

    #[test]
    fn doubles_per_failure_up_to_256_seconds() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| secs(&b, "c", "x")).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256, 256]);
    }

    #[test]
    fn counted_per_controller_and_object_and_reset_by_success() {
        let b = Backoff::default();
        assert_eq!(secs(&b, "c", "x"), 1);
        assert_eq!(secs(&b, "c", "x"), 2);
        assert_eq!(secs(&b, "c", "y"), 1, "another object");
        assert_eq!(secs(&b, "d", "x"), 1, "another controller");
        b.succeeded("c", "x");
        assert_eq!(secs(&b, "c", "x"), 1);
        assert_eq!(secs(&b, "c", "y"), 2, "untouched by x's success");
    }
}
