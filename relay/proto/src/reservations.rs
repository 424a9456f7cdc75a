//! `Reservations`: the RESERVATION-TOKENs of EVEN-PORT with the R bit (RFC 8656 section 7.2),
//! one table for every shard (it lives in `SharedQuotas`), because the Allocate that claims a
//! reservation may come from another source port and so reach another shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a RESERVATION-TOKEN stays valid (RFC 8656 suggests about 30 s), and so how long the
/// I/O layer holds the reserved port open (`Output::BindRelay::reserve_next`).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Bound on outstanding RESERVATION-TOKENs of the whole relay (each about 64 bytes).
const MAX_RESERVATIONS: usize = 16_384;

/// Token -> (reserved relay address, valid until). The I/O layer holds the port open until
/// then; if it could not (or something else took it), the Allocate that claims it gets 508.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// A `Mutex`: touched only by Allocates with EVEN-PORT (R bit) or RESERVATION-TOKEN,
    /// never on the relay path.
    map: Mutex<HashMap<[u8; 8], (SocketAddr, Instant)>>,
}

impl Reservations {
    /// Remember `address` under `token` until `until`. At the bound, expired reservations are
    /// dropped first, then all of them.
    pub(crate) fn reserve(
        &self,
        token: [u8; 8],
        address: SocketAddr,
        now: Instant,
        until: Instant,
    ) {
        let mut map = self.lock();
        if map.len() >= MAX_RESERVATIONS {
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= MAX_RESERVATIONS {
                map.clear();
            }
        }
        map.insert(token, (address, until));
    }

    /// The address reserved under `token`, if it has not expired (single use).
    pub(crate) fn take(&self, token: [u8; 8], now: Instant) -> Option<SocketAddr> {
        let (address, until) = self.lock().remove(&token)?;
        (now < until).then_some(address)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 8], (SocketAddr, Instant)>> {
        // A poisoned lock only means another shard panicked mid-insert of a plain entry.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
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
        r.reserve([1; 8], addr, t0, t0 + Duration::from_secs(30));
        assert_eq!(r.take([1; 8], t0), Some(addr));
        assert_eq!(r.take([1; 8], t0), None);
        r.reserve([2; 8], addr, t0, t0 + Duration::from_secs(30));
        assert_eq!(r.take([2; 8], t0 + Duration::from_secs(30)), None);
    }
}
