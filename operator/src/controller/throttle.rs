//! Merges bursts of "recompute every pool status" requests: one pass covers all pools, so requests arriving while
//! one waits add nothing.

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, stream};
use std::time::Duration;

/// Passes the first request at once, then at most one per `period` (requests in between are merged into it).
pub(super) fn throttled(
    rx: UnboundedReceiver<()>,
    period: Duration,
) -> impl Stream<Item = ()> + Send {
    stream::unfold((rx, false), move |(mut rx, throttling)| async move {
        if throttling {
            tokio::time::sleep(period).await;
            let mut merged = false;
            while rx.try_recv().is_ok() {
                merged = true;
            }
            if merged {
                return Some(((), (rx, true)));
            }
        }
        rx.next().await?;
        Some(((), (rx, true)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc::unbounded;
    use std::pin::pin;
    use tokio::time::{Instant, timeout};

    const PERIOD: Duration = Duration::from_millis(40);

    #[tokio::test]
    async fn first_at_once_then_a_burst_merged_into_one_per_period() {
        let (tx, rx) = unbounded();
        let mut out = pin!(throttled(rx, PERIOD));

        tx.unbounded_send(()).unwrap();
        let start = Instant::now();
        out.next().await.unwrap();
        assert!(start.elapsed() < PERIOD, "the first request passes at once");

        // A burst while throttling: one item, after the period.
        for _ in 0..5 {
            tx.unbounded_send(()).unwrap();
        }
        let start = Instant::now();
        out.next().await.unwrap();
        assert!(start.elapsed() >= PERIOD);
        // Nothing left of the burst.
        assert!(timeout(PERIOD * 3, out.next()).await.is_err());
    }

    #[tokio::test]
    async fn after_a_quiet_period_a_request_passes_at_once() {
        let (tx, rx) = unbounded();
        let mut out = pin!(throttled(rx, PERIOD));
        tx.unbounded_send(()).unwrap();
        out.next().await.unwrap();
        // The stream waits out its period with nothing to merge, then waits for the next request.
        assert!(timeout(PERIOD * 2, out.next()).await.is_err());
        tx.unbounded_send(()).unwrap();
        let start = Instant::now();
        out.next().await.unwrap();
        assert!(start.elapsed() < PERIOD);
    }

    #[tokio::test]
    async fn ends_when_every_sender_is_gone() {
        let (tx, rx) = unbounded();
        let mut out = pin!(throttled(rx, PERIOD));
        tx.unbounded_send(()).unwrap();
        drop(tx);
        assert_eq!(out.next().await, Some(()));
        assert_eq!(out.next().await, None);
    }
}
