//! `UdpSocket`: a non-blocking UDP socket registered with the worker's tokio reactor, received
//! from in batches through `quinn-udp` (recvmmsg, GRO where the kernel has it). Also builds the
//! SO_REUSEPORT listening sockets (one per worker on the same port). Every socket registered
//! here lets the kernel fragment: no DF bit, DONT-FRAGMENT is not honoured (see
//! `allow_fragmentation`).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

/// Datagrams per receive batch (quinn-udp's recvmmsg batch on Linux is 32).
pub(crate) const BATCH: usize = 32;

/// A UDP socket owned by one worker.
#[derive(Debug)]
pub(crate) struct UdpSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl UdpSocket {
    /// Registers `socket` (already bound) with the current tokio runtime.
    pub(crate) fn from_socket(socket: Socket, gro: bool) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // After `UdpSocketState::new`, which forces DF: undo that.
        allow_fragmentation(&socket);
        if !gro {
            // Relay sockets want one datagram per buffer: the core writes a ChannelData header
            // in front of each payload in place.
            set_udp_gro(socket.as_raw_fd(), false);
        }
        let std: std::net::UdpSocket = socket.into();
        let local = std.local_addr()?;
        let io = tokio::net::UdpSocket::from_std(std)?;
        Ok(Self { io, state, local })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until a datagram may be ready.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Receives up to `bufs.len()` datagrams without blocking; `Ok(0)` means nothing was queued.
    pub(crate) fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        match self.io.try_io(Interest::READABLE, || {
            self.state.recv(UdpSockRef::from(&self.io), bufs, meta)
        }) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

/// Sets UDP_GRO (best effort; older kernels lack it).
fn set_udp_gro(fd: RawFd, on: bool) {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, i32::from(on));
}

/// Lets the kernel fragment a datagram larger than the path MTU instead of refusing it with
/// EMSGSIZE. `UdpSocketState::new` (quinn-udp, built for QUIC, which must never fragment) sets
/// IP_MTU_DISCOVER / IPV6_MTU_DISCOVER to `*_PMTUDISC_PROBE` (DF set, path MTU ignored) and
/// IPV6_DONTFRAG on every socket it configures, so this must run after it. A relay forwards what
/// clients and peers send: DF is what a client asks for with DONT-FRAGMENT (RFC 8656 section
/// 18.9), not the default (coturn does not set it either unless asked). `*_PMTUDISC_DONT`: no DF
/// bit on IPv4, the kernel fragments to the path MTU on IPv6. Best effort, like quinn-udp's own
/// setting: where an option is unsupported, quinn-udp could not set DF with it either.
fn allow_fragmentation(socket: &Socket) {
    let fd = socket.as_raw_fd();
    let ipv6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let options = [
        // Also on IPv6 sockets, as quinn-udp does (it covers IPv4-mapped addresses).
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
            "IP_MTU_DISCOVER",
        ),
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
            "IPV6_MTU_DISCOVER",
        ),
        // IPV6_DONTFRAG alone refuses datagrams above the MTU whatever IPV6_MTU_DISCOVER says.
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0, "IPV6_DONTFRAG"),
    ];
    let count = if ipv6 { options.len() } else { 1 };
    for &(level, option, value, name) in &options[..count] {
        if set_int_option(fd, level, option, value) != 0 {
            tracing::debug!(
                error = %io::Error::last_os_error(),
                "cannot set {name} on a UDP socket"
            );
        }
    }
}

/// A UDP socket bound to `addr` with SO_REUSEPORT (so every worker can bind the same port), IPv6
/// sockets IPv6-only, buffers raised to `buffer` bytes.
pub(crate) fn bind_listener(addr: SocketAddr, buffer: usize) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    set_buffers(&socket, buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Raises SO_RCVBUF and SO_SNDBUF (best effort: the kernel caps them at rmem_max/wmem_max
/// unless we are root, where SO_RCVBUFFORCE is tried first).
pub(crate) fn set_buffers(socket: &Socket, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, value) != 0 {
            set_int_option(fd, libc::SOL_SOCKET, plain, value);
        }
    }
}

/// `setsockopt(fd, level, option, value)` for a c_int option; returns its result (0 on
/// success).
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> libc::c_int {
    // SAFETY: `fd` is an open socket of the caller's; the option value is a c_int of the
    // given size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use relay_proto::AddressFamily;

    use super::*;
    use crate::io::relay_ports::RelayPorts;

    /// `getsockopt(fd, level, option)` for a c_int option.
    fn int_option(socket: &UdpSocket, level: libc::c_int, option: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an open socket and a c_int buffer of the given size.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                level,
                option,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value
    }

    /// The sockets the relay registers: a listener (GRO on) and a relay socket (GRO off) of
    /// the family of `ip`, both through `UdpSocket::from_socket`.
    fn relay_sockets(ip: IpAddr, family: AddressFamily, low: u16) -> [UdpSocket; 2] {
        let listener = bind_listener(SocketAddr::new(ip, 0), 0).unwrap();
        let relay = RelayPorts::new(&[ip], low, low + 99, 0)
            .bind(family, false, false)
            .unwrap()
            .socket;
        [
            UdpSocket::from_socket(listener, true).unwrap(),
            UdpSocket::from_socket(relay, false).unwrap(),
        ]
    }

    /// Nobody asked for DONT-FRAGMENT: a datagram above the path MTU must be fragmented by the
    /// kernel, not refused with EMSGSIZE (quinn-udp sets IP_PMTUDISC_PROBE, i.e. DF).
    #[tokio::test]
    async fn ipv4_sockets_let_the_kernel_fragment() {
        for socket in relay_sockets("127.0.0.1".parse().unwrap(), AddressFamily::V4, 40700) {
            assert_eq!(
                int_option(&socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
                libc::IP_PMTUDISC_DONT,
                "{}",
                socket.local_addr()
            );
        }
    }

    /// As above for IPv6 (IPV6_DONTFRAG would refuse large datagrams on its own); skipped
    /// where the host has no ::1.
    #[tokio::test]
    async fn ipv6_sockets_let_the_kernel_fragment() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback: skipped");
            return;
        }
        for socket in relay_sockets("::1".parse().unwrap(), AddressFamily::V6, 40800) {
            let at = socket.local_addr();
            assert_eq!(
                int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
                libc::IPV6_PMTUDISC_DONT,
                "{at}"
            );
            assert_eq!(
                int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
                0,
                "{at}"
            );
            assert_eq!(
                int_option(&socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
                libc::IP_PMTUDISC_DONT,
                "{at}"
            );
        }
    }
}
