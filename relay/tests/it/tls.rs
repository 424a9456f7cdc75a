//! TURN over TLS (TURNS) with a rustls client that trusts the relay's self-signed certificate:
//! Allocate, ChannelBind, ChannelData both ways with stream padding, no loss. (coturn's
//! uclient picks TLS 1.0/1.1 for some connections, which rustls rightly refuses, so it is not
//! used here.)

use std::io::Write as _;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::support::{RelayProcess, TestClient, tls_link};

#[test]
fn turns_allocate_and_relay_both_ways() {
    let relay = RelayProcess::start(&[
        "--allow-loopback-peers",
        "--user",
        "u:p",
        "--tls-self-signed",
        "--tls-listen",
        "127.0.0.1:0",
    ]);
    let tls = relay.tls.expect("tls listener");
    assert!(
        relay.tls_pem.contains("BEGIN CERTIFICATE"),
        "certificate printed"
    );

    // A client speaking plain bytes to the TLS port is dropped without harm.
    let mut junk = TcpStream::connect(tls).unwrap();
    let _ = junk.write_all(b"\x00\x01\x00\x00 definitely not a TLS ClientHello");
    drop(junk);

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
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
