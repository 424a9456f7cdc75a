//! `--max-connections` through the real binary: one relay-wide limit (exact over two workers)
//! that counts a connection from accept on, so silent TLS clients that never finish their
//! handshake hold slots only until `--tls-handshake-timeout`, are counted, and give their
//! slots back. `--max-connections-per-ip`: one address's share, by the socket's peer or by the
//! client a PROXY header names.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Link, RelayProcess, TestClient, tls_link, wait_until};

const LIMIT: usize = 20;
/// Silent connections opened per transport (TLS and plain TCP, interleaved).
const PER_TRANSPORT: usize = 30;

/// True while the relay keeps `conn` open (nothing to read, no end of stream).
fn is_open(conn: &mut TcpStream) -> bool {
    conn.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    matches!(conn.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

#[test]
fn silent_tls_handshakes_count_against_an_exact_limit_and_time_out() {
    let relay = RelayProcess::start(
        &[
            &[
                "--user",
                "u:p",
                "--max-connections",
                &LIMIT.to_string(),
                "--tls-handshake-timeout",
                "3s",
            ],
            crate::support::TLS_ON_LOOPBACK,
        ]
        .concat(),
    );
    let tls = relay.tls.expect("tls listener");
    let tcp = relay.tcp.expect("tcp listener");
    // (is TLS, connection): connected and silent, alternating transports.
    let mut conns: Vec<(bool, TcpStream)> = (0..PER_TRANSPORT * 2)
        .map(|i| {
            let is_tls = i % 2 == 0;
            let to = if is_tls { tls } else { tcp };
            let conn = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
            (is_tls, conn)
        })
        .collect();
    let refused = PER_TRANSPORT * 2 - LIMIT;
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .metric("relay_stream_connections_refused_total")
            >= refused as u64),
        "refusals: {}",
        relay.metric("relay_stream_connections_refused_total")
    );
    let open: Vec<bool> = conns.iter_mut().map(|(_, c)| is_open(c)).collect();
    let open_tls = conns
        .iter()
        .zip(&open)
        .filter(|((is_tls, _), open)| *is_tls && **open)
        .count();
    let open_total = open.iter().filter(|o| **o).count();
    assert_eq!(open_total, LIMIT, "exactly the limit, over both workers");
    assert_eq!(
        relay.metric("relay_stream_connections_refused_total"),
        refused as u64
    );
    assert!(open_tls > 0, "silent TLS handshakes hold slots too");
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_tls_handshakes")
        == open_tls as u64));

    // The handshake timeout closes the silent TLS connections; the plain TCP ones stay.
    assert!(
        wait_until(Duration::from_secs(8), || conns
            .iter_mut()
            .all(|(is_tls, c)| !*is_tls || !is_open(c))),
        "silent TLS connections still open after the handshake timeout"
    );
    let mut tcp_still_open = 0;
    for ((is_tls, conn), was_open) in conns.iter_mut().zip(&open) {
        if !*is_tls && *was_open && is_open(conn) {
            tcp_still_open += 1;
        }
    }
    assert_eq!(
        tcp_still_open,
        open_total - open_tls,
        "plain TCP connections are not subject to the TLS handshake timeout"
    );
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_tls_handshake_timeouts_total")
        == open_tls as u64));
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_tls_handshakes")
        == 0));

    // Their slots were given back: a real TLS client gets in and allocates.
    let mut client = TestClient::with_link(tls_link(tls, &relay.tls_pem), tls, "u", "p");
    client
        .allocate()
        .expect("allocate over TLS after the silent ones left");
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).expect("bind a loopback address");
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    socket.into()
}

/// Opens `n` silent connections from `from`, waits (up to 5 s) until the relay has closed all
/// but `kept` of them, and returns those it keeps open.
fn open_silent(relay: &RelayProcess, from: &str, n: usize, kept: usize) -> Vec<TcpStream> {
    let tcp = relay.tcp.expect("tcp listener");
    let mut conns: Vec<TcpStream> = (0..n).map(|_| connect_from(from, tcp)).collect();
    wait_until(Duration::from_secs(5), || {
        conns
            .iter_mut()
            .filter_map(|c| is_open(c).then_some(()))
            .count()
            <= kept
    });
    conns.retain_mut(is_open);
    conns
}

#[test]
fn one_address_holds_at_most_its_share_of_the_connections() {
    let relay = RelayProcess::start(&["--user", "u:p", "--max-connections-per-ip", "3"]);
    let tcp = relay.tcp.expect("tcp listener");
    let mut held = open_silent(&relay, "127.0.0.1", 5, 3);
    assert_eq!(held.len(), 3, "exactly the share stays open");
    // Counted (the workers publish their counts a moment later).
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .metric("relay_stream_connections_refused_per_ip_total")
            >= 2),
        "refusals: {}",
        relay.metric("relay_stream_connections_refused_per_ip_total")
    );
    assert_eq!(
        relay.metric("relay_stream_connections_refused_per_ip_total"),
        2
    );
    assert_eq!(relay.metric("relay_stream_connections_refused_total"), 0);

    // Another address is not affected: a real client allocates.
    let link = Link::Tcp(connect_from("127.0.0.2", tcp), Vec::new(), 0);
    let mut client = TestClient::with_link(link, tcp, "u", "p");
    client.allocate().expect("allocate from another address");

    // A closed connection gives its address's slot back.
    held.pop();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let mut conn = connect_from("127.0.0.1", tcp);
            std::thread::sleep(Duration::from_millis(100));
            is_open(&mut conn)
        }),
        "the slot was not given back"
    );
}

#[test]
fn behind_a_proxy_header_the_share_is_the_named_clients() {
    let relay = RelayProcess::start(&[
        "--user",
        "u:p",
        "--proxy-protocol",
        "--max-connections-per-ip",
        "2",
    ]);
    let tcp = relay.tcp.expect("tcp listener");
    // Every connection comes from the balancer (127.0.0.1); the header names the client.
    let proxied = |client: &str, port: u16| {
        let mut conn = connect_from("127.0.0.1", tcp);
        let header = format!("PROXY TCP4 {client} 10.0.0.1 {port} 3478\r\n");
        conn.write_all(header.as_bytes()).unwrap();
        conn
    };
    let mut from_one: Vec<TcpStream> = (0..3).map(|i| proxied("203.0.113.9", 40_000 + i)).collect();
    let mut from_another: Vec<TcpStream> = (0..2)
        .map(|i| proxied("198.51.100.4", 40_000 + i))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || relay
        .metric("relay_stream_connections_refused_per_ip_total")
        == 1));
    // The refusal is counted just before its close: wait for the close itself.
    wait_until(Duration::from_secs(5), || {
        from_one
            .iter_mut()
            .filter_map(|c| is_open(c).then_some(()))
            .count()
            <= 2
    });
    from_one.retain_mut(is_open);
    from_another.retain_mut(is_open);
    assert_eq!(
        (from_one.len(), from_another.len()),
        (2, 2),
        "each named client holds its own share, not the balancer's address"
    );
}
