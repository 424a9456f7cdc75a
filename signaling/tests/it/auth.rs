//! JWT auth (on and off) and the Origin allow-list.

use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use signaling::auth::Claims;
use signaling::protocol::{ClientMessage, ErrorCode};
use tokio_tungstenite::tungstenite;

use crate::support::{Client, Closed, Server};

const SECRET: &str = "test-secret-0123456789";

fn token(secret: &str, room: &str, name: Option<&str>, exp_in: i64) -> String {
    let claims = Claims {
        room: room.into(),
        name: name.map(Into::into),
        exp: (get_current_timestamp() as i64 + exp_in) as u64,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

fn join_with(token: Option<String>, name: Option<&str>) -> ClientMessage {
    ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: None,
        name: name.map(Into::into),
        token,
    }
}

fn http_status(error: tungstenite::Error) -> u16 {
    match error {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn jwt_grants_rooms_and_names() {
    let server = Server::start(&["--jwt-secret", SECRET]);

    // A valid token in the query string; the token's name is used.
    let good = token(SECRET, "vip", Some("alice"), 300);
    let mut c = Client::connect(&server.ws(&format!("/ws/vip?token={good}"))).await;
    c.send(&join_with(None, None)).await;
    let welcome = c.expect_welcome().await;
    assert_eq!(welcome.room.as_str(), "vip");

    // A valid token in join; B sees A's granted name.
    let mut b = Client::connect(&server.ws("/ws/vip")).await;
    b.send(&join_with(
        Some(token(SECRET, "vip", None, 300)),
        Some("bob"),
    ))
    .await;
    let b_welcome = b.expect_welcome().await;
    assert_eq!(b_welcome.peers[0].name.as_deref(), Some("alice"));

    // Missing token.
    let mut c = Client::connect(&server.ws("/ws/vip")).await;
    c.send(&join_with(None, None)).await;
    c.expect_error(ErrorCode::Unauthorized).await;
    assert_eq!(c.expect_close().await, Closed::Code(1008));

    // A token for another room.
    let mut c = Client::connect(&server.ws("/ws/vip")).await;
    c.send(&join_with(Some(token(SECRET, "lobby", None, 300)), None))
        .await;
    c.expect_error(ErrorCode::Forbidden).await;

    // A name the token does not grant.
    let mut c = Client::connect(&server.ws("/ws/vip")).await;
    c.send(&join_with(Some(good.clone()), Some("mallory")))
        .await;
    c.expect_error(ErrorCode::Forbidden).await;

    // Expired, and signed with another secret: refused in join...
    for bad in [
        token(SECRET, "vip", None, -120),
        token("another-secret", "vip", None, 300),
    ] {
        let mut c = Client::connect(&server.ws("/ws/vip")).await;
        c.send(&join_with(Some(bad.clone()), None)).await;
        c.expect_error(ErrorCode::Unauthorized).await;
        // ...and before the upgrade when in the query string.
        let refused = Client::try_connect(&server.ws(&format!("/ws/vip?token={bad}")), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(http_status(refused), 401);
    }
}

#[tokio::test]
async fn without_a_secret_tokens_are_not_needed() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server.ws("/ws/open")).await;
    c.send(&join_with(None, Some("anyone"))).await;
    c.expect_welcome().await;
}

#[tokio::test]
async fn origin_allow_list() {
    let server = Server::start(&[
        "--allowed-origin",
        "https://good.example,http://also.example",
    ]);
    let refused = Client::try_connect(&server.ws("/ws/o"), &[("origin", "https://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!(http_status(refused), 403);
    for headers in [
        &[("origin", "https://good.example")][..],
        &[("origin", "http://also.example")][..],
        &[][..], // not a browser
    ] {
        let mut c = Client::try_connect(&server.ws("/ws/o"), headers)
            .await
            .expect("allowed");
        c.send(&join_with(None, None)).await;
        c.expect_welcome().await;
    }
    let (_, _, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("signaling_errors_total{code=\"forbidden\"} 1"));
}
