//! The protocol over HTTP (`docs/protocol.md`, "When WebSockets are blocked"): SSE + POST and
//! long-polling carry a session exactly like a socket. Every request goes to the next node in
//! turn, so in a cluster run (`SIGNALING_IT_NODES=3`) no two consecutive requests of a session
//! reach the same node: nothing may depend on stickiness.

use std::time::Duration;

use signaling::protocol::{
    ClientMessage, ErrorCode, LeaveReason, PeerId, ResumeToken, ServerFrame, ServerMessage, Signal,
};

use crate::http_client::{self, Event, Sse};
use crate::limits::{flood_until_cut_off, slow_consumer_args};
use crate::support::{Client, STEP, Server, resume_message};
use tokio_tungstenite::tungstenite::Message;

fn offer(n: u32) -> Signal {
    Signal::Offer {
        sdp: format!("v=0 #{n}"),
        ice_restart: false,
    }
}

fn signal(to: &PeerId, n: u32) -> ClientMessage {
    ClientMessage::Signal {
        id: None,
        cseq: None,
        to: to.clone(),
        signal: offer(n),
    }
}

/// The `n` of a signal made by [`offer`].
fn offer_number(frame: &ServerFrame) -> u32 {
    match &frame.message {
        ServerMessage::Signal {
            signal: Signal::Offer { sdp, .. },
            ..
        } => sdp.rsplit('#').next().unwrap().parse().unwrap(),
        other => panic!("expected a signal, got {other:?}"),
    }
}

/// Asserts that the body of `reply` is an error frame with `code`.
fn assert_error_code(reply: &http_client::Reply, code: ErrorCode) {
    assert!(
        matches!(reply.error().message, ServerMessage::Error { code: got, .. } if got == code),
        "{}",
        reply.body
    );
}

fn welcome_peer(frame: &ServerFrame) -> PeerId {
    match &frame.message {
        ServerMessage::Welcome { session, .. } => session.peer_id.clone(),
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn sse_and_post_carry_a_session_like_a_socket() {
    let server = Server::start(&[]);
    let a = http_client::open_as(server.next_addr(), "web", "A").await;
    let mut events = Sse::connect(server.next_addr(), &a, None).await;
    assert_eq!(events.status, 200);
    let welcome = events.frame().await;
    assert_eq!(welcome.seq, 1);
    let a_peer = welcome_peer(&welcome);

    let (mut b, b_info) = Client::join(&server.ws("/ws/web"), None).await;
    let joined = events.frame().await;
    assert!(
        matches!(&joined.message, ServerMessage::PeerJoined { peer } if peer.id == b_info.peer_id),
        "{joined:?}"
    );
    // Socket -> SSE.
    b.send(&signal(&a_peer, 1)).await;
    let got = events.frame().await;
    assert_eq!((got.seq, offer_number(&got)), (3, 1));
    // POST -> socket, and a ping whose pong comes on the stream.
    let reply = http_client::send(
        server.next_addr(),
        &a,
        &[
            signal(&b_info.peer_id, 2),
            ClientMessage::Ping { id: Some(7) },
        ],
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    match b.recv_message().await {
        ServerMessage::Signal { from, signal } => {
            assert_eq!((from, signal), (a_peer.clone(), offer(2)));
        }
        other => panic!("expected the signal, got {other:?}"),
    }
    let pong = events.frame().await;
    assert_eq!(
        pong.message,
        ServerMessage::Pong {
            reference: Some(7),
            received: Some(0)
        }
    );
    // An unknown target is answered on the stream, as over a socket.
    let reply = http_client::send(
        server.next_addr(),
        &a,
        &[signal(&PeerId::from("nobody"), 3)],
    )
    .await;
    assert_eq!(reply.status, 204);
    let error = events.frame().await;
    assert!(
        matches!(
            error.message,
            ServerMessage::Error {
                code: ErrorCode::UnknownPeer,
                ..
            }
        ),
        "{error:?}"
    );
    // Leave: the stream closes with 1000, the room hears `left`.
    let reply =
        http_client::send(server.next_addr(), &a, &[ClientMessage::Leave { id: None }]).await;
    assert_eq!(reply.status, 204);
    assert_eq!(events.next_within(STEP).await, Some(Event::Close(1000)));
    assert_eq!(
        b.recv_message().await,
        ServerMessage::PeerLeft {
            peer_id: a_peer,
            reason: LeaveReason::Left
        }
    );
    // The session is gone: its token opens nothing any more.
    let reply =
        http_client::send(server.next_addr(), &a, &[ClientMessage::Ping { id: None }]).await;
    assert_eq!(reply.status, 410);
    let gone = Sse::connect(server.next_addr(), &a, None).await;
    assert_eq!(gone.status, 410);
}

#[tokio::test]
async fn a_numbered_send_retried_after_a_lost_reply_is_delivered_once() {
    let server = Server::start(&[]);
    let a = http_client::open_as(server.next_addr(), "retry", "A").await;
    let mut events = Sse::connect(server.next_addr(), &a, None).await;
    let _welcome = events.frame().await;
    let (mut b, b_info) = Client::join(&server.ws("/ws/retry"), None).await;
    let _joined = events.frame().await;
    let numbered = |cseq: u64| ClientMessage::Signal {
        id: None,
        cseq: Some(cseq),
        to: b_info.peer_id.clone(),
        signal: offer(cseq as u32),
    };
    let batch = [numbered(1), numbered(2)];
    let reply = http_client::send(server.next_addr(), &a, &batch).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    // The client never saw that reply (a network error): it posts the same batch again, to
    // another node in a cluster run, with the next frame behind it.
    let reply = http_client::send(
        server.next_addr(),
        &a,
        &[batch[0].clone(), batch[1].clone(), numbered(3)],
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    for n in 1..=3 {
        match b.recv_message().await {
            ServerMessage::Signal { signal, .. } => assert_eq!(signal, offer(n)),
            other => panic!("expected signal {n}, got {other:?}"),
        }
    }
    b.sync().await;
    b.expect_silence(Duration::from_millis(300)).await;
    let reply = http_client::send(
        server.next_addr(),
        &a,
        &[ClientMessage::Ping { id: Some(1) }],
    )
    .await;
    assert_eq!(reply.status, 204);
    let pong = events.frame().await;
    assert_eq!(
        pong.message,
        ServerMessage::Pong {
            reference: Some(1),
            received: Some(3)
        }
    );
}

#[tokio::test]
async fn a_dropped_sse_stream_resumes_with_last_event_id_and_loses_no_frame() {
    let server = Server::start(&[]);
    let a = http_client::open_as(server.next_addr(), "drop", "A").await;
    let mut events = Sse::connect(server.next_addr(), &a, None).await;
    let a_peer = welcome_peer(&events.frame().await);
    let (mut b, _) = Client::join(&server.ws("/ws/drop"), None).await;
    let _joined = events.frame().await;
    let mut seen = Vec::new();
    let mut last_id = 2;
    for n in 0..40 {
        b.send(&signal(&a_peer, n)).await;
    }
    // Read some, then the stream breaks (no close event: the TCP connection just goes).
    for _ in 0..15 {
        let frame = events.frame().await;
        last_id = frame.seq;
        seen.push(offer_number(&frame));
    }
    drop(events);
    for n in 40..80 {
        b.send(&signal(&a_peer, n)).await;
    }
    b.sync().await;
    // Reconnect as EventSource does, on another node in a cluster run.
    let mut events = Sse::connect(server.next_addr(), &a, Some(last_id)).await;
    assert_eq!(events.status, 200);
    while seen.len() < 80 {
        let frame = events.frame().await;
        assert_eq!(
            frame.seq,
            last_id + 1,
            "contiguous seq across the reconnect"
        );
        last_id = frame.seq;
        seen.push(offer_number(&frame));
    }
    assert_eq!(
        seen,
        (0..80).collect::<Vec<_>>(),
        "every frame, once, in order"
    );
    // No `resumed` frame on a stream reconnect: nothing more is waiting.
    assert!(
        events
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing after the last signal"
    );
}

/// A server whose message rate a test's bursts do not reach, with `extra` flags.
fn unlimited_rate_server(extra: &[&str]) -> Server {
    let mut args = vec!["--rate-limit", "100000", "--rate-burst", "100000"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sessions A and B open `room` over HTTP; A polled its first frames: A's and B's session
/// tokens, A's peer id and the last seq A read.
async fn two_http_sessions(server: &Server, room: &str) -> (String, String, PeerId, u64) {
    let a = http_client::open_as(server.next_addr(), room, "A").await;
    let b = http_client::open_as(server.next_addr(), room, "B").await;
    let first = http_client::poll(server.next_addr(), &a, 0).await;
    let a_peer = welcome_peer(&first.frames[0]);
    let a_seq = first.frames.last().unwrap().seq;
    (a, b, a_peer, a_seq)
}

#[tokio::test]
async fn long_polling_keeps_order_under_a_burst_of_1000_signals() {
    // The rate limit would spread the burst over 16 s; the replay buffer must hold what
    // arrives between two polls.
    let server = unlimited_rate_server(&[
        "--replay-max-messages",
        "2048",
        "--replay-max-bytes",
        "1048576",
    ]);
    let (a, b, a_peer, mut a_seq) = two_http_sessions(&server, "burst").await;
    let b_frames = http_client::poll(server.next_addr(), &b, 0).await.frames;
    let b_seq = b_frames.last().unwrap().seq;
    // B acks what it has and sends 1,000 signals in batches of 25, as fast as it can.
    let addrs = server.addrs();
    let sender = tokio::spawn({
        let b = b.clone();
        async move {
            let ack = ClientMessage::Ack { seq: b_seq };
            let reply = http_client::send(addrs[0], &b, &[ack]).await;
            assert_eq!(reply.status, 204);
            for batch in 0..40u32 {
                let frames: Vec<ClientMessage> =
                    (0..25).map(|i| signal(&a_peer, batch * 25 + i)).collect();
                let addr = addrs[batch as usize % addrs.len()];
                let reply = http_client::send(addr, &b, &frames).await;
                assert_eq!(reply.status, 204, "{}", reply.body);
            }
        }
    });
    let mut got = Vec::new();
    let mut polls = 0;
    while got.len() < 1000 && polls < 2000 {
        let reply = http_client::poll(server.next_addr(), &a, a_seq).await;
        polls += 1;
        assert_eq!(reply.close, None);
        for frame in reply.frames {
            assert_eq!(frame.seq, a_seq + 1, "no gap, no duplicate");
            a_seq = frame.seq;
            if let ServerMessage::Signal { .. } = frame.message {
                got.push(offer_number(&frame));
            }
        }
    }
    sender.await.expect("sender");
    assert_eq!(got, (0..1000).collect::<Vec<_>>(), "in order, each once");
    eprintln!("1000 signals in {polls} polls");
}

/// One poll reply carries at most what the outbound queue holds (frames and bytes), even
/// when the replay buffer holds more: the rest comes with the next polls, in order, once.
#[tokio::test]
async fn a_poll_reply_holds_at_most_the_outbound_queue() {
    let server = unlimited_rate_server(&[
        "--replay-max-messages",
        "1000",
        "--replay-max-bytes",
        "4194304",
        "--outbound-queue",
        "16",
        "--outbound-queue-bytes",
        "131072",
    ]);
    let (a, b, a_peer, mut a_seq) = two_http_sessions(&server, "capped").await;
    // Between two of A's polls: 100 signals, then 10 broadcasts of 30 KB.
    let signals: Vec<ClientMessage> = (0..100).map(|n| signal(&a_peer, n)).collect();
    for batch in signals.chunks(25) {
        let reply = http_client::send(server.next_addr(), &b, batch).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    for n in 0..10 {
        let broadcast = ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::json!({ "n": n, "pad": "x".repeat(30_000) }),
        };
        let reply = http_client::send(server.next_addr(), &b, &[broadcast]).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    let (mut signals_got, mut broadcasts_got, mut replies) = (Vec::new(), Vec::new(), Vec::new());
    while broadcasts_got.len() < 10 && replies.len() < 100 {
        let reply = http_client::poll(server.next_addr(), &a, a_seq).await;
        assert_eq!(reply.close, None);
        let bytes: usize = reply
            .frames
            .iter()
            .map(|f| serde_json::to_string(f).unwrap().len())
            .sum();
        replies.push((reply.frames.len(), bytes));
        for frame in reply.frames {
            assert_eq!(frame.seq, a_seq + 1, "no gap, no duplicate");
            a_seq = frame.seq;
            match &frame.message {
                ServerMessage::Signal { .. } => signals_got.push(offer_number(&frame)),
                ServerMessage::Broadcast { data, .. } => broadcasts_got.push(data["n"].as_u64()),
                _ => {}
            }
        }
    }
    let sent = (
        (0..100).collect::<Vec<u32>>(),
        (0..10).map(Some).collect::<Vec<_>>(),
    );
    assert_eq!((signals_got, broadcasts_got), sent, "in order, each once");
    assert!(
        replies
            .iter()
            .all(|&(frames, bytes)| frames <= 16 && bytes <= 131_072),
        "replies (frames, bytes): {replies:?}"
    );
    assert!(
        replies.iter().any(|&(frames, _)| frames == 16),
        "a full reply: {replies:?}"
    );
}

/// A key written twice is `invalid_message` wherever it is, on a socket and in an HTTP send
/// alike (a broadcast's `data` included): nothing of it reaches the room.
#[tokio::test]
async fn a_key_written_twice_is_refused_on_a_socket_and_over_http() {
    let server = Server::start(&[]);
    let ((mut a, _), (mut b, _)) =
        Client::pair(&server.ws("/ws/twice"), &server.ws("/ws/twice")).await;
    let bad = [
        r#"{"type":"broadcast","data":{"a":1,"a":2}}"#,
        r#"{"type":"broadcast","data":[{"x":{"k":1,"k":2}}]}"#,
        r#"{"type":"ping","id":6,"id":7}"#,
    ];
    for frame in bad {
        a.send_raw(Message::text(frame)).await;
        a.expect_error(ErrorCode::InvalidMessage).await;
    }
    let http = http_client::open_as(server.addr, "twice", "H").await;
    let _joined = b.recv_message().await;
    let path = format!("/http/send?session={http}");
    for body in bad
        .iter()
        .map(|f| f.to_string())
        .chain([format!(r#"[{{"type":"ping"}},{}]"#, bad[0])])
    {
        let reply = http_client::post(server.addr, &path, &body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_error_code(&reply, ErrorCode::InvalidMessage);
    }
    b.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn sends_obey_the_message_rate_and_the_frame_size_limit() {
    let server = Server::start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "10",
        "--max-message-bytes",
        "2048",
    ]);
    let a = http_client::open_as(server.addr, "limits", "A").await;
    let ping = ClientMessage::Ping { id: None };
    let ten = vec![ping.clone(); 10];
    let reply = http_client::send(server.addr, &a, &ten).await;
    assert_eq!(reply.status, 204);
    // The burst is spent: nothing of the next send is handled.
    let reply = http_client::send(server.addr, &a, std::slice::from_ref(&ping)).await;
    assert_eq!(reply.status, 429);
    assert_error_code(&reply, ErrorCode::RateLimited);
    // More frames than the burst can never pass.
    let reply = http_client::send(server.addr, &a, &vec![ping.clone(); 11]).await;
    assert_eq!(reply.status, 413);
    // A body over the frame size limit.
    let big = format!(r#"{{"type":"broadcast","data":"{}"}}"#, "x".repeat(4096));
    let reply = http_client::post(server.addr, &format!("/http/send?session={a}"), &big).await;
    assert_eq!(reply.status, 413);
    assert_error_code(&reply, ErrorCode::MessageTooLarge);
    // One bad frame: none is handled, and the error names it.
    let reply = http_client::post(
        server.addr,
        &format!("/http/send?session={a}"),
        r#"[{"type":"ping"},{"type":"dance"}]"#,
    )
    .await;
    assert_eq!(reply.status, 400);
    match reply.error().message {
        ServerMessage::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::InvalidMessage);
            assert!(message.starts_with("frame 1:"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Not a session.
    let reply = http_client::send(server.addr, "0000000000000001.00", &[ping]).await;
    assert_eq!(reply.status, 410);
    // The stream got the ten pongs, and nothing of the refused sends.
    let reply = http_client::poll(server.addr, &a, 1).await;
    let pongs = reply
        .frames
        .iter()
        .filter(|f| matches!(f.message, ServerMessage::Pong { .. }))
        .count();
    assert_eq!((pongs, reply.frames.len()), (10, 10));
    assert!(server.errors(ErrorCode::RateLimited).await >= 1);
}

#[tokio::test]
async fn stream_requests_count_as_connections_and_a_newer_stream_takes_over() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let a = http_client::open_as(server.addr, "conns", "A").await;
    let b = http_client::open_as(server.addr, "conns", "B").await;
    let mut first = Sse::connect(server.addr, &a, None).await;
    assert_eq!(first.status, 200);
    let _welcome = first.frame().await;
    let mut second = Sse::connect(server.addr, &b, None).await;
    assert_eq!(second.status, 200);
    // A third open stream from this address is one too many.
    let third = Sse::connect(server.addr, &a, None).await;
    assert_eq!(third.status, 429);
    let (status, _, body) =
        crate::support::http_get(server.addr, &format!("/http/poll?session={b}")).await;
    assert_eq!(status, 429, "{body}");
    drop(second.next_within(Duration::from_millis(100)).await);
    drop(second);
    // With a slot free again, a second stream of A takes the session over: the first one is
    // told 1008 and ends.
    let mut newer = None;
    for _ in 0..50 {
        let attempt = Sse::connect(server.addr, &a, Some(1)).await;
        if attempt.status == 200 {
            newer = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut newer = newer.expect("the slot of the dropped stream is given back");
    let mut ending = first.next_within(STEP).await;
    if let Some(Event::Frame { frame, .. }) = &ending {
        // B's arrival, if this stream had not passed it on yet.
        assert!(
            matches!(frame.message, ServerMessage::PeerJoined { .. }),
            "{frame:?}"
        );
        ending = first.next_within(STEP).await;
    }
    assert_eq!(ending, Some(Event::Close(1008)));
    assert!(first.next_within(STEP).await.is_none(), "the stream ended");
    // The newer stream carries the session on.
    let frame = newer.frame().await;
    assert_eq!(frame.seq, 2);
    assert!(
        matches!(frame.message, ServerMessage::PeerJoined { .. }),
        "{frame:?}"
    );
}

/// HEAD is not GET on a stream or an upgrade, where it would act (take the session's stream
/// over, attach a session): it gets the empty 405 of any other method, and the open stream
/// goes on.
#[tokio::test]
async fn head_is_refused_and_takes_no_stream_over() {
    let server = Server::start(&[]);
    let a = http_client::open_as(server.addr, "head", "A").await;
    let mut stream = Sse::connect(server.addr, &a, None).await;
    let _welcome = stream.frame().await;
    for path in [
        format!("/http/events?session={a}&last_seq=1"),
        format!("/http/poll?session={a}&last_seq=1"),
        "/ws/head".to_owned(),
        "/ws".to_owned(),
        "/y-webrtc".to_owned(),
        "/peerjs/peerjs?key=peerjs&id=someone&token=t".to_owned(),
    ] {
        for method in ["HEAD", "POST", "PUT", "DELETE"] {
            let (head, _) = http_client::http_exchange(server.addr, method, &path, &[], "").await;
            assert!(head.starts_with("HTTP/1.1 405"), "{method} {path}: {head}");
            assert!(
                head.contains("\r\nallow: GET\r\n"),
                "{method} {path}: {head}"
            );
            assert!(
                head.contains("\r\ncontent-length: 0\r\n"),
                "{method} {path}: {head}"
            );
        }
        // OPTIONS: a CORS preflight on a stream (answered, naming no HEAD), another method
        // on an upgrade.
        let (head, _) = http_client::http_exchange(server.addr, "OPTIONS", &path, &[], "").await;
        let allow = head
            .lines()
            .find_map(|l| l.strip_prefix("allow: "))
            .unwrap_or("");
        assert!(!allow.contains("HEAD"), "OPTIONS {path}: {head}");
        if path.starts_with("/http/") {
            assert!(head.starts_with("HTTP/1.1 200"), "OPTIONS {path}: {head}");
        } else {
            assert!(head.starts_with("HTTP/1.1 405"), "OPTIONS {path}: {head}");
            assert_eq!(allow, "GET", "OPTIONS {path}: {head}");
        }
    }
    // Still A's stream: B's arrival comes through it.
    let _b = http_client::open_as(server.addr, "head", "B").await;
    let frame = stream.frame().await;
    assert!(
        matches!(frame.message, ServerMessage::PeerJoined { .. }),
        "{frame:?}"
    );
}

#[tokio::test]
async fn an_http_session_without_a_stream_expires_like_a_parked_one() {
    let server = Server::start(&["--resume-grace", "1s"]);
    let (mut b, _) = Client::join(&server.ws("/ws/idle"), None).await;
    let a = http_client::open_as(server.next_addr(), "idle", "A").await;
    let joined = b.recv_message().await;
    let ServerMessage::PeerJoined { peer } = joined else {
        panic!("expected peer_joined, got {joined:?}");
    };
    // A never opens a stream: after the grace period the room hears it left.
    let left = tokio::time::timeout(Duration::from_secs(6), b.recv_message())
        .await
        .expect("peer_left within the grace period and a sweep");
    assert_eq!(
        left,
        ServerMessage::PeerLeft {
            peer_id: peer.id,
            reason: LeaveReason::Disconnected
        }
    );
    // Its token is worth nothing now.
    let (status, _, body) =
        crate::support::http_get(server.next_addr(), &format!("/http/poll?session={a}")).await;
    assert_eq!(status, 410, "{body}");
}

/// A stream request refused on its session token is not counted as accepted
/// (`signaling_connections_accepted_total`: "past its checks"); one that attaches is.
#[tokio::test]
async fn streams_refused_on_their_session_token_are_not_counted_as_accepted() {
    let server = Server::start(&[]);
    for path in [
        "/http/events?session=nonsense",
        "/http/poll?session=nonsense",
    ] {
        let (status, _, body) = crate::support::http_get(server.next_addr(), path).await;
        assert_eq!(status, 410, "{body}");
    }
    let accepted = "signaling_connections_accepted_total";
    assert_eq!(server.metric(accepted).await, 0);
    let a = http_client::open_as(server.next_addr(), "counted", "A").await;
    let reply = http_client::poll(server.next_addr(), &a, 0).await;
    assert!(!reply.frames.is_empty(), "the welcome");
    assert_eq!(server.metric(accepted).await, 1);
}

/// A request body that cannot be read (a malformed chunked encoding) is `400 invalid_message`,
/// not `413 message_too_large` (it was, whatever its size).
#[tokio::test]
async fn a_malformed_chunked_body_is_invalid_not_too_large() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&[]);
    let join = br#"{"type":"join","versions":[1]}"#;
    // A chunk size one over the 30 bytes that follow, and one that is no number.
    for size in ["1f", "zz"] {
        let mut stream = tokio::net::TcpStream::connect(server.next_addr())
            .await
            .unwrap();
        let mut request = b"POST /http/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
            Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        request.extend_from_slice(format!("{size}\r\n").as_bytes());
        request.extend_from_slice(join);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(STEP, stream.read_to_end(&mut response))
            .await
            .expect("an answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 400"), "{size}: {text}");
        assert!(text.contains("invalid_message"), "{size}: {text}");
    }
}

#[tokio::test]
async fn a_refused_open_answers_a_status_and_an_error_frame() {
    let server = Server::start(&["--max-peers-per-room", "1"]);
    let _a = http_client::open_as(server.next_addr(), "full", "A").await;
    let refused = http_client::open(server.next_addr(), "full", &http_client::join("B"))
        .await
        .expect_err("the room is full");
    assert_eq!(refused.status, 503);
    // A 503 closes its connection: a client's next try, on a new one, may reach another node
    // through a balancer.
    let join = serde_json::to_string(&http_client::join("B")).unwrap();
    let (head, _) = http_client::http_exchange(
        server.next_addr(),
        "POST",
        "/http/full",
        &[("Content-Type", "application/json")],
        &join,
    )
    .await;
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{head}"
    );
    let error = refused.error();
    assert_eq!(error.seq, 0);
    // The error answers the `join` (id 1), as over a socket.
    assert!(
        matches!(
            error.message,
            ServerMessage::Error {
                code: ErrorCode::RoomFull,
                reference: Some(1),
                ..
            }
        ),
        "{error:?}"
    );
    let refused = http_client::post(server.next_addr(), "/http/full", r#"{"type":"ping"}"#).await;
    assert_eq!(refused.status, 400);
    let refused = http_client::open(server.next_addr(), "bad room!", &http_client::join("C"))
        .await
        .expect_err("invalid room");
    assert_eq!(refused.status, 400);
}

#[tokio::test]
async fn a_websocket_session_continues_over_http_after_a_resume() {
    let server = Server::start(&[]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&server.ws("/ws/switch"), &server.ws("/ws/switch")).await;
    a.sync().await;
    let last = 3; // welcome, peer_joined, the pong of `sync`
    drop(a);
    b.send(&signal(&a_info.peer_id, 5)).await;
    b.sync().await;
    // A's WebSocket is blocked from now on: it resumes over HTTP.
    let resume = resume_message(&a_info.resume_token, last);
    let token = http_client::open(server.next_addr(), "switch", &resume)
        .await
        .expect("resume over HTTP");
    assert_eq!(token, a_info.resume_token.0);
    let reply = http_client::poll(server.next_addr(), &token, last).await;
    let kinds: Vec<_> = reply.frames.iter().map(|f| (f.seq, &f.message)).collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(offer_number(&reply.frames[0]), 5);
    assert!(matches!(
        reply.frames[1].message,
        ServerMessage::Resumed { replayed: 1, .. }
    ));
    let _ = b_info;
}

#[tokio::test]
async fn an_idle_sse_stream_gets_keep_alive_comments() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&["--ping-interval", "200ms", "--ping-timeout", "2s"]);
    let a = http_client::open_as(server.addr, "quiet", "A").await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /http/events?session={a} HTTP/1.0\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    while !String::from_utf8_lossy(&seen).contains("\n: ping\n\n")
        && tokio::time::Instant::now() < deadline
    {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains("\n: ping\n\n"),
        "a keep-alive comment: {text}"
    );
}

#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_cut_off_not_buffered() {
    let server = Server::start(&slow_consumer_args());
    let (mut a, _) = Client::join(&server.ws("/ws/slow-sse"), None).await;
    let b = http_client::open_as(server.next_addr(), "slow-sse", "B").await;
    // B's stream is open but never read again.
    let _stalled = Sse::connect(server.next_addr(), &b, None).await;
    let ServerMessage::PeerJoined { peer } = a.recv_message().await else {
        panic!("expected peer_joined");
    };
    assert!(
        flood_until_cut_off(&mut a, &peer.id).await,
        "the stalled SSE reader was never cut off"
    );
    // Its stream is dropped within the write timeout, and its token is dead.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.metric("signaling_connections").await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply =
        http_client::send(server.next_addr(), &b, &[ClientMessage::Ping { id: None }]).await;
    assert_eq!(reply.status, 410);
    assert_error_code(&reply, ErrorCode::SlowConsumer);
}

#[tokio::test]
async fn open_streams_do_not_use_up_the_http_connection_cap() {
    // SSE streams and pending polls count as connections (--max-connections), not as HTTP
    // connections still sending their request (--max-http-connections, the slowloris cap).
    let server = Server::start(&["--max-http-connections", "8", "--poll-timeout", "20s"]);
    let mut streams = Vec::new();
    let mut polls = Vec::new();
    for i in 0..20 {
        let session = http_client::open_as(server.addr, "many", &format!("p{i}")).await;
        if i % 2 == 0 {
            let mut sse = Sse::connect(server.addr, &session, None).await;
            assert_eq!(sse.status, 200, "stream {i}");
            let _welcome = sse.frame().await;
            streams.push(sse);
        } else {
            // Drain the welcome and peer_joined frames, then leave a poll pending.
            let first = http_client::poll(server.addr, &session, 0).await;
            let last = first.frames.last().unwrap().seq;
            let addr = server.addr;
            polls.push(tokio::spawn(async move {
                crate::support::http_get(
                    addr,
                    &format!("/http/poll?session={session}&last_seq={last}"),
                )
                .await
            }));
        }
    }
    // Ten streams (the polls may have returned with other peers' arrivals): past the cap of 8.
    crate::support::metric_reaches(&server, "signaling_connections", 10, Duration::from_secs(5))
        .await;
    // Still serving: metrics, a WebSocket join, a new open.
    let (_client, _) = Client::join(&server.ws_first("/ws/many-ws"), None).await;
    http_client::open(server.addr, "many", &http_client::join("late"))
        .await
        .expect("a new open is served");
    assert_eq!(
        server
            .metric("signaling_http_connections_refused_total")
            .await,
        0
    );
    drop(streams);
    for poll in polls {
        poll.abort();
    }
}

/// The head of the answer to a raw HTTP/1.1 request (lower-cased, for header checks).
pub(crate) async fn answer_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// A 200 that grants `https://app.example` and carries `header` (lower-cased `name: value`).
fn assert_granted(head: &str, header: &str) {
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(head.contains(header), "{header}: {head}");
}

#[tokio::test]
async fn a_page_of_an_allowed_origin_may_use_the_http_transports_from_another_origin() {
    let server = Server::start(&["--allowed-origin", "https://app.example"]);
    let preflight = |origin: &str, path: &str, method: &str, headers: &str| {
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
        )
    };
    let app = "https://app.example";
    // The preflight of the JSON open is granted to the allowed origin...
    let head = answer_head(
        server.addr,
        &preflight(app, "/http/cors", "POST", "content-type"),
    )
    .await;
    assert_granted(&head, "access-control-allow-headers: content-type");
    // ...as is that of an event stream read with `Last-Event-ID` by `fetch`.
    let events = "/http/events?session=x";
    let head = answer_head(server.addr, &preflight(app, events, "GET", "last-event-id")).await;
    let allowed = head
        .lines()
        .find(|l| l.starts_with("access-control-allow-headers:"))
        .unwrap_or_default();
    assert!(allowed.contains("last-event-id"), "{head}");
    // ...and so is the open itself, with Retry-After readable by the page.
    let body = serde_json::to_string(&http_client::join("A")).unwrap();
    let open = format!(
        "POST /http/cors HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let head = answer_head(server.addr, &open).await;
    assert_granted(&head, "access-control-expose-headers: retry-after");
    // Another origin gets no grant (and its open would be refused: forbidden).
    let other = preflight(
        "https://other.example",
        "/http/cors",
        "POST",
        "content-type",
    );
    let head = answer_head(server.addr, &other).await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test]
async fn a_draining_server_serves_its_long_polling_sessions_until_the_drain_ends() {
    let server = Server::start(&[
        "--api-key",
        "drain-key",
        "--drain-timeout",
        "20s",
        "--poll-timeout",
        "2s",
    ]);
    // A's requests all go to the node that drains (the first, in a cluster run).
    let a = http_client::open_as(server.addr, "drain-poll", "A").await;
    let first = http_client::poll(server.addr, &a, 0).await;
    let a_peer = welcome_peer(&first.frames[0]);
    let mut a_seq = first.frames.last().unwrap().seq;
    let (mut b, _) = Client::join(&server.ws("/ws/drain-poll"), None).await;
    let auth = [("Authorization", "Bearer drain-key")];
    let (status, _, body) =
        http_client::http_request(server.addr, "POST", "/v1/drain", &auth, "").await;
    assert_eq!(status, 202, "{body}");
    // A session the draining node serves keeps being served, as a socket stays open: its
    // polls are answered (200, not 503 `draining`) and carry what the room sends meanwhile.
    b.send(&signal(&a_peer, 1)).await;
    let (mut draining, mut signals) = (0, Vec::new());
    for _ in 0..10 {
        let reply = http_client::poll(server.addr, &a, a_seq).await;
        for frame in reply.frames {
            a_seq = frame.seq;
            match frame.message {
                ServerMessage::Draining { .. } => draining += 1,
                ServerMessage::Signal { .. } => signals.push(offer_number(&frame)),
                _ => {}
            }
        }
        // (`draining` and the signal may come in either order.)
        if !signals.is_empty() && draining > 0 {
            break;
        }
    }
    assert_eq!(signals, [1]);
    assert_eq!(draining, 1, "the session was told, once");
    // A client coming back with `resume` is sent elsewhere.
    let resume = resume_message(&ResumeToken(a.clone()), a_seq);
    let refused = http_client::open(server.addr, "drain-poll", &resume)
        .await
        .expect_err("a draining node takes no resume");
    assert_eq!(refused.status, 503, "{}", refused.body);
}

#[tokio::test]
async fn a_long_polling_session_gets_fresh_turn_credentials_before_they_expire() {
    // Polls re-attach the session every 300 ms, far more often than the refresh (at 80% of
    // the 10 s TTL): each re-attach must keep the due refresh, not push it back.
    let server = Server::start(&[
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret",
        "poll-secret",
        "--turn-ttl",
        "10s",
        "--poll-timeout",
        "300ms",
    ]);
    let a = http_client::open_as(server.next_addr(), "poll-ice", "A").await;
    let start = std::time::Instant::now();
    let (mut seq, mut pushed, mut polls) = (0, None, 0);
    while pushed.is_none() && start.elapsed() < Duration::from_secs(15) {
        let reply = http_client::poll(server.next_addr(), &a, seq).await;
        polls += 1;
        for frame in reply.frames {
            seq = frame.seq;
            if let ServerMessage::IceServers { .. } = frame.message {
                pushed = Some(start.elapsed());
            }
        }
    }
    let pushed = pushed.unwrap_or_else(|| panic!("no ice_servers in {polls} polls"));
    // Due at 8 s; before the first credentials expire (10 s after the open).
    assert!(
        pushed < Duration::from_millis(10_000),
        "pushed after {pushed:?}"
    );
}

/// A `send` whose replies overflow the replay buffer of its parked session (no stream reads
/// them) ends the session: that send is answered with the session's end, `replay_overflow`,
/// as the next request is. It was `resume_failed` ("unknown or expired session"). One server
/// only: a cluster node counts a parked session's frames in Redis, and ends it later.
#[tokio::test]
async fn a_send_that_overflows_its_session_is_answered_with_replay_overflow() {
    if crate::support::cluster_nodes() > 1 {
        return;
    }
    let server = Server::start(&[
        "--replay-max-messages",
        "20",
        "--rate-burst",
        "1000",
        "--rate-limit",
        "1000",
    ]);
    let a = http_client::open_as(server.next_addr(), "overflow", "A").await;
    let pings = |n: usize| vec![ClientMessage::Ping { id: None }; n];
    let reply = http_client::send(server.next_addr(), &a, &pings(10)).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply = http_client::send(server.next_addr(), &a, &pings(30)).await;
    assert_eq!(reply.status, 410, "{}", reply.body);
    assert_error_code(&reply, ErrorCode::ReplayOverflow);
    let reply = http_client::send(server.next_addr(), &a, &pings(1)).await;
    assert_error_code(&reply, ErrorCode::ReplayOverflow);
}
