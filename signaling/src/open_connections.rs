//! The node's open connections: WebSockets (`/ws`, `/y-webrtc`, PeerJS) and HTTP streams (SSE,
//! long-poll).
//!
//! Each connection holds a [`ConnectionGuard`] for as long as it is open. The guard keeps the
//! `signaling_connections` gauge right however the connection's task ends (a return, an early
//! `?`, a panic, a dropped future), and a drain waits for the last guard to go
//! ([`OpenConnections::all_closed`]) instead of polling the gauge.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// See the module docs.
#[derive(Debug)]
pub struct OpenConnections {
    gauge: Gauge,
    total: Counter,
    tracker: TaskTracker,
}

impl OpenConnections {
    /// Tracks connections in `gauge` (open now) and `total` (opened since start).
    pub fn new(gauge: Gauge, total: Counter) -> Self {
        Self {
            gauge,
            total,
            tracker: TaskTracker::new(),
        }
    }

    /// Counts a connection open until the guard is dropped, and accepted.
    pub fn open(&self) -> ConnectionGuard {
        let guard = self.open_unaccepted();
        guard.accepted();
        guard
    }

    /// Counts a connection open until the guard is dropped; accepted once its checks pass
    /// ([`ConnectionGuard::accepted`]): an HTTP stream whose session token is refused is not.
    pub fn open_unaccepted(&self) -> ConnectionGuard {
        self.gauge.inc();
        ConnectionGuard {
            gauge: self.gauge.clone(),
            total: self.total.clone(),
            _token: self.tracker.token(),
        }
    }

    /// How many connections are open.
    pub fn count(&self) -> i64 {
        self.gauge.get()
    }

    /// Resolves once no connection is open (connections opened meanwhile are waited for too).
    pub async fn all_closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// One open connection (see [`OpenConnections::open`]).
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
    total: Counter,
    _token: TaskTrackerToken,
}

impl ConnectionGuard {
    /// Counts the connection in `signaling_connections_accepted_total`.
    pub fn accepted(&self) {
        self.total.inc();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_count_follows_the_guards_and_a_drain_waits_for_the_last() {
        let open = std::sync::Arc::new(OpenConnections::new(Gauge::default(), Counter::default()));
        let a = open.open();
        let b = open.open();
        assert_eq!(open.count(), 2);
        drop(a);
        assert_eq!(open.count(), 1);
        let waiter = tokio::spawn({
            let open = std::sync::Arc::clone(&open);
            async move { open.all_closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one connection is still open");
        // A task that ends by panicking still lets go of its guard.
        let panicked = tokio::spawn(async move {
            let _b = b;
            panic!("connection task failed");
        });
        assert!(panicked.await.is_err());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("the drain ended when the last connection closed")
            .unwrap();
        assert_eq!(open.count(), 0);
    }
}
