//! Bad input and limits: every one answered with its error code, counted, and other peers
//! unaffected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signaling::protocol::{
    ClientMessage, ErrorCode, LeaveReason, PeerId, ServerFrame, ServerMessage, SessionInfo, Signal,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::basic::{assert_peer_left, candidate, pass_candidate, signal, signal_request};
use crate::support::{Client, Closed, STEP, Server, join_message, metric_becomes, resume_message};

fn error_ref(message: &ServerMessage) -> Option<u64> {
    match message {
        ServerMessage::Error { reference, .. } => *reference,
        _ => None,
    }
}

#[tokio::test]
async fn bad_input_is_answered_and_harms_nobody() {
    let server = Server::start(&["--max-message-bytes", "1024"]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&server.ws("/ws/bad"), &server.ws("/ws/bad")).await;

    a.send_raw(Message::text("this is not json")).await;
    a.expect_error(ErrorCode::InvalidMessage).await;
    a.send_raw(Message::text(r#"{"type":"launch_rockets","id":3}"#))
        .await;
    let frame = a.expect_error(ErrorCode::InvalidMessage).await;
    assert_eq!(error_ref(&frame.message), Some(3));
    // An error never echoes more than a short prefix of its input.
    let long_type = format!(r#"{{"type":"{}","id":5}}"#, "x".repeat(900));
    a.send_raw(Message::text(long_type)).await;
    let frame = a.expect_error(ErrorCode::InvalidMessage).await;
    match &frame.message {
        ServerMessage::Error { message, .. } => assert!(message.len() < 200, "{message}"),
        other => panic!("{other:?}"),
    }
    a.send_raw(Message::text(
        r#"{"type":"signal","id":4,"signal":{"kind":"answer","sdp":""}}"#,
    ))
    .await;
    let frame = a.expect_error(ErrorCode::InvalidMessage).await;
    assert_eq!(error_ref(&frame.message), Some(4), "missing `to`");
    a.send_raw(Message::text("[1,2,3]")).await;
    a.expect_error(ErrorCode::InvalidMessage).await;
    a.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    a.expect_error(ErrorCode::BinaryNotSupported).await;
    a.send(&join_message("bad")).await;
    a.expect_error(ErrorCode::AlreadyJoined).await;

    // A is still a working member, and B saw none of it.
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 1).await;

    // A text frame that is not UTF-8 fails the socket (RFC 6455): the error, then 1007; the
    // session is parked, and a resume goes on with it.
    let (mut c, c_info) = Client::join(&server.ws("/ws/bad"), None).await;
    b.recv_message().await; // C's peer_joined
    a.recv_message().await;
    let not_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(not_utf8)).await;
    c.expect_error(ErrorCode::InvalidMessage).await;
    assert_eq!(c.expect_close().await, Closed::Code(1007));
    let mut c2 = Client::connect(&server.ws("/ws/bad")).await;
    c2.send(&resume_message(&c_info.resume_token, c.last_seq))
        .await;
    assert!(matches!(
        c2.recv_message().await,
        ServerMessage::Resumed { .. }
    ));
    // A frame that breaks RFC 6455 (here a reserved opcode) fails the socket too: the error,
    // then 1002.
    let (mut d, _) = Client::join(&server.ws("/ws/bad"), None).await;
    b.recv_message().await; // D's peer_joined
    a.recv_message().await;
    let reserved = Frame::message(vec![b'x'], OpCode::Data(Data::Reserved(3)), true);
    d.send_raw(Message::Frame(reserved)).await;
    d.expect_error(ErrorCode::InvalidMessage).await;
    assert_eq!(d.expect_close().await, Closed::Code(1002));

    // An oversize frame closes A's socket with 1009 after the error.
    a.send_raw(Message::text("x".repeat(2000))).await;
    a.expect_error(ErrorCode::MessageTooLarge).await;
    assert_eq!(a.expect_close().await, Closed::Code(1009));
    // B is unaffected.
    b.ping(8).await;

    // The errors are counted.
    let (_, _, metrics) = server.get("/metrics").await;
    if crate::support::cluster_nodes() == 1 {
        assert!(
            !metrics.contains("signaling_cluster_"),
            "a single node has no cluster series"
        );
    }
    for code in [
        "invalid_message",
        "binary_not_supported",
        "already_joined",
        "message_too_large",
    ] {
        assert!(
            metrics.contains(&format!("signaling_errors_total{{code=\"{code}\"}}")),
            "{code} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn handshake_errors() {
    let server = Server::start(&[]);
    // A request before join.
    let mut c = Client::connect(&server.ws("/ws/early")).await;
    c.send(&signal_request(1, "x", candidate(0))).await;
    let frame = c.expect_error(ErrorCode::NotJoined).await;
    assert_eq!(frame.seq, 0);
    // Still usable: join works afterwards.
    c.send(&join_message("early")).await;
    c.expect_welcome().await;

    // Unsupported version.
    let mut c = Client::connect(&server.ws("/ws/v")).await;
    c.send(&ClientMessage::Join {
        id: Some(2),
        versions: vec![7, 99],
        room: None,
        name: None,
        token: None,
    })
    .await;
    let frame = c.expect_error(ErrorCode::UnsupportedVersion).await;
    assert_eq!(error_ref(&frame.message), Some(2));
    assert_eq!(c.expect_close().await, Closed::Code(1008));

    // Versions run from 1: a 0 among them makes the frame invalid, and the socket stays open.
    let mut c = Client::connect(&server.ws("/ws/v")).await;
    for text in [
        r#"{"type":"join","id":3,"versions":[0]}"#,
        r#"{"type":"join","id":4,"versions":[1,0]}"#,
    ] {
        c.send_raw(Message::text(text)).await;
        c.expect_error(ErrorCode::InvalidMessage).await;
    }
    c.send(&join_message("v")).await;
    c.expect_welcome().await;

    // Bad room ids, in the join and in the URL; missing room; conflicting rooms.
    for (path, room) in [
        ("/ws", Some("no spaces")),
        ("/ws", Some("")),
        ("/ws/a%2Fb", None),
        ("/ws", None),
        ("/ws/one", Some("two")),
    ] {
        let mut c = Client::connect(&server.ws(path)).await;
        c.send(&ClientMessage::Join {
            id: None,
            versions: vec![1],
            room: room.map(Into::into),
            name: None,
            token: None,
        })
        .await;
        c.expect_error(ErrorCode::InvalidRoomId).await;
        assert_eq!(c.expect_close().await, Closed::Code(1008));
    }
    let long = "r".repeat(65);
    let mut c = Client::connect(&server.ws(&format!("/ws/{long}"))).await;
    c.send(&ClientMessage::Join {
        id: None,
        versions: vec![1],
        room: None,
        name: None,
        token: None,
    })
    .await;
    c.expect_error(ErrorCode::InvalidRoomId).await;

    // Bad name.
    let mut c = Client::connect(&server.ws("/ws/n")).await;
    c.send(&ClientMessage::Join {
        id: None,
        versions: vec![1],
        room: None,
        name: Some("bell\u{7}".into()),
        token: None,
    })
    .await;
    c.expect_error(ErrorCode::InvalidName).await;

    // A request that is not a valid WebSocket upgrade (here without Sec-WebSocket-Key) is
    // refused as the others are: 400, one JSON error frame, counted.
    let before = server.errors(ErrorCode::InvalidMessage).await;
    let headers = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")];
    for path in ["/ws/u", "/y-webrtc", "/peerjs/peerjs?key=k&id=i&token=t"] {
        let (status, content_type, body) =
            crate::http_client::http_request(server.addr, "GET", path, &headers, "").await;
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/json"),
            "{path}: {body}"
        );
        let frame: ServerFrame = serde_json::from_str(&body).expect("an error frame");
        assert!(
            matches!(
                frame.message,
                ServerMessage::Error {
                    code: ErrorCode::InvalidMessage,
                    ..
                }
            ),
            "{path}: {body}"
        );
    }
    // So is one whose key is not one base64 16-byte nonce (RFC 6455, 4.1).
    let nonce = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (path, keys) in [
        ("/ws/u", "Sec-WebSocket-Key: \r\n".to_owned()),
        ("/ws/u", "Sec-WebSocket-Key: abc\r\n".to_owned()),
        ("/y-webrtc", format!("{nonce}{nonce}")),
    ] {
        assert_eq!(
            upgrade_status(server.addr, path, &keys).await,
            400,
            "{keys}"
        );
    }
    // One that asks for another version than 13 is told which one the server speaks (RFC
    // 6455, 4.4).
    let head = upgrade_head(server.addr, "/ws/u", "8", nonce).await;
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n"),
        "{head}"
    );
    // Not an upgrade at all: 400 whatever version it names.
    let headers = [("Sec-WebSocket-Version", "8")];
    let (status, _, body) =
        crate::http_client::http_request(server.addr, "GET", "/ws/u", &headers, "").await;
    assert_eq!(status, 400, "{body}");
    let after = server.errors(ErrorCode::InvalidMessage).await;
    assert_eq!(after, before + 8);
    // The sample nonce of RFC 6455 upgrades.
    assert_eq!(upgrade_status(server.addr, "/ws/u", nonce).await, 101);
    // So does a `Connection` list given on two lines, `upgrade` on the second (RFC 9110, 5.3).
    let two_lines = format!(
        "GET /ws/u HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{nonce}\r\n"
    );
    let head = answer_head(server.addr, &two_lines).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

/// The status of a WebSocket upgrade of `path` with the header lines `keys`.
async fn upgrade_status(addr: std::net::SocketAddr, path: &str, keys: &str) -> u16 {
    let head = upgrade_head(addr, path, "13", keys).await;
    head[9..12].parse().expect("a status")
}

/// The status line and headers of the answer to a WebSocket upgrade of `path` asking for
/// `version`, with the header lines `keys`.
async fn upgrade_head(addr: std::net::SocketAddr, path: &str, version: &str, keys: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: {version}\r\n{keys}\r\n"
    );
    answer_head(addr, &request).await
}

/// The status line and headers of the answer to `request` (a whole head).
async fn answer_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(STEP, tcp.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("the answer");
        assert!(read == 1 && head.len() < 8192, "no whole head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A socket that does not join within the ping timeout is told `not_joined` and closed 1008
/// `join timeout`, whether it answers the server's pings meanwhile or is silent.
#[tokio::test]
async fn a_socket_that_never_joins_is_told_so_and_closed() {
    use futures_util::StreamExt as _;
    let server = Server::start(&["--ping-interval", "200ms", "--ping-timeout", "1s"]);
    for silent in [false, true] {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws("/ws/never"))
            .await
            .expect("connect");
        if silent {
            // Not read, so not one ping is answered.
            tokio::time::sleep(Duration::from_millis(1800)).await;
        }
        let (mut errors, mut close) = (Vec::new(), None);
        let deadline = tokio::time::Instant::now() + STEP;
        while close.is_none() {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: ServerFrame = serde_json::from_str(&text).expect("a frame");
                    errors.push(frame.message);
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    close = Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("silent {silent}: the socket ended without a close: {other:?}"),
            }
        }
        assert!(
            matches!(
                errors.as_slice(),
                [ServerMessage::Error {
                    code: ErrorCode::NotJoined,
                    ..
                }]
            ),
            "silent {silent}: {errors:?}"
        );
        assert_eq!(
            close,
            Some(Some((1008, "join timeout".to_owned()))),
            "silent {silent}"
        );
    }
}

#[tokio::test]
async fn rate_limit_drops_the_excess() {
    // A burst of 5 and one token every 5 s: no token comes back while a burst is handled,
    // however slow the machine, so the counts below are exact.
    let server = Server::start(&["--rate-limit", "0.2", "--rate-burst", "5"]);
    let (mut a, _) = Client::join(&server.ws("/ws/rate"), None).await;
    // The join took one token; 10 pings at once: 4 pass, 6 are dropped, and only the first
    // drop is answered (at most one `rate_limited` a second: a flood gets no flood back).
    for id in 0..10 {
        a.send(&ClientMessage::Ping { id: Some(id) }).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..5 {
        match a.recv_message().await {
            ServerMessage::Pong { .. } => pongs += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                reference,
                message,
            } => {
                assert_eq!(reference, Some(4), "the first dropped ping");
                assert!(message.contains("1 message(s) dropped"), "{message}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((pongs, limited), (4, 1));
    a.expect_silence(Duration::from_millis(100)).await;
    // Every drop is counted.
    assert_eq!(server.errors(ErrorCode::RateLimited).await, 6);

    // Binary frames count too: a flood of them is answered like one of text frames, not with
    // an error each (which would fill the sender's own queue until it ended as too slow).
    let (mut b, _) = Client::join(&server.ws("/ws/rate-binary"), None).await;
    for _ in 0..50 {
        b.send_raw(Message::binary(vec![0u8])).await;
    }
    let (mut binary, mut limited) = (0, 0);
    for _ in 0..5 {
        match b.recv_message().await {
            ServerMessage::Error {
                code: ErrorCode::BinaryNotSupported,
                ..
            } => binary += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((binary, limited), (4, 1));
    b.expect_silence(Duration::from_millis(100)).await;

    // Tokens come back at the configured rate: one after 5 s.
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    a.ping(100).await;
}

#[tokio::test]
async fn room_full_and_max_sessions() {
    let server = Server::start(&["--max-peers-per-room", "2", "--max-sessions", "3"]);
    // In a cluster run these three land on three nodes: the room limit is cluster-wide.
    let (_a, _) = Client::join(&server.ws("/ws/full"), None).await;
    let (_b, _) = Client::join(&server.ws("/ws/full"), None).await;
    let mut c = Client::connect(&server.ws("/ws/full")).await;
    c.send(&join_message("full")).await;
    c.expect_error(ErrorCode::RoomFull).await;
    assert_eq!(c.expect_close().await, Closed::Code(1013));

    // Sessions are a bound of each node's memory: count them on one node.
    let (_d, _) = Client::join(&server.ws_first("/ws/other"), None).await;
    let mut fill = Vec::new();
    if crate::support::cluster_nodes() > 1 {
        // Node 1 holds `a` and `d` so far (`b` is on node 2): one more fills it.
        fill.push(Client::join(&server.ws_first("/ws/fourth"), None).await);
    }
    let mut e = Client::connect(&server.ws_first("/ws/third")).await;
    e.send(&join_message("third")).await;
    e.expect_error(ErrorCode::TooManySessions).await;
    assert_eq!(e.expect_close().await, Closed::Code(1013));
}

#[tokio::test]
async fn max_rooms() {
    let server = Server::start(&["--max-rooms", "1"]);
    // Rooms, like sessions, are counted per node.
    let (_a, _) = Client::join(&server.ws_first("/ws/only"), None).await;
    let (_b, _) = Client::join(&server.ws_first("/ws/only"), None).await;
    let mut c = Client::connect(&server.ws_first("/ws/second")).await;
    c.send(&join_message("second")).await;
    c.expect_error(ErrorCode::TooManyRooms).await;
}

/// The server of the slow-consumer tests (here and over SSE in `http`): a 4-frame outbound
/// queue, rate and replay limits a flood does not reach, pings every 200 ms with 1 s to answer
/// (the write timeout).
pub(crate) fn slow_consumer_args() -> Vec<&'static str> {
    flood_server_args(&["--outbound-queue", "4"], ["200ms", "1s"])
}

/// Outbound queues that take whatever a test floods a client with (no `slow_consumer`).
const QUEUES_TAKING_EVERYTHING: [&str; 4] = [
    "--outbound-queue",
    "100000",
    "--outbound-queue-bytes",
    "200000000",
];

/// The flags of a server that a flood meets at its outbound queue: `queue` (its flags), rate
/// and replay limits the flood does not reach, and pings every `ping_interval` with
/// `ping_timeout` to answer (the write timeout).
fn flood_server_args(
    queue: &[&'static str],
    [ping_interval, ping_timeout]: [&'static str; 2],
) -> Vec<&'static str> {
    let mut args = queue.to_vec();
    args.extend([
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
        "--replay-max-messages",
        "100000",
        "--replay-max-bytes",
        "100000000",
        "--ping-interval",
        ping_interval,
        "--ping-timeout",
        ping_timeout,
    ]);
    args
}

/// Broadcasts 30 KB from `sender` (2000 times at most) until a frame comes back to it, which
/// must say that `peer` ended: whether one came.
pub(crate) async fn flood_until_cut_off(sender: &mut Client, peer: &PeerId) -> bool {
    let blob = "y".repeat(30_000);
    for _ in 0..2000 {
        broadcast(sender, &blob).await;
        if let Some(frame) = sender.recv_within(Duration::from_millis(1)).await {
            assert_eq!(
                frame.message,
                ServerMessage::PeerLeft {
                    peer_id: peer.clone(),
                    reason: LeaveReason::Ended
                }
            );
            return true;
        }
    }
    false
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_not_buffered() {
    let server = Server::start(&slow_consumer_args());
    // B joins, then never reads again.
    let ((mut a, _), (_b, b_info)) =
        Client::pair(&server.ws("/ws/slow"), &server.ws("/ws/slow")).await;
    assert!(
        flood_until_cut_off(&mut a, &b_info.peer_id).await,
        "the slow consumer was never cut off"
    );
    // Counted by the node that cut it off (in a cluster, maybe a moment after A heard of it).
    let deadline = Instant::now() + Duration::from_secs(3);
    let slow = "signaling_errors_total{code=\"slow_consumer\"}";
    while server.metric(slow).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metric(slow).await, 1);
    // The server does not stay stuck writing to B, which still does not read: its socket is
    // dropped within the write timeout (the ping timeout).
    a.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if server.metric("signaling_connections").await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B's socket was never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that goes on sending (pings) but stops reading, so that one write to it waits past
/// the ping timeout, is disconnected as a silent one is: its peers see it leave with `timeout`.
#[tokio::test]
async fn a_client_that_stops_reading_leaves_with_timeout() {
    // As `slow_consumer_args`, with queues that take everything: the stalled write ends it, not
    // `slow_consumer`.
    let mut args = flood_server_args(&QUEUES_TAKING_EVERYTHING, ["200ms", "1s"]);
    args.extend(["--resume-grace", "200ms"]);
    let server = Server::start(&args);
    let path = "/ws/stops-reading";
    let ((mut a, _), (mut b, b_info)) = Client::pair(&server.ws(path), &server.ws(path)).await;
    let offer = Signal::Offer {
        sdp: "x".repeat(60_000),
        ice_restart: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "B never left");
        for _ in 0..10 {
            signal(&mut a, &b_info.peer_id, offer.clone()).await;
        }
        // B's socket may be dropped already (its stalled write timed out).
        let _ = b.try_send(&ClientMessage::Ping { id: None }).await;
        match a
            .recv_within(Duration::from_millis(100))
            .await
            .map(|f| f.message)
        {
            None => {}
            Some(ServerMessage::PeerLeft { peer_id, reason }) => {
                assert_eq!(peer_id, b_info.peer_id);
                assert_eq!(reason, LeaveReason::Timeout);
                break;
            }
            Some(other) => panic!("expected B to leave, got {other:?}"),
        }
    }
}

/// A server for clients that do not read: no `slow_consumer`, and a write timeout far off.
fn server_for_unread_floods() -> Server {
    Server::start(&flood_server_args(
        &QUEUES_TAKING_EVERYTHING,
        ["10s", "60s"],
    ))
}

/// Signals 18 MB of offers from A to `b`: more than the socket buffers take, so the server's
/// write to a B that reads none of it stalls.
async fn offers_past_the_socket_buffers(a: &mut Client, b: &PeerId) {
    let offer = Signal::Offer {
        sdp: "x".repeat(60_000),
        ice_restart: false,
    };
    for _ in 0..300 {
        signal(a, b, offer.clone()).await;
    }
}

/// B, which has read nothing for 500 ms, sends `leave`: A hears `left` within 10 s (the write
/// to B would wait 60 s).
async fn leave_unread(a: &mut Client, b: &mut Client, b_id: &PeerId) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.send(&ClientMessage::Leave { id: None }).await;
    let left = a.recv_within(Duration::from_secs(10)).await;
    assert_peer_left(left.map(|f| f.message), b_id, LeaveReason::Left);
}

/// A `leave` from a client that does not read, so that a write to it stalls, is carried out at
/// once (docs/protocol.md, "leave"): its peers hear `left` without waiting for the write
/// timeout, and its socket is dropped within the 2 s its queued frames get. Before, the
/// `leave` was not read until the stalled write gave up, and the peers heard `timeout`.
#[tokio::test]
async fn a_leave_from_a_client_that_does_not_read_is_carried_out_at_once() {
    let server = server_for_unread_floods();
    let path = "/ws/leave-unread";
    let ((mut a, _), (mut b, b_info)) = Client::pair(&server.ws(path), &server.ws(path)).await;
    offers_past_the_socket_buffers(&mut a, &b_info.peer_id).await;
    leave_unread(&mut a, &mut b, &b_info.peer_id).await;
    // The queued frames get 2 s; B reads none, so its socket is dropped then (without the
    // close), not at the write timeout.
    metric_becomes(&server, "signaling_connections", 1).await;
}

/// The same for the frames a resume replays: a client that reads none of them, so that their
/// write stalls, is heard meanwhile, and its `leave` carried out at once; what it had not read
/// then still goes out, in order (the rest of the replay, then the `resumed` behind it), before
/// the close.
#[tokio::test]
async fn a_leave_behind_a_stalled_replay_is_carried_out_at_once() {
    let server = server_for_unread_floods();
    let path = "/ws/leave-unreplayed";
    let ((mut a, _), (b, b_info)) = Client::pair(&server.ws(path), &server.ws(path)).await;
    let last_seq = b.last_seq;
    drop(b);
    metric_becomes(&server, "signaling_connections", 1).await;
    // Kept for B while it is away (all of it: A's requests are handled in order), all
    // replayed by its resume.
    offers_past_the_socket_buffers(&mut a, &b_info.peer_id).await;
    a.sync().await;
    let mut b = Client::connect(&server.ws(path)).await;
    b.send(&resume_message(&b_info.resume_token, last_seq))
        .await;
    leave_unread(&mut a, &mut b, &b_info.peer_id).await;
    for n in 1..=300 {
        let frame = b.recv_within(STEP).await.expect("the rest of the replay");
        assert_eq!(frame.seq, last_seq + n);
        assert!(matches!(frame.message, ServerMessage::Signal { .. }));
    }
    assert!(matches!(
        b.recv_message().await,
        ServerMessage::Resumed { .. }
    ));
    assert_eq!(b.expect_close().await, Closed::Code(1000));
    metric_becomes(&server, "signaling_connections", 1).await;
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_its_queue_and_reads_the_error_that_ends_it() {
    // As `slow_consumer_args`, but with a queue of 4 MB, and the server waits long enough for
    // B to read the rest.
    let queue = [
        "--outbound-queue",
        "200",
        "--outbound-queue-bytes",
        "4000000",
    ];
    let server = Server::start(&flood_server_args(&queue, ["5s", "20s"]));
    let path = "/ws/slow-seq";
    let ((mut a, _), (mut b, b_info)) = Client::pair(&server.ws(path), &server.ws(path)).await;
    assert!(flood_until_cut_off(&mut a, &b_info.peer_id).await);
    // The frames still queued for B were dropped when its session ended: the budget no longer
    // counts them, although B's socket is still open.
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.metric("signaling_memory_budget_used_bytes").await > 1_000_000 {
        assert!(Instant::now() < deadline, "B's queue still counts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metric("signaling_connections").await, 2);
    // B reads at last what reached its socket: one seq after the other, then the error (after
    // a gap: the frames dropped from its queue), and nothing after it.
    let mut last = b.last_seq;
    loop {
        let Some(frame) = b.recv_within(Duration::from_secs(5)).await else {
            panic!("no slow_consumer after seq {last}");
        };
        if let ServerMessage::Error { code, .. } = frame.message {
            assert_eq!(code, ErrorCode::SlowConsumer);
            assert!(frame.seq > last, "{} after {last}", frame.seq);
            break;
        }
        assert_eq!(frame.seq, last + 1, "{:?}", frame.message);
        last = frame.seq;
    }
    assert_eq!(b.expect_close().await, Closed::Code(1008));
}

/// Mutated and truncated versions of valid messages, thousands of them: every one gets an
/// answer or is ignored, and the server and the other peers carry on.
#[tokio::test]
async fn garbage_never_hurts_the_server() {
    let server = Server::start(&[
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--outbound-queue",
        "8192",
    ]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&server.ws("/ws/garbage"), &server.ws("/ws/garbage")).await;
    let valid = [
        format!(
            r#"{{"type":"signal","id":1,"to":"{}","signal":{{"kind":"candidate","candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0"}}}}}}"#,
            b_info.peer_id
        ),
        r#"{"type":"broadcast","id":2,"data":{"x":[1,2,{"y":null}]}}"#.to_owned(),
        r#"{"type":"ack","seq":3}"#.to_owned(),
        r#"{"type":"ping","id":4}"#.to_owned(),
    ];
    // A fixed-seed generator: the same garbage on every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sent = 0;
    for round in 0..2000 {
        let base = valid[round % valid.len()].as_bytes();
        let mut bytes = base.to_vec();
        match next() % 3 {
            0 => bytes.truncate((next() as usize) % base.len()),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = b" {}[]\":,0aZ\\"[(next() % 12) as usize];
                }
            }
            _ => {
                let i = (next() as usize) % bytes.len();
                bytes.insert(i, b"\"{[,:"[(next() % 5) as usize]);
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.contains("leave") {
            continue;
        }
        a.send_raw(Message::text(text)).await;
        sent += 1;
        // Read A's answers as they come (a client that never reads is a slow consumer):
        // errors and pongs, nothing that closes it.
        let mut wait = Duration::ZERO;
        if sent % 100 == 0 {
            wait = Duration::from_millis(300);
        }
        while let Some(frame) = a.recv_within(wait).await {
            assert!(
                matches!(
                    frame.message,
                    ServerMessage::Error { .. } | ServerMessage::Pong { .. }
                ),
                "{frame:?}"
            );
            wait = Duration::ZERO;
        }
    }
    assert!(sent > 1500);
    // B got only well-formed signals and broadcasts from A.
    while let Some(frame) = b.recv_within(Duration::from_millis(300)).await {
        match frame.message {
            ServerMessage::Signal { from, .. } | ServerMessage::Broadcast { from, .. } => {
                assert_eq!(from, a_info.peer_id)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Everyone is still served.
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 5).await;
    let (status, _, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

/// The join rate holds for an address that joins, leaves and disconnects in a loop: its
/// bucket outlives its connections (before, each new connection started with a full one).
#[tokio::test]
async fn joins_that_leave_and_disconnect_in_a_loop_meet_the_join_rate() {
    let server = Server::start(&["--join-rate-per-ip", "0.2", "--join-burst-per-ip", "3"]);
    let url = server.ws_first("/ws/churn");
    let mut welcomed = 0;
    for _ in 0..6 {
        let mut c = Client::connect(&url).await;
        c.send(&join_message("churn")).await;
        match c.recv_message().await {
            ServerMessage::Welcome { .. } => {
                welcomed += 1;
                c.send(&ClientMessage::Leave { id: None }).await;
                assert_eq!(c.close_after_frames().await, Closed::Code(1000));
            }
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => assert_eq!(c.expect_close().await, Closed::Code(1013)),
            other => panic!("expected welcome or rate_limited, got {other:?}"),
        }
    }
    assert_eq!(welcomed, 3, "the burst, then rate_limited");
    assert_eq!(server.errors(ErrorCode::RateLimited).await, 3);
}

#[tokio::test]
async fn connections_and_joins_are_limited_per_client_address() {
    let server = Server::start(&[
        "--max-connections-per-ip",
        "3",
        "--join-rate-per-ip",
        "0.5",
        "--join-burst-per-ip",
        "2",
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let url = |room: &str| server.ws_first(&format!("/ws/{room}"));
    // The same address: two joins pass; a third connection is let in, a fourth is refused
    // before the upgrade.
    let (_a, _) = Client::join(&url("ip"), None).await;
    let (_b, _) = Client::join(&url("ip"), None).await;
    let mut c = Client::connect(&url("ip")).await;
    match Client::try_connect(&url("ip"), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            // As an HTTP open is refused: Retry-After, and one error frame as the body.
            assert!(response.headers().contains_key("retry-after"));
            let body = response.body().as_deref().unwrap_or_default();
            let frame: ServerFrame = serde_json::from_slice(body).expect("an error frame");
            assert_eq!(frame.seq, 0);
            assert!(matches!(
                frame.message,
                ServerMessage::Error {
                    code: ErrorCode::TooManyConnections,
                    ..
                }
            ));
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // The third join in a row is too fast: try again later.
    c.send(&join_message("ip")).await;
    c.expect_error(ErrorCode::RateLimited).await;
    assert_eq!(c.expect_close().await, Closed::Code(1013));
    // Behind a trusted proxy, each forwarded client counts on its own.
    for client in ["203.0.113.5", "203.0.113.6"] {
        let mut d = Client::try_connect(&url("ip"), &[("X-Forwarded-For", client)])
            .await
            .expect("another client address");
        d.send(&join_message("ip")).await;
        d.expect_welcome().await;
    }
    assert!(server.errors(ErrorCode::TooManyConnections).await >= 1);
}

/// Request headers are bounded (64 KiB): a connection cannot hold hundreds of KiB while it
/// sends them.
#[tokio::test]
async fn request_headers_over_64_kib_get_431() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::spawn(&[]);
    for (size, status) in [(60_000, "200"), (70_000, "431")] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        );
        let _ = tcp.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{size} bytes of headers: {answer}"
        );
    }
}

#[tokio::test]
async fn slowloris_connections_time_out_and_never_lock_out_a_real_client() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // 96 descriptors for the whole process, 150 attackers that never finish their headers.
    let server = Server::spawn_with_fd_limit(
        96,
        &[
            "--header-read-timeout",
            "1s",
            "--max-http-connections",
            "64",
        ],
    );
    let mut attackers = Vec::new();
    for _ in 0..150 {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(server.addr).await else {
            continue;
        };
        let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
        attackers.push(tcp);
    }
    // Within the header timeout (and a while for a loaded machine), every attacker was closed
    // by the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut closed = 0;
    for tcp in &mut attackers {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(_)) => closed += 1, // a 408 before the close
            Err(_) => {}
        }
    }
    assert_eq!(closed, attackers.len(), "every slow connection was closed");
    // Those the server took were timed out, and counted.
    assert!(server.metric("signaling_http_header_timeouts_total").await > 0);
    // A real client joins and is served while the attack goes on (new attackers keep coming).
    for _ in 0..60 {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(server.addr).await {
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\n").await;
            attackers.push(tcp);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut a, _) = loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut client = Client::try_connect(&server.ws("/ws/real"), &[])
                .await
                .ok()?;
            client.send(&join_message("real")).await;
            let info = client.expect_welcome().await;
            Some((client, info))
        })
        .await;
        if let Ok(Some(joined)) = attempt {
            break joined;
        }
        assert!(Instant::now() < deadline, "the real client never got in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.send(&ClientMessage::Ping { id: Some(1) }).await;
    assert!(matches!(a.recv_message().await, ServerMessage::Pong { .. }));
}

/// A request body must arrive whole within `--header-read-timeout` of its headers, trickled or
/// not; a `Content-Length` over the limit is refused before a byte of the body is read.
#[tokio::test]
async fn slow_request_bodies_are_cut_off_and_oversize_lengths_refused_at_once() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // 9 places: the 8 connections below, and the refused one before them, whose place the server
    // may not have let go of yet when they connect (its task ends a moment after the client saw
    // the close; with 8 the last connection was sometimes refused, unanswered, under load).
    let server = Server::spawn(&["--header-read-timeout", "2s", "--max-http-connections", "9"]);
    let post = |length: &str| {
        format!("POST /http/slow HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
    };
    // The answer and the close, within `limit`.
    async fn answer(tcp: &mut tokio::net::TcpStream, limit: Duration) -> String {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(limit, tcp.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "still open after {limit:?}");
        String::from_utf8_lossy(&answer).into_owned()
    }

    let started = Instant::now();
    let mut huge = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    huge.write_all(post("99999999999").as_bytes())
        .await
        .unwrap();
    let refused = answer(&mut huge, Duration::from_secs(3)).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    // The connection closes after it (the body was not read), and the answer says so.
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{refused}"
    );
    // Well before the 2 s the body would have to arrive in.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "not refused at once"
    );

    // Every other place held by a body that stops, or trickles.
    let mut stalled = Vec::new();
    for _ in 0..7 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(format!("{}{{\"type\"", post("100")).as_bytes())
            .await
            .unwrap();
        stalled.push(tcp);
    }
    let mut trickled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    trickled.write_all(post("100").as_bytes()).await.unwrap();
    // The answer is read as it comes, and the trickle stops once it came: a byte written after
    // the server closed would draw a reset, which can discard the answer before it is read.
    let (mut trickle_rx, mut trickle_tx) = trickled.into_split();
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(6), trickle_rx.read_to_end(&mut answer))
                    .await;
            answered.store(true, Ordering::Release);
            assert!(read.is_ok(), "still open after 6 s");
            String::from_utf8_lossy(&answer).into_owned()
        })
    };
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if answered.load(Ordering::Acquire) || trickle_tx.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    for tcp in &mut stalled {
        let cut = answer(tcp, Duration::from_secs(4)).await;
        assert!(cut.starts_with("HTTP/1.1 400"), "{cut}");
        assert!(cut.contains("header-read-timeout"), "{cut}");
    }
    trickle.await.unwrap();
    let cut = reader.await.unwrap();
    if !cut.starts_with("HTTP/1.1 400") {
        let refused = server
            .metric("signaling_http_connections_refused_total")
            .await;
        panic!("the trickled body: {cut:?} (connections refused at accept: {refused})");
    }
    // The slots are free again: a real client joins.
    let (_a, _) = Client::join(&server.ws("/ws/after"), None).await;
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback address");
    socket.connect(to).await.expect("connect")
}

/// Whether the server closed `tcp` within a moment (nothing else is expected on it).
async fn closed_soon(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Clients that send requests and never read the answers cannot keep their places in
/// `--max-http-connections`: a write that makes no progress for `--header-read-timeout` closes
/// the connection, counted.
#[tokio::test]
async fn clients_that_never_read_their_answers_lose_their_http_slots() {
    use tokio::io::AsyncWriteExt as _;
    let server = Server::spawn(&["--header-read-timeout", "1s", "--max-http-connections", "5"]);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50);
    let mut writers = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(server.addr).await.unwrap();
        let request = request.clone();
        // Requests until the server stops taking them (its answers are not read), for 5 s
        // at the most; the socket is kept, unread.
        writers.push(tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            for _ in 0..2_000 {
                let wrote = tokio::time::timeout_at(until, tcp.write_all(&request)).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    break;
                }
            }
            tcp
        }));
    }
    // The readers that never read lose their connections.
    crate::support::metric_reaches(&server, WRITE_TIMEOUTS, 4, Duration::from_secs(6)).await;
    // Their places are free: 4 connections that take them, and a real client still joins.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        holders.push(tcp);
    }
    let (_a, _) = Client::join(&server.ws("/ws/reads"), None).await;
    for writer in writers {
        drop(writer.await.unwrap());
    }
}

/// Connections closed for stalled writes.
const WRITE_TIMEOUTS: &str = "signaling_http_write_timeouts_total";

/// An SSE stream lends its connection's slot; when the stream ends on its own write timeout
/// (the client stopped reading), the connection counts again, and its stalled write closes it
/// within another `--header-read-timeout`: it does not keep the slot for ever.
#[tokio::test]
async fn an_sse_client_that_stops_reading_loses_its_http_slot() {
    use tokio::io::AsyncWriteExt as _;
    let server = Server::spawn(&[
        "--header-read-timeout",
        "1s",
        "--ping-interval",
        "500ms",
        "--ping-timeout",
        "1s",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let session = crate::http_client::open_as(server.addr, "stall", "reader").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut events = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "GET /http/events?session={session} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    events.write_all(request.as_bytes()).await.unwrap();
    // The room fills the stream, which is never read.
    let (mut sender, _) = Client::join(&server.ws("/ws/stall"), None).await;
    let blob = "s".repeat(20_000);
    for _ in 0..150 {
        broadcast(&mut sender, &blob).await;
    }
    // The stalled stream's connection loses its slot: about 3 s alone, but the whole suite on
    // 2 loaded cores once took more than 8 s.
    crate::support::metric_reaches(&server, WRITE_TIMEOUTS, 1, Duration::from_secs(20)).await;
    drop(events);
}

/// The HTTP write bound is not a WebSocket's: a socket whose client pauses reading for longer
/// than `--header-read-timeout` (but within its ping timeout) stays, and gets every frame.
#[tokio::test]
async fn a_websocket_that_pauses_reading_is_not_cut_by_the_http_write_bound() {
    let server = Server::spawn(&[
        "--header-read-timeout",
        "1s",
        "--outbound-queue",
        "1000",
        "--outbound-queue-bytes",
        "16777216",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let url = server.ws("/ws/pause");
    let ((mut paused, _), (mut sender, _)) = Client::pair(&url, &url).await;
    let blob = "p".repeat(20_000);
    // 6 MB: more than the socket buffers take, so the server's writes stall.
    for _ in 0..300 {
        broadcast(&mut sender, &blob).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..300 {
        assert!(matches!(
            paused.recv_message().await,
            ServerMessage::Broadcast { .. }
        ));
    }
    assert_eq!(server.metric(WRITE_TIMEOUTS).await, 0);
}

/// One source holds at most `--max-http-connections-per-ip` of the connections that have not
/// finished a request; another source, and a trusted proxy, are not held back by it.
#[tokio::test]
async fn one_source_holds_at_most_its_share_of_unfinished_http_connections() {
    use tokio::io::AsyncWriteExt as _;
    for trusted in [false, true] {
        let mut args = vec![
            "--max-http-connections-per-ip",
            "3",
            "--header-read-timeout",
            "5s",
        ];
        if trusted {
            args.extend(["--trusted-proxy", "127.0.0.1/32"]);
        }
        let server = Server::spawn(&args);
        let mut slow = Vec::new();
        for _ in 0..5 {
            let mut tcp = connect_from("127.0.0.1", server.addr).await;
            let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await;
            slow.push(tcp);
        }
        let mut closed = 0;
        for tcp in &mut slow {
            if closed_soon(tcp).await {
                closed += 1;
            }
        }
        // Another source is served meanwhile.
        let mut other = connect_from("127.0.0.2", server.addr).await;
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(
            STEP,
            tokio::io::AsyncReadExt::read_to_string(&mut other, &mut answer),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Closed, they give their source's share back (the metrics are read from it).
        drop(slow);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = server
            .metric("signaling_http_connections_refused_per_ip_total")
            .await;
        if trusted {
            assert_eq!((closed, refused), (0, 0), "a trusted proxy is not limited");
        } else {
            assert_eq!((closed, refused), (2, 2), "3 of 5 held open");
        }
    }
}

/// A connection that carried a stream (here a long-poll, refused) and stays open for more
/// requests counts for its source again: lending the slot to a stream is no way around the
/// share.
#[tokio::test]
async fn a_connection_back_from_a_stream_counts_for_its_source_again() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::spawn(&[
        "--max-http-connections-per-ip",
        "2",
        "--header-read-timeout",
        "5s",
    ]);
    let mut kept = connect_from("127.0.0.1", server.addr).await;
    kept.write_all(b"GET /http/poll?session=made-up HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(STEP, kept.read_exact(&mut head))
        .await
        .expect("an answer")
        .expect("read");
    assert!(
        head.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // `kept` stays open (keep-alive): with it, one more unfinished connection is the share.
    let mut second = connect_from("127.0.0.1", server.addr).await;
    second
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut third = connect_from("127.0.0.1", server.addr).await;
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\n").await;
    assert!(!closed_soon(&mut second).await, "within the share");
    assert!(closed_soon(&mut third).await, "past the share");
    drop((kept, second));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server
            .metric("signaling_http_connections_refused_per_ip_total")
            .await,
        1
    );
}

/// VmHWM (peak RSS) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    testkit::proc_status_kib(pid, "VmHWM")
}

/// A sender and `receivers` more peers in `room` (the sender has read their `peer_joined`).
async fn sender_and_receivers(
    server: &Server,
    room: &str,
    receivers: usize,
) -> (Client, Vec<(Client, SessionInfo)>) {
    let path = format!("/ws/{room}");
    let (mut sender, _) = Client::join(&server.ws_first(&path), None).await;
    let mut joined = Vec::new();
    for _ in 0..receivers {
        joined.push(Client::join(&server.ws(&path), None).await);
        let _ = sender.recv_message().await; // peer_joined
    }
    (sender, joined)
}

/// Broadcasts `blob` as a JSON string.
async fn broadcast(sender: &mut Client, blob: &str) {
    sender
        .send(&ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::Value::String(blob.to_owned()),
        })
        .await;
}

/// Reads what reaches `sender` until 1 ms passes without a frame: the number of `peer_left`
/// among it (each must be a session that ended, not one that left).
async fn ended_so_far(sender: &mut Client) -> usize {
    let mut ended = 0;
    while let Some(frame) = sender.recv_within(Duration::from_millis(1)).await {
        // Acknowledged, as a client that keeps up does: a sender that never acknowledges is
        // among the first the memory budget ends.
        sender.send(&ClientMessage::Ack { seq: frame.seq }).await;
        if let ServerMessage::PeerLeft { reason, .. } = frame.message {
            assert_eq!(reason, LeaveReason::Ended);
            ended += 1;
        }
    }
    ended
}

/// A broadcast is copied to every peer of the room: it takes one token of the message rate per
/// started KiB of its data, so the default burst (200) passes three 60 KB broadcasts, not 200
/// (which a room of 32 would have multiplied into 380 MB to write). Small broadcasts and
/// signals still cost one.
#[tokio::test]
async fn big_broadcasts_take_a_token_per_kib_of_the_message_rate() {
    let server = Server::start(&["--rate-limit", "1"]);
    let (mut a, mut receivers) = sender_and_receivers(&server, "weighted", 1).await;
    let (b, _) = &mut receivers[0];
    let blob = "w".repeat(60_000);
    for _ in 0..4 {
        broadcast(&mut a, &blob).await;
    }
    // 3 x 59 tokens of 200: the fourth is over the rate.
    let refused = a.expect_error(ErrorCode::RateLimited).await;
    match refused.message {
        ServerMessage::Error { message, .. } => {
            assert!(
                message.contains("a broadcast counts one per KiB"),
                "{message}"
            )
        }
        other => panic!("expected the rate_limited error, got {other:?}"),
    }
    for _ in 0..3 {
        match b.recv_message().await {
            ServerMessage::Broadcast { data, .. } => {
                assert_eq!(data.as_str().map(str::len), Some(60_000))
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }
    b.expect_silence(Duration::from_millis(300)).await;
    // What is left of the burst (23 tokens) still passes small messages.
    for _ in 0..20 {
        broadcast(&mut a, "small").await;
    }
    for _ in 0..20 {
        assert!(matches!(
            b.recv_message().await,
            ServerMessage::Broadcast { .. }
        ));
    }
}

#[tokio::test]
async fn silent_receivers_of_big_broadcasts_cost_a_bounded_amount_of_memory() {
    let server = Server::start_process(&[
        "--outbound-queue-bytes",
        "262144",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let (mut a, _silent) = sender_and_receivers(&server, "big", 16).await;
    let before = peak_rss_kib(server.pid());
    // 300 broadcasts of 30 KB: 9 MB for each of 16 receivers that never read (144 MB if the
    // server kept it all). Each silent receiver's queue holds at most 256 KiB, then its session
    // ends (slow_consumer). Measured without the byte bound (only the 256-frame one): 80 MiB.
    let blob = "z".repeat(30_000);
    let mut left = 0;
    for _ in 0..300 {
        broadcast(&mut a, &blob).await;
        left += ended_so_far(&mut a).await;
    }
    while left < 16 {
        match a
            .recv_within(Duration::from_secs(5))
            .await
            .map(|f| f.message)
        {
            Some(ServerMessage::PeerLeft { .. }) => left += 1,
            Some(_) => {}
            None => break,
        }
    }
    let growth_mib = peak_rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!("16 silent receivers of 300 x 30 KB broadcasts: peak RSS +{growth_mib} MiB");
    assert!(
        growth_mib < 32,
        "peak RSS grew by {growth_mib} MiB for 16 silent receivers"
    );
    if crate::support::cluster_nodes() == 1 {
        assert_eq!(left, 16, "every silent receiver was cut off");
    }
}

#[tokio::test]
async fn the_memory_budget_bounds_what_many_silent_receivers_and_parked_sessions_hold() {
    // 24 receivers that never read, each allowed 1 MiB of queue and 1 MiB of replay buffer:
    // 48 MiB by the per-session bounds alone. The 4 MiB budget ends the biggest holders instead.
    let server = Server::start_process(&[
        "--memory-budget",
        "4194304",
        "--replay-max-bytes",
        "1048576",
        "--replay-max-messages",
        "100000",
        "--outbound-queue",
        "100000",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    // The first receiver reads and keeps up: it is not the one to go. 24 more never read.
    let (mut a, mut receivers) = sender_and_receivers(&server, "budget", 25).await;
    let (mut reader, _) = receivers.remove(0);
    let before = peak_rss_kib(server.pid());
    let blob = "b".repeat(20_000);
    let mut left = 0;
    let mut received = 0;
    for n in 1..=400 {
        broadcast(&mut a, &blob).await;
        left += ended_so_far(&mut a).await;
        // The reader keeps up whatever the machine's load: it reads (and, as a client that keeps
        // up does, acknowledges) each broadcast before the next is sent.
        while received < n {
            let frame = reader
                .recv_within(STEP)
                .await
                .expect("the reader that keeps up gets every broadcast");
            if let ServerMessage::Broadcast { .. } = frame.message {
                received += 1;
            }
            reader.send(&ClientMessage::Ack { seq: frame.seq }).await;
        }
    }
    // On a cluster, deliveries to the receivers of other nodes may trail the reader's.
    let mut evictions = 0;
    for _ in 0..100 {
        left += ended_so_far(&mut a).await;
        evictions = server
            .metric("signaling_memory_budget_evictions_total")
            .await;
        if evictions > 0 && left > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth_mib = peak_rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!(
        "24 silent receivers of 400 x 20 KB broadcasts under a 4 MiB budget: peak RSS +{growth_mib} MiB, {left} ended, {evictions} evictions"
    );
    assert!(evictions > 0, "the budget never ended anyone");
    assert!(left > 0);
    assert!(growth_mib < 40, "peak RSS grew by {growth_mib} MiB");
    assert_eq!(received, 400, "the reader that keeps up lost nothing");
}

/// One node shares a broadcast's text between every receiver that queues or keeps it; a
/// cluster's nodes get a frame per receiver from Redis (and keep no replay buffers), so this
/// runs on one node only.
#[tokio::test]
async fn a_broadcast_is_held_once_however_many_receivers_keep_it() {
    if crate::support::cluster_nodes() > 1 {
        return;
    }
    // 24 receivers that never acknowledge, each allowed 8 MiB of replay buffer, get 150
    // broadcasts of 20 KB: 3 MB each, 72 MB if every receiver kept its own copy (measured
    // before the bodies were shared: +71 MiB).
    let server = Server::start_process(&[
        "--memory-budget",
        "1073741824",
        "--replay-max-bytes",
        "8388608",
        "--replay-max-messages",
        "100000",
        "--outbound-queue",
        "100000",
        "--outbound-queue-bytes",
        "8388608",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    ]);
    let (mut a, mut receivers) = sender_and_receivers(&server, "shared", 24).await;
    let before = peak_rss_kib(server.pid());
    let blob = "s".repeat(20_000);
    for _ in 0..150 {
        broadcast(&mut a, &blob).await;
    }
    // The last receiver got all 150: the broadcasts are in every replay buffer by now.
    let (last, _) = receivers.last_mut().unwrap();
    let mut got = 0;
    while got < 150 {
        match last.recv_within(Duration::from_secs(5)).await {
            Some(frame) if matches!(frame.message, ServerMessage::Broadcast { .. }) => got += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(got, 150);
    let growth_mib = peak_rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!("24 receivers keeping 150 x 20 KB broadcasts: peak RSS +{growth_mib} MiB");
    assert!(
        growth_mib < 24,
        "peak RSS grew by {growth_mib} MiB: the broadcasts were copied per receiver"
    );
}

#[tokio::test]
async fn sessions_are_limited_per_client_address_parked_ones_included() {
    let server = Server::start(&["--max-sessions-per-ip", "3", "--resume-grace", "30s"]);
    let url = || server.ws_first("/ws/sessions-ip");
    // Three sessions from one address: two stay attached, one parks (its socket closes).
    let (_a, _) = Client::join(&url(), None).await;
    let (_b, _) = Client::join(&url(), None).await;
    let (c, c_info) = Client::join(&url(), None).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth is refused, even though only two sockets are open.
    let mut d = Client::connect(&url()).await;
    d.send(&join_message("sessions-ip")).await;
    let refused = d.expect_error(ErrorCode::TooManySessions).await;
    assert_eq!(refused.seq, 0);
    assert_eq!(d.expect_close().await, Closed::Code(1013));
    // The parked session resumes (resumes create nothing, so they are not refused)...
    let mut c = Client::connect(&url()).await;
    c.send(&resume_message(&c_info.resume_token, 1)).await;
    loop {
        if let ServerMessage::Resumed { .. } = c.recv_message().await {
            break;
        }
    }
    // ...and when it leaves, its place comes back.
    c.send(&ClientMessage::Leave { id: None }).await;
    assert_eq!(c.expect_close().await, Closed::Code(1000));
    let (_e, _) = Client::join(&url(), None).await;
    assert!(server.errors(ErrorCode::TooManySessions).await >= 1);
}
