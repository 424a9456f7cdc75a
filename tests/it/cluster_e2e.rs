//! A signaling cluster as it is deployed: three `signaling` nodes on one Redis behind HAProxy
//! (round-robin, no stickiness). Rust peers call through it; a node is killed mid-call and
//! both signaling and the call's data channel carry on.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::haproxy::Haproxy;
use e2e::redis::RedisServer;

use crate::peer_e2e::{
    Signaling, chat_pair, expect_chat, join, reliable_channel_open, say, start_signaling_with,
};

/// Three nodes sharing `redis`, with fast failure detection.
pub(crate) fn start_cluster(redis: &RedisServer) -> Vec<Signaling> {
    (0..3).map(|_| cluster_node(redis, &[])).collect()
}

/// A node sharing `redis`, with fast failure detection, and `extra` flags.
fn cluster_node(redis: &RedisServer, extra: &[&str]) -> Signaling {
    let url = redis.url();
    let mut args = vec![
        "--redis",
        &url,
        "--node-heartbeat",
        "200ms",
        "--node-lease",
        "1s",
    ];
    args.extend_from_slice(extra);
    start_signaling_with(None, "127.0.0.1:0", &args)
}

/// Open WebSocket connections of the node at `addr` (from its `/metrics`).
fn connections(addr: SocketAddr) -> u64 {
    metric(addr, "signaling_connections")
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
        carol.wait_line(Duration::from_secs(30), reliable_channel_open);
    }
    say(&mut carol, "hello-from-carol");
    expect_chat(&mut alice, "carol: hello-from-carol");
    expect_chat(&mut bob, "carol: hello-from-carol");
}

/// The value of `series` in the `/metrics` of the node at `addr` (0 when it does not answer).
fn metric(addr: SocketAddr, series: &str) -> u64 {
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
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// SSE + POST and long-polling through HAProxy round-robin over three nodes: every request
/// lands on the next node, and the stream of a node killed with SIGKILL resumes on another
/// by `Last-Event-ID` with nothing lost.
#[test]
fn http_transports_through_haproxy_round_robin_survive_a_killed_node() {
    use e2e::signaling_http::{self as http, Event, Sse};
    use signaling::protocol::{ClientMessage, PeerId, ServerFrame, ServerMessage, Signal};

    fn signal(to: &PeerId, n: u32) -> ClientMessage {
        ClientMessage::Signal {
            id: None,
            cseq: None,
            to: to.clone(),
            signal: Signal::Answer { sdp: n.to_string() },
        }
    }
    fn number(frame: &ServerFrame) -> Option<u32> {
        match &frame.message {
            ServerMessage::Signal {
                signal: Signal::Answer { sdp },
                ..
            } => sdp.parse().ok(),
            _ => None,
        }
    }
    fn peer_of(frame: &ServerFrame) -> PeerId {
        match &frame.message {
            ServerMessage::Welcome { session, .. } => session.peer_id.clone(),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    let redis = RedisServer::start();
    let mut nodes = start_cluster(&redis);
    let haproxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    let lb = haproxy.addr;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // A: SSE + POST. B: long-polling + POST.
        let a = http::open(lb, "ha-http", &http::join("A"))
            .await
            .expect("open A");
        let mut events = Sse::connect(lb, &a, None).await;
        assert_eq!(events.status, 200);
        let a_peer = peer_of(&events.frame().await);
        let b = http::open(lb, "ha-http", &http::join("B"))
            .await
            .expect("open B");
        let first = http::poll(lb, &b, 0).await;
        let b_peer = peer_of(&first.frames[0]);
        let mut b_seq = first.frames.last().expect("welcome").seq;
        let _joined = events.frame().await;

        // A -> B: one send per request, each to the next node.
        for n in 0..30 {
            let reply = http::send(lb, &a, &[signal(&b_peer, n)]).await;
            assert_eq!(reply.status, 204, "{}", reply.body);
        }
        let mut got = Vec::new();
        for _ in 0..200 {
            if got.len() == 30 {
                break;
            }
            let reply = http::poll(lb, &b, b_seq).await;
            for frame in &reply.frames {
                assert_eq!(frame.seq, b_seq + 1, "B: no gap, no duplicate");
                b_seq = frame.seq;
                got.extend(number(frame));
            }
        }
        assert_eq!(got, (0..30).collect::<Vec<_>>());
        // B -> A, onto A's stream.
        for n in 0..30 {
            let reply = http::send(lb, &b, &[signal(&a_peer, n)]).await;
            assert_eq!(reply.status, 204, "{}", reply.body);
        }
        let mut last_id = 0;
        let mut got = Vec::new();
        while got.len() < 30 {
            let frame = events.frame().await;
            last_id = frame.seq;
            got.extend(number(&frame));
        }
        assert_eq!(got, (0..30).collect::<Vec<_>>());
        for node in &nodes {
            let sends = metric(node.addr, "signaling_http_requests_total{kind=\"send\"}");
            assert!(sends > 0, "every node served sends (round-robin): {sends}");
        }

        // kill -9 the node that holds A's stream: the stream breaks, A reconnects through the
        // balancer with Last-Event-ID, and B's signals sent meanwhile all arrive.
        let victim = nodes
            .iter()
            .position(|n| metric(n.addr, "signaling_connections") > 0)
            .expect("the node with A's stream");
        drop(nodes.remove(victim).proc);
        assert!(
            events.next_within(Duration::from_secs(5)).await.is_none(),
            "the stream of the killed node ends without a close event"
        );
        for n in 30..50 {
            let reply = http::send(lb, &b, &[signal(&a_peer, n)]).await;
            assert_eq!(reply.status, 204, "{}", reply.body);
        }
        let mut events = Sse::connect(lb, &a, Some(last_id)).await;
        assert_eq!(events.status, 200, "resumed on a surviving node");
        let mut got = Vec::new();
        while got.len() < 20 {
            match events.next_within(Duration::from_secs(5)).await {
                Some(Event::Frame { frame, .. }) => {
                    assert_eq!(frame.seq, last_id + 1, "A: no gap, no duplicate");
                    last_id = frame.seq;
                    got.extend(number(&frame));
                }
                other => panic!("expected B's signals, got {other:?}"),
            }
        }
        assert_eq!(got, (30..50).collect::<Vec<_>>());
    });
}

/// A Redis outage longer than the resume grace period: the node parks the sessions it closed
/// when Redis answers again, and their grace starts then. The CLI does not time the grace on
/// its own clock: it resumes (same peer id, nobody seen leaving) instead of joining afresh.
#[test]
fn rust_peers_resume_after_a_redis_outage_longer_than_the_grace_period() {
    let redis = RedisServer::start();
    // The grace period is well over twice the longest reconnect delay (8 s), so an attempt
    // after Redis is back falls within it even if the first one found the node not ready yet;
    // the outage is longer than it.
    let node = cluster_node(
        &redis,
        &["--redis-timeout", "500ms", "--resume-grace", "20s"],
    );
    let (mut alice, mut bob) = chat_pair(&node.room_url("outage"));
    redis.freeze();
    std::thread::sleep(Duration::from_secs(22));
    redis.thaw();
    for proc in [&mut alice, &mut bob] {
        proc.wait_line(Duration::from_secs(20), |l| {
            l.starts_with("* signaling-resumed")
        });
    }
    for proc in [&alice, &bob] {
        assert!(
            !proc
                .seen
                .iter()
                .any(|l| { l.starts_with("* signaling-rejoined") || l.starts_with("* peer-left") }),
            "joined afresh or saw a peer leave: {:?}",
            proc.seen
        );
    }
    say(&mut alice, "after-the-outage");
    expect_chat(&mut bob, "alice: after-the-outage");
}
