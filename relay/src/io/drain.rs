//! `DrainSignal`: tells a draining relay when its last allocation has ended, so that
//! `RelayHandle::drain` wakes up then instead of polling the allocation count. The drain flag
//! itself is `SharedQuotas`' (one owner); this only adds the wake-up.

use std::sync::Arc;
use std::time::Instant;

use relay_proto::SharedQuotas;
use tokio::sync::Notify;

/// Shared by every worker (which call `check` after acting on the core's outputs) and the
/// relay handle (which waits).
#[derive(Debug)]
pub(crate) struct DrainSignal {
    shared: Arc<SharedQuotas>,
    idle: Notify,
}

impl DrainSignal {
    pub(crate) fn new(shared: Arc<SharedQuotas>) -> Arc<Self> {
        Arc::new(Self {
            shared,
            idle: Notify::new(),
        })
    }

    /// Called by a worker whenever allocations may have ended: wakes the drain once it is
    /// draining and none is left. Two relaxed loads when not draining.
    pub(crate) fn check(&self) {
        if self.shared.is_draining() && self.shared.allocations() == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no allocation is left or `deadline` passes; `true` if none is left.
    pub(crate) async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            // Registered before the check: a `notify_waiters` after it is not lost.
            let notified = self.idle.notified();
            if self.shared.allocations() == 0 {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    return self.shared.allocations() == 0;
                }
            }
        }
    }
}
