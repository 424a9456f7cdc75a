//! `UdpSocket`: a non-blocking UDP socket registered with the worker's tokio reactor, received
//! from in batches through `quinn-udp` (recvmmsg, GRO where the kernel has it). Also builds the
//! SO_REUSEPORT listening sockets (one per worker on the same port).

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
    let value: libc::c_int = i32::from(on);
    // SAFETY: a valid fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
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
        if set_socket_option(fd, force, value) != 0 {
            set_socket_option(fd, plain, value);
        }
    }
}

/// `setsockopt(fd, SOL_SOCKET, option, value)`; returns its result (0 on success).
fn set_socket_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> libc::c_int {
    // SAFETY: `fd` is an open socket of the caller's; the option value is a c_int of the
    // given size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    }
}
