//! Channel bindings of one allocation (RFC 8656 section 11): channel number <-> peer address.
//! An expired binding stays for 5 more minutes (unusable) so neither its number nor its peer
//! can be rebound to something else in that time (RFC 8656 section 11.2).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::small_list::SmallList;

/// How long an expired binding still blocks its number and peer.
pub(crate) const QUARANTINE: Duration = Duration::from_secs(300);

/// One binding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelBinding {
    pub(crate) number: u16,
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
    /// Counted in the live-channels gauge (false once expired).
    pub(crate) counted: bool,
}

/// Why a ChannelBind conflicts with existing bindings (400 Bad Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BindConflict {
    /// The number is bound to another peer.
    NumberInUse,
    /// The peer is bound to another number.
    PeerInUse,
}

/// The bindings of one allocation (small vector, linear search).
#[derive(Debug, Default)]
pub(crate) struct Channels {
    entries: SmallList<ChannelBinding, 2>,
}

impl Channels {
    /// The live binding with `number` at `now`.
    #[inline]
    pub(crate) fn by_number(&self, number: u16, now: Instant) -> Option<&ChannelBinding> {
        self.entries
            .iter()
            .find(|c| c.number == number && now < c.expires)
    }

    /// The live binding for `peer` at `now`.
    #[inline]
    pub(crate) fn by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&ChannelBinding> {
        self.entries
            .iter()
            .find(|c| c.peer == peer && now < c.expires)
    }

    /// Check a bind of `number` to `peer` against the rules; Ok(true) if it creates an entry.
    pub(crate) fn check(&self, number: u16, peer: SocketAddr) -> Result<bool, BindConflict> {
        for c in self.entries.iter() {
            if c.number == number && c.peer != peer {
                return Err(BindConflict::NumberInUse);
            }
            if c.peer == peer && c.number != number {
                return Err(BindConflict::PeerInUse);
            }
        }
        Ok(!self.entries.iter().any(|c| c.number == number))
    }

    /// Bind or refresh (after `check`); returns true if the live-channels gauge grows.
    pub(crate) fn bind(&mut self, number: u16, peer: SocketAddr, expires: Instant) -> bool {
        if let Some(c) = self.entries.iter_mut().find(|c| c.number == number) {
            c.expires = expires;
            let revived = !c.counted;
            c.counted = true;
            revived
        } else {
            self.entries.push(ChannelBinding {
                number,
                peer,
                expires,
                counted: true,
            });
            true
        }
    }

    /// Timer for `number` fired at `now`: returns (gauge decrement, next timer deadline).
    pub(crate) fn on_timer(&mut self, number: u16, now: Instant) -> (bool, Option<Instant>) {
        let Some(c) = self.entries.iter_mut().find(|c| c.number == number) else {
            return (false, None);
        };
        if now < c.expires {
            return (false, None);
        }
        if c.counted {
            c.counted = false;
            return (true, Some(c.expires + QUARANTINE));
        }
        if now >= c.expires + QUARANTINE {
            self.entries.remove_first(|c| c.number == number);
        }
        (false, None)
    }

    /// Live (counted) bindings.
    pub(crate) fn live(&self) -> usize {
        self.entries.iter().filter(|c| c.counted).count()
    }

    /// All entries including quarantined ones (the per-allocation quota counts these).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebind_rules_and_quarantine() {
        let t0 = Instant::now();
        let p1: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let p2: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let mut ch = Channels::default();
        assert_eq!(ch.check(0x4000, p1), Ok(true));
        assert!(ch.bind(0x4000, p1, t0 + Duration::from_secs(600)));
        assert_eq!(ch.check(0x4000, p1), Ok(false), "refresh");
        assert_eq!(ch.check(0x4000, p2), Err(BindConflict::NumberInUse));
        assert_eq!(ch.check(0x4001, p1), Err(BindConflict::PeerInUse));
        assert!(ch.by_number(0x4000, t0).is_some());
        assert!(ch.by_peer(p1, t0).is_some());
        let t1 = t0 + Duration::from_secs(600);
        assert!(ch.by_number(0x4000, t1).is_none(), "expired lazily");
        assert_eq!(ch.on_timer(0x4000, t1), (true, Some(t1 + QUARANTINE)));
        assert_eq!(ch.live(), 0);
        assert_eq!(
            ch.check(0x4000, p2),
            Err(BindConflict::NumberInUse),
            "quarantined"
        );
        assert_eq!(ch.on_timer(0x4000, t1 + QUARANTINE), (false, None));
        assert_eq!(ch.len(), 0);
        assert_eq!(ch.check(0x4000, p2), Ok(true));
    }
}
