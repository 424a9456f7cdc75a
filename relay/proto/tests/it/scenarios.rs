//! Sans-IO scenarios with a fake clock: the whole TURN life cycle, auth failures, quotas,
//! policy, draining, amplification limits, stream framing.

use std::net::SocketAddr;
use std::time::Duration;

use relay_proto::attributes::{
    ERROR_CODE, NONCE, REALM, SOFTWARE, UNKNOWN_ATTRIBUTES, XOR_MAPPED_ADDRESS, XOR_PEER_ADDRESS,
};
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{
    AddressFamily, AttributeType, BindError, ClientAction, DenyReason, HEADROOM, Method, Output,
    PeerAction, QuotaKind, Quotas, RateLimit, RelayHandle, Server, SharedQuotas, TAILROOM,
    Transport, attributes, channel_data,
};

use crate::support::{
    Client, Harness, REST_SECRET, UNIX_T0, channel_data_packet, config, error_code, five_tuple,
    lifetime_of, udp,
};

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Deliver `payload` from `from` to the relay socket `relay`; returns the action and buffer.
fn from_peer(
    h: &mut Harness,
    relay: RelayHandle,
    from: SocketAddr,
    payload: &[u8],
) -> (PeerAction, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    let action = h
        .server
        .handle_peer_packet(h.now, relay, from, &mut buf, payload.len());
    (action, buf)
}

#[test]
fn full_life_cycle_allocate_permission_channel_relay_refresh_expire() {
    let (mut h, mut alice, relay) = Harness::with_alice_allocated();
    assert_eq!(relay.ip().to_string(), "198.51.100.1");
    assert_eq!(h.server.stats().allocations, 1);
    let local_relay = h.server.relay_address_of(&alice.from).unwrap();
    assert_eq!(local_relay, relay);
    // Across the sans-IO boundary the relay socket is named by its handle, not its address.
    let handle = h.server.relay_handle_of(&alice.from).unwrap();

    let p = peer("203.0.114.7:6000");
    let resp = h.request(alice.from, &alice.permission_request(&[p]));
    alice.verify_success(&resp, Method::CreatePermission);
    alice.bind_channel(&mut h, 0x4000, p);
    assert_eq!(
        (h.server.stats().permissions, h.server.stats().channels),
        (1, 1)
    );

    // ChannelData client -> peer: zero-copy range of the input.
    let packet = channel_data_packet(0x4000, b"hello peer");
    match h.send(alice.from, &packet) {
        ClientAction::Forward {
            relay: r,
            peer: to,
            payload,
        } => {
            assert_eq!((r, to), (handle, p));
            assert_eq!(&packet[payload], b"hello peer");
        }
        other => panic!("expected forward, got {other:?}"),
    }

    // Peer -> client over the channel: header written in place.
    let (action, buf) = from_peer(&mut h, handle, p, b"hello client");
    match action {
        PeerAction::ToClient { to, range } => {
            assert_eq!(to, alice.from);
            let (number, data) = channel_data::parse(&buf[range.clone()]).unwrap();
            assert_eq!(number, 0x4000);
            assert_eq!(&buf[range][data], b"hello client");
        }
        other => panic!("expected ToClient, got {other:?}"),
    }

    // Same peer IP, other port: permitted, no channel -> Data indication.
    let (action, _) = from_peer(&mut h, handle, peer("203.0.114.7:6001"), b"via data");
    assert_eq!(action, PeerAction::Queued);
    match h.outputs().as_slice() {
        [Output::Transmit { to, data }] => {
            assert_eq!(*to, alice.from);
            let m = StunMessage::parse(data).unwrap();
            assert_eq!(
                (m.method(), m.class()),
                (Some(Method::Data), Class::Indication)
            );
            assert_eq!(m.get(AttributeType::Data), Some(&b"via data"[..]));
            let from = attributes::decode_xor_address(
                m.get(XOR_PEER_ADDRESS).unwrap(),
                &m.transaction_id(),
            );
            assert_eq!(from.unwrap(), peer("203.0.114.7:6001"));
        }
        other => panic!("expected a Data indication, got {other:?}"),
    }

    // Send indication: payload range points into the request.
    let send = alice.send_indication(peer("203.0.114.7:7000"), b"sent");
    match h.send(alice.from, &send) {
        ClientAction::Forward {
            peer: to, payload, ..
        } => {
            assert_eq!(to, peer("203.0.114.7:7000"));
            assert_eq!(&send[payload], b"sent");
        }
        other => panic!("expected forward, got {other:?}"),
    }
    // An unknown comprehension-required attribute: discarded (RFC 8489 section 6.3.3).
    let tid = alice.next_tid();
    let mut b = MessageBuilder::new(Method::Send, Class::Indication, tid);
    b.add_xor_address(XOR_PEER_ADDRESS, peer("203.0.114.7:7000"))
        .add(AttributeType::Data, b"odd")
        .add(0x7777u16, &[0; 4]);
    assert_eq!(h.send(alice.from, &b.finish()), ClientAction::Drop);
    // No permission for another IP: dropped.
    let send = alice.send_indication(peer("203.0.114.8:7000"), b"nope");
    assert_eq!(h.send(alice.from, &send), ClientAction::Drop);
    let (action, _) = from_peer(&mut h, handle, peer("203.0.114.8:1"), b"nope");
    assert_eq!(action, PeerAction::Drop);

    let stats = h.server.stats().clone();
    assert_eq!((stats.packets_to_peer, stats.packets_to_client), (2, 2));

    // Refresh to 1200 s (capped at 3600, floored at the default 600).
    assert_eq!(alice.refresh(&mut h, 1200), 1200);
    assert_eq!(alice.refresh(&mut h, 99_999), 3600);
    assert_eq!(alice.refresh(&mut h, 60), 600);

    // After 300 s without refresh a permission is gone, so is relaying; one whose peer has a
    // channel lasts as long as the channel (600 s).
    let other = peer("203.0.114.9:1");
    let resp = h.request(alice.from, &alice.permission_request(&[other]));
    alice.verify_success(&resp, Method::CreatePermission);
    h.advance(Duration::from_secs(301));
    assert_eq!(h.server.stats().permissions, 1);
    let send = alice.send_indication(other, b"late");
    assert_eq!(h.send(alice.from, &send), ClientAction::Drop);
    let (action, _) = from_peer(&mut h, handle, other, b"late");
    assert_eq!(action, PeerAction::Drop);
    let (action, _) = from_peer(&mut h, handle, p, b"late");
    assert!(matches!(action, PeerAction::ToClient { .. }), "{action:?}");

    // The allocation (refreshed to 600 s at t=0) expires by the timer sweep.
    assert!(h.server.poll_timeout().is_some());
    h.advance(Duration::from_secs(300));
    assert_eq!(h.server.stats().allocations, 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.stats().channels, 0);
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { relay: handle }]);
    assert!(h.server.relay_address_of(&alice.from).is_none());
    assert!(h.server.relay_handle_of(&alice.from).is_none());
    // The released handle is dead: a late peer datagram on it finds nothing.
    let (action, _) = from_peer(&mut h, handle, p, b"after");
    assert_eq!(action, PeerAction::Drop);
}

#[test]
fn channel_bind_keeps_permission_and_channel_alive_while_refreshed() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let p = peer("203.0.114.7:6000");
    for _ in 0..4 {
        let resp = alice.transact(&mut h, |c| c.channel_bind_request(0x4001, p));
        alice.verify_success(&resp, Method::ChannelBind);
        let resp = alice.transact(&mut h, |c| c.refresh_request(600));
        alice.verify_success(&resp, Method::Refresh);
        h.advance(Duration::from_secs(250));
        let (action, _) = from_peer(&mut h, relay, p, b"x");
        assert!(matches!(action, PeerAction::ToClient { .. }));
    }
    assert_eq!(
        (h.server.stats().permissions, h.server.stats().channels),
        (1, 1)
    );
}

/// A ChannelBind gives its peer's permission the channel's lifetime (10 min), as coturn does:
/// aioice (aiortc) refreshes a channel every 500 s and never its permission on its own, so a
/// 300 s permission dropped its peer's packets from 300 s to 500 s, and aiortc's relayed calls
/// died 5 minutes in. A refresh never shortens a permission.
#[test]
fn a_channel_keeps_its_peers_permission_for_its_lifetime() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let p = peer("203.0.114.7:6000");
    for round in 0..3 {
        let resp = alice.transact(&mut h, |c| c.channel_bind_request(0x4001, p));
        alice.verify_success(&resp, Method::ChannelBind);
        // A CreatePermission after it does not cut the permission back to 300 s.
        let resp = alice.transact(&mut h, |c| c.permission_request(&[p]));
        alice.verify_success(&resp, Method::CreatePermission);
        let resp = alice.transact(&mut h, |c| c.refresh_request(600));
        alice.verify_success(&resp, Method::Refresh);
        h.advance(Duration::from_secs(450));
        let (action, _) = from_peer(&mut h, relay, p, b"x");
        assert!(
            matches!(action, PeerAction::ToClient { .. }),
            "round {round}: {action:?}"
        );
        h.advance(Duration::from_secs(50));
    }
    // Unrefreshed, it ends with the channel, in an allocation that lives on.
    let resp = alice.transact(&mut h, |c| c.refresh_request(600));
    alice.verify_success(&resp, Method::Refresh);
    h.advance(Duration::from_secs(101));
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.server.stats().permissions, 0);
    let (action, _) = from_peer(&mut h, relay, p, b"x");
    assert_eq!(action, PeerAction::Drop);
}

#[test]
fn refresh_with_zero_lifetime_deletes_the_allocation() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let req = alice.refresh_request(0);
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    let outs = h.outputs();
    assert!(outs.contains(&Output::ReleaseRelay { relay }));
    let resp = outs
        .iter()
        .find_map(|o| match o {
            Output::Transmit { data, .. } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        lifetime_of(&alice.verify_success(&resp, Method::Refresh)),
        0
    );
    assert_eq!(h.server.stats().allocations, 0);
    // A further Refresh finds no allocation: 437.
    let resp = h.request(alice.from, &alice.refresh_request(600));
    assert_eq!(error_code(&resp), Some(437));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce_that_works() {
    let (mut h, mut alice, _) = Harness::with_alice_allocated();
    alice.refresh(&mut h, 3600);
    h.advance(Duration::from_secs(601));
    let resp = h.request(alice.from, &alice.refresh_request(600));
    assert_eq!(error_code(&resp), Some(438));
    let m = StunMessage::parse(&resp).unwrap();
    assert!(m.get(REALM).is_some() && m.get(NONCE).is_some());
    let old = alice.nonce.clone();
    alice.learn_nonce(&resp);
    assert_ne!(alice.nonce, old);
    alice.refresh(&mut h, 600);
    assert_eq!(h.server.stats().stale_nonces, 1);
}

#[test]
fn a_nonce_is_bound_to_the_client_ip() {
    let (mut h, alice, _) = Harness::with_alice_allocated();
    let mut thief = alice.clone();
    thief.from = udp("192.0.2.99:40000");
    let resp = thief.allocate_once(&mut h);
    assert_eq!(error_code(&resp), Some(438));
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut h = Harness::new();
    let mut mallory = Client::new(udp("192.0.2.11:40000"), "alice", "wrong-pass");
    let challenge = mallory.allocate_once(&mut h);
    assert_eq!(error_code(&challenge), Some(401));
    mallory.learn_nonce(&challenge);
    let resp = mallory.allocate_once(&mut h);
    assert_eq!(error_code(&resp), Some(401));
    // A 401 carries no MESSAGE-INTEGRITY and no reason phrase.
    let m = StunMessage::parse(&resp).unwrap();
    assert!(!m.has_integrity());
    assert_eq!(
        attributes::decode_error_code(m.get(ERROR_CODE).unwrap())
            .unwrap()
            .reason,
        ""
    );

    let mut nobody = Client::new(udp("192.0.2.12:40000"), "nobody", "x");
    nobody.nonce = mallory.nonce.clone();
    nobody.from = udp("192.0.2.11:40001");
    let resp = nobody.allocate_once(&mut h);
    assert_eq!(error_code(&resp), Some(401));
    assert_eq!(h.server.stats().auth_failures, 2);
    assert_eq!(h.server.stats().allocations, 0);
}

#[test]
fn a_request_naming_another_realm_gets_401() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    alice.fetch_nonce(&mut h);
    // The key is alice's in our realm; only the REALM attribute names another.
    alice.realm = "other.example".to_owned();
    let resp = alice.allocate_once(&mut h);
    assert_eq!(error_code(&resp), Some(401));
    assert_eq!(h.server.stats().auth_failures, 1);
    assert_eq!(h.server.stats().allocations, 0);
}

#[test]
fn another_users_credentials_on_an_allocation_get_441() {
    let (mut h, alice, _) = Harness::with_alice_allocated();
    let mut bob = Client::new(alice.from, "bob", "bob-pass");
    bob.nonce = alice.nonce.clone();
    let resp = h.request(bob.from, &bob.refresh_request(600));
    assert_eq!(error_code(&resp), Some(441));
    // Bob's key signs the error: he can trust it.
    assert!(
        StunMessage::parse(&resp)
            .unwrap()
            .verify_integrity(&bob.key)
    );
    let resp = h.request(bob.from, &bob.permission_request(&[peer("203.0.114.7:1")]));
    assert_eq!(error_code(&resp), Some(441));
    assert_eq!(h.server.stats().wrong_credentials, 2);
    // Counted once: not among the other error responses too.
    assert_eq!(h.server.stats().error_responses, 0);
}

#[test]
fn rest_credentials_verify_with_any_secret_and_expire_for_new_allocations() {
    let mut h = Harness::new();
    let mut carol = Client::carol(UNIX_T0 + 1000);
    carol.allocate(&mut h);
    carol.refresh(&mut h, 3600);
    let mut old = Client::rest_for_an_hour("192.0.2.21:40000", "dave", b"old-secret");
    old.allocate(&mut h);
    assert_eq!(h.server.stats().allocations, 2);

    let mut expired = Client::rest(udp("192.0.2.22:40000"), UNIX_T0 - 1, "erin", REST_SECRET);
    assert_eq!(expired.allocate_error(&mut h), Some(401));

    let mut forged = Client::rest_for_an_hour("192.0.2.23:40000", "frank", b"guess");
    assert_eq!(forged.allocate_error(&mut h), Some(401));
    assert_eq!(h.server.stats().auth_failures, 2);

    // A REST username that is valid now expires with time: no allocation is made with it any
    // more, but the one made in time goes on being refreshed with it (as coturn: clients keep
    // the credentials they allocated with).
    h.advance(Duration::from_secs(1001));
    assert_eq!(h.outputs().len(), 1, "dave's allocation expired");
    let resp = carol.transact(&mut h, |c| c.refresh_request(600));
    carol.verify_success(&resp, Method::Refresh);
    let peer_addr = peer("8.8.8.8:5000");
    let resp = carol.transact(&mut h, |c| c.permission_request(&[peer_addr]));
    carol.verify_success(&resp, Method::CreatePermission);
    let mut late = Client::carol(UNIX_T0 + 1000);
    late.from = udp("192.0.2.24:40000");
    assert_eq!(late.allocate_error(&mut h), Some(401));
    assert_eq!(h.server.stats().auth_failures, 3);
}

#[test]
fn second_allocate_on_a_five_tuple_is_437_and_a_retransmission_is_answered_again() {
    let (mut h, mut alice, _) = Harness::with_alice_allocated();
    // Retransmission of the creating request (same transaction id) -> same success.
    let creating = TransactionId({
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&2u32.to_be_bytes());
        t[4..8].copy_from_slice(&40000u16.to_be_bytes().repeat(2));
        t
    });
    let req = alice.allocate_request(creating);
    let resp = h.request(alice.from, &req);
    alice.verify_success(&resp, Method::Allocate);
    let resp = alice.allocate_once(&mut h);
    assert_eq!(error_code(&resp), Some(437));
    assert_eq!(h.server.stats().allocation_mismatches, 1);
    assert_eq!(h.server.stats().error_responses, 0, "counted once");
    assert_eq!(h.server.stats().allocations, 1);
}

#[test]
fn eleventh_allocation_of_a_user_gets_486_across_shards() {
    let t0 = std::time::Instant::now();
    let shared = std::sync::Arc::new(SharedQuotas::new());
    // One config cloned for every shard: they share the nonce secret.
    let mut cfg = config(t0);
    cfg.quotas.allocations_per_user = 10;
    let mut shards: Vec<Harness> = (0..2)
        .map(|_| {
            let mut h = Harness::with_config(t0, cfg.clone());
            h.server = Server::with_shared_quotas(cfg.clone(), shared.clone());
            h
        })
        .collect();
    for i in 0..10u16 {
        let h = &mut shards[usize::from(i % 2)];
        let mut c = Client::alice_at(udp(&format!("192.0.2.30:{}", 41000 + i)));
        c.allocate(h);
    }
    assert_eq!(shared.allocations_of("alice"), 10);
    let h = &mut shards[1];
    let mut eleventh = Client::alice_at(udp("192.0.2.30:42000"));
    eleventh.fetch_nonce(h);
    let resp = eleventh.allocate_once(h);
    assert_eq!(error_code(&resp), Some(486));
    assert!(
        StunMessage::parse(&resp)
            .unwrap()
            .verify_integrity(&eleventh.key)
    );
    assert_eq!(h.server.stats().quota(QuotaKind::AllocationsPerUser), 1);
    // Bob is not affected by Alice's quota.
    let mut bob = Client::new(udp("192.0.2.31:40000"), "bob", "bob-pass");
    bob.allocate(h);
    // Freeing one of Alice's allocations lets the next one in.
    let mut first = Client::alice_at(udp("192.0.2.30:41000"));
    first.nonce = eleventh.nonce.clone();
    let req = first.refresh_request(0);
    let _ = shards[0].send(first.from, &req);
    shards[0].outputs();
    assert_eq!(shared.allocations_of("alice"), 9);
    let relay = eleventh.allocate(&mut shards[1]);
    assert_eq!(relay.port() % 2, 0);
}

#[test]
fn rest_users_count_against_the_user_part_of_the_username() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas.allocations_per_user = 1;
    });
    let mut a = Client::rest(udp("192.0.2.40:40000"), UNIX_T0 + 100, "gina", REST_SECRET);
    a.allocate(&mut h);
    let mut b = Client::rest(udp("192.0.2.40:40001"), UNIX_T0 + 200, "gina", REST_SECRET);
    assert_eq!(b.allocate_error(&mut h), Some(486));
}

#[test]
fn total_allocation_quota_gets_486() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas.total_allocations = 1;
    });
    Client::alice_at(udp("192.0.2.40:40000")).allocate(&mut h);
    let mut bob = Client::new(udp("192.0.2.41:40000"), "bob", "bob-pass");
    assert_eq!(bob.allocate_error(&mut h), Some(486));
    assert_eq!(h.server.stats().quota(QuotaKind::TotalAllocations), 1);
}

#[test]
fn draining_refuses_new_allocations_but_keeps_existing_ones() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let p = peer("203.0.114.7:6000");
    h.request(alice.from, &alice.channel_bind_request(0x4000, p));
    h.server.set_draining(true);
    assert!(h.server.is_draining());

    let mut bob = Client::new(udp("192.0.2.11:40000"), "bob", "bob-pass");
    assert_eq!(bob.allocate_error(&mut h), Some(508));

    // The existing allocation still relays and refreshes.
    assert!(matches!(
        h.send(alice.from, &channel_data_packet(0x4000, b"x")),
        ClientAction::Forward { .. }
    ));
    let (action, _) = from_peer(&mut h, relay, p, b"y");
    assert!(matches!(action, PeerAction::ToClient { .. }));
    alice.refresh(&mut h, 600);

    h.server.set_draining(false);
    bob.allocate(&mut h);
}

#[test]
fn denied_peers_get_403_in_every_encoding() {
    let (mut h, mut alice, _) = Harness::with_alice_allocated();
    for p in [
        "127.0.0.1:5000",
        "10.0.0.1:5000",
        "0.0.0.0:5000",
        "169.254.169.254:80",
        "224.0.0.1:5000",
    ] {
        let resp = h.request(alice.from, &alice.permission_request(&[peer(p)]));
        assert_eq!(error_code(&resp), Some(403), "{p}");
        assert_eq!(
            alice.channel_bind_error(&mut h, 0x4000, peer(p)),
            Some(403),
            "{p}"
        );
    }
    // One denied address fails the whole request.
    let resp = h.request(
        alice.from,
        &alice.permission_request(&[peer("8.8.8.8:1"), peer("127.0.0.2:1")]),
    );
    assert_eq!(error_code(&resp), Some(403));
    assert_eq!(h.server.stats().permissions, 0);
    // A Send indication to a denied peer is dropped and counted.
    let send = alice.send_indication(peer("127.0.0.1:9"), b"x");
    assert_eq!(h.send(alice.from, &send), ClientAction::Drop);
    assert_eq!(h.server.stats().denied(DenyReason::Loopback), 4);

    // IPv6 relay: every IPv4-in-IPv6 form of 127.0.0.1 is refused.
    let mut v6 = Client::alice_at(udp("192.0.2.10:40001"));
    v6.nonce = alice.nonce.clone();
    v6.allocate_family(&mut h, AddressFamily::V6);
    for p in [
        "[::ffff:127.0.0.1]:5000",
        "[::127.0.0.1]:5000",
        "[2002:7f00:1::]:5000",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]:5000",
        "[64:ff9b::7f00:1]:5000",
        "[::1]:5000",
        "[::]:5000",
    ] {
        let resp = h.request(v6.from, &v6.permission_request(&[peer(p)]));
        assert_eq!(error_code(&resp), Some(403), "{p}");
    }
    // Family mismatch with the relayed address: 443.
    let resp = h.request(v6.from, &v6.permission_request(&[peer("8.8.8.8:1")]));
    assert_eq!(error_code(&resp), Some(443));
}

#[test]
fn own_listening_address_is_never_a_peer() {
    let mut h = Harness::configured(|cfg| {
        cfg.policy.allow = vec!["198.51.100.0/24".parse().unwrap()];
        cfg.policy.relay_ports = 50000..=50100;
    });
    let mut alice = Client::alice();
    let relay = alice.allocate(&mut h);
    // The listener (learned from the 5-tuple) and a non-relay port of our IP are refused...
    let listener = peer("198.51.100.1:3478");
    assert_eq!(
        alice.channel_bind_error(&mut h, 0x4000, listener),
        Some(403)
    );
    let ssh = peer("198.51.100.1:22");
    assert_eq!(alice.channel_bind_error(&mut h, 0x4000, ssh), Some(403));
    // ...while another relay address of this server (relay-to-relay) is fine.
    alice.bind_channel(&mut h, 0x4000, relay);
    assert_eq!(h.server.stats().denied(DenyReason::OwnAddress), 2);
}

/// Relay-to-relay needs no allow entry when the relay's own address is in a range the policy
/// refuses (here documentation space; a LAN or loopback relay alike): the relay sockets of this
/// server are peers, nothing else on its IP is, and other addresses of the range stay refused.
#[test]
fn relay_to_relay_works_on_an_own_address_of_a_denied_range() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    let alice_relay = alice.allocate(&mut h);
    let mut bob = Client::new(udp("192.0.2.20:4000"), "bob", "bob-pass");
    let bob_relay = bob.allocate(&mut h);
    assert_eq!(alice_relay.ip(), bob_relay.ip());
    let resp = h.request(alice.from, &alice.permission_request(&[bob_relay]));
    alice.verify_success(&resp, Method::CreatePermission);
    alice.bind_channel(&mut h, 0x4000, bob_relay);
    let not_relay = SocketAddr::new(bob_relay.ip(), 22);
    assert_eq!(
        alice.channel_bind_error(&mut h, 0x4001, not_relay),
        Some(403),
        "not a relay port of ours"
    );
    let resp = h.request(
        alice.from,
        &alice.permission_request(&[peer("198.51.100.7:5000")]),
    );
    assert_eq!(error_code(&resp), Some(403), "not our address");
    assert_eq!(h.server.stats().denied(DenyReason::OwnAddress), 1);
    assert_eq!(h.server.stats().denied(DenyReason::Documentation), 1);
}

/// Allocations made and deleted in a loop (each with permissions and channels) leave their
/// timers behind until the deadlines; the queue is compacted so that it stays within about
/// twice the live timers (plus 1024), whatever the churn.
#[test]
fn churned_allocations_do_not_grow_the_timer_queue() {
    let mut h = Harness::configured(|cfg| {
        cfg.policy.allow = vec!["198.51.100.0/24".parse().unwrap()];
    });
    let mut alice = Client::alice();
    let mut peak = 0;
    for round in 0..400u16 {
        alice.allocate(&mut h);
        for i in 0..4u16 {
            let peer_addr = peer(&format!("198.51.100.{}:{}", 10 + i, 5000 + round));
            alice.bind_channel(&mut h, 0x4000 + i, peer_addr);
        }
        let delete = alice.refresh_request(0);
        assert_eq!(h.send(alice.from, &delete), ClientAction::Queued);
        h.outputs();
        peak = peak.max(h.server.queued_timers());
    }
    assert_eq!(h.server.stats().allocations, 0);
    // 400 rounds x (1 allocation + 4 permissions + 4 channels) = 3600 timers without compaction.
    assert!(peak <= 1024 + 9 + 1, "peak {peak}");
}

#[test]
fn loopback_peers_need_the_opt_in() {
    let mut h = Harness::configured(|cfg| {
        cfg.policy.allow_loopback_peers = true;
    });
    let mut alice = Client::alice_at(udp("127.0.0.1:40000"));
    alice.allocate(&mut h);
    alice.bind_channel(&mut h, 0x4000, peer("127.0.0.1:3480"));
    let resp = h.request(alice.from, &alice.permission_request(&[peer("0.0.0.0:1")]));
    assert_eq!(error_code(&resp), Some(403));
}

#[test]
fn channel_bind_rules() {
    let (mut h, mut alice, _) = Harness::with_alice_allocated();
    let (p1, p2) = (peer("203.0.114.1:1"), peer("203.0.114.2:2"));
    alice.bind_channel(&mut h, 0x4000, p1);
    // Rebinding the same pair refreshes.
    alice.bind_channel(&mut h, 0x4000, p1);
    // The number to another peer, or the peer to another number: 400.
    assert_eq!(alice.channel_bind_error(&mut h, 0x4000, p2), Some(400));
    assert_eq!(alice.channel_bind_error(&mut h, 0x4001, p1), Some(400));
    // Out of range channel numbers: 400.
    assert_eq!(alice.channel_bind_error(&mut h, 0x3FFF, p2), Some(400));
    assert_eq!(alice.channel_bind_error(&mut h, 0x8000, p2), Some(400));
    // After expiry the number stays reserved for 5 minutes, then can be reused.
    alice.refresh(&mut h, 3600);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.server.stats().channels, 0);
    let resp = alice.transact(&mut h, |c| c.channel_bind_request(0x4000, p2));
    assert_eq!(error_code(&resp), Some(400));
    h.advance(Duration::from_secs(300));
    let resp = alice.transact(&mut h, |c| c.channel_bind_request(0x4000, p2));
    alice.verify_success(&resp, Method::ChannelBind);
    assert_eq!(h.server.stats().channels, 1);
}

#[test]
fn channel_and_permission_quotas_get_508() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas.permissions_per_allocation = 2;
        cfg.quotas.channels_per_allocation = 1;
    });
    let mut alice = Client::alice();
    alice.allocate(&mut h);
    let resp = h.request(
        alice.from,
        &alice.permission_request(&[peer("203.0.114.1:1"), peer("203.0.114.2:1")]),
    );
    alice.verify_success(&resp, Method::CreatePermission);
    let resp = h.request(
        alice.from,
        &alice.permission_request(&[peer("203.0.114.3:1")]),
    );
    assert_eq!(error_code(&resp), Some(508));
    alice.bind_channel(&mut h, 0x4000, peer("203.0.114.1:1"));
    let second = peer("203.0.114.2:1");
    assert_eq!(alice.channel_bind_error(&mut h, 0x4001, second), Some(508));
    assert_eq!(h.server.stats().quota(QuotaKind::Permissions), 1);
    assert_eq!(h.server.stats().quota(QuotaKind::Channels), 1);
}

/// RFC 8656 section 7.2: ADDITIONAL-ADDRESS-FAMILY with REQUESTED-ADDRESS-FAMILY, or naming
/// IPv4, is a 400; naming IPv6 asks for a dual allocation, which this server does not make:
/// the IPv4 allocation is made and its answer says, in ADDRESS-ERROR-CODE, that IPv6 was not.
#[test]
fn a_dual_allocation_is_answered_with_ipv4_and_an_address_error_for_ipv6() {
    use relay_proto::AttributeType;
    let mut h = Harness::new();
    let mut alice = Client::alice();
    alice.fetch_nonce(&mut h);
    for (requested, additional) in [(Some(0x01u8), 0x02u8), (None, 0x01)] {
        let req = alice.allocate_request_with(|b| {
            if let Some(family) = requested {
                b.add(attributes::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
            }
            b.add(
                AttributeType::AdditionalAddressFamily,
                &[additional, 0, 0, 0],
            );
        });
        assert_eq!(error_code(&h.request(alice.from, &req)), Some(400));
    }
    let req = alice.allocate_request_with(|b| {
        b.add(AttributeType::AdditionalAddressFamily, &[0x02, 0, 0, 0]);
    });
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    let Output::BindRelay { relay, family, .. } = h.outputs().remove(0) else {
        panic!()
    };
    assert_eq!(family, AddressFamily::V4);
    let resp = h.complete_bind(relay, family);
    let m = alice.verify_success(&resp, Method::Allocate);
    let error = m
        .get(AttributeType::AddressErrorCode)
        .expect("ADDRESS-ERROR-CODE");
    assert_eq!(&error[..4], &[0x02, 0, 4, 40], "IPv6: 440");
    assert!(
        m.get(attributes::XOR_RELAYED_ADDRESS)
            .is_some_and(|a| a.len() == 8),
        "one IPv4 address"
    );
}

#[test]
fn allocate_errors_400_420_440_442_508() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    alice.fetch_nonce(&mut h);

    let tid = alice.next_tid();
    let req = alice.build(Method::Allocate, tid, |b| {
        b.add(attributes::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(error_code(&h.request(alice.from, &req)), Some(442));
    let tid = alice.next_tid();
    let req = alice.build(Method::Allocate, tid, |_| {});
    assert_eq!(error_code(&h.request(alice.from, &req)), Some(400));
    let req = alice.allocate_request_with(|b| {
        b.add(attributes::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
    });
    assert_eq!(error_code(&h.request(alice.from, &req)), Some(440));
    let req = alice.allocate_request_with(|b| {
        b.add(attributes::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_eq!(error_code(&h.request(alice.from, &req)), Some(508));
    // Unknown comprehension-required attribute: 420 listing it.
    let req = alice.allocate_request_with(|b| {
        b.add(0x7777u16, &[1, 2, 3, 4]);
    });
    let resp = h.request(alice.from, &req);
    assert_eq!(error_code(&resp), Some(420));
    let m = StunMessage::parse(&resp).unwrap();
    assert_eq!(m.get(UNKNOWN_ATTRIBUTES), Some(&[0x77, 0x77][..]));
    // Unknown comprehension-optional attributes are ignored.
    let req = alice.allocate_request_with(|b| {
        b.add(0xC001u16, &[1, 2, 3, 4]);
    });
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    let Output::BindRelay {
        relay, even_port, ..
    } = h.outputs().remove(0)
    else {
        panic!()
    };
    assert!(!even_port);
    // The host has no address of that family: 440; no capacity: 508.
    h.server
        .handle_relay_bound(h.now, relay, Err(BindError::FamilyNotSupported));
    let Output::Transmit { data, .. } = h.outputs().remove(0) else {
        panic!()
    };
    assert_eq!(error_code(&data), Some(440));
    let tid = alice.next_tid();
    let req = alice.allocate_request(tid);
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    let Output::BindRelay { relay, .. } = h.outputs().remove(0) else {
        panic!()
    };
    h.server
        .handle_relay_bound(h.now, relay, Err(BindError::NoCapacity));
    let Output::Transmit { data, .. } = h.outputs().remove(0) else {
        panic!()
    };
    assert_eq!(error_code(&data), Some(508));
    assert_eq!(h.server.stats().allocations, 0);
    assert_eq!(SharedQuotas::new().allocations(), 0);
}

#[test]
fn requests_without_a_full_credential_set_get_400_and_other_methods_without_allocation_437() {
    let (mut h, alice, _) = Harness::with_alice_allocated();
    let mut b = MessageBuilder::new(Method::Refresh, Class::Request, TransactionId([5; 12]));
    b.add(attributes::USERNAME, b"alice")
        .add_message_integrity(&alice.key);
    assert_eq!(error_code(&h.request(alice.from, &b.finish())), Some(400));

    let mut other = Client::alice_at(udp("192.0.2.10:40009"));
    other.nonce = alice.nonce.clone();
    let resp = h.request(
        other.from,
        &other.permission_request(&[peer("203.0.114.1:1")]),
    );
    assert_eq!(error_code(&resp), Some(437));
}

#[test]
fn binding_response_is_minimal_and_never_larger_than_the_request() {
    let mut h = Harness::configured(|cfg| {
        cfg.software = Some("relay test".to_owned());
    });
    let from = udp("192.0.2.50:40000");
    for padding in [0usize, 4, 8, 12, 24, 64] {
        let mut b = MessageBuilder::new(Method::Binding, Class::Request, TransactionId([9; 12]));
        if padding > 0 {
            b.add(SOFTWARE, &vec![b'x'; padding]);
        }
        let req = b.finish();
        let resp = h.request(from, &req);
        let m = StunMessage::parse(&resp).unwrap();
        assert_eq!(
            (m.method(), m.class()),
            (Some(Method::Binding), Class::Success)
        );
        let mapped =
            attributes::decode_xor_address(m.get(XOR_MAPPED_ADDRESS).unwrap(), &m.transaction_id());
        assert_eq!(mapped.unwrap(), from.client);
        assert!(
            m.get(SOFTWARE).is_none(),
            "no SOFTWARE on unauthenticated responses"
        );
        // The mandatory part (header + XOR-MAPPED-ADDRESS = 32 bytes for IPv4) is the floor.
        assert!(
            resp.len() <= req.len().max(32),
            "{} > {}",
            resp.len(),
            req.len()
        );
        assert_eq!(m.has_fingerprint(), req.len() >= 40);
    }
    // The 401 to a padded Allocate is no larger than the request either.
    let mut alice = Client::alice_at(from);
    let tid = alice.next_tid();
    let mut req = alice.allocate_request(tid);
    let mut b = MessageBuilder::new(Method::Allocate, Class::Request, tid);
    b.add(attributes::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .add(SOFTWARE, &[b'x'; 80]);
    req.clone_from(&b.finish());
    let resp = h.request(from, &req);
    assert_eq!(error_code(&resp), Some(401));
    assert!(resp.len() <= req.len());
    assert!(StunMessage::parse(&resp).unwrap().get(SOFTWARE).is_none());
    assert_eq!(h.server.stats().binding_requests, 6);
}

#[test]
fn the_amplification_credit_is_one_for_every_shard_sharing_the_quotas() {
    // Four shards (as four workers with SO_REUSEPORT), one source IP whose datagrams come
    // from many ports and so land on every shard: one allowance in all, not one per shard.
    let t0 = std::time::Instant::now();
    let mut cfg = config(t0);
    cfg.quotas.amplification_allowance = Some(300);
    let shared = std::sync::Arc::new(SharedQuotas::new());
    let mut shards: Vec<Server> = (0..4)
        .map(|_| Server::with_shared_quotas(cfg.clone(), shared.clone()))
        .collect();
    let (mut sent, mut answered) = (0u64, 0u64);
    for i in 0..400u16 {
        let from = udp(&format!("192.0.2.77:{}", 40_000 + i));
        let shard = &mut shards[usize::from(i) % 4];
        let req = MessageBuilder::new(
            Method::Allocate,
            Class::Request,
            TransactionId([i as u8; 12]),
        )
        .finish();
        sent += req.len() as u64;
        let action = shard.handle_client_packet(t0, from, &req);
        assert!(matches!(action, ClientAction::Queued | ClientAction::Drop));
        while let Some(o) = shard.poll_output() {
            if let Output::Transmit { data, .. } = o {
                answered += data.len() as u64;
            }
        }
        assert!(
            answered <= sent + 300,
            "request {i}: {answered} > {sent} + 300 (a credit per shard?)"
        );
    }
    assert!(answered + 72 + 20 > sent + 300, "{answered} for {sent}");
}

#[test]
fn unsupported_methods_are_dropped_and_unauthenticated_udp_bytes_stay_within_the_allowance() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas.amplification_allowance = Some(300);
    });
    let from = udp("192.0.2.90:40000");
    // RFC 8489 section 6.3: an unsupported method, or Send as a request: silently discarded.
    for method in [0x0ff, Method::Send.code(), Method::Data.code()] {
        let req = MessageBuilder::new(method, Class::Request, TransactionId([3; 12])).finish();
        assert_eq!(h.send(from, &req), ClientAction::Drop, "method {method:#x}");
    }
    assert!(h.outputs().is_empty());
    // A flood of bare Allocates (20 bytes, each worth a 401 of 72 with this realm).
    let (mut sent, mut answered) = (0u64, 0u64);
    for i in 0..200u8 {
        let req =
            MessageBuilder::new(Method::Allocate, Class::Request, TransactionId([i; 12])).finish();
        sent += req.len() as u64;
        if h.send(from, &req) == ClientAction::Queued {
            for o in h.outputs() {
                let Output::Transmit { data, .. } = o else {
                    panic!("expected a response")
                };
                assert_eq!(error_code(&data), Some(401));
                answered += data.len() as u64;
            }
        }
        assert!(
            answered <= sent + 300,
            "request {i}: {answered} > {sent} + 300"
        );
    }
    assert!(
        answered + 72 + 20 > sent + 300,
        "answers as much as the bound allows"
    );
    let stats = h.server.stats();
    assert!(stats.quota(QuotaKind::UnauthenticatedBytes) > 100);
    assert_eq!(stats.udp_request_bytes, sent + 3 * 20);
    assert_eq!(stats.udp_unauthenticated_response_bytes, answered);
    // Another source is not affected; stream clients are not limited (no spoofing on TCP).
    let other = udp("192.0.2.91:40000");
    let req = MessageBuilder::new(Method::Binding, Class::Request, TransactionId([1; 12])).finish();
    h.request(other, &req);
    let tcp = five_tuple("192.0.2.90:40001", Transport::Tcp);
    for _ in 0..20 {
        h.request(tcp, &req);
    }
    // An authenticated client from the flooded address still gets its challenge answered
    // once its requests have paid for it.
    let mut alice = Client::alice_at(udp("192.0.2.90:40002"));
    let tid = alice.next_tid();
    let allocate = alice.allocate_request(tid);
    let mut got = None;
    for _ in 0..10 {
        if h.send(alice.from, &allocate) == ClientAction::Queued {
            got = h.outputs().into_iter().next();
            break;
        }
    }
    let Some(Output::Transmit { data, .. }) = got else {
        panic!("no 401 after retransmissions")
    };
    assert_eq!(error_code(&data), Some(401));
}

#[test]
fn relay_handles_name_sockets_both_ways_and_are_never_reused_as_is() {
    let mut h = Harness::new();
    let mut alice = Client::alice_at(five_tuple("192.0.2.61:40000", Transport::Tcp));
    alice.fetch_nonce(&mut h);
    let tid = alice.next_tid();
    assert_eq!(
        h.send(alice.from, &alice.allocate_request(tid)),
        ClientAction::Queued
    );
    let Output::BindRelay { relay: first, .. } = h.outputs().remove(0) else {
        panic!("expected a bind")
    };
    // The client goes away while its socket is being bound: the socket is released by the
    // handle it was bound under, and no allocation is made.
    h.server.handle_connection_closed(h.now, alice.from);
    h.server
        .handle_relay_bound(h.now, first, Ok(peer("198.51.100.1:50000")));
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { relay: first }]);
    assert_eq!(h.server.stats().allocations, 0);
    // A late duplicate answer for the dead handle is released again, never adopted.
    h.server
        .handle_relay_bound(h.now, first, Ok(peer("198.51.100.1:50000")));
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { relay: first }]);

    // The next allocation reuses the index under a new handle; the old one finds nothing.
    let mut bob = Client::new(udp("192.0.2.62:40000"), "bob", "bob-pass");
    let second = bob.allocate_handle(&mut h);
    assert_eq!(second.index(), first.index());
    assert_ne!(second, first);
    let p = peer("203.0.114.7:6000");
    let resp = bob.transact(&mut h, |c| c.channel_bind_request(0x4000, p));
    bob.verify_success(&resp, Method::ChannelBind);
    let (action, _) = from_peer(&mut h, first, p, b"stale");
    assert_eq!(action, PeerAction::Drop);
    let (action, _) = from_peer(&mut h, second, p, b"live");
    assert!(matches!(action, PeerAction::ToClient { to, .. } if to == bob.from));
    match h.send(bob.from, &channel_data_packet(0x4000, b"out")) {
        ClientAction::Forward { relay, .. } => assert_eq!(relay, second),
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn stream_clients_get_padded_channel_data() {
    let mut h = Harness::new();
    let mut alice = Client::alice_at(five_tuple("192.0.2.60:40000", Transport::Tcp));
    let relay = alice.allocate_handle(&mut h);
    let p = peer("203.0.114.7:6000");
    alice.bind_channel(&mut h, 0x4000, p);
    // Padded ChannelData from the client (stream framing) is accepted.
    let mut packet = channel_data_packet(0x4000, b"abcde");
    packet.extend_from_slice(&[0, 0, 0]);
    match h.send(alice.from, &packet) {
        ClientAction::Forward { payload, .. } => assert_eq!(&packet[payload], b"abcde"),
        other => panic!("{other:?}"),
    }
    let (action, buf) = from_peer(&mut h, relay, p, b"abcde");
    match action {
        PeerAction::ToClient { range, .. } => {
            assert_eq!(range, 0..12);
            assert_eq!(
                &buf[range],
                &[0x40, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
            );
        }
        other => panic!("{other:?}"),
    }
    // Without tailroom the padded message goes through the output queue.
    let mut tight = vec![0u8; HEADROOM + 5];
    tight[HEADROOM..].copy_from_slice(b"abcde");
    let action = h.server.handle_peer_packet(h.now, relay, p, &mut tight, 5);
    assert_eq!(action, PeerAction::Queued);
    match h.outputs().as_slice() {
        [Output::Transmit { data, .. }] => assert_eq!(data.len(), 12),
        other => panic!("{other:?}"),
    }
    // Closing the connection deletes the allocation.
    h.server.handle_connection_closed(h.now, alice.from);
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { relay }]);
    assert_eq!(h.server.stats().allocations_deleted, 1);
}

#[test]
fn unauthenticated_and_401_rate_limits_per_source_ip() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas.unauthenticated_per_ip = Some(RateLimit {
            per_second: 1,
            burst: 5,
        });
        cfg.quotas.unauthorized_per_ip = Some(RateLimit {
            per_second: 1,
            burst: 2,
        });
    });
    let from = udp("192.0.2.70:40000");
    let binding =
        MessageBuilder::new(Method::Binding, Class::Request, TransactionId([1; 12])).finish();
    let mut answered = 0;
    for _ in 0..20 {
        if h.send(from, &binding) == ClientAction::Queued {
            answered += 1;
        }
    }
    h.outputs();
    assert_eq!(answered, 5);
    assert_eq!(h.server.stats().quota(QuotaKind::UnauthenticatedRate), 15);
    // Another source is not affected; the first recovers with time.
    assert_eq!(
        h.send(udp("192.0.2.71:40000"), &binding),
        ClientAction::Queued
    );
    h.advance(Duration::from_secs(2));
    assert_eq!(h.send(from, &binding), ClientAction::Queued);
    h.outputs();

    // 401s: wrong password repeatedly from one IP.
    let mut mallory = Client::new(udp("192.0.2.72:40000"), "alice", "bad");
    mallory.fetch_nonce(&mut h);
    let mut answered = 0;
    for _ in 0..10 {
        let tid = mallory.next_tid();
        if h.send(mallory.from, &mallory.allocate_request(tid)) == ClientAction::Queued {
            answered += 1;
        }
    }
    assert_eq!(answered, 1);
    assert!(h.server.stats().quota(QuotaKind::UnauthorizedRate) >= 9);
    // Over TCP every challenge is answered: the source is proven, nothing amplifies, and a
    // client does not ask again for an answer dropped on a stream.
    h.outputs();
    let hits = h.server.stats().quota(QuotaKind::UnauthorizedRate);
    let mut over_tcp = Client::new(
        five_tuple("192.0.2.72:40001", Transport::Tcp),
        "alice",
        "bad",
    );
    over_tcp.fetch_nonce(&mut h);
    for _ in 0..10 {
        let tid = over_tcp.next_tid();
        assert_eq!(
            h.send(over_tcp.from, &over_tcp.allocate_request(tid)),
            ClientAction::Queued
        );
    }
    assert_eq!(h.server.stats().quota(QuotaKind::UnauthorizedRate), hits);
    // The limiter tables are swept by the timer.
    assert!(h.server.poll_timeout().is_some());
    h.advance(Duration::from_secs(60));
}

/// A harness whose sources may fail 20 credential checks at once, then 5 a second.
fn with_guess_limit() -> Harness {
    Harness::configured(|cfg| {
        cfg.quotas.auth_failures_per_ip = Some(RateLimit {
            per_second: 5,
            burst: 20,
        });
    })
}

/// A source that fails credential checks faster than its rate gets nothing checked, a right
/// guess included, until the rate lets it again: a static password cannot be guessed at line
/// rate (an audit checked 24,000 guesses a second and found the password; the 401 limit only
/// hid the answers to wrong ones). Other sources are not affected.
#[test]
fn a_source_that_keeps_failing_credentials_gets_nothing_checked() {
    let mut h = with_guess_limit();
    let from = udp("192.0.2.90:40000");
    let mut mallory = Client::new(from, "alice", "guess");
    mallory.fetch_nonce(&mut h);
    for _ in 0..20 {
        assert_eq!(error_code(&mallory.allocate_once(&mut h)), Some(401));
    }
    assert_eq!(h.server.stats().auth_failures, 20);
    // The right password, from the same IP: dropped unchecked.
    let mut right = Client::alice();
    right.from = udp("192.0.2.90:40001");
    right.nonce = mallory.nonce.clone();
    let tid = right.next_tid();
    assert_eq!(
        h.send(right.from, &right.allocate_request(tid)),
        ClientAction::Drop
    );
    assert_eq!(h.server.stats().auth_failures, 20, "not even checked");
    assert_eq!(h.server.stats().quota(QuotaKind::AuthFailureRate), 1);
    // Another source allocates meanwhile.
    Client::alice().allocate(&mut h);
    // A second later the source has 5 checks again.
    h.advance(Duration::from_secs(1));
    right.nonce = None;
    right.allocate(&mut h);
}

/// That rate is one for the whole relay: a guesser whose source ports the kernel spreads over
/// several workers (shards) does not get it once per worker.
#[test]
fn the_failed_credentials_rate_is_shared_by_every_shard() {
    let mut h = with_guess_limit();
    let shared = std::sync::Arc::new(SharedQuotas::new());
    h.server = Server::with_shared_quotas(h.server.config().clone(), shared.clone());
    let mut other_shard = Server::with_shared_quotas(h.server.config().clone(), shared);
    let mut to_first = Client::new(udp("192.0.2.92:40000"), "alice", "guess");
    let mut to_other = Client::new(udp("192.0.2.92:40001"), "alice", "guess");
    to_first.fetch_nonce(&mut h);
    to_other.nonce = to_first.nonce.clone();
    let mut guess_on_the_other_shard = |c: &mut Client, now| {
        let tid = c.next_tid();
        let action = other_shard.handle_client_packet(now, c.from, &c.allocate_request(tid));
        let answer = other_shard.poll_output();
        (action, answer)
    };
    for _ in 0..10 {
        assert_eq!(error_code(&to_first.allocate_once(&mut h)), Some(401));
        let (_, answer) = guess_on_the_other_shard(&mut to_other, h.now);
        let Some(Output::Transmit { data, .. }) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(error_code(&data), Some(401));
    }
    // 20 failures in all: the next guess is dropped unchecked, on either shard.
    let (action, answer) = guess_on_the_other_shard(&mut to_other, h.now);
    assert_eq!((action, answer), (ClientAction::Drop, None));
    let tid = to_first.next_tid();
    assert_eq!(
        h.send(to_first.from, &to_first.allocate_request(tid)),
        ClientAction::Drop
    );
}

/// Only a wrong password counts against that rate: stale credentials (an expired REST
/// username, as a long call's ICE restart may present) tell a guesser nothing and do not lock
/// an address out; and an allocation held from a guesser's address keeps being refreshed.
#[test]
fn stale_credentials_do_not_count_and_a_guesser_cannot_cut_a_live_allocation() {
    let mut h = with_guess_limit();
    let mut stale = Client::rest(udp("192.0.2.91:40000"), UNIX_T0 - 10, "stale", REST_SECRET);
    stale.fetch_nonce(&mut h);
    for _ in 0..40 {
        assert_eq!(error_code(&stale.allocate_once(&mut h)), Some(401));
    }
    let mut fresh = Client::rest(udp("192.0.2.91:40001"), UNIX_T0 + 600, "fresh", REST_SECRET);
    fresh.allocate(&mut h);
    assert_eq!(h.server.stats().quota(QuotaKind::AuthFailureRate), 0);

    // A guesser on the same address as a live allocation uses up the rate...
    let mut guesser = Client::new(udp("192.0.2.91:40002"), "alice", "guess");
    guesser.fetch_nonce(&mut h);
    for _ in 0..25 {
        let tid = guesser.next_tid();
        let _ = h.send(guesser.from, &guesser.allocate_request(tid));
        h.outputs();
    }
    assert!(h.server.stats().quota(QuotaKind::AuthFailureRate) > 0);
    // ...and the allocation is still refreshed.
    assert_eq!(fresh.refresh(&mut h, 600), 600);
}

#[test]
fn challenges_answered_with_valid_credentials_do_not_use_up_the_ip_limits() {
    // The strictest limits: 2 challenges at once, 1 per second, per source IP.
    let mut h = Harness::configured(|cfg| {
        let strict = Some(RateLimit {
            per_second: 1,
            burst: 2,
        });
        cfg.quotas.unauthenticated_per_ip = strict;
        cfg.quotas.unauthorized_per_ip = strict;
    });
    // Hundreds of fresh clients behind one NAT IP, at the same instant: each gets its 401,
    // authenticates, allocates and deletes (the peer SDK's connect benchmark on loopback).
    for i in 0..300u16 {
        let from = udp(&format!("192.0.2.80:{}", 20000 + i));
        let mut c = Client::rest(from, UNIX_T0 + 600, &format!("peer-{i}"), REST_SECRET);
        c.allocate(&mut h);
        let req = c.refresh_request(0);
        assert_eq!(h.send(from, &req), ClientAction::Queued);
        let released = h.outputs().iter().any(|o| match o {
            Output::Transmit { data, .. } => {
                c.verify_success(data, Method::Refresh);
                false
            }
            Output::ReleaseRelay { .. } => true,
            _ => false,
        });
        assert!(released, "cycle {i}: refresh(0) releases the relay socket");
    }
    assert_eq!(h.server.stats().quota(QuotaKind::UnauthenticatedRate), 0);
    assert_eq!(h.server.stats().quota(QuotaKind::UnauthorizedRate), 0);
    // A source on the same IP that never authenticates is still limited.
    let binding =
        MessageBuilder::new(Method::Binding, Class::Request, TransactionId([9; 12])).finish();
    let answered = (0..10)
        .filter(|_| h.send(udp("192.0.2.80:30000"), &binding) == ClientAction::Queued)
        .count();
    h.outputs();
    assert_eq!(answered, 2);
    let mut mallory = Client::new(udp("192.0.2.80:30001"), "alice", "bad");
    let answered = (0..10)
        .filter(|_| {
            let tid = mallory.next_tid();
            let req = mallory.allocate_request(tid);
            h.send(mallory.from, &req) == ClientAction::Queued
        })
        .count();
    assert_eq!(answered, 0, "the allowance is used up by the Binding flood");
}

#[test]
fn garbage_flood_does_not_disturb_a_live_allocation() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let p = peer("203.0.114.7:6000");
    h.request(alice.from, &alice.channel_bind_request(0x4000, p));
    let mut seed = 0x1234_5678u32;
    for i in 0..5000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = (seed % 120) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|j| (seed.rotate_left(j as u32) ^ i) as u8)
            .collect();
        // From the client's own 5-tuple and from strangers.
        let from = if i % 2 == 0 {
            alice.from
        } else {
            udp("192.0.2.99:1")
        };
        let _ = h.send(from, &bytes);
        let mut buf = vec![0u8; HEADROOM + len];
        buf[HEADROOM..].copy_from_slice(&bytes);
        let _ = h
            .server
            .handle_peer_packet(h.now, relay, peer("203.0.114.9:9"), &mut buf, len);
    }
    h.outputs();
    assert!(h.server.stats().malformed_packets > 1000);
    assert!(matches!(
        h.send(alice.from, &channel_data_packet(0x4000, b"ok")),
        ClientAction::Forward { .. }
    ));
    let (action, _) = from_peer(&mut h, relay, p, b"ok");
    assert!(matches!(action, PeerAction::ToClient { .. }));
}

#[test]
fn external_ip_is_advertised_and_peer_packets_use_the_local_address() {
    let mut h = Harness::configured(|cfg| {
        cfg.external_ips =
            vec![relay_proto::ExternalIp::parse("203.0.114.200/198.51.100.1").unwrap()];
    });
    let mut alice = Client::alice();
    let advertised = alice.allocate(&mut h);
    assert_eq!(advertised.ip().to_string(), "203.0.114.200");
    let local = h.server.relay_address_of(&alice.from).unwrap();
    assert_eq!(local.ip().to_string(), "198.51.100.1");
    assert_eq!(local.port(), advertised.port());
}

#[test]
fn bandwidth_quota_drops_excess() {
    let mut h = Harness::configured(|cfg| {
        cfg.quotas = Quotas {
            bandwidth_per_allocation: Some(RateLimit {
                per_second: 1000,
                burst: 1000,
            }),
            ..cfg.quotas
        };
    });
    let mut alice = Client::alice();
    alice.allocate(&mut h);
    h.request(
        alice.from,
        &alice.channel_bind_request(0x4000, peer("203.0.114.7:6000")),
    );
    let packet = channel_data_packet(0x4000, &[0u8; 400]);
    let forwarded = (0..5)
        .filter(|_| matches!(h.send(alice.from, &packet), ClientAction::Forward { .. }))
        .count();
    assert_eq!(forwarded, 2);
    assert_eq!(h.server.stats().quota(QuotaKind::Bandwidth), 3);
}

#[test]
fn an_expired_allocation_not_yet_swept_does_not_block_a_new_one() {
    let (mut h, mut alice, first) = Harness::with_alice_allocated();
    // Time passes without handle_timeout (the I/O layer was busy): lazy checks apply.
    h.now += Duration::from_secs(601);
    assert_eq!(
        h.send(alice.from, &channel_data_packet(0x4000, b"x")),
        ClientAction::Drop
    );
    alice.nonce = None;
    let second = alice.allocate(&mut h);
    assert_ne!(first, second);
    assert_eq!(h.server.stats().allocations, 1);
    assert_eq!(h.server.stats().allocations_expired, 1);
}

#[test]
fn send_failures_are_counted_and_keep_the_allocation() {
    let (mut h, _, _) = Harness::with_alice_allocated();
    h.server.record_send_failure();
    assert_eq!(h.server.stats().send_failures, 1);
    assert_eq!(h.server.stats().allocations, 1);
}

#[test]
fn a_tcp_byte_stream_split_by_stream_frame_len_drives_the_server() {
    use relay_proto::framing::stream_frame_len;
    let mut h = Harness::new();
    let mut alice = Client::alice_at(five_tuple("192.0.2.61:40000", Transport::Tls));
    alice.allocate(&mut h);
    let p = peer("203.0.114.7:6000");
    // Several messages back to back in one read: ChannelBind, padded ChannelData, Refresh.
    let mut stream = alice.channel_bind_request(0x4000, p);
    let mut cd = channel_data_packet(0x4000, b"odd");
    cd.push(0);
    stream.extend_from_slice(&cd);
    stream.extend_from_slice(&alice.refresh_request(600));
    let mut rest = &stream[..];
    let mut actions = Vec::new();
    while let Some(len) = stream_frame_len(rest).unwrap() {
        let (frame, tail) = rest.split_at(len);
        actions.push(h.send(alice.from, frame));
        rest = tail;
    }
    assert!(rest.is_empty());
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0], ClientAction::Queued);
    assert!(matches!(&actions[1], ClientAction::Forward { payload, .. } if payload.len() == 3));
    assert_eq!(actions[2], ClientAction::Queued);
    let responses: Vec<Vec<u8>> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    alice.verify_success(&responses[0], Method::ChannelBind);
    alice.verify_success(&responses[1], Method::Refresh);
    // Garbage on a stream is a framing error: the I/O layer closes the connection.
    assert!(stream_frame_len(&[0xC0, 0, 0, 0]).is_err());
}

#[test]
fn even_port_is_passed_to_the_io_layer_as_a_hint() {
    let mut h = Harness::new();
    let mut alice = Client::alice();
    alice.fetch_nonce(&mut h);
    let req = alice.allocate_request_with(|b| {
        b.add(attributes::EVEN_PORT, &[0x80])
            .add(attributes::DONT_FRAGMENT, &[]);
    });
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    match h.outputs().as_slice() {
        [Output::BindRelay { even_port, .. }] => assert!(*even_port),
        other => panic!("{other:?}"),
    }
}

#[test]
fn even_port_with_r_bit_reserves_the_next_port_for_a_reservation_token() {
    // Two shards sharing one `SharedQuotas` (two workers): the RTCP socket of the pair has
    // another source port, so the kernel may hand its Allocate to the other shard.
    let mut h = Harness::new();
    let t0 = h.now;
    let cfg = config(t0);
    let shared = std::sync::Arc::new(SharedQuotas::new());
    h.server = Server::with_shared_quotas(cfg.clone(), shared.clone());
    let mut other_shard = Server::with_shared_quotas(cfg, shared);
    let mut rtp = Client::alice();
    rtp.fetch_nonce(&mut h);
    let req = rtp.allocate_request_with(|b| {
        b.add(attributes::EVEN_PORT, &[0x80]);
    });
    assert_eq!(h.send(rtp.from, &req), ClientAction::Queued);
    let Output::BindRelay {
        relay: handle,
        even_port: true,
        address: None,
        ..
    } = h.outputs().remove(0)
    else {
        panic!("expected an even-port bind")
    };
    let resp = h.complete_bind(handle, AddressFamily::V4);
    let m = rtp.verify_success(&resp, Method::Allocate);
    let token: [u8; 8] = m
        .get(attributes::RESERVATION_TOKEN)
        .unwrap()
        .try_into()
        .unwrap();
    let relay = attributes::decode_xor_address(
        m.get(attributes::XOR_RELAYED_ADDRESS).unwrap(),
        &m.transaction_id(),
    )
    .unwrap();
    assert_eq!(relay.port() % 2, 0);

    let mut rtcp = Client::alice_at(udp("192.0.2.10:40001"));
    rtcp.nonce = rtp.nonce.clone();
    let with_token = |c: &mut Client| {
        c.allocate_request_with(|b| {
            b.add(attributes::RESERVATION_TOKEN, &token);
        })
    };
    let req = with_token(&mut rtcp);
    assert_eq!(
        other_shard.handle_client_packet(h.now, rtcp.from, &req),
        ClientAction::Queued
    );
    let Some(Output::BindRelay {
        relay: handle,
        address: Some(address),
        ..
    }) = other_shard.poll_output()
    else {
        panic!("expected a bind of the reserved address on the other shard")
    };
    assert_eq!(address, SocketAddr::new(relay.ip(), relay.port() + 1));
    other_shard.handle_relay_bound(h.now, handle, Ok(address));
    let Some(Output::Transmit { data, .. }) = other_shard.poll_output() else {
        panic!()
    };
    rtcp.verify_success(&data, Method::Allocate);

    // A token is single-use; an unknown one gets 508.
    let mut third = Client::alice_at(udp("192.0.2.10:40002"));
    third.nonce = rtp.nonce.clone();
    let req = with_token(&mut third);
    assert_eq!(error_code(&h.request(third.from, &req)), Some(508));
}

/// What an Allocate of alice's from `port` with `attrs` got: a RESERVATION-TOKEN (or none)
/// on success, else the error code.
fn alice_allocates(
    h: &mut Harness,
    port: u16,
    attrs: impl Fn(&mut MessageBuilder),
) -> Result<Option<[u8; 8]>, Option<u16>> {
    let mut alice = Client::alice_at(udp(&format!("192.0.2.10:{port}")));
    alice.fetch_nonce(h);
    let req = alice.allocate_request_with(attrs);
    assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
    match h.outputs().remove(0) {
        Output::BindRelay { relay, .. } => {
            let resp = h.complete_bind(relay, AddressFamily::V4);
            let m = alice.verify_success(&resp, Method::Allocate);
            Ok(m.get(attributes::RESERVATION_TOKEN)
                .map(|t| t.try_into().unwrap()))
        }
        Output::Transmit { data, .. } => Err(error_code(&data)),
        other => panic!("{other:?}"),
    }
}

/// A port held under a RESERVATION-TOKEN counts against `--user-quota` until it is claimed or
/// expires, and an Allocate asking for one needs room for it: allocating with EVEN-PORT (R),
/// deleting and asking again cannot pile up held ports.
#[test]
fn a_held_reservation_counts_against_the_user_quota() {
    let mut h = Harness::configured(|cfg| cfg.quotas.allocations_per_user = 2);
    let reserving = |b: &mut MessageBuilder| {
        b.add(attributes::EVEN_PORT, &[0x80]);
    };
    let plain = |_: &mut MessageBuilder| {};
    let delete = |h: &mut Harness, port: u16| {
        let mut alice = Client::alice_at(udp(&format!("192.0.2.10:{port}")));
        alice.fetch_nonce(h);
        let req = alice.refresh_request(0);
        assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
        match h.outputs().as_slice() {
            [Output::ReleaseRelay { .. }, Output::Transmit { data, .. }] => {
                alice.verify_success(data, Method::Refresh);
            }
            other => panic!("{other:?}"),
        }
    };

    // One allocation and one held port: the quota of 2 is full.
    let token = alice_allocates(&mut h, 40000, reserving)
        .unwrap()
        .expect("a token");
    assert_eq!(alice_allocates(&mut h, 40001, plain), Err(Some(486)));
    // Deleted, the allocation frees one place, not the two that asking again needs.
    delete(&mut h, 40000);
    assert_eq!(alice_allocates(&mut h, 40001, reserving), Err(Some(486)));
    // Claiming the held port turns it into an allocation: still one place taken.
    let claim = |b: &mut MessageBuilder| {
        b.add(attributes::RESERVATION_TOKEN, &token);
    };
    assert_eq!(alice_allocates(&mut h, 40002, claim), Ok(None));
    assert_eq!(alice_allocates(&mut h, 40003, reserving), Err(Some(486)));
    assert_eq!(alice_allocates(&mut h, 40003, plain), Ok(None));
    assert_eq!(h.server.stats().quota(QuotaKind::AllocationsPerUser), 3);

    // A held port that nobody claims stops counting when its token expires.
    delete(&mut h, 40002);
    delete(&mut h, 40003);
    alice_allocates(&mut h, 40004, reserving)
        .unwrap()
        .expect("a token");
    delete(&mut h, 40004);
    assert_eq!(alice_allocates(&mut h, 40005, reserving), Err(Some(486)));
    h.advance(relay_proto::RESERVATION_LIFETIME);
    assert!(alice_allocates(&mut h, 40005, reserving).unwrap().is_some());
}

/// Allocates of one user that arrive together, before any of their sockets is bound, see
/// each other's ports to be held: with a quota of 3, a second Allocate asking for a
/// reservation gets 486 while the first is still binding, since the two would end with four
/// places (it was admitted: a burst went past the quota by one port each). A bind that fails
/// gives the places back.
#[test]
fn allocates_admitted_together_see_each_others_held_ports() {
    let mut h = Harness::configured(|cfg| cfg.quotas.allocations_per_user = 3);
    let allocate = |h: &mut Harness, port: u16| {
        let mut alice = Client::alice_at(udp(&format!("192.0.2.10:{port}")));
        alice.fetch_nonce(h);
        let req = alice.allocate_request_with(|b| {
            b.add(attributes::EVEN_PORT, &[0x80]);
        });
        assert_eq!(h.send(alice.from, &req), ClientAction::Queued);
        (alice, h.outputs().remove(0))
    };
    let (first, Output::BindRelay { relay: binding, .. }) = allocate(&mut h, 40000) else {
        panic!("expected a bind")
    };
    // The first one's bind is under way: its allocation and its port take two places.
    let (_, Output::Transmit { data, .. }) = allocate(&mut h, 40001) else {
        panic!("expected an answer")
    };
    assert_eq!(error_code(&data), Some(486));
    // The bind fails: both places are free again, and a new Allocate gets them.
    h.server
        .handle_relay_bound(h.now, binding, Err(BindError::NoCapacity));
    let resp = h.outputs().remove(0);
    let Output::Transmit { data, .. } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(error_code(&data), Some(508));
    drop(first);
    let (second, Output::BindRelay { relay, .. }) = allocate(&mut h, 40002) else {
        panic!("expected a bind")
    };
    let resp = h.complete_bind(relay, AddressFamily::V4);
    let m = second.verify_success(&resp, Method::Allocate);
    assert!(m.get(attributes::RESERVATION_TOKEN).is_some());
    // One allocation and its held port: one place left, not the two asked for.
    let (_, Output::Transmit { data, .. }) = allocate(&mut h, 40003) else {
        panic!("expected an answer")
    };
    assert_eq!(error_code(&data), Some(486));
}

#[test]
fn ipv4_mapped_clients_of_a_dual_stack_socket_see_their_ipv4_address() {
    let mut h = Harness::new();
    let from = udp("[::ffff:192.0.2.80]:40000");
    let req = MessageBuilder::new(Method::Binding, Class::Request, TransactionId([2; 12])).finish();
    let resp = h.request(from, &req);
    let m = StunMessage::parse(&resp).unwrap();
    let mapped =
        attributes::decode_xor_address(m.get(XOR_MAPPED_ADDRESS).unwrap(), &m.transaction_id());
    assert_eq!(mapped.unwrap(), peer("192.0.2.80:40000"));
}

/// A datagram larger than one UDP datagram to an IPv4 address holds (65,507 bytes) cannot be
/// sent: it is dropped and counted as dropped, never as relayed or billed. From a peer to a
/// UDP client (ChannelData, Data indication) and from a stream client's ChannelData (up to
/// 65,535 bytes) to a peer.
#[test]
fn a_datagram_too_big_to_send_is_dropped_not_relayed() {
    let (mut h, mut alice, relay) = Harness::with_alice_relay();
    let (channel_peer, other_peer) = (peer("203.0.114.7:6000"), peer("203.0.114.8:6000"));
    h.request(
        alice.from,
        &alice.permission_request(&[channel_peer, other_peer]),
    );
    alice.bind_channel(&mut h, 0x4000, channel_peer);
    let counts = |h: &Harness| {
        let s = h.server.stats();
        (s.packets_to_client, s.bytes_to_client, s.dropped_packets)
    };
    let relayed = |h: &mut Harness, from: SocketAddr, len: usize| {
        let before = counts(h);
        let (action, _) = from_peer(h, relay, from, &vec![7u8; len]);
        h.outputs();
        let after = counts(h);
        let sent = !matches!(action, PeerAction::Drop);
        let expected = if sent {
            (before.0 + 1, before.1 + len as u64, before.2)
        } else {
            (before.0, before.1, before.2 + 1)
        };
        assert_eq!(after, expected, "{len} bytes from {from}");
        sent
    };
    // ChannelData: 4 bytes of header.
    assert!(relayed(&mut h, channel_peer, 65_503));
    assert!(!relayed(&mut h, channel_peer, 65_504));
    // A Data indication: 36 bytes of headers for an IPv4 peer, DATA padded to 4.
    assert!(relayed(&mut h, other_peer, 65_468));
    assert!(!relayed(&mut h, other_peer, 65_469));

    // A TCP client's ChannelData to a peer.
    let mut bob = Client::alice_at(five_tuple("192.0.2.20:40000", Transport::Tcp));
    bob.allocate(&mut h);
    h.request(bob.from, &bob.permission_request(&[channel_peer]));
    bob.bind_channel(&mut h, 0x4000, channel_peer);
    let to_peer = |h: &mut Harness, len: usize| {
        let before = h.server.stats().bytes_to_peer;
        let action = h.send(bob.from, &channel_data_packet(0x4000, &vec![7u8; len]));
        let forwarded = matches!(action, ClientAction::Forward { .. });
        let billed = h.server.stats().bytes_to_peer - before;
        assert_eq!(billed, if forwarded { len as u64 } else { 0 }, "{len}");
        forwarded
    };
    assert!(to_peer(&mut h, 65_507));
    assert!(!to_peer(&mut h, 65_508));
}
