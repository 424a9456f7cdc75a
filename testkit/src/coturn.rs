//! coturn's test clients (Debian package `coturn`): `turnutils_peer` as a UDP echo peer and
//! `turnutils_uclient` as a TURN client, with the report it prints parsed.

use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Panics with an install hint if coturn's test tools are missing.
pub fn require_coturn() {
    if !std::path::Path::new("/usr/bin/turnutils_uclient").exists() {
        panic!(
            "coturn's turnutils are missing: run scripts/install-test-deps.sh (apt-get install coturn)"
        );
    }
}

/// `turnutils_peer` echoing on 127.0.0.1:PORT; killed on drop.
pub struct EchoPeer {
    child: Child,
    /// The UDP port it echoes on.
    pub port: u16,
}

impl EchoPeer {
    /// Starts the peer on a free port and returns once it echoes (at most 10 s): a packet
    /// relayed to it before it has bound its port would be lost, and counted as the relay's loss.
    /// A peer that exits (another process took the port meanwhile) is started again on another
    /// port, 3 times at most.
    pub fn start() -> Self {
        require_coturn();
        for _ in 0..3 {
            let port = crate::free_port();
            let child = Command::new("turnutils_peer")
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnutils_peer");
            let mut peer = Self { child, port };
            match peer.echoes(Duration::from_secs(10)) {
                Some(true) => return peer,
                Some(false) => {
                    panic!("turnutils_peer on 127.0.0.1:{port} does not echo after 10 s")
                }
                None => continue, // exited
            }
        }
        panic!("turnutils_peer exited at start 3 times");
    }

    /// Sends a probe every 50 ms until it comes back (`Some(true)`), for at most `limit`
    /// (`Some(false)`); `None` if the peer exited.
    fn echoes(&mut self, limit: Duration) -> Option<bool> {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("probe timeout");
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return None;
            }
            let _ = probe.send_to(b"echo?", ("127.0.0.1", self.port));
            match probe.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == b"echo?" => return Some(true),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Some(false)
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `turnutils_uclient` with `args` under a timeout.
pub fn uclient(args: &[&str], timeout: Duration) -> Output {
    require_coturn();
    let secs = timeout.as_secs().max(1).to_string();
    Command::new("timeout")
        .args(["-s", "KILL", &secs, "turnutils_uclient"])
        .args(args)
        .output()
        .expect("run turnutils_uclient")
}

/// What `turnutils_uclient` reported at the end of a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UclientReport {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub lost_packets: Option<u64>,
    pub errors: Vec<String>,
}

/// Parses `tot_send_bytes ~ N, tot_recv_bytes ~ M` and `Total lost packets N` lines.
pub fn parse_uclient(output: &Output) -> UclientReport {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut r = UclientReport::default();
    for line in text.lines() {
        if let Some(rest) = line.split("tot_send_bytes ~ ").nth(1) {
            let mut parts = rest.split(", tot_recv_bytes ~ ");
            r.sent_bytes = parts
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            r.received_bytes = parts
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            r.lost_packets = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
        if line.contains("error") || line.contains("Cannot") {
            r.errors.push(line.to_owned());
        }
    }
    r
}
