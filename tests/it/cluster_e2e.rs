//! A signaling cluster as it is deployed: three `signaling` nodes on one Redis behind HAProxy
//! (round-robin, no stickiness). Rust peers call through it; a node is killed mid-call and
//! both signaling and the call's data channel carry on.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::haproxy::Haproxy;
use e2e::redis::RedisServer;

use crate::peer_e2e::{Signaling, chat_pair, expect_chat, join, say, start_signaling_with};

/// Three nodes sharing `redis`, with fast failure detection.
pub(crate) fn start_cluster(redis: &RedisServer) -> Vec<Signaling> {
    let url = redis.url();
    (0..3)
        .map(|_| {
            start_signaling_with(
                None,
                "127.0.0.1:0",
                &[
                    "--redis",
                    &url,
                    "--node-heartbeat",
                    "200ms",
                    "--node-lease",
                    "1s",
                ],
            )
        })
        .collect()
}

/// Open WebSocket connections of the node at `addr` (from its `/metrics`).
fn connections(addr: SocketAddr) -> u64 {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("signaling_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn rust_peers_through_haproxy_survive_a_killed_node() {
    let redis = RedisServer::start();
    let mut nodes = start_cluster(&redis);
    let haproxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    let url = format!("ws://{}/ws/ha-call", haproxy.addr);
    let (mut alice, mut bob) = chat_pair(&url);
    say(&mut alice, "before-kill");
    expect_chat(&mut bob, "alice: before-kill");

    // kill -9 a node that serves one of them (round-robin put them on different nodes).
    let victim = nodes
        .iter()
        .position(|n| connections(n.addr) > 0)
        .expect("a node with a connection");
    drop(nodes.remove(victim).proc);
    // The call does not depend on signaling...
    say(&mut bob, "during-failover");
    expect_chat(&mut alice, "bob: during-failover");
    // ...and the cut-off peer resumes on another node through the balancer.
    let resumed = [&mut alice, &mut bob].into_iter().any(|proc| {
        proc.seen
            .iter()
            .any(|l| l.starts_with("* signaling-resumed"))
            || proc
                .try_wait_line(Duration::from_secs(6), |l| {
                    l.starts_with("* signaling-resumed")
                })
                .is_some()
    });
    assert!(resumed, "nobody resumed after the node died");
    for proc in [&alice, &bob] {
        assert!(
            !proc.seen.iter().any(|l| l.starts_with("* peer-left")),
            "a peer was seen leaving: {:?}",
            proc.seen
        );
    }
    say(&mut alice, "after-failover");
    expect_chat(&mut bob, "alice: after-failover");

    // Signaling still routes across the surviving nodes: a third peer reaches both.
    let mut carol = join(&url, "carol", false);
    for _ in 0..2 {
        carol.wait_line(Duration::from_secs(30), |l| {
            l.starts_with("* channel-open") && l.contains("kind=reliable")
        });
    }
    say(&mut carol, "hello-from-carol");
    expect_chat(&mut alice, "carol: hello-from-carol");
    expect_chat(&mut bob, "carol: hello-from-carol");
}
