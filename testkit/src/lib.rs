//! The test harness the workspace's suites share (signaling's, the relay's and the end-to-end
//! tests), so that each kit exists once:
//!
//! - [`Spawned`]: a binary with its stdout read line by line, waited on by line, killed and
//!   reaped on drop whatever happens to the test; [`ChildGuard`] for processes read otherwise;
//! - [`http_get`], [`status_code`] and [`metric_value`]: a plain HTTP GET, the status of a
//!   response, and one sample of Prometheus text;
//! - [`proc_status_kib`]: a process's memory (VmRSS, VmHWM) from `/proc`;
//! - [`free_port`], [`wait_until`], [`bin_path`], [`dir_names`], [`run_ok`];
//! - [`rest_password`]: the TURN REST password, the relay's own implementation;
//! - [`write_self_signed`]: a certificate and key as PEM files (`--tls-cert`/`--tls-key`);
//! - [`coturn`]: coturn's `turnutils_peer` and `turnutils_uclient`;
//! - [`haproxy`]: a real HAProxy in front of the servers;
//! - [`LoopbackRelay`]: the `relay` binary on loopback UDP with TURN REST credentials;
//! - [`turn_client`]: the webrtc-rs `turn` crate's client on a loopback socket.

pub mod coturn;
pub mod haproxy;
mod loopback_relay;
mod process;
pub mod turn_client;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use loopback_relay::LoopbackRelay;
pub use process::{ChildGuard, Spawned};
pub use relay_proto::auth::rest_password;

/// The names of the entries of `dir`, sorted (what a command left in a directory).
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `command` to its end and returns its output, once it succeeded; panics naming `what`
/// (the command, and where it comes from) when it cannot start or fails, with its output.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The path of a workspace binary (`signaling`, `relay`, `peer`) built for this profile, beside
/// the test executable (`target/<profile>/`; `scripts/test.sh` builds them first). An example
/// (`target/<profile>/examples/`) finds them the same way.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/it-<hash> (or examples/<name>) -> target/<profile>/<name>
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

/// Reserves a free port on 127.0.0.1 (UDP and TCP) by binding port 0 and releasing it. Prefer
/// passing port 0 to the server and reading the bound address back; use this only where a
/// program cannot report its port.
///
/// A port free for UDP may be held for TCP by another process (tests run in parallel), so a
/// bounded number of candidates is tried.
pub fn free_port() -> u16 {
    for _ in 0..64 {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 0");
        let port = sock.local_addr().expect("local_addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 64 tries");
}

/// Polls `check` every 20 ms until it returns `Some`, or gives up after `timeout`.
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

/// A blocking HTTP/1.1 GET with `Connection: close` (5 s timeouts): the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = status_code(&response);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// The status code of an HTTP/1.x response (its head or all of it); 0 without a status line.
pub fn status_code(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB; 0 if the process or the
/// field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a new self-signed certificate for `localhost` and 127.0.0.1 to `dir/cert.pem` and its
/// key to `dir/key.pem` (each replaced in one rename), and returns the certificate's PEM (what
/// a client trusts).
pub fn write_self_signed(dir: &std::path::Path) -> String {
    write_certificate(dir, None)
}

/// [`write_self_signed`], valid from and until the given times when `validity` is given (rcgen's
/// 1975 to 4096 otherwise): an expired certificate, or one about to expire.
pub fn write_certificate(
    dir: &std::path::Path,
    validity: Option<(std::time::SystemTime, std::time::SystemTime)>,
) -> String {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).expect("certificate names");
    if let Some((not_before, not_after)) = validity {
        let since_epoch =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch(not_before);
        params.not_after = epoch + since_epoch(not_after);
    }
    let key = rcgen::KeyPair::generate().expect("generate a key");
    let pem = params
        .self_signed(&key)
        .expect("generate a certificate")
        .pem();
    for (name, text) in [
        ("cert.pem", pem.as_str()),
        ("key.pem", &key.serialize_pem()),
    ] {
        let staging = dir.join(format!(".{name}.new"));
        std::fs::write(&staging, text).expect("write PEM");
        std::fs::rename(&staging, dir.join(name)).expect("replace PEM");
    }
    pem
}

/// The value of one sample (`name` or `name{labels}`, as exposed) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The series names of a Prometheus text exposition, as scraped (`_total` on counters).
pub fn exposed_series(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.to_owned(),
            })
        })
        .collect()
}

/// Whether the Markdown `doc` names `series` in code style, alone or with its labels.
pub fn documents(doc: &str, series: &str) -> bool {
    doc.contains(&format!("`{series}`")) || doc.contains(&format!("`{series}{{"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_as_scraped_and_found_in_code_style() {
        let text = "# HELP a_total x\n# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n";
        assert_eq!(exposed_series(text), ["a_total", "b"]);
        let doc = "| `a_total{code}` | counter |\n| `bb` | gauge |";
        assert!(documents(doc, "a_total"));
        assert!(!documents(doc, "b"), "`bb` is not `b`");
    }

    #[test]
    fn reads_one_sample() {
        let text = "# TYPE a counter\na_total 3\na_total{x=\"1\"} 4.5\nab_total 9\n";
        assert_eq!(metric_value(text, "a_total"), Some(3.0));
        assert_eq!(metric_value(text, "a_total{x=\"1\"}"), Some(4.5));
        assert_eq!(metric_value(text, "b_total"), None);
    }

    #[test]
    fn reads_a_status_code() {
        assert_eq!(
            status_code("HTTP/1.1 404 Not Found\r\nA: b\r\n\r\nbody"),
            404
        );
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), 200);
        assert_eq!(status_code(""), 0);
    }

    #[test]
    fn reads_this_process_memory() {
        let pid = std::process::id();
        let rss = proc_status_kib(pid, "VmRSS");
        assert!(rss > 0);
        assert!(proc_status_kib(pid, "VmHWM") >= rss);
        assert_eq!(proc_status_kib(pid, "NoSuchField"), 0);
    }
}
