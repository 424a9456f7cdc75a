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
