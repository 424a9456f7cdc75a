//! `Reservations`: the RESERVATION-TOKENs of EVEN-PORT with the R bit (RFC 8656 section 7.2),
//! one table for every shard (it lives in `SharedQuotas`), because the Allocate that claims a
//! reservation may come from another source port and so reach another shard.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a RESERVATION-TOKEN stays valid (RFC 8656 suggests about 30 s), and so how long the
/// I/O layer holds the reserved port open (`Output::BindRelay::reserve_next`).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Bound on outstanding RESERVATION-TOKENs of the whole relay (each about 100 bytes).
const MAX_RESERVATIONS: usize = 16_384;

/// Token -> reserved relay address, until its [`RESERVATION_LIFETIME`] ends. The I/O layer
/// holds the port open until then; if it could not (or something else took it), the Allocate
/// that claims it gets 508. A reservation counts against its user's `--user-quota` like an
/// allocation while it is held ([`Self::held_by`]), and so does the one an admitted Allocate
/// with EVEN-PORT (R) will make once its socket is bound (a *pledge*): Allocates of one user
/// admitted together see each other's.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// A `Mutex`: touched by Allocates only (one lookup for those without EVEN-PORT or
    /// RESERVATION-TOKEN), never on the relay path.
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_token: HashMap<[u8; 8], Reservation>,
    /// Tokens in the order they expire: every reservation lives [`RESERVATION_LIFETIME`], so
    /// that is the order they were made (the shards' clocks move forward together; a few
    /// microseconds between two shards' `now` delay an expiry by as much). A token taken
    /// meanwhile is skipped when its turn comes.
    expiry: VecDeque<(Instant, [u8; 8])>,
    /// Reservations held per user (the quota user of the Allocate that made them).
    held: HashMap<String, u32>,
    /// Reservations pledged per user: Allocates admitted with EVEN-PORT (R) whose socket is
    /// not bound yet.
    pledged: HashMap<String, u32>,
}

#[derive(Debug)]
struct Reservation {
    address: SocketAddr,
    until: Instant,
    user: String,
}

impl Table {
    /// Drops the reservations that expired by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(until, token)) = self.expiry.front() {
            if until > now {
                break;
            }
            self.expiry.pop_front();
            if self.by_token.get(&token).is_some_and(|r| r.until == until) {
                self.remove(token);
            }
        }
    }

    fn remove(&mut self, token: [u8; 8]) -> Option<Reservation> {
        let reservation = self.by_token.remove(&token)?;
        decrement(&mut self.held, &reservation.user);
        Some(reservation)
    }
}

/// One less for `user` in `counts` (an entry at zero is removed).
fn decrement(counts: &mut HashMap<String, u32>, user: &str) {
    if let Some(count) = counts.get_mut(user) {
        *count -= 1;
        if *count == 0 {
            counts.remove(user);
        }
    }
}

impl Reservations {
    /// An Allocate of `user` with EVEN-PORT (R) is admitted: its reservation counts from now
    /// on. Every pledge ends in [`Self::reserve`] or [`Self::unpledge`].
    pub(crate) fn pledge(&self, user: &str) {
        *self.lock().pledged.entry(user.to_owned()).or_default() += 1;
    }

    /// A pledge of `user` ends without a reservation: the Allocate failed, was cancelled, or
    /// got an odd port (nothing to reserve).
    pub(crate) fn unpledge(&self, user: &str) {
        decrement(&mut self.lock().pledged, user);
    }

    /// Remembers `address` under `token` for `user` until `now` + [`RESERVATION_LIFETIME`],
    /// in place of one of `user`'s pledges ([`Self::pledge`]). At the bound, once the expired
    /// ones are gone, every reservation is dropped (their claims get 508).
    pub(crate) fn reserve(&self, token: [u8; 8], address: SocketAddr, user: &str, now: Instant) {
        let mut table = self.lock();
        table.expire(now);
        decrement(&mut table.pledged, user);
        if table.by_token.len() >= MAX_RESERVATIONS {
            let pledged = std::mem::take(&mut table.pledged);
            *table = Table {
                pledged,
                ..Table::default()
            };
        }
        // Claimed tokens stay in `expiry` until their turn: keep it within the same bound.
        if table.expiry.len() >= 2 * MAX_RESERVATIONS {
            let Table {
                by_token, expiry, ..
            } = &mut *table;
            expiry.retain(|(until, token)| by_token.get(token).is_some_and(|r| r.until == *until));
        }
        // A random token drawn twice: the older reservation is gone.
        table.remove(token);
        let until = crate::server::later(now, RESERVATION_LIFETIME);
        *table.held.entry(user.to_owned()).or_default() += 1;
        table.expiry.push_back((until, token));
        table.by_token.insert(
            token,
            Reservation {
                address,
                until,
                user: user.to_owned(),
            },
        );
    }

    /// The address reserved under `token`, if it has not expired (single use).
    pub(crate) fn take(&self, token: [u8; 8], now: Instant) -> Option<SocketAddr> {
        let mut table = self.lock();
        table.expire(now);
        table.remove(token).map(|r| r.address)
    }

    /// How many reservations `user` holds or has pledged at `now`.
    pub(crate) fn held_by(&self, user: &str, now: Instant) -> u32 {
        let mut table = self.lock();
        table.expire(now);
        let count = |counts: &HashMap<String, u32>| counts.get(user).copied().unwrap_or(0);
        count(&table.held) + count(&table.pledged)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means another shard panicked mid-update of plain maps.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_token_is_single_use_and_expires() {
        let r = Reservations::default();
        let t0 = Instant::now();
        let addr: SocketAddr = "192.0.2.1:50001".parse().unwrap();
        r.reserve([1; 8], addr, "alice", t0);
        assert_eq!(r.take([1; 8], t0), Some(addr));
        assert_eq!(r.take([1; 8], t0), None);
        r.reserve([2; 8], addr, "alice", t0);
        assert_eq!(r.take([2; 8], t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn a_user_holds_a_reservation_until_it_is_claimed_or_expires() {
        let r = Reservations::default();
        let t0 = Instant::now();
        let addr: SocketAddr = "192.0.2.1:50001".parse().unwrap();
        let at = |secs| t0 + Duration::from_secs(secs);
        r.reserve([1; 8], addr, "alice", t0);
        r.reserve([3; 8], addr, "bob", at(5));
        r.reserve([2; 8], addr, "alice", at(10));
        assert_eq!(r.held_by("alice", at(10)), 2);
        assert_eq!(r.held_by("bob", at(10)), 1);
        assert_eq!(r.take([1; 8], at(11)), Some(addr));
        assert_eq!(r.held_by("alice", at(11)), 1);
        // [3] expires at 35 s, [2] at 40 s.
        assert_eq!(r.held_by("bob", at(34)), 1);
        assert_eq!(r.held_by("bob", at(35)), 0);
        assert_eq!(r.held_by("alice", at(39)), 1);
        assert_eq!(r.held_by("alice", at(40)), 0);
        let table = r.lock();
        assert!(table.by_token.is_empty() && table.expiry.is_empty() && table.held.is_empty());
    }

    #[test]
    fn a_pledge_counts_until_it_becomes_a_reservation_or_is_withdrawn() {
        let r = Reservations::default();
        let t0 = Instant::now();
        let addr: SocketAddr = "192.0.2.1:50001".parse().unwrap();
        r.pledge("alice");
        r.pledge("alice");
        assert_eq!(r.held_by("alice", t0), 2);
        r.reserve([1; 8], addr, "alice", t0);
        assert_eq!(r.held_by("alice", t0), 2);
        r.unpledge("alice");
        assert_eq!(r.held_by("alice", t0), 1);
        assert_eq!(r.take([1; 8], t0), Some(addr));
        assert_eq!(r.held_by("alice", t0), 0);
        let table = r.lock();
        assert!(table.pledged.is_empty() && table.held.is_empty());
    }
}
