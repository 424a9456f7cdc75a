//! y-webrtc compatibility (`/y-webrtc`), spoken as y-webrtc's client speaks it: subscribe to
//! topics, publish to a topic's other subscribers, ping. In a cluster run the clients sit on
//! different nodes. The real library runs in the browser tests.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use signaling::protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{STEP, Server, metric_becomes};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// The next JSON message within `limit`, skipping pings.
async fn next(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("JSON")),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            _ => return None,
        }
    }
}

/// Subscribes, and waits until the subscription is in place (a ping after it is answered).
async fn subscribe(ws: &mut Ws, topics: &[&str]) {
    send(ws, json!({"type":"subscribe","topics":topics})).await;
    send(ws, json!({"type":"ping"})).await;
    assert_eq!(next(ws, STEP).await, Some(json!({"type":"pong"})));
}

/// Publishes `[n, blob]` to `topic`, for n from 0 to `count` - 1.
async fn publish_numbered(ws: &mut Ws, topic: &str, count: u32, blob: &str) {
    for n in 0..count {
        send(ws, json!({"type":"publish","topic":topic,"data":[n, blob]})).await;
    }
}

/// The `count` publishes of [`publish_numbered`], in order.
async fn expect_numbered(ws: &mut Ws, count: u32) {
    for n in 0..count {
        assert_eq!(next(ws, STEP).await.expect("a publish")["data"][0], n);
    }
}

/// Two y-webrtc clients of `server` (of its nodes in turn), both subscribed to `topic`.
async fn two_subscribers(server: &Server, topic: &str) -> (Ws, Ws) {
    let (mut a, mut b) = (
        connect(&server.ws("/y-webrtc")).await,
        connect(&server.ws("/y-webrtc")).await,
    );
    subscribe(&mut a, &[topic]).await;
    subscribe(&mut b, &[topic]).await;
    (a, b)
}

#[tokio::test]
async fn y_webrtc_publishes_reach_the_other_subscribers_of_the_topic_only() {
    let server = Server::start(&[]);
    let url = || server.ws("/y-webrtc");
    let (mut a, mut b, mut c) = (
        connect(&url()).await,
        connect(&url()).await,
        connect(&url()).await,
    );
    subscribe(&mut a, &["shared notes / ü"]).await;
    subscribe(&mut b, &["shared notes / ü", "second"]).await;
    subscribe(&mut c, &["other"]).await;
    let offer = json!({"type":"signal","from":"a-peer","to":"b-peer","signal":{"type":"offer","sdp":"v=0"}});
    let publish = json!({"type":"publish","topic":"shared notes / ü","data":offer});
    send(&mut a, publish.clone()).await;
    assert_eq!(next(&mut b, STEP).await, Some(publish));
    // Not echoed to the sender, not leaked to another topic.
    assert_eq!(next(&mut a, Duration::from_millis(300)).await, None);
    assert_eq!(next(&mut c, Duration::from_millis(100)).await, None);
    // In order, many of them.
    for n in 0..100 {
        send(
            &mut b,
            json!({"type":"publish","topic":"shared notes / ü","data":{"n":n}}),
        )
        .await;
    }
    for n in 0..100 {
        let got = next(&mut a, STEP).await.expect("publish");
        assert_eq!(got["data"]["n"], n);
    }
    // Unsubscribed: nothing more.
    send(
        &mut a,
        json!({"type":"unsubscribe","topics":["shared notes / ü"]}),
    )
    .await;
    send(&mut a, json!({"type":"ping"})).await;
    assert_eq!(next(&mut a, STEP).await, Some(json!({"type":"pong"})));
    send(
        &mut b,
        json!({"type":"publish","topic":"shared notes / ü","data":{}}),
    )
    .await;
    assert_eq!(next(&mut a, Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn y_webrtc_bad_input_closes_that_connection_only() {
    let server = Server::start(&["--max-message-bytes", "4096"]);
    let url = || server.ws("/y-webrtc");
    let (mut a, mut b) = two_subscribers(&server, "t").await;
    for bad in [
        Message::text("{not json"),
        Message::text(r#"{"type":"dance"}"#),
        Message::binary(vec![1u8, 2, 3]),
        Message::text(format!(
            r#"{{"type":"publish","topic":"t","data":"{}"}}"#,
            "x".repeat(8000)
        )),
    ] {
        let mut bad_client = connect(&url()).await;
        bad_client.send(bad).await.expect("send");
        let closed = close_code(&mut bad_client, STEP).await;
        assert!(matches!(closed, Some(1007..=1009)), "{closed:?}");
    }
    // The others are undisturbed.
    send(
        &mut a,
        json!({"type":"publish","topic":"t","data":{"still":"here"}}),
    )
    .await;
    assert_eq!(
        next(&mut b, STEP).await.expect("publish")["data"]["still"],
        "here"
    );
    assert!(server.errors(ErrorCode::InvalidMessage).await >= 1);
    assert_eq!(server.errors(ErrorCode::BinaryNotSupported).await, 1);
}

/// A topic name up to 1024 bytes is a topic; a longer one closes the connection (1008), so
/// that what a connection keeps of its topics' names stays small.
#[tokio::test]
async fn y_webrtc_a_topic_name_over_1024_bytes_is_refused() {
    let server = Server::start(&[]);
    let (longest, over) = ("t".repeat(1024), "t".repeat(1025));
    let mut a = connect(&server.ws("/y-webrtc")).await;
    subscribe(&mut a, &[&longest]).await;
    let mut b = connect(&server.ws("/y-webrtc")).await;
    send(&mut b, json!({"type":"subscribe","topics":[over]})).await;
    assert_eq!(
        close_frame(&mut b, STEP).await,
        Some((1008, "topic name too long".to_owned()))
    );
    assert_eq!(server.errors(ErrorCode::InvalidRoomId).await, 1);
}

/// A binary frame on a PeerJS socket is refused as on `/y-webrtc`: `ERROR`, a 1007 close,
/// counted as `binary_not_supported`; the other peers go on.
#[tokio::test]
async fn peerjs_a_binary_frame_closes_that_socket_as_on_y_webrtc() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    bob.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let error = next(&mut bob, STEP).await.expect("ERROR");
    assert_eq!(error["type"], "ERROR", "{error}");
    assert_eq!(close_code(&mut bob, STEP).await, Some(1007));
    assert_eq!(server.errors(ErrorCode::BinaryNotSupported).await, 1);
    assert_eq!(server.errors(ErrorCode::InvalidMessage).await, 0);
    send(&mut alice, json!({"type":"HEARTBEAT"})).await;
    let mut carol = peerjs_open(&server, "app", "carol", "t-carol").await;
    send(&mut carol, candidate(1)).await;
    expect_candidates(&mut alice, 1..2).await;
}

/// A publish is copied to every subscriber: it takes a token of the message rate per started
/// 4 KiB of its data, so big ones cannot flood a topic at the message rate.
#[tokio::test]
async fn y_webrtc_big_publishes_take_a_token_per_4_kib_of_the_message_rate() {
    let server = Server::start(&["--rate-limit", "1"]);
    let (mut a, mut b) = two_subscribers(&server, "weighted").await;
    let blob = "w".repeat(60_000);
    // 2 tokens for the subscribe and the ping, then 15 a publish: the burst (200) takes 13.
    for _ in 0..14 {
        send(
            &mut a,
            json!({"type":"publish","topic":"weighted","data":blob}),
        )
        .await;
    }
    for _ in 0..13 {
        let got = next(&mut b, STEP).await.expect("a publish");
        assert_eq!(got["data"].as_str().map(str::len), Some(60_000));
    }
    assert_eq!(next(&mut b, Duration::from_millis(300)).await, None);
    assert_eq!(
        close_frame(&mut a, STEP).await,
        Some((1008, "rate limited".to_owned()))
    );
    assert!(server.errors(ErrorCode::RateLimited).await >= 1);
}

/// y-webrtc and PeerJS have no acks: the server acknowledges what it wrote, so a client that
/// reads everything holds nothing in the replay buffer or the node's memory budget.
#[tokio::test]
async fn y_webrtc_and_peerjs_frames_written_leave_nothing_in_the_memory_budget() {
    let server = Server::spawn(&[]);
    let (mut a, mut b) = two_subscribers(&server, "kept").await;
    let blob = "k".repeat(5_000);
    publish_numbered(&mut a, "kept", 21, &blob).await;
    expect_numbered(&mut b, 21).await;
    metric_becomes(&server, "signaling_memory_budget_used_bytes", 0).await;

    let mut alice = peerjs(&server, "kept", "alice", "ta").await;
    let mut bob = peerjs(&server, "kept", "bob", "tb").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next(ws, STEP).await.expect("OPEN")["type"], "OPEN");
    }
    for n in 0..3 {
        send(
            &mut bob,
            json!({"type":"OFFER","dst":"alice","payload":[n, blob]}),
        )
        .await;
    }
    for n in 0..3 {
        assert_eq!(
            next(&mut alice, STEP).await.expect("an OFFER")["payload"][0],
            n
        );
    }
    metric_becomes(&server, "signaling_memory_budget_used_bytes", 0).await;
}

/// A subscription the server ends (its client reads too slowly) closes the socket, so that
/// y-webrtc reconnects and subscribes again, even when the client publishes to the topic while
/// the end waits in its queue (that publish finds the subscription gone: it used to drop the
/// topic and leave the socket open, subscribed to nothing, every later publish lost).
#[tokio::test]
async fn y_webrtc_a_subscription_ended_as_slow_consumer_closes_the_socket() {
    let server = Server::start(&[
        "--outbound-queue",
        "8",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let (mut a, mut b) = two_subscribers(&server, "slow").await;
    // A stops reading; B publishes more than A's socket buffers and its queue hold.
    let blob = "s".repeat(60_000);
    for _ in 0..300 {
        send(&mut b, json!({"type":"publish","topic":"slow","data":blob})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.errors(ErrorCode::SlowConsumer).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never fell behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A publishes while the end of its subscription waits behind the frames queued for it.
    for n in 0..5 {
        send(&mut a, json!({"type":"publish","topic":"slow","data":n})).await;
    }
    // A reads again: after what was queued, its socket closes.
    assert_eq!(
        close_frame(&mut a, Duration::from_secs(20)).await,
        Some((1008, "session ended".to_owned()))
    );
}

/// The queues of one y-webrtc socket's topics share `--outbound-queue-bytes`: a socket that
/// stops reading holds that much in all, not that much per topic (an audit held 64 MiB with
/// one socket of 64 topics), and a topic's queue is dropped when its subscription ends.
#[tokio::test]
async fn y_webrtc_a_socket_that_stops_reading_holds_one_queue_whatever_its_topics() {
    let server = Server::start(&[
        "--outbound-queue-bytes",
        "2000000",
        "--replay-max-bytes",
        "100000",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let topics: Vec<String> = (0..8).map(|n| format!("many-{n}")).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (mut a, mut b) = (
        connect(&server.ws("/y-webrtc")).await,
        connect(&server.ws("/y-webrtc")).await,
    );
    subscribe(&mut a, &topics).await;
    subscribe(&mut b, &topics).await;
    // A stops reading; B publishes 19 MB to its topics.
    let blob = "m".repeat(60_000);
    let mut peak = 0;
    for _ in 0..40 {
        for topic in &topics {
            send(&mut b, json!({"type":"publish","topic":topic,"data":blob})).await;
        }
        peak = peak.max(server.metric("signaling_memory_budget_used_bytes").await);
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(server.metric("signaling_memory_budget_used_bytes").await);
    }
    assert!(server.errors(ErrorCode::SlowConsumer).await > 0);
    // 2 MB queued in all and 100 KB kept for replay per topic, and a frame that finds the
    // queue full: 16 MB before, with a queue of 2 MB per topic.
    assert!(peak < 4_000_000, "{peak} bytes held for one socket");
    drop(a);
}

/// A y-webrtc subscription's queue is bounded by `--outbound-queue-bytes` (at
/// `--outbound-queue-bytes` / 256 frames), not by `--outbound-queue` frames: every signal of a
/// y-webrtc room goes to the whole topic, so honest subscribers fall thousands of small
/// frames behind while a room forms.
#[tokio::test]
async fn y_webrtc_queues_are_bounded_by_bytes_not_by_outbound_queue_frames() {
    let server = Server::start(&[
        "--outbound-queue",
        "8",
        "--outbound-queue-bytes",
        "67108864",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let (mut a, mut b) = two_subscribers(&server, "behind").await;
    // A does not read while B publishes far more than the socket buffers hold: the rest waits
    // in A's queue, 18 MB in some hundreds of frames.
    publish_numbered(&mut b, "behind", 300, &"b".repeat(60_000)).await;
    send(&mut b, json!({"type":"ping"})).await;
    assert_eq!(next(&mut b, STEP).await, Some(json!({"type":"pong"})));
    expect_numbered(&mut a, 300).await;
    assert_eq!(server.errors(ErrorCode::SlowConsumer).await, 0);
}

/// Flags of a server whose queues take a flood whole (no `slow_consumer`), with a write
/// timeout a minute off: a write to a client that does not read stalls that long.
const STALLING_WRITES: &[&str] = &[
    "--outbound-queue",
    "100000",
    "--outbound-queue-bytes",
    "200000000",
    "--replay-max-bytes",
    "100000000",
    "--rate-limit",
    "10000",
    "--rate-burst",
    "10000",
    "--ping-interval",
    "10s",
    "--ping-timeout",
    "60s",
];

/// A y-webrtc client that does not read, so that a write to it stalls, is still heard: what it
/// publishes meanwhile reaches the others at once, not after the write timeout (and never, had
/// the stalled write dropped the socket with the publish unread), also behind a ping, whose
/// pong waits for the write.
#[tokio::test]
async fn y_webrtc_a_client_whose_writes_stall_is_still_heard() {
    let server = Server::start(STALLING_WRITES);
    let (mut a, mut b) = two_subscribers(&server, "stall").await;
    // 18 MB for A, which reads none of it: more than the socket buffers take.
    publish_numbered(&mut b, "stall", 300, &"s".repeat(60_000)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from_a = json!({"type":"publish","topic":"stall","data":"from a"});
    send(&mut a, json!({"type":"ping"})).await;
    send(&mut a, from_a.clone()).await;
    assert_eq!(next(&mut b, Duration::from_secs(10)).await, Some(from_a));
    drop(a);
}

/// A PeerJS client that does not read, so that a write to it stalls, is still heard: its
/// messages to other peers go on at once, also behind messages answered (an `EXPIRE`, an
/// `ERROR`), whose answers wait for the write.
#[tokio::test]
async fn peerjs_a_client_whose_writes_stall_is_still_heard() {
    let server = Server::start(STALLING_WRITES);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let blob = "c".repeat(60_000);
    for n in 0..300 {
        let flood = json!({"type":"CANDIDATE","dst":"alice","payload":{"n":n,"blob":blob}});
        send(&mut bob, flood).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut alice, json!({"type":"CANDIDATE","dst":"nobody"})).await;
    send(&mut alice, json!({"type":"NO-SUCH-TYPE"})).await;
    let to_bob = json!({"type":"CANDIDATE","dst":"bob","payload":{"n":7}});
    send(&mut alice, to_bob).await;
    let heard = next(&mut bob, Duration::from_secs(10))
        .await
        .expect("alice heard");
    assert_eq!(
        (&heard["src"], &heard["payload"]["n"]),
        (&json!("alice"), &json!(7))
    );
}

/// A PeerJS client socket (as PeerJS opens it with `path: '/peerjs'`, key `key`).
async fn peerjs(server: &Server, key: &str, id: &str, token: &str) -> Ws {
    connect(&server.ws(&format!(
        "/peerjs/peerjs?key={key}&id={id}&token={token}&version=1.5.5"
    )))
    .await
}

/// A PeerJS client socket, once the server registered it (`OPEN`).
async fn peerjs_open(server: &Server, key: &str, id: &str, token: &str) -> Ws {
    let mut ws = peerjs(server, key, id, token).await;
    assert_eq!(
        next(&mut ws, STEP).await,
        Some(json!({"type":"OPEN"})),
        "{id}"
    );
    ws
}

/// The open PeerJS sockets of alice (token `t-alice`) and bob (`t-bob`), of app `app`.
async fn alice_and_bob(server: &Server) -> (Ws, Ws) {
    (
        peerjs_open(server, "app", "alice", "t-alice").await,
        peerjs_open(server, "app", "bob", "t-bob").await,
    )
}

/// A PeerJS `CANDIDATE` to alice whose payload is numbered `n`.
fn candidate(n: u32) -> Value {
    json!({"type":"CANDIDATE","dst":"alice","payload":{"n":n}})
}

/// Sends alice the `CANDIDATE`s numbered `numbers`.
async fn send_candidates(from: &mut Ws, numbers: std::ops::Range<u32>) {
    for n in numbers {
        send(from, candidate(n)).await;
    }
}

/// The `CANDIDATE`s numbered `numbers`, in order.
async fn expect_candidates(to: &mut Ws, numbers: std::ops::Range<u32>) {
    for n in numbers {
        assert_eq!(next(to, STEP).await.unwrap()["payload"]["n"], n);
    }
}

#[tokio::test]
async fn peerjs_ids_open_relay_expire_and_a_taken_id_is_refused() {
    let server = Server::start(&[]);
    let (status, content_type, id) =
        crate::support::http_get(server.addr, "/peerjs/peerjs/id?ts=1&version=1.5.5").await;
    assert_eq!((status, content_type.as_str()), (200, "text/plain"));
    assert_eq!(id.len(), 36, "a uuid: {id}");
    let (status, _, _) = crate::support::http_get(server.addr, "/peerjs/peerjs/peers").await;
    assert_eq!(status, 401, "discovery is off");

    let (mut alice, mut bob) = alice_and_bob(&server).await;
    // Relayed with the sender as `src`.
    let payload = json!({"sdp":{"type":"offer","sdp":"v=0"},"type":"data","connectionId":"dc_1"});
    send(
        &mut bob,
        json!({"type":"OFFER","dst":"alice","payload":payload}),
    )
    .await;
    assert_eq!(
        next(&mut alice, STEP).await,
        Some(json!({"type":"OFFER","dst":"alice","payload":payload,"src":"bob"}))
    );
    send(&mut bob, json!({"type":"HEARTBEAT"})).await;
    // An unknown destination: EXPIRE.
    send(
        &mut bob,
        json!({"type":"OFFER","dst":"nobody","payload":{}}),
    )
    .await;
    assert_eq!(
        next(&mut bob, STEP).await,
        Some(json!({"type":"EXPIRE","src":"nobody"}))
    );
    // Another client cannot take alice's id; another key is another namespace.
    let mut thief = peerjs(&server, "app", "alice", "t-thief").await;
    assert_eq!(next(&mut thief, STEP).await.unwrap()["type"], "ID-TAKEN");
    let mut other = peerjs_open(&server, "other-app", "alice", "t-x").await;
    send(&mut other, json!({"type":"OFFER","dst":"bob","payload":{}})).await;
    assert_eq!(next(&mut other, STEP).await.unwrap()["type"], "EXPIRE");
    // Unknown types are answered with ERROR; malformed JSON closes.
    send(&mut bob, json!({"type":"DANCE"})).await;
    assert_eq!(next(&mut bob, STEP).await.unwrap()["type"], "ERROR");
    bob.send(Message::text("{nope")).await.unwrap();
    assert_eq!(next(&mut bob, STEP).await.unwrap()["type"], "ERROR");
}

/// Alice parked on `server` with the candidates numbered `held` waiting for her: bob sends her
/// 0..20, which she gets (and the server acknowledges, before her socket drops), then `held`
/// once her socket dropped, and is sent no `EXPIRE` for them (she is parked, not gone).
/// Bob's socket.
async fn alice_parked_with(server: &Server, held: std::ops::Range<u32>) -> Ws {
    let (mut alice, mut bob) = alice_and_bob(server).await;
    candidates_to_alice_written_and_acknowledged(&mut bob, &mut alice, 0..20, server.redis()).await;
    drop(alice);
    // Her connection ended on her node (only bob's is open): she is parked.
    metric_becomes(server, "signaling_connections", 1).await;
    send_candidates(&mut bob, held).await;
    assert_eq!(next(&mut bob, Duration::from_millis(500)).await, None);
    bob
}

#[tokio::test]
async fn peerjs_messages_for_a_reconnecting_peer_wait_for_it() {
    let server = Server::start(&[]);
    // Bob keeps sending once alice's socket dropped (peerjs-server would expire these after
    // 5 s; here they wait for the resume grace period).
    let _bob = alice_parked_with(&server, 20..40).await;
    // PeerJS's reconnect: the same id and token, on any node.
    reconnect_expecting(&server, "alice", "t-alice", 20..40).await;
}

/// Messages written to a PeerJS socket in the last moment before it drops (not acknowledged
/// yet: 16 frames or 200 ms) may never have reached the client (a reset discards what it had
/// not read): its reconnect gets them again, then what waited for it. The end of the socket
/// acknowledged them, and a lone `OFFER` found in a dead socket's receive buffer was lost.
#[tokio::test]
async fn peerjs_a_reconnect_gets_again_what_was_written_in_the_last_moment() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    // Past the acknowledgement delay of what the registration wrote: the candidates start one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = std::time::Instant::now();
    send_candidates(&mut bob, 0..3).await;
    // Read (so surely written), and the socket drops at once, well within the 200 ms.
    expect_candidates(&mut alice, 0..3).await;
    drop(alice);
    if sent.elapsed() > Duration::from_millis(150) {
        // A machine too loaded to drop the socket before the timer acknowledged them.
        eprintln!(
            "inconclusive: the socket dropped {:?} after the send",
            sent.elapsed()
        );
        return;
    }
    metric_becomes(&server, "signaling_connections", 1).await;
    send_candidates(&mut bob, 3..5).await;
    assert_eq!(next(&mut bob, Duration::from_millis(300)).await, None);
    reconnect_expecting(&server, "alice", "t-alice", 0..5).await;
}

/// PeerJS's reconnect of `id` with `token` on `server`: `OPEN`, then the held `CANDIDATE`s
/// numbered `held`, in order, once, and nothing more.
async fn reconnect_expecting(
    server: &Server,
    id: &str,
    token: &str,
    held: std::ops::Range<u32>,
) -> Ws {
    let mut again = peerjs_open(server, "app", id, token).await;
    for n in held {
        assert_eq!(
            next(&mut again, STEP).await.expect("a held message")["payload"]["n"],
            n,
            "every held message, in order, once"
        );
    }
    assert_eq!(next(&mut again, Duration::from_millis(300)).await, None);
    again
}

/// `from` sends `to`, alice's socket, the `CANDIDATE`s numbered `numbers`; each reaches `to`, and the
/// server has acknowledged them all when this returns: on a cluster (`redis`), once no session's
/// outbox holds a frame; on one node, past the acknowledgement delay.
async fn candidates_to_alice_written_and_acknowledged(
    from: &mut Ws,
    to: &mut Ws,
    numbers: std::ops::Range<u32>,
    redis: Option<&crate::support::redis::RedisServer>,
) {
    for n in numbers {
        send(from, candidate(n)).await;
        assert_eq!(next(to, STEP).await.unwrap()["payload"]["n"], n);
    }
    let Some(redis) = redis else {
        tokio::time::sleep(Duration::from_millis(600)).await;
        return;
    };
    // Outboxes are the `sig:{ROOM}:l:SID` lists (Redis drops a list that was emptied).
    let deadline = std::time::Instant::now() + STEP;
    while redis.keys().iter().any(|k| k.contains("}:l:")) {
        assert!(
            std::time::Instant::now() < deadline,
            "frames left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PeerJS's `reconnect()` while its old socket is still open (half-open: the client is gone,
/// the server does not know yet) takes the session over however long the old socket lived
/// (the frames written to it were acknowledged meanwhile), and gets what it is sent.
#[tokio::test]
async fn peerjs_reconnect_takes_over_a_socket_that_lived_a_while() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    candidates_to_alice_written_and_acknowledged(&mut bob, &mut alice, 0..5, server.redis()).await;
    let mut again = peerjs_open(&server, "app", "alice", "t-alice").await;
    assert_eq!(close_code(&mut alice, STEP).await, Some(1008));
    send(&mut bob, candidate(5)).await;
    assert_eq!(next(&mut again, STEP).await.unwrap()["payload"]["n"], 5);
    // A reconnect is a resume, counted as one.
    let resumes = "signaling_resumes_total{result=\"ok\"}";
    assert_eq!(server.metric(resumes).await, 1);
}

/// A PeerJS socket renews its registration in Redis every `--ping-interval`: one that lives
/// longer than the registration's time to live (`--resume-grace` + 60 s) still finds it when
/// its node dies (here the key is deleted, as its expiry would).
#[tokio::test]
async fn peerjs_registrations_are_renewed_while_their_socket_lives() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let server = Server::spawn(&["--redis", &redis.url(), "--ping-interval", "500ms"]);
    let alice = peerjs_open(&server, "app", "alice", "t-alice").await;
    let registered = || redis.keys().into_iter().find(|k| k.starts_with("sig:pj:"));
    let key = registered().expect("a registration");
    redis.cli(&["DEL", &key]);
    let deadline = std::time::Instant::now() + STEP;
    while registered().is_none() {
        assert!(std::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alice);
}

/// Clients that register one PeerJS id at the same moment, on two nodes of a cluster (each
/// another `token`): exactly one gets it (`OPEN`), the others `ID-TAKEN`. It was two or three
/// of six: each node checked that the id was free, then joined.
#[tokio::test]
async fn one_of_the_clients_registering_an_id_at_once_gets_it() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let nodes = [
        Server::spawn(&["--redis", &redis.url()]),
        Server::spawn(&["--redis", &redis.url()]),
    ];
    for trial in 0..5 {
        let id = format!("same{trial}");
        let registering = (0..6).map(|i| {
            let server = &nodes[i % 2];
            let id = id.clone();
            async move {
                let mut ws = peerjs(server, "app", &id, &format!("t{i}")).await;
                let first = next(&mut ws, STEP).await.expect("an answer");
                (first["type"].as_str().unwrap_or_default().to_owned(), ws)
            }
        });
        let answers = futures_util::future::join_all(registering).await;
        let mut types: Vec<&str> = answers.iter().map(|(t, _)| t.as_str()).collect();
        types.sort_unstable();
        assert_eq!(
            types,
            ["ID-TAKEN"; 5]
                .into_iter()
                .chain(["OPEN"])
                .collect::<Vec<_>>(),
            "trial {trial}"
        );
    }
}

/// A PeerJS client of a node killed with kill -9 reconnects (the same id and token) on another
/// node at once, and gets the messages sent to it meanwhile, in order, once.
#[tokio::test]
async fn peerjs_client_of_a_killed_node_reconnects_elsewhere_with_its_messages() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let mut home = Server::spawn(&["--redis", &redis.url()]);
    let other = Server::spawn(&["--redis", &redis.url()]);
    let mut alice = peerjs_open(&home, "app", "alice", "t-alice").await;
    let mut bob = peerjs_open(&other, "app", "bob", "t-bob").await;
    candidates_to_alice_written_and_acknowledged(&mut bob, &mut alice, 0..5, Some(&redis)).await;
    home.kill();
    drop(alice);
    send_candidates(&mut bob, 5..10).await;
    reconnect_expecting(&other, "alice", "t-alice", 5..10).await;
}

/// When a hang of Redis cuts a node's clients off, each connection ends right after its close
/// frame (1013), whatever speaks on it (the native protocol, PeerJS, y-webrtc): not after the
/// work that follows (parking, acknowledging, unsubscribing), which waits on Redis.
#[tokio::test]
async fn connections_cut_off_by_a_redis_hang_end_with_their_close_frame() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let node = Server::spawn(&[
        "--redis",
        &redis.url(),
        "--node-heartbeat",
        "200ms",
        "--node-lease",
        "30s",
        "--redis-timeout",
        "6s",
    ]);
    let mut native = connect(&node.ws("/ws/cut")).await;
    send(&mut native, json!({"type":"join","versions":[1]})).await;
    assert_eq!(next(&mut native, STEP).await.unwrap()["type"], "welcome");
    let mut alice = peerjs_open(&node, "app", "alice", "t-alice").await;
    let mut y = connect(&node.ws("/y-webrtc")).await;
    subscribe(&mut y, &["cut"]).await;
    redis.freeze();
    for (what, ws) in [
        ("native", &mut native),
        ("PeerJS", &mut alice),
        ("y-webrtc", &mut y),
    ] {
        let (code, reason) = close_frame(ws, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(code, 1013, "{what}");
        if what == "y-webrtc" {
            // Not the slow reader's `session ended`.
            assert_eq!(reason, "unavailable");
        }
        let closed = std::time::Instant::now();
        // The client answered the close (tungstenite does as it reads it); then the end.
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(end.is_ok(), "{what}: still open");
        let after = closed.elapsed();
        // Not the 6 s `--redis-timeout` of the work after the close.
        assert!(
            after < Duration::from_millis(3000),
            "{what}: ended {after:?} after its close frame"
        );
    }
    redis.thaw();
}

/// The y-webrtc subscriptions of a node killed with kill -9 give their places in a full topic
/// back once a survivor adopts them (a lease), not a resume grace period later: no client
/// resumes a subscription (lib0 subscribes afresh).
#[tokio::test]
async fn y_webrtc_places_of_a_killed_node_are_given_back_at_adoption() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let node = || {
        Server::spawn(&[
            "--redis",
            &redis.url(),
            "--node-heartbeat",
            "200ms",
            "--node-lease",
            "1s",
            "--redis-timeout",
            "500ms",
            "--resume-grace",
            "30s",
            "--max-peers-per-room",
            "2",
        ])
    };
    let (mut doomed, survivor) = (node(), node());
    let mut gone = connect(&doomed.ws("/y-webrtc")).await;
    subscribe(&mut gone, &["full"]).await;
    let mut stays = connect(&survivor.ws("/y-webrtc")).await;
    subscribe(&mut stays, &["full"]).await;
    doomed.kill();
    let killed = std::time::Instant::now();
    // The topic is full until the dead node's subscription is adopted and ended.
    let deadline = killed + Duration::from_secs(10);
    loop {
        let mut late = connect(&survivor.ws("/y-webrtc")).await;
        send(&mut late, json!({"type":"subscribe","topics":["full"]})).await;
        send(&mut late, json!({"type":"ping"})).await;
        if next(&mut late, STEP).await == Some(json!({"type":"pong"})) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the topic was still full 10 s after the kill (lease 1 s, grace 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(gone);
}

/// On a cluster, what Redis keeps for a PeerJS reconnect resumes nothing: neither the client's
/// token nor its session's resume token is in it (Redis keeps only hashes of secrets). The
/// client's own reconnect, with its id and token, still resumes.
#[tokio::test]
async fn peerjs_registrations_in_redis_resume_nothing_but_the_clients_reconnect() {
    use crate::support::redis::RedisServer;
    use crate::support::{Client, resume_message};
    use signaling::protocol::{ResumeToken, ServerMessage};
    let redis = RedisServer::start();
    let server = Server::spawn(&["--redis", &redis.url()]);
    let alice = peerjs_open(&server, "app", "alice", "t-alice-0123456789").await;
    drop(alice);
    let deadline = std::time::Instant::now() + STEP;
    let key = loop {
        if let Some(key) = redis.keys().into_iter().find(|k| k.starts_with("sig:pj:")) {
            break key;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no registration in Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Parked now: its registration holds the seq it was written up to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let value = redis.cli(&["GET", &key]);
    assert!(!value.contains("t-alice-0123456789"), "{value}");
    for field in value.split_whitespace() {
        let mut client = Client::connect(&server.ws("/ws/app")).await;
        client
            .send(&resume_message(&ResumeToken::from(field), 0))
            .await;
        match client.recv_message().await {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::ResumeFailed),
            other => panic!("{field} from Redis resumed: {other:?}"),
        }
    }
    let mut alice = peerjs_open(&server, "app", "alice", "t-alice-0123456789").await;
    let mut bob = peerjs_open(&server, "app", "bob", "t-bob").await;
    send(&mut bob, candidate(1)).await;
    assert_eq!(next(&mut alice, STEP).await.unwrap()["payload"]["n"], 1);
}

/// A PeerJS registration the node could not record in Redis is refused for now (`ERROR`,
/// 1013) and its session ended: unrecorded, the session would hold the id against the
/// client's own reconnect, which would get `ID-TAKEN` (final for PeerJS).
#[tokio::test]
async fn peerjs_a_registration_redis_did_not_record_is_refused_for_now() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    // The node's user may write every key of the cluster but a PeerJS registration (a real
    // Redis refusing a real write, with NOPERM).
    let user: Vec<&str> =
        "ACL SETUSER node on >pw +@all &* ~sig:{* ~sig:node* ~sig:ch:* ~sig:secret:* %R~sig:pj:*"
            .split(' ')
            .collect();
    assert_eq!(redis.cli(&user), "OK");
    let url = redis.url().replace("redis://", "redis://node:pw@");
    let server = Server::spawn(&["--redis", &url]);
    let mut alice = peerjs(&server, "app", "alice", "t-alice").await;
    let refusal = next(&mut alice, STEP).await.expect("an answer");
    assert_eq!(refusal["type"], "ERROR", "{refusal}");
    assert_eq!(close_code(&mut alice, STEP).await, Some(1013));
    assert_eq!(server.errors(ErrorCode::Unavailable).await, 1);
    // Redis records again: the client's reconnect takes the id.
    assert_eq!(redis.cli(&["ACL", "SETUSER", "node", "~sig:pj:*"]), "OK");
    let _alice = peerjs_open(&server, "app", "alice", "t-alice").await;
}

/// A PeerJS reconnect that the cluster cannot decide now, because Redis refuses to read its
/// registration or the node it reached holds its maximum of sessions, is refused for now
/// (`ERROR`, 1013), never with `ID-TAKEN` for its own id (PeerJS gives up on that).
#[tokio::test]
async fn peerjs_a_reconnect_the_cluster_cannot_serve_now_is_refused_for_now_not_taken() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let acl = |keys: &str| {
        let line = format!("ACL SETUSER node on >pw +@all &* resetkeys {keys}");
        let args: Vec<&str> = line.split(' ').collect();
        assert_eq!(redis.cli(&args), "OK");
    };
    let every_key = "~sig:node* ~sig:ch:* ~sig:secret:* ~sig:{* ~sig:pj:*";
    acl(every_key);
    let url = redis.url().replace("redis://", "redis://node:pw@");
    let home = Server::spawn(&["--redis", &url]);
    let full = Server::spawn(&["--redis", &url, "--max-sessions", "1"]);
    let (_holds_the_place, _) = crate::support::Client::join(&full.ws("/ws/held"), None).await;
    let alice = peerjs_open(&home, "app", "alice", "t-alice").await;
    drop(alice);
    // Parked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused_for_now = |server: &Server, what: &'static str| {
        let url = server.ws("/peerjs/peerjs?key=app&id=alice&token=t-alice&version=1.5.5");
        async move {
            let mut again = connect(&url).await;
            let refusal = next(&mut again, STEP).await.expect("an answer");
            assert_eq!(refusal["type"], "ERROR", "{what}: {refusal}");
            assert_eq!(close_code(&mut again, STEP).await, Some(1013), "{what}");
        }
    };
    refused_for_now(&full, "a node full of sessions").await;
    acl(&every_key.replace(" ~sig:pj:*", ""));
    refused_for_now(&home, "the registration unreadable").await;
    acl(every_key);
    let _alice = peerjs_open(&home, "app", "alice", "t-alice").await;
}

/// The status and JSON error body of a refused WebSocket upgrade.
async fn refused(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(body).expect("a JSON error body"),
            )
        }
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

/// The close code the server ends `ws` with, within `limit` (skipping other frames).
async fn close_code(ws: &mut Ws, limit: Duration) -> Option<u16> {
    close_frame(ws, limit).await.map(|(code, _)| code)
}

/// The code and reason of the close frame the server ends `ws` with, within `limit`.
async fn close_frame(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

const SECRET: &str = "compat-secret-0123456789";

/// A room token (JWT) signed with `secret`.
fn room_token(secret: &str, room: &str, name: Option<&str>, exp_in: i64) -> String {
    let claims = signaling::auth::Claims {
        room: room.into(),
        name: name.map(Into::into),
        exp: (jsonwebtoken::get_current_timestamp() as i64 + exp_in) as u64,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

#[tokio::test]
async fn peerjs_with_a_jwt_secret_the_key_is_a_token_and_its_room_the_namespace() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    // A plain key gets neither a socket nor an id.
    let (status, body) = refused(&server.ws("/peerjs/peerjs?key=k&id=alice&token=abc123")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, content_type, body) = server.get("/peerjs/k/id").await;
    assert_eq!((status, content_type.as_str()), (401, "application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "unauthorized"
    );
    // Nor does an expired token, or one signed with another secret.
    for bad in [
        room_token(SECRET, "app", None, -120),
        room_token("another-secret", "app", None, 300),
    ] {
        let url = server.ws(&format!("/peerjs/peerjs?key={bad}&id=alice&token=abc123"));
        assert_eq!(refused(&url).await.0, 401);
    }
    // Two tokens for room `app` (different texts): one namespace.
    let (key_a, key_b) = (
        room_token(SECRET, "app", None, 300),
        room_token(SECRET, "app", None, 600),
    );
    let (status, _, id) = server.get(&format!("/peerjs/{key_a}/id")).await;
    assert_eq!((status, id.len()), (200, 36), "{id}");
    let mut alice = peerjs_open(&server, &key_a, "alice", "t-alice").await;
    let mut bob = peerjs_open(&server, &key_b, "bob", "t-bob").await;
    send(&mut bob, json!({"type":"OFFER","dst":"alice","payload":{}})).await;
    assert_eq!(next(&mut alice, STEP).await.unwrap()["src"], "bob");
    // A token for another room: another namespace.
    let other = room_token(SECRET, "other", None, 300);
    let mut carol = peerjs_open(&server, &other, "carol", "t-carol").await;
    send(
        &mut carol,
        json!({"type":"OFFER","dst":"alice","payload":{}}),
    )
    .await;
    assert_eq!(next(&mut carol, STEP).await.unwrap()["type"], "EXPIRE");
    // A token that fixes a name fixes the id: `/id` hands it out, another id is forbidden.
    let named = room_token(SECRET, "app", Some("dave"), 300);
    let (status, _, id) = server.get(&format!("/peerjs/{named}/id")).await;
    assert_eq!((status, id.as_str()), (200, "dave"));
    let url = server.ws(&format!("/peerjs/peerjs?key={named}&id=mallory&token=t-m"));
    let (status, body) = refused(&url).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let _dave = peerjs_open(&server, &named, "dave", "t-dave").await;
    // A name that is no PeerJS id: refused up front, not handed out as an id no socket takes.
    let spaced = room_token(SECRET, "app", Some("Ada Lovelace"), 300);
    let (status, _, body) = server.get(&format!("/peerjs/{spaced}/id")).await;
    let code = serde_json::from_str::<Value>(&body).unwrap()["code"].clone();
    assert_eq!((status, code), (403, json!("forbidden")), "{body}");
}

#[tokio::test]
async fn peerjs_ids_may_be_fetched_by_a_page_of_an_allowed_origin() {
    let server = Server::start(&["--allowed-origin", "https://app.example"]);
    let get = |origin: &str| {
        format!(
            "GET /peerjs/k/id?ts=1 HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
    };
    let head = crate::http::answer_head(server.addr, &get("https://app.example")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let preflight = "OPTIONS /peerjs/k/id HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n";
    let head = crate::http::answer_head(server.addr, preflight).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    // Another origin: no grant, and refused anyway.
    let head = crate::http::answer_head(server.addr, &get("https://other.example")).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test]
async fn compat_deliveries_are_counted_once() {
    let server = Server::start(&[]);
    let relayed = "signaling_messages_relayed_total";
    let (mut a, mut b) = two_subscribers(&server, "counted").await;
    let before = server.metric(relayed).await;
    send(
        &mut a,
        json!({"type":"publish","topic":"counted","data":{}}),
    )
    .await;
    assert_eq!(next(&mut b, STEP).await.unwrap()["type"], "publish");
    // On a cluster the sender's node counts once Redis answered it, which may be after the
    // frame reached the receiver through another node.
    crate::support::metric_reaches(&server, relayed, before + 1, Duration::from_secs(5)).await;
    assert_eq!(server.metric(relayed).await - before, 1, "y-webrtc publish");

    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let before = server.metric(relayed).await;
    send(&mut bob, json!({"type":"OFFER","dst":"alice","payload":{}})).await;
    assert_eq!(next(&mut alice, STEP).await.unwrap()["type"], "OFFER");
    crate::support::metric_reaches(&server, relayed, before + 1, Duration::from_secs(5)).await;
    assert_eq!(server.metric(relayed).await - before, 1, "PeerJS OFFER");
}

/// A PeerJS registration and a y-webrtc subscription are joins: each counts once in
/// `signaling_join_latency_seconds`, as a `join` does; every upgraded socket counts in
/// `signaling_connections_accepted_total`, one refused with `ID-TAKEN` too.
#[tokio::test]
async fn compat_joins_and_sockets_are_counted_as_native_ones() {
    let server = Server::start(&[]);
    let (joins, accepted) = (
        "signaling_join_latency_seconds_count",
        "signaling_connections_accepted_total",
    );
    let joins_before = server.metric(joins).await;
    let accepted_before = server.metric(accepted).await;
    let _alice = peerjs_open(&server, "app", "alice", "t-alice").await;
    let mut thief = peerjs(&server, "app", "alice", "t-thief").await;
    assert_eq!(next(&mut thief, STEP).await.unwrap()["type"], "ID-TAKEN");
    let mut y = connect(&server.ws("/y-webrtc")).await;
    subscribe(&mut y, &["joined-a", "joined-b"]).await;
    assert_eq!(server.metric(joins).await - joins_before, 3, "{joins}");
    assert_eq!(
        server.metric(accepted).await - accepted_before,
        3,
        "{accepted}"
    );
}

/// A PeerJS peer's room is named by `signaling::peerjs::peer_room` (the formula of
/// `compat.md`) and its peer carries the PeerJS id as its `name`, so an operator finds a
/// client in the admin API, and kicks it.
#[tokio::test]
async fn peerjs_peers_are_found_in_the_admin_api_by_their_id() {
    let server = Server::start(&["--api-key", "admin-key"]);
    let mut alice = peerjs_open(&server, "app", "alice", "t-alice").await;
    let room = signaling::peerjs::peer_room("app", "alice");
    let auth = [("Authorization", "Bearer admin-key")];
    let path = format!("/v1/rooms/{room}");
    let (status, _, body) =
        crate::support::http_request(server.addr, "GET", &path, &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).expect("JSON");
    let peer = &view["peers"][0];
    assert_eq!(
        (&peer["name"], &peer["transport"]),
        (&json!("alice"), &json!("peerjs")),
        "{body}"
    );
    let kick = format!(
        "/v1/rooms/{room}/peers/{}/kick",
        peer["id"].as_str().unwrap()
    );
    let (status, _, body) =
        crate::support::http_request(server.addr, "POST", &kick, &auth, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(close_code(&mut alice, STEP).await, Some(1008));
    // Nothing to revoke: the client's reconnect registers the id afresh.
    let _again = peerjs_open(&server, "app", "alice", "t-alice").await;
}

#[tokio::test]
async fn draining_closes_compat_sockets_at_once_with_1001() {
    let mut server = Server::start(&["--drain-timeout", "6s"]);
    // A native client that stays keeps the server draining for the whole timeout.
    let (_stays, _) = crate::support::Client::join(&server.ws_first("/ws/stay"), None).await;
    let mut y = connect(&server.ws_first("/y-webrtc")).await;
    subscribe(&mut y, &["drained"]).await;
    let mut pj =
        connect(&server.ws_first("/peerjs/peerjs?key=app&id=alice&token=t-alice&version=1.5.5"))
            .await;
    assert_eq!(next(&mut pj, STEP).await, Some(json!({"type":"OPEN"})));

    let start = std::time::Instant::now();
    server.terminate();
    // Long before the 6 s drain ends (with room for a loaded machine).
    let limit = Duration::from_secs(4);
    assert_eq!(close_code(&mut y, limit).await, Some(1001), "y-webrtc");
    assert_eq!(close_code(&mut pj, limit).await, Some(1001), "PeerJS");
    assert!(start.elapsed() < limit, "{:?}", start.elapsed());
    // No new PeerJS ids either, as no new upgrades.
    let (status, _, body) = server.get("/peerjs/app/id").await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "draining"
    );
    assert!(server.wait_exit(Duration::from_secs(10)), "still running");
}

/// A client of a drained node reconnects on another node and stays there: the drain's frame,
/// acknowledged as the drained socket closes, is not replayed to the new socket (which it
/// would end at once, at every reconnect). The socket's end no longer acknowledges it.
#[tokio::test]
async fn peerjs_a_client_of_a_drained_node_stays_on_the_node_it_reconnects_to() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let home = Server::spawn(&["--redis", &redis.url(), "--drain-timeout", "6s"]);
    let other = Server::spawn(&["--redis", &redis.url()]);
    let mut alice = peerjs_open(&home, "app", "alice", "t-alice").await;
    home.terminate();
    assert_eq!(close_code(&mut alice, STEP).await, Some(1001));
    let mut again = peerjs_open(&other, "app", "alice", "t-alice").await;
    let ended = tokio::time::timeout(Duration::from_secs(1), again.next()).await;
    assert!(ended.is_err(), "the new socket ended: {ended:?}");
}

#[tokio::test]
async fn peerjs_a_parked_peer_holds_up_to_the_replay_limit() {
    let server = Server::start(&["--rate-limit", "5000", "--rate-burst", "5000"]);
    // Exactly the limit (256 messages) waits for alice.
    let mut bob = alice_parked_with(&server, 0..256).await;
    let mut alice = peerjs_open(&server, "app", "alice", "t-alice").await;
    expect_candidates(&mut alice, 0..256).await;
    assert_eq!(next(&mut alice, Duration::from_millis(300)).await, None);
    // One more than the limit: the session ends, what waited is lost, later messages EXPIRE
    // and the reconnect is a plain OPEN.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_candidates(&mut bob, 0..257).await;
    send(&mut bob, candidate(257)).await;
    assert_eq!(
        next(&mut bob, STEP).await,
        Some(json!({"type":"EXPIRE","src":"alice"}))
    );
    let mut alice = peerjs_open(&server, "app", "alice", "t-alice").await;
    assert_eq!(next(&mut alice, Duration::from_millis(300)).await, None);
}

/// A PeerJS frame over `--max-message-bytes` is answered like one on `/y-webrtc`: `ERROR`,
/// counted as `message_too_large`, and the close 1009.
#[tokio::test]
async fn peerjs_a_frame_too_large_closes_with_1009() {
    let server = Server::start(&["--max-message-bytes", "4096"]);
    let mut alice = peerjs_open(&server, "big", "alice", "t-alice").await;
    let big = json!({"type":"OFFER","dst":"bob","payload":{"sdp":"x".repeat(8000)}});
    send(&mut alice, big).await;
    assert_eq!(
        next(&mut alice, STEP).await.map(|m| m["type"].clone()),
        Some(json!("ERROR"))
    );
    assert_eq!(close_code(&mut alice, STEP).await, Some(1009));
    assert!(server.errors(ErrorCode::MessageTooLarge).await >= 1);
}

/// `subscribe T`, `unsubscribe T`, `subscribe T` on one socket, then close: the close of the
/// first subscription's queue (queued by its `leave`, read after the second `subscribe`) must
/// not end the second subscription's bookkeeping, and the socket's close must end every
/// session it made. It once left the second session attached with no socket, for good:
/// counted, a ghost peer of the topic (32 fill it), one of the address's sessions.
#[tokio::test]
async fn y_webrtc_resubscribing_a_topic_leaves_no_session_behind() {
    let server = Server::start(&["--resume-grace", "1s", "--join-burst-per-ip", "1000"]);
    let topic = "subscribed, unsubscribed, subscribed again";
    for round in 0..30 {
        let mut ws = connect(&server.ws("/y-webrtc")).await;
        // In one write, so the server reads them back to back.
        for message in [
            json!({"type":"subscribe","topics":[topic]}),
            json!({"type":"unsubscribe","topics":[topic]}),
            json!({"type":"subscribe","topics":[topic]}),
            json!({"type":"ping"}),
        ] {
            ws.feed(Message::text(message.to_string()))
                .await
                .expect("send");
        }
        ws.flush().await.expect("send");
        assert_eq!(
            next(&mut ws, STEP).await,
            Some(json!({"type":"pong"})),
            "round {round}"
        );
        ws.close(None).await.expect("close");
    }
    // Ended when their sockets closed (well within the grace period and a step).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1) + STEP;
    let left = loop {
        let left = (
            server.metric("signaling_sessions").await,
            server.metric("signaling_connections").await,
        );
        if left == (0, 0) || tokio::time::Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        left,
        (0, 0),
        "(sessions, connections) after every socket closed"
    );
    assert_eq!(
        server.metric("signaling_rooms").await,
        0,
        "the topic's room"
    );
    // The topic is as good as new.
    let (mut a, mut b) = two_subscribers(&server, topic).await;
    let publish = json!({"type":"publish","topic":topic,"data":{"fresh":true}});
    send(&mut a, publish.clone()).await;
    assert_eq!(next(&mut b, STEP).await, Some(publish));
    assert_eq!(server.metric("signaling_sessions").await, 2);
}
