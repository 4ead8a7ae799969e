//! SIGINT (Ctrl-C) and SIGTERM cancel one token that every task watches.

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Cancels `token` on the first SIGINT or SIGTERM; a second signal exits at once. The watcher
/// stops when the returned handle is dropped.
#[must_use = "the watcher stops when the handle is dropped"]
pub fn cancel_on_signal(token: CancellationToken) -> AbortOnDropHandle<()> {
    let watcher = async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    };
    AbortOnDropHandle::new(tokio::spawn(watcher))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
