//! The webrtc-rs `turn` crate's client (0.17.2) against our relay: Binding, Allocate,
//! permissions, channels, and relaying both ways between two clients and to a plain UDP peer.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::turn_client::udp_client;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::Client;
use webrtc_util::Conn;

use crate::support::RelayProcess;

/// An allocation of `client` (within 5 s): the relayed connection.
async fn allocate(client: &Client) -> impl Conn + use<> {
    timeout(Duration::from_secs(5), client.allocate())
        .await
        .unwrap()
        .unwrap()
}

/// The next datagram on `conn` (within 5 s) into `buf`: its length and source.
async fn recv(conn: &impl Conn, buf: &mut [u8]) -> (usize, SocketAddr) {
    timeout(Duration::from_secs(5), conn.recv_from(buf))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_request_returns_the_mapped_address() {
    let relay = RelayProcess::start(&["--allow-loopback-peers"]);
    let c = udp_client(relay.udp, "", "").await;
    let mapped = timeout(Duration::from_secs(5), c.send_binding_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    assert_ne!(mapped.port(), 0);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_relay_both_ways_without_loss() {
    let relay = RelayProcess::start(&[
        "--allow-loopback-peers",
        "--user",
        "alice:wonderland",
        "--user",
        "bob:builder",
    ]);
    let a = udp_client(relay.udp, "alice", "wonderland").await;
    let b = udp_client(relay.udp, "bob", "builder").await;
    let a_conn = allocate(&a).await;
    let b_conn = allocate(&b).await;
    let a_relayed = a_conn.local_addr().unwrap();
    let b_relayed = b_conn.local_addr().unwrap();
    assert_ne!(a_relayed, b_relayed);
    assert_eq!(a_relayed.ip().to_string(), "127.0.0.1");

    // Each side creates its permission first (the first datagram of each may be dropped by
    // the other side's missing permission; everything after must arrive).
    b_conn.send_to(b"open", a_relayed).await.unwrap();
    a_conn.send_to(b"open", b_relayed).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let (n, from) = recv(&b_conn, &mut buf).await;
    assert_eq!((&buf[..n], from), (&b"open"[..], a_relayed));

    const N: usize = 500;
    for i in 0..N {
        let msg = format!("a->b {i}");
        a_conn.send_to(msg.as_bytes(), b_relayed).await.unwrap();
        let (n, from) = recv(&b_conn, &mut buf).await;
        assert_eq!(from, a_relayed);
        // A stray "open" from the permission dance may arrive first.
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        if got == "open" {
            let (n, _) = recv(&b_conn, &mut buf).await;
            assert_eq!(String::from_utf8_lossy(&buf[..n]), msg);
        } else {
            assert_eq!(got, msg);
        }
        let reply = format!("b->a {i}");
        b_conn.send_to(reply.as_bytes(), a_relayed).await.unwrap();
        loop {
            let (n, from) = recv(&a_conn, &mut buf).await;
            assert_eq!(from, b_relayed);
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            if got != "open" {
                assert_eq!(got, reply);
                break;
            }
        }
    }
    assert!(
        relay.metric("relay_packets_relayed_total{direction=\"to_peer\"}") >= 2 * N as u64 - 10
            || {
                // Metrics are published every 200 ms: give them a moment.
                std::thread::sleep(Duration::from_millis(500));
                relay.metric("relay_packets_relayed_total{direction=\"to_peer\"}") >= 2 * N as u64
            }
    );
    a_conn.close().await.unwrap();
    b_conn.close().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_to_and_from_a_plain_udp_peer() {
    let relay = RelayProcess::start(&["--allow-loopback-peers", "--user", "alice:wonderland"]);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let a = udp_client(relay.udp, "alice", "wonderland").await;
    let conn = allocate(&a).await;
    let relayed = conn.local_addr().unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..200 {
        let payload = vec![(i % 251) as u8; 100 + i];
        conn.send_to(&payload, peer_addr).await.unwrap();
        let (n, from) = recv(&peer, &mut buf).await;
        assert_eq!(from, relayed, "the peer sees the relayed address as source");
        assert_eq!(&buf[..n], &payload[..]);
        peer.send_to(&payload, relayed).await.unwrap();
        let (n, from) = recv(&conn, &mut buf).await;
        assert_eq!(from, peer_addr);
        assert_eq!(&buf[..n], &payload[..]);
    }
    conn.close().await.unwrap();
    a.close().await.unwrap();
}
