//! Graceful shutdown: on SIGTERM or SIGINT (`startup::signals`), refuse new sessions, tell every client to
//! reconnect elsewhere (`draining`), wait until they are gone or the drain timeout passes,
//! close what is left with 1001, and let the server stop.

use std::sync::Arc;
use std::time::Duration;

use crate::AppState;

/// Drains the server: returns when every connection closed or `timeout` passed.
pub async fn drain(app: &Arc<AppState>, reason: &str, timeout: Duration) {
    app.hub.start_draining(reason).await;
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(connections = app.connections.count(), ?timeout, "draining");
    let _ = tokio::time::timeout_at(deadline, app.connections.all_closed()).await;
    app.hub.close_all();
    // Give the sockets a moment to write their close frames.
    let grace = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .min(Duration::from_millis(200));
    tokio::time::sleep(grace).await;
    tracing::info!(connections = app.connections.count(), "drained");
}
