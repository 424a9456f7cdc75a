//! Test harness: spawn the `relay` binary on free loopback ports, parse the addresses it
//! prints, kill it on drop; helpers for coturn's turnutils, `/metrics`, and a small STUN/TURN
//! test client built on the `stun`/`turn` crates' message types.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_proto::framing;
use testkit::Spawned;
pub(crate) use testkit::coturn::{EchoPeer, UclientReport, parse_uclient, require_coturn, uclient};
pub(crate) use testkit::{metric_value, rest_password};

use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, Message, MessageType, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use turn::proto::chandata::ChannelData;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

/// The relay binary built by cargo for this test target.
pub(crate) const RELAY_BIN: &str = env!("CARGO_BIN_EXE_relay");

/// A running relay: in this process by default (`Relay::start`, as `signaling --with-relay`
/// runs it), or the real binary ([`RelayProcess::start_process`]) for tests of what only a
/// process has (SIGTERM, its PID, exit codes). Stopped on drop (a process is killed).
pub(crate) struct RelayProcess {
    node: Node,
    pub(crate) udp: SocketAddr,
    pub(crate) tcp: Option<SocketAddr>,
    pub(crate) tls: Option<SocketAddr>,
    pub(crate) admin: SocketAddr,
    /// The certificate printed with `--tls-self-signed`.
    pub(crate) tls_pem: String,
}

/// How a relay runs.
enum Node {
    /// `Relay::start` in this process; dropping the handle stops it.
    InProcess { _handle: relay::RelayHandle },
    /// The binary, with a thread collecting its stderr (shown if the test fails).
    Process {
        process: Spawned,
        stderr: Option<std::thread::JoinHandle<String>>,
    },
}

impl RelayProcess {
    /// Starts the relay on 127.0.0.1 port 0 (UDP+TCP) with an admin port, loopback peers
    /// allowed, a private relay port range, and `extra` flags.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_raw(&[Self::DEFAULT_ARGS, extra].concat())
    }

    /// Like [`Self::start`], with `workers` workers instead of 2.
    pub(crate) fn start_with_workers(workers: usize, extra: &[&str]) -> Self {
        let workers = workers.to_string();
        Self::start_raw(&[&base_args("127.0.0.1:0", &workers)[..], extra].concat())
    }

    /// Like [`Self::start`], as the real binary.
    pub(crate) fn start_process(extra: &[&str]) -> Self {
        Self::start_raw_process(&[Self::DEFAULT_ARGS, extra].concat())
    }

    const DEFAULT_ARGS: &[&str] = &base_args("127.0.0.1:0", "2");

    /// Starts the relay in this process with exactly `args` (read as the binary reads its
    /// command line, environment included).
    pub(crate) fn start_raw(args: &[&str]) -> Self {
        let argv = std::iter::once("relay").chain(args.iter().copied());
        let (config, _) = relay::Config::load_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let handle = relay::Relay::start(config).unwrap_or_else(|e| panic!("relay: {e}"));
        let addrs = handle.addrs().clone();
        Self {
            udp: *addrs.udp.first().expect("a UDP listener"),
            tcp: addrs.tcp.first().copied(),
            tls: addrs.tls.first().copied(),
            admin: addrs.admin.expect("an admin listener"),
            tls_pem: addrs.tls_self_signed_pem.clone().unwrap_or_default(),
            node: Node::InProcess { _handle: handle },
        }
    }

    /// Starts the relay binary with exactly `args` (plus nothing), logging at `info`.
    pub(crate) fn start_raw_process(args: &[&str]) -> Self {
        let mut command = Command::new(RELAY_BIN);
        command.args(args).env("RUST_LOG", "info");
        Self::spawn(command)
    }

    /// Like [`Self::start_process`], reading `--config file` with `RUST_LOG` unset, so that
    /// the file's `log-filter` is the one in force (and a reload can change it).
    pub(crate) fn start_with_config(file: &std::path::Path, extra: &[&str]) -> Self {
        let mut command = Command::new(RELAY_BIN);
        command
            .args(Self::DEFAULT_ARGS)
            .arg("--config")
            .arg(file)
            .args(extra)
            .env_remove("RUST_LOG");
        Self::spawn(command)
    }

    /// Kills the process and returns everything it wrote on stderr.
    pub(crate) fn stop_and_read_stderr(mut self) -> String {
        match &mut self.node {
            Node::Process { process, stderr } => {
                process.kill();
                stderr
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default()
            }
            Node::InProcess { .. } => panic!("an in-process relay: use start_process"),
        }
    }

    fn spawn(mut command: Command) -> Self {
        command.stderr(Stdio::piped());
        let mut process = Spawned::spawn(command, false);
        let mut stderr = process.child().stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        if process
            .try_wait_line(Duration::from_secs(20), |l| l == "ready")
            .is_none()
        {
            process.kill();
            let err = stderr.join().unwrap_or_default();
            panic!("relay did not print `ready` within 20 s; stderr:\n{err}");
        }
        let (mut udp, mut tcp, mut tls, mut admin) = (None, None, None, None);
        let mut tls_pem = String::new();
        for line in &process.seen {
            let parse = |s: &str| s.parse::<SocketAddr>().expect("address");
            if let Some(a) = line.strip_prefix("listening udp ") {
                udp.get_or_insert(parse(a));
            } else if let Some(a) = line.strip_prefix("listening tcp ") {
                tcp.get_or_insert(parse(a));
            } else if let Some(a) = line.strip_prefix("listening tls ") {
                tls.get_or_insert(parse(a));
            } else if let Some(a) = line.strip_prefix("admin http://") {
                admin = Some(parse(a));
            } else if line.starts_with("-----")
                || !tls_pem.is_empty() && !tls_pem.contains("-----END")
            {
                tls_pem.push_str(line);
                tls_pem.push('\n');
            }
        }
        Self {
            udp: udp.expect("udp address line"),
            tcp,
            tls,
            admin: admin.expect("admin line"),
            tls_pem,
            node: Node::Process {
                process,
                stderr: Some(stderr),
            },
        }
    }

    /// The UDP port.
    pub(crate) fn port(&self) -> u16 {
        self.udp.port()
    }

    /// The binary's process (tests of what only a process has start it with
    /// [`Self::start_process`]).
    pub(crate) fn process(&mut self) -> &mut Spawned {
        match &mut self.node {
            Node::Process { process, .. } => process,
            Node::InProcess { .. } => panic!("an in-process relay: use start_process"),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        match &self.node {
            Node::Process { process, .. } => process.pid(),
            Node::InProcess { .. } => panic!("an in-process relay has no PID: use start_process"),
        }
    }

    /// Sends SIGHUP (a reload) to the relay process.
    pub(crate) fn hangup(&self) {
        // SAFETY: kill(2) on the PID of a child this test spawned.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
    }

    /// Sends SIGHUP and waits (up to 5 s) until the metric `series` reads `value`.
    pub(crate) fn reload_until(&self, series: &str, value: u64) {
        self.hangup();
        assert!(
            wait_until(Duration::from_secs(5), || self.metric(series) == value),
            "{series} did not reach {value}"
        );
    }

    /// True while the process runs.
    pub(crate) fn is_alive(&mut self) -> bool {
        matches!(self.process().child().try_wait(), Ok(None))
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        match &self.node {
            Node::Process { process, .. } => process.terminate(),
            Node::InProcess { .. } => {
                panic!("an in-process relay gets no signals: use start_process")
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its exit status success.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        self.process()
            .try_wait_exit(timeout)
            .map(|status| status.success())
    }

    /// GET `path` on the admin server: (status code, body).
    pub(crate) fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The value of one sample line of `/metrics` (e.g.
    /// `relay_packets_relayed_total{direction="to_peer"}`), 0 if absent.
    pub(crate) fn metric(&self, sample: &str) -> u64 {
        let (_, body) = self.admin_get("/metrics");
        metric_value(&body, sample).map_or(0, |v| v as u64)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Self::Process { process, stderr } = self else {
            return; // Dropping the relay's handle stops it.
        };
        // Killed first, so that the stderr reader ends.
        process.kill();
        if std::thread::panicking()
            && let Some(logs) = stderr.take().and_then(|h| h.join().ok())
        {
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("--- relay stderr (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The flags a test relay starts with: UDP and TCP on `listen`, the admin server on
/// 127.0.0.1 port 0, `workers` workers.
pub(crate) const fn base_args<'a>(listen: &'a str, workers: &'a str) -> [&'a str; 6] {
    [
        "--listen",
        listen,
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        workers,
    ]
}

/// A certificate and key in files (`cert.pem`, `key.pem`, where `testkit::write_self_signed`
/// writes them), served with `--tls-cert`/`--tls-key`: rewriting them and reloading changes
/// the certificate.
pub(crate) struct TlsFiles {
    /// The certificate file.
    pub(crate) cert: String,
    /// The key file.
    pub(crate) key: String,
}

impl TlsFiles {
    /// The pair in `dir`.
    pub(crate) fn in_dir(dir: &std::path::Path) -> Self {
        let path = |name: &str| dir.join(name).to_str().expect("a UTF-8 path").to_owned();
        Self {
            cert: path("cert.pem"),
            key: path("key.pem"),
        }
    }

    /// Flags serving the pair for TURNS on 127.0.0.1 port 0.
    pub(crate) fn args(&self) -> [&str; 6] {
        [
            "--tls-cert",
            &self.cert,
            "--tls-key",
            &self.key,
            "--tls-listen",
            "127.0.0.1:0",
        ]
    }
}

/// Flags for a relay that [`TestClient`]s use as user `u`, password `p`, relaying to peers
/// on loopback.
pub(crate) const USER_ON_LOOPBACK: &[&str] = &["--allow-loopback-peers", "--user", "u:p"];

/// A UDP peer on 127.0.0.1 whose reads give up after `read_timeout`.
pub(crate) fn loopback_peer(read_timeout: Duration) -> UdpSocket {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(read_timeout)).unwrap();
    peer
}

/// Flags for TURNS on 127.0.0.1 with a certificate generated at start-up
/// ([`RelayProcess::tls_pem`] is what a client trusts).
pub(crate) const TLS_ON_LOOPBACK: &[&str] = &["--tls-self-signed", "--tls-listen", "127.0.0.1:0"];

/// A relay listening on `[::1]` (admin on 127.0.0.1) with `extra` flags, or `None`, said on
/// stderr, on a host without IPv6.
pub(crate) fn start_on_ipv6(extra: &[&str]) -> Option<RelayProcess> {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this host has no ::1 (IPv6 disabled); the IPv6 relay tests need it");
        return None;
    }
    let listen: &[&str] = &["--listen", "[::1]:0", "--admin-listen", "127.0.0.1:0"];
    Some(RelayProcess::start_raw(&[listen, extra].concat()))
}

/// Runs the relay with exactly `args`, expecting it to exit by itself within `timeout` (a
/// start-up failure): its exit status (`None` if it was still running and had to be killed)
/// and its stderr.
pub(crate) fn run_relay_to_exit(
    args: &[&str],
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new(RELAY_BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay binary");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap_or_default())
}

/// A minimal HTTP/1.1 GET: (status, body); status 0 if the server could not be reached.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    testkit::http_get(addr, path).unwrap_or((0, String::new()))
}

/// A TURN response's outcome.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Success response.
    Ok(Message),
    /// Error response with this code.
    Error(u16),
    /// Nothing within the timeout.
    Timeout,
}

/// How a `TestClient` reaches the server.
pub(crate) enum Link {
    /// TURN over UDP.
    Udp(UdpSocket),
    /// TURN over TLS (TURNS): a blocking rustls stream and the bytes read but not yet framed.
    Tls(
        Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
        Vec<u8>,
    ),
    /// TURN over TCP; the last field > 0 writes every message in pieces of that many bytes.
    Tcp(TcpStream, Vec<u8>, usize),
}

impl Link {
    pub(crate) fn send(&mut self, server: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Udp(s) => s.send_to(data, server).map(|_| ()),
            Self::Tls(s, _) => {
                s.write_all(data)?;
                s.flush()
            }
            Self::Tcp(s, _, chunk) if *chunk > 0 => {
                for piece in data.chunks(*chunk) {
                    s.write_all(piece)?;
                    s.flush()?;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(())
            }
            Self::Tcp(s, _, _) => s.write_all(data),
        }
    }

    /// One datagram, or one STUN/ChannelData frame from the stream, within `timeout`.
    pub(crate) fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        match self {
            Self::Udp(s) => {
                s.set_read_timeout(Some(timeout)).ok()?;
                let mut buf = [0u8; 2048];
                let (n, _) = s.recv_from(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            }
            Self::Tls(s, pending) => read_frame(&mut **s, pending, timeout, |s, d| {
                s.sock.set_read_timeout(Some(d))
            }),
            Self::Tcp(s, pending, _) => {
                read_frame(s, pending, timeout, |s, d| s.set_read_timeout(Some(d)))
            }
        }
    }
}

/// One STUN or ChannelData frame (padding removed) from a stream, within `timeout`.
fn read_frame<S: std::io::Read>(
    s: &mut S,
    pending: &mut Vec<u8>,
    timeout: Duration,
    set_timeout: impl Fn(&mut S, Duration) -> std::io::Result<()>,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let (Ok(Some(frame)), Ok(Some(keep))) = (
            framing::stream_frame_len(pending),
            framing::message_len(pending),
        ) && pending.len() >= frame
        {
            let rest = pending.split_off(frame);
            let mut out = std::mem::replace(pending, rest);
            out.truncate(keep);
            return Some(out);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        set_timeout(s, left.max(Duration::from_millis(1))).ok()?;
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// A TLS connection to `addr` trusting exactly `ca_pem` (the relay's self-signed certificate).
pub(crate) fn tls_link(addr: SocketAddr, ca_pem: &str) -> Link {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("certificate PEM")).expect("add root");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost")
        .unwrap()
        .to_owned();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect TLS port");
    Link::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)), Vec::new())
}

/// A blocking TURN client for protocol-level assertions (error codes the high-level clients
/// hide), over UDP or TLS.
pub(crate) struct TestClient {
    pub(crate) link: Link,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl TestClient {
    pub(crate) fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Self::with_link(Link::Udp(socket), server, username, password)
    }

    /// A client over an existing link (an IPv6 socket, a TLS stream).
    pub(crate) fn with_link(
        link: Link,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Self {
        Self {
            link,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    /// Sends a request, answering a 401/438 challenge once; retransmits on timeout.
    pub(crate) fn request(
        &mut self,
        method: stun::message::Method,
        attrs: &[Box<dyn Setter>],
    ) -> Reply {
        for _ in 0..3 {
            let mut msg = Message::new();
            msg.build(&[
                Box::new(MessageType::new(method, CLASS_REQUEST)),
                Box::new(stun::agent::TransactionId::new()),
            ])
            .unwrap();
            for a in attrs {
                a.add_to(&mut msg).unwrap();
            }
            if !self.nonce.is_empty() {
                Username::new(stun::attributes::ATTR_USERNAME, self.username.clone())
                    .add_to(&mut msg)
                    .unwrap();
                Realm::new(ATTR_REALM, self.realm.clone())
                    .add_to(&mut msg)
                    .unwrap();
                Nonce::new(ATTR_NONCE, self.nonce.clone())
                    .add_to(&mut msg)
                    .unwrap();
                MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    self.realm.clone(),
                    self.password.clone(),
                )
                .add_to(&mut msg)
                .unwrap();
            }
            stun::fingerprint::FINGERPRINT.add_to(&mut msg).unwrap();
            let Some(reply) = self.transact(&msg) else {
                return Reply::Timeout;
            };
            if reply.typ.class == stun::message::CLASS_SUCCESS_RESPONSE {
                return Reply::Ok(reply);
            }
            let mut code = ErrorCodeAttribute::default();
            if code.get_from(&reply).is_err() {
                return Reply::Error(0);
            }
            let c = code.code.0;
            if (c == 401 && self.nonce.is_empty()) || c == 438 {
                let mut realm = Realm::new(ATTR_REALM, String::new());
                let mut nonce = Nonce::new(ATTR_NONCE, String::new());
                if realm.get_from(&reply).is_ok() {
                    self.realm = realm.text;
                }
                if nonce.get_from(&reply).is_ok() {
                    self.nonce = nonce.text;
                    continue;
                }
            }
            return Reply::Error(c);
        }
        Reply::Timeout
    }

    fn transact(&mut self, msg: &Message) -> Option<Message> {
        let attempts = if matches!(self.link, Link::Udp(_)) {
            4
        } else {
            1
        };
        for _ in 0..attempts {
            self.link.send(self.server, &msg.raw).ok()?;
            let deadline =
                Instant::now() + Duration::from_millis(if attempts == 1 { 3000 } else { 500 });
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Some(raw) = self.link.recv(left) else {
                    break;
                };
                let mut reply = Message::new();
                reply.raw = raw;
                if reply.decode().is_ok() && reply.transaction_id == msg.transaction_id {
                    return Some(reply);
                }
            }
        }
        None
    }

    /// Allocate (UDP relay): the relayed address or the error code.
    pub(crate) fn allocate(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(None)
    }

    /// Allocate an IPv6 relayed address (RFC 6156 REQUESTED-ADDRESS-FAMILY).
    pub(crate) fn allocate_v6(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(Some(turn::proto::reqfamily::REQUESTED_FAMILY_IPV6))
    }

    fn allocate_with(
        &mut self,
        family: Option<turn::proto::reqfamily::RequestedAddressFamily>,
    ) -> Result<SocketAddr, u16> {
        let extra: Vec<Box<dyn Setter>> = match family {
            Some(f) => vec![Box::new(f)],
            None => Vec::new(),
        };
        self.allocate_returning(extra).map(|(relayed, _)| relayed)
    }

    /// Allocate with EVEN-PORT's R bit (RFC 8656 section 7.2): the relayed address and the
    /// RESERVATION-TOKEN of the next port.
    pub(crate) fn allocate_reserving_next(&mut self) -> Result<(SocketAddr, Vec<u8>), u16> {
        let even_port = stun::attributes::RawAttribute {
            typ: stun::attributes::ATTR_EVEN_PORT,
            length: 1,
            value: vec![0x80],
        };
        let (relayed, token) = self.allocate_returning(vec![Box::new(even_port)])?;
        Ok((relayed, token.expect("RESERVATION-TOKEN")))
    }

    /// Allocate the port reserved under `token`.
    pub(crate) fn allocate_reserved(&mut self, token: Vec<u8>) -> Result<SocketAddr, u16> {
        let token = turn::proto::rsrvtoken::ReservationToken(token);
        self.allocate_returning(vec![Box::new(token)])
            .map(|(relayed, _)| relayed)
    }

    /// Allocate (UDP, 600 s, `extra` attributes): the relayed address and the
    /// RESERVATION-TOKEN if the answer has one, or the error code.
    fn allocate_returning(
        &mut self,
        extra: Vec<Box<dyn Setter>>,
    ) -> Result<(SocketAddr, Option<Vec<u8>>), u16> {
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            }),
            Box::new(Lifetime(Duration::from_secs(600))),
        ];
        attrs.extend(extra);
        match self.request(METHOD_ALLOCATE, &attrs) {
            Reply::Ok(m) => {
                let mut relayed = RelayedAddress::default();
                relayed.get_from(&m).expect("XOR-RELAYED-ADDRESS");
                let mut token = turn::proto::rsrvtoken::ReservationToken::default();
                let token = token.get_from(&m).is_ok().then_some(token.0);
                Ok((SocketAddr::new(relayed.ip, relayed.port), token))
            }
            Reply::Error(c) => Err(c),
            Reply::Timeout => Err(0),
        }
    }

    /// CreatePermission for `peer`: Ok or the error code.
    pub(crate) fn create_permission(&mut self, peer: SocketAddr) -> Result<(), u16> {
        let attr = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        match self.request(METHOD_CREATE_PERMISSION, &[Box::new(attr)]) {
            Reply::Ok(_) => Ok(()),
            Reply::Error(c) => Err(c),
            Reply::Timeout => Err(0),
        }
    }

    /// ChannelBind `number` to `peer`.
    pub(crate) fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), u16> {
        let attr = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        match self.request(
            METHOD_CHANNEL_BIND,
            &[Box::new(ChannelNumber(number)), Box::new(attr)],
        ) {
            Reply::Ok(_) => Ok(()),
            Reply::Error(c) => Err(c),
            Reply::Timeout => Err(0),
        }
    }

    /// Refresh with `lifetime` seconds (0 deletes the allocation).
    pub(crate) fn refresh(&mut self, lifetime: u64) -> Result<(), u16> {
        match self.request(
            METHOD_REFRESH,
            &[Box::new(Lifetime(Duration::from_secs(lifetime)))],
        ) {
            Reply::Ok(_) => Ok(()),
            Reply::Error(c) => Err(c),
            Reply::Timeout => Err(0),
        }
    }

    /// Sends `data` on channel `number` (padded to 4 bytes on streams).
    pub(crate) fn send_channel(&mut self, number: u16, data: &[u8]) {
        let mut cd = ChannelData {
            data: data.to_vec(),
            number: ChannelNumber(number),
            raw: Vec::new(),
        };
        cd.encode();
        if matches!(self.link, Link::Tls(..) | Link::Tcp(..)) {
            cd.raw
                .resize(relay_proto::channel_data::framed_len(data.len(), true), 0);
        }
        self.link.send(self.server, &cd.raw).unwrap();
    }

    /// Receives one ChannelData message: (channel, payload).
    pub(crate) fn recv_channel(&mut self, timeout: Duration) -> Option<(u16, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let raw = self.link.recv(left)?;
            let mut cd = ChannelData {
                raw,
                ..ChannelData::default()
            };
            if cd.decode().is_ok() {
                return Some((cd.number.0, cd.data));
            }
        }
        None
    }
}

/// Unix time now, in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until `f` is true or `timeout` passes (`testkit::wait_until` for a yes/no check).
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    testkit::wait_until(timeout, || f().then_some(())).is_some()
}
