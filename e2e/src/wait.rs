//! Waiting for something to become true by asking again: the one polling loop of every crate's tests
//! ([`poll`]), and the shapes the tests call it in ([`eventually`] panics with the last answer, [`until_true`]
//! answers a bool, [`until`] for checks that can fail for good, [`poll_blocking`] for code outside a runtime).
//!
//! Waits that can be told of a change (the kubelet stand-in's watch channel) do not poll; everything read from
//! the API server, a netns or `/metrics` does.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] asks again: its checks are usually API requests.
pub const API_INTERVAL: Duration = Duration::from_millis(200);
/// How often [`until_true`] asks again: its checks are local and cheap (a file, a link, `/metrics`).
pub const LOCAL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` every `interval` until it returns `Ok`; after `timeout`, its last `Err`. `check` always runs at
/// least once, and once more after the deadline has passed during a sleep.
pub async fn poll<T, E, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

/// [`poll`] from blocking code (a thread without a runtime).
pub fn poll_blocking<T, E>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(interval),
        }
    }
}

/// Polls `check` until it returns `Ok`; panics (failing the test) with `what` and the last error after `timeout`.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match poll(timeout, API_INTERVAL, check).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: not within {timeout:?}: {e}"),
    }
}

/// Polls `cond` until it holds; whether it did within `timeout`.
pub async fn until_true(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, LOCAL_INTERVAL, || {
        std::future::ready(cond().then_some(()).ok_or(()))
    })
    .await
    .is_ok()
}

/// Asks `check` every 250 ms until it answers `true`: an error of `check` ends the wait at once (a scenario's
/// check that cannot come true any more), `false` after `timeout` is an error naming `what`.
pub async fn until<F: Future<Output = anyhow::Result<bool>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<()> {
    let waited = poll(timeout, Duration::from_millis(250), || {
        let asked = check();
        async move {
            match asked.await {
                Ok(true) => Ok(Ok(())),
                Ok(false) => Err(()),
                Err(e) => Ok(Err(e)),
            }
        }
    })
    .await;
    match waited {
        Ok(done) => done,
        Err(()) => anyhow::bail!("{what}: not within {timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_returns_the_first_ok_and_the_last_err() {
        let mut n = 0;
        let r: Result<u32, u32> = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            std::future::ready(if n == 3 { Ok(n) } else { Err(n) })
        })
        .await;
        assert_eq!(r, Ok(3));

        let mut n = 0;
        let r: Result<(), u32> = poll(Duration::from_millis(30), Duration::from_millis(5), || {
            n += 1;
            std::future::ready(Err(n))
        })
        .await;
        assert_eq!(r, Err(n), "the last answer is the error");
        assert!(n >= 2, "asked again until the deadline: {n}");
    }

    #[tokio::test]
    async fn until_true_answers_whether_the_condition_came_true() {
        let mut n = 0;
        assert!(
            until_true(Duration::from_secs(5), || {
                n += 1;
                n > 2
            })
            .await
        );
        assert!(!until_true(Duration::from_millis(20), || false).await);
    }

    #[tokio::test]
    #[should_panic(expected = "the thing: not within 10ms: still 7")]
    async fn eventually_panics_with_the_last_error() {
        eventually("the thing", Duration::from_millis(10), || async {
            Err::<(), _>("still 7")
        })
        .await;
    }

    #[test]
    fn poll_blocking_checks_once_more_after_the_deadline() {
        let start = Instant::now();
        let r = poll_blocking(Duration::from_millis(20), Duration::from_millis(50), || {
            if start.elapsed() > Duration::from_millis(40) {
                Ok(())
            } else {
                Err(())
            }
        });
        assert_eq!(r, Ok(()));
    }
}
