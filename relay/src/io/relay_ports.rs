//! Relay sockets: binding one UDP socket per allocation on the relay IP of the requested family,
//! on a free port of the configured range (random start, linear probe), buffers raised.

use std::io;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use relay_proto::{AddressFamily, BindError};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::set_buffers;

/// How many ports to try before answering 508 Insufficient Capacity.
const MAX_PROBES: u32 = 512;

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
}

impl RelayPorts {
    pub(crate) fn new(ips: &[IpAddr], low: u16, high: u16, buffer: usize) -> Self {
        Self {
            v4: ips.iter().copied().find(IpAddr::is_ipv4),
            v6: ips.iter().copied().find(IpAddr::is_ipv6),
            low,
            high,
            buffer,
        }
    }

    /// Binds a relay socket of `family` on a free port (an even one if `even_port`).
    pub(crate) fn bind(&self, family: AddressFamily, even_port: bool) -> Result<Socket, BindError> {
        let ip = match family {
            AddressFamily::V4 => self.v4,
            AddressFamily::V6 => self.v6,
        }
        .ok_or(BindError::FamilyNotSupported)?;
        let span = u32::from(self.high - self.low) + 1;
        let start = rand::rng().random_range(0..span);
        let step = if even_port { 2 } else { 1 };
        let mut offset = start;
        if even_port && (u32::from(self.low) + offset) % 2 == 1 {
            offset += 1;
        }
        for _ in 0..MAX_PROBES.min(span) {
            let port = u16::try_from(u32::from(self.low) + offset % span).unwrap_or(self.low);
            match self.try_bind(SocketAddr::new(ip, port)) {
                Ok(socket) => return Ok(socket),
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        || e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => {
                    tracing::warn!(error = %e, %ip, port, "cannot bind relay socket");
                    return Err(BindError::NoCapacity);
                }
            }
            offset += step;
        }
        Err(BindError::NoCapacity)
    }

    /// Binds exactly `addr` (a reserved port): it must be on a relay IP and inside the range;
    /// `NoCapacity` if it is not, or if anything holds it.
    pub(crate) fn bind_exact(&self, addr: SocketAddr) -> Result<Socket, BindError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_in_range_and_refuses_missing_family() {
        let ports = RelayPorts::new(&["127.0.0.1".parse().unwrap()], 40000, 40100, 0);
        let mut held = Vec::new();
        for _ in 0..20 {
            let s = ports.bind(AddressFamily::V4, false).unwrap();
            let port = s.local_addr().unwrap().as_socket().unwrap().port();
            assert!((40000..=40100).contains(&port));
            held.push(s);
        }
        let even = ports.bind(AddressFamily::V4, true).unwrap();
        assert_eq!(
            even.local_addr().unwrap().as_socket().unwrap().port() % 2,
            0
        );
        assert_eq!(
            ports.bind(AddressFamily::V6, false).err(),
            Some(BindError::FamilyNotSupported)
        );
    }

    #[test]
    fn binds_exactly_the_reserved_address_or_refuses() {
        let ports = RelayPorts::new(&["127.0.0.1".parse().unwrap()], 40300, 40310, 0);
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
    fn full_range_is_no_capacity() {
        let ports = RelayPorts::new(&["127.0.0.1".parse().unwrap()], 40200, 40203, 0);
        let held: Vec<_> = (0..4)
            .filter_map(|_| ports.bind(AddressFamily::V4, false).ok())
            .collect();
        assert!(held.len() <= 4);
        assert_eq!(
            ports.bind(AddressFamily::V4, false).err(),
            Some(BindError::NoCapacity)
        );
    }
}
