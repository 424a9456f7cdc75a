//! `SendBatch`: datagrams collected while processing one receive batch, sent with one
//! `sendmmsg` per socket (grouped; order kept within each socket). Payloads are copied into one preallocated arena, so queuing a
//! datagram never allocates and the receive buffers can be reused at once.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use socket2::SockAddr;

use super::udp::UdpSocket;

/// Messages per `sendmmsg` call (the kernel caps one call at UIO_MAXIOV = 1024).
const CHUNK: usize = 64;

/// Control-message space for one `in6_pktinfo` (the larger of the two pktinfo structs).
const CONTROL_LEN: usize = 64;

/// Why queued datagrams were not sent (counted by the caller).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushReport {
    /// Datagrams handed to the kernel.
    pub(crate) sent: u64,
    /// Datagrams refused by the kernel (ENETUNREACH, EPERM, ...) or dropped because the socket
    /// buffer stayed full.
    pub(crate) failed: u64,
}

/// One queued datagram.
struct Item {
    /// The socket to send from (kept alive until the flush even if its allocation ends meanwhile).
    socket: Rc<UdpSocket>,
    destination: SocketAddr,
    /// Source IP for sockets bound to a wildcard address (IP_PKTINFO / IPV6_PKTINFO).
    src_ip: Option<IpAddr>,
    start: usize,
    len: usize,
}

/// Datagrams waiting for `flush`.
pub(crate) struct SendBatch {
    arena: Vec<u8>,
    items: Vec<Item>,
}

#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

impl SendBatch {
    /// A batch whose arena holds `capacity` bytes before `push` has to flush early.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            arena: Vec::with_capacity(capacity),
            items: Vec::with_capacity(256),
        }
    }

    /// True when a datagram of `len` bytes would not fit without reallocating.
    pub(crate) fn is_full_for(&self, len: usize) -> bool {
        self.arena.len() + len > self.arena.capacity() || self.items.len() == self.items.capacity()
    }

    /// Queue `data` for `destination` from `socket`. Call `flush` before this if `is_full_for`.
    pub(crate) fn push(
        &mut self,
        socket: &Rc<UdpSocket>,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
        data: &[u8],
    ) {
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        self.items.push(Item {
            socket: Rc::clone(socket),
            destination,
            src_ip,
            start,
            len: data.len(),
        });
    }

    /// Number of queued datagrams.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Send everything queued: one `sendmmsg` per run of datagrams from the same socket.
    pub(crate) fn flush(&mut self) -> FlushReport {
        let mut report = FlushReport::default();
        // Group by socket so each socket gets one sendmmsg for all its datagrams. The sort is
        // stable: datagrams of one socket (one flow per destination) keep their order.
        if self
            .items
            .windows(2)
            .any(|w| w[0].socket.as_raw_fd() != w[1].socket.as_raw_fd())
        {
            self.items.sort_by_key(|item| item.socket.as_raw_fd());
        }
        let mut i = 0;
        while i < self.items.len() {
            let fd = self.items[i].socket.as_raw_fd();
            let mut end = i + 1;
            while end < self.items.len()
                && end - i < CHUNK
                && self.items[end].socket.as_raw_fd() == fd
            {
                end += 1;
            }
            let (sent, failed) = send_run(fd, &self.arena, &self.items[i..end]);
            report.sent += sent;
            report.failed += failed;
            i = end;
        }
        self.items.clear();
        self.arena.clear();
        report
    }
}

/// Sends `items` (all from `fd`) with as few `sendmmsg` calls as the kernel allows. A datagram
/// the kernel refuses is skipped and counted; the rest still go out.
fn send_run(fd: i32, arena: &[u8], items: &[Item]) -> (u64, u64) {
    let n = items.len();
    debug_assert!(n <= CHUNK);
    let mut names: [MaybeUninit<SockAddr>; CHUNK] = [const { MaybeUninit::uninit() }; CHUNK];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; CHUNK] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; CHUNK] = unsafe { mem::zeroed() };
    let mut controls: [Control; CHUNK] = [const { Control([0; CONTROL_LEN]) }; CHUNK];
    for (k, item) in items.iter().enumerate() {
        let name = names[k].write(SockAddr::from(item.destination));
        iovs[k] = libc::iovec {
            iov_base: arena[item.start..].as_ptr() as *mut libc::c_void,
            iov_len: item.len,
        };
        let hdr = &mut hdrs[k].msg_hdr;
        hdr.msg_name = name.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = name.len();
        hdr.msg_iov = &mut iovs[k];
        hdr.msg_iovlen = 1;
        if let Some(ip) = item.src_ip {
            let len = encode_pktinfo(&mut controls[k], ip);
            hdr.msg_control = controls[k].0.as_mut_ptr().cast();
            hdr.msg_controllen = len as _;
        }
    }
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut next = 0usize;
    let mut waited = false;
    while next < n {
        // SAFETY: hdrs[next..n] point at live iovecs, names and controls on this stack frame,
        // whose buffers (the arena) outlive the call.
        let r =
            unsafe { libc::sendmmsg(fd, hdrs[next..].as_mut_ptr(), (n - next) as libc::c_uint, 0) };
        if r > 0 {
            sent += r as u64;
            next += r as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock if !waited => {
                // The socket buffer is full: give the kernel a moment once, then drop.
                waited = true;
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 5) };
            }
            io::ErrorKind::WouldBlock => {
                failed += (n - next) as u64;
                break;
            }
            _ => {
                // The first message of the run was refused (unreachable peer, EPERM, EMSGSIZE):
                // skip it, keep the rest.
                tracing::trace!(error = %err, to = %items[next].destination, "send failed");
                failed += 1;
                next += 1;
            }
        }
    }
    for name in &mut names[..n] {
        // SAFETY: the first n names were written above.
        unsafe { name.assume_init_drop() };
    }
    (sent, failed)
}

/// Writes an IP_PKTINFO / IPV6_PKTINFO control message selecting `ip` as source; returns its
/// length.
fn encode_pktinfo(control: &mut Control, ip: IpAddr) -> usize {
    let buf = control.0.as_mut_ptr();
    // SAFETY: `control` is 8-aligned and CONTROL_LEN bytes, enough for one cmsghdr plus an
    // in6_pktinfo (CMSG_SPACE(20) = 40 on 64-bit Linux); the header and data pointers come from
    // the CMSG_* macros over a msghdr describing exactly this buffer.
    unsafe {
        let mut hdr: libc::msghdr = mem::zeroed();
        hdr.msg_control = buf.cast();
        hdr.msg_controllen = CONTROL_LEN as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        match ip {
            IpAddr::V4(v4) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
            }
            IpAddr::V6(v6) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(addr: &str) -> Rc<UdpSocket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind(&addr.parse::<SocketAddr>().unwrap().into()).unwrap();
        Rc::new(UdpSocket::from_socket(s, false).unwrap())
    }

    #[tokio::test]
    async fn flush_sends_every_datagram_in_order_with_source_ip() {
        let a = socket("127.0.0.1:0");
        let wildcard = socket("0.0.0.0:0");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch = SendBatch::new(64 * 1024);
        for i in 0..100u8 {
            batch.push(&a, to, None, &[i; 10]);
        }
        batch.push(
            &wildcard,
            to,
            Some("127.0.0.1".parse().unwrap()),
            b"pktinfo",
        );
        // Unroutable for a loopback-bound socket: refused, counted, the rest still goes out.
        batch.push(&a, "192.0.2.1:9".parse().unwrap(), None, b"x");
        batch.push(&a, to, None, b"after");
        let report = batch.flush();
        assert_eq!(report.sent + report.failed, 103);
        // Order holds per socket; the groups of different sockets may go out in any order.
        let mut buf = [0u8; 64];
        let mut from_a = Vec::new();
        let mut from_wildcard = Vec::new();
        for _ in 0..102 {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(from.ip().to_string(), "127.0.0.1");
            if from == a.local_addr() {
                from_a.push(buf[..n].to_vec());
            } else {
                from_wildcard.push(buf[..n].to_vec());
            }
        }
        let mut expected: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        expected.push(b"after".to_vec());
        assert_eq!(from_a, expected);
        assert_eq!(from_wildcard, vec![b"pktinfo".to_vec()]);
        assert_eq!(batch.len(), 0);
    }
}
