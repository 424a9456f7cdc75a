//! Permissions of one allocation (RFC 8656 section 9): peer IP -> expiry. A small list with
//! linear search (the first two inline): allocations hold a handful of permissions, and this
//! beats hashing on the relay path.

use std::net::IpAddr;
use std::time::Instant;

use crate::small_list::SmallList;

/// The installed permissions of one allocation.
#[derive(Debug, Default)]
pub(crate) struct Permissions {
    entries: SmallList<(IpAddr, Instant), 2>,
}

impl Permissions {
    /// True if a permission for `ip` exists and has not expired at `now` (lazy check).
    #[inline]
    pub(crate) fn is_permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries.iter().any(|(p, exp)| *p == ip && now < *exp)
    }

    /// True if an entry (possibly expired but not yet swept) exists for `ip`.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.entries.iter().any(|(p, _)| *p == ip)
    }

    /// Install or refresh; returns true if the entry is new.
    pub(crate) fn install(&mut self, ip: IpAddr, expires: Instant) -> bool {
        if let Some(e) = self.entries.iter_mut().find(|(p, _)| *p == ip) {
            e.1 = e.1.max(expires);
            false
        } else {
            self.entries.push((ip, expires));
            true
        }
    }

    /// Remove the entry for `ip` if it has expired at `now`; true if removed.
    pub(crate) fn remove_if_expired(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .remove_first(|(p, exp)| *p == ip && *exp <= now)
            .is_some()
    }

    /// The expiry of the entry for `ip`.
    pub(crate) fn expiry_of(&self, ip: IpAddr) -> Option<Instant> {
        self.entries
            .iter()
            .find(|(p, _)| *p == ip)
            .map(|(_, exp)| *exp)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
