//! The `relay` binary as the peer tests and benches run it: UDP only on 127.0.0.1 (no TCP,
//! no TLS, no admin listener), relayed ports on 127.0.0.1, TURN REST credentials.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Spawned, bin_path};

/// A running loopback relay; killed and reaped when dropped.
#[derive(Debug)]
pub struct LoopbackRelay {
    /// The process.
    pub proc: Spawned,
    /// Its UDP listener (STUN and TURN).
    pub udp: SocketAddr,
}

impl LoopbackRelay {
    /// Starts `relay` with TURN REST secret `secret`, its log going to `stderr`. With
    /// `allow_loopback_peers` it relays to loopback peers; without, it refuses (403) their
    /// permissions, as a production relay refuses private addresses. Returns once it is ready;
    /// panics if it is not within 20 s.
    pub fn start(secret: &str, allow_loopback_peers: bool, stderr: Stdio) -> Self {
        let mut command = Command::new(bin_path("relay"));
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-tcp",
                "--admin-listen",
                "none",
            ])
            .args(["--relay-ip", "127.0.0.1", "--turn-secret", secret])
            .stderr(stderr);
        if allow_loopback_peers {
            command.arg("--allow-loopback-peers");
        }
        let mut proc = Spawned::spawn(command, false);
        let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("listening udp "));
        let udp = line["listening udp ".len()..]
            .trim()
            .parse()
            .expect("relay address");
        proc.wait_line(Duration::from_secs(20), |l| l == "ready");
        Self { proc, udp }
    }

    /// The `turn:` URL of its UDP listener (`signaling --turn-url`).
    pub fn turn_url(&self) -> String {
        format!("turn:{}?transport=udp", self.udp)
    }
}
