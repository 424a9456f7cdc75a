//! One port for everything (`--shared-port`, and the relay's `--http-upstream`): HTTPS, WSS and
//! TURN over TLS on one TLS port, HTTP, WS and TURN over TCP on one plain port, told apart by
//! each connection's first bytes. coturn's `turnutils_uclient` allocates and relays through
//! the port with zero loss while WebSocket clients join a room on the same port; `welcome`
//! advertises the port; connections that speak neither are refused and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use signaling::protocol::{ServerMessage, SessionInfo};
use testkit::coturn::{EchoPeer, UclientReport, parse_uclient, uclient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Client, Server, join_message};
use crate::tls::{https_get_at, trusting};

/// The static TURN user the tests' relays know.
const USER: [&str; 2] = ["alice", "wonderland"];

/// Runs `turnutils_uclient` (100 messages of 180 bytes per client, channels) through `port`
/// with `transport` flags to the echo `peer`, on a blocking thread: 4 clients over TCP (`-t`),
/// one over TLS (`-t -S`: uclient's further clients try TLS 1.0 and 1.1, which rustls refuses).
async fn uclient_through(port: u16, peer: &EchoPeer, transport: &[&str]) -> UclientReport {
    let tls = transport.contains(&"-S");
    let (clients, interval_ms) = if tls { ("1", "20") } else { ("4", "2") };
    let peer_port = peer.port.to_string();
    let mut args: Vec<String> = transport.iter().map(|s| (*s).to_owned()).collect();
    args.extend(
        [
            "-c",
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-m",
            clients,
            "-n",
            "100",
            "-l",
            "180",
            "-z",
            interval_ms,
            "-u",
            USER[0],
            "-w",
            USER[1],
            "127.0.0.1",
        ]
        .map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        parse_uclient(&uclient(&args, Duration::from_secs(60)))
    })
    .await
    .expect("uclient thread")
}

/// uclient picks a TLS version at random per connection attempt and retries: its failed
/// attempts at TLS 1.0/1.1 (which rustls refuses) are not errors of ours.
fn assert_no_errors(report: &UclientReport) {
    let ours: Vec<&String> = report
        .errors
        .iter()
        .filter(|e| !e.contains("alert handshake failure"))
        .collect();
    assert!(ours.is_empty(), "{report:?}");
}

fn assert_lossless(report: &UclientReport) {
    assert!(report.sent_bytes > 0, "uclient sent nothing: {report:?}");
    assert_eq!(report.received_bytes, report.sent_bytes, "{report:?}");
    assert_eq!(report.lost_packets, Some(0), "no loss: {report:?}");
}

/// Every URL `welcome` offers.
fn urls(info: &SessionInfo) -> Vec<String> {
    info.ice_servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect()
}

/// Two WebSocket clients meet in `room` at `url` while `traffic` runs; returns the first one's
/// welcome.
async fn two_peers_meet(connect: impl AsyncFn() -> Client, room: &str) -> SessionInfo {
    let mut a = connect().await;
    a.send(&join_message(room)).await;
    let info = a.expect_welcome().await;
    let mut b = connect().await;
    b.send(&join_message(room)).await;
    b.expect_welcome().await;
    assert!(matches!(
        a.recv_message().await,
        ServerMessage::PeerJoined { .. }
    ));
    info
}

/// TURN over TLS (uclient, to the echo `peer`) and two WSS clients meeting in `room`, both
/// through `port` at the same time: uclient's report and the first client's welcome.
async fn turn_over_tls_and_wss(
    port: u16,
    tls: &Arc<ClientConfig>,
    peer: &EchoPeer,
    room: &str,
) -> (UclientReport, SessionInfo) {
    let url = format!("wss://localhost:{port}/ws/{room}");
    tokio::join!(
        uclient_through(port, peer, &["-t", "-S"]),
        two_peers_meet(
            async || {
                Client::connect_tls(&url, Arc::clone(tls))
                    .await
                    .unwrap_or_else(|e| panic!("wss on port {port}: {e:?}"))
            },
            room,
        )
    )
}

/// Asserts that the node counted uclient's connection as a TURN handover to its relay, read
/// from `/metrics` over HTTPS at `addr` (the node's port or the edge in front of it).
async fn assert_handed_over(addr: SocketAddr, tls: &Arc<ClientConfig>) {
    let metrics = https_get_at(addr, Arc::clone(tls), "/metrics")
        .await
        .unwrap_or_else(|| panic!("HTTPS at {addr}"));
    let handovers = testkit::metric_value(&metrics, "signaling_turn_handovers_total");
    assert!(
        handovers >= Some(1.0),
        "uclient's connection: {handovers:?}"
    );
}

/// Sends `bytes` and expects the connection to close without an answer.
async fn refused(addr: SocketAddr, bytes: &[u8]) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "answered: {read:?}");
}

fn relay_flags<'a>() -> Vec<&'a str> {
    vec![
        "--with-relay",
        "--relay-listen",
        "127.0.0.1:0",
        "--relay-arg=--user=alice:wonderland",
        "--shared-port",
    ]
}

#[tokio::test]
async fn turn_over_tls_and_wss_share_the_signaling_port() {
    let mut flags = relay_flags();
    flags.push("--tls-self-signed");
    let mut server = Server::spawn(&flags);
    let tls = trusting(&server.startup_output());
    let port = server.addr.port();
    let peer = EchoPeer::start();

    // TURN over TLS and WSS on the same port at the same time.
    let (report, info) = turn_over_tls_and_wss(port, &tls, &peer, "shared").await;
    assert_no_errors(&report);
    assert_lossless(&report);

    let advertised = format!("turns:127.0.0.1:{port}?transport=tcp");
    assert!(urls(&info).contains(&advertised), "{:?}", urls(&info));

    refused(server.addr, b"\x16\x03\x01\x00\x05hello").await;
    assert_handed_over(server.addr, &tls).await;
}

/// The recipe "behind HAProxy" of `docs/deploy.md`: HAProxy on the edge port in TCP mode,
/// passing TLS through with `send-proxy-v2` and checking `/readyz` over TLS; the node with
/// `--proxy-protocol` and `--shared-port-public` naming the edge. WSS and TURN over TLS both go
/// through the edge's one port at the same time, `welcome` advertises the edge (not the
/// node's own port), and the node hands the TURN connection to its relay.
#[tokio::test]
async fn behind_haproxy_the_edge_port_carries_wss_and_turn_over_tls() {
    let edge = testkit::free_port();
    let public = format!("127.0.0.1:{edge}");
    let mut flags = relay_flags();
    flags.extend([
        "--tls-self-signed",
        "--proxy-protocol",
        "--shared-port-public",
        &public,
        // Behind a balancer the relay's clients may be remote, so loopback peers are off
        // unless asked for; the echo peer here is on loopback.
        "--relay-arg=--allow-loopback-peers",
    ]);
    let mut server = Server::spawn(&flags);
    let tls = trusting(&server.startup_output());
    let proxy = testkit::haproxy::Haproxy::start_tls_passthrough_on(edge, &[server.addr]);
    let peer = EchoPeer::start();

    let (report, info) = turn_over_tls_and_wss(edge, &tls, &peer, "edge").await;
    assert_no_errors(&report);
    // The path is what this test proves (zero loss is the tests above): the peer leg is UDP
    // on a loaded loopback, and the extra hop can make uclient count a late echo as lost.
    assert!(
        report.sent_bytes > 0 && report.received_bytes * 100 >= report.sent_bytes * 95,
        "relayed through HAProxy: {report:?}"
    );
    let advertised = urls(&info);
    assert!(
        advertised.contains(&format!("turns:{public}?transport=tcp")),
        "{advertised:?}"
    );
    let own = format!(":{}?", server.addr.port());
    assert!(
        advertised.iter().all(|u| !u.contains(&own)),
        "{advertised:?}"
    );
    assert_handed_over(proxy.addr, &tls).await;
}

#[tokio::test]
async fn turn_over_tcp_and_ws_share_a_plain_signaling_port() {
    let server = Server::spawn(&relay_flags());
    let port = server.addr.port();
    let peer = EchoPeer::start();
    let url = format!("ws://{}/ws/plain", server.addr);
    let (report, info) = tokio::join!(
        uclient_through(port, &peer, &["-t"]),
        two_peers_meet(async || Client::connect(&url).await, "plain")
    );
    assert_no_errors(&report);
    assert_lossless(&report);
    let advertised = format!("turn:127.0.0.1:{port}?transport=tcp");
    assert!(urls(&info).contains(&advertised), "{:?}", urls(&info));

    // Neither TURN nor HTTP (a TLS ClientHello on the plain port, top bits 11): closed.
    refused(server.addr, b"\x16\x03\x01\x00\x05hello").await;
    refused(server.addr, b"\xff\xff\xff\xff").await;
    // Text that is no HTTP method has ChannelData's top bits, but no TURN client opens with
    // ChannelData: closed too, not handed to the relay (which would wait for a length).
    let handovers = server.metric("signaling_turn_handovers_total").await;
    refused(server.addr, b"XXXX").await;
    refused(server.addr, b"get / HTTP/1.1\r\n\r\n").await;
    refused(server.addr, &[0x40, 0x01, 0x00, 0x04, 1, 2, 3, 4]).await;
    assert!(server.metric("signaling_first_bytes_refused_total").await >= 5);
    assert_eq!(
        server.metric("signaling_turn_handovers_total").await,
        handovers
    );
    assert!(handovers >= 4);
}

#[tokio::test]
async fn without_shared_port_the_relay_keeps_to_its_own_ports() {
    let server = Server::spawn(&relay_flags()[..4]);
    let (_client, info) = Client::join(&format!("ws://{}/ws/own", server.addr), None).await;
    let port = format!(":{}?", server.addr.port());
    assert!(
        urls(&info).iter().all(|u| !u.contains(&port)),
        "{:?}",
        urls(&info)
    );
    // A STUN Binding on the signaling port is not HTTP: hyper answers 400 or closes.
    let binding = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&binding).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        !matches!(read, Ok(n) if n >= 2 && buf[0] == 0x01 && buf[1] == 0x01),
        "no STUN answer without --shared-port"
    );
}

/// A standalone relay in front of signaling: `--http-upstream` forwards the HTTPS and WSS
/// connections of its TLS port (and HTTP on its TCP port) to signaling, with a PROXY v2 header
/// (`--http-upstream-proxy-protocol`, signaling runs with `--proxy-protocol`), and serves TURN
/// over TLS on the same port.
#[tokio::test]
async fn a_standalone_relay_forwards_the_web_to_its_upstream_and_serves_turn_on_the_same_port() {
    let signaling = Server::spawn(&["--proxy-protocol"]);
    let upstream = signaling.addr.to_string();
    let config = relay::Config::from_args([
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--user",
        "alice:wonderland",
        "--allow-loopback-peers",
        "--admin-listen",
        "none",
        "--workers",
        "1",
        "--http-upstream",
        &upstream,
        "--http-upstream-proxy-protocol",
    ])
    .expect("relay config");
    let relay = relay::Relay::start(config).expect("relay");
    let tls_addr = relay.addrs().tls[0];
    let tcp_addr = relay.addrs().tcp[0];
    let tls = trusting(relay.addrs().tls_self_signed_pem.as_deref().expect("PEM"));
    let peer = EchoPeer::start();

    let url = format!("wss://localhost:{}/ws/edge", tls_addr.port());
    let (report, _info) = tokio::join!(
        uclient_through(tls_addr.port(), &peer, &["-t", "-S"]),
        two_peers_meet(
            async || {
                Client::connect_tls(&url, Arc::clone(&tls))
                    .await
                    .expect("wss through the relay")
            },
            "edge",
        )
    );
    assert_no_errors(&report);
    if report.received_bytes != report.sent_bytes || report.lost_packets != Some(0) {
        // Where the relay dropped what it did not relay, if it did.
        let metrics = relay.metrics().render();
        let drops: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect();
        eprintln!(
            "relay counters after a lossy uclient run:\n{}",
            drops.join("\n")
        );
    }
    assert_lossless(&report);

    let health = https_get_at(tls_addr, Arc::clone(&tls), "/healthz")
        .await
        .expect("HTTPS through the relay");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let plain = tokio::task::spawn_blocking(move || testkit::http_get(tcp_addr, "/healthz"))
        .await
        .unwrap()
        .expect("HTTP through the relay's TCP port");
    assert_eq!(plain.0, 200, "{plain:?}");
    // Neither TURN nor HTTP on the TCP port: closed and counted.
    refused(tcp_addr, b"\x16\x03\x01\x00\x05hello").await;

    // The workers publish their counters on their timer tick (every 200 ms at most).
    let mut counted = None;
    for _ in 0..50 {
        let metrics = relay.metrics().render();
        let value = |name| testkit::metric_value(&metrics, name).unwrap_or(0.0);
        counted = Some((
            value("relay_http_upstream_connections_total"),
            value("relay_http_upstream_failures_total"),
            value("relay_first_bytes_refused_total"),
        ));
        if counted.is_some_and(|(forwarded, _, refused)| forwarded >= 4.0 && refused >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted,
        Some((4.0, 0.0, 1.0)),
        "(forwarded: two WSS, HTTPS, HTTP; failed; refused)"
    );
    // Signaling refused no PROXY header: every forwarded connection carried one (read through
    // the relay: signaling takes no connection without the header).
    let metrics = https_get_at(tls_addr, Arc::clone(&tls), "/metrics")
        .await
        .expect("metrics through the relay");
    assert_eq!(
        testkit::metric_value(&metrics, "signaling_proxy_headers_refused_total"),
        Some(0.0),
        "{metrics}"
    );
    relay.shutdown().await;
}

/// The PROXY header, the TLS handshake and the first bytes share one `--header-read-timeout`
/// from the accept: a client that takes most of it for the PROXY header cannot then take as
/// long again before its first bytes.
#[tokio::test]
async fn the_edge_steps_share_one_header_read_timeout() {
    let mut flags = relay_flags();
    flags.extend(["--proxy-protocol", "--header-read-timeout", "2s"]);
    let server = Server::spawn(&flags);
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n";

    // Within the deadline, all steps together: served.
    let mut quick = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    quick.write_all(header).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), quick.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Each step within 2 s, but not all of them: closed unanswered.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    slow.write_all(header).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let _ = slow
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "answered: {read:?}");
}
