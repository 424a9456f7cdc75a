//! The admin API (`docs/signaling.md`, "Admin API"): list rooms and peers, kick a peer, close
//! a room, read usage, drain the node; every action refused without the API key (401).

use signaling::protocol::{ErrorCode, LeaveReason, ServerMessage};

use crate::basic::expect_peer_left;
use crate::support::{Client, Closed, Server, cluster_nodes, http_request, resume_message};

const KEY: &str = "admin-key-1";

async fn call(server: &Server, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let header = auth.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    let (status, _, body) = http_request(server.addr, method, path, &headers, "").await;
    (status, body)
}

const ACTIONS: [(&str, &str); 6] = [
    ("GET", "/v1/rooms"),
    ("POST", "/v1/rooms/adm/peers/000000000000/kick"),
    ("POST", "/v1/rooms/adm/close"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/usage?format=csv"),
    ("POST", "/v1/drain"),
];

/// The string `field` of every object of the JSON array `list`.
fn strings_of<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = list.as_array().expect("an array");
    items
        .iter()
        .map(|item| item[field].as_str().expect(field))
        .collect()
}

#[tokio::test]
async fn every_admin_action_is_refused_without_the_key() {
    let server = Server::start(&["--api-key", KEY]);
    let (mut a, _) = Client::join(&server.ws_first("/ws/adm"), None).await;
    for (method, path) in ACTIONS {
        for auth in [None, Some("wrong-key")] {
            let (status, body) = call(&server, method, path, auth).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            assert!(body.contains("unauthorized"), "{body}");
        }
    }
    // Nothing happened: the peer is still there, the node is not draining.
    a.sync().await;
    assert_eq!(server.get("/readyz").await.0, 200);
    // The operator sees every refusal (a key being guessed) in the metrics.
    assert_eq!(
        server
            .metric(r#"signaling_api_answers_total{status="401"}"#)
            .await,
        2 * ACTIONS.len() as u64
    );
    // Without --api-key or --jwt-secret the API does not exist.
    let bare = Server::start(&[]);
    for (method, path) in ACTIONS {
        let (status, _) = call(&bare, method, path, Some(KEY)).await;
        assert_eq!(status, 404, "{method} {path}");
    }
}

#[tokio::test]
async fn the_admin_lists_kicks_and_closes_rooms() {
    // In a cluster run the clients spread over the nodes and the API of the first node acts on
    // all of them.
    let server = Server::start(&["--api-key", KEY]);
    let (mut a, a_info) = Client::join(&server.ws("/ws/adm"), None).await;
    let (mut b, b_info) = Client::join(&server.ws("/ws/adm"), None).await;
    let (mut c, _) = Client::join(&server.ws("/ws/adm"), None).await;
    let (mut d, d_info) = Client::join(&server.ws("/ws/quiet"), None).await;
    for _ in 0..2 {
        let _ = a.recv_message().await;
    }
    let _ = b.recv_message().await;

    let (status, body) = call(&server, "GET", "/v1/rooms", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rooms = view["rooms"].as_array().expect("rooms");
    let adm = rooms.iter().find(|r| r["room"] == "adm").expect("room adm");
    let ids: Vec<&str> = strings_of(&adm["peers"], "id");
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], a_info.peer_id.as_str());
    assert!(rooms.iter().any(|r| r["room"] == "quiet"), "{body}");

    let first = &adm["peers"][0];
    assert_eq!(
        strings_of(&adm["peers"], "transport"),
        ["websocket"; 3],
        "every peer's transport, whichever node serves it"
    );
    if cluster_nodes() == 1 {
        assert_eq!(first["node"], "local");
    } else {
        let nodes: std::collections::HashSet<&str> =
            strings_of(&adm["peers"], "node").into_iter().collect();
        assert_eq!(nodes.len(), 3, "the peers are on three nodes: {body}");
    }
    assert_eq!(first["state"], "attached");
    assert!(first["connected_secs"].as_u64().is_some(), "{body}");
    // One room's peers have the same fields as the list's.
    let (status, body) = call(&server, "GET", "/v1/rooms/adm", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).expect("json");
    let peers = one["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 3, "{body}");
    assert!(
        peers.iter().all(|p| p["connected_secs"].as_u64().is_some()),
        "{body}"
    );
    // Pages: the rooms after a given one; `total` counts them all.
    for (after, rooms) in [
        ("a", &["adm", "quiet"][..]),
        ("adm", &["quiet"]),
        ("quiet", &[]),
    ] {
        let path = format!("/v1/rooms?after={after}");
        let (status, body) = call(&server, "GET", &path, Some(KEY)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(strings_of(&page["rooms"], "room"), rooms, "{path}: {body}");
        assert_eq!(page["total"], 2, "{path}: {body}");
    }
    for (path, code) in [
        ("/v1/rooms?limit=1", "invalid_message"),
        ("/v1/rooms?after=bad%2Froom", "invalid_room_id"),
    ] {
        let (status, body) = call(&server, "GET", path, Some(KEY)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(code), "{path}: {body}");
    }

    // Kick b: b is told and closed, the others see it leave, and b cannot resume.
    let kick = format!("/v1/rooms/adm/peers/{}/kick", b_info.peer_id);
    let (status, body) = call(&server, "POST", &kick, Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(b_info.peer_id.as_str()), "{body}");
    let kicked = b.expect_error(ErrorCode::Kicked).await;
    // The same words on one node and on a cluster.
    assert!(
        matches!(&kicked.message, ServerMessage::Error { message, .. } if message == "an operator removed you from the room"),
        "{kicked:?}"
    );
    assert_eq!(b.expect_close().await, Closed::Code(1008));
    for other in [&mut a, &mut c] {
        expect_peer_left(other, &b_info.peer_id, LeaveReason::Ended).await;
    }
    let mut again = Client::connect(&server.ws("/ws")).await;
    again
        .send(&resume_message(&b_info.resume_token, b.last_seq))
        .await;
    again.expect_error(ErrorCode::Kicked).await;
    assert_eq!(again.expect_close().await, Closed::Code(1008));
    let (status, body) = call(&server, "POST", &kick, Some(KEY)).await;
    assert_eq!(status, 404, "a second kick finds nobody: {body}");
    assert!(body.contains("unknown_peer"), "{body}");

    // Close the room: both remaining peers are told, and told nothing else (no `peer_left` of
    // the other: both end); the other room is untouched.
    let (status, body) = call(&server, "POST", "/v1/rooms/adm/close", Some(KEY)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"closed":2}"#));
    for peer in [&mut a, &mut c] {
        match peer.recv_message().await {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::RoomClosed);
                assert_eq!(message, "an operator closed the room");
            }
            other => panic!("expected room_closed, got {other:?}"),
        }
        assert_eq!(peer.expect_close().await, Closed::Code(1008));
    }
    let (_, body) = call(&server, "GET", "/v1/rooms", Some(KEY)).await;
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rooms: Vec<&str> = strings_of(&view["rooms"], "room");
    assert_eq!(rooms, ["quiet"]);
    d.sync().await;
    assert_eq!(d_info.room.as_str(), "quiet");
}

#[tokio::test]
async fn usage_reads_as_json_and_csv_and_drain_tells_clients() {
    let server = Server::start(&["--api-key", KEY, "--drain-timeout", "2s"]);
    let (mut a, _) = Client::join(&server.ws_first("/ws/drain"), None).await;
    // No in-process relay here: an empty report (the accounting itself is tested end to end
    // with a relay in tests/it/usage.rs).
    let (status, body) = call(&server, "GET", "/v1/usage?since=10m", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["users"], serde_json::json!([]));
    assert_eq!(report["rooms"], serde_json::json!([]));
    let (status, body) = call(&server, "GET", "/v1/usage?format=csv&by=room", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("from,to,room,users,bytes_to_peer"),
        "{body}"
    );
    let (status, body) = call(&server, "GET", "/v1/usage?from=10&to=5", Some(KEY)).await;
    assert_eq!(status, 400, "{body}");
    // A misspelt parameter is refused, not read as "everything kept".
    let (status, body) = call(&server, "GET", "/v1/usage?sinse=10m", Some(KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown parameter `sinse`"), "{body}");

    let (status, body) = call(&server, "POST", "/v1/drain", Some(KEY)).await;
    assert_eq!(status, 202, "{body}");
    match a.recv_message().await {
        ServerMessage::Draining { .. } => {}
        other => panic!("expected draining, got {other:?}"),
    }
    assert_eq!(server.get("/readyz").await.0, 503);
}
