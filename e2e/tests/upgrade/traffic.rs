//! Frames sent from one pod's tap to another's all through the switch, as a workload on the taps would see it:
//! how many arrived and the longest time without one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use macvtap_e2e::tap::Tap;

const PAYLOAD: &[u8] = b"upgrade probe";

/// Frames flowing `from` → `to` until [`Probe::stop`].
pub struct Probe {
    stop: Arc<AtomicBool>,
    started: Instant,
    sender: JoinHandle<Result<(Tap, u64)>>,
    receiver: JoinHandle<Result<(Tap, Vec<Instant>)>>,
}

/// What [`Probe::stop`] found, and the taps back.
pub struct Report {
    pub sent: u64,
    pub received: usize,
    /// The longest time without a frame arriving (from the start, between frames, up to the stop).
    pub max_gap: Duration,
    pub from: Tap,
    pub to: Tap,
}

impl Probe {
    /// Sends a frame every `interval` from `from` (MAC `from_mac`) to `to_mac`, received on `to`.
    pub fn start(
        mut from: Tap,
        from_mac: [u8; 6],
        mut to: Tap,
        to_mac: [u8; 6],
        interval: Duration,
    ) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while !s.load(Ordering::Relaxed) {
                from.send(to_mac, from_mac, PAYLOAD)
                    .with_context(|| format!("sending probe frame {sent}"))?;
                sent += 1;
                std::thread::sleep(interval);
            }
            Ok((from, sent))
        });
        let s = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut arrivals = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if to
                    .receive(PAYLOAD, Duration::from_millis(200))
                    .context("receiving probe frames")?
                    .is_some()
                {
                    arrivals.push(Instant::now());
                }
            }
            Ok((to, arrivals))
        });
        Probe {
            stop,
            started,
            sender,
            receiver,
        }
    }

    pub fn stop(self) -> Result<Report> {
        // The last frames in flight.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let (from, sent) = self
            .sender
            .join()
            .map_err(|_| anyhow!("the probe sender panicked"))??;
        let (to, arrivals) = self
            .receiver
            .join()
            .map_err(|_| anyhow!("the probe receiver panicked"))??;
        let mut edges = vec![self.started];
        edges.extend(arrivals.iter().copied());
        edges.push(stopped);
        let max_gap = edges
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        Ok(Report {
            sent,
            received: arrivals.len(),
            max_gap,
            from,
            to,
        })
    }
}
