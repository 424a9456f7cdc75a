//! `--max-connections`: one counter of open TCP/TLS client connections shared by every worker,
//! and `--max-connections-per-ip`: the share of them one source address may hold (IPv6 per
//! /64). A slot is taken right after `accept`, before any TLS handshake (behind
//! `--proxy-protocol`, the source's share once the header named the client), and given back
//! when the connection's task ends (the `ConnectionSlot` is dropped), so the limits are exact
//! whatever the kernel's spread of connections over workers and however many handshakes are
//! pending. The table of sources holds only addresses with an open connection: at most
//! `--max-connections` entries.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use startup::source_limit::{SourceLimit, SourceSlot};

/// The shared counters and their limits.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
    /// Open connections per source key ([`relay_proto::rate_key`]).
    per_source: Arc<SourceLimit>,
}

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The relay holds `--max-connections`.
    Full,
    /// Its source address holds `--max-connections-per-ip`.
    SourceFull,
}

impl ConnectionLimit {
    /// A limit of `max` open connections, `max_per_source` of them from one address.
    pub(crate) fn new(max: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            per_source: SourceLimit::new(max_per_source),
        })
    }

    /// Takes a slot, counted for `source` when it is known already (else see
    /// [`ConnectionSlot::attribute`]).
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        source: Option<IpAddr>,
    ) -> Result<ConnectionSlot, Refused> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| Refused::Full)?;
        let mut slot = ConnectionSlot {
            limit: Arc::clone(self),
            source: None,
        };
        if let Some(source) = source {
            slot.attribute(source)?;
        }
        Ok(slot)
    }

    /// Slots in use.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Sources with an open connection.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.per_source.sources()
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
pub(crate) struct ConnectionSlot {
    limit: Arc<ConnectionLimit>,
    /// Its source's share, once the source is known.
    source: Option<SourceSlot>,
}

impl ConnectionSlot {
    /// Counts the slot for the connection's source address (once; a second call is a no-op).
    pub(crate) fn attribute(&mut self, source: IpAddr) -> Result<(), Refused> {
        if self.source.is_none() {
            let key = relay_proto::rate_key(source);
            self.source = Some(
                self.limit
                    .per_source
                    .try_take(key)
                    .ok_or(Refused::SourceFull)?,
            );
        }
        Ok(())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let limit = ConnectionLimit::new(2, 2);
        let a = limit.try_acquire(None).expect("first");
        let b = limit.try_acquire(None).expect("second");
        assert_eq!(limit.try_acquire(None).err(), Some(Refused::Full));
        drop(a);
        let c = limit.try_acquire(None).expect("a slot was given back");
        assert_eq!(limit.open(), 2);
        drop((b, c));
        assert_eq!(limit.open(), 0);
        assert!(ConnectionLimit::new(0, 1).try_acquire(None).is_err());
    }

    #[test]
    fn the_limit_holds_across_threads() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 2_000;
        let limit = ConnectionLimit::new(5, 5);
        let peak = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let limit = Arc::clone(&limit);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut taken = 0;
                    for round in 0..ROUNDS {
                        if let Ok(slot) = limit.try_acquire(None) {
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

    #[test]
    fn one_source_holds_at_most_its_share() {
        let limit = ConnectionLimit::new(10, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limit.try_acquire(Some(a)).expect("a, first");
        let _a2 = limit.try_acquire(Some(a)).expect("a, second");
        assert_eq!(limit.try_acquire(Some(a)).err(), Some(Refused::SourceFull));
        // A refused source's try gives its global slot back.
        assert_eq!(limit.open(), 2);
        let _b1 = limit
            .try_acquire(Some(b))
            .expect("another source is not affected");
        drop(a1);
        let _a3 = limit
            .try_acquire(Some(a))
            .expect("a's share was given back");
        assert_eq!(limit.sources(), 2);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_late_attribution_works() {
        let limit = ConnectionLimit::new(10, 1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = limit.try_acquire(Some(one)).expect("first");
        // Behind a PROXY header: a slot first, the source once the header named it.
        let mut late = limit.try_acquire(None).expect("a slot");
        assert_eq!(late.attribute(same_64), Err(Refused::SourceFull));
        late.attribute(other_64).expect("another /64");
        late.attribute(same_64).expect("attributed once: a no-op");
        drop((held, late));
        assert_eq!(
            (limit.open(), limit.sources()),
            (0, 0),
            "nothing left behind"
        );
    }
}
