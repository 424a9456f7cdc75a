//! `--proxy-protocol` on the TCP listener: the client a PROXY header names is the client (its
//! address comes back in XOR-MAPPED-ADDRESS); a connection without a well-formed header is
//! closed and counted.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use relay_proto::attributes::{XOR_MAPPED_ADDRESS, decode_xor_address};
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{Method, framing};

use crate::support::RelayProcess;

/// Sends `header` then a Binding request on a new TCP connection; the mapped address.
fn mapped_address_after(relay: SocketAddr, header: &[u8]) -> Option<SocketAddr> {
    let mut tcp = TcpStream::connect(relay).unwrap();
    tcp.write_all(header).unwrap();
    binding(&mut tcp)
}

/// A Binding request on `tcp`; the mapped address in the response.
fn binding(tcp: &mut TcpStream) -> Option<SocketAddr> {
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let tid = TransactionId([7; 12]);
    let request = MessageBuilder::new(Method::Binding, Class::Request, tid).finish();
    tcp.write_all(&request).ok()?;
    let mut response = vec![0u8; 20];
    tcp.read_exact(&mut response[..4]).ok()?;
    let len = framing::stream_frame_len(&response[..4]).ok()??;
    response.resize(len, 0);
    tcp.read_exact(&mut response[4..]).ok()?;
    let message = StunMessage::parse(&response).ok()?;
    decode_xor_address(message.get(XOR_MAPPED_ADDRESS)?, &tid).ok()
}

#[test]
fn the_proxied_client_is_the_mapped_address_and_headerless_connections_are_refused() {
    let relay = RelayProcess::start(&["--proxy-protocol", "--user", "u:p"]);
    let tcp = relay.tcp.expect("tcp listener");
    let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 3478\r\n";
    assert_eq!(
        mapped_address_after(tcp, v1),
        Some("203.0.113.9:40000".parse().unwrap())
    );
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 4, 10, 0, 0, 1, 0x9c, 0x41, 0x0d, 0x96,
    ]);
    assert_eq!(
        mapped_address_after(tcp, &v2),
        Some("198.51.100.4:40001".parse().unwrap())
    );
    // A balancer's health check (LOCAL) is answered with the balancer's own address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert!(mapped_address_after(tcp, &local).is_some_and(|a| a.ip().is_loopback()));
    // Without a header: closed unanswered, and counted.
    assert_eq!(mapped_address_after(tcp, b""), None);
    assert!(crate::support::wait_until(Duration::from_secs(3), || {
        relay.metric("relay_proxy_headers_refused_total") >= 1
    }));
}

#[test]
fn a_header_naming_a_connection_still_open_is_refused_and_the_open_one_goes_on() {
    let relay = RelayProcess::start_with_workers(1, &["--proxy-protocol", "--user", "u:p"]);
    let tcp = relay.tcp.expect("tcp listener");
    let header = b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 3478\r\n";
    let mut first = TcpStream::connect(tcp).unwrap();
    first.write_all(header).unwrap();
    let named = Some("203.0.113.9:40000".parse().unwrap());
    assert_eq!(binding(&mut first), named);
    assert_eq!(
        mapped_address_after(tcp, header),
        None,
        "the same five-tuple again is closed"
    );
    assert!(crate::support::wait_until(Duration::from_secs(3), || {
        relay.metric("relay_proxy_headers_refused_total") >= 1
    }));
    assert_eq!(
        binding(&mut first),
        named,
        "the first connection is untouched"
    );
}

/// Connections still waiting for their PROXY header hold `--max-connections` slots:
/// `relay_connection_slots` shows them, `relay_stream_connections` (TURN connections) does
/// not; the slots come back when they go.
#[test]
fn connections_waiting_for_their_header_show_in_the_slots_gauge() {
    let relay = RelayProcess::start(&["--proxy-protocol", "--max-connections", "10"]);
    let tcp = relay.tcp.expect("a TCP listener");
    let waiting: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(tcp).unwrap()).collect();
    let slots = |n| {
        crate::support::wait_until(Duration::from_secs(5), || {
            relay.metric("relay_connection_slots") == n
        })
    };
    assert!(slots(3), "{}", relay.metric("relay_connection_slots"));
    // The workers publish their gauges every 200 ms: still none then.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.metric("relay_stream_connections"), 0);
    // One that sends its header and a Binding is a TURN connection too.
    let mut proxied = TcpStream::connect(tcp).unwrap();
    proxied
        .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 3478\r\n")
        .unwrap();
    assert!(binding(&mut proxied).is_some());
    assert!(slots(4));
    assert!(crate::support::wait_until(Duration::from_secs(5), || {
        relay.metric("relay_stream_connections") == 1
    }));
    drop((waiting, proxied));
    assert!(slots(0));
}
