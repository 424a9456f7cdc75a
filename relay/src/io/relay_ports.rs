//! Relay sockets: binding one UDP socket per allocation on the relay IP of the requested family,
//! on a free port of the configured range (random start, linear probe), buffers raised; and
//! holding open the ports that EVEN-PORT reserves (RFC 8656 section 7.2) until the Allocate
//! with the RESERVATION-TOKEN claims them, or the reservation expires.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rand::Rng;
use relay_proto::{AddressFamily, BindError, RESERVATION_LIFETIME};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::set_buffers;

/// How many ports to try before answering 508 Insufficient Capacity.
const MAX_PROBES: u32 = 512;

/// Reserved ports held open at most (one socket each, for at most `RESERVATION_LIFETIME`):
/// beyond, an Allocate with EVEN-PORT's R bit gets 508.
const MAX_HELD: usize = 1024;

/// Reserved ports held open, by address, with when their reservation ends. Shared by every
/// shard: the Allocate that claims one may reach another shard.
type HeldPorts = HashMap<SocketAddr, (Socket, Instant)>;

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
    ) -> Result<Socket, BindError> {
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
            let (socket, next) = self.probe(true, true, |port| {
                let Some(even) = self.try_port(ip, port)? else {
                    return Ok(None);
                };
                Ok(self.try_port(ip, port + 1)?.map(|next| (even, next)))
            })?;
            let next_addr = next
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or(BindError::NoCapacity)?;
            held.insert(next_addr, (next, now + RESERVATION_LIFETIME));
            return Ok(socket);
        }
        drop(held);
        self.probe(even_port, false, |port| self.try_port(ip, port))
    }

    /// Tries the ports of the range from a random one on (only even ones if `even`; with
    /// `need_next`, only those whose next port is in the range too), at most [`MAX_PROBES`],
    /// until `take` gives a value (`None`: the port is taken, try the next).
    fn probe<T>(
        &self,
        even: bool,
        need_next: bool,
        mut take: impl FnMut(u16) -> Result<Option<T>, BindError>,
    ) -> Result<T, BindError> {
        let step = if even { 2 } else { 1 };
        let first = u32::from(self.low) + u32::from(even && self.low % 2 == 1);
        let last = u32::from(self.high) - u32::from(need_next);
        if last < first {
            return Err(BindError::NoCapacity);
        }
        let count = (last - first) / step + 1;
        let start = rand::rng().random_range(0..count);
        for k in 0..MAX_PROBES.min(count) {
            let port = first + step * ((start + k) % count);
            let port = u16::try_from(port).map_err(|_| BindError::NoCapacity)?;
            if let Some(taken) = take(port)? {
                return Ok(taken);
            }
        }
        Err(BindError::NoCapacity)
    }

    /// A socket bound on `ip:port`, `None` if the port is in use (or not ours to bind), or
    /// `NoCapacity` (logged) on any other failure.
    fn try_port(&self, ip: IpAddr, port: u16) -> Result<Option<Socket>, BindError> {
        match self.try_bind(SocketAddr::new(ip, port)) {
            Ok(socket) => Ok(Some(socket)),
            Err(e) if is_taken(&e) => Ok(None),
            Err(e) => Err(cannot_bind(&e, ip, port)),
        }
    }

    /// Binds exactly `addr` (a reserved port): the socket held open for it when there is one;
    /// otherwise it must be on a relay IP and inside the range; `NoCapacity` if it is not, or
    /// if anything holds it.
    pub(crate) fn bind_exact(&self, addr: SocketAddr) -> Result<Socket, BindError> {
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

    fn try_bind(&self, addr: SocketAddr) -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Deliberately no SO_REUSEADDR/SO_REUSEPORT: a relay port belongs to one allocation.
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        set_buffers(&socket, self.buffer);
        Ok(socket)
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
    fn port_of(s: &Socket) -> u16 {
        s.local_addr().unwrap().as_socket().unwrap().port()
    }

    /// `n` IPv4 relay sockets (`even`: on even ports, reserving none), all of which must bind.
    fn bind_v4(ports: &RelayPorts, n: usize, even: bool) -> Vec<Socket> {
        (0..n)
            .map(|_| ports.bind(AddressFamily::V4, even, false).unwrap())
            .collect()
    }

    /// A `bind` or `bind_exact` was refused for lack of a port: 508 for the client.
    #[track_caller]
    fn assert_no_capacity(bound: Result<Socket, BindError>) {
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
        assert_eq!(held.local_addr().unwrap().as_socket(), Some(addr));
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
