//! TURN over TLS (TURNS) with a rustls client that trusts the relay's self-signed certificate:
//! Allocate, ChannelBind, ChannelData both ways with stream padding, no loss. (coturn's
//! uclient picks TLS 1.0/1.1 for some connections, which rustls rightly refuses, so it is not
//! used here.)

use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{
    RelayProcess, TLS_ON_LOOPBACK, TestClient, TlsFiles, USER_ON_LOOPBACK, loopback_peer, tls_link,
};

#[test]
fn turns_allocate_and_relay_both_ways() {
    let relay = RelayProcess::start(&[USER_ON_LOOPBACK, TLS_ON_LOOPBACK].concat());
    let tls = relay.tls.expect("tls listener");
    assert!(
        relay.tls_pem.contains("BEGIN CERTIFICATE"),
        "certificate printed"
    );

    // A client speaking plain bytes to the TLS port is dropped without harm.
    let mut junk = TcpStream::connect(tls).unwrap();
    let _ = junk.write_all(b"\x00\x01\x00\x00 definitely not a TLS ClientHello");
    drop(junk);

    let peer = loopback_peer(Duration::from_secs(3));
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TestClient::with_link(tls_link(tls, &relay.tls_pem), tls, "u", "p");
    let relayed = c.allocate().expect("allocate over TLS");
    c.channel_bind(0x4000, peer_addr)
        .expect("channel bind over TLS");

    let mut buf = [0u8; 2048];
    for i in 0..300usize {
        // Every length mod 4, so the stream padding is exercised both ways.
        let payload: Vec<u8> = (0..(1 + i % 97)).map(|k| (k + i) as u8).collect();
        c.send_channel(0x4000, &payload);
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(from, relayed);
        assert_eq!(&buf[..n], &payload[..]);
        peer.send_to(&payload, relayed).unwrap();
        let (channel, data) = c
            .recv_channel(Duration::from_secs(3))
            .expect("client receives over TLS");
        assert_eq!(channel, 0x4000);
        assert_eq!(data, payload);
    }
    assert!(crate::support::wait_until(Duration::from_secs(2), || {
        relay.metric("relay_packets_relayed_total{direction=\"to_client\"}") >= 300
    }));
}

/// A TURN-over-TLS allocation keeps relaying, with nothing lost, across a certificate reload
/// (SIGHUP); new handshakes get the new certificate; a pair that does not load (a certificate
/// that is not one, a key that is not its) is refused and the one in force stays.
#[test]
fn sighup_reloads_the_certificate_without_disturbing_live_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let first = testkit::write_self_signed(dir.path());
    let files = TlsFiles::in_dir(dir.path());
    let relay = RelayProcess::start_process(&[USER_ON_LOOPBACK, &files.args()].concat());
    let tls = relay.tls.expect("tls listener");
    let peer = loopback_peer(Duration::from_secs(3));
    let mut c = TestClient::with_link(tls_link(tls, &first), tls, "u", "p");
    let relayed = c.allocate().expect("allocate over TLS");
    c.channel_bind(0x4000, peer.local_addr().unwrap()).unwrap();
    let relay_round = |c: &mut TestClient, i: usize| {
        let payload = format!("message {i}").into_bytes();
        c.send_channel(0x4000, &payload);
        let mut buf = [0u8; 64];
        let (n, _) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(&buf[..n], &payload[..]);
        peer.send_to(&payload, relayed).unwrap();
        let (_, data) = c
            .recv_channel(Duration::from_secs(3))
            .expect("client receives");
        assert_eq!(data, payload);
    };
    for i in 0..100 {
        relay_round(&mut c, i);
    }

    let second = testkit::write_self_signed(dir.path());
    relay.reload_until("relay_tls_reloads_total", 1);
    // The allocation made before the reload relays on, both ways, nothing lost.
    for i in 100..200 {
        relay_round(&mut c, i);
    }
    // New handshakes get the new certificate.
    let mut fresh = TestClient::with_link(tls_link(tls, &second), tls, "u", "p");
    fresh
        .allocate()
        .expect("a client trusting the new certificate");
    let mut stale = TestClient::with_link(tls_link(tls, &first), tls, "u", "p");
    assert!(stale.allocate().is_err(), "the old certificate is gone");

    // A pair that does not load is refused; the certificate in force stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    relay.reload_until("relay_tls_reloads_refused_total", 1);
    let mut after = TestClient::with_link(tls_link(tls, &second), tls, "u", "p");
    after.allocate().expect("still the second certificate");

    // A swap caught half done (a SIGHUP between the renames of the two files: the new
    // certificate, the old key) is refused as well; the next SIGHUP, once the key is in place
    // too, puts the new pair in force.
    let next_dir = tempfile::tempdir().unwrap();
    let third = testkit::write_self_signed(next_dir.path());
    std::fs::rename(next_dir.path().join("cert.pem"), &files.cert).unwrap();
    relay.reload_until("relay_tls_reloads_refused_total", 2);
    let mut after = TestClient::with_link(tls_link(tls, &second), tls, "u", "p");
    after.allocate().expect("still the second certificate");
    std::fs::rename(next_dir.path().join("key.pem"), &files.key).unwrap();
    relay.reload_until("relay_tls_reloads_total", 2);
    let mut fresh = TestClient::with_link(tls_link(tls, &third), tls, "u", "p");
    fresh.allocate().expect("the third certificate");
    for i in 200..210 {
        relay_round(&mut c, i);
    }
}

/// A certificate is served whatever its dates say, but one that has expired or expires within
/// 14 days is logged as a warning, on start-up and on a reload, and its notAfter is a gauge an
/// alert can watch.
#[test]
fn an_expired_or_expiring_certificate_is_served_with_a_warning_and_its_expiry_exposed() {
    let day = Duration::from_secs(24 * 3600);
    let now = std::time::SystemTime::now();
    let unix =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dir = tempfile::tempdir().unwrap();
    let expired = (now - 400 * day, now - 10 * day);
    let expired_pem = testkit::write_certificate(dir.path(), Some(expired));
    let files = TlsFiles::in_dir(dir.path());
    let relay = RelayProcess::start_process(&[USER_ON_LOOPBACK, &files.args()].concat());
    assert_eq!(
        relay.metric("relay_tls_certificate_not_after_seconds"),
        unix(expired.1)
    );
    let tls = relay.tls.expect("tls listener");
    assert!(
        TestClient::with_link(tls_link(tls, &expired_pem), tls, "u", "p")
            .allocate()
            .is_err(),
        "a client refuses the expired certificate it is served"
    );

    let expiring = (now - day, now + 3 * day);
    testkit::write_certificate(dir.path(), Some(expiring));
    relay.reload_until("relay_tls_certificate_not_after_seconds", unix(expiring.1));
    let fresh = testkit::write_self_signed(dir.path());
    relay.reload_until("relay_tls_reloads_total", 2);
    TestClient::with_link(tls_link(tls, &fresh), tls, "u", "p")
        .allocate()
        .expect("the valid certificate");
    let logs = relay.stop_and_read_stderr();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("certificate loaded, but it has EXPIRED")),
        "{logs}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("certificate reloaded, but it expires within 14 days")),
        "{logs}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("certificate"))
            .count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("names=localhost,127.0.0.1"), "{logs}");
}
