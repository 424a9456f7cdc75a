//! Stream framing through the real binary (RFC 8656 section 11.5 / RFC 6062): STUN and padded
//! ChannelData split into tiny writes and coalesced into one write over TCP, and an IPv6
//! relayed address (RFC 6156) relaying to an IPv6 peer.

use std::io::Write as _;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::support::{Link, RelayProcess, TestClient, USER_ON_LOOPBACK, loopback_peer};

#[test]
fn tcp_framing_survives_split_and_coalesced_writes() {
    let relay = RelayProcess::start(USER_ON_LOOPBACK);
    let tcp = relay.tcp.expect("tcp listener");
    let peer = loopback_peer(Duration::from_secs(3));
    let peer_addr = peer.local_addr().unwrap();

    // Every request written 3 bytes at a time.
    let stream = TcpStream::connect(tcp).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut c = TestClient::with_link(Link::Tcp(stream, Vec::new(), 3), tcp, "u", "p");
    let relayed = c.allocate().expect("allocate over TCP in 3-byte writes");
    c.channel_bind(0x4000, peer_addr).expect("channel bind");
    c.send_channel(0x4000, b"split");
    let mut buf = [0u8; 256];
    let (n, from) = peer.recv_from(&mut buf).expect("split ChannelData relayed");
    assert_eq!((&buf[..n], from), (&b"split"[..], relayed));

    // Many padded ChannelData messages in one write.
    let Link::Tcp(stream, _, chunk) = &mut c.link else {
        unreachable!()
    };
    *chunk = 0;
    let mut burst = Vec::new();
    for i in 0..50u8 {
        let payload = vec![i; 1 + usize::from(i) % 7];
        burst.extend_from_slice(&[0x40, 0x00, 0, payload.len() as u8]);
        burst.extend_from_slice(&payload);
        burst.resize(burst.len().div_ceil(4) * 4, 0);
    }
    stream.write_all(&burst).unwrap();
    for i in 0..50u8 {
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("coalesced ChannelData relayed");
        assert_eq!(
            &buf[..n],
            &vec![i; 1 + usize::from(i) % 7][..],
            "message {i} intact and in order"
        );
    }
    // And back: the client gets padded ChannelData it can frame.
    for i in 0..20u8 {
        let payload = vec![i; 1 + usize::from(i) % 5];
        peer.send_to(&payload, relayed).unwrap();
        let (channel, data) = c
            .recv_channel(Duration::from_secs(3))
            .expect("peer data over TCP");
        assert_eq!((channel, data), (0x4000, payload));
    }
}

#[test]
fn ipv6_allocation_relays_to_an_ipv6_peer() {
    let Some(relay) = crate::support::start_on_ipv6(USER_ON_LOOPBACK) else {
        return;
    };
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TestClient::with_link(
        Link::Udp(UdpSocket::bind("[::1]:0").unwrap()),
        relay.udp,
        "u",
        "p",
    );
    let relayed = c.allocate_v6().expect("IPv6 allocation");
    assert!(relayed.is_ipv6());
    c.channel_bind(0x4000, peer_addr)
        .expect("channel bind to an IPv6 peer");
    let mut buf = [0u8; 256];
    for i in 0..100u8 {
        c.send_channel(0x4000, &[i; 33]);
        let (n, from) = peer.recv_from(&mut buf).expect("relayed over IPv6");
        assert_eq!((&buf[..n], from), (&[i; 33][..], relayed));
        peer.send_to(&[i; 17], relayed).unwrap();
        let (channel, data) = c
            .recv_channel(Duration::from_secs(3))
            .expect("back over IPv6");
        assert_eq!((channel, data), (0x4000, vec![i; 17]));
    }
}

/// A TURN client opens a stream with a STUN request. A connection that opens with anything else
/// (text has ChannelData's top bits) is closed at once; one that sends nothing whole is closed
/// after 10 s, not the 15 min idle timeout of a connection in use.
#[test]
fn a_stream_that_does_not_open_with_a_whole_stun_message_is_closed() {
    use std::io::Read as _;
    let relay = RelayProcess::start(USER_ON_LOOPBACK);
    let tcp = relay.tcp.expect("tcp listener");
    let closed_within = |mut stream: TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "not closed within {limit:?}: {read:?}"
        );
    };
    let mut text = TcpStream::connect(tcp).unwrap();
    text.write_all(b"XXXX").unwrap();
    closed_within(text, Duration::from_secs(3));

    // STUN's top bits without the magic cookie: not STUN either.
    let mut no_cookie = TcpStream::connect(tcp).unwrap();
    no_cookie.write_all(&[0u8; 20]).unwrap();
    closed_within(no_cookie, Duration::from_secs(3));

    // A STUN header whose message never completes, however its bytes trickle in: closed 10 s
    // after the connect, not 10 s after the last byte.
    let opened = std::time::Instant::now();
    let mut stalled = TcpStream::connect(tcp).unwrap();
    stalled
        .write_all(&[0x00, 0x03, 0x00, 0x40, 0x21, 0x12, 0xA4, 0x42])
        .unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(3));
        if stalled.write_all(&[0]).is_err() {
            break;
        }
    }
    closed_within(stalled, Duration::from_secs(5));
    assert!(
        opened.elapsed() < Duration::from_secs(20),
        "{:?}",
        opened.elapsed()
    );
    // Each of the three is counted, the one that timed out included.
    assert!(crate::support::wait_until(Duration::from_secs(2), || {
        relay.metric("relay_stream_framing_errors_total") == 3
    }));
}
