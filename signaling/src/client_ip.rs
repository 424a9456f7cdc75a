//! Fairness per client address: who the client is (the socket's peer, or the address a trusted
//! proxy forwarded), how many WebSockets it holds, and how fast it joins.
//!
//! An address is tracked while it holds a connection or a session, and after that while its
//! join-rate bucket is not full again ([`MAX_LINGERING`] such addresses at most): an address
//! that joins, leaves and disconnects in a loop meets its join rate as one that stays does.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;

use crate::rate_limit::TokenBucket;

pub use relay_proto::IpNet;

/// `ip`, with an IPv4-mapped IPv6 address as the IPv4 address it maps (so `10.0.0.0/8` matches
/// `::ffff:10.1.2.3`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the socket's peer, unless that peer is a trusted proxy, in which case
/// the nearest untrusted address it forwarded (`X-Forwarded-For`, else `Forwarded: for=`).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(canonical(ip)));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| parse_forwarded_addr(a.trim()))
        .collect();
    let forwarded = if forwarded.is_empty() {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|part| {
                let (key, value) = part.trim().split_once('=')?;
                key.eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_addr(value.trim_matches('"')))?
            })
            .collect()
    } else {
        forwarded
    };
    // Walk from the nearest hop outwards; the first address we do not trust is the client.
    forwarded
        .into_iter()
        .rev()
        .map(canonical)
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:5678` or `::1`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// The per-address limits.
#[derive(Debug, Clone, Copy)]
pub struct IpLimits {
    pub max_connections: usize,
    pub join_rate: f64,
    pub join_burst: f64,
    /// Sessions (attached or parked) an address may hold on this node.
    pub max_sessions: usize,
}

/// Addresses with neither a connection nor a session kept at most for their join bucket to
/// fill again (about 64 bytes each): past it, the one unused the longest is forgotten.
pub const MAX_LINGERING: usize = 65_536;

#[derive(Debug)]
struct Entry {
    connections: usize,
    sessions: usize,
    joins: TokenBucket,
    /// Counts the times the entry fell unused: names its latest place in [`Entries::lingering`].
    unused_count: u64,
}

impl Entry {
    fn unused(&self) -> bool {
        self.connections == 0 && self.sessions == 0
    }

    /// Whether its join bucket is full at `now`: nothing left to remember of the address.
    fn bucket_full(&self, now: Instant, limits: IpLimits) -> bool {
        self.joins
            .available(now, limits.join_rate, limits.join_burst)
            >= limits.join_burst
    }
}

/// The entries, and the unused ones still kept, in the order they fell unused.
#[derive(Debug, Default)]
struct Entries {
    by_ip: HashMap<IpAddr, Entry>,
    /// `(address, its unused_count then)`: a place whose count is stale (the address was used
    /// again since) is skipped.
    lingering: VecDeque<(IpAddr, u64)>,
}

impl Entries {
    /// Called when `ip`'s connection or session ends: an entry left unused goes, or, while its
    /// join bucket is not full at `now`, is kept (within [`MAX_LINGERING`]).
    fn released(&mut self, ip: IpAddr, now: Instant, limits: IpLimits) {
        let Some(entry) = self.by_ip.get_mut(&ip) else {
            return;
        };
        if !entry.unused() {
            return;
        }
        if entry.bucket_full(now, limits) {
            self.by_ip.remove(&ip);
            return;
        }
        entry.unused_count += 1;
        self.lingering.push_back((ip, entry.unused_count));
        self.forget_lingering(now, limits);
    }

    /// Forgets the unused entries whose join bucket is full again, from the one unused the
    /// longest until one that is not; and, beyond [`MAX_LINGERING`], the longest unused.
    fn forget_lingering(&mut self, now: Instant, limits: IpLimits) {
        while let Some(&(ip, count)) = self.lingering.front() {
            let over = self.lingering.len() > MAX_LINGERING;
            let entry = self.by_ip.get(&ip);
            let kept = entry.is_some_and(|e| e.unused() && e.unused_count == count);
            let full = entry.is_some_and(|e| e.bucket_full(now, limits));
            if kept && !full && !over {
                return;
            }
            self.lingering.pop_front();
            if kept {
                self.by_ip.remove(&ip);
            }
        }
    }
}

/// Open connections, sessions and join buckets per client address (IPv6: per /64).
#[derive(Debug)]
pub struct IpTable {
    /// Replaced by SIGHUP ([`IpTable::set_limits`]).
    limits: std::sync::RwLock<IpLimits>,
    entries: Mutex<Entries>,
}

/// One connection's place in the table; dropping it gives the place back.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<IpTable>,
    /// The address's key in the table (IPv6: its /64).
    ip: IpAddr,
}

impl IpSlot {
    /// A place for one more session of this address, or `None` when it holds its maximum.
    /// The hub keeps the ticket with the session: dropping it (the session ended) gives the
    /// place back.
    pub fn try_session(&self) -> Option<SessionTicket> {
        let mut entries = self.table.lock();
        let entry = entries.by_ip.get_mut(&self.ip)?;
        if entry.sessions >= self.table.limits().max_sessions {
            return None;
        }
        entry.sessions += 1;
        Some(SessionTicket {
            table: Arc::clone(&self.table),
            ip: self.ip,
        })
    }

    /// Takes one join from the address's bucket; `false` means it joins too fast.
    pub fn try_join(&self, now: Instant) -> bool {
        let mut entries = self.table.lock();
        let limits = self.table.limits();
        entries
            .by_ip
            .get_mut(&self.ip)
            .is_some_and(|e| e.joins.try_take(now, limits.join_rate, limits.join_burst))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let limits = self.table.limits();
        let mut entries = self.table.lock();
        if let Some(entry) = entries.by_ip.get_mut(&self.ip) {
            entry.connections -= 1;
            entries.released(self.ip, Instant::now(), limits);
        }
    }
}

/// One session's place among its address's (see [`IpSlot::try_session`]).
#[derive(Debug)]
pub struct SessionTicket {
    table: Arc<IpTable>,
    ip: IpAddr,
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        let limits = self.table.limits();
        let mut entries = self.table.lock();
        if let Some(entry) = entries.by_ip.get_mut(&self.ip) {
            entry.sessions -= 1;
            entries.released(self.ip, Instant::now(), limits);
        }
    }
}

impl IpTable {
    /// An empty table.
    pub fn new(limits: IpLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: std::sync::RwLock::new(limits),
            entries: Mutex::new(Entries::default()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> IpLimits {
        *self
            .limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New limits (SIGHUP) for every address from now on: an address over a lowered limit
    /// keeps what it holds and gets no more.
    pub fn set_limits(&self, limits: IpLimits) {
        *self
            .limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection slot for `ip`, or `None` when the address holds its maximum. An IPv6
    /// address counts with its /64 (one subscriber's prefix: a client picks any address in it).
    pub fn connect(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<IpSlot> {
        let ip = relay_proto::rate_key(ip);
        let limits = self.limits();
        let mut entries = self.lock();
        entries.forget_lingering(now, limits);
        let entry = entries.by_ip.entry(ip).or_insert_with(|| Entry {
            connections: 0,
            sessions: 0,
            joins: TokenBucket::new(limits.join_burst, now),
            unused_count: 0,
        });
        if entry.connections >= limits.max_connections {
            return None;
        }
        entry.connections += 1;
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Addresses tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().by_ip.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// A table allowing `max_connections` and `max_sessions` per address, joins at
    /// `join_rate` (burst `join_burst`).
    fn table(
        max_connections: usize,
        join_rate: f64,
        join_burst: f64,
        max_sessions: usize,
    ) -> Arc<IpTable> {
        IpTable::new(IpLimits {
            max_connections,
            join_rate,
            join_burst,
            max_sessions,
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.5, 10.0.0.7")]);
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            "203.0.113.5".parse::<IpAddr>().unwrap(),
            "the nearest untrusted hop"
        );
        assert_eq!(
            client_ip(proxy, &xff, &[]),
            proxy.ip(),
            "no trust: the socket"
        );
        let fwd = headers(&[("forwarded", r#"for="[2001:db8::1]:4711";proto=https"#)]);
        assert_eq!(
            client_ip(proxy, &fwd, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let direct: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(client_ip(direct, &xff, &trusted), direct.ip());
        assert!(
            "::ffff:10.1.2.3"
                .parse::<IpAddr>()
                .is_ok_and(|ip| trusted[0].contains(canonical(ip)))
        );
        assert!("300.0.0.0/8".parse::<IpNet>().is_err());
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }

    #[test]
    fn connections_and_joins_are_bounded_per_address() {
        let table = table(2, 1.0, 2.0, 3);
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = table.connect(ip, now).unwrap();
        let b = table.connect(ip, now).unwrap();
        assert!(table.connect(ip, now).is_none());
        assert!(table.connect("192.0.2.2".parse().unwrap(), now).is_some());
        // IPv6 by /64: another address of the prefix is the same client, another prefix not.
        let v6 = table.connect("2001:db8:0:1::1".parse().unwrap(), now);
        let v6b = table.connect("2001:db8:0:1::2".parse().unwrap(), now);
        assert!(
            table
                .connect("2001:db8:0:1::ffff".parse().unwrap(), now)
                .is_none()
        );
        assert!(
            table
                .connect("2001:db8:0:2::1".parse().unwrap(), now)
                .is_some()
        );
        drop((v6, v6b));
        assert!(a.try_join(now) && b.try_join(now));
        assert!(!a.try_join(now), "burst of 2 spent");
        drop(a);
        assert!(table.connect(ip, now).is_some(), "a slot came back");
        drop(b);
        assert_eq!(table.len(), 1, "kept while its join bucket is not full");
        let later = now + std::time::Duration::from_secs(3);
        table.connect("192.0.2.3".parse().unwrap(), later);
        assert!(
            table.is_empty(),
            "forgotten once full, with their last connection"
        );
    }

    /// An address that joins, leaves and disconnects in a loop meets its join rate: its entry,
    /// and so its bucket, outlives its connections until the bucket is full again.
    #[test]
    fn joins_from_connections_that_come_and_go_meet_the_join_rate() {
        let table = table(10, 0.5, 4.0, 10);
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let joined = (0..10)
            .filter(|_| table.connect(ip, now).unwrap().try_join(now))
            .count();
        assert_eq!(joined, 4, "the burst, then nothing");
        let later = now + std::time::Duration::from_secs(2);
        assert!(
            table.connect(ip, later).unwrap().try_join(later),
            "one token in 2 s"
        );
        assert!(!table.connect(ip, later).unwrap().try_join(later));
    }

    /// The addresses kept only for their buckets are bounded: beyond [`MAX_LINGERING`], the one
    /// unused the longest is forgotten.
    #[test]
    fn addresses_kept_for_their_buckets_are_bounded() {
        let table = table(1, 0.001, 1.0, 1);
        let now = Instant::now();
        let address = |n: usize| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n as u32));
        for n in 0..MAX_LINGERING + 100 {
            assert!(table.connect(address(n), now).unwrap().try_join(now));
        }
        assert_eq!(table.len(), MAX_LINGERING);
        // The first ones were forgotten (past the bound: a full bucket again), the last are
        // still kept.
        assert!(table.connect(address(0), now).unwrap().try_join(now));
        let last = address(MAX_LINGERING + 99);
        assert!(!table.connect(last, now).unwrap().try_join(now));
    }

    #[test]
    fn sessions_are_bounded_per_address_and_outlive_their_connection() {
        let table = table(10, 100.0, 100.0, 2);
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let slot = table.connect(ip, now).unwrap();
        let first = slot.try_session().unwrap();
        let second = slot.try_session().unwrap();
        assert!(slot.try_session().is_none(), "two sessions at most");
        drop(slot);
        assert_eq!(table.len(), 1, "parked sessions keep the address's entry");
        drop(first);
        let slot = table.connect(ip, now).unwrap();
        assert!(
            slot.try_session().is_some(),
            "an ended session gives its place back"
        );
        drop(second);
        drop(slot);
        assert!(table.is_empty(), "no join taken: nothing to keep");
    }
}
