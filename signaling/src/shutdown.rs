//! Graceful shutdown: on SIGTERM or SIGINT (`startup::signals`), refuse new sessions, tell every client to
//! reconnect elsewhere (`draining`), wait until they are gone or the drain timeout passes,
//! close what is left with 1001, and let the server stop.

use std::sync::Arc;
use std::time::Duration;

use crate::AppState;

/// How long the sockets closed at the end of a drain get to finish their close handshakes.
const CLOSE_WAIT: Duration = Duration::from_millis(1500);

/// Drains the server: returns when every connection closed or `timeout` passed.
pub async fn drain(app: &Arc<AppState>, reason: &str, timeout: Duration) {
    #[cfg(feature = "with-relay")]
    if let Some(relay) = app.relay_drain.get() {
        relay.begin_drain();
    }
    app.hub.start_draining(reason).await;
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(connections = app.connections.count(), ?timeout, "draining");
    let _ = tokio::time::timeout_at(deadline, app.connections.all_closed()).await;
    app.hub.close_all();
    // The sockets write their close frames and end (each waits at most 1 s for the client's
    // close, `Connection::close`); what is still open past that ends with the server.
    let _ = tokio::time::timeout(CLOSE_WAIT, app.connections.all_closed()).await;
    tracing::info!(connections = app.connections.count(), "drained");
}
