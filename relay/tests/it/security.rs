//! Security rules through the real binary: the peer-address policy (private, special and own
//! addresses, IPv4 embedded in IPv6), quotas, credentials (wrong password, expired REST
//! username), allocation mismatch, and a garbage flood during live relaying.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{
    RelayProcess, TestClient, USER_ON_LOOPBACK, loopback_peer, rest_password, unix_now, wait_until,
};

fn peer(s: &str) -> SocketAddr {
    SocketAddr::new(s.parse::<IpAddr>().unwrap(), 40_000)
}

#[test]
fn special_ipv4_peers_are_denied_by_default() {
    let relay = RelayProcess::start(&["--user", "u:p"]);
    let mut c = TestClient::new(relay.udp, "u", "p");
    c.allocate().expect("allocate");
    for ip in [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.1.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
    ] {
        // The relay's own IP (it listens on 127.0.0.1) takes permissions, for relay-to-relay
        // traffic; only its relay ports take channels and sends (40000 is not one).
        if ip != "127.0.0.1" {
            assert_eq!(
                c.create_permission(peer(ip)),
                Err(403),
                "{ip} must be denied"
            );
        }
        assert_eq!(
            c.channel_bind(0x4000, peer(ip)),
            Err(403),
            "{ip} must be denied for channels too"
        );
    }
    assert_eq!(
        c.create_permission(peer("8.8.8.8")),
        Ok(()),
        "a public address is allowed"
    );
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_peer_denied_total{reason=\"private\"}")
        >= 2));
    assert!(relay.metric("relay_peer_denied_total{reason=\"loopback\"}") >= 2);
}

#[test]
fn allow_and_deny_lists_with_absolute_denials() {
    let relay = RelayProcess::start(&[
        "--user",
        "u:p",
        "--allow-peer",
        "10.0.0.0/8,169.254.0.0/16,0.0.0.0/8",
        "--deny-peer",
        "8.8.8.0/24",
    ]);
    let mut c = TestClient::new(relay.udp, "u", "p");
    c.allocate().expect("allocate");
    assert_eq!(
        c.create_permission(peer("10.1.2.3")),
        Ok(()),
        "allow-listed private range"
    );
    assert_eq!(
        c.create_permission(peer("169.254.169.254")),
        Err(403),
        "metadata can never be allowed"
    );
    assert_eq!(
        c.create_permission(peer("0.0.0.0")),
        Err(403),
        "0.0.0.0/8 can never be allowed"
    );
    assert_eq!(
        c.create_permission(peer("8.8.8.8")),
        Err(403),
        "deny-listed"
    );
}

#[test]
fn loopback_opt_in_still_protects_the_relays_own_ports() {
    let relay = RelayProcess::start(&["--user", "u:p", "--allow-loopback-peers"]);
    let mut c = TestClient::new(relay.udp, "u", "p");
    c.allocate().expect("allocate");
    // Permissions are per IP (RFC 8656 section 9); ports are checked where they are known.
    assert_eq!(
        c.channel_bind(0x4001, relay.admin),
        Err(403),
        "the admin port is not a peer"
    );
    assert_eq!(
        c.channel_bind(0x4002, relay.udp),
        Err(403),
        "the TURN listener is not a peer"
    );
    assert_eq!(
        c.channel_bind(0x4003, peer("127.0.0.1")),
        Ok(()),
        "other loopback ports are allowed with the opt-in"
    );
}

/// REQUESTED-ADDRESS-FAMILY IPv6 on a relay with IPv4 addresses only: 440, the client's ask
/// (not a relay socket the relay failed to bind: `relay_relay_bind_failures_total` stays 0).
#[test]
fn an_ipv6_allocation_on_an_ipv4_relay_gets_440_and_no_bind_failure() {
    let relay = RelayProcess::start(&["--user", "u:p"]);
    let mut c = TestClient::new(relay.udp, "u", "p");
    assert_eq!(c.allocate_v6(), Err(440));
    // The workers' counts reach /metrics together: once the 440 is counted, so would be a
    // bind failure.
    assert!(wait_until(Duration::from_secs(3), || {
        relay.metric("relay_error_responses_total") >= 1
    }));
    assert_eq!(relay.metric("relay_relay_bind_failures_total"), 0);
    c.allocate().expect("an IPv4 allocation");
}

#[test]
fn ipv4_in_ipv6_encodings_of_loopback_are_denied() {
    let Some(relay) = crate::support::start_on_ipv6(&["--user", "u:p"]) else {
        return;
    };
    let v6 = UdpSocket::bind("[::1]:0").unwrap();
    let mut c = TestClient::with_link(crate::support::Link::Udp(v6), relay.udp, "u", "p");
    let relayed = c.allocate_v6().expect("IPv6 allocation (RFC 6156)");
    assert!(relayed.is_ipv6(), "relayed {relayed}");
    // `::1` is the relay's own IP here: permissions for it are relay-to-relay's (the IPv4 test
    // checks its other ports are refused).
    for ip in [
        "::",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:169.254.169.254",
    ] {
        assert_eq!(
            c.create_permission(peer(ip)),
            Err(403),
            "{ip} must be denied"
        );
    }
}

#[test]
fn eleventh_allocation_of_a_user_gets_486() {
    let relay = RelayProcess::start(&["--user", "u:p", "--user", "v:q", "--user-quota", "10"]);
    let mut held = Vec::new();
    for i in 0..10 {
        let mut c = TestClient::new(relay.udp, "u", "p");
        c.allocate()
            .unwrap_or_else(|e| panic!("allocation {i} failed with {e}"));
        held.push(c);
    }
    let mut eleventh = TestClient::new(relay.udp, "u", "p");
    assert_eq!(eleventh.allocate(), Err(486));
    let mut other_user = TestClient::new(relay.udp, "v", "q");
    assert!(other_user.allocate().is_ok(), "the quota is per user");
    // Freeing one makes room again.
    held[0].refresh(0).expect("delete");
    let mut again = TestClient::new(relay.udp, "u", "p");
    assert!(again.allocate().is_ok());
    assert!(wait_until(Duration::from_secs(2), || relay.metric(
        "relay_quota_hits_total{quota=\"allocations_per_user\"}"
    ) >= 1));
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let relay = RelayProcess::start(&["--user", "u:p"]);
    assert_eq!(
        TestClient::new(relay.udp, "u", "wrong").allocate(),
        Err(401)
    );
    assert_eq!(
        TestClient::new(relay.udp, "nobody", "p").allocate(),
        Err(401)
    );
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_auth_failures_total")
        >= 2));
}

#[test]
fn a_static_user_given_as_a_precomputed_key_authenticates_with_its_password() {
    // `MD5(u:relay:p)`, as `turnadmin -k -u u -r relay -p p` prints it: the relay never sees p.
    let key = hex::encode(relay_proto::auth::long_term_key("u", "relay", "p"));
    let user = format!("u:0x{key}");
    let relay = RelayProcess::start(&["--realm", "relay", "--user", &user]);
    assert!(TestClient::new(relay.udp, "u", "p").allocate().is_ok());
    assert_eq!(
        TestClient::new(relay.udp, "u", &format!("0x{key}")).allocate(),
        Err(401),
        "the key is not a password"
    );
}

#[test]
fn rest_usernames_expire() {
    let relay = RelayProcess::start(&["--turn-secret", "s3cret"]);
    let expired = format!("{}:dave", unix_now() - 60);
    assert_eq!(
        TestClient::new(relay.udp, &expired, &rest_password(b"s3cret", &expired)).allocate(),
        Err(401)
    );
    let valid = format!("{}:dave", unix_now() + 600);
    assert!(
        TestClient::new(relay.udp, &valid, &rest_password(b"s3cret", &valid))
            .allocate()
            .is_ok()
    );
    assert_eq!(
        TestClient::new(relay.udp, &valid, &rest_password(b"other", &valid)).allocate(),
        Err(401)
    );
}

#[test]
fn second_allocate_on_the_same_five_tuple_is_a_mismatch() {
    let relay = RelayProcess::start(&["--user", "u:p"]);
    let mut c = TestClient::new(relay.udp, "u", "p");
    c.allocate().expect("first allocate");
    assert_eq!(c.allocate(), Err(437));
}

#[test]
fn garbage_flood_does_not_disturb_live_relaying() {
    let mut relay = RelayProcess::start_process(USER_ON_LOOPBACK);
    let peer = loopback_peer(Duration::from_secs(2));
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TestClient::new(relay.udp, "u", "p");
    let relayed = c.allocate().expect("allocate");
    c.channel_bind(0x4000, peer_addr).expect("channel bind");

    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2u8)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let target = relay.udp;
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut seed = 0x9E37_79B9_u32 ^ u32::from(t);
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for k in 0..10 {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        let len = 1 + (seed as usize % 600);
                        let mut pkt: Vec<u8> = (0..len)
                            .map(|i| (seed.rotate_left(i as u32 % 32) & 0xff) as u8)
                            .collect();
                        match k % 5 {
                            // A STUN-looking header with a lying length.
                            0 if len >= 20 => pkt[..8]
                                .copy_from_slice(&[0x00, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42]),
                            // ChannelData on an unbound channel / with a lying length.
                            1 if len >= 4 => pkt[..4].copy_from_slice(&[0x40, 0x07, 0xff, 0xff]),
                            2 if len >= 4 => pkt[..4].copy_from_slice(&[0x4f, 0xff, 0x00, 0x10]),
                            _ => {}
                        }
                        let _ = s.send_to(&pkt, target);
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            })
        })
        .collect();

    // Real traffic for 2 s (at least 500 and at most 50,000 round trips) under the flood.
    const MIN: usize = 500;
    const MAX: usize = 50_000;
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    let mut rounds = 0;
    for i in 0..MAX {
        if i >= MIN && started.elapsed() >= Duration::from_secs(2) {
            break;
        }
        rounds += 1;
        let payload = format!("real traffic {i}");
        c.send_channel(0x4000, payload.as_bytes());
        let (n, from) = peer
            .recv_from(&mut buf)
            .expect("relayed to the peer despite the flood");
        assert_eq!(from, relayed);
        assert_eq!(&buf[..n], payload.as_bytes());
        peer.send_to(payload.as_bytes(), relayed).unwrap();
        let (channel, data) = c
            .recv_channel(Duration::from_secs(2))
            .expect("relayed back to the client despite the flood");
        assert_eq!(channel, 0x4000);
        assert_eq!(data, payload.as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    let garbage: u64 = flooders.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!(
        "relayed {rounds} round trips in {:?} alongside {garbage} garbage datagrams",
        started.elapsed()
    );
    assert!(garbage > 1000, "the flood ran");
    assert!(relay.is_alive(), "the relay survived the flood");
    assert!(wait_until(Duration::from_secs(2), || relay
        .metric("relay_malformed_packets_total")
        + relay.metric("relay_dropped_packets_total")
        > 100));
}

#[test]
fn an_empty_datagram_is_counted_as_malformed() {
    let relay = RelayProcess::start_process(USER_ON_LOOPBACK);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = relay.metric("relay_malformed_packets_total");
    for _ in 0..3 {
        socket.send_to(&[], relay.udp).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(2), || relay
            .metric("relay_malformed_packets_total")
            >= before + 3),
        "three empty datagrams counted"
    );
}
