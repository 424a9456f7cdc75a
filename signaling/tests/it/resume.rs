//! Resume: missed-message replay exactly once and in order, grace expiry, replay overflow.

use std::time::Duration;

use signaling::protocol::{
    ClientMessage, ErrorCode, LeaveReason, ResumeToken, ServerFrame, ServerMessage,
};
use tokio_tungstenite::tungstenite::Message;

use crate::basic::{candidate, expect_peer_left, expect_signal, pass_candidate, signal};
use crate::support::{Client, Closed, Server, metric_becomes, resume_message};

#[tokio::test]
async fn resume_replays_missed_messages_exactly_once_in_order() {
    let server = Server::start(&["--resume-grace", "10s"]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&server.ws("/ws/resume"), &server.ws("/ws/resume")).await;

    // B receives 0..5 and processes them; it acks up to 2 only.
    for n in 0..5 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
    }
    let mut seqs = Vec::new();
    for n in 0..5 {
        assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(n));
        seqs.push(b.last_seq);
    }
    b.send(&ClientMessage::Ack { seq: seqs[2] }).await;
    // B "processed" only up to candidate 3 (the last one was lost in its crash).
    let last_processed = seqs[3];
    drop(b); // the socket drops mid-exchange

    // A goes on sending while B is away.
    for n in 5..15 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
    }
    a.sync().await;

    let mut b = Client::connect(&server.ws("/ws/resume")).await;
    b.last_seq = last_processed;
    b.send(&resume_message(&b_info.resume_token, last_processed))
        .await;
    // candidate 4 (seen but not processed) and 5..15, each once, in order, original seqs.
    for n in 4..15 {
        let frame = b.recv().await;
        match frame.message {
            ServerMessage::Signal { from, signal } => {
                assert_eq!(from, a_info.peer_id);
                assert_eq!(signal, candidate(n), "replay out of order");
            }
            other => panic!("expected replayed signal {n}, got {other:?}"),
        }
    }
    match b.recv().await {
        ServerFrame {
            message:
                ServerMessage::Resumed {
                    reference,
                    session,
                    replayed,
                    received: Some(0),
                },
            ..
        } => {
            assert_eq!(reference, Some(77));
            assert_eq!(replayed, 11);
            assert_eq!(session.peer_id, b_info.peer_id, "same peer id");
            assert_eq!(session.peers.len(), 1);
            assert!(session.peers[0].polite, "B keeps its role");
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    // Nothing more: no duplicates.
    b.expect_silence(Duration::from_millis(200)).await;

    // The session goes on both ways, and A never saw B leave or join.
    pass_candidate((&mut b, &b_info.peer_id), (&mut a, &a_info.peer_id), 99).await;
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 100).await;
    a.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        server
            .metric("signaling_resumes_total{result=\"ok\"}")
            .await,
        1
    );
}

#[tokio::test]
async fn resume_takes_over_a_socket_the_server_still_thinks_alive() {
    let server = Server::start(&[]);
    let (mut a, a_info) = Client::join(&server.ws("/ws/takeover"), None).await;
    let (mut old, b_info) = Client::join(&server.ws("/ws/takeover"), None).await;
    let _ = a.recv_message().await;
    let mut b = Client::connect(&server.ws("/ws/takeover")).await;
    b.send(&resume_message(&b_info.resume_token, 1)).await;
    assert!(matches!(
        b.recv_message().await,
        ServerMessage::Resumed { replayed: 0, .. }
    ));
    assert_eq!(old.expect_close().await, Closed::Code(1008));
    pass_candidate((&mut a, &a_info.peer_id), (&mut b, &b_info.peer_id), 1).await;
    a.expect_silence(Duration::from_millis(200)).await;
}

/// A resume that takes over a socket on the same node: the old socket gets nothing of the new
/// one's (not its `resumed`), only its close. A cluster node sent the old socket the new one's
/// `resumed` before closing it, most times.
#[tokio::test]
async fn a_socket_taken_over_on_its_own_node_gets_nothing_of_the_new_ones() {
    let server = Server::start(&[]);
    let url = server.ws_first("/ws/takeover-here");
    let (mut a, a_info) = Client::join(&url, None).await;
    let (mut old, b_info) = Client::join(&url, None).await;
    let _ = a.recv_message().await;
    for round in 0..8 {
        let mut new = Client::connect(&url).await;
        new.send(&resume_message(&b_info.resume_token, old.last_seq))
            .await;
        let resumed = new.recv_message().await;
        assert!(
            matches!(resumed, ServerMessage::Resumed { .. }),
            "{resumed:?}"
        );
        assert_eq!(
            old.expect_close().await,
            Closed::Code(1008),
            "round {round}"
        );
        old = new;
    }
    pass_candidate((&mut a, &a_info.peer_id), (&mut old, &b_info.peer_id), 1).await;
}

#[tokio::test]
async fn grace_expiry_ends_the_session() {
    let server = Server::start(&["--resume-grace", "300ms"]);
    let (mut a, _) = Client::join(&server.ws("/ws/grace"), None).await;
    let (b, b_info) = Client::join(&server.ws("/ws/grace"), None).await;
    let _ = a.recv_message().await;
    drop(b);
    expect_peer_left(&mut a, &b_info.peer_id, LeaveReason::Disconnected).await;
    let mut b = Client::connect(&server.ws("/ws/grace")).await;
    b.send(&resume_message(&b_info.resume_token, 1)).await;
    let frame = b.expect_error(ErrorCode::ResumeFailed).await;
    assert_eq!(frame.seq, 0);
    assert_eq!(b.expect_close().await, Closed::Code(1008));

    // A forged token fails the same way.
    let mut c = Client::connect(&server.ws("/ws/grace")).await;
    let forged = ResumeToken(format!("{}.00", b_info.session_id));
    c.send(&resume_message(&forged, 0)).await;
    c.expect_error(ErrorCode::ResumeFailed).await;
}

#[tokio::test]
async fn replay_overflow_ends_a_parked_session() {
    let server = Server::start(&["--resume-grace", "10s", "--replay-max-messages", "5"]);
    let (mut a, _) = Client::join(&server.ws("/ws/overflow"), None).await;
    let (b, b_info) = Client::join(&server.ws("/ws/overflow"), None).await;
    let _ = a.recv_message().await;
    let open = server.metric("signaling_connections").await;
    drop(b);
    // Parked once its node counts B's connection closed.
    metric_becomes(&server, "signaling_connections", open - 1).await;
    for n in 0..10 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
    }
    // The others learn at once that B's session ended.
    loop {
        match a.recv_message().await {
            ServerMessage::PeerLeft { peer_id, reason } => {
                assert_eq!(peer_id, b_info.peer_id);
                assert_eq!(reason, LeaveReason::Ended);
                break;
            }
            // Signals sent after the session ended find no peer.
            ServerMessage::Error {
                code: ErrorCode::UnknownPeer,
                ..
            } => {}
            other => panic!("expected peer_left, got {other:?}"),
        }
    }
    let mut b = Client::connect(&server.ws("/ws/overflow")).await;
    b.send(&resume_message(&b_info.resume_token, 1)).await;
    b.expect_error(ErrorCode::ReplayOverflow).await;
    assert_eq!(b.expect_close().await, Closed::Code(1008));
}

/// While a socket is attached, frames beyond the replay bound are dropped unacknowledged. A
/// resume from before them (the socket was half dead, or its cluster node died before its lease
/// ran out) cannot be served exactly by anyone: the session ends at once with `replay_overflow`
/// and the others see it leave (`ended`), instead of a `resume_failed` that left it in the room
/// until its grace ran out. A resume from below what the client acknowledged still leaves the
/// session as it was.
#[tokio::test]
async fn a_resume_after_unacknowledged_frames_were_dropped_ends_the_session() {
    let server = Server::start(&["--resume-grace", "30s", "--replay-max-messages", "5"]);
    let (mut a, a_info) = Client::join(&server.ws("/ws/dropped"), None).await;
    let (mut old, b_info) = Client::join(&server.ws("/ws/dropped"), None).await;
    let _ = a.recv_message().await;
    // B reads the first two signals and acknowledges them, then reads nothing more.
    for n in 0..2 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
        assert_eq!(expect_signal(&mut old, &a_info.peer_id).await, candidate(n));
    }
    let acked = old.last_seq;
    old.send(&ClientMessage::Ack { seq: acked }).await;
    old.sync().await;
    for n in 2..12 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
    }
    a.sync().await;

    // Below the ack: the client contradicts itself; the session stays.
    let mut b = Client::connect(&server.ws("/ws/dropped")).await;
    b.send(&resume_message(&b_info.resume_token, acked - 1))
        .await;
    b.expect_error(ErrorCode::ResumeFailed).await;
    assert_eq!(b.expect_close().await, Closed::Code(1008));
    a.expect_silence(Duration::from_millis(300)).await;

    // From the ack: candidates 2..7 were dropped while the old socket was attached.
    let mut b = Client::connect(&server.ws("/ws/dropped")).await;
    b.send(&resume_message(&b_info.resume_token, acked)).await;
    b.expect_error(ErrorCode::ReplayOverflow).await;
    assert_eq!(b.expect_close().await, Closed::Code(1008));
    expect_peer_left(&mut a, &b_info.peer_id, LeaveReason::Ended).await;
    // The socket that was still attached is let go of (on whichever node holds it): it does
    // not hold a place until its ping timeout.
    assert_eq!(old.close_after_frames().await, Closed::Code(1008));
    // Ended for good: the token now says so.
    let mut b = Client::connect(&server.ws("/ws/dropped")).await;
    b.send(&resume_message(&b_info.resume_token, acked)).await;
    b.expect_error(ErrorCode::ReplayOverflow).await;
}

/// A `signal` numbered `cseq` carrying candidate `n`.
pub(crate) fn numbered_signal(to: &signaling::protocol::PeerId, cseq: u64) -> ClientMessage {
    ClientMessage::Signal {
        id: None,
        cseq: Some(cseq),
        to: to.clone(),
        signal: candidate(cseq as u32),
    }
}

/// A `broadcast` of "hello" numbered `cseq`.
fn numbered_hello(cseq: u64) -> ClientMessage {
    ClientMessage::Broadcast {
        id: None,
        cseq: Some(cseq),
        data: serde_json::json!("hello"),
    }
}

#[tokio::test]
async fn numbered_frames_sent_again_after_a_resume_take_effect_once() {
    let server = Server::start(&["--resume-grace", "10s"]);
    // The room and B's name spell the numbers a cluster's `resumed` template holds until its
    // script fills them in: they must stay as they are, and so must the fields.
    const PLACEHOLDERS: &str = r#""received":18446744073709551614,"replayed":18446744073709551615"#;
    let room = "/ws/18446744073709551614";
    let (mut a, a_info) = Client::join(&server.ws(room), None).await;
    let mut b = Client::connect(&server.ws(room)).await;
    b.send(&ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: None,
        name: Some(PLACEHOLDERS.into()),
        token: None,
    })
    .await;
    let b_info = b.expect_welcome().await;
    assert!(matches!(
        a.recv_message().await,
        ServerMessage::PeerJoined { .. }
    ));
    for cseq in 1..=2 {
        a.send(&numbered_signal(&b_info.peer_id, cseq)).await;
    }
    a.send(&numbered_hello(3)).await;
    for n in 1..=2 {
        assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(n));
    }
    assert!(matches!(
        b.recv_message().await,
        ServerMessage::Broadcast { data, .. } if data == "hello"
    ));
    // A `pong` confirms what the session handled.
    a.send(&ClientMessage::Ping { id: Some(5) }).await;
    assert_eq!(
        a.recv_message().await,
        ServerMessage::Pong {
            reference: Some(5),
            received: Some(3)
        }
    );
    // The socket drops; A cannot know whether its last frames arrived.
    let last_seq = a.last_seq;
    drop(a);
    let mut a = Client::connect(&server.ws(room)).await;
    a.send(&resume_message(&a_info.resume_token, last_seq))
        .await;
    match a.recv_message().await {
        ServerMessage::Resumed {
            received,
            replayed,
            session,
            ..
        } => {
            assert_eq!((received, replayed), (Some(3), 0));
            assert_eq!(session.peers[0].name.as_deref(), Some(PLACEHOLDERS));
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    // A sends everything after an older confirmation again, then goes on: only 4 is new.
    for cseq in 2..=4 {
        a.send(&numbered_signal(&b_info.peer_id, cseq)).await;
    }
    a.send(&numbered_hello(3)).await;
    assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(4));
    a.sync().await;
    b.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(server.metric("signaling_duplicate_frames_total").await, 3);
    // Unnumbered frames are never taken for duplicates.
    signal(&mut a, &b_info.peer_id, candidate(1)).await;
    assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(1));
}

#[tokio::test]
async fn a_numbered_frame_over_the_message_rate_closes_the_socket_and_is_sent_again_after_it() {
    // The bucket holds the join and four frames; what follows is over the rate.
    let server = Server::start(&["--rate-limit", "1", "--rate-burst", "5"]);
    let ((mut a, a_info), (mut b, _)) =
        Client::pair(&server.ws("/ws/cseq-rate"), &server.ws("/ws/cseq-rate")).await;
    for cseq in 1..=4 {
        a.send(&numbered_hello(cseq)).await;
    }
    // An unnumbered frame whose data merely mentions the key is dropped like any other...
    a.send_raw(Message::text(
        r#"{"type":"broadcast","data":{"cseq":"not a number"}}"#,
    ))
    .await;
    // ...and a numbered one closes the socket, however its key is spelt.
    a.send_raw(Message::text(
        r#"{"type":"broadcast","cs\u0065q":5,"data":"hello"}"#,
    ))
    .await;
    a.send(&numbered_hello(6)).await;
    for _ in 0..2 {
        match a.recv_message().await {
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {}
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
    assert_eq!(a.expect_close().await, Closed::Code(1013));
    let mut got = 0;
    while got < 4 {
        assert!(matches!(
            b.recv_message().await,
            ServerMessage::Broadcast { .. }
        ));
        got += 1;
    }
    b.expect_silence(Duration::from_millis(200)).await;
    // The resume says 4 were handled: 5 and 6 go again, on a socket with a fresh bucket.
    let last_seq = a.last_seq;
    let mut a = Client::connect(&server.ws("/ws/cseq-rate")).await;
    a.send(&resume_message(&a_info.resume_token, last_seq))
        .await;
    // (The socket read on until its close: 6 got its own `rate_limited`, replayed now.)
    loop {
        match a.recv_message().await {
            ServerMessage::Resumed { received, .. } => break assert_eq!(received, Some(4)),
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {}
            other => panic!("expected resumed, got {other:?}"),
        }
    }
    for cseq in 5..=6 {
        a.send(&numbered_hello(cseq)).await;
    }
    for _ in 5..=6 {
        assert!(matches!(
            b.recv_message().await,
            ServerMessage::Broadcast { .. }
        ));
    }
    b.expect_silence(Duration::from_millis(200)).await;
}
