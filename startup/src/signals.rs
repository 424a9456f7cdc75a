//! The signals that stop a binary, and the one that reloads it. Install both before the binary
//! says it is ready: until then a signal has its default action, which ends the process.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT, caught from [`ShutdownSignals::install`] on (inside a tokio runtime).
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Catches SIGTERM and SIGINT from now on: they no longer end the process, [`Self::recv`]
    /// reports them.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT, by name (call it again for a second signal).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// SIGHUP, the request to read the configuration and certificates again (instead of the
/// default action, which ends the process; see [`crate::reload`]). The handler is installed by
/// this call.
pub fn reload_requests() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}
