//! Per-object retry delays after failed reconciles: exponential, reset by a success.

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

#[cfg(test)]
mod tests {
    use super::*;

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
