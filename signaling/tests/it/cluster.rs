//! Cluster mode against a real `redis-server` (and a real 3-master Redis Cluster): node loss,
//! drain, a Redis outage, cluster-wide room limits under a race, and no leaked keys.

use std::ops::Range;
use std::time::{Duration, Instant};

use signaling::protocol::{
    ClientMessage, ErrorCode, LeaveReason, PeerId, ResumeToken, ServerFrame, ServerMessage,
    SessionInfo,
};

use crate::basic::{
    assert_peer_left, candidate, expect_peer_left, expect_signal, pass_candidate, signal,
    signal_request,
};
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{Client, Closed, Server, join_message, metric_becomes, resume_message};

/// Fast failure detection for tests: heartbeat 200 ms, lease 1 s.
fn node(redis_urls: &str, extra: &[&str]) -> Server {
    node_timed(redis_urls, "1s", "500ms", extra)
}

/// `N` nodes as [`node`] makes them, each with `extra`.
fn nodes<const N: usize>(redis_urls: &str, extra: &[&str]) -> [Server; N] {
    std::array::from_fn(|_| node(redis_urls, extra))
}

/// A node on `redis_urls` with a 200 ms heartbeat, `lease`, `redis_timeout` and `extra`.
fn node_timed(redis_urls: &str, lease: &str, redis_timeout: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--redis",
        redis_urls,
        "--node-heartbeat",
        "200ms",
        "--node-lease",
        lease,
        "--redis-timeout",
        redis_timeout,
    ];
    args.extend_from_slice(extra);
    Server::spawn(&args)
}

/// The full id of the node started with `--node-id name` (its lease in `sig:nodes`).
fn node_named(redis: &RedisServer, name: &str) -> String {
    redis
        .cli(&["ZRANGE", "sig:nodes", "0", "-1"])
        .lines()
        .find(|id| {
            id.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .unwrap_or_else(|| panic!("the lease of node {name}"))
        .to_owned()
}

/// A joins `room` on `a_node`, then B on `b_node`, whose socket drops at once: B is parked
/// there. Returns A (told of B) and B's session.
async fn peer_and_a_parked_one(
    a_node: &Server,
    b_node: &Server,
    room: &str,
) -> (Client, SessionInfo) {
    let (mut a, _) = Client::join(&a_node.ws(&format!("/ws/{room}")), None).await;
    let (b, b_info) = Client::join(&b_node.ws(&format!("/ws/{room}")), None).await;
    assert!(matches!(
        a.recv_message().await,
        ServerMessage::PeerJoined { .. }
    ));
    let open = b_node.metric("signaling_connections").await;
    drop(b);
    // B's connection is over once its node counts it closed (it parked B before).
    metric_becomes(b_node, "signaling_connections", open - 1).await;
    (a, b_info)
}

/// Resumes `session`, whose client saw frames up to `last_seq`, on `url`, and expects the
/// signals `candidate(i)` for each `i` of `candidates` from `from` replayed in order, then
/// `resumed` counting them.
async fn resume_expecting(
    url: &str,
    session: &SessionInfo,
    last_seq: u64,
    from: &PeerId,
    candidates: Range<u32>,
) -> Client {
    let mut client = Client::connect(url).await;
    client.last_seq = last_seq;
    client
        .send(&resume_message(&session.resume_token, last_seq))
        .await;
    let n = candidates.len() as u64;
    for i in candidates {
        assert_eq!(
            expect_signal(&mut client, from).await,
            candidate(i),
            "replay in order"
        );
    }
    match client.recv_message().await {
        ServerMessage::Resumed { replayed, .. } => assert_eq!(replayed, n),
        other => panic!("expected resumed, got {other:?}"),
    }
    client
}

/// A call in `room`: A joins on `a_node`, then B on `b_node`, and A passes B a first
/// candidate.
async fn call(
    a_node: &Server,
    b_node: &Server,
    room: &str,
) -> ((Client, SessionInfo), (Client, SessionInfo)) {
    let path = format!("/ws/{room}");
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&a_node.ws(&path), &b_node.ws(&path)).await;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 0).await;
    ((a, a_info), (b, b_info))
}

#[tokio::test]
async fn a_client_of_a_killed_node_resumes_on_another_with_nothing_lost() {
    let redis = RedisServer::start();
    let [n1, mut n2, n3] = nodes(&redis.url(), &["--resume-grace", "20s"]);
    metric_becomes(&n1, "signaling_cluster_nodes", 3).await;
    let ((mut a, a_info), (b, b_info)) = call(&n1, &n2, "call").await;
    let b_seen = b.last_seq;

    // kill -9 B's node mid-negotiation; A goes on trickling to B.
    n2.kill();
    let killed = Instant::now();
    for i in 1..=5 {
        signal(&mut a, &b_info.peer_id, candidate(i)).await;
    }
    // Past the lease: another node adopted B's session (parked, not ended).
    adopted_by_one_of(&[&n1, &n3]).await;
    for i in 6..=7 {
        signal(&mut a, &b_info.peer_id, candidate(i)).await;
    }
    a.sync().await;
    let mut b = resume_expecting(&n3.ws("/ws/call"), &b_info, b_seen, &a_info.peer_id, 1..8).await;
    eprintln!(
        "kill -9 to resumed elsewhere: {} ms",
        killed.elapsed().as_millis()
    );
    // The operator sees the node gone and its one session adopted by a survivor.
    metric_becomes(&n1, "signaling_cluster_nodes", 2).await;
    let adopted = n1.metric("signaling_cluster_sessions_adopted_total").await
        + n3.metric("signaling_cluster_sessions_adopted_total").await;
    assert_eq!(adopted, 1);
    b.expect_silence(Duration::from_millis(200)).await;
    // A never saw B leave; the call goes on both ways.
    pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 50).await;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 51).await;
    a.expect_silence(Duration::from_millis(300)).await;
}

/// A grace of 1 s, and pings every 500 ms that time out after `ping_timeout`: a dead node's
/// sessions end 1 s + `ping_timeout` after their adoption.
fn quick_grace(ping_timeout: &'static str) -> [&'static str; 6] {
    [
        "--resume-grace",
        "1s",
        "--ping-interval",
        "500ms",
        "--ping-timeout",
        ping_timeout,
    ]
}

#[tokio::test]
async fn a_dead_nodes_client_that_never_returns_leaves_after_the_grace_period() {
    let redis = RedisServer::start();
    let [n1, mut n2] = nodes(&redis.url(), &quick_grace("2s"));
    let (mut a, _) = Client::join(&n1.ws("/ws/gone"), None).await;
    let (_b, b_info) = Client::join(&n2.ws("/ws/gone"), None).await;
    let _ = a.recv_message().await;
    n2.kill();
    let killed = Instant::now();
    // Nothing before the lease (1 s), the grace period (1 s) and the ping timeout (2 s, the
    // time B's client may take to notice that its node went silent) have passed; then B
    // leaves (not after the 20 s it would take a node to notice without the lease).
    a.expect_silence(Duration::from_millis(3500)).await;
    expect_disconnected(&mut a, &b_info.peer_id, Duration::from_secs(8)).await;
    assert!(killed.elapsed() < Duration::from_secs(12));
}

/// Waits (up to 10 s) until one of `survivors` adopted a session of a dead node.
async fn adopted_by_one_of(survivors: &[&Server]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut adopted = 0;
        for node in survivors {
            adopted += node
                .metric("signaling_cluster_sessions_adopted_total")
                .await;
        }
        if adopted > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no survivor adopted the session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next frame of `client`, within `limit`, is `peer_left` of `peer`, `disconnected`.
async fn expect_disconnected(client: &mut Client, peer: &PeerId, limit: Duration) {
    let message = client.recv_within(limit).await.map(|f| f.message);
    assert_peer_left(message, peer, LeaveReason::Disconnected);
}

/// A supervisor restarts a killed node at once under the same `--node-id`: the new process is a
/// new node, so its predecessor's sessions are still adopted when the old lease runs out, and a
/// client that never returns leaves after the grace period (it stayed in the room for good).
#[tokio::test]
async fn a_node_restarted_at_once_under_the_same_name_does_not_keep_its_predecessors_ghosts() {
    let redis = RedisServer::start();
    let quick = quick_grace("1s");
    let named = |name| [&quick[..], &["--node-id", name]].concat();
    let n1 = node(&redis.url(), &quick);
    let mut n2 = node(&redis.url(), &named("same"));
    let (mut a, _) = Client::join(&n1.ws("/ws/restarted"), None).await;
    let (_b, b_info) = Client::join(&n2.ws("/ws/restarted"), None).await;
    let _ = a.recv_message().await;
    n2.kill();
    let _n2_again = node(&redis.url(), &named("same"));
    expect_disconnected(&mut a, &b_info.peer_id, Duration::from_secs(8)).await;
}

/// A drained node gives its lease up for good, although it outlives its drain (here in this
/// process; a node's in-process relay may still drain): its heartbeat took the lease back
/// (or found it adopted and closed everything for a "lost" lease, logged as an error).
#[tokio::test]
async fn a_drained_node_gives_its_lease_up_for_good() {
    let redis = RedisServer::start();
    let url = redis.url();
    let timing = ["--node-heartbeat", "200ms", "--node-lease", "1s"];
    let _stays =
        Server::in_process(&[&["--redis", &url, "--node-id", "stays"], &timing[..]].concat());
    let drains = Server::in_process(
        &[
            &["--redis", &url, "--node-id", "drains", "--api-key", "k"],
            &timing[..],
        ]
        .concat(),
    );
    let id = node_named(&redis, "drains");
    let (status, _, body) = crate::http_client::http_request(
        drains.addr,
        "POST",
        "/v1/drain",
        &[("Authorization", "Bearer k")],
        "",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Nothing open: the drain is over at once, and the node stops listening.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(drains.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the drained node still listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Five heartbeats later the lease is still given up (0) or gone (adopted), not renewed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let score = redis.cli(&["ZSCORE", "sig:nodes", &id]);
    assert!(
        score.is_empty() || score == "0",
        "the lease came back: {score}"
    );
}

#[tokio::test]
async fn draining_a_node_moves_its_clients_with_zero_frames_lost() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &[]);
    let mut n2 = node(
        &redis.url(),
        &["--drain-timeout", "3s", "--reconnect-after", "100ms"],
    );
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&n1.ws("/ws/move"), &n2.ws("/ws/move")).await;

    n2.terminate();
    assert!(matches!(
        b.recv_message().await,
        ServerMessage::Draining { .. }
    ));
    let b_seen = b.last_seq;
    // A keeps sending while B moves.
    for i in 0..5 {
        signal(&mut a, &b_info.peer_id, candidate(i)).await;
    }
    a.sync().await;
    // B reads what reached it before it switches (a client processes frames until it closes).
    let mut processed = 0;
    while let Some(frame) = b.recv_within(Duration::from_millis(100)).await {
        assert!(matches!(frame.message, ServerMessage::Signal { .. }));
        processed += 1;
    }
    let last = b.last_seq;
    assert!(last >= b_seen);
    drop(b);
    let b = resume_expecting(
        &n1.ws("/ws/move"),
        &b_info,
        last,
        &a_info.peer_id,
        processed..5,
    )
    .await;
    assert!(n2.wait_exit(Duration::from_secs(5)), "drained node exits");
    let mut b = b;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 9).await;
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_redis_outage_is_refused_clearly_and_healed_without_a_restart() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "30s"]);
    let ((mut a, a_info), (mut b, b_info)) = call(&n1, &n2, "outage").await;
    let (a_seen, b_seen) = (a.last_seq, b.last_seq);
    for server in [&n1, &n2] {
        metric_becomes(server, "signaling_cluster_available", 1).await;
        metric_becomes(server, "signaling_cluster_nodes", 2).await;
        assert_eq!(
            server.metric("signaling_cluster_store_errors_total").await,
            0
        );
    }

    redis.freeze();
    // A request in flight fails with `unavailable` naming it (so its client knows it was not
    // taken), unless the node noticed the outage first and closed the socket.
    a.send(&signal_request(77, b_info.peer_id.clone(), candidate(100)))
        .await;
    let (errors, closed) = a.errors_then_close().await;
    for error in &errors {
        match &error.message {
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                reference,
                ..
            } => assert_eq!(*reference, Some(77)),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
    // The nodes notice within a heartbeat and the Redis timeout: 503, sockets closed (1013).
    assert_eq!(closed, Closed::Code(1013));
    assert_eq!(b.expect_close().await, Closed::Code(1013));
    for server in [&n1, &n2] {
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        // The operator's view: unavailable, one outage of the store, failed calls counted.
        assert_eq!(server.metric("signaling_cluster_available").await, 0);
        assert_eq!(
            server
                .metric("signaling_cluster_outages_total{reason=\"store\"}")
                .await,
            1
        );
        assert!(server.metric("signaling_cluster_store_errors_total").await > 0);
        match Client::try_connect(&server.ws("/ws/outage"), &[]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 503)
            }
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
    }
    redis.thaw();
    for server in [&n1, &n2] {
        ready_again(server).await;
        assert_eq!(server.metric("signaling_cluster_available").await, 1);
    }
    // Both resume (each on the other node) with nothing lost, and the call goes on.
    let mut a = Client::connect(&n2.ws("/ws/outage")).await;
    a.last_seq = a_seen;
    a.send(&resume_message(&a_info.resume_token, a_seen)).await;
    assert!(matches!(
        a.recv_message().await,
        ServerMessage::Resumed { replayed: 0, .. }
    ));
    let mut b = Client::connect(&n1.ws("/ws/outage")).await;
    b.last_seq = b_seen;
    b.send(&resume_message(&b_info.resume_token, b_seen)).await;
    // The signal refused with `unavailable` was on its way to the frozen Redis: it may have
    // taken effect once Redis came back (then it is replayed, once).
    let mut replayed_signals = 0;
    loop {
        match b.recv_message().await {
            ServerMessage::Signal { from, .. } => {
                assert_eq!(from, a_info.peer_id);
                replayed_signals += 1;
            }
            ServerMessage::Resumed { replayed, .. } => {
                assert_eq!(replayed, replayed_signals);
                assert!(replayed <= 1, "replayed {replayed}");
                break;
            }
            other => panic!("expected the replay, then resumed: {other:?}"),
        }
    }
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 1).await;
    // New joins work again.
    let (_c, _) = Client::join(&n1.ws("/ws/outage"), None).await;
}

/// Redis down for longer than the lease, then back with its saved data: every lease reads
/// expired, but no node died. The nodes count one outage each (its sockets closed once, not
/// once per failed part), adopt nobody's sessions (no `lease_lost`, no node's clients cut a
/// second time), and their clients resume where they were with nothing lost.
#[tokio::test]
async fn redis_back_after_the_lease_ran_out_adopts_no_live_nodes_sessions() {
    let mut redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "30s"]);
    let ((mut a, a_info), (mut b, b_info)) = call(&n1, &n2, "comeback").await;
    let (a_seen, b_seen) = (a.last_seq, b.last_seq);
    for server in [&n1, &n2] {
        metric_becomes(server, "signaling_cluster_nodes", 2).await;
    }

    // Down for three leases (the lease is 1 s).
    redis.restart_from_saved_data(Duration::from_secs(3));
    assert_eq!(a.expect_close().await, Closed::Code(1013));
    assert_eq!(b.expect_close().await, Closed::Code(1013));
    for server in [&n1, &n2] {
        ready_again(server).await;
    }
    // Past the lease that every node gets to renew its own.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for server in [&n1, &n2] {
        let outages = server
            .metric("signaling_cluster_outages_total{reason=\"store\"}")
            .await
            + server
                .metric("signaling_cluster_outages_total{reason=\"pubsub\"}")
                .await;
        assert_eq!(outages, 1, "one outage, counted once");
        assert_eq!(
            server
                .metric("signaling_cluster_outages_total{reason=\"lease_lost\"}")
                .await,
            0
        );
        assert_eq!(
            server
                .metric("signaling_cluster_sessions_adopted_total")
                .await,
            0
        );
        assert_eq!(server.metric("signaling_cluster_nodes").await, 2);
    }
    // Each resumes on its own node: nothing lost, and the call goes on.
    let (a_id, b_id) = (&a_info.peer_id, &b_info.peer_id);
    let a_url = n1.ws("/ws/comeback");
    let mut a = resume_expecting(&a_url, &a_info, a_seen, b_id, 0..0).await;
    let b_url = n2.ws("/ws/comeback");
    let mut b = resume_expecting(&b_url, &b_info, b_seen, a_id, 0..0).await;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 1).await;
    // Still attached a lease later: nobody took them over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 2).await;
}

/// Broadcasts go through a Redis connection of their own, idle between them. After a Redis
/// restart, the first broadcast went out on its dead socket, failed (`unavailable`), and the
/// node closed every socket again; the heartbeat checks that connection too now, so it is
/// whole again before the node is.
#[tokio::test]
async fn the_first_broadcast_after_a_redis_restart_is_delivered() {
    let mut redis = RedisServer::start();
    let n1 = node(&redis.url(), &["--resume-grace", "30s"]);
    let ((mut a, a_info), (mut b, b_info)) = call(&n1, &n1, "broadcast-restart").await;
    let (a_seen, b_seen) = (a.last_seq, b.last_seq);
    redis.restart_from_saved_data(Duration::from_millis(500));
    assert_eq!(a.expect_close().await, Closed::Code(1013));
    assert_eq!(b.expect_close().await, Closed::Code(1013));
    ready_again(&n1).await;
    let url = n1.ws("/ws/broadcast-restart");
    let (a_id, b_id) = (&a_info.peer_id, &b_info.peer_id);
    let mut a = resume_expecting(&url, &a_info, a_seen, b_id, 0..0).await;
    let mut b = resume_expecting(&url, &b_info, b_seen, a_id, 0..0).await;
    a.send(&ClientMessage::Broadcast {
        id: None,
        cseq: None,
        data: serde_json::json!("after the restart"),
    })
    .await;
    match b.recv_message().await {
        ServerMessage::Broadcast { from, data } => {
            assert_eq!(&from, a_id);
            assert_eq!(data, "after the restart");
        }
        other => panic!("expected the broadcast, got {other:?}"),
    }
    a.expect_silence(Duration::from_millis(300)).await;
    let mut outages = 0;
    for reason in ["store", "pubsub", "lease_lost"] {
        let series = format!("signaling_cluster_outages_total{{reason=\"{reason}\"}}");
        outages += n1.metric(&series).await;
    }
    assert_eq!(outages, 1, "the restart, and no outage after it");
}

#[tokio::test]
async fn a_restarted_empty_redis_is_served_again_and_old_sessions_fail_cleanly() {
    let mut redis = RedisServer::start();
    let n1 = node(&redis.url(), &[]);
    let (mut a, a_info) = Client::join(&n1.ws("/ws/restart"), None).await;
    redis.restart();
    assert_eq!(a.expect_close().await, Closed::Code(1013));
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The data is gone: the resume fails with a clear code, and a fresh join works.
    let mut a = Client::connect(&n1.ws("/ws/restart")).await;
    a.send(&resume_message(&a_info.resume_token, 1)).await;
    a.expect_error(ErrorCode::ResumeFailed).await;
    let (_b, info) = Client::join(&n1.ws("/ws/restart"), None).await;
    assert!(info.peers.is_empty());
    // One outage (its subscription, then its lease, were lost with the data), counted once.
    let mut outages = 0;
    for reason in ["store", "pubsub", "lease_lost"] {
        let series = format!("signaling_cluster_outages_total{{reason=\"{reason}\"}}");
        outages += n1.metric(&series).await;
    }
    assert_eq!(outages, 1);
}

#[tokio::test]
async fn room_full_holds_cluster_wide_under_a_race() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3)
        .map(|_| node(&redis.url(), &["--max-peers-per-room", "5"]))
        .collect();
    let mut joins = Vec::new();
    for i in 0..15 {
        let url = nodes[i % 3].ws("/ws/race");
        joins.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            client.send(&join_message("race")).await;
            let message = client.recv_message().await;
            (client, message)
        }));
    }
    let mut welcomed = 0;
    let mut full = 0;
    let mut keep = Vec::new();
    for join in joins {
        let (client, message) = join.await.expect("join task");
        match message {
            ServerMessage::Welcome { .. } => welcomed += 1,
            ServerMessage::Error {
                code: ErrorCode::RoomFull,
                ..
            } => full += 1,
            other => panic!("unexpected {other:?}"),
        }
        keep.push(client);
    }
    assert_eq!((welcomed, full), (5, 10));
}

#[tokio::test]
async fn every_key_is_gone_after_everyone_leaves() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "1s"]);
    let baseline = redis.keys();
    for room in ["k1", "k2"] {
        let ((mut a, a_info), (mut b, b_info)) = Client::pair(
            &n1.ws(&format!("/ws/{room}")),
            &n2.ws(&format!("/ws/{room}")),
        )
        .await;
        for i in 0..3 {
            pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), i).await;
        }
        // Every key has a TTL from its first write (the heartbeat renews them, but is not
        // what gives a new key its first one).
        for key in redis.keys() {
            let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap_or(-1);
            assert!(ttl > 0, "{key} has no TTL");
        }
        // One leaves, one just drops its socket (parked, then expired).
        a.send(&ClientMessage::Leave { id: None }).await;
        drop(b);
    }
    assert!(redis.keys().len() > baseline.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = redis.keys();
        if keys == baseline {
            break;
        }
        assert!(Instant::now() < deadline, "keys left: {keys:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every key that stays has a TTL.
    for key in redis.keys() {
        let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap_or(-1);
        assert!(ttl > 0, "{key} has no TTL");
    }
}

#[tokio::test]
async fn a_room_spans_nodes_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let [n1, n2] = nodes(&urls, &[]);
    for room in ["alpha", "beta", "gamma"] {
        let path = format!("/ws/{room}");
        let (mut a, a_info) = Client::join(&n1.ws(&path), None).await;
        let (b, b_info) = Client::join(&n2.ws(&path), None).await;
        assert_eq!(b_info.peers.len(), 1);
        assert!(b_info.peers[0].polite);
        match a.recv_message().await {
            ServerMessage::PeerJoined { peer } => assert_eq!(peer.id, b_info.peer_id),
            other => panic!("{other:?}"),
        }
        for i in 0..3 {
            signal(&mut a, &b_info.peer_id, candidate(i)).await;
        }
        a.sync().await;
        let seen = b.last_seq;
        drop(b);
        // B resumes on the other node and gets the three signals.
        let mut b = resume_expecting(&n1.ws(&path), &b_info, seen, &a_info.peer_id, 0..3).await;
        pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 7).await;
    }
    assert!(cluster.dbsize() > 0);
}

/// A numbered signal sent while its room's slot moves to another master of a Redis Cluster
/// (resharding: some of the room's keys moved, the others not yet) is not lost: the script
/// that finds the slot moving fails before it writes, so the signal is not counted as handled;
/// the sender's socket is closed (1013), its resume says the signal was not received, it sends
/// it again, and the receiver gets it once. The node's other rooms go on: no outage.
#[tokio::test]
async fn a_numbered_signal_sent_while_its_rooms_slot_moves_is_not_lost() {
    use crate::resume::numbered_signal;
    let cluster = RedisCluster::start();
    let n1 = node(&cluster.urls(), &[]);
    let path = "/ws/moving";
    let ((mut a, a_info), (mut b, b_info)) = Client::pair(&n1.ws(path), &n1.ws(path)).await;
    a.send(&numbered_signal(&b_info.peer_id, 1)).await;
    assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(1));
    let b_seen = b.last_seq;
    let (mut steady, _) = Client::join(&n1.ws("/ws/steady"), None).await;
    let steady_slot = cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", "sig:{steady}:m"]);
    // The slot's master (the one holding the room's keys) starts moving it to another one,
    // and B's session goes first.
    let slot = cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", "sig:{moving}:m"]);
    let holds = |n: &RedisServer| n.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]) != "0";
    let source = cluster
        .nodes
        .iter()
        .find(|n| holds(n))
        .expect("the slot's master");
    let target = cluster
        .nodes
        .iter()
        .find(|n| !holds(n))
        .expect("another master");
    let (source_id, target_id) = (
        source.cli(&["CLUSTER", "MYID"]),
        target.cli(&["CLUSTER", "MYID"]),
    );
    target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]);
    source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
    let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    let b_key = keys
        .lines()
        .find(|k| {
            k.contains(":s:") && source.cli(&["HGET", k, "peer"]) == b_info.peer_id.to_string()
        })
        .expect("B's session key")
        .to_owned();
    let port = target.port.to_string();
    let migrate = |keys: &[&str]| {
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend_from_slice(keys);
        assert_eq!(source.cli(&args), "OK", "MIGRATE {keys:?}");
    };
    migrate(&[&b_key]);
    // Signal 2 meets the slot half moved.
    a.send(&numbered_signal(&b_info.peer_id, 2)).await;
    let a_seen = a.last_seq;
    let (frames, closed) = a.frames_for(Duration::from_secs(10)).await;
    assert_eq!(closed, Some(Closed::Code(1013)));
    // Told why: the room is moving, not a store the node cannot reach.
    assert!(
        frames.iter().any(|f| matches!(
            &f.message,
            ServerMessage::Error { code: ErrorCode::Unavailable, message, .. }
                if message.contains("room is moving")
        )),
        "{frames:?}"
    );
    // Another room, in another slot, was not cut off.
    assert_ne!(steady_slot, slot);
    steady.sync().await;
    assert!(n1.get("/readyz").await.0 == 200, "the node stayed ready");
    // The move ends: the rest of the keys, then every master names the new owner.
    let rest = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    let rest: Vec<&str> = rest.lines().filter(|k| !k.is_empty()).collect();
    if !rest.is_empty() {
        migrate(&rest);
    }
    for n in &cluster.nodes {
        n.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
    }
    ready_again(&n1).await;
    // A resumes: signal 2 was not handled, so A sends it again.
    let mut a = Client::connect(&n1.ws(path)).await;
    a.send(&resume_message(&a_info.resume_token, a_seen)).await;
    let received = loop {
        if let ServerMessage::Resumed { received, .. } = a.recv_message().await {
            break received;
        }
    };
    assert_eq!(received, Some(1), "signal 2 taken for handled");
    a.send(&numbered_signal(&b_info.peer_id, 2)).await;
    a.sync().await;
    // B's socket drops; it resumes and gets the signal, once.
    drop(b);
    let b = resume_expecting(&n1.ws(path), &b_info, b_seen, &a_info.peer_id, 2..3).await;
    drop(b);
}

#[tokio::test]
async fn nodes_without_a_turn_secret_agree_on_one_through_redis() {
    let mut redis = RedisServer::start();
    let turn = ["--turn-url", "turn:127.0.0.1:3478?transport=udp"];
    let [n1, n2] = nodes(&redis.url(), &turn);
    let secret = redis.cli(&["GET", "sig:secret:turn"]);
    assert_eq!(secret.len(), 64, "a generated secret: {secret}");
    let signs_with_secret = |server: &Server| {
        let url = server.ws("/ws/turn");
        let secret = secret.clone();
        async move {
            let (_client, info) = Client::join(&url, None).await;
            let turn = &info.ice_servers[0];
            let username = turn.username.as_deref().expect("TURN username");
            assert_eq!(
                turn.credential.as_deref(),
                Some(relay_proto::auth::rest_password(secret.as_bytes(), username).as_str()),
                "every node signs with the agreed secret"
            );
        }
    };
    for server in [&n1, &n2] {
        signs_with_secret(server).await;
    }
    let ttl: i64 = redis.cli(&["PTTL", "sig:secret:turn"]).parse().unwrap();
    assert!(ttl > 0);

    // Redis restarted empty: the nodes write the secret back at their next heartbeat (200 ms),
    // so a node started afterwards reads it instead of making another.
    redis.restart();
    let mut back = String::new();
    for _ in 0..50 {
        back = redis.cli(&["GET", "sig:secret:turn"]);
        if !back.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, secret, "the agreed secret is back in redis");
    let n3 = node(&redis.url(), &turn);
    signs_with_secret(&n3).await;
}

#[tokio::test]
async fn a_node_frozen_past_its_lease_hands_its_clients_over() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "20s"]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&n1.ws("/ws/frozen"), &n2.ws("/ws/frozen")).await;
    let b_seen = b.last_seq;
    // SIGSTOP n2 past its lease: n1 adopts B's session (parked) while B's socket stays open.
    let pid = n2.pid() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    adopted_by_one_of(&[&n1]).await;
    for i in 0..3 {
        signal(&mut a, &b_info.peer_id, candidate(i)).await;
    }
    a.sync().await;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // n2 finds its lease gone and cuts B's socket; B resumes and misses nothing.
    assert_eq!(b.expect_close().await, Closed::Code(1013));
    let mut b =
        resume_expecting(&n1.ws("/ws/frozen"), &b_info, b_seen, &a_info.peer_id, 0..3).await;
    pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 9).await;
}

/// A TCP proxy in front of Redis: a link to it `delay` long each way, which can stall every
/// connection that subscribed (it sent `SUBSCRIBE`): from then on, what either side sends is
/// dropped while the connection stays open, as on a link that died without a reset.
struct RedisLink {
    addr: std::net::SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RedisLink {
    async fn start(redis_port: u16, delay: Duration) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
        /// One direction: each read is written `delay` after it came, in order.
        fn pump(
            mut from: impl AsyncRead + Unpin + Send + 'static,
            mut to: impl AsyncWrite + Unpin + Send + 'static,
            delay: Duration,
            upstream: bool,
            (stall, subscriber): (Arc<AtomicBool>, Arc<AtomicBool>),
        ) {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buf).await {
                    if upstream && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                        subscriber.store(true, Ordering::Relaxed);
                    }
                    if stall.load(Ordering::Relaxed) && subscriber.load(Ordering::Relaxed) {
                        continue;
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(due.into()).await;
                    if to.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let stall = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                let flags = || (Arc::clone(&stall), Arc::clone(&subscriber));
                let ((client_rx, client_tx), (server_rx, server_tx)) =
                    (client.into_split(), server.into_split());
                pump(client_rx, server_tx, delay, true, flags());
                pump(server_rx, client_tx, delay, false, flags());
            }
        });
        Self { addr, stalled }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn stall_subscriptions(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A node whose subscription to its channel stops delivering while its connection stays open
/// finds out by its probe (docs/signaling.md, "Redis outage or partition"): it closes its
/// sockets with 1013, so their clients resume on another node with nothing lost. Before, the
/// node went on as if whole, and its clients got nothing (not a `pong`) for as long as it
/// lasted. (Two threads: starting a node blocks one, and the proxy must answer meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_subscription_stalls_hands_its_clients_over() {
    let redis = RedisServer::start();
    let link = RedisLink::start(redis.port, Duration::ZERO).await;
    let n1 = node(&redis.url(), &[]);
    let n2 = node(&link.url(), &[]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&n1.ws("/ws/stalled"), &n2.ws("/ws/stalled")).await;
    let b_seen = b.last_seq;
    link.stall_subscriptions();
    for i in 0..3 {
        signal(&mut a, &b_info.peer_id, candidate(i)).await;
    }
    a.sync().await;
    assert_eq!(b.expect_close().await, Closed::Code(1013));
    let mut b = resume_expecting(
        &n1.ws("/ws/stalled"),
        &b_info,
        b_seen,
        &a_info.peer_id,
        0..3,
    )
    .await;
    pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 9).await;
}

/// A node whose link to Redis is slow (200 ms round trips, each call well within
/// `--redis-timeout`) keeps its lease: its renewal's calls go together. Before, they went one
/// after the other (seven round trips, 1.4 s, past the 1 s lease): the node was taken for
/// dead, and its sockets closed with 1013, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_slow_link_to_redis_keeps_its_lease() {
    let redis = RedisServer::start();
    let link = RedisLink::start(redis.port, Duration::from_millis(100)).await;
    let n1 = node_timed(&redis.url(), "1s", "1s", &[]);
    let n2 = node_timed(&link.url(), "1s", "1s", &[]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&n1.ws("/ws/slow-link"), &n2.ws("/ws/slow-link")).await;
    // Five leases long: B's socket stays (a 1013 would end `pass_candidate`), and hears A.
    tokio::time::sleep(Duration::from_secs(5)).await;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 1).await;
}

/// Two nodes on `redis`: the first with an admin listener (its address comes third), the
/// second without.
fn admin_node_and_another(redis: &RedisServer) -> (Server, Server, std::net::SocketAddr) {
    let mut with_admin = node(&redis.url(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = crate::admin_page::admin_addr(&mut with_admin);
    (with_admin, node(&redis.url(), &[]), admin)
}

#[tokio::test]
async fn the_admin_page_of_any_node_shows_the_rooms_and_reports_of_the_whole_cluster() {
    use crate::admin_page::{peer_of, relayed_report, sse_snapshot_with, stats};
    let redis = RedisServer::start();
    let (_quiet, busy, admin) = admin_node_and_another(&redis);
    // Both peers are on the busy node; the quiet node has no session at all.
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&busy.ws("/ws/far-room"), &busy.ws("/ws/far-room")).await;
    a.send(&stats(relayed_report(&b_info.peer_id))).await;
    a.sync().await;

    let live = sse_snapshot_with(admin, "\"relayed\"", Duration::from_secs(10)).await;
    let peer = peer_of(&live, "far-room", &a_info.peer_id);
    assert_eq!(peer["state"], "attached");
    assert_ne!(
        peer["node"], live["node"],
        "served by the other node: {live}"
    );
    assert!(peer["connected_ms"].is_u64(), "{peer}");
    let link = &peer["links"][0];
    assert_eq!(link["peer"], b_info.peer_id.as_str());
    assert_eq!(link["path"], "relayed");
    assert_eq!(link["rtt_ms"], 12);
    assert!(
        link["age_ms"].as_u64().is_some_and(|age| age < 10_000),
        "{link}"
    );
    assert_eq!(live["traffic"]["peers_relayed"], 1, "{live}");
    let _ = peer_of(&live, "far-room", &b_info.peer_id);

    // Everyone leaves: the room goes from the quiet node's page too.
    a.send(&ClientMessage::Leave { id: None }).await;
    b.send(&ClientMessage::Leave { id: None }).await;
    let gone = testkit::wait_until(Duration::from_secs(10), || {
        let (_, body) = testkit::http_get(admin, "/snapshot").ok()?;
        (!body.contains("far-room")).then_some(body)
    });
    assert!(gone.is_some(), "the room stayed on the admin page");
}

#[tokio::test]
async fn a_stats_report_sent_through_another_node_reaches_the_node_of_the_stream() {
    use crate::admin_page::{peer_of, relayed_report, sse_snapshot_with, stats};
    use crate::http_client::{self, Event, Sse};
    let redis = RedisServer::start();
    let (home, other, admin) = admin_node_and_another(&redis);
    let (_a, a_info) = Client::join(&home.ws("/ws/via-http"), None).await;
    // B is on the HTTP transports: its stream is attached to the home node.
    let session = http_client::open_as(home.addr, "via-http", "B").await;
    let mut stream = Sse::connect(home.addr, &session, None).await;
    let b_id = match stream.next_within(Duration::from_secs(5)).await {
        Some(Event::Frame { frame, .. }) => match frame.message {
            ServerMessage::Welcome { session, .. } => session.peer_id,
            other => panic!("expected welcome, got {other:?}"),
        },
        other => panic!("expected the welcome event, got {other:?}"),
    };
    // Its `stats` report reaches the other node, which sends it on to the home node.
    let report = stats(relayed_report(&a_info.peer_id));
    let reply = http_client::send(other.addr, &session, &[report]).await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let live = sse_snapshot_with(admin, "\"relayed\"", Duration::from_secs(10)).await;
    let peer = peer_of(&live, "via-http", &b_id);
    assert_eq!(peer["node"], live["node"], "B is served here: {live}");
    let link = &peer["links"][0];
    assert_eq!(link["peer"], a_info.peer_id.as_str(), "{live}");
    assert_eq!(link["path"], "relayed");
    assert_eq!(live["traffic"]["peers_relayed"], 1, "counted here: {live}");

    // A report about no peer of the room, through either node, is answered on the stream.
    for node in [&other, &home] {
        let report = stats(relayed_report(&PeerId::from("000000000000")));
        let reply = http_client::send(node.addr, &session, &[report]).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        match stream.next_within(Duration::from_secs(5)).await {
            Some(Event::Frame { frame, .. }) => match frame.message {
                ServerMessage::Error {
                    code: ErrorCode::UnknownPeer,
                    reference: Some(7),
                    ..
                } => {}
                other => panic!("expected unknown_peer, got {other:?}"),
            },
            other => panic!("expected the error event, got {other:?}"),
        }
    }
}

/// A client that gives up on its `POST /http` open while Redis is slow (its connection closed
/// mid-request) does not leave a session attached to a queue nobody reads: once Redis answers,
/// the session is parked, and after the resume grace period the others see it leave.
#[tokio::test]
async fn an_http_open_abandoned_while_redis_is_slow_still_parks_its_session() {
    let redis = RedisServer::start();
    let url = redis.url();
    let n1 = Server::spawn(&[
        "--redis",
        &url,
        "--node-heartbeat",
        "200ms",
        "--node-lease",
        "5s",
        "--redis-timeout",
        "5s",
        "--resume-grace",
        "1s",
    ]);
    let (mut a, _) = Client::join(&n1.ws("/ws/abandoned"), None).await;
    redis.freeze();
    let body = r#"{"type":"join","versions":[1],"name":"gone"}"#;
    let mut conn = tokio::net::TcpStream::connect(n1.addr).await.unwrap();
    let request = format!(
        "POST /http/abandoned HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(conn); // the client gives up while the join waits for Redis
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.thaw();
    let joined = match a.recv_message().await {
        ServerMessage::PeerJoined { peer, .. } => peer.id,
        other => panic!("expected peer_joined, got {other:?}"),
    };
    // Parked when the request ended, it leaves after the 1 s grace period.
    expect_peer_left(&mut a, &joined, LeaveReason::Disconnected).await;
}

/// Scripts Redis has run so far (`EVALSHA` and `EVAL` calls).
/// A broadcast (and any frame to a whole room: `peer_joined`, `peer_left`) crosses Redis
/// pub/sub once per node, not once per recipient: a large broadcast to a full room must not
/// overrun the subscribers' output buffers. Every recipient still gets it, numbered in its
/// own sequence.
#[tokio::test]
async fn a_broadcast_crosses_pubsub_once_per_node() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &[]);
    let (mut sender, sender_info) = Client::join(&n1.ws("/ws/fanout"), None).await;
    let mut others = Vec::new();
    for i in 0..6 {
        let at = if i % 2 == 0 { &n1 } else { &n2 };
        let (client, _) = Client::join(&at.ws("/ws/fanout"), None).await;
        others.push(client);
    }
    // Everyone has seen everyone join.
    for (i, client) in others.iter_mut().enumerate() {
        for _ in i + 1..6 {
            assert!(matches!(
                client.recv_message().await,
                ServerMessage::PeerJoined { .. }
            ));
        }
    }
    for _ in 0..6 {
        assert!(matches!(
            sender.recv_message().await,
            ServerMessage::PeerJoined { .. }
        ));
    }
    let before = publishes(&redis);
    sender
        .send(&ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::json!({"blob": "x".repeat(30_000)}),
        })
        .await;
    for client in &mut others {
        let seq_before = client.last_seq;
        let frame = client.recv().await;
        assert_eq!(frame.seq, seq_before + 1, "numbered in its own sequence");
        match frame.message {
            ServerMessage::Broadcast { from, data } => {
                assert_eq!(from, sender_info.peer_id);
                assert_eq!(data["blob"].as_str().map(str::len), Some(30_000));
            }
            other => panic!("expected the broadcast, got {other:?}"),
        }
    }
    assert_eq!(publishes(&redis) - before, 2, "one publish per node");
}

/// A broadcast body of 1 KiB or more is kept once per room in Redis, however many outboxes
/// hold it: a member parked meanwhile resumes on another node with every frame replayed, big
/// and small, in order; and the body goes with the last outbox entry naming it.
#[tokio::test]
async fn a_big_broadcast_is_kept_once_per_room_and_replayed_from_there() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "20s"]);
    let (mut sender, sender_info) = Client::join(&n1.ws("/ws/shared"), None).await;
    let (mut a, _) = Client::join(&n2.ws("/ws/shared"), None).await;
    let (parked, parked_info) = join_seen_by(&n2, "shared", [&mut sender, &mut a]).await;
    let parked_seen = parked.last_seq;
    drop(parked);
    metric_becomes(&n2, "signaling_connections", 1).await;

    let blobs: Vec<serde_json::Value> = vec![
        serde_json::json!("small before"),
        serde_json::json!({"blob": "x".repeat(30_000)}),
        serde_json::json!({"blob": "y".repeat(20_000)}),
        serde_json::json!("small after"),
    ];
    for data in &blobs {
        sender
            .send(&ClientMessage::Broadcast {
                id: None,
                cseq: None,
                data: data.clone(),
            })
            .await;
    }
    for data in &blobs {
        match a.recv_message().await {
            ServerMessage::Broadcast { from, data: got } => {
                assert_eq!(from, sender_info.peer_id);
                assert_eq!(&got, data);
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }
    // Two outboxes hold each big body (A's tail and the parked one's): Redis holds it once.
    assert_eq!(redis.cli(&["HLEN", "sig:{shared}:b"]), "2");
    let biggest_entry = redis
        .keys()
        .iter()
        .filter(|key| key.starts_with("sig:{shared}:l:"))
        .flat_map(|key| {
            redis
                .cli(&["--raw", "LRANGE", key, "0", "-1"])
                .lines()
                .map(str::len)
                .collect::<Vec<_>>()
        })
        .max();
    assert!(
        biggest_entry.is_some_and(|len| len < 1024),
        "{biggest_entry:?}"
    );

    // The parked member resumes on the other node: all four, in order, once.
    let mut back = Client::connect(&n1.ws("/ws")).await;
    back.last_seq = parked_seen;
    back.send(&resume_message(&parked_info.resume_token, parked_seen))
        .await;
    for data in &blobs {
        match back.recv_message().await {
            ServerMessage::Broadcast { from, data: got } => {
                assert_eq!(from, sender_info.peer_id);
                assert_eq!(&got, data, "replayed in order");
            }
            other => panic!("expected a replayed broadcast, got {other:?}"),
        }
    }
    match back.recv_message().await {
        ServerMessage::Resumed { replayed, .. } => assert_eq!(replayed, 4),
        other => panic!("expected resumed, got {other:?}"),
    }

    // Everyone leaves: the bodies go with the outboxes.
    for client in [&mut sender, &mut a, &mut back] {
        client.send(&ClientMessage::Leave { id: None }).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = redis
            .keys()
            .into_iter()
            .filter(|key| key.starts_with("sig:{shared}:"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "keys left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An outbox whose byte count drifted above what it holds (never so, but a script error there
/// would fail every later broadcast to the room) is emptied, and the room goes on.
#[tokio::test]
async fn an_outbox_count_that_drifted_does_not_break_the_room() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &[]);
    let path = "/ws/drift";
    let ((mut a, a_info), (mut b, _)) = Client::pair(&n1.ws(path), &n2.ws(path)).await;
    for key in redis.keys() {
        if key.starts_with("sig:{drift}:s:") {
            redis.cli(&["HSET", &key, "bytes", "100000000"]);
        }
    }
    for n in 0..2 {
        a.send(&ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::json!({"n": n, "blob": "z".repeat(2_000)}),
        })
        .await;
        match b.recv_message().await {
            ServerMessage::Broadcast { from, data } => {
                assert_eq!(from, a_info.peer_id);
                assert_eq!(data["n"], n);
            }
            other => panic!("expected the broadcast, got {other:?}"),
        }
    }
    a.expect_silence(Duration::from_millis(200)).await;
}

/// A new member joins `room` on `node`, once each of `members` has seen it arrive.
async fn join_seen_by(
    node: &Server,
    room: &str,
    members: [&mut Client; 2],
) -> (Client, SessionInfo) {
    let joined = Client::join(&node.ws(&format!("/ws/{room}")), None).await;
    for member in members {
        loop {
            if let ServerMessage::PeerJoined { peer, .. } = member.recv_message().await
                && peer.id == joined.1.peer_id
            {
                break;
            }
        }
    }
    joined
}

/// A session that moves to another node by a resume counts there from then on, and no longer
/// on the node it left: in sessions, and among its address's sessions (`--max-sessions-per-ip`
/// holds per node for resumes too, or sessions moved over would escape every limit).
#[tokio::test]
async fn a_moved_session_counts_where_it_is_and_resumes_obey_the_limits() {
    let redis = RedisServer::start();
    let limits = ["--resume-grace", "30s", "--max-sessions-per-ip", "2"];
    let [n1, n2] = nodes(&redis.url(), &limits);
    // Two sessions on n1, parked there.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (client, info) = Client::join(&n1.ws("/ws/moving"), None).await;
        drop(client);
        tokens.push((info.resume_token, 1));
    }
    metric_becomes(&n1, "signaling_sessions", 2).await;
    // Both resume on n2: they count there, and no longer on n1.
    let mut moved = Vec::new();
    for (token, last_seq) in &tokens {
        let mut client = Client::connect(&n2.ws("/ws/moving")).await;
        client.send(&resume_message(token, *last_seq)).await;
        loop {
            if let ServerMessage::Resumed { .. } = client.recv_message().await {
                break;
            }
        }
        moved.push(client);
    }
    metric_becomes(&n2, "signaling_sessions", 2).await;
    metric_becomes(&n1, "signaling_sessions", 0).await;
    // n1 has room for this address again; n2 has none: two new sessions of n1 cannot move.
    let mut more = Vec::new();
    for _ in 0..2 {
        let (client, info) = Client::join(&n1.ws("/ws/moving"), None).await;
        drop(client);
        more.push(info.resume_token);
    }
    metric_becomes(&n1, "signaling_sessions", 2).await;
    for token in &more {
        let mut client = Client::connect(&n2.ws("/ws/moving")).await;
        client.send(&resume_message(token, 1)).await;
        client.expect_error(ErrorCode::TooManySessions).await;
        assert_eq!(client.expect_close().await, Closed::Code(1013));
    }
    // Refused, they stay where they were: each resumes on n1.
    for token in &more {
        let mut client = Client::connect(&n1.ws("/ws/moving")).await;
        client.send(&resume_message(token, 1)).await;
        loop {
            if let ServerMessage::Resumed { .. } = client.recv_message().await {
                break;
            }
        }
    }
    assert_eq!(n2.metric("signaling_sessions").await, 2);
}

/// Resumes that bring sessions to a node at the same moment hold their places while they run:
/// no more of them get in than the node has room for (`--max-sessions`, `--max-rooms`).
#[tokio::test]
async fn concurrent_resumes_to_one_node_take_at_most_its_free_places() {
    let redis = RedisServer::start();
    let crowd = ["crowd"; 8];
    let outcomes = concurrent_moves(&redis, &["--max-sessions", "3"], &crowd).await;
    assert_moved(&outcomes, 3, ErrorCode::TooManySessions);
    // Six sessions of six rooms to a node with room for two rooms.
    let rooms = ["r1", "r2", "r3", "r4", "r5", "r6"];
    let outcomes = concurrent_moves(&redis, &["--max-rooms", "2"], &rooms).await;
    assert_moved(&outcomes, 2, ErrorCode::TooManyRooms);
}

/// `moved` of the resumes got in, and the others were refused with `refused`.
fn assert_moved(outcomes: &[Result<(), ErrorCode>], moved: usize, refused: ErrorCode) {
    let resumed = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(resumed, moved, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| *o == Ok(()) || *o == Err(refused)),
        "{outcomes:?}"
    );
}

/// Joins a session to each of `rooms` on a fresh node, parks them, and resumes them all at
/// once on another fresh node started with `limits`: each resume's outcome.
async fn concurrent_moves(
    redis: &RedisServer,
    limits: &[&str],
    rooms: &[&str],
) -> Vec<Result<(), ErrorCode>> {
    let grace = ["--resume-grace", "30s"];
    let from = node(&redis.url(), &grace);
    let to = node(&redis.url(), &[&grace[..], limits].concat());
    let mut tokens = Vec::new();
    for room in rooms {
        let (client, info) = Client::join(&from.ws(&format!("/ws/{room}")), None).await;
        drop(client);
        tokens.push(info.resume_token);
    }
    metric_becomes(&from, "signaling_sessions", rooms.len() as u64).await;
    let mut clients = Vec::new();
    for room in rooms {
        clients.push(Client::connect(&to.ws(&format!("/ws/{room}"))).await);
    }
    // All the resumes on their way before any answer.
    for (client, token) in clients.iter_mut().zip(&tokens) {
        client.send(&resume_message(token, 1)).await;
    }
    let outcomes = futures_util::future::join_all(clients.iter_mut().map(|client| async {
        loop {
            match client.recv_message().await {
                ServerMessage::Resumed { .. } => return Ok(()),
                ServerMessage::Error { code, .. } => return Err(code),
                _ => {}
            }
        }
    }))
    .await;
    let moved = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    metric_becomes(&to, "signaling_sessions", moved).await;
    metric_becomes(&from, "signaling_sessions", rooms.len() as u64 - moved).await;
    outcomes
}

/// PUBLISH calls Redis ran so far (the scripts' included).
fn publishes(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:"))
        .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn script_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn an_unknown_peer_answer_is_written_by_the_script_that_found_the_peer_missing() {
    // One script per signal, the answer included: a node lost after the check cannot drop the
    // answer, which is in the sender's outbox (and so in its replay) from the same atomic step.
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &[]);
    let (mut a, _) = Client::join(&n1.ws("/ws/alone"), None).await;
    const SIGNALS: u64 = 40;
    let before = script_calls(&redis);
    for id in 1..=SIGNALS {
        a.send(&signal_request(id, "nobody", candidate(1))).await;
    }
    for id in 1..=SIGNALS {
        match a.expect_error(ErrorCode::UnknownPeer).await.message {
            ServerMessage::Error { reference, .. } => assert_eq!(reference, Some(id)),
            _ => unreachable!(),
        }
    }
    // Heartbeats and acks add a few calls; a second call per answer would add 40.
    let calls = script_calls(&redis) - before;
    assert!(
        calls < SIGNALS + SIGNALS / 2,
        "{calls} scripts for {SIGNALS} unknown-peer signals"
    );
}

/// `GET /v1/rooms` lists the same rooms whichever node answers: every node's index is read,
/// sorted, the first 1000 listed, and `total` counts them all.
#[tokio::test]
async fn every_node_lists_the_same_first_rooms_and_the_total() {
    use futures_util::StreamExt as _;
    let redis = RedisServer::start();
    let generous = [
        "--api-key",
        "k",
        "--join-rate-per-ip",
        "100000",
        "--join-burst-per-ip",
        "100000",
        "--max-sessions-per-ip",
        "100000",
        "--resume-grace",
        "60s",
    ];
    let [n1, n2] = nodes(&redis.url(), &generous);
    // 1002 rooms on the first node; the two rooms that sort first, on the second.
    let rooms: Vec<(std::net::SocketAddr, String)> = (0..1002)
        .map(|i| (n1.addr, format!("m{i:04}")))
        .chain((0..2).map(|i| (n2.addr, format!("a{i}"))))
        .collect();
    futures_util::stream::iter(rooms)
        .for_each_concurrent(32, |(addr, room)| async move {
            crate::http_client::open_as(addr, &room, "p").await;
        })
        .await;
    let mut answers = Vec::new();
    for server in [&n1, &n2] {
        let headers = [("Authorization", "Bearer k")];
        let (status, _, body) =
            crate::support::http_request(server.addr, "GET", "/v1/rooms", &headers, "").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(view["total"], 1004, "{}", &body[..200.min(body.len())]);
        let listed: Vec<String> = view["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| r["room"].as_str().expect("room").to_owned())
            .collect();
        assert_eq!(listed.len(), 1000);
        assert_eq!(listed[..3], ["a0", "a1", "m0000"]);
        answers.push(listed);
    }
    assert_eq!(answers[0], answers[1], "both nodes list the same rooms");
}

/// After a Redis outage longer than the room keys' TTL could bear, a room may be gone from Redis
/// while its clients are still attached. A resume renews the room's keys (their TTL may be
/// nearly spent when Redis comes back), and a session found missing from Redis, whether by a
/// request of its own or by the node's periodic renewal, has its socket closed with 1008: its
/// resume is refused and the client joins afresh, instead of talking to nobody unawares.
#[tokio::test]
async fn a_room_gone_from_redis_closes_its_sockets_and_a_resume_renews_the_room() {
    let redis = RedisServer::start();
    // Keys live --resume-grace + 60 s (61 s): each node renews its rooms every 15 s.
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "1s"]);
    let pttl = || {
        redis
            .cli(&["PTTL", "sig:{vanish}:m"])
            .trim()
            .parse::<i64>()
            .expect("PTTL")
    };
    let (a, a_info) = Client::join(&n1.ws("/ws/vanish"), None).await;
    let (mut b, _) = Client::join(&n2.ws("/ws/vanish"), None).await;
    // A's socket goes; its TTL nearly spent, the room is renewed by A's resume on n2.
    let last_seq = a.last_seq;
    a.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.cli(&["PEXPIRE", "sig:{vanish}:m", "5000"]);
    let mut a = Client::connect(&n2.ws("/ws")).await;
    a.send(&resume_message(&a_info.resume_token, last_seq))
        .await;
    loop {
        if let ServerMessage::Resumed { .. } = a.recv_message().await {
            break;
        }
    }
    assert!(
        pttl() > 30_000,
        "the resume did not renew the room: {} ms",
        pttl()
    );

    // The room vanishes from Redis. B's next request finds its session gone: closed.
    let (mut c, _) = Client::join(&n1.ws("/ws/idle"), None).await;
    for room in ["vanish", "idle"] {
        let keys = redis.cli(&["KEYS", &format!("sig:{{{room}}}:*")]);
        for key in keys.split_whitespace() {
            redis.cli(&["DEL", key]);
        }
    }
    b.send(&ClientMessage::Broadcast {
        id: None,
        cseq: None,
        data: serde_json::json!("anyone?"),
    })
    .await;
    expect_lost(&mut b).await;
    let mut again = Client::connect(&n1.ws("/ws")).await;
    again
        .send(&resume_message(&a_info.resume_token, a.last_seq))
        .await;
    again.expect_error(ErrorCode::ResumeFailed).await;
    // C says nothing: n1's next renewal of its rooms (within 15 s) finds it gone.
    let started = Instant::now();
    while n1.metric("signaling_cluster_sessions_vanished_total").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "C still attached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_lost(&mut c).await;
}

/// The end of a session a cluster lost: `resume_failed` (seq 0), then the close with 1008.
async fn expect_lost(client: &mut Client) {
    let closed = client.one_error_then_close(ErrorCode::ResumeFailed).await;
    assert_eq!(closed, Closed::Code(1008));
}

/// A session gone from Redis with a tombstone was ended on purpose (kicked, slow consumer...):
/// its end, with its own error, is on its way to its node, so a request meanwhile is not taken
/// for a lost session (`resume_failed` would tell a kicked client to join again).
#[tokio::test]
async fn a_session_ended_on_purpose_is_not_taken_for_lost() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &[]);
    let (mut a, _) = Client::join(&n1.ws("/ws/tombstoned"), None).await;
    let session = redis.cli(&["KEYS", "sig:{tombstoned}:s:*"]);
    let sid = session
        .trim()
        .rsplit(':')
        .next()
        .expect("a session key")
        .to_owned();
    // What an end leaves in Redis before its node has heard of it.
    redis.cli(&[
        "SET",
        &format!("sig:{{tombstoned}}:t:{sid}"),
        "kicked x",
        "PX",
        "30000",
    ]);
    redis.cli(&["DEL", session.trim()]);
    a.send(&ClientMessage::Broadcast {
        id: None,
        cseq: None,
        data: serde_json::json!("still here?"),
    })
    .await;
    a.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(
        n1.metric("signaling_cluster_sessions_vanished_total").await,
        0
    );
}

/// A node on `redis` whose lease (30 s) outlives the hangs of a test (nobody is adopted: it
/// parks its own sessions), with `--redis-timeout redis_timeout` and `extra`.
fn node_outliving_hangs(redis: &RedisServer, redis_timeout: &str, extra: &[&str]) -> Server {
    node_timed(&redis.url(), "30s", redis_timeout, extra)
}

/// Two nodes whose clients A and B a hang of Redis cut off ([`cut_off_by_a_hang`]).
struct HangCut {
    n1: Server,
    n2: Server,
    /// The path of the room.
    path: String,
    /// A's session, on the first node, and the last seq its client saw.
    a_info: SessionInfo,
    a_seen: u64,
    /// B's session, on the second node, and the last seq its client saw.
    b_info: SessionInfo,
    b_seen: u64,
    /// Hanging; stopped after the nodes (fields drop in order).
    redis: RedisServer,
}

impl HangCut {
    /// Redis answers `after` the cut; returns when it did.
    async fn answer_after(&self, after: Duration) -> Instant {
        tokio::time::sleep(after).await;
        self.redis.thaw();
        Instant::now()
    }

    /// Resumes A on its node once that is ready again: the client and what it replayed.
    async fn resume_a(&self) -> (Client, Vec<ServerMessage>) {
        resume_when_ready(&self.n1, &self.path, &self.a_info.resume_token, self.a_seen).await
    }

    /// Resumes B on its node once that is ready again: the client and what it replayed.
    async fn resume_b(&self) -> (Client, Vec<ServerMessage>) {
        resume_when_ready(&self.n2, &self.path, &self.b_info.resume_token, self.b_seen).await
    }
}

/// Two nodes on a Redis of their own, with a lease longer than the hangs below (nobody is
/// adopted: each node parks its own sessions), `--redis-timeout redis_timeout` and
/// `resume_grace`; A joins `room` on the first, B on the second, and B parks and resumes once,
/// so Redis knows the park script (a node sends only its hash: a script Redis does not know
/// fails without running). Then Redis hangs, both sockets are cut (1013) and their clients go.
async fn cut_off_by_a_hang(redis_timeout: &str, resume_grace: &str, room: &str) -> HangCut {
    let redis = RedisServer::start();
    let n = || node_outliving_hangs(&redis, redis_timeout, &["--resume-grace", resume_grace]);
    let (n1, n2) = (n(), n());
    let path = format!("/ws/{room}");
    let (mut a, a_info) = Client::join(&n1.ws(&path), None).await;
    let (b, b_info) = Client::join(&n2.ws(&path), None).await;
    let _ = a.recv_message().await;
    let b_seen = b.last_seq;
    drop(b);
    let url = n2.ws(&path);
    let mut b = resume_expecting(&url, &b_info, b_seen, &a_info.peer_id, 0..0).await;
    let (a_seen, b_seen) = (a.last_seq, b.last_seq);
    redis.freeze();
    // Within the heartbeat and `redis_timeout`.
    for client in [&mut b, &mut a] {
        let (_, closed) = client.frames_for(Duration::from_secs(10)).await;
        assert_eq!(closed, Some(Closed::Code(1013)));
    }
    HangCut {
        redis,
        n1,
        n2,
        path,
        a_info,
        a_seen,
        b_info,
        b_seen,
    }
}

/// A park that a hanging Redis answers late, within `--redis-timeout`: the session's grace is
/// counted from the answer, not from when the park was sent.
#[tokio::test]
async fn a_session_parked_while_redis_hangs_gets_its_grace_from_the_answer() {
    let cut = cut_off_by_a_hang("6s", "4s", "latepark").await;
    // The parks went out as the sockets were cut; Redis answers 3 s later, within the 6 s
    // timeout, and both come back 2.5 s after that: past the 4 s grace counted from the cut
    // (by 1.5 s), within the one counted from the answer (by 1.5 s).
    let answered = cut.answer_after(Duration::from_secs(3)).await;
    ready_again(&cut.n1).await;
    ready_again(&cut.n2).await;
    tokio::time::sleep_until((answered + Duration::from_millis(2500)).into()).await;
    let ((_b, b_replayed), (_a, a_replayed)) = tokio::join!(cut.resume_b(), cut.resume_a());
    assert!(b_replayed.is_empty(), "{b_replayed:?}");
    // A never saw B leave.
    assert!(a_replayed.is_empty(), "{a_replayed:?}");
}

/// A park that Redis ran after its node gave up waiting (the hang outlasted `--redis-timeout`)
/// is sent again when Redis answers: the session is parked on its node again, so the others see
/// it leave one grace period after the answer (not when the node's index check finds it, two
/// leases later).
#[tokio::test]
async fn a_session_whose_park_redis_ran_late_leaves_one_grace_after_the_answer() {
    let cut = cut_off_by_a_hang("500ms", "3s", "lateleave").await;
    let answered = cut.answer_after(Duration::from_secs(2)).await;
    ready_again(&cut.n2).await;
    let (mut a, _) = cut.resume_a().await;
    expect_disconnected(&mut a, &cut.b_info.peer_id, Duration::from_secs(10)).await;
    let after = answered.elapsed();
    assert!(
        after > Duration::from_secs(2) && after < Duration::from_secs(8),
        "B left {after:?} after Redis answered (grace 3 s)"
    );
}

/// When a hang of Redis cuts a node's clients off, a pending long-poll is answered (`close`
/// 1013) and an event stream ends right after its `close` event, with the WebSockets: not
/// after the park of their session, which waits on Redis.
#[tokio::test]
async fn http_clients_cut_off_by_a_hang_are_answered_with_the_websockets() {
    use crate::http_client::{self, Event, Sse};
    let redis = RedisServer::start();
    let n1 = node_outliving_hangs(&redis, "3s", &["--api-key", "k"]);
    let (mut ws, _) = Client::join(&n1.ws("/ws/httpcut"), None).await;
    let streaming = http_client::open_as(n1.addr, "httpcut", "S").await;
    let mut sse = Sse::connect(n1.addr, &streaming, None).await;
    let _welcome = sse.frame().await;
    let polling = http_client::open_as(n1.addr, "httpcut", "P").await;
    let seen = http_client::poll(n1.addr, &polling, 0).await;
    let last = seen.frames.last().map_or(0, |f| f.seq);
    let addr = n1.addr;
    let session = polling.clone();
    let pending = tokio::spawn(async move {
        let reply = http_client::poll(addr, &session, last).await;
        (reply, Instant::now())
    });
    // The poll is waiting on the node (no frame is due): P shows attached.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let auth = [("Authorization", "Bearer k")];
        let (_, _, body) =
            crate::support::http_request(n1.addr, "GET", "/v1/rooms/httpcut", &auth, "").await;
        let room: serde_json::Value = serde_json::from_str(&body).expect("the room as JSON");
        let peers = room["peers"].as_array().cloned().unwrap_or_default();
        if peers
            .iter()
            .any(|p| p["name"] == "P" && p["state"] == "attached")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the poll never attached: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.freeze();
    assert_eq!(ws.close_after_frames().await, Closed::Code(1013));
    let cut = Instant::now();
    loop {
        match sse.next_within(Duration::from_secs(10)).await {
            Some(Event::Close(code)) => {
                assert_eq!(code, 1013);
                break;
            }
            Some(Event::Frame { .. }) => {}
            None => panic!("the stream ended without its close event"),
        }
    }
    assert!(sse.next_within(Duration::from_secs(10)).await.is_none());
    let ended = cut.elapsed();
    let (reply, answered) = pending.await.expect("poll task");
    assert_eq!(reply.close, Some(1013), "{:?}", reply.frames);
    let answered = answered.saturating_duration_since(cut);
    // Not the 3 s `--redis-timeout` of the park later.
    assert!(
        ended < Duration::from_millis(2500),
        "stream ended {ended:?} after the cut"
    );
    assert!(
        answered < Duration::from_millis(2500),
        "poll answered {answered:?} after the cut"
    );
    // A send while the node knows Redis is away is refused at once, as a new poll is.
    let sending = Instant::now();
    let ping = ClientMessage::Ping { id: Some(1) };
    let refused = http_client::send(n1.addr, &polling, &[ping]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        matches!(
            refused.error().message,
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{}",
        refused.body
    );
    let sent = sending.elapsed();
    assert!(sent < Duration::from_millis(2500), "refused after {sent:?}");
    redis.thaw();
}

/// A resume that reaches a node while Redis hangs is refused (`unavailable`) before anything
/// that could attach the session there is sent; its client gives up. Once Redis answers, the
/// session is where it was (parked) and the others see it leave after the grace period.
#[tokio::test]
async fn a_resume_sent_while_redis_hangs_leaves_no_ghost_in_the_room() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "3s"]);
    let (a, a_info) = Client::join(&n2.ws("/ws/ghost"), None).await;
    let (b, b_info) = Client::join(&n2.ws("/ws/ghost"), None).await;
    let b_seen = b.last_seq;
    drop(b);
    // Redis knows the resume script (a node sends only its hash: a script Redis does not know
    // fails without running).
    let url = n2.ws("/ws/ghost");
    let b = resume_expecting(&url, &b_info, b_seen, &a_info.peer_id, 0..0).await;
    let a_seen = a.last_seq;
    drop(b); // parked on n2
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.freeze();
    let mut b = Client::connect(&n1.ws("/ws/ghost")).await;
    b.send(&resume_message(&b_info.resume_token, b_seen)).await;
    let _ = b.errors_then_close().await;
    drop(b); // and its client gives up
    drop(a);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.thaw();
    let (mut a, _) = resume_when_ready(&n2, "/ws/ghost", &a_info.resume_token, a_seen).await;
    expect_disconnected(&mut a, &b_info.peer_id, Duration::from_secs(20)).await;
}

/// The same for a join: refused before its script is sent, it leaves nothing in the room.
#[tokio::test]
async fn a_join_sent_while_redis_hangs_leaves_no_ghost_in_the_room() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "3s"]);
    let (a, a_info) = Client::join(&n2.ws("/ws/ghostjoin"), None).await;
    let a_seen = a.last_seq;
    redis.freeze();
    let mut c = Client::connect(&n1.ws("/ws/ghostjoin")).await;
    c.send(&join_message("ghostjoin")).await;
    let _ = c.errors_then_close().await;
    drop(c);
    drop(a);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.thaw();
    let (mut a, replayed) =
        resume_when_ready(&n2, "/ws/ghostjoin", &a_info.resume_token, a_seen).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    a.expect_silence(Duration::from_secs(2)).await;
    let (_d, d_info) = Client::join(&n1.ws("/ws/ghostjoin"), None).await;
    let peers: Vec<&PeerId> = d_info.peers.iter().map(|p| &p.id).collect();
    assert_eq!(peers, [&a_info.peer_id]);
}

/// What a join or resume leaves when Redis runs it after its node gave up waiting (the freeze
/// came between the node's index write and the script): the session attached to a node that
/// does not hold it, its client gone. The node finds it in its index and parks it: the others
/// see the peer leave after the resume grace period, instead of keeping a member nobody holds
/// for as long as the room lives. The index also holds 10,000 stale entries (sessions that
/// ended), more than one `SSCAN` reads: the node finds its orphan among them and removes them
/// all, and reading and handling them never holds up the renewal of its lease (when it did,
/// the other node took it for dead and adopted its sessions).
#[tokio::test]
async fn a_session_attached_to_a_node_that_does_not_hold_it_is_parked() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &["--node-id", "one", "--resume-grace", "3s"]);
    let n2 = node(&redis.url(), &["--resume-grace", "3s"]);
    let (mut a, b_info) = peer_and_a_parked_one(&n2, &n2, "orphan").await;
    let one = node_named(&redis, "one");
    let session = redis.cli(&["KEYS", "sig:{orphan}:s:*"]);
    let key = session
        .lines()
        .find(|key| redis.cli(&["HGET", key, "peer"]) == b_info.peer_id.as_str())
        .expect("B's session")
        .to_owned();
    let sid = key.rsplit(':').next().unwrap().to_owned();
    redis.cli(&["HSET", &key, "node", &one, "conn", "999", "state", "a"]);
    let index = format!("sig:node:{one}:sessions");
    for batch in 0..20u64 {
        let stale: Vec<String> = (0..500u64)
            .map(|i| format!("stale\t{:016x}", 0x5ea1_0000 + batch * 500 + i))
            .collect();
        let mut args = vec!["SADD", index.as_str()];
        args.extend(stale.iter().map(String::as_str));
        redis.cli(&args);
    }
    redis.cli(&["SADD", &index, &format!("orphan\t{sid}")]);
    assert_eq!(redis.cli(&["SCARD", &index]), "10001");
    expect_disconnected(&mut a, &b_info.peer_id, Duration::from_secs(20)).await;
    assert_eq!(
        n1.metric("signaling_cluster_sessions_orphaned_total").await,
        1
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis
        .cli(&["SSCAN", &index, "0", "MATCH", "stale*", "COUNT", "20000"])
        .lines()
        .count()
        > 1
    {
        assert!(Instant::now() < deadline, "stale index entries left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lease_lost = "signaling_cluster_outages_total{reason=\"lease_lost\"}";
    assert_eq!(n1.metric(lease_lost).await, 0);
    assert_eq!(
        n2.metric("signaling_cluster_sessions_adopted_total").await,
        0
    );
}

/// Resumes session `token` on `server` once it is ready again after a Redis outage; returns
/// the client and what it replayed.
async fn resume_when_ready(
    server: &Server,
    path: &str,
    token: &ResumeToken,
    last_seq: u64,
) -> (Client, Vec<ServerMessage>) {
    ready_again(server).await;
    let mut client = Client::connect(&server.ws(path)).await;
    client.last_seq = last_seq;
    client.send(&resume_message(token, last_seq)).await;
    let mut replayed = Vec::new();
    loop {
        match client.recv_message().await {
            ServerMessage::Resumed { .. } => return (client, replayed),
            message => replayed.push(message),
        }
    }
}

/// Waits (10 s at most) for `server` to be ready again after a Redis outage.
async fn ready_again(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `leave` that waited on a frozen Redis is answered `unavailable`, and carried out once
/// Redis answers: the others see the peer leave (reason `left`) instead of keeping a member
/// nobody holds.
#[tokio::test]
async fn a_leave_redis_did_not_take_is_carried_out_when_it_answers() {
    leave_in_a_hang_is_carried_out("ghostleave", false).await;
}

/// The same for a `leave` sent behind another request (an `ack`) that the hang failed: the
/// socket is closed after that one's `unavailable`, and the `leave`, read while the close waits
/// for the client's, is carried out once Redis answers.
#[tokio::test]
async fn a_leave_behind_a_failed_request_is_carried_out_when_redis_answers() {
    leave_in_a_hang_is_carried_out("ghostleave2", true).await;
}

/// B (on one node) sends `leave` while Redis hangs, behind an `ack` if `behind_ack`; A (on the
/// other) must see B leave with reason `left` once Redis answers.
async fn leave_in_a_hang_is_carried_out(room: &str, behind_ack: bool) {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &["--resume-grace", "30s"]);
    let path = format!("/ws/{room}");
    let (a, a_info) = Client::join(&n2.ws(&path), None).await;
    let (mut b, b_info) = Client::join(&n1.ws(&path), None).await;
    let a_seen = a.last_seq;
    redis.freeze();
    if behind_ack {
        b.send(&ClientMessage::Ack { seq: b.last_seq }).await;
    }
    b.send(&ClientMessage::Leave { id: Some(5) }).await;
    b.one_error_then_close(ErrorCode::Unavailable).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.thaw();
    let (mut a, replayed) = resume_when_ready(&n2, &path, &a_info.resume_token, a_seen).await;
    // B's `peer_joined`, then its `peer_left`: replayed, or just after.
    let mut left = replayed
        .into_iter()
        .find(|m| matches!(m, ServerMessage::PeerLeft { .. }));
    if left.is_none() {
        left = a
            .recv_within(Duration::from_secs(10))
            .await
            .map(|f| f.message);
    }
    assert_peer_left(left, &b_info.peer_id, LeaveReason::Left);
}

/// Two sockets resume one session at the same instant, on two nodes (the node whose script
/// Redis ran first may read the other's takeover before its own answer) or on one: exactly one
/// holds the session and gets every later frame; the other is closed with 1008.
#[tokio::test]
async fn simultaneous_resumes_of_one_session_leave_one_socket_holding_it() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis.url(), &[]);
    metric_becomes(&n1, "signaling_cluster_nodes", 2).await;
    let signals = |frames: &[ServerFrame]| {
        frames
            .iter()
            .filter(|f| matches!(f.message, ServerMessage::Signal { .. }))
            .count()
    };
    for round in 0..16 {
        let other = if round % 4 == 3 { &n1 } else { &n2 };
        let path = format!("/ws/twice-{round}");
        let ((mut a, _), (b, b_info)) = Client::pair(&n1.ws(&path), &n1.ws(&path)).await;
        let last = b.last_seq;
        drop(b);
        let (x_url, y_url) = (n1.ws(&path), other.ws(&path));
        let (mut x, mut y) = tokio::join!(Client::connect(&x_url), Client::connect(&y_url));
        let resume = resume_message(&b_info.resume_token, last);
        tokio::join!(x.send(&resume), y.send(&resume));
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..3 {
            signal(&mut a, &b_info.peer_id, candidate(i)).await;
        }
        // Read both until one is closed and the other has the signals (the loser's close
        // may cross nodes through Redis), for up to 10 s, then 300 ms more for a duplicate.
        let (mut x_frames, mut x_closed, mut y_frames, mut y_closed) = (vec![], None, vec![], None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut settled_once = false;
        loop {
            let step = Duration::from_millis(300);
            let read = async |c: &mut Client, closed: &Option<Closed>| match closed {
                None => c.frames_for(step).await,
                Some(_) => (Vec::new(), None),
            };
            let ((xf, xc), (yf, yc)) =
                tokio::join!(read(&mut x, &x_closed), read(&mut y, &y_closed));
            x_frames.extend(xf);
            y_frames.extend(yf);
            x_closed = x_closed.or(xc);
            y_closed = y_closed.or(yc);
            let settled = match (&x_closed, &y_closed) {
                (None, Some(_)) => signals(&x_frames) >= 3,
                (Some(_), None) => signals(&y_frames) >= 3,
                (Some(_), Some(_)) => true,
                (None, None) => false,
            };
            if (settled && settled_once) || Instant::now() >= deadline {
                break;
            }
            settled_once = settled;
        }
        let outcome = format!(
            "round {round}: first socket {x_closed:?} after {} signals, second {y_closed:?} after {}",
            signals(&x_frames),
            signals(&y_frames)
        );
        match (x_closed, y_closed) {
            (None, Some(Closed::Code(1008))) => assert_eq!(signals(&x_frames), 3, "{outcome}"),
            (Some(Closed::Code(1008)), None) => assert_eq!(signals(&y_frames), 3, "{outcome}"),
            _ => panic!("{outcome}"),
        }
    }
}

/// A session held by a node but missing from its index (which another node adopts from if
/// this one dies) is put back by the reconciliation: a resume that lost a race on another node
/// removes the index entry the winner's node had just added.
#[tokio::test]
async fn a_session_missing_from_its_nodes_index_is_put_back() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &["--node-id", "one"]);
    let (_a, _) = Client::join(&n1.ws("/ws/unlisted"), None).await;
    let one = node_named(&redis, "one");
    let index = format!("sig:node:{one}:sessions");
    let entry = redis.cli(&["SMEMBERS", &index]);
    assert!(entry.starts_with("unlisted\t"), "{entry}");
    redis.cli(&["SREM", &index, entry.trim()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["SMEMBERS", &index]).trim() != entry.trim() {
        assert!(Instant::now() < deadline, "the entry was never put back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A session parked on one node and ended through another (here an operator's kick; also an
/// HTTP `leave`) stops counting on its node at once, not at its parking deadline.
#[tokio::test]
async fn a_parked_session_ended_through_another_node_stops_counting_at_once() {
    let redis = RedisServer::start();
    let n1 = node(&redis.url(), &["--api-key", "k", "--resume-grace", "30s"]);
    let n2 = node(&redis.url(), &["--resume-grace", "30s"]);
    let (_a, b_info) = peer_and_a_parked_one(&n1, &n2, "counted").await;
    metric_becomes(&n2, "signaling_sessions", 1).await;
    let kick = format!("/v1/rooms/counted/peers/{}/kick", b_info.peer_id);
    let (status, _, body) =
        crate::support::http_request(n1.addr, "POST", &kick, &[("Authorization", "Bearer k")], "")
            .await;
    assert_eq!(status, 200, "{body}");
    metric_becomes(&n2, "signaling_sessions", 0).await;
}
