//! Operations: health, readiness, metrics, the web demo, TURN credential pushes, and drain on
//! SIGTERM.

use std::time::{Duration, Instant};

use relay_proto::auth::rest_password;
use signaling::protocol::{ClientMessage, LeaveReason, ServerMessage};

use crate::basic::expect_peer_left;
use crate::support::{Client, Closed, Server};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = Server::start(&[]);
    let (status, _, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
    let (_a, _) = Client::join(&server.ws("/ws/m"), None).await;
    let (status, content_type, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    for line in [
        "signaling_connections 1",
        "signaling_sessions 1",
        "signaling_rooms 1",
        "signaling_connections_accepted_total 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn serves_the_web_demo() {
    let server = Server::start(&[]);
    for path in ["/", "/r/some-room", "/index.html"] {
        let (status, content_type, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert!(body.contains("<html"), "{path}");
    }
    let (status, _, _) = server.get("/no/such/file.js").await;
    assert_eq!(status, 404);

    // --web-dir serves from disk, and never outside it.
    let dir = std::env::temp_dir().join(format!("signaling-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<html>from disk</html>").unwrap();
    std::fs::write(dir.join("app.js"), "export const x = 1;").unwrap();
    let server = Server::start(&["--web-dir", dir.to_str().unwrap()]);
    let (_, _, body) = server.get("/r/x").await;
    assert_eq!(body, "<html>from disk</html>");
    let (status, content_type, _) = server.get("/app.js").await;
    assert_eq!(status, 200);
    assert!(content_type.contains("javascript"), "{content_type}");
    let (status, _, _) = server.get("/../../etc/passwd").await;
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn turn_credentials_are_minted_and_refreshed_before_expiry() {
    let server = Server::start(&[
        "--stun-url",
        "stun:127.0.0.1:3478",
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-url",
        "turns:127.0.0.1:5349",
        "--turn-secret",
        "signing-secret,older-secret",
        "--turn-ttl",
        "5s",
    ]);
    let (mut a, info) = Client::join(&server.ws("/ws/turn"), None).await;
    let check = |servers: &[signaling::protocol::IceServer]| -> u64 {
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, ["stun:127.0.0.1:3478"]);
        let turn = &servers[1];
        assert_eq!(turn.urls.len(), 2);
        let username = turn.username.as_deref().expect("username");
        let (expiry, user) = username.split_once(':').expect("expiry:room:peer");
        assert_eq!(user, format!("turn:{}", info.peer_id));
        assert_eq!(
            turn.credential.as_deref(),
            Some(rest_password(b"signing-secret", username).as_str())
        );
        expiry.parse().expect("expiry")
    };
    let first_expiry = check(&info.ice_servers);
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let now = unix_now();
    assert!((now + 4..=now + 6).contains(&first_expiry));

    // Fresh credentials arrive at 80% of the 5 s TTL, while the old ones are still valid (a
    // relay accepts a username whose expiry is not in the past).
    let pushed = match a
        .recv_within(Duration::from_secs(6))
        .await
        .map(|f| f.message)
    {
        Some(ServerMessage::IceServers { ice_servers }) => ice_servers,
        other => panic!("expected ice_servers, got {other:?}"),
    };
    let now = unix_now();
    assert!(now <= first_expiry, "pushed at {now}, after {first_expiry}");
    let second_expiry = check(&pushed);
    assert!(second_expiry >= first_expiry);
    // And again, for as long as the session lives.
    match a
        .recv_within(Duration::from_secs(6))
        .await
        .map(|f| f.message)
    {
        Some(ServerMessage::IceServers { ice_servers }) => {
            assert!(check(&ice_servers) >= second_expiry)
        }
        other => panic!("expected ice_servers, got {other:?}"),
    }
}

#[tokio::test]
async fn sigterm_drains_then_exits() {
    let mut server = Server::start(&["--drain-timeout", "1500ms", "--reconnect-after", "2500ms"]);
    let (mut a, _) = Client::join(&server.ws("/ws/drain"), None).await;
    let (mut b, b_info) = Client::join(&server.ws("/ws/drain"), None).await;
    let _ = a.recv_message().await;

    let start = Instant::now();
    server.terminate();
    for client in [&mut a, &mut b] {
        match client.recv_message().await {
            ServerMessage::Draining {
                reason,
                reconnect_after_ms,
            } => {
                assert!(!reason.is_empty());
                assert_eq!(reconnect_after_ms, 2500);
            }
            other => panic!("expected draining, got {other:?}"),
        }
    }
    // Not ready any more, still alive; no new sessions. (The node asked is the one whose
    // readiness was read: in a cluster run another node may not have seen its SIGTERM yet.)
    let (status, _, _) = server.get("/readyz").await;
    assert_eq!(status, 503);
    let (status, _, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    match Client::try_connect(&server.ws_first("/ws/drain"), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            // Come back when `draining` suggests, in whole seconds.
            let retry_after = response.headers().get("retry-after").map(|v| v.as_bytes());
            assert_eq!(retry_after, Some(&b"3"[..]));
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // B leaves like a well-behaved client; A stays until the server closes it.
    b.send(&ClientMessage::Leave { id: None }).await;
    expect_peer_left(&mut a, &b_info.peer_id, LeaveReason::Left).await;
    assert_eq!(a.expect_close().await, Closed::Code(1001));
    // Once its drain time is over, whatever A does: the 1.5 s drain, up to 1 s for A's close,
    // leaving the cluster, with room for a loaded machine.
    assert!(server.wait_exit(Duration::from_secs(8)), "still running");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// `--with-relay` with `--stun-url`/`--turn-url` that name the in-process relay already: each
/// URL is given to clients once.
#[cfg(feature = "with-relay")]
#[tokio::test]
async fn urls_naming_the_in_process_relay_are_given_once() {
    let port = testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let stun = format!("stun:127.0.0.1:{port}");
    let turn = format!("turn:127.0.0.1:{port}?transport=udp");
    let server = Server::spawn(&[
        "--with-relay",
        "--relay-listen",
        &listen,
        "--stun-url",
        &stun,
        "--turn-url",
        &turn,
        "--turn-secret",
        "a-secret-of-sixteen-bytes",
    ]);
    let (_a, info) = Client::join(&server.ws_first("/ws/once"), None).await;
    let urls: Vec<&str> = info
        .ice_servers
        .iter()
        .flat_map(|server| server.urls.iter().map(String::as_str))
        .collect();
    let mut unique = urls.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(urls.len(), unique.len(), "{urls:?}");
    assert!(
        urls.contains(&stun.as_str()) && urls.contains(&turn.as_str()),
        "{urls:?}"
    );
}

/// `--with-relay`: the in-process relay drains with the server: from the signal on, its
/// `/readyz` is 503 and `relay_draining` 1 (new allocations refused), and it stops with the
/// server within `--drain-timeout`.
#[cfg(feature = "with-relay")]
#[tokio::test]
async fn sigterm_drains_the_in_process_relay_too() {
    // One node, also in a cluster run: the relay of the node signalled is the one read.
    let mut server = Server::spawn(&[
        "--with-relay",
        "--relay-listen",
        "127.0.0.1:0",
        "--relay-arg=--admin-listen=127.0.0.1:0",
        "--drain-timeout",
        "2s",
    ]);
    let relay_admin: std::net::SocketAddr = server
        .startup_output()
        .lines()
        .find_map(|l| l.strip_prefix("relay admin http://"))
        .expect("the relay's admin line")
        .trim()
        .parse()
        .expect("the relay's admin address");
    let (mut a, _) = Client::join(&server.ws_first("/ws/relay-drain"), None).await;
    assert_eq!(
        crate::support::http_get(relay_admin, "/readyz").await.0,
        200
    );
    assert_eq!(server.metric("relay_draining").await, 0);

    let start = Instant::now();
    server.terminate();
    assert!(matches!(
        a.recv_message().await,
        ServerMessage::Draining { .. }
    ));
    // The client stays: the server is draining, and so is its relay.
    assert_eq!(
        crate::support::http_get(relay_admin, "/readyz").await.0,
        503
    );
    assert_eq!(server.metric("relay_draining").await, 1);
    assert_eq!(a.expect_close().await, Closed::Code(1001));
    // With the server, not after the relay's own drain timeout (60 s): the 2 s drain, the
    // close, and stopping the relay's threads, with room for a loaded machine.
    assert!(server.wait_exit(Duration::from_secs(8)), "still running");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// The clients still there at the end of a drain each get their 1001 close frame before the
/// process exits (not a connection reset as the runtime goes): the drain waits for their
/// closes, and says that none is left open.
#[tokio::test]
async fn every_client_left_at_the_end_of_a_drain_reads_1001() {
    let (mut child, first) = spawn_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "none",
        "--drain-timeout",
        "1s",
    ]);
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .expect("the listening line")
        .to_owned();
    let mut clients = Vec::new();
    for n in 0..20 {
        let (client, _) = Client::join(&format!("ws://{addr}/ws/end-{n}"), None).await;
        clients.push(client);
    }
    // SAFETY: kill(2) on the PID of a child this test spawned.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    for client in &mut clients {
        assert!(matches!(
            client.recv_message().await,
            ServerMessage::Draining { .. }
        ));
    }
    // Read every socket at once: a client reads its close while the others wait.
    let closes = futures_util::future::join_all(clients.iter_mut().map(Client::expect_close)).await;
    assert!(
        closes.iter().all(|c| *c == Closed::Code(1001)),
        "{closes:?}"
    );
    let exited = testkit::wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(exited.is_some(), "still running");
    let logs = kill_and_read_stderr(child);
    let drained = logs
        .lines()
        .find(|l| l.contains("drained"))
        .unwrap_or_else(|| panic!("no `drained` line:\n{logs}"));
    assert!(drained.contains("connections=0"), "{drained}");
}

/// The binary with `args`, stdout and stderr piped (`RUST_LOG=info`), and the first line it
/// printed (`listening on ...`).
fn spawn_logging(args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead as _, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(args)
        .env("RUST_LOG", "info")
        // Not the default port (another program may want it); a flag of the test wins.
        .env("SIGNALING_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read");
    // Kept open: the server's next lines would fail on a closed pipe.
    child.stdout = Some(stdout.into_inner());
    (child, first)
}

/// Kills `child` and returns everything it logged.
fn kill_and_read_stderr(mut child: std::process::Child) -> String {
    use std::io::Read as _;
    let _ = child.kill();
    let _ = child.wait();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("read stderr");
    logs
}

/// Kills `child` once it logged a line containing `needle` (or 10 s passed) and returns
/// everything it logged.
fn kill_once_logged(mut child: std::process::Child, needle: &str) -> String {
    use std::io::{BufRead as _, BufReader};
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut logs = String::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        logs.push_str(&line);
        logs.push('\n');
        if line.contains(needle) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    let _ = reader.join();
    logs
}

/// `--log-format json`: a connection's log lines carry its span's fields once each (the peer's
/// name as `peer_name`, not a second `name` beside the span's own).
#[tokio::test]
async fn json_log_lines_name_the_peer_its_address_and_the_span_once_each() {
    let (child, first) = spawn_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "none",
        "--log-format",
        "json",
    ]);
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .expect("the listening line")
        .to_owned();
    let mut client = Client::connect(&format!("ws://{addr}/ws/logged")).await;
    client
        .send(&ClientMessage::Join {
            id: Some(1),
            versions: vec![1],
            room: None,
            name: Some("tester".into()),
            token: None,
        })
        .await;
    client.expect_welcome().await;
    client.send(&ClientMessage::Leave { id: None }).await;
    let _ = client.expect_close().await;
    let logs = kill_once_logged(child, r#""message":"left""#);
    let left = logs
        .lines()
        .find(|l| l.contains(r#""message":"left""#))
        .unwrap_or_else(|| panic!("no `left` line:\n{logs}"));
    let line: serde_json::Value = serde_json::from_str(left).expect("a JSON line");
    assert_eq!(line["span"]["name"], "conn", "{left}");
    assert_eq!(line["span"]["peer_name"], "tester", "{left}");
    // The client's address (with `--proxy-protocol`, the header's: `proxy.rs`).
    assert_eq!(line["span"]["client"], "127.0.0.1", "{left}");
}

/// A taken `--admin-listen` stops the start before `listening on` is printed (scripts wait
/// for that line).
#[test]
fn a_taken_admin_port_fails_before_the_listening_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", &admin])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-listen"), "{stderr}");
}

/// An invalid value from an environment variable is refused naming the variable, not only
/// the flag it stands for (an operator looks for the flag on the command line and finds none).
#[test]
fn an_invalid_value_from_the_environment_names_its_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "none"])
        .env("SIGNALING_RATE_LIMIT", "fast")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'fast' for '--rate-limit")
            && stderr.contains("from the environment variable SIGNALING_RATE_LIMIT"),
        "{stderr}"
    );
}

/// A flag that needs another is refused before anything starts, naming both, also when the
/// other is a switch whose variable says `false` (which clap's `requires` took as given).
#[test]
fn a_flag_missing_its_companion_is_named() {
    let refusal = |env: &[(&str, &str)], args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "none"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let exited =
            testkit::wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten());
        let stderr = kill_and_read_stderr(child);
        let status = exited.unwrap_or_else(|| panic!("{env:?} {args:?} started:\n{stderr}"));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        stderr
    };
    let stderr = refusal(&[], &["--tls-cert", "cert.pem"]);
    assert!(stderr.contains("--tls-cert needs --tls-key"), "{stderr}");
    let stderr = refusal(&[], &["--acme-domain", "a.example"]);
    assert!(
        stderr.contains("--acme-domain needs --acme-cache"),
        "{stderr}"
    );
    #[cfg(feature = "with-relay")]
    {
        let stderr = refusal(&[("SIGNALING_WITH_RELAY", "false")], &["--shared-port"]);
        assert!(
            stderr.contains("--shared-port needs --with-relay"),
            "{stderr}"
        );
        let stderr = refusal(&[], &["--with-relay", "--shared-port-public", "h:443"]);
        assert!(
            stderr.contains("--shared-port-public needs --shared-port"),
            "{stderr}"
        );
    }
}

#[test]
fn startup_prints_the_config_without_secrets() {
    let (child, first) = spawn_logging(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "jwt-very-secret",
        "--turn-url",
        "turn:127.0.0.1:3478",
        "--turn-secret",
        "turn-very-secret",
    ]);
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    // Logged before the listening line was printed: all there once the process is gone.
    let logs = kill_and_read_stderr(child);
    assert!(logs.contains("starting"), "{logs}");
    assert!(logs.contains("turn:127.0.0.1:3478"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(
        !logs.contains("very-secret"),
        "a secret was logged:\n{logs}"
    );
}
