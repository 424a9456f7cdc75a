//! A real HAProxy (Debian's package) balancing round-robin, without stickiness, over several
//! HTTP backends, WebSockets passing through. A backend counts as up while its `/readyz`
//! answers 200, so a draining node, or one that lost its Redis, gets no new connections; a
//! connect refused by a dead backend is retried on another (`option redispatch`). A check
//! may take 2 s to answer (a node under a loaded test run can be slow to finish a TLS
//! handshake), and [`Haproxy`] is handed out once HAProxy's own stats say every backend is up.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `haproxy -db`, killed (and its scratch directory removed) on drop.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy on a free port in front of `backends`.
    pub fn start(backends: &[SocketAddr]) -> Self {
        Self::start_with(backends, "")
    }

    /// Like [`Self::start`], every connection to a backend (health checks included) starting
    /// with a PROXY protocol v2 header naming the client (`send-proxy-v2`).
    pub fn start_sending_proxy_v2(backends: &[SocketAddr]) -> Self {
        Self::start_with(backends, " send-proxy-v2 check-send-proxy")
    }

    /// HAProxy in TCP mode (no HTTP, TCP health checks) in front of `backends`, every
    /// connection to a backend starting with a PROXY protocol v2 header (for the relay's TURN
    /// over TCP).
    pub fn start_tcp_sending_proxy_v2(backends: &[SocketAddr]) -> Self {
        Self::launch(backends, "tcp", "", " send-proxy-v2")
    }

    /// The edge of `docs/deploy.md`: HAProxy on `port` in TCP mode passing TLS through
    /// untouched to `backends` that serve TLS (HTTPS, WSS and TURN over TLS on one port),
    /// every connection starting with a PROXY v2 header; a backend is up while `/readyz`
    /// answers 200 over TLS.
    pub fn start_tls_passthrough_on(port: u16, backends: &[SocketAddr]) -> Self {
        Self::launch_on(
            port,
            backends,
            "tcp",
            "  option httpchk GET /readyz\n  http-check expect status 200\n",
            " check-ssl verify none send-proxy-v2",
        )
    }

    fn start_with(backends: &[SocketAddr], server_options: &str) -> Self {
        Self::launch(
            backends,
            "http",
            "  option httpchk GET /readyz\n",
            server_options,
        )
    }

    fn launch(backends: &[SocketAddr], mode: &str, check: &str, server_options: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::launch_on(port, backends, mode, check, server_options)
    }

    fn launch_on(
        port: u16,
        backends: &[SocketAddr],
        mode: &str,
        check: &str,
        server_options: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("haproxy-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                format!("  server s{i} {addr} check inter 300 fall 2 rise 1{server_options}\n")
            })
            .collect();
        let stats = dir.join("stats.sock");
        let config = format!(
            "global\n  maxconn 4096\n  stats socket {}\n\
             defaults\n  mode {mode}\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  \
             timeout tunnel 1h\n  timeout check 2s\n  retries 3\n  option redispatch 1\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  balance roundrobin\n{check}{servers}",
            stats.display()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy (apt-get install haproxy; scripts/test.sh does)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its own 15 s from there: a slow start on a loaded machine must not leave the checks
        // none (the stats answered nothing before the deadline, in one CI run).
        let deadline = Instant::now() + Duration::from_secs(15);
        wait_until_every_backend_is_up(&stats, backends.len(), deadline);
        Self { child, addr, dir }
    }
}

/// Polls HAProxy's `show stat` on its stats socket until each of the `expected` servers of
/// backend `be` reports `UP` (a server starts up before its first check, and a first check
/// that fails takes it down: waiting for a passed check is what makes it usable).
fn wait_until_every_backend_is_up(stats: &Path, expected: usize, deadline: Instant) {
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(csv) = show_stat(stats) {
            let up = servers_up(&csv);
            if up == expected {
                return;
            }
            last = csv;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "haproxy's backends are not all up (an empty report: its stats never answered):\n{last}"
    );
}

/// One `show stat` answer from the stats socket, if it answers.
fn show_stat(stats: &Path) -> Option<String> {
    let mut socket = UnixStream::connect(stats).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.write_all(b"show stat\n").ok()?;
    let mut csv = String::new();
    socket.read_to_string(&mut csv).ok()?;
    Some(csv)
}

/// How many servers of backend `be` the CSV of `show stat` reports `UP` with a passed check
/// (`UP`, not `UP 1/2` on the way down; the check's status `L4OK`, `L6OK` or `L7OK`).
fn servers_up(csv: &str) -> usize {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return 0;
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(proxy), Some(server), Some(status), Some(check)) = (
        column("pxname"),
        column("svname"),
        column("status"),
        column("check_status"),
    ) else {
        return 0;
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|row| {
            row.get(proxy) == Some(&"be")
                && row.get(server).is_some_and(|s| *s != "BACKEND")
                && row.get(status) == Some(&"UP")
                && row.get(check).is_some_and(|c| c.ends_with("OK"))
        })
        .count()
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
