//! Relay sockets: binding one UDP socket per allocation on the relay IP of the requested family,
//! on a free port of the configured range (random start, linear probe), buffers raised; and
//! holding open the ports that EVEN-PORT reserves (RFC 8656 section 7.2) until the Allocate
//! with the RESERVATION-TOKEN claims them, or the reservation expires.
//!
//! The ports the relay's own sockets hold are marked ([`PortClaim`]): a probe passes over them
//! without a `bind`, so that a range the relay has used up answers 508 at the cost of a scan
//! of the marks, not of a failed `bind` per port (which, at 200 refused Allocates a second,
//! kept a worker busy).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rand::Rng;
use relay_proto::{AddressFamily, BindError, RESERVATION_LIFETIME};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::set_buffers;

/// How many ports not marked as the relay's own to try binding before answering 508
/// Insufficient Capacity (others may hold ports of the range).
const MAX_PROBES: u32 = 512;

/// Reserved ports held open at most (one socket each, for at most `RESERVATION_LIFETIME`):
/// beyond, an Allocate with EVEN-PORT's R bit gets 508.
const MAX_HELD: usize = 1024;

/// Reserved ports held open, by address, with when their reservation ends. Shared by every
/// shard: the Allocate that claims one may reach another shard.
type HeldPorts = HashMap<SocketAddr, (RelaySocket, Instant)>;

/// A relay socket, and the mark of its port, cleared when both are dropped.
#[derive(Debug)]
pub(crate) struct RelaySocket {
    pub(crate) socket: Socket,
    pub(crate) claim: PortClaim,
}

/// The ports of the range that the relay's sockets hold, one bit each, per family (the relay
/// IPs of the two families have ports of their own). Shared by every shard.
#[derive(Debug)]
struct PortMarks {
    low: u16,
    /// IPv4's, then IPv6's.
    families: [Vec<AtomicU64>; 2],
}

impl PortMarks {
    fn new(low: u16, high: u16) -> Self {
        let words = (usize::from(high - low) + 1).div_ceil(64);
        let family = || (0..words).map(|_| AtomicU64::new(0)).collect();
        Self {
            low,
            families: [family(), family()],
        }
    }

    /// The word and bit of `port` (in the range) of `ip`'s family.
    fn bit(&self, ip: IpAddr, port: u16) -> (&AtomicU64, u64) {
        let family = &self.families[usize::from(ip.is_ipv6())];
        let n = usize::from(port - self.low);
        (&family[n / 64], 1 << (n % 64))
    }

    fn is_marked(&self, ip: IpAddr, port: u16) -> bool {
        let (word, bit) = self.bit(ip, port);
        word.load(Ordering::Relaxed) & bit != 0
    }
}

/// The mark of one port a relay socket holds; dropping it clears the mark.
#[derive(Debug)]
pub(crate) struct PortClaim {
    marks: Arc<PortMarks>,
    ip: IpAddr,
    port: u16,
}

impl PortClaim {
    fn new(marks: &Arc<PortMarks>, ip: IpAddr, port: u16) -> Self {
        let (word, bit) = marks.bit(ip, port);
        word.fetch_or(bit, Ordering::Relaxed);
        Self {
            marks: Arc::clone(marks),
            ip,
            port,
        }
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let (word, bit) = self.marks.bit(self.ip, self.port);
        word.fetch_and(!bit, Ordering::Relaxed);
    }
}

/// Where relay sockets are bound.
#[derive(Debug, Clone)]
pub(crate) struct RelayPorts {
    /// The IPv4 relay address, if any.
    v4: Option<IpAddr>,
    /// The IPv6 relay address, if any.
    v6: Option<IpAddr>,
    low: u16,
    high: u16,
    buffer: usize,
    held: Arc<Mutex<HeldPorts>>,
    marks: Arc<PortMarks>,
}

impl RelayPorts {
    pub(crate) fn new(ips: &[IpAddr], low: u16, high: u16, buffer: usize) -> Self {
        Self {
            v4: ips.iter().copied().find(IpAddr::is_ipv4),
            v6: ips.iter().copied().find(IpAddr::is_ipv6),
            low,
            high,
            buffer,
            held: Arc::default(),
            marks: Arc::new(PortMarks::new(low, high)),
        }
    }

    /// Binds a relay socket of `family` on a free port (an even one if `even_port`; with
    /// `reserve_next`, an even one whose next port is free too, which is held open for the
    /// reservation, or `NoCapacity`).
    pub(crate) fn bind(
        &self,
        family: AddressFamily,
        even_port: bool,
        reserve_next: bool,
    ) -> Result<RelaySocket, BindError> {
        let ip = match family {
            AddressFamily::V4 => self.v4,
            AddressFamily::V6 => self.v6,
        }
        .ok_or(BindError::FamilyNotSupported)?;
        let now = Instant::now();
        let mut held = self.held();
        // Reservations that ended give their ports back before a port is looked for.
        release_ended(&mut held, now);
        if reserve_next {
            if held.len() >= MAX_HELD {
                tracing::debug!("too many reserved ports held open");
                return Err(BindError::NoCapacity);
            }
            let (socket, next) = self.probe(ip, true, true, |port| {
                let Some(even) = self.try_port(ip, port)? else {
                    return Ok(None);
                };
                Ok(self.try_port(ip, port + 1)?.map(|next| (even, next)))
            })?;
            let next_addr = SocketAddr::new(ip, next.claim.port);
            held.insert(next_addr, (next, now + RESERVATION_LIFETIME));
            return Ok(socket);
        }
        drop(held);
        self.probe(ip, even_port, false, |port| self.try_port(ip, port))
    }

    /// Tries the ports of the range that no relay socket of `ip`'s family holds (with
    /// `need_next`, whose next port is in the range and not held either), from a random one on
    /// (only even ones if `even`), at most [`MAX_PROBES`], until `take` gives a value (`None`:
    /// the port is taken, try the next).
    fn probe<T>(
        &self,
        ip: IpAddr,
        even: bool,
        need_next: bool,
        mut take: impl FnMut(u16) -> Result<Option<T>, BindError>,
    ) -> Result<T, BindError> {
        for port in self
            .candidates(ip, even, need_next)
            .take(MAX_PROBES as usize)
        {
            if let Some(taken) = take(port)? {
                return Ok(taken);
            }
        }
        Err(BindError::NoCapacity)
    }

    /// The ports [`Self::probe`] tries, in its order (no `bind` needed to pass over the
    /// relay's own).
    fn candidates(&self, ip: IpAddr, even: bool, need_next: bool) -> impl Iterator<Item = u16> {
        let step = if even { 2 } else { 1 };
        let first = u32::from(self.low) + u32::from(even && self.low % 2 == 1);
        let last = u32::from(self.high).saturating_sub(u32::from(need_next));
        let count = if last < first {
            0
        } else {
            (last - first) / step + 1
        };
        let start = if count == 0 {
            0
        } else {
            rand::rng().random_range(0..count)
        };
        let marks = Arc::clone(&self.marks);
        (0..count)
            .filter_map(move |k| u16::try_from(first + step * ((start + k) % count)).ok())
            .filter(move |&port| {
                let held = |port| marks.is_marked(ip, port);
                !(held(port) || need_next && held(port + 1))
            })
    }

    /// A socket bound on `ip:port`, `None` if the port is in use (or not ours to bind), or
    /// `NoCapacity` (logged) on any other failure.
    fn try_port(&self, ip: IpAddr, port: u16) -> Result<Option<RelaySocket>, BindError> {
        match self.try_bind(SocketAddr::new(ip, port)) {
            Ok(socket) => Ok(Some(socket)),
            Err(e) if is_taken(&e) => Ok(None),
            Err(e) => Err(cannot_bind(&e, ip, port)),
        }
    }

    /// Binds exactly `addr` (a reserved port): the socket held open for it when there is one;
    /// otherwise it must be on a relay IP and inside the range; `NoCapacity` if it is not, or
    /// if anything holds it.
    pub(crate) fn bind_exact(&self, addr: SocketAddr) -> Result<RelaySocket, BindError> {
        if let Some((socket, _)) = self.held().remove(&addr) {
            return Ok(socket);
        }
        let ours = Some(addr.ip()) == self.v4 || Some(addr.ip()) == self.v6;
        if !ours || !(self.low..=self.high).contains(&addr.port()) {
            tracing::debug!(%addr, "reserved relay address outside the relay IPs or ports");
            return Err(BindError::NoCapacity);
        }
        self.try_bind(addr).map_err(|e| {
            tracing::debug!(%addr, error = %e, "reserved relay port is taken");
            BindError::NoCapacity
        })
    }

    /// Lets go of the ports of the reservations that ended by `now` (each worker's publish
    /// tick: a relay that handles no Allocate does not keep them open past their 30 s).
    pub(crate) fn release_ended(&self, now: Instant) {
        release_ended(&mut self.held(), now);
    }

    fn held(&self) -> MutexGuard<'_, HeldPorts> {
        // A poisoned lock only means another shard panicked mid-insert of a plain entry.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A socket bound on `addr` (in the range), its port marked.
    fn try_bind(&self, addr: SocketAddr) -> io::Result<RelaySocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Deliberately no SO_REUSEADDR/SO_REUSEPORT: a relay port belongs to one allocation.
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        set_buffers(&socket, self.buffer);
        let claim = PortClaim::new(&self.marks, addr.ip(), addr.port());
        Ok(RelaySocket { socket, claim })
    }
}

/// Closes the held ports whose reservation ended by `now`.
fn release_ended(held: &mut HeldPorts, now: Instant) {
    held.retain(|_, (_, until)| *until > now);
}

/// The port is in use (or not ours to bind): try the next.
fn is_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// Any other bind failure: logged, and 508 for the client.
fn cannot_bind(e: &io::Error, ip: IpAddr, port: u16) -> BindError {
    tracing::warn!(error = %e, %ip, port, "cannot bind relay socket");
    BindError::NoCapacity
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relay ports `low..=high` on 127.0.0.1, default buffers.
    fn on_loopback(low: u16, high: u16) -> RelayPorts {
        RelayPorts::new(&["127.0.0.1".parse().unwrap()], low, high, 0)
    }

    /// The local port of a bound relay socket.
    fn port_of(s: &RelaySocket) -> u16 {
        let port = s.socket.local_addr().unwrap().as_socket().unwrap().port();
        assert_eq!(port, s.claim.port, "the mark is the socket's port");
        port
    }

    /// `n` IPv4 relay sockets (`even`: on even ports, reserving none), all of which must bind.
    fn bind_v4(ports: &RelayPorts, n: usize, even: bool) -> Vec<RelaySocket> {
        (0..n)
            .map(|_| ports.bind(AddressFamily::V4, even, false).unwrap())
            .collect()
    }

    /// A `bind` or `bind_exact` was refused for lack of a port: 508 for the client.
    #[track_caller]
    fn assert_no_capacity(bound: Result<RelaySocket, BindError>) {
        assert_eq!(bound.err(), Some(BindError::NoCapacity));
    }

    #[test]
    fn binds_in_range_and_refuses_missing_family() {
        let ports = on_loopback(40000, 40100);
        let held = bind_v4(&ports, 20, false);
        for s in &held {
            assert!((40000..=40100).contains(&port_of(s)));
        }
        let even = ports.bind(AddressFamily::V4, true, false).unwrap();
        assert_eq!(port_of(&even) % 2, 0);
        assert_eq!(
            ports.bind(AddressFamily::V6, false, false).err(),
            Some(BindError::FamilyNotSupported)
        );
    }

    #[test]
    fn binds_exactly_the_reserved_address_or_refuses() {
        let ports = on_loopback(40300, 40310);
        let addr: SocketAddr = "127.0.0.1:40305".parse().unwrap();
        let held = ports.bind_exact(addr).expect("a free reserved port");
        assert_eq!(port_of(&held), addr.port());
        assert_eq!(
            ports.bind_exact(addr).err(),
            Some(BindError::NoCapacity),
            "taken"
        );
        for outside in ["127.0.0.1:40311", "127.0.0.2:40306", "[::1]:40306"] {
            assert_eq!(
                ports.bind_exact(outside.parse().unwrap()).err(),
                Some(BindError::NoCapacity),
                "{outside}"
            );
        }
    }

    #[test]
    fn a_reserved_next_port_is_held_for_its_reservation_only() {
        // Two pairs: 40400/40401 and 40402/40403.
        let ports = on_loopback(40400, 40403);
        let rtp = ports.bind(AddressFamily::V4, true, true).unwrap();
        let even = port_of(&rtp);
        assert_eq!(even % 2, 0);
        let reserved = SocketAddr::from(([127, 0, 0, 1], even + 1));
        // Ordinary allocations take the other pair, never the reserved port...
        let others = bind_v4(&ports, 2, false);
        let taken: Vec<u16> = others.iter().map(port_of).collect();
        assert!(!taken.contains(&(even + 1)), "{taken:?} took {reserved}");
        assert_no_capacity(ports.bind(AddressFamily::V4, false, false));
        // ...which goes to the Allocate that claims it, once.
        let rtcp = ports.bind_exact(reserved).expect("the held socket");
        assert_eq!(port_of(&rtcp), even + 1);
        assert_no_capacity(ports.bind_exact(reserved));
        // No even port with a free next one left: the R bit gets 508.
        drop(rtp);
        assert_no_capacity(ports.bind(AddressFamily::V4, true, true));
    }

    #[test]
    fn a_reservation_that_ended_lets_its_port_go_without_another_allocate() {
        let ports = on_loopback(40420, 40423);
        let rtp = ports.bind(AddressFamily::V4, true, true).unwrap();
        let reserved = SocketAddr::from(([127, 0, 0, 1], port_of(&rtp) + 1));
        let free = || std::net::UdpSocket::bind(reserved).is_ok();
        assert!(!free(), "held for its reservation");
        ports.release_ended(Instant::now());
        assert!(!free(), "still held within its 30 s");
        ports.release_ended(Instant::now() + RESERVATION_LIFETIME);
        assert!(free(), "let go once the reservation ended");
    }

    #[test]
    fn even_port_gives_even_ports_only_when_the_probe_wraps() {
        // An odd number of ports (three even ones): a probe that wraps past the top must not
        // land on an odd port.
        let ports = on_loopback(40500, 40504);
        for _ in 0..10 {
            let even = bind_v4(&ports, 3, true);
            let mut taken: Vec<u16> = even.iter().map(port_of).collect();
            taken.sort_unstable();
            assert_eq!(taken, [40500, 40502, 40504]);
            assert_no_capacity(ports.bind(AddressFamily::V4, true, false));
        }
    }

    /// The ports the relay holds are passed over without a `bind`: a range it has used up has
    /// no candidates at all; a port another process holds is still tried (and passed over);
    /// a port let go is a candidate again.
    #[test]
    fn ports_the_relay_holds_are_not_tried_again() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let ports = on_loopback(40600, 40609);
        let other = std::net::UdpSocket::bind("127.0.0.1:40605").unwrap();
        let mut held = bind_v4(&ports, 9, false);
        assert_eq!(
            ports.candidates(loopback, false, false).collect::<Vec<_>>(),
            [40605]
        );
        assert_no_capacity(ports.bind(AddressFamily::V4, false, false));
        let freed = port_of(&held.pop().unwrap());
        assert_eq!(
            ports.candidates(loopback, false, false).count(),
            2,
            "{freed} and 40605"
        );
        assert_eq!(
            port_of(&ports.bind(AddressFamily::V4, false, false).unwrap()),
            freed
        );
        drop(other);
        // The other family's ports are its own.
        let v6 = "::1".parse().unwrap();
        assert_eq!(ports.candidates(v6, false, false).count(), 10);
        // A reservation needs the next port free of the relay's sockets too.
        drop(held);
        let odd: Vec<RelaySocket> = [40601, 40603, 40607, 40609]
            .into_iter()
            .map(|port| ports.bind_exact(SocketAddr::new(loopback, port)).unwrap())
            .collect();
        assert_eq!(
            ports.candidates(loopback, true, true).collect::<Vec<_>>(),
            [40604]
        );
        drop(odd);
        assert_eq!(ports.candidates(loopback, true, true).count(), 5);
    }

    #[test]
    fn full_range_is_no_capacity() {
        let ports = on_loopback(40200, 40203);
        let held: Vec<_> = (0..4)
            .filter_map(|_| ports.bind(AddressFamily::V4, false, false).ok())
            .collect();
        assert!(held.len() <= 4);
        assert_no_capacity(ports.bind(AddressFamily::V4, false, false));
    }
}
