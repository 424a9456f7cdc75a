//! Client `stats` reports, the admin listener (snapshot and SSE), the latency histograms, and
//! the Grafana dashboard's series.

use std::net::SocketAddr;
use std::time::Duration;

use signaling::protocol::{
    CandidatePair, CandidateType, ClientMessage, ConnectionStats, ErrorCode, IceProtocol, PeerId,
    RelayProtocol, ServerMessage,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::basic::{candidate, expect_signal, signal};
use crate::support::{Client, STEP, Server, http_get, resume_message};

/// The admin listener's address, from the `admin http://...` line the process printed.
pub(crate) fn admin_addr(server: &mut Server) -> SocketAddr {
    let output = server.startup_output();
    output
        .lines()
        .find_map(|l| l.strip_prefix("admin http://"))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no admin line in {output}"))
}

pub(crate) fn relayed_report(peer: &PeerId) -> ConnectionStats {
    ConnectionStats {
        peer: peer.clone(),
        pair: Some(CandidatePair {
            local: CandidateType::Relay,
            remote: CandidateType::Host,
            protocol: IceProtocol::Udp,
            relay_protocol: Some(RelayProtocol::Udp),
            relay_url: Some("turn:127.0.0.1:3478?transport=udp".into()),
        }),
        rtt_ms: Some(12),
        bytes_sent: 1000,
        bytes_received: 2000,
    }
}

pub(crate) fn stats(report: ConnectionStats) -> ClientMessage {
    ClientMessage::Stats {
        id: Some(7),
        report,
    }
}

/// The first `snapshot` event of `/events` whose data contains `needle`, within `limit`.
pub(crate) async fn sse_snapshot_with(
    admin: SocketAddr,
    needle: &str,
    limit: Duration,
) -> serde_json::Value {
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin");
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: admin\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no snapshot with {needle} in {seen}"))
            .expect("read");
        assert!(n > 0, "the event stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(
            seen.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{seen}"
        );
        // Chunked encoding may split lines; look at whole `data:` lines of snapshot events.
        for event in seen.split("event: snapshot\n").skip(1) {
            let Some(data) = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .filter(|d| d.contains(needle))
            else {
                continue;
            };
            if let Ok(value) = serde_json::from_str(data) {
                return value;
            }
        }
    }
}

pub(crate) fn peer_of<'a>(
    snapshot: &'a serde_json::Value,
    room: &str,
    peer: &PeerId,
) -> &'a serde_json::Value {
    snapshot["rooms"]
        .as_array()
        .and_then(|rooms| rooms.iter().find(|r| r["room"] == room))
        .and_then(|r| r["peers"].as_array())
        .and_then(|peers| peers.iter().find(|p| p["id"] == peer.as_str()))
        .unwrap_or_else(|| panic!("no peer {peer} of {room} in {snapshot}"))
}

#[tokio::test]
async fn stats_reports_are_checked_rate_limited_and_shown_live_on_the_admin_page() {
    let mut server = Server::start_process(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--rate-limit",
        "20",
        "--rate-burst",
        "30",
    ]);
    let admin = admin_addr(&mut server);
    let url = server.ws_first("/ws");
    let (mut a, a_info) = Client::join(&url, Some("stats-room")).await;
    let (mut b, b_info) = Client::join(&url, Some("stats-room")).await;
    let _peer_joined = a.recv_message().await;

    // A good report is accepted silently and counted.
    a.send(&stats(relayed_report(&b_info.peer_id))).await;
    a.expect_silence(Duration::from_millis(200)).await;

    // Values serde cannot refuse: an RTT over the bound, relay fields on a host candidate.
    let mut too_slow = relayed_report(&b_info.peer_id);
    too_slow.rtt_ms = Some(600_001);
    a.send(&stats(too_slow)).await;
    let error = a.expect_error(ErrorCode::InvalidMessage).await;
    assert!(
        matches!(
            error.message,
            ServerMessage::Error {
                reference: Some(7),
                ..
            }
        ),
        "{error:?}"
    );
    let mut not_relayed = relayed_report(&b_info.peer_id);
    if let Some(pair) = &mut not_relayed.pair {
        pair.local = CandidateType::Host;
    }
    a.send(&stats(not_relayed)).await;
    a.expect_error(ErrorCode::InvalidMessage).await;
    // An unknown candidate type or a negative byte count does not parse.
    for bad in [
        r#"{"type":"stats","peer":"x","pair":{"local":"bogus","remote":"host","protocol":"udp"},"bytes_sent":0,"bytes_received":0}"#,
        r#"{"type":"stats","peer":"x","bytes_sent":-1,"bytes_received":0}"#,
    ] {
        a.send_raw(Message::Text(bad.into())).await;
        a.expect_error(ErrorCode::InvalidMessage).await;
    }
    // A report about a peer outside the room (or about oneself).
    for peer in [PeerId::from("000000000000"), a_info.peer_id.clone()] {
        a.send(&stats(relayed_report(&peer))).await;
        a.expect_error(ErrorCode::UnknownPeer).await;
    }

    // A signal, for the relay-latency histogram; one to nobody, which it does not time.
    signal(&mut a, &b_info.peer_id, candidate(1)).await;
    expect_signal(&mut b, &a_info.peer_id).await;
    signal(&mut a, &PeerId::from("000000000000"), candidate(2)).await;
    a.expect_error(ErrorCode::UnknownPeer).await;

    // The report shows on the admin page, live through SSE and as JSON.
    let live = sse_snapshot_with(admin, "\"relayed\"", STEP).await;
    let peer = peer_of(&live, "stats-room", &a_info.peer_id);
    let link = &peer["links"][0];
    assert_eq!(link["peer"], b_info.peer_id.as_str());
    assert_eq!(link["path"], "relayed");
    assert_eq!(link["pair"]["local"], "relay");
    assert_eq!(link["rtt_ms"], 12);
    assert_eq!(link["bytes_sent"], 1000);
    assert!(peer["connected_ms"].is_u64(), "{peer}");
    assert_eq!(live["traffic"]["peers_relayed"], 1, "{live}");
    assert_shaped_as_documented(&live);
    assert_eq!(live["traffic"]["price_per_gb"], 0.05);
    let (status, _, page) = http_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/admin.js"), "{page}");

    // Reports count against the message rate like everything else.
    for _ in 0..60 {
        a.send(&stats(relayed_report(&b_info.peer_id))).await;
    }
    a.expect_error(ErrorCode::RateLimited).await;

    // The histograms observed the joins, the signal and the first report with a pair.
    assert!(server.metric("signaling_join_latency_seconds_count").await >= 2);
    assert_eq!(
        server
            .metric("signaling_signal_latency_seconds_count")
            .await,
        1,
        "the signal delivered, not the one refused"
    );
    assert_eq!(
        server.metric("signaling_ice_connected_seconds_count").await,
        1
    );
    assert_eq!(
        server
            .metric(r#"signaling_ice_paths_total{path="relayed",local="relay",remote="host"}"#)
            .await,
        1,
        "one new pair: the repeats of the same pair are not counted again"
    );
    assert!(server.metric("signaling_stats_reports_total").await >= 1);

    // The room goes away from the page once everyone left (after the bucket refilled).
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.send(&ClientMessage::Leave { id: None }).await;
    b.send(&ClientMessage::Leave { id: None }).await;
    let gone = testkit::wait_until(STEP, || {
        let (_, body) = testkit::http_get(admin, "/snapshot").ok()?;
        (!body.contains("stats-room")).then_some(body)
    });
    assert!(gone.is_some(), "the room stayed on the admin page");
}

/// Every metric name of a PromQL expression: identifiers of our two prefixes, outside label
/// matchers and strings (`{path="relayed"}`, `by (local)`, `$__rate_interval` are skipped).
fn metric_names(expr: &str) -> Vec<String> {
    let mut plain = String::new();
    let (mut braces, mut quoted) = (0, false);
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces -= 1,
            _ if quoted || braces > 0 => {}
            _ => {
                plain.push(c);
                continue;
            }
        }
        plain.push(' ');
    }
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("signaling_") || w.starts_with("relay_"))
        .map(str::to_owned)
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn metric_names_skip_labels_strings_and_variables() {
    assert_eq!(
        metric_names(
            r#"sum by (local) (rate(signaling_ice_paths_total{local="relay",x="relay_y"}[$__rate_interval])) / 1e9 * $egress_price_per_gb"#
        ),
        ["signaling_ice_paths_total"]
    );
}

/// A pair reported again after a resume is no new pair (`signaling_ice_paths_total` counts "each
/// new or changed pair of a peer link"), also when the session resumes on another node of a
/// cluster (which had counted it again after every resume).
#[tokio::test]
async fn a_pair_reported_again_after_resumes_is_counted_once() {
    let server = Server::start(&[]);
    let path = "/ws/paths";
    let ((mut a, a_info), (_b, b_info)) = Client::pair(&server.ws(path), &server.ws(path)).await;
    let relayed = r#"signaling_ice_paths_total{path="relayed",local="relay",remote="host"}"#;
    for round in 0..3 {
        a.send(&stats(relayed_report(&b_info.peer_id))).await;
        a.sync().await;
        assert_eq!(server.metric(relayed).await, 1, "round {round}");
        // The socket drops; the session resumes (in a cluster, on the next node).
        let last_seq = a.last_seq;
        drop(a);
        a = Client::connect(&server.ws(path)).await;
        a.send(&resume_message(&a_info.resume_token, last_seq))
            .await;
        let resumed = a.recv_message().await;
        assert!(
            matches!(resumed, ServerMessage::Resumed { .. }),
            "{resumed:?}"
        );
    }
    // A changed pair is counted.
    let mut direct = relayed_report(&b_info.peer_id);
    direct.pair = direct.pair.map(|pair| CandidatePair {
        local: CandidateType::Host,
        relay_protocol: None,
        relay_url: None,
        ..pair
    });
    a.send(&stats(direct)).await;
    a.sync().await;
    let direct = r#"signaling_ice_paths_total{path="direct",local="host",remote="host"}"#;
    assert_eq!(server.metric(direct).await, 1);
    assert_eq!(server.metric(relayed).await, 1);
}

#[tokio::test]
async fn every_series_the_grafana_dashboard_queries_is_exposed() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/grafana/dashboard.json"))
            .expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 15, "only {} queries", all.len());

    // The real binary with its in-process relay, after a little traffic: two peers, a signal,
    // a report with a selected pair, and an error.
    let mut server = Server::spawn(&["--with-relay", "--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&mut server);
    let url = server.ws_first("/ws");
    let (mut a, a_info) = Client::join(&url, Some("dash")).await;
    let (mut b, b_info) = Client::join(&url, Some("dash")).await;
    let _peer_joined = a.recv_message().await;
    signal(&mut a, &b_info.peer_id, candidate(1)).await;
    a.send(&stats(relayed_report(&b_info.peer_id))).await;
    a.send_raw(Message::Text("{}".into())).await;
    a.expect_error(ErrorCode::InvalidMessage).await;
    expect_signal(&mut b, &a_info.peer_id).await;

    for metrics_at in [server.addr, admin] {
        let (status, _, text) = http_get(metrics_at, "/metrics").await;
        assert_eq!(status, 200);
        let exposed: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        for expr in &all {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "no metric in {expr}");
            // A cluster node's own series: checked in the next test.
            for name in names
                .into_iter()
                .filter(|n| !n.starts_with("signaling_cluster_"))
            {
                assert!(
                    exposed.contains(&name.as_str()),
                    "{name} (in {expr}) is not in {metrics_at}/metrics"
                );
            }
        }
        assert_documented(&text);
    }
}

/// `--no-public-metrics`: the main listener answers 404 on `/metrics` (the web demo's 404, not
/// the exposition); the admin listener still serves it.
#[tokio::test]
async fn no_public_metrics_leaves_metrics_to_the_admin_listener() {
    let mut server = Server::spawn(&["--no-public-metrics", "--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&mut server);
    let (status, _, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 404, "{text}");
    assert!(!text.contains("signaling_"), "{text}");
    let (status, _, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("signaling_sessions"), "{text}");
    // The rest of the main listener is unchanged.
    let (status, _, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
}

/// The fields of `value`, as paths (`rooms[].peers[].links[].age_ms`), over every element of
/// its arrays.
fn field_paths(value: &serde_json::Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                out.insert(path.clone());
                field_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                field_paths(item, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// `snapshot` has the fields of the example in `docs/signaling.md` ("The admin page"), no
/// other: those the example has and `snapshot` lacks are its optional ones (a peer's `name`,
/// `error`, a relay when there is none).
fn assert_shaped_as_documented(snapshot: &serde_json::Value) {
    let doc = include_str!("../../../docs/signaling.md");
    let section = doc.split("## The admin page").nth(1).expect("the section");
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a JSON example");
    let example: serde_json::Value = serde_json::from_str(example).expect("the example is JSON");
    let (mut documented, mut live) = Default::default();
    field_paths(&example, "", &mut documented);
    field_paths(snapshot, "", &mut live);
    let undocumented: Vec<&String> = live.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in the example: {undocumented:?}"
    );
    let optional = |path: &str| {
        path == "error" || path == "rooms[].peers[].name" || path.starts_with("relays[]")
    };
    let missing: Vec<&String> = documented
        .difference(&live)
        .filter(|path| !optional(path))
        .collect();
    assert!(
        missing.is_empty(),
        "in the example, not in {snapshot}: {missing:?}"
    );
}

/// Every series of `metrics` is in the metrics tables of `docs/signaling.md` (or, for the
/// in-process relay's, `docs/relay.md`).
fn assert_documented(metrics: &str) {
    let docs = [
        include_str!("../../../docs/signaling.md"),
        include_str!("../../../docs/relay.md"),
    ];
    let missing: Vec<String> = testkit::exposed_series(metrics)
        .into_iter()
        .filter(|series| !docs.iter().any(|doc| testkit::documents(doc, series)))
        .collect();
    assert!(missing.is_empty(), "not in the docs: {missing:?}");
}

/// A cluster node's series are documented, and they are those the dashboard's cluster panel
/// queries.
#[tokio::test]
async fn every_series_of_a_cluster_node_is_in_the_docs_and_the_dashboard_finds_its_own() {
    let redis = crate::support::redis::RedisServer::start();
    let server = Server::spawn(&["--redis", &redis.url()]);
    let (_a, _) = Client::join(&server.ws("/ws/documented"), None).await;
    let (_, _, text) = server.get("/metrics").await;
    assert_documented(&text);
    let exposed = testkit::exposed_series(&text);
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/grafana/dashboard.json"))
            .expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let cluster: Vec<String> = all
        .iter()
        .flat_map(|expr| metric_names(expr))
        .filter(|name| name.starts_with("signaling_cluster_"))
        .collect();
    assert!(cluster.len() >= 4, "{cluster:?}");
    for name in cluster {
        assert!(
            exposed.contains(&name),
            "{name} is not in a cluster node's /metrics"
        );
    }
}
