//! Port-clash detection. The listening sockets use SO_REUSEPORT (one per worker on the same
//! port), and Linux lets any later socket of the same user with SO_REUSEPORT join such a
//! group, and an earlier one's group be joined by us: the relay would then start
//! "successfully" on a port another process holds, and share its traffic. So before the
//! group is created, each port is bound once without SO_REUSEPORT (and for TCP, put into
//! listening state): that fails with `AddrInUse` if anything else holds the port, whatever
//! its options. The probe is closed right away; a socket that grabs the port in the instant
//! between the probe and our first bind is not detected (nor is one of the same user that
//! joins our group later: the kernel allows it).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Checks that nothing else holds UDP `addr`; returns the address (port 0 resolved to a port
/// that was free).
pub(crate) fn probe_udp(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(|e| explain(e, "udp"))?;
    bound_addr(&socket, addr)
}

/// Checks that nothing else holds TCP `addr` (SO_REUSEADDR only, so connections of an earlier
/// run in TIME_WAIT do not count); returns the address (port 0 resolved).
pub(crate) fn probe_tcp(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(|e| explain(e, "tcp"))?;
    socket.listen(1).map_err(|e| explain(e, "tcp"))?;
    bound_addr(&socket, addr)
}

fn bound_addr(socket: &Socket, wanted: SocketAddr) -> io::Result<SocketAddr> {
    Ok(socket.local_addr()?.as_socket().unwrap_or(wanted))
}

/// `AddrInUse` with a message that says what it means here.
fn explain(e: io::Error, transport: &str) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "the {transport} port is already in use by another socket (with SO_REUSEPORT \
                 the relay would share it and lose part of the traffic): stop the other \
                 process or choose another port"
            ),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reuseport_socket(ty: Type, protocol: Protocol) -> (Socket, SocketAddr) {
        let socket = Socket::new(Domain::IPV4, ty, Some(protocol)).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        (socket, addr)
    }

    #[test]
    fn a_port_held_with_so_reuseport_is_refused() {
        let (_udp, addr) = reuseport_socket(Type::DGRAM, Protocol::UDP);
        let err = probe_udp(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");

        let (tcp, addr) = reuseport_socket(Type::STREAM, Protocol::TCP);
        tcp.listen(8).unwrap();
        assert_eq!(
            probe_tcp(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
    }

    #[test]
    fn free_ports_pass_and_port_zero_is_resolved() {
        let udp = probe_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(udp.port(), 0);
        let tcp = probe_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(tcp.port(), 0);
        // The probe is closed: the port is free again.
        probe_tcp(tcp).unwrap();
    }
}
