//! TURN over TCP and TLS under load through the real binary: several clients at once, each
//! sending bursts of ChannelData to its peer and getting bursts back, with zero loss. Every
//! message queued towards a stream client must reach it (written, and flushed through TLS),
//! including the answer to the last request of a client that has already closed its side.

use std::io::Write as _;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::support::{
    Link, RelayProcess, TLS_ON_LOOPBACK, TestClient, USER_ON_LOOPBACK, loopback_peer, tls_link,
};

/// Messages each way per client.
const MESSAGES: usize = 200;
/// Clients at once per transport.
const CLIENTS: usize = 4;

#[test]
fn no_message_is_lost_over_tcp_or_tls_under_load() {
    let relay = RelayProcess::start(&[USER_ON_LOOPBACK, TLS_ON_LOOPBACK].concat());
    let tcp = relay.tcp.expect("tcp listener");
    let tls = relay.tls.expect("tls listener");
    let workers: Vec<_> = (0..CLIENTS * 2)
        .map(|k| {
            let pem = relay.tls_pem.clone();
            std::thread::spawn(move || {
                let (name, server, link) = if k % 2 == 0 {
                    let s = TcpStream::connect(tcp).expect("connect TCP port");
                    s.set_nodelay(true).unwrap();
                    ("tcp", tcp, Link::Tcp(s, Vec::new(), 0))
                } else {
                    ("tls", tls, tls_link(tls, &pem))
                };
                let lost = echo_bursts(TestClient::with_link(link, server, "u", "p"));
                (format!("{name} client {k}"), lost)
            })
        })
        .collect();
    let results: Vec<(String, (usize, usize))> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    let lossy: Vec<_> = results
        .iter()
        .filter(|(_, (up, down))| *up + *down > 0)
        .collect();
    assert!(
        lossy.is_empty(),
        "lost (to peer, to client) of {MESSAGES} each way: {lossy:?}\nqueue drops: {}",
        relay.metric("relay_stream_queue_drops_total"),
    );
}

/// Allocates, binds a channel to a fresh peer, sends [`MESSAGES`] to the peer in bursts and
/// has the peer send [`MESSAGES`] back in bursts; returns how many were lost each way.
fn echo_bursts(mut c: TestClient) -> (usize, usize) {
    let peer = loopback_peer(Duration::from_secs(3));
    let peer_addr = peer.local_addr().unwrap();
    let relayed = c.allocate().expect("allocate");
    c.channel_bind(0x4000, peer_addr).expect("channel bind");
    let payload = |i: usize| -> Vec<u8> {
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.resize(5 + i % 300, (i % 251) as u8);
        p
    };
    let mut buf = [0u8; 2048];
    let (mut to_peer, mut to_client) = (0, 0);
    for burst in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
        for &i in burst {
            c.send_channel(0x4000, &payload(i));
        }
        for &i in burst {
            match peer.recv_from(&mut buf) {
                Ok((n, from)) if from == relayed && buf[..n] == payload(i)[..] => to_peer += 1,
                Ok((n, _)) => panic!("message {i} to the peer out of order or corrupt ({n} B)"),
                Err(_) => break,
            }
        }
        for &i in burst {
            peer.send_to(&payload(i), relayed).unwrap();
        }
        for &i in burst {
            match c.recv_channel(Duration::from_secs(3)) {
                Some((0x4000, data)) if data == payload(i) => to_client += 1,
                Some((_, data)) => {
                    panic!(
                        "message {i} to the client out of order or corrupt ({} B)",
                        data.len()
                    )
                }
                None => break,
            }
        }
    }
    (MESSAGES - to_peer, MESSAGES - to_client)
}

#[test]
fn a_half_closed_client_still_gets_the_answer_to_its_last_request() {
    let relay = RelayProcess::start(&[&["--user", "u:p"], TLS_ON_LOOPBACK].concat());
    let tcp = relay.tcp.expect("tcp listener");
    let tls = relay.tls.expect("tls listener");
    for round in 0..10u8 {
        for transport in ["tcp", "tls"] {
            let (server, mut link) = if transport == "tcp" {
                let s = TcpStream::connect(tcp).expect("connect TCP port");
                (tcp, Link::Tcp(s, Vec::new(), 0))
            } else {
                (tls, tls_link(tls, &relay.tls_pem))
            };
            // A Binding request, then the end of the client's stream (FIN; close_notify on TLS).
            let tid = [round; 12];
            let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
            binding.extend_from_slice(&tid);
            link.send(server, &binding).expect("send Binding");
            match &mut link {
                Link::Tcp(s, _, _) => s.shutdown(Shutdown::Write).unwrap(),
                Link::Tls(s, _) => {
                    s.conn.send_close_notify();
                    s.flush().unwrap();
                    s.sock.shutdown(Shutdown::Write).unwrap();
                }
                Link::Udp(_) => unreachable!(),
            }
            let reply = link
                .recv(Duration::from_secs(3))
                .unwrap_or_else(|| panic!("{transport} round {round}: no Binding response"));
            assert_eq!(&reply[..2], &[0x01, 0x01], "{transport}: a Binding success");
            assert_eq!(&reply[8..20], &tid, "{transport}: for our transaction");
        }
    }
}
