//! The signals that stop a binary.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves at the first SIGTERM or SIGINT received after the call, with its name.
pub async fn shutdown() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// SIGHUP, the request to read the configuration and certificates again (instead of the
/// default action, which ends the process; see [`crate::reload`]). Call it early: the handler is installed by this call.
pub fn reload_requests() -> std::io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup())
}
