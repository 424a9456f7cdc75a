//! The backend HTTP API: list a room's peers, push a message into a room (on every node).

use std::net::SocketAddr;

use signaling::protocol::{PeerId, ServerMessage};

use crate::support::{Client, Server, http_request};

const KEY: &str = "backend-key-1";
/// The `--jwt-secret` of the tests that sign tokens.
const JWT_SECRET: &str = "jwt-s3cret";

/// `GET path` with this `Authorization` header: status, content type, body.
async fn get_authorized(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> (u16, String, String) {
    http_request(addr, "GET", path, &[("Authorization", authorization)], "").await
}

/// A JWT of `claims` signed with [`JWT_SECRET`].
fn sign(claims: serde_json::Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_backend_lists_a_room_and_pushes_into_it() {
    let server = Server::start(&["--api-key", KEY]);
    let (mut a, a_info) = Client::join(&server.ws("/ws/api"), Some("api")).await;
    let (mut b, b_info) = Client::join(&server.ws("/ws/api"), Some("api")).await;
    let _ = a.recv_message().await;
    let auth = format!("Bearer {KEY}");
    // Every node answers for the whole room.
    for addr in server.addrs() {
        let (status, _, body) = get_authorized(addr, "/v1/rooms/api", &auth).await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("json");
        let ids: Vec<&str> = view["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [a_info.peer_id.as_str(), b_info.peer_id.as_str()]);
        assert!(view["peers"][0]["state"] == "attached");
    }
    let (status, _, body) = http_request(
        server.addr,
        "POST",
        "/v1/rooms/api/broadcast",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"notice":"5 minutes left"}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":2}"#));
    for client in [&mut a, &mut b] {
        match client.recv_message().await {
            ServerMessage::Broadcast { from, data } => {
                assert_eq!(from, PeerId::from("server"));
                assert_eq!(data["notice"], "5 minutes left");
            }
            other => panic!("expected the backend's broadcast, got {other:?}"),
        }
    }
    // The scheme in any case, with more than one space (RFC 9110 section 11.1).
    for auth in [format!("bearer {KEY}"), format!("BEARER  {KEY}")] {
        let (status, _, body) = get_authorized(server.addr, "/v1/rooms/api", &auth).await;
        assert_eq!(status, 200, "{auth}: {body}");
    }
    // Wrong key or scheme, bad body, bad room.
    for auth in [
        "Bearer nope",
        &format!("Basic {KEY}"),
        &format!("Bearer{KEY}"),
    ] {
        let (status, _, _) = get_authorized(server.addr, "/v1/rooms/api", auth).await;
        assert_eq!(status, 401, "{auth}");
    }
    let (status, _, _) = http_request(server.addr, "GET", "/v1/rooms/api", &[], "").await;
    assert_eq!(status, 401);
    let (status, _, body) = http_request(
        server.addr,
        "POST",
        "/v1/rooms/api/broadcast",
        &[("Authorization", &auth)],
        "not json",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_message"));
    let (status, _, _) = get_authorized(server.addr, "/v1/rooms/bad%2Froom", &auth).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_an_api_key_the_api_does_not_exist() {
    let server = Server::start(&[]);
    let (status, _, _) = get_authorized(server.addr, "/v1/rooms/x", "Bearer anything").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_admin_token_opens_the_api_and_a_room_token_does_not() {
    let server = Server::start(&["--jwt-secret", JWT_SECRET]);
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    let admin = format!(
        "Bearer {}",
        sign(serde_json::json!({"admin": true, "exp": exp}))
    );
    let room = format!(
        "Bearer {}",
        sign(serde_json::json!({"room": "x", "exp": exp}))
    );
    let get =
        |auth: String| async move { get_authorized(server.addr, "/v1/rooms/x", &auth).await.0 };
    assert_eq!(get(admin).await, 200);
    assert_eq!(get(room).await, 401);
}

/// Without `--api-key` and `--jwt-secret`, `/v1/ice-servers` does not exist, as the rest of
/// the API.
#[tokio::test]
async fn ice_servers_without_keys_or_a_jwt_secret_answer_404() {
    let server = Server::start(&["--turn-secret", "turn-s3cret"]);
    let (status, _, body) =
        get_authorized(server.addr, "/v1/ice-servers?room=notes", "Bearer anything").await;
    assert_eq!((status, body.as_str()), (404, ""));
}

#[tokio::test]
async fn ice_servers_for_other_client_libraries_need_a_key_or_a_token_for_the_room() {
    let server = Server::start(&[
        "--api-key",
        KEY,
        "--jwt-secret",
        JWT_SECRET,
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret",
        "turn-s3cret",
    ]);
    let room_token = sign(
        serde_json::json!({"room": "notes", "exp": jsonwebtoken::get_current_timestamp() + 60}),
    );
    let get = |path: &'static str, auth: String| async move {
        get_authorized(server.addr, path, &auth).await
    };
    let (status, _, body) = get("/v1/ice-servers?room=notes", format!("Bearer {KEY}")).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let turn = &view["iceServers"][0];
    assert_eq!(turn["urls"][0], "turn:127.0.0.1:3478?transport=udp");
    assert!(turn["username"].as_str().unwrap().contains(':'), "{body}");
    assert!(turn["credential"].is_string());
    let (status, _, _) = get("/v1/ice-servers?room=notes", format!("Bearer {room_token}")).await;
    assert_eq!(status, 200, "a token for the room");
    let (status, _, body) = get("/v1/ice-servers?room=other", format!("Bearer {room_token}")).await;
    assert_eq!(status, 401, "a token for another room");
    // The refusal names every credential that would do, the client's own room token too.
    let refusal: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(refusal["code"], "unauthorized", "{body}");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("room token (JWT) for ?room=")),
        "{body}"
    );
    let (status, _, _) = get("/v1/ice-servers?room=notes", "Bearer nope".into()).await;
    assert_eq!(status, 401);

    // A room that is no room id (a y-webrtc topic may hold any character): minted for its
    // topic's room, by either credential, so a username never holds the topic's characters.
    let topic_token = sign(
        serde_json::json!({"room": "co:lon\nnotes", "exp": jsonwebtoken::get_current_timestamp() + 60}),
    );
    let topic_room = signaling::y_webrtc::topic_room("co:lon\nnotes");
    for auth in [format!("Bearer {topic_token}"), format!("Bearer {KEY}")] {
        let (status, _, body) = get("/v1/ice-servers?room=co%3Alon%0Anotes", auth).await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        let username = view["iceServers"][0]["username"]
            .as_str()
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = username.split(':').collect();
        assert_eq!(parts.len(), 3, "{username}");
        assert_eq!(parts[1], topic_room.as_str(), "{username}");
    }
}
