//! coturn's own clients against our relay: `turnutils_stunclient` (Binding) and
//! `turnutils_uclient` with `turnutils_peer` (UDP and TCP; channels and Send indications;
//! static users and TURN REST secrets), asserting zero loss on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{EchoPeer, RelayProcess, TestClient, parse_uclient, require_coturn, uclient};

/// Relay flags for uclient: loopback peers allowed (the echo peer runs there), one static
/// user.
const ALICE_RELAY: &[&str] = &["--allow-loopback-peers", "--user", "alice:wonderland"];
/// uclient's flags for the static user of [`ALICE_RELAY`].
const ALICE: &[&str] = &["-u", "alice", "-w", "wonderland"];

/// Runs uclient against the relay listening on `port` and the echo `peer` with exactly `extra`
/// flags besides the addresses and the load (4 clients, 100 messages of 180 bytes); returns the
/// report. Without `-c` uclient makes RTP/RTCP pairs.
fn run_uclient(port: u16, peer: &EchoPeer, extra: &[&str]) -> crate::support::UclientReport {
    let port = port.to_string();
    let peer_port = peer.port.to_string();
    let mut args = vec![
        "-p",
        &port,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-m",
        "4",
        "-n",
        "100",
        "-l",
        "180",
        "-z",
        "2",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    parse_uclient(&uclient(&args, Duration::from_secs(60)))
}

/// Runs uclient without RTCP (`-c`; see [`run_uclient`]) and asserts that it lost nothing.
fn assert_uclient_lossless(port: u16, peer: &EchoPeer, extra: &[&str]) {
    assert_lossless(&run_uclient(port, peer, &[&["-c"], extra].concat()));
}

/// uclient over UDP with `flags`, as the static user of a fresh relay started with
/// [`ALICE_RELAY`], against an echo peer: nothing lost.
fn assert_alice_udp_lossless(flags: &[&str]) {
    let relay = RelayProcess::start(ALICE_RELAY);
    let peer = EchoPeer::start();
    assert_uclient_lossless(relay.port(), &peer, &[flags, ALICE].concat());
}

fn assert_lossless(report: &crate::support::UclientReport) {
    assert!(report.sent_bytes > 0, "uclient sent nothing: {report:?}");
    assert_eq!(
        report.received_bytes, report.sent_bytes,
        "every byte echoed back: {report:?}"
    );
    assert_eq!(report.lost_packets, Some(0), "no loss: {report:?}");
}

#[test]
fn stunclient_gets_its_reflexive_address() {
    require_coturn();
    let relay = RelayProcess::start(&[]);
    let out = std::process::Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "10",
            "turnutils_stunclient",
            "-p",
            &relay.port().to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
    assert!(
        relay.metric("relay_binding_requests_total") >= 1 || {
            std::thread::sleep(Duration::from_millis(400));
            relay.metric("relay_binding_requests_total") >= 1
        }
    );
}

#[test]
fn uclient_udp_channels_static_user() {
    assert_alice_udp_lossless(&[]);
}

/// uclient's default mode (no `-c`): RTP/RTCP pairs. The RTP allocation asks for EVEN-PORT
/// with the R bit (reserve the next port); the RTCP one comes from another socket with the
/// RESERVATION-TOKEN it got, so the relay must bind exactly the reserved port, whichever worker
/// the second socket lands on (4 workers, so it is usually another one; reservations are
/// shared). Before, the I/O layer ignored the reserved address and uclient got 508.
/// The port EVEN-PORT's R bit reserves is held for its token: in a range of four ports (two
/// even/odd pairs), two ordinary Allocates after the reserving one take the other pair, and
/// the Allocate with the token gets exactly the reserved port. Before, the reserved port was
/// free for anyone, and the token's Allocate got 508 in most runs.
#[test]
fn a_reserved_port_goes_to_its_token_only() {
    for _ in 0..3 {
        let relay = RelayProcess::start_with_workers(
            2,
            &[ALICE_RELAY, &["--relay-ports", "41200-41203"]].concat(),
        );
        let mut rtp = TestClient::new(relay.udp, "alice", "wonderland");
        let (relayed, token) = rtp.allocate_reserving_next().expect("EVEN-PORT R");
        assert_eq!(relayed.port() % 2, 0);
        let mut others: Vec<TestClient> = (0..2)
            .map(|_| TestClient::new(relay.udp, "alice", "wonderland"))
            .collect();
        for other in &mut others {
            let port = other.allocate().expect("an ordinary allocation").port();
            assert_ne!(
                port,
                relayed.port() + 1,
                "the reserved port went to another"
            );
        }
        let mut rtcp = TestClient::new(relay.udp, "alice", "wonderland");
        let reserved = rtcp.allocate_reserved(token).expect("the reserved port");
        assert_eq!(reserved, SocketAddr::new(relayed.ip(), relayed.port() + 1));
    }
}

#[test]
fn uclient_default_mode_rtp_rtcp_pairs_relay_with_zero_loss() {
    for transport in [&[][..], &["-t"][..]] {
        let relay = RelayProcess::start_with_workers(4, ALICE_RELAY);
        let port = if transport.is_empty() {
            relay.port()
        } else {
            relay.tcp.expect("tcp listener").port()
        };
        let peer = EchoPeer::start();
        let report = run_uclient(port, &peer, &[transport, ALICE].concat());
        assert!(report.errors.is_empty(), "{transport:?}: {report:?}");
        assert_lossless(&report);
        // uclient makes 3 allocations per 2 clients in this mode (an RTP one with EVEN-PORT
        // R, the RTCP one claiming its token, ...): 6 for `-m 4`, none refused.
        let created = || relay.metric("relay_allocations_created_total");
        assert!(
            created() >= 6 || {
                std::thread::sleep(Duration::from_millis(400));
                created() >= 6
            },
            "{transport:?}: {} allocations",
            created()
        );
        assert_eq!(
            relay.metric("relay_relay_bind_failures_total"),
            0,
            "{transport:?}"
        );
    }
}

#[test]
fn uclient_udp_send_indications_static_user() {
    assert_alice_udp_lossless(&["-s"]);
}

#[test]
fn uclient_tcp_channels_and_send_indications() {
    let relay = RelayProcess::start(ALICE_RELAY);
    let tcp = relay.tcp.expect("tcp listener").port();
    let peer = EchoPeer::start();
    assert_uclient_lossless(tcp, &peer, &[&["-t"], ALICE].concat());
    assert_uclient_lossless(tcp, &peer, &[&["-t", "-s"], ALICE].concat());
}

#[test]
fn uclient_rest_secret_and_rotation() {
    let relay = RelayProcess::start(&[
        "--allow-loopback-peers",
        "--turn-secret",
        "current-secret,previous-secret",
    ]);
    let peer = EchoPeer::start();
    assert_uclient_lossless(
        relay.port(),
        &peer,
        &["-W", "current-secret", "-u", "carol"],
    );
    // A credential minted with the previous secret still works during rotation.
    assert_uclient_lossless(
        relay.port(),
        &peer,
        &["-W", "previous-secret", "-u", "carol2", "-s"],
    );
}

#[test]
fn uclient_wrong_secret_fails() {
    let relay = RelayProcess::start(&["--allow-loopback-peers", "--turn-secret", "right-secret"]);
    let peer = EchoPeer::start();
    let report = run_uclient(
        relay.port(),
        &peer,
        &["-c", "-W", "wrong-secret", "-u", "mallory"],
    );
    assert_eq!(
        report.received_bytes, 0,
        "nothing relayed with a wrong secret: {report:?}"
    );
    assert!(
        crate::support::wait_until(Duration::from_secs(2), || relay
            .metric("relay_auth_failures_total")
            > 0),
        "auth failures are counted"
    );
}

#[test]
fn uclient_client_to_client_through_two_allocations() {
    assert_alice_udp_lossless(&["-y"]);
}

#[test]
fn tcp_connections_beyond_the_limit_are_refused_and_counted() {
    use std::io::Read as _;
    let relay = RelayProcess::start_with_workers(1, &["--max-connections", "4"]);
    let tcp = relay.tcp.expect("tcp listener");
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(tcp).unwrap())
        .collect();
    assert!(crate::support::wait_until(Duration::from_secs(2), || {
        relay.metric("relay_stream_connections") == 4
    }));
    let mut fifth = std::net::TcpStream::connect(tcp).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(fifth.read(&mut buf).ok(), Some(0), "closed at once");
    assert!(crate::support::wait_until(Duration::from_secs(2), || {
        relay.metric("relay_stream_connections_refused_total") == 1
    }));
    drop(held);
}

/// TURN over TLS, two uclient clients relaying to each other at uclient's default pace: nothing
/// lost. uclient reads one TURN message per TLS record, so it lost messages that shared one
/// (each message is now a record of its own; its handshakes that try TLS 1.0/1.1 are refused
/// and retried, which loses nothing).
#[test]
fn uclient_over_tls_client_to_client_loses_nothing() {
    let relay = RelayProcess::start(&[ALICE_RELAY, crate::support::TLS_ON_LOOPBACK].concat());
    let port = relay.tls.expect("tls listener").port().to_string();
    let args = [
        &[
            "-S", "-t", "-y", "-p", &port, "-n", "20", "-m", "1", "-l", "200",
        ][..],
        ALICE,
        &["127.0.0.1"],
    ]
    .concat();
    let report = parse_uclient(&uclient(&args, Duration::from_secs(60)));
    assert!(report.received_bytes > 0, "{report:?}");
    assert_eq!(report.lost_packets, Some(0), "no loss: {report:?}");
}
