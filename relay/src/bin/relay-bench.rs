//! `relay-bench`: load tools for `scripts/bench-relay.sh` (not part of the relay).
//!
//! - `forwarder`: a bare UDP forwarder (recvmmsg -> sendmmsg to one fixed address, no TURN
//!   logic): the ceiling a relay on this machine can approach.
//! - `channel-load`: TURN clients (Allocate, ChannelBind to an in-process sink) sending
//!   ChannelData at a fixed aggregate rate; reports what the sink received. With `--raw` it
//!   sends plain datagrams (through the forwarder) instead.
//! - `binding-load`: STUN Binding requests from several sockets with a window of outstanding
//!   requests each; reports answers per second.
//! - `full-range`: fills the relay port range with allocations, then sends Allocates that get
//!   508 at a fixed rate; reports the relay's CPU per refused Allocate.
//! - `rss`: prints VmRSS of a PID in KiB.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use relay_proto::Method;
use relay_proto::attributes::{
    CHANNEL_NUMBER, ERROR_CODE, LIFETIME, NONCE, REALM, REQUESTED_TRANSPORT, USERNAME,
    XOR_PEER_ADDRESS, XOR_RELAYED_ADDRESS,
};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};

#[derive(Parser)]
#[command(about = "Load tools for the relay benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bare UDP forwarder: everything received on --listen goes to --to.
    Forwarder {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// Threads, each with its own SO_REUSEPORT socket (like the relay's workers).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// ChannelData (or raw datagrams) at a fixed rate through a relay to an in-process sink.
    ChannelLoad(LoadSpec),
    /// STUN Binding requests as fast as answers come back.
    BindingLoad {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value_t = 4)]
        sockets: usize,
        /// Outstanding requests per socket.
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
    /// Fills the relay port range, then Allocates refused with 508 at a fixed rate.
    FullRange(FullRangeSpec),
    /// VmRSS of a process, KiB.
    Rss { pid: u32 },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Forwarder {
            listen,
            to,
            threads,
        } => forwarder(listen, to, threads),
        Command::ChannelLoad(spec) => channel_load(&spec),
        Command::BindingLoad {
            server,
            sockets,
            window,
            secs,
        } => binding_load(server, sockets, window, secs),
        Command::FullRange(spec) => full_range(&spec),
        Command::Rss { pid } => {
            println!("{}", rss_kib(pid)?);
            Ok(())
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// recvmmsg -> sendmmsg, 32 at a time, `threads` SO_REUSEPORT sockets (one thread each).
fn forwarder(listen: SocketAddr, to: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let first = reuseport_socket(listen)?;
    let bound = first.local_addr()?;
    println!("listening udp {bound}");
    let mut sockets = vec![first];
    for _ in 1..threads.max(1) {
        sockets.push(reuseport_socket(bound)?);
    }
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|s| std::thread::spawn(move || forward_loop(&s, to)))
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("forwarder thread panicked"))??;
    }
    Ok(())
}

fn reuseport_socket(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    let s: UdpSocket = s.into();
    force_buffers(&s, 4 << 20);
    Ok(s)
}

fn forward_loop(socket: &UdpSocket, to: SocketAddr) -> anyhow::Result<()> {
    const N: usize = 32;
    let state = quinn_udp::UdpSocketState::new(socket.into())?; // sets O_NONBLOCK
    let mut storage = vec![0u8; N * 2048];
    let mut meta = [quinn_udp::RecvMeta::default(); N];
    let to = socket2::SockAddr::from(to);
    let fd = socket.as_raw_fd();
    loop {
        let n = {
            let mut chunks = storage.chunks_mut(2048);
            let mut bufs: [IoSliceMut<'_>; N] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match state.recv(socket.into(), &mut bufs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, -1) };
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // SAFETY: zeroed C structs, filled below to point at live buffers.
        let mut iovs: [libc::iovec; N] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: storage[i * 2048..].as_mut_ptr().cast(),
                iov_len: meta[i].len,
            };
            hdrs[i].msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = to.len();
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: hdrs[done..n] point at live iovecs and the storage above.
            let r = unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r <= 0 {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 5) };
                continue;
            }
            done += r as usize;
        }
    }
}

use std::os::fd::AsRawFd as _;

/// SO_RCVBUF/SO_SNDBUF of `bytes`, forced past rmem_max when root (as the relay does).
fn force_buffers(socket: &UdpSocket, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: a valid fd and a c_int option value.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const value).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// Long-term credentials of the load's TURN clients.
#[derive(clap::Args)]
struct Credentials {
    #[arg(long, default_value = "bench")]
    user: String,
    #[arg(long, default_value = "bench")]
    password: String,
    /// The realm to use when a challenge names none.
    #[arg(long, default_value = "relay")]
    realm: String,
}

#[derive(clap::Args)]
struct LoadSpec {
    /// TURN server (or forwarder with --raw).
    #[arg(long)]
    server: SocketAddr,
    #[command(flatten)]
    credentials: Credentials,
    /// Concurrent allocations (clients).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Aggregate packets per second.
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Plain datagrams to --server; the sink binds --sink (the forwarder's --to).
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    sink: SocketAddr,
}

/// A blocking request/response exchange with one retry on 401.
fn transact(
    socket: &UdpSocket,
    server: SocketAddr,
    build: &dyn Fn(TransactionId) -> Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let tid = TransactionId(rand::random());
    let req = build(tid);
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        socket.send_to(&req, server)?;
        let deadline = Instant::now() + Duration::from_millis(400);
        while Instant::now() < deadline {
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let Ok((n, _)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(msg) = StunMessage::parse(&buf[..n])
                && msg.transaction_id() == tid
            {
                return Ok(buf[..n].to_vec());
            }
        }
    }
    bail!("no answer from {server}")
}

fn error_code(msg: &StunMessage<'_>) -> Option<u16> {
    let v = msg.get(ERROR_CODE)?;
    (v.len() >= 4).then(|| u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
}

/// `turn_client`, retried on a new socket when the kernel hands out a source port whose
/// allocation from an earlier run is still alive (437 Allocation Mismatch).
fn turn_client_retrying(spec: &LoadSpec, peer: SocketAddr) -> anyhow::Result<UdpSocket> {
    let mut last = None;
    for _ in 0..5 {
        match turn_client(spec, peer) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
}

/// A client's way into the server: the realm and nonce its first Allocate's challenge gave,
/// and the key of its credentials.
struct Authenticated {
    user: String,
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

impl Authenticated {
    /// Sends an unauthenticated Allocate from `socket` and takes the challenge's realm and
    /// nonce.
    fn challenged(
        socket: &UdpSocket,
        server: SocketAddr,
        credentials: &Credentials,
    ) -> anyhow::Result<Self> {
        let first = transact(socket, server, &|tid| {
            let mut b = MessageBuilder::new(Method::Allocate, Class::Request, tid);
            b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.finish()
        })?;
        let first = StunMessage::parse(&first).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let realm = first
            .get(REALM)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .unwrap_or_else(|| credentials.realm.clone());
        let Some(nonce) = first.get(NONCE).map(<[u8]>::to_vec) else {
            bail!(
                "first Allocate answered without NONCE (error {:?})",
                error_code(&first)
            );
        };
        Ok(Self {
            key: long_term_key(&credentials.user, &realm, &credentials.password),
            user: credentials.user.clone(),
            realm,
            nonce,
        })
    }

    /// A request of `method` with `extra` attributes, then the credentials.
    fn request(
        &self,
        method: Method,
        tid: TransactionId,
        extra: &dyn Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        let mut b = MessageBuilder::new(method, Class::Request, tid);
        extra(&mut b);
        b.add(USERNAME, self.user.as_bytes());
        b.add(REALM, self.realm.as_bytes());
        b.add(NONCE, &self.nonce);
        b.add_message_integrity(&self.key);
        b.add_fingerprint();
        b.finish()
    }

    /// An Allocate of a UDP relay for 600 s.
    fn allocate(&self, tid: TransactionId) -> Vec<u8> {
        self.request(Method::Allocate, tid, &|b| {
            b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.add_u32(LIFETIME, 600);
        })
    }
}

/// Allocate + ChannelBind(0x4000 -> peer) with long-term credentials; returns the socket.
fn turn_client(spec: &LoadSpec, peer: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let server = spec.server;
    let auth = Authenticated::challenged(&socket, server, &spec.credentials)?;
    let alloc = transact(&socket, server, &|tid| auth.allocate(tid))?;
    let msg = StunMessage::parse(&alloc).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if msg.get(XOR_RELAYED_ADDRESS).is_none() {
        bail!("allocate failed: {:?}", error_code(&msg));
    }
    let bind = transact(&socket, server, &|tid| {
        auth.request(Method::ChannelBind, tid, &|b| {
            b.add(CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
            b.add_xor_address(XOR_PEER_ADDRESS, peer);
        })
    })?;
    let msg = StunMessage::parse(&bind).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Some(code) = error_code(&msg) {
        bail!("channel bind failed: {code}");
    }
    Ok(socket)
}

fn channel_load(spec: &LoadSpec) -> anyhow::Result<()> {
    let sink = UdpSocket::bind(spec.sink)?;
    force_buffers(&sink, 8 << 20);
    let sink_addr = sink.local_addr()?;
    let clients: Vec<UdpSocket> = if spec.raw {
        (0..spec.clients)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?
    } else {
        (0..spec.clients)
            .map(|_| turn_client_retrying(spec, sink_addr))
            .collect::<anyhow::Result<_>>()?
    };
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink_thread = {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = sink.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sink.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut packet = vec![0u8; spec.size + 4];
    if spec.raw {
        packet.truncate(spec.size);
    } else {
        packet[0] = 0x40;
        packet[1] = 0x00;
        packet[2..4].copy_from_slice(&u16::try_from(spec.size)?.to_be_bytes());
    }
    let total = spec.rate * spec.secs;
    let started = Instant::now();
    let per_tick = (spec.rate / 1000).max(1);
    let mut sent = 0u64;
    let mut k = 0usize;
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * spec.rate as f64) as u64;
        if sent >= due.min(total) {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let burst = (due - sent).min(per_tick * 4).min(total - sent);
        for _ in 0..burst {
            let _ = clients[k % clients.len()].send_to(&packet, spec.server);
            k += 1;
        }
        sent += burst;
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Let the tail drain.
    let mut last = received.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sink_thread.join();
    let got = received.load(Ordering::Relaxed);
    println!(
        "sent {sent} received {got} lost {} offered_pps {:.0} achieved_pps {:.0}",
        sent.saturating_sub(got),
        sent as f64 / send_secs,
        got as f64 / send_secs
    );
    Ok(())
}

fn binding_load(
    server: SocketAddr,
    sockets: usize,
    window: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..sockets)
        .map(|_| {
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                let request = |tid: TransactionId| {
                    MessageBuilder::new(Method::Binding, Class::Request, tid).finish()
                };
                for _ in 0..window {
                    socket.send_to(&request(TransactionId(rand::random())), server)?;
                }
                let mut buf = [0u8; 1500];
                while Instant::now() < deadline {
                    match socket.recv_from(&mut buf) {
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            socket.send_to(&request(TransactionId(rand::random())), server)?;
                        }
                        // A lost request: refill the window.
                        Err(_) => {
                            for _ in 0..window {
                                socket.send_to(&request(TransactionId(rand::random())), server)?;
                            }
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }
    let n = answered.load(Ordering::Relaxed);
    println!(
        "answered {n} in {secs} s: {:.0} binding/s",
        n as f64 / secs as f64
    );
    Ok(())
}

#[derive(clap::Args)]
struct FullRangeSpec {
    /// TURN server.
    #[arg(long)]
    server: SocketAddr,
    /// The relay's process, whose CPU time is read from /proc.
    #[arg(long)]
    pid: u32,
    #[command(flatten)]
    credentials: Credentials,
    /// Allocations at most while filling the range (more than it holds).
    #[arg(long, default_value_t = 5000)]
    max_fill: usize,
    /// Refused Allocates per second once the range is full.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 3)]
    secs: u64,
}

/// Allocates from new client sockets until the server answers 508 (its relay ports used up),
/// then sends authenticated Allocates from one more socket at `rate` for `secs`, each answered
/// 508, and prints the server's CPU time per answer.
fn full_range(spec: &FullRangeSpec) -> anyhow::Result<()> {
    let server = spec.server;
    let mut held = Vec::new();
    let refused = loop {
        if held.len() >= spec.max_fill {
            bail!("{} allocations and the range is not full", held.len());
        }
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let auth = Authenticated::challenged(&socket, server, &spec.credentials)?;
        let answer = transact(&socket, server, &|tid| auth.allocate(tid))?;
        let answer = StunMessage::parse(&answer).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        match error_code(&answer) {
            None => held.push(socket),
            Some(508) => break (socket, auth),
            Some(code) => bail!("allocation {} refused with {code}", held.len() + 1),
        }
    };
    let (socket, auth) = refused;
    socket.set_nonblocking(true)?;
    let ticks = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", spec.pid))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let before = ticks()?;
    let started = Instant::now();
    let total = spec.rate * spec.secs;
    let mut sent = 0u64;
    // Answers by error code (0: a success).
    let mut answers = std::collections::BTreeMap::<u16, u64>::new();
    let mut buf = [0u8; 2048];
    let mut read_answers = |answers: &mut std::collections::BTreeMap<u16, u64>| {
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Ok(m) = StunMessage::parse(&buf[..n]) {
                *answers.entry(error_code(&m).unwrap_or(0)).or_default() += 1;
            }
        }
    };
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * spec.rate as f64) as u64;
        if sent < due.min(total) {
            socket.send_to(&auth.allocate(TransactionId(rand::random())), server)?;
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
        read_answers(&mut answers);
    }
    std::thread::sleep(Duration::from_millis(300));
    read_answers(&mut answers);
    let cpu_ms = (ticks()? - before) as f64 / per_second * 1000.0;
    let refused = answers.get(&508).copied().unwrap_or(0);
    println!(
        "filled {} allocations; {sent} Allocates in {} s, answers by code {answers:?}; \
         server CPU {cpu_ms:.0} ms, {:.3} ms per 508",
        held.len(),
        spec.secs,
        cpu_ms / refused.max(1) as f64
    );
    Ok(())
}
