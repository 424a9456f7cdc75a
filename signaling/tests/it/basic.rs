//! Rooms, roles, signal forwarding, isolation, leave and disconnect.

use std::time::Duration;

use signaling::protocol::{
    ClientMessage, ErrorCode, IceCandidate, LeaveReason, PeerId, PeerInfo, RequestId,
    ServerMessage, Signal,
};

use crate::support::{Client, Closed, Server};

pub(crate) fn candidate(n: u32) -> Signal {
    Signal::Candidate {
        candidate: IceCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host",
                50000 + n
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("ufrag".into()),
        },
    }
}

pub(crate) async fn signal(client: &mut Client, to: &PeerId, signal: Signal) {
    client
        .send(&ClientMessage::Signal {
            id: None,
            cseq: None,
            to: to.clone(),
            signal,
        })
        .await;
}

/// A `signal` to `to` as request `id`, which an error answering it names.
pub(crate) fn signal_request(
    id: RequestId,
    to: impl Into<PeerId>,
    signal: Signal,
) -> ClientMessage {
    ClientMessage::Signal {
        id: Some(id),
        cseq: None,
        to: to.into(),
        signal,
    }
}

/// `from` signals `candidate(n)` to `to`, which receives it: each side is a client and its peer id.
pub(crate) async fn pass_candidate(
    (from, from_id): (&mut Client, &PeerId),
    (to, to_id): (&mut Client, &PeerId),
    n: u32,
) {
    signal(from, to_id, candidate(n)).await;
    assert_eq!(expect_signal(to, from_id).await, candidate(n));
}

/// Expects `peer` to have left for `reason`.
pub(crate) async fn expect_peer_left(client: &mut Client, peer: &PeerId, reason: LeaveReason) {
    assert_peer_left(Some(client.recv_message().await), peer, reason);
}

/// Panics unless `message` is the `peer_left` of `peer` for `reason`.
#[track_caller]
pub(crate) fn assert_peer_left(message: Option<ServerMessage>, peer: &PeerId, reason: LeaveReason) {
    match message {
        Some(ServerMessage::PeerLeft {
            peer_id,
            reason: got,
        }) => {
            assert_eq!(&peer_id, peer);
            assert_eq!(got, reason);
        }
        other => panic!("expected peer_left, got {other:?}"),
    }
}

/// Expects a signal from `from`; returns its payload.
pub(crate) async fn expect_signal(client: &mut Client, from: &PeerId) -> Signal {
    match client.recv_message().await {
        ServerMessage::Signal { from: got, signal } if &got == from => signal,
        other => panic!("expected a signal from {from}, got {other:?}"),
    }
}

#[tokio::test]
async fn two_peers_negotiate_with_fifo_trickle() {
    let server = Server::start(&[]);
    let (mut a, a_info) = Client::join(&server.ws("/ws/room1"), None).await;
    assert!(a_info.peers.is_empty());
    assert_eq!(a_info.room.as_str(), "room1");
    assert_eq!(a_info.version, 1);
    let (mut b, b_info) = Client::join(&server.ws("/ws"), Some("room1")).await;
    assert_ne!(a_info.peer_id, b_info.peer_id);
    assert_ne!(a_info.session_id, b_info.session_id);
    // The newcomer is polite towards everyone already there, and they are not towards it.
    assert_eq!(
        b_info.peers,
        vec![PeerInfo {
            id: a_info.peer_id.clone(),
            name: None,
            polite: true
        }]
    );
    match a.recv_message().await {
        ServerMessage::PeerJoined { peer } => {
            assert_eq!(peer.id, b_info.peer_id);
            assert!(!peer.polite);
        }
        other => panic!("expected peer_joined, got {other:?}"),
    }

    let offer = Signal::Offer {
        sdp: "v=0 offer".into(),
        ice_restart: false,
    };
    signal(&mut a, &b_info.peer_id, offer.clone()).await;
    for n in 0..50 {
        signal(&mut a, &b_info.peer_id, candidate(n)).await;
    }
    signal(
        &mut a,
        &b_info.peer_id,
        Signal::EndOfCandidates {
            username_fragment: None,
        },
    )
    .await;
    assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, offer);
    for n in 0..50 {
        assert_eq!(expect_signal(&mut b, &a_info.peer_id).await, candidate(n));
    }
    assert!(matches!(
        expect_signal(&mut b, &a_info.peer_id).await,
        Signal::EndOfCandidates { .. }
    ));

    let answer = Signal::Answer {
        sdp: "v=0 answer".into(),
    };
    signal(&mut b, &a_info.peer_id, answer.clone()).await;
    signal(&mut b, &a_info.peer_id, candidate(7)).await;
    assert_eq!(expect_signal(&mut a, &b_info.peer_id).await, answer);
    assert_eq!(expect_signal(&mut a, &b_info.peer_id).await, candidate(7));

    // An ICE-restart offer goes through like any other.
    let restart = Signal::Offer {
        sdp: "v=0 restart".into(),
        ice_restart: true,
    };
    signal(&mut b, &a_info.peer_id, restart.clone()).await;
    assert_eq!(expect_signal(&mut a, &b_info.peer_id).await, restart);
}

#[tokio::test]
async fn three_peers_roles_and_targeted_delivery() {
    let server = Server::start(&[]);
    let ((mut a, a_info), (mut b, b_info)) =
        Client::pair(&server.ws("/ws/trio"), &server.ws("/ws/trio")).await;
    let (mut c, c_info) = Client::join(&server.ws("/ws/trio"), None).await;
    let ids: Vec<_> = c_info.peers.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, [a_info.peer_id.clone(), b_info.peer_id.clone()]);
    assert!(c_info.peers.iter().all(|p| p.polite));
    for client in [&mut a, &mut b] {
        match client.recv_message().await {
            ServerMessage::PeerJoined { peer } => {
                assert_eq!(peer.id, c_info.peer_id);
                assert!(!peer.polite, "older peers are impolite towards newcomers");
            }
            other => panic!("expected peer_joined, got {other:?}"),
        }
    }
    // Each pair has exactly one polite side: b is polite towards a (b_info), a is not.
    assert!(b_info.peers[0].polite);

    // C talks to A and B in interleaved order; each gets only its own messages, in order.
    for n in 0..20 {
        signal(&mut c, &a_info.peer_id, candidate(n)).await;
        signal(&mut c, &b_info.peer_id, candidate(100 + n)).await;
    }
    for n in 0..20 {
        assert_eq!(expect_signal(&mut a, &c_info.peer_id).await, candidate(n));
        assert_eq!(
            expect_signal(&mut b, &c_info.peer_id).await,
            candidate(100 + n)
        );
    }

    // Broadcast reaches everyone else, not the sender.
    c.send(&ClientMessage::Broadcast {
        id: Some(9),
        cseq: None,
        data: serde_json::json!({"chat": "hi"}),
    })
    .await;
    for client in [&mut a, &mut b] {
        match client.recv_message().await {
            ServerMessage::Broadcast { from, data } => {
                assert_eq!(from, c_info.peer_id);
                assert_eq!(data["chat"], "hi");
            }
            other => panic!("expected broadcast, got {other:?}"),
        }
    }
    // `data` may be any JSON value, `null` included.
    c.send(&ClientMessage::Broadcast {
        id: None,
        cseq: None,
        data: serde_json::Value::Null,
    })
    .await;
    for client in [&mut a, &mut b] {
        let message = client.recv_message().await;
        assert!(
            matches!(&message, ServerMessage::Broadcast { data, .. } if data.is_null()),
            "{message:?}"
        );
    }
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn signals_never_cross_rooms() {
    let server = Server::start(&[]);
    let (mut a, _a_info) = Client::join(&server.ws("/ws/red"), None).await;
    let (mut x, x_info) = Client::join(&server.ws("/ws/blue"), None).await;
    a.send(&signal_request(42, x_info.peer_id.clone(), candidate(1)))
        .await;
    let frame = a.expect_error(ErrorCode::UnknownPeer).await;
    match frame.message {
        ServerMessage::Error { reference, .. } => assert_eq!(reference, Some(42)),
        _ => unreachable!(),
    }
    // A made-up id is refused the same way.
    a.send(&signal_request(43, "nobody", candidate(2))).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    x.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn leave_and_disconnect_are_announced() {
    let server = Server::start(&["--resume-grace", "300ms"]);
    let (mut a, _) = Client::join(&server.ws("/ws/bye"), None).await;
    let (mut b, b_info) = Client::join(&server.ws("/ws/bye"), None).await;
    let (c, c_info) = Client::join(&server.ws("/ws/bye"), None).await;
    let _ = a.recv_message().await; // b joined
    let _ = a.recv_message().await; // c joined
    let _ = b.recv_message().await; // c joined

    b.send(&ClientMessage::Leave { id: None }).await;
    assert_eq!(b.expect_close().await, Closed::Code(1000));
    expect_peer_left(&mut a, &b_info.peer_id, LeaveReason::Left).await;

    // C's socket drops without a word: after the grace period it is gone for good.
    drop(c);
    expect_peer_left(&mut a, &c_info.peer_id, LeaveReason::Disconnected).await;
}

/// Two clients that leave at the same moment: the `leave` carried out second is answered
/// after the frames queued before it, so that client hears of the other (`peer_left`) before
/// its close (docs/protocol.md, "leave"). Before, the close could overtake the queued frame
/// and neither heard of the other. One server only: in a cluster the other's `peer_left`
/// comes through Redis and may not have reached the node when the `leave` is carried out.
#[tokio::test]
async fn two_clients_leaving_together_one_hears_of_the_other() {
    if crate::support::cluster_nodes() > 1 {
        return;
    }
    let server = Server::start(&[]);
    for round in 0..20 {
        let url = server.ws(&format!("/ws/together-{round}"));
        let (mut a, a_info) = Client::join(&url, None).await;
        let (mut b, b_info) = Client::join(&url, None).await;
        let _ = a.recv_message().await; // b joined
        let leave = ClientMessage::Leave { id: None };
        tokio::join!(a.send(&leave), b.send(&leave));
        let ((a_frames, a_closed), (b_frames, b_closed)) = tokio::join!(
            a.frames_for(Duration::from_secs(5)),
            b.frames_for(Duration::from_secs(5))
        );
        assert_eq!(a_closed, Some(Closed::Code(1000)));
        assert_eq!(b_closed, Some(Closed::Code(1000)));
        let heard = |frames: &[signaling::protocol::ServerFrame], other: &PeerId| {
            frames.iter().any(|frame| {
                matches!(&frame.message, ServerMessage::PeerLeft { peer_id, .. } if peer_id == other)
            })
        };
        assert!(
            heard(&a_frames, &b_info.peer_id) || heard(&b_frames, &a_info.peer_id),
            "round {round}: neither heard the other leave"
        );
    }
}

#[tokio::test]
async fn silent_zombies_time_out() {
    let server = Server::start(&[
        "--ping-interval",
        "200ms",
        "--ping-timeout",
        "600ms",
        "--resume-grace",
        "200ms",
    ]);
    let (mut a, _) = Client::join(&server.ws("/ws/zombies"), None).await;
    // B joins and then never reads again, so it never answers a ping.
    let (zombie, zombie_info) = Client::join(&server.ws("/ws/zombies"), None).await;
    let _ = a.recv_message().await; // peer_joined
    // A keeps reading (and so answers pings) and must outlive the zombie.
    expect_peer_left(&mut a, &zombie_info.peer_id, LeaveReason::Timeout).await;
    drop(zombie);
    // A, which answers pings, is still served.
    a.ping(5).await;
}

/// RFC 6455 section 5.5.1: the server answers a client's close frame with its own (its code,
/// or 1002 for a code the RFC forbids), so the client's close handshake completes cleanly.
#[tokio::test]
async fn a_clients_close_frame_is_answered_with_one() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = Server::start(&[]);
    for (sent, answered) in [(1000, 1000), (999, 1002)] {
        let (mut client, _) = Client::join(&server.ws("/ws/closing"), None).await;
        let close = CloseFrame {
            code: CloseCode::from(sent),
            reason: "bye".into(),
        };
        client
            .send_raw(Message::Frame(Frame::close(Some(close))))
            .await;
        assert_eq!(
            client.expect_close().await,
            Closed::Code(answered),
            "{sent}"
        );
    }
}

/// A broadcast's `data` may nest 126 levels of arrays inside the frame's own object (`protocol.md`,
/// Limits); one more is `invalid_message`, the frame dropped and the socket kept.
#[tokio::test]
async fn json_nested_past_the_documented_depth_is_invalid_and_the_socket_stays() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&[]);
    let url = server.ws_first("/ws/nesting");
    let ((mut a, _), (mut b, _)) = Client::pair(&url, &url).await;
    let broadcast = |depth: usize| {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        Message::text(format!(r#"{{"type":"broadcast","data":{data}}}"#))
    };
    a.send_raw(broadcast(126)).await;
    assert!(matches!(
        b.recv_message().await,
        ServerMessage::Broadcast { .. }
    ));
    a.send_raw(broadcast(127)).await;
    a.expect_error(ErrorCode::InvalidMessage).await;
    a.sync().await;
    b.expect_silence(Duration::from_millis(200)).await;
}
