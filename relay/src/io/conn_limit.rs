//! `--max-connections`: one counter of open TCP/TLS client connections shared by every worker.
//! A slot is taken right after `accept`, before any TLS handshake, and given back when the
//! connection's task ends (the `ConnectionSlot` is dropped), so the limit is exact whatever
//! the kernel's spread of connections over workers and however many handshakes are pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared counter and its limit.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    /// A limit of `max` open connections.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a slot, or `None` at the limit.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(Arc::clone(self)))
    }

    /// Slots in use.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Descriptors kept aside for listeners, the admin server and a few relay sockets.
const FD_MARGIN: usize = 64;

/// Warns when the file-descriptor limit (`ulimit -n`) is below `max` connections plus a small
/// margin: accepts would then fail with EMFILE before the connection limit is reached.
pub(crate) fn warn_if_fd_limit_below(max: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return;
    }
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    if soft < max.saturating_add(FD_MARGIN) {
        tracing::warn!(
            fd_limit = soft,
            max_connections = max,
            "the file-descriptor limit (ulimit -n) is below --max-connections + {FD_MARGIN}: \
             raise it (LimitNOFILE) or lower --max-connections"
        );
    }
}

/// One open connection's slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none(), "at the limit");
        drop(a);
        let c = limit.try_acquire().expect("a slot was given back");
        assert_eq!(limit.open(), 2);
        drop((b, c));
        assert_eq!(limit.open(), 0);
        assert!(ConnectionLimit::new(0).try_acquire().is_none());
    }

    #[test]
    fn the_limit_holds_across_threads() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 2_000;
        let limit = ConnectionLimit::new(5);
        let peak = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let limit = Arc::clone(&limit);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut taken = 0;
                    for round in 0..ROUNDS {
                        if let Some(slot) = limit.try_acquire() {
                            taken += 1;
                            held.push(slot);
                            peak.fetch_max(limit.open(), Ordering::AcqRel);
                        }
                        if round % 3 == 0 {
                            held.clear();
                        }
                    }
                    taken
                })
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(taken > 0);
        assert!(
            peak.load(Ordering::Acquire) <= 5,
            "never more than the limit"
        );
        assert_eq!(limit.open(), 0, "every slot given back");
    }
}
