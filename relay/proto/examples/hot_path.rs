//! Rerunnable micro-benchmark of the core's relay hot path (no sockets): ChannelData
//! client -> peer (`handle_client_packet`) and peer -> client (`handle_peer_packet`) across
//! many allocations, plus STUN Binding requests.
//!
//! Run: `cargo run --release -p relay-proto --example hot_path -- [allocations] [packets]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_proto::Method;
use relay_proto::attributes::{
    CHANNEL_NUMBER, ERROR_CODE, NONCE, REALM, REQUESTED_TRANSPORT, USERNAME, XOR_PEER_ADDRESS,
};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{
    ClientAction, FiveTuple, HEADROOM, Output, PeerAction, Quotas, RelayHandle, Server,
    ServerConfig, TAILROOM, Transport, channel_data,
};

const REALM_NAME: &str = "bench";

fn main() {
    let mut args = std::env::args().skip(1);
    let allocations: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let packets: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);

    let mut config = ServerConfig {
        realm: REALM_NAME.to_owned(),
        quotas: Quotas {
            allocations_per_user: u32::MAX,
            unauthenticated_per_ip: None,
            unauthorized_per_ip: None,
            ..Quotas::default()
        },
        ..ServerConfig::default()
    };
    config.auth.add_user("bench", "bench");
    let key = long_term_key("bench", REALM_NAME, "bench");
    let mut server = Server::new(config);
    let now = Instant::now();

    let mut clients = Vec::with_capacity(allocations as usize);
    let rss_before = rss_kib();
    let setup = Instant::now();
    for i in 0..allocations {
        let five_tuple = FiveTuple {
            client: SocketAddr::new(
                [192, 0, 2, (i % 250) as u8].into(),
                10_000 + (i / 250) as u16,
            ),
            server: "198.51.100.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        };
        let relay = SocketAddr::new(
            [198, 51, 100, 1 + (i / 40_000) as u8].into(),
            20_000 + (i % 40_000) as u16,
        );
        let peer = SocketAddr::new([203, 0, 114, (i % 250) as u8].into(), 30_000);
        let relay = allocate(&mut server, now, five_tuple, relay, peer, &key, i);
        clients.push((five_tuple, relay, peer));
    }
    let setup = setup.elapsed();
    let rss_growth = rss_kib().saturating_sub(rss_before);
    println!(
        "setup: {allocations} allocations with a channel each in {setup:?}; RSS growth \
         {rss_growth} KiB = {:.2} KiB per allocation (core state only)",
        rss_growth as f64 / f64::from(allocations)
    );

    let payload = [0x5au8; 1000];
    let mut client_packet = vec![0u8; 4 + payload.len()];
    let mut header = [0u8; 4];
    channel_data::write_header(&mut header, 0x4000, payload.len() as u16);
    client_packet[..4].copy_from_slice(&header);
    client_packet[4..].copy_from_slice(&payload);

    let start = Instant::now();
    let mut forwarded = 0u64;
    for n in 0..packets {
        let (five_tuple, _, _) = clients[(n % u64::from(allocations)) as usize];
        if let ClientAction::Forward { payload, .. } =
            server.handle_client_packet(now, five_tuple, std::hint::black_box(&client_packet))
        {
            forwarded += payload.len() as u64;
        }
    }
    report("ChannelData client->peer", packets, start.elapsed());
    assert_eq!(forwarded, packets * payload.len() as u64);

    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
    let start = Instant::now();
    let mut delivered = 0u64;
    for n in 0..packets {
        let (_, relay, peer) = clients[(n % u64::from(allocations)) as usize];
        if let PeerAction::ToClient { range, .. } = server.handle_peer_packet(
            now,
            relay,
            peer,
            std::hint::black_box(&mut buf),
            payload.len(),
        ) {
            delivered += range.len() as u64;
        }
    }
    report("ChannelData peer->client", packets, start.elapsed());
    assert_eq!(delivered, packets * (payload.len() + 4) as u64);

    let binding =
        MessageBuilder::new(Method::Binding, Class::Request, TransactionId([1; 12])).finish();
    let n_binding = packets / 5;
    let start = Instant::now();
    for n in 0..n_binding {
        let (five_tuple, _, _) = clients[(n % u64::from(allocations)) as usize];
        let _ = server.handle_client_packet(now, five_tuple, &binding);
        while server.poll_output().is_some() {}
    }
    report("STUN Binding request->response", n_binding, start.elapsed());
}

/// Resident set size from /proc (Linux), 0 elsewhere.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn report(what: &str, n: u64, elapsed: Duration) {
    let ns = elapsed.as_nanos() as f64 / n as f64;
    println!(
        "{what}: {n} packets in {elapsed:?}: {ns:.1} ns/packet, {:.2} M packets/s",
        1e3 / ns
    );
}

fn allocate(
    server: &mut Server,
    now: Instant,
    from: FiveTuple,
    relay: SocketAddr,
    peer: SocketAddr,
    key: &[u8; 16],
    i: u32,
) -> RelayHandle {
    let tid = |k: u32| {
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&i.to_be_bytes());
        t[4..8].copy_from_slice(&k.to_be_bytes());
        TransactionId(t)
    };
    let mut b = MessageBuilder::new(Method::Allocate, Class::Request, tid(1));
    b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let _ = server.handle_client_packet(now, from, &b.finish());
    let Some(Output::Transmit { data, .. }) = server.poll_output() else {
        panic!("no 401")
    };
    let challenge = StunMessage::parse(&data).unwrap();
    assert!(challenge.get(ERROR_CODE).is_some());
    let nonce = challenge.get(NONCE).unwrap().to_vec();

    let signed = |b: &mut MessageBuilder| {
        b.add(USERNAME, b"bench")
            .add(REALM, REALM_NAME.as_bytes())
            .add(NONCE, &nonce)
            .add_message_integrity(key);
    };
    let mut b = MessageBuilder::new(Method::Allocate, Class::Request, tid(2));
    b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    signed(&mut b);
    let _ = server.handle_client_packet(now, from, &b.finish());
    let Some(Output::BindRelay { relay: handle, .. }) = server.poll_output() else {
        panic!("no bind")
    };
    server.handle_relay_bound(now, handle, Ok(relay));
    while server.poll_output().is_some() {}

    let mut b = MessageBuilder::new(Method::ChannelBind, Class::Request, tid(3));
    b.add(CHANNEL_NUMBER, &[0x40, 0, 0, 0])
        .add_xor_address(XOR_PEER_ADDRESS, peer);
    signed(&mut b);
    let _ = server.handle_client_packet(now, from, &b.finish());
    let Some(Output::Transmit { data, .. }) = server.poll_output() else {
        panic!("no response")
    };
    let m = StunMessage::parse(&data).unwrap();
    assert_eq!(m.class(), Class::Success, "channel bind failed");
    handle
}
