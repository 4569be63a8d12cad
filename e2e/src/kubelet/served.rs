//! One gRPC server of the stand-in on a unix socket, with a stop that waits briefly for open requests.

use std::time::Duration;

use kubelet_api::tonic;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server: stopped (and awaited) on drop of its stop sender.
pub(super) struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    /// Serves `router` on `incoming` until [`Served::shutdown`].
    pub(super) fn spawn(
        router: tonic::transport::server::Router,
        incoming: tokio_stream::wrappers::UnixListenerStream,
        what: &'static str,
    ) -> Served {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("kubelet stand-in: {what} server: {e}");
            }
        });
        Served {
            stop: Some(stop),
            task,
        }
    }

    pub(super) async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // A graceful shutdown waits for open requests; Register calls are short, so this is quick.
        let task = &mut self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut *task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}
