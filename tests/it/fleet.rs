//! Relays as a fleet: three (or four) real `relay` processes registered in a real Redis, one
//! signaling node reading the fleet. Every room gets one relay by rendezvous hashing, both peers
//! of a room get the same one, a joining relay takes about 1/N of the rooms, and the rooms of a
//! relay that dies or drains move at once (their sessions get `ice_servers`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::redis::RedisServer;
use e2e::signaling_http;
use futures_util::{SinkExt as _, StreamExt as _};
use signaling::protocol::{ServerFrame, ServerMessage, SessionInfo};
use tokio_tungstenite::tungstenite::Message;

use crate::peer_e2e::{Proc, Signaling, start_signaling_with, wait_joined};

/// A registered relay process, its UDP port (how the tests recognise its TURN URLs) and its
/// admin address (metrics).
pub(crate) struct FleetRelay {
    pub(crate) proc: Proc,
    pub(crate) port: u16,
    pub(crate) admin: SocketAddr,
}

/// Starts a relay that registers in `redis` as `id` (TURN secret agreed through Redis).
pub(crate) fn start_fleet_relay(redis: &RedisServer, id: &str) -> FleetRelay {
    start_fleet_relay_with(redis, id, &[])
}

/// [`start_fleet_relay`] with extra flags (`--region`, ...); a `--node-heartbeat`,
/// `--node-lease` or `--drain-timeout` among them replaces the default.
pub(crate) fn start_fleet_relay_with(redis: &RedisServer, id: &str, extra: &[&str]) -> FleetRelay {
    let url = redis.url();
    let mut args = vec!["--register", &url, "--node-id", id];
    let defaults = [
        ("--node-heartbeat", "200ms"),
        ("--node-lease", "1s"),
        ("--drain-timeout", "30s"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    start_loopback_relay("127.0.0.1:0", &args)
}

/// A UDP-only relay process listening on `listen`, relaying to loopback peers, with an admin
/// listener, started with `extra` flags; once it is ready.
pub(crate) fn start_loopback_relay(listen: &str, extra: &[&str]) -> FleetRelay {
    let mut args = vec![
        "--listen",
        listen,
        "--no-tcp",
        "--admin-listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--allow-loopback-peers",
    ];
    args.extend(extra);
    let mut proc = crate::peer_e2e::spawn("relay", &args, false);
    let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("listening udp "));
    let port = line["listening udp ".len()..]
        .parse::<SocketAddr>()
        .expect("relay address")
        .port();
    let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("admin http://"));
    let admin = line["admin http://".len()..]
        .parse()
        .expect("admin address");
    proc.wait_line(Duration::from_secs(20), |l| l == "ready");
    FleetRelay { proc, port, admin }
}

/// A sample of a relay's own `/metrics` (0 when absent).
pub(crate) fn relay_metric(relay: &FleetRelay, sample: &str) -> u64 {
    let (status, text) = testkit::http_get(relay.admin, "/metrics").expect("relay /metrics");
    assert_eq!(status, 200, "{text}");
    testkit::metric_value(&text, sample).map_or(0, |v| v as u64)
}

/// Payload bytes a relay relayed (to peers, to clients), from its own `/metrics`.
pub(crate) fn relayed_bytes(relay: &FleetRelay) -> (u64, u64) {
    (
        relay_metric(relay, "relay_bytes_relayed_total{direction=\"to_peer\"}"),
        relay_metric(relay, "relay_bytes_relayed_total{direction=\"to_client\"}"),
    )
}

/// A signaling node on `redis` that re-reads the fleet every 200 ms.
pub(crate) fn start_fleet_signaling(redis: &RedisServer) -> Signaling {
    start_fleet_signaling_with(
        redis,
        &[
            "--fleet-refresh",
            "200ms",
            "--join-rate-per-ip",
            "100000",
            "--join-burst-per-ip",
            "100000",
        ],
    )
}

/// The API key of the fleet's signaling nodes ([`api_get`]).
pub(crate) const API_KEY: &str = "fleet-test-key";

/// A signaling node on `redis` taking [`API_KEY`], with `extra` flags.
fn start_fleet_signaling_with(redis: &RedisServer, extra: &[&str]) -> Signaling {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--api-key", API_KEY];
    args.extend_from_slice(extra);
    start_signaling_with(None, "127.0.0.1:0", &args)
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Redis, a relay registered in it under each of `ids`, and a signaling node reading them.
fn fleet_and_node(ids: &[&str]) -> (RedisServer, Vec<FleetRelay>, Signaling) {
    let redis = RedisServer::start();
    let relays = ids.iter().map(|id| start_fleet_relay(&redis, id)).collect();
    let signaling = start_fleet_signaling(&redis);
    (redis, relays, signaling)
}

/// The UDP port of the TURN URL in an `ice_servers` list.
fn turn_port(servers: &[signaling::protocol::IceServer]) -> Option<u16> {
    servers
        .iter()
        .flat_map(|s| &s.urls)
        .find(|u| u.starts_with("turn:"))
        .and_then(|u| u.strip_prefix("turn:"))
        .and_then(|u| u.split('?').next())
        .and_then(|hostport| hostport.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

/// Joins `room` over a WebSocket; returns the socket (kept open) and the session of its welcome.
pub(crate) async fn join_session(addr: SocketAddr, room: &str) -> (Ws, SessionInfo) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/{room}"))
        .await
        .expect("connect");
    ws.send(Message::text(r#"{"type":"join","versions":[1]}"#))
        .await
        .expect("send join");
    let session = next_message(&mut ws, |message| match message {
        ServerMessage::Welcome { session, .. } => Some(session),
        _ => None,
    })
    .await;
    (ws, session)
}

/// The first server message on `ws` that `pick` takes, within 5 s each (panics otherwise).
async fn next_message<T>(ws: &mut Ws, pick: impl Fn(ServerMessage) -> Option<T>) -> T {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message {
            let frame: ServerFrame = serde_json::from_str(&text).expect("frame");
            if let Some(picked) = pick(frame.message) {
                return picked;
            }
        }
    }
}

/// Joins `room`; returns the socket and the port of the relay it was given.
pub(crate) async fn join(addr: SocketAddr, room: &str) -> (Ws, u16) {
    let (ws, session) = join_session(addr, room).await;
    let port = turn_port(&session.ice_servers).expect("a TURN URL from the fleet");
    (ws, port)
}

/// For each socket, the relay port its room ended up on, if other than its port in `ports`:
/// that of the last `ice_servers` it gets within `limit` (a relay whose lease lapsed for a
/// moment under load moves rooms away and back within the window); and when the last of the
/// first moves arrived, after `since`. The sockets are read concurrently, each until `limit`,
/// so nothing of one step is left for the next.
async fn moved(
    sockets: &mut [Ws],
    ports: &[u16],
    limit: Duration,
    since: Instant,
) -> (Vec<Option<u16>>, Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let reads = sockets.iter_mut().map(|ws| async move {
        let mut seen: Option<(u16, Duration)> = None;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await {
            let Message::Text(text) = message else {
                continue;
            };
            let frame: ServerFrame = serde_json::from_str(&text).expect("frame");
            if let ServerMessage::IceServers { ice_servers } = frame.message
                && let Some(port) = turn_port(&ice_servers)
            {
                let first_at = seen.map_or_else(|| since.elapsed(), |(_, at)| at);
                seen = Some((port, first_at));
            }
        }
        seen
    });
    let results = futures_util::future::join_all(reads).await;
    let last = results
        .iter()
        .flatten()
        .map(|(_, at)| *at)
        .max()
        .unwrap_or_default();
    let ended_elsewhere = results
        .iter()
        .zip(ports)
        .map(|(r, was)| r.map(|(port, _)| port).filter(|port| port != was));
    (ended_elsewhere.collect(), last)
}

fn share(ports: &[u16]) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for port in ports {
        *counts.entry(*port).or_insert(0) += 1;
    }
    counts
}

/// A relay that agreed on the TURN secret through Redis writes it back when Redis restarts
/// empty (at its next heartbeat), so that signaling started afterwards mints credentials it
/// accepts.
#[test]
fn a_fleet_relay_writes_the_agreed_secret_back_into_an_emptied_redis() {
    let mut redis = RedisServer::start();
    let _relay = start_fleet_relay(&redis, "keeper");
    let secret = redis.cli(&["GET", "sig:secret:turn"]);
    assert!(!secret.is_empty(), "the relay proposed a secret");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = String::new();
    while back.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        back = redis.cli(&["GET", "sig:secret:turn"]);
    }
    assert_eq!(back, secret);
}

/// Two relays given one `--node-id`: the second, at other URLs while the first's lease runs,
/// refuses to start (exit 1, naming the other's URLs) and leaves the first's record alone (the
/// two would otherwise write it in turn, moving its rooms at every heartbeat, and the second's
/// stop would take the first out of the fleet). The first, killed and restarted at once at its
/// own address (as by a supervisor), takes its record back within its lease; it leaves alone a
/// record another process took meanwhile, and does not withdraw it when it stops.
#[test]
fn a_second_relay_with_a_live_relays_id_refuses_to_start() {
    let redis = RedisServer::start();
    let mut first = start_fleet_relay(&redis, "twin");
    let record = "sig:{fleet}:relay:twin";
    let urls = redis.cli(&["HGET", record, "urls"]);
    assert!(urls.contains(&format!(":{}", first.port)), "{urls}");
    let url = redis.url();
    let as_twin = [
        "--register",
        &url,
        "--node-id",
        "twin",
        "--node-heartbeat",
        "200ms",
        "--node-lease",
        "1s",
    ];
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--no-tcp",
        "--relay-ip",
        "127.0.0.1",
    ];
    args.extend(as_twin);
    let mut second = crate::peer_e2e::spawn_with_stderr(
        "relay",
        &args,
        false,
        std::process::Stdio::from(stderr.reopen().unwrap()),
    );
    let status = second.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let said = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(
        said.contains("--node-id twin is registered by another live relay"),
        "{said}"
    );
    assert!(said.contains(&urls), "{said}");
    // Untouched, through heartbeats of the first.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(redis.cli(&["HGET", record, "urls"]), urls);
    assert!(redis.answers(&["ZSCORE", "sig:{fleet}:relays", "twin"]));

    let listen = format!("127.0.0.1:{}", first.port);
    first.proc.kill();
    let mut again = start_loopback_relay(&listen, &as_twin);
    assert_eq!(redis.cli(&["HGET", record, "urls"]), urls);

    // Another process takes the id while this one runs (both started at once, or Redis lost
    // the record): this one leaves it alone at its heartbeats, and its stop withdraws nothing.
    let other = "turn:127.0.0.9:9?transport=udp";
    redis.cli(&["HSET", record, "instance", "another", "urls", other]);
    redis.cli(&["PERSIST", record]);
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    redis.cli(&["ZADD", "sig:{fleet}:relays", &far.to_string(), "twin"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(redis.cli(&["HGET", record, "urls"]), other);
    again.proc.terminate();
    again.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(redis.cli(&["HGET", record, "urls"]), other);
    assert!(redis.answers(&["ZSCORE", "sig:{fleet}:relays", "twin"]));
}

/// Redis restarted empty loses every relay's record; the relays register again at their next
/// heartbeat. Meanwhile the node keeps them: no room moves away and back, and the static
/// `--turn-url` is never handed out.
#[test]
fn a_redis_restarted_empty_moves_no_room_off_the_fleet() {
    redis_restarted_empty_keeps_the_rooms("5s", Duration::ZERO);
}

/// The same after an outage longer than the relays' lease: no relay could renew it meanwhile.
#[test]
fn a_redis_back_empty_after_more_than_a_lease_moves_no_room_off_the_fleet() {
    redis_restarted_empty_keeps_the_rooms("1s", Duration::from_millis(2500));
}

/// Two relays with `lease`, a node with a static `--turn-url`; Redis restarted empty after
/// `down`: for 2 s after, every room keeps its relay.
fn redis_restarted_empty_keeps_the_rooms(lease: &str, down: Duration) {
    let mut redis = RedisServer::start();
    let lease = ["--node-lease", lease];
    let _relays: Vec<FleetRelay> = ["r1", "r2"]
        .iter()
        .map(|id| start_fleet_relay_with(&redis, id, &lease))
        .collect();
    let signaling = start_fleet_signaling_with(
        &redis,
        &[
            "--fleet-refresh",
            "50ms",
            "--turn-url",
            "turn:127.0.0.9:9?transport=udp",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rooms: Vec<String> = (0..8).map(|i| format!("keep-{i}")).collect();
    let relay_ports = || {
        runtime.block_on(async {
            let mut ports = Vec::new();
            for room in &rooms {
                let (status, body) =
                    api_get(signaling.addr, &format!("/v1/ice-servers?room={room}")).await;
                assert_eq!(status, 200, "{body}");
                let view: serde_json::Value = serde_json::from_str(&body).unwrap();
                let servers: Vec<signaling::protocol::IceServer> =
                    serde_json::from_value(view["iceServers"].clone()).unwrap();
                ports.push(turn_port(&servers));
            }
            ports
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let ports = relay_ports();
        if ports.iter().all(|p| p.is_some_and(|p| p != 9)) {
            break ports;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never served: {ports:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    redis.restart_empty_after(down);
    // Through the relays' return (heartbeat 200 ms), at every read.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(relay_ports(), before);
    }
    assert!(redis.answers(&["HGET", "sig:{fleet}:relay:r1", "urls"]));
}

/// A relay that would refuse the credentials signaling mints (the nodes were given a
/// `--turn-secret`, the relay none: it proposed its own through Redis) gets no rooms, and
/// `/v1/relays` says why; the relay given the nodes' secret gets them all.
#[test]
fn a_relay_that_refuses_the_nodes_credentials_gets_no_rooms() {
    let redis = RedisServer::start();
    let agreeing = start_fleet_relay_with(&redis, "agreeing", &["--turn-secret", "node-secret"]);
    let _stranger = start_fleet_relay(&redis, "stranger");
    let signaling = start_fleet_signaling_with(&redis, &["--turn-secret", "node-secret"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for i in 0..20 {
            let (_ws, port) = join(signaling.addr, &format!("secret-{i}")).await;
            assert_eq!(
                port, agreeing.port,
                "room secret-{i} went to the other relay"
            );
        }
        let (status, body) = api_get(signaling.addr, "/v1/relays").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        let accepts: HashMap<&str, bool> = view["relays"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap(), r["accepts_credentials"] == true))
            .collect();
        let expected = HashMap::from([("agreeing", true), ("stranger", false)]);
        assert_eq!(accepts, expected, "{body}");
    });
}

/// Sessions parked while their room moves to another relay get the new relay's ICE servers
/// when they come back: a WebSocket resume in its `resumed`, a long-polling session (which
/// re-attaches quietly, without `resumed`) in an `ice_servers` frame at once, not at its next
/// scheduled refresh.
#[test]
fn sessions_parked_while_their_room_moves_get_the_new_relay_when_they_come_back() {
    let (_redis, relays, signaling) = fleet_and_node(&["p1", "p2"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (ws, session) = join_session(signaling.addr, "parked-room").await;
        let port = turn_port(&session.ice_servers).expect("a TURN URL from the fleet");
        drop(ws);
        let polling = signaling_http::open_as(signaling.addr, "parked-room", "poller").await;
        let welcome = signaling_http::poll(signaling.addr, &polling, 0).await;
        let last_seq = welcome.frames.last().expect("welcome").seq;
        // No poll open now: the long-polling session is parked too.

        let victim = relays.iter().find(|r| r.port == port).expect("its relay");
        let rc = unsafe { libc::kill(victim.proc.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        // The node reads the fleet every 200 ms: the room has moved well within a second.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            signaling_http::poll(signaling.addr, &polling, last_seq),
        )
        .await
        .expect("the poll is answered at once, not after the poll timeout");
        let fresh = reply.frames.iter().find_map(|f| match &f.message {
            ServerMessage::IceServers { ice_servers } => turn_port(ice_servers),
            _ => None,
        });
        let fresh = fresh.unwrap_or_else(|| panic!("no ice_servers: {:?}", reply.frames));
        assert_ne!(fresh, port, "long-polling: still the draining relay");

        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws/parked-room", signaling.addr))
                .await
                .expect("connect");
        let resume = serde_json::json!({
            "type": "resume", "id": 2, "versions": [1],
            "resume_token": session.resume_token, "last_seq": 1,
        });
        ws.send(Message::text(resume.to_string()))
            .await
            .expect("send resume");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await {
            let Message::Text(text) = message else {
                continue;
            };
            let frame: ServerFrame = serde_json::from_str(&text).expect("frame");
            if let ServerMessage::Resumed { session, .. } = frame.message {
                let now = turn_port(&session.ice_servers).expect("a TURN URL");
                assert_ne!(now, port, "WebSocket: still the draining relay");
                return;
            }
        }
        panic!("no resumed");
    });
}

#[test]
fn rooms_spread_over_the_fleet_and_move_when_a_relay_joins_dies_or_drains() {
    let (redis, relays, signaling) = fleet_and_node(&["r1", "r2", "r3"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // Spread: 300 rooms over three relays.
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        for i in 0..300 {
            let (ws, port) = join(signaling.addr, &format!("room-{i}")).await;
            sockets.push(ws);
            ports.push(port);
        }
        let counts = share(&ports);
        assert_eq!(counts.len(), 3, "every relay serves rooms: {counts:?}");
        let max = *counts.values().max().unwrap() as f64;
        assert!(
            max / 100.0 < 1.35,
            "balance (max/mean) {}: {counts:?}",
            max / 100.0
        );
        for relay in &relays {
            assert!(counts.contains_key(&relay.port));
        }
        // Both peers of a room get the same relay.
        for i in [0, 1, 2, 77, 299] {
            let (_second, port) = join(signaling.addr, &format!("room-{i}")).await;
            assert_eq!(port, ports[i], "room-{i}: the second peer's relay");
            // The first peer hears of the second; skip that frame.
            let _ = tokio::time::timeout(Duration::from_secs(2), sockets[i].next()).await;
        }

        // The fleet, as the API shows it.
        let (status, body) = api_get(signaling.addr, "/v1/relays").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listed = view["relays"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{body}");
        assert!(listed.iter().all(|r| r["state"] == "active"), "{body}");
        let rooms_here: u64 = listed
            .iter()
            .map(|r| r["rooms_here"].as_u64().unwrap())
            .sum();
        assert_eq!(rooms_here, 300);

        // Join: a fourth relay takes about a quarter of the rooms, and only those move.
        let fourth = start_fleet_relay(&redis, "r4");
        let started = Instant::now();
        let (moves, took) = moved(&mut sockets, &ports, Duration::from_secs(3), started).await;
        let to_fourth = moves.iter().filter(|m| **m == Some(fourth.port)).count();
        assert_eq!(
            moves.iter().flatten().count(),
            to_fourth,
            "rooms only move to the new relay"
        );
        let fraction = to_fourth as f64 / 300.0;
        assert!((0.15..0.35).contains(&fraction), "moved {fraction}");
        eprintln!("relay join: {to_fourth}/300 rooms moved, the last {took:?} after the start");
        for (i, m) in moves.iter().enumerate() {
            if let Some(port) = m {
                ports[i] = *port;
            }
        }

        // Death: kill -9 the fourth relay; its rooms go back when its lease (1 s) runs out.
        let fourth_rooms: Vec<usize> = (0..300).filter(|i| ports[*i] == fourth.port).collect();
        let started = Instant::now();
        drop(fourth);
        let (moves, elapsed) = moved(&mut sockets, &ports, Duration::from_secs(4), started).await;
        for (i, m) in moves.iter().enumerate() {
            if fourth_rooms.contains(&i) {
                let port = m.unwrap_or_else(|| panic!("room-{i} was not moved off the dead relay"));
                assert_ne!(port, ports[i]);
                ports[i] = port;
            } else {
                assert_eq!(*m, None, "room-{i} moved though its relay lives");
            }
        }
        eprintln!(
            "relay death: {} rooms moved, the last {elapsed:?} after kill -9 (lease 1 s)",
            fourth_rooms.len()
        );

        // Drain: SIGTERM marks the relay draining first: its rooms move at once.
        let victim = &relays[0];
        let victim_rooms: Vec<usize> = (0..300).filter(|i| ports[*i] == victim.port).collect();
        let started = Instant::now();
        let rc = unsafe { libc::kill(victim.proc.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let (moves, took) = moved(&mut sockets, &ports, Duration::from_secs(3), started).await;
        for (i, m) in moves.iter().enumerate() {
            if victim_rooms.contains(&i) {
                let port =
                    m.unwrap_or_else(|| panic!("room-{i} was not moved off the draining relay"));
                assert_ne!(port, victim.port);
            } else {
                assert_eq!(*m, None, "room-{i} moved though its relay is not draining");
            }
        }
        eprintln!(
            "relay drain: {} rooms moved, the last {took:?} after SIGTERM",
            victim_rooms.len()
        );
        // Draining with no allocation left, it has already stopped and left the fleet.
        let (_, body) = api_get(signaling.addr, "/v1/relays").await;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            view["relays"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["id"] != "r1" || r["state"] == "draining"),
            "{body}"
        );
    });
}

/// The last relay fleet's relay dies: the node says so in its log, and the room's peers get
/// `ice_servers` with no TURN server (this node has no `--turn-url`); a relay that registers
/// later serves the room, and the peers get its URLs at once.
#[test]
fn a_fleet_left_with_no_relay_says_so_and_rooms_get_the_next_relay_to_register() {
    let redis = RedisServer::start();
    let mut relays = vec![start_fleet_relay(&redis, "r1")];
    let log = tempfile::NamedTempFile::new().unwrap();
    let url = redis.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--redis",
        &url,
        "--fleet-refresh",
        "200ms",
    ];
    let mut proc = crate::peer_e2e::spawn_with_stderr(
        "signaling",
        &args,
        false,
        std::process::Stdio::from(log.reopen().unwrap()),
    );
    let signaling_addr = crate::peer_e2e::listening_addr(&mut proc, "http");
    // The log's lines so far that hold `text`, within 10 s.
    let logged = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(log.path()).unwrap();
            if let Some(line) = said.lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{said}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut ws = runtime.block_on(async {
        let (ws, port) = join(signaling_addr, "lonely").await;
        assert_eq!(port, relays[0].port);
        ws
    });
    drop(relays.pop());
    let warning = logged("the relay fleet has no active relay left");
    assert!(warning.contains("WARN"), "{warning}");
    let next_ice_servers = |ws: &mut Ws| {
        runtime.block_on(next_message(ws, |message| match message {
            ServerMessage::IceServers { ice_servers } => Some(ice_servers),
            _ => None,
        }))
    };
    let none = next_ice_servers(&mut ws);
    assert_eq!(turn_port(&none), None, "{none:?}");

    let next = start_fleet_relay(&redis, "r2");
    let servers = next_ice_servers(&mut ws);
    assert_eq!(turn_port(&servers), Some(next.port), "{servers:?}");
    // Logged before the rooms' `ice_servers` go out, after the warning.
    let said = std::fs::read_to_string(log.path()).unwrap();
    let warned = said.find("the relay fleet has no active relay left");
    let back = said.rfind("the relay fleet has active relays");
    assert!(
        warned.is_some_and(|w| back.is_some_and(|b| b > w)),
        "{said}"
    );
}

/// `GET path` with the test's API key: (status, body).
pub(crate) async fn api_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = signaling_http::http_request(
        addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await;
    (status, body)
}

/// Sends `bytes` of a file from `from_url` to `to_url` (the same room), relay-only; returns when
/// the receiver verified it.
fn relay_only_transfer(from_url: &str, to_url: &str, bytes: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.bin");
    let dst = dir.path().join("dst.bin");
    let data = crate::peer_e2e::xorshift_bytes(0x9e37_79b9_7f4a_7c15, bytes);
    std::fs::write(&src, &data).expect("write");
    let (src, dst) = (src.to_string_lossy(), dst.to_string_lossy());
    let mut receiver = crate::peer_e2e::spawn(
        "peer",
        &[
            "recv-file",
            to_url,
            &dst,
            "--bind",
            "127.0.0.1",
            "--relay-only",
        ],
        false,
    );
    wait_joined(&mut receiver);
    let _sender = crate::peer_e2e::spawn(
        "peer",
        &[
            "send-file",
            from_url,
            &src,
            "--bind",
            "127.0.0.1",
            "--relay-only",
        ],
        false,
    );
    let done = receiver.wait_line(Duration::from_secs(120), |l| {
        l.starts_with("* file-received")
    });
    assert!(done.contains("ok=true"), "{done}");
}

/// The relay fleet's figures for BENCHMARKS.md (`scripts/bench-relay-fleet.sh`):
/// balance, movement when a relay joins or leaves, and relay egress of a relay-only call on one
/// shared relay against two.
#[test]
#[ignore = "a benchmark: scripts/bench-relay-fleet.sh runs it"]
fn fleet_benchmark() {
    use fleet::relays::{RelayRecord, choose};
    let relay = |id: &str| RelayRecord::new(id, vec![format!("turn:{id}:3478?transport=udp")]);
    let rooms: Vec<String> = (0..3000).map(|i| format!("room-{i:05}")).collect();
    let three: Vec<RelayRecord> = ["relay-a", "relay-b", "relay-c"].map(relay).to_vec();
    let mut four = three.clone();
    four.push(relay("relay-d"));
    let assign = |fleet: &[RelayRecord]| -> Vec<String> {
        rooms
            .iter()
            .map(|r| choose(r, fleet, None).expect("a relay").id.clone())
            .collect()
    };
    let on_three = assign(&three);
    let on_four = assign(&four);
    let counts = share_of(&on_three);
    let max = *counts.values().max().unwrap() as f64;
    println!(
        "balance: 3 relays, 3000 rooms: {counts:?}, max/mean {:.3}",
        max / 1000.0
    );
    let joined = on_three
        .iter()
        .zip(&on_four)
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "relay joins (3 -> 4): {joined}/3000 rooms move = {:.3} (ideal 1/4 = 0.250)",
        joined as f64 / 3000.0
    );
    let without_b: Vec<RelayRecord> = three
        .iter()
        .filter(|r| r.id != "relay-b")
        .cloned()
        .collect();
    let on_two = assign(&without_b);
    let left = on_three.iter().zip(&on_two).filter(|(a, b)| a != b).count();
    println!(
        "relay leaves (3 -> 2): {left}/3000 rooms move = {:.3} (ideal 1/3 = 0.333; exactly the leaver's rooms)",
        left as f64 / 3000.0
    );

    // Egress: a relay-only 4 MiB transfer, both peers on one relay against one relay each
    // (two regions: each signaling node prefers the relay of its own region).
    let redis = RedisServer::start();
    let relay_a = start_fleet_relay_with(&redis, "relay-a", &["--region", "a"]);
    let relay_b = start_fleet_relay_with(&redis, "relay-b", &["--region", "b"]);
    let node = |region: &str| {
        start_signaling_with(
            None,
            "127.0.0.1:0",
            &[
                "--redis",
                &redis.url(),
                "--region",
                region,
                "--fleet-refresh",
                "200ms",
            ],
        )
    };
    let (node_a, node_b) = (node("a"), node("b"));
    let size = 4 * 1024 * 1024;
    let measure = |from: &Signaling, to: &Signaling, room: &str| {
        let before = [relayed_bytes(&relay_a), relayed_bytes(&relay_b)];
        relay_only_transfer(&from.room_url(room), &to.room_url(room), size);
        // The workers publish their counters on a timer tick.
        std::thread::sleep(Duration::from_millis(1500));
        let after = [relayed_bytes(&relay_a), relayed_bytes(&relay_b)];
        [
            (after[0].0 - before[0].0, after[0].1 - before[0].1),
            (after[1].0 - before[1].0, after[1].1 - before[1].1),
        ]
    };
    let shared = measure(&node_a, &node_a, "egress-shared");
    let split = measure(&node_b, &node_a, "egress-split");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "egress of a relay-only 4 MiB transfer (relays' own counters, MiB, to_peer / to_client):"
    );
    for (name, [a, b]) in [("one shared relay", shared), ("one relay each", split)] {
        // With one relay, to_peer goes from one of its allocations to another on the same
        // host and never leaves it: only to_client does. With two (separate hosts in a real
        // deployment), everything each relay sends crosses the network.
        let leaving = if a == (0, 0) || b == (0, 0) {
            a.1 + b.1
        } else {
            a.0 + a.1 + b.0 + b.1
        };
        println!(
            "  {name:>16}: relay-a {:.2} / {:.2}, relay-b {:.2} / {:.2}; relayed in all {:.2}; leaving the relay hosts {:.2}",
            mib(a.0),
            mib(a.1),
            mib(b.0),
            mib(b.1),
            mib(a.0 + a.1 + b.0 + b.1),
            mib(leaving)
        );
    }

    let runs = 5;
    let mut times: Vec<Duration> = (0..runs).map(|_| failover_time()).collect();
    times.sort();
    println!(
        "failover (kill -9 of a relay-only call's relay -> data again; lease 1 s, refresh 200 ms), {runs} runs: median {:?}, p95 {:?}, all {times:?}",
        times[runs / 2],
        times[runs - 1]
    );
}

/// Time from kill -9 of the relay of a relay-only call to the first chat line delivered after
/// it (Alice says a numbered line every 100 ms), in a fresh fleet per run.
fn failover_time() -> Duration {
    use crate::fleet_failover::{fleet, pair, relay_port};
    let redis = RedisServer::start();
    let mut relays = fleet(&redis);
    let signaling = start_fleet_signaling(&redis);
    let url = signaling.room_url("failover-bench");
    let (mut alice, mut bob, lines) = pair(&url, true);
    let port = relay_port(&lines[0]).expect("relayed pair");
    let victim = relays
        .iter()
        .position(|r| r.port == port)
        .expect("room relay");
    crate::peer_e2e::say(&mut alice, "before");
    crate::peer_e2e::expect_chat(&mut bob, "alice: before");
    let killed = Instant::now();
    drop(relays.remove(victim));
    for n in 0..300 {
        crate::peer_e2e::say(&mut alice, &format!("after-{n}"));
        if bob
            .try_wait_line(Duration::from_millis(100), |l| {
                l.starts_with("alice: after-")
            })
            .is_some()
        {
            return killed.elapsed();
        }
    }
    panic!("no data through the new relay within 30 s");
}

fn share_of(ids: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}
