//! `--max-connections` through the real binary: one relay-wide limit (exact over two workers)
//! that counts a connection from accept on, so silent TLS clients that never finish their
//! handshake hold slots only until `--tls-handshake-timeout`, are counted, and give their
//! slots back.

use std::io::{ErrorKind, Read as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{RelayProcess, TestClient, tls_link, wait_until};

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
