//! Waiting out a busy kubelet. Its PodResources server admits calls through one token bucket for all its clients
//! (100 calls/s, burst 10: `pkg/kubelet/apis/podresources/grpc/ratelimit.go`) and answers the rest with
//! `ResourceExhausted` "rejected by rate limit". A node starting dozens of VMs at once (each pod asked about by
//! Multus and by us) runs into it; failing ADD there would send every sandbox into the kubelet's own, far longer,
//! back-off.
//!
//! So a refused call is tried again after a jittered, exponentially growing wait: `FIRST` (one token of the bucket)
//! doubling up to `CAP`, each wait drawn between half of that and all of it, so callers refused together come back
//! spread over the refill rather than together. All of it within `BUDGET` (inside the check's 10 s deadline): enough
//! for a queue of ~400 calls at the kubelet's rate, after which the kubelet is busy for longer than a sandbox should
//! wait, and ADD says "try again later" (11).

use std::time::{Duration, Instant};

/// The first wait: one token of the kubelet's bucket at 100 calls/s.
pub const FIRST: Duration = Duration::from_millis(10);
/// The longest single wait.
pub const CAP: Duration = Duration::from_millis(400);
/// How long refused calls are retried in all, from the first call.
pub const BUDGET: Duration = Duration::from_secs(4);

/// The retries of one question.
#[derive(Debug)]
pub struct Backoff {
    started: Instant,
    budget: Duration,
    refused: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Starts the clock now, with jitter seeded per process (no two plugins started together draw alike).
    pub fn new(budget: Duration) -> Self {
        Self::with_rng(budget, fastrand::Rng::new())
    }

    pub fn with_rng(budget: Duration, rng: fastrand::Rng) -> Self {
        Self {
            started: Instant::now(),
            budget,
            refused: 0,
            rng,
        }
    }

    /// Count one refused call; the wait before the next, or `None` when it would end past the budget.
    pub fn refused(&mut self) -> Option<Duration> {
        self.refused += 1;
        let wait = self.draw();
        (self.started.elapsed() + wait <= self.budget).then_some(wait)
    }

    /// Calls refused so far.
    pub fn attempts(&self) -> u32 {
        self.refused
    }

    /// Time since the first call.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A wait in [ceiling/2, ceiling], the ceiling `FIRST · 2^(refused-1)` capped at `CAP`.
    fn draw(&mut self) -> Duration {
        let ceiling = FIRST
            .saturating_mul(2u32.saturating_pow(self.refused - 1))
            .min(CAP);
        let half = ceiling / 2;
        half + Duration::from_nanos(self.rng.u64(0..=half.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::with_rng(Duration::from_secs(3600), fastrand::Rng::with_seed(7));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let w = b.refused().unwrap();
            let ceiling = FIRST
                .saturating_mul(1 << (b.attempts() - 1).min(16))
                .min(CAP);
            assert!(ceiling / 2 <= w && w <= ceiling, "{w:?} of {ceiling:?}");
            ceilings.push(ceiling);
        }
        assert_eq!(ceilings[0], FIRST);
        assert_eq!(ceilings[1], FIRST * 2);
        assert_eq!(*ceilings.last().unwrap(), CAP);
        assert_eq!(b.attempts(), 12);
    }

    #[test]
    fn two_callers_refused_together_do_not_come_back_together() {
        let mut a = Backoff::with_rng(Duration::from_secs(3600), fastrand::Rng::with_seed(1));
        let mut b = Backoff::with_rng(Duration::from_secs(3600), fastrand::Rng::with_seed(2));
        let same = (0..10).filter(|_| a.refused() == b.refused()).count();
        assert!(same < 10, "jitter must spread callers");
    }

    #[test]
    fn no_wait_past_the_budget() {
        let mut b = Backoff::with_rng(Duration::from_millis(100), fastrand::Rng::with_seed(3));
        let mut total = Duration::ZERO;
        while let Some(w) = b.refused() {
            total += w;
            // Counted as if slept: the budget is measured on the clock, so move it by hand.
            b.started -= w;
        }
        assert!(total <= Duration::from_millis(100), "{total:?}");
        assert!(b.attempts() >= 4, "a few retries fit: {}", b.attempts());
    }
}
