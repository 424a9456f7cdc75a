//! y-webrtc compatibility (`/y-webrtc`), spoken as y-webrtc's client speaks it: subscribe to
//! topics, publish to a topic's other subscribers, ping. In a cluster run the clients sit on
//! different nodes. The real library runs in the browser tests.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{STEP, Server};

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
    send(
        &mut a,
        json!({"type":"publish","topic":"shared notes / ü","data":offer}),
    )
    .await;
    assert_eq!(
        next(&mut b, STEP).await,
        Some(json!({"type":"publish","topic":"shared notes / ü","data":offer}))
    );
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
    let (mut a, mut b) = (connect(&url()).await, connect(&url()).await);
    subscribe(&mut a, &["t"]).await;
    subscribe(&mut b, &["t"]).await;
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
        let closed = tokio::time::timeout(STEP, async {
            loop {
                match bad_client.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await
        .expect("closed in time");
        assert!(
            matches!(
                closed,
                Some(CloseCode::Invalid | CloseCode::Size | CloseCode::Policy)
            ),
            "{closed:?}"
        );
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
    assert!(
        server
            .metric("signaling_errors_total{code=\"invalid_message\"}")
            .await
            >= 1
    );
}

/// A PeerJS client socket (as PeerJS opens it with `path: '/peerjs'`, key `key`).
async fn peerjs(server: &Server, key: &str, id: &str, token: &str) -> Ws {
    connect(&server.ws(&format!(
        "/peerjs/peerjs?key={key}&id={id}&token={token}&version=1.5.5"
    )))
    .await
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

    let mut alice = peerjs(&server, "app", "alice", "t-alice").await;
    assert_eq!(next(&mut alice, STEP).await, Some(json!({"type":"OPEN"})));
    let mut bob = peerjs(&server, "app", "bob", "t-bob").await;
    assert_eq!(next(&mut bob, STEP).await, Some(json!({"type":"OPEN"})));
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
    let mut other = peerjs(&server, "other-app", "alice", "t-x").await;
    assert_eq!(next(&mut other, STEP).await, Some(json!({"type":"OPEN"})));
    send(&mut other, json!({"type":"OFFER","dst":"bob","payload":{}})).await;
    assert_eq!(next(&mut other, STEP).await.unwrap()["type"], "EXPIRE");
    // Unknown types are answered with ERROR; malformed JSON closes.
    send(&mut bob, json!({"type":"DANCE"})).await;
    assert_eq!(next(&mut bob, STEP).await.unwrap()["type"], "ERROR");
    bob.send(Message::text("{nope")).await.unwrap();
    assert_eq!(next(&mut bob, STEP).await.unwrap()["type"], "ERROR");
}

#[tokio::test]
async fn peerjs_messages_for_a_reconnecting_peer_wait_for_it() {
    let server = Server::start(&[]);
    let mut alice = peerjs(&server, "app", "alice", "t-alice").await;
    assert_eq!(next(&mut alice, STEP).await, Some(json!({"type":"OPEN"})));
    let mut bob = peerjs(&server, "app", "bob", "t-bob").await;
    assert_eq!(next(&mut bob, STEP).await, Some(json!({"type":"OPEN"})));
    for n in 0..20 {
        send(
            &mut bob,
            json!({"type":"CANDIDATE","dst":"alice","payload":{"n":n}}),
        )
        .await;
    }
    for n in 0..20 {
        assert_eq!(next(&mut alice, STEP).await.unwrap()["payload"]["n"], n);
    }
    // Alice's signaling socket drops; Bob keeps sending (peerjs-server would expire these
    // after 5 s; here they wait for the resume grace period).
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 20..40 {
        send(
            &mut bob,
            json!({"type":"CANDIDATE","dst":"alice","payload":{"n":n}}),
        )
        .await;
    }
    // No EXPIRE: alice is parked, not gone.
    assert_eq!(next(&mut bob, Duration::from_millis(300)).await, None);
    // PeerJS's reconnect: the same id and token, on any node.
    let mut alice = peerjs(&server, "app", "alice", "t-alice").await;
    assert_eq!(next(&mut alice, STEP).await, Some(json!({"type":"OPEN"})));
    for n in 20..40 {
        assert_eq!(
            next(&mut alice, STEP).await.expect("held message")["payload"]["n"],
            n,
            "every held message, in order, once"
        );
    }
    assert_eq!(next(&mut alice, Duration::from_millis(300)).await, None);
}
