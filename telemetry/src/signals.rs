//! Shutdown on SIGTERM (the kubelet stopping the pod) or SIGINT (a terminal).

use tokio_util::sync::CancellationToken;

/// A token cancelled when SIGTERM or SIGINT arrives. The handlers are installed before this returns, so a signal
/// right after it is not lost; must be called inside a tokio runtime.
pub fn shutdown_token() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
