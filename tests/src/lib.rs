//! Shared harness for the end-to-end tests: spawning the real binaries on free ports and
//! cleaning them up by PID, whatever happens to the test.
//!
//! The binaries are the ones `cargo build --workspace --bins` put beside the test executable
//! (`target/<profile>/`); `scripts/test.sh` builds them before running the tests.

pub mod haproxy;
pub mod netns;
pub mod redis;
pub mod signaling_http;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary (`signaling`, `relay`, `peer`) built for this profile.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process killed (and reaped) when dropped, so a failing test leaks nothing.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Spawns a workspace binary with the given arguments; stdout is piped, stderr inherited.
    pub fn spawn(name: &str, args: &[&str]) -> std::io::Result<Self> {
        let child = Command::new(bin_path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reserves a free port on 127.0.0.1 by binding port 0 and releasing it.
/// Prefer passing port 0 to the server and reading the bound address back; use this only
/// where a program cannot report its port.
pub fn free_port() -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 0");
    let port = sock.local_addr().expect("local_addr").port();
    // Make sure the TCP port is free too.
    drop(std::net::TcpListener::bind(("127.0.0.1", port)).expect("tcp port free"));
    port
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
