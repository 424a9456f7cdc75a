//! The patches to the vendored SCTP (`third_party/rtc-sctp/PATCHES.md`) that keep a data
//! channel's reliable messages moving across a long path outage, through the crate's public
//! API: a client and a server association shuttled by hand, with time passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sctp::{
    Association, AssociationHandle, ClientConfig, DatagramEvent, Endpoint, EndpointConfig, Event,
    Payload, PayloadProtocolIdentifier, ServerConfig, TransportConfig,
};
use shared::TransportProtocol;

const PPI: PayloadProtocolIdentifier = PayloadProtocolIdentifier::Binary;

fn client_addr() -> SocketAddr {
    "127.0.0.1:4444".parse().unwrap()
}

fn server_addr() -> SocketAddr {
    "127.0.0.1:5555".parse().unwrap()
}

/// Every datagram `conn` wants to send now.
fn transmits(conn: &mut Association, now: Instant) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(t) = conn.poll_transmit(now) {
        if let Payload::RawEncode(contents) = t.message {
            out.extend(contents);
        }
    }
    out
}

/// A client and a server association after the handshake, and the server's endpoint (which
/// takes the client's datagrams).
struct Pair {
    client: Association,
    server_ep: Endpoint,
    server: Association,
    server_ch: AssociationHandle,
}

impl Pair {
    fn establish(now: Instant) -> Self {
        let mut client_ep = Endpoint::new(
            client_addr(),
            TransportProtocol::UDP,
            EndpointConfig::default().into(),
            None,
        );
        let mut server_ep = Endpoint::new(
            server_addr(),
            TransportProtocol::UDP,
            EndpointConfig::default().into(),
            Some(ServerConfig::new(TransportConfig::default()).into()),
        );
        let (_, mut client) = client_ep
            .connect(
                now,
                ClientConfig::new(TransportConfig::default()),
                server_addr(),
            )
            .expect("connect");
        let mut server: Option<(AssociationHandle, Association)> = None;
        let mut connected = false;
        for _ in 0..50 {
            for dgram in transmits(&mut client, now) {
                match server_ep.handle(now, client_addr(), None, dgram) {
                    Some((ch, DatagramEvent::NewAssociation(conn))) => server = Some((ch, conn)),
                    Some((_, DatagramEvent::AssociationEvent(e))) => {
                        if let Some((_, conn)) = &mut server {
                            conn.handle_event(e);
                        }
                    }
                    _ => {}
                }
            }
            let Some((_, conn)) = &mut server else {
                continue;
            };
            while conn.poll().is_some() {}
            for dgram in transmits(conn, now) {
                if let Some((_, DatagramEvent::AssociationEvent(e))) =
                    client_ep.handle(now, server_addr(), None, dgram)
                {
                    client.handle_event(e);
                }
            }
            while let Some(event) = client.poll() {
                connected |= matches!(event, Event::Connected);
            }
            if connected {
                break;
            }
        }
        assert!(connected, "the handshake completed");
        let (server_ch, server) = server.expect("a server association");
        Self {
            client,
            server_ep,
            server,
            server_ch,
        }
    }

    /// Hands `dgrams` of the client to the server; returns what the server's stream 1 read.
    fn deliver(&mut self, now: Instant, dgrams: Vec<Bytes>) -> Vec<u8> {
        for dgram in dgrams {
            if let Some((ch, DatagramEvent::AssociationEvent(e))) =
                self.server_ep.handle(now, client_addr(), None, dgram)
            {
                assert_eq!(ch, self.server_ch);
                self.server.handle_event(e);
            }
        }
        while self.server.poll().is_some() {}
        let mut read = Vec::new();
        while self.server.accept_stream().is_some() {}
        if let Ok(mut stream) = self.server.stream(1) {
            while let Ok(Some(chunks)) = stream.read_sctp() {
                let mut buf = vec![0; chunks.len()];
                let n = chunks.read(&mut buf).expect("read");
                read.extend_from_slice(&buf[..n]);
            }
        }
        read
    }
}

/// Patch 3: a reliable message whose path is dead goes again at every T3-rtx expiry, however
/// many; before, the sixth (about 63 s into the outage) stopped the timer for good, and the
/// message never went again, also once the path was back: the channel stalled without an
/// error. The path comes back after twelve expiries, and the next retransmission delivers it.
#[test]
fn a_reliable_message_goes_again_at_every_t3_rtx_expiry_of_a_long_outage() {
    let start = Instant::now();
    let mut pair = Pair::establish(start);
    pair.client
        .open_stream(1, PPI)
        .expect("open")
        .write_sctp(start, &Bytes::from_static(b"across the outage"), PPI)
        .expect("write");
    assert!(!transmits(&mut pair.client, start).is_empty(), "sent once");
    let mut at = start;
    for expiry in 1..=12 {
        at = pair
            .client
            .poll_timeout()
            .unwrap_or_else(|| panic!("T3-rtx stopped after {} expiries", expiry - 1));
        pair.client.handle_timeout(at);
        let sent = transmits(&mut pair.client, at);
        assert!(
            !sent.is_empty(),
            "expiry {expiry}, {:?} in: sent again",
            at - start
        );
        if expiry == 12 {
            assert_eq!(pair.deliver(at, sent), b"across the outage");
        }
    }
    assert!(at - start > Duration::from_secs(300), "{:?}", at - start);
}

/// Patch 4: once the path changed (ICE chose another pair, after an ICE restart), the message
/// in flight goes again at once, not at the T3-rtx expiry backed off while the old path was
/// dead (16 s away here, and up to 60 s), and the retransmission timer starts over; with
/// nothing in flight, or nothing lost yet, nothing changes.
#[test]
fn a_path_change_sends_what_is_in_flight_at_once() {
    let start = Instant::now();
    let mut pair = Pair::establish(start);
    // Nothing in flight: nothing to send, no timer.
    let idle = pair.client.poll_timeout();
    pair.client.handle_path_change(start);
    assert!(transmits(&mut pair.client, start).is_empty());
    assert_eq!(pair.client.poll_timeout(), idle, "no timer started");
    pair.client
        .open_stream(1, PPI)
        .expect("open")
        .write_sctp(start, &Bytes::from_static(b"in flight"), PPI)
        .expect("write");
    assert!(!transmits(&mut pair.client, start).is_empty());
    // Nothing lost yet (the old path may work: a routine ICE restart): left to its timer.
    let due = pair.client.poll_timeout();
    pair.client.handle_path_change(start);
    assert_eq!(pair.client.poll_timeout(), due, "not sent again at once");
    let mut at = start;
    for _ in 0..4 {
        at = pair.client.poll_timeout().expect("T3-rtx");
        pair.client.handle_timeout(at);
        transmits(&mut pair.client, at);
    }
    let backed_off = pair.client.poll_timeout().expect("T3-rtx") - at;
    assert!(backed_off >= Duration::from_secs(16), "{backed_off:?}");
    let changed = at + Duration::from_secs(1);
    pair.client.handle_path_change(changed);
    assert_eq!(pair.client.poll_timeout(), Some(changed), "due at once");
    pair.client.handle_timeout(changed);
    let sent = transmits(&mut pair.client, changed);
    assert_eq!(pair.deliver(changed, sent), b"in flight");
    let next = pair.client.poll_timeout().map(|t| t - changed);
    assert!(
        next.is_none_or(|next| next <= Duration::from_secs(2)),
        "the timer started over: {next:?}"
    );
}
