//! TURN usage accounting end to end: `signaling --with-relay` mints a REST username
//! `<expiry>:<room>:<peer>`, a `turn` crate client relays a known number of payload bytes each
//! way through the in-process relay under it, and the per-user and per-room totals match,
//! live (the allocation is still open), through the relay's admin `/usage` and through
//! signaling's `/v1/usage` (JSON and CSV, refused without the API key).
//!
//! Tolerance: none. The relay bills application payload only (what the peer receives from the
//! relay socket, what the client gets out of ChannelData or a Data indication); the TURN
//! framing (4 bytes of ChannelData header, or ~36 bytes of Send/Data indication, per packet)
//! and UDP/IP headers are not billed, so the totals equal the payload sent on loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e::bin_path;
use e2e::signaling_http::http_request;
use testkit::Spawned;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use webrtc_util::Conn as _;

use crate::fleet::{
    API_KEY as FLEET_KEY, Ws, join_session, relay_metric, start_fleet_relay_with,
    start_fleet_signaling,
};

const KEY: &str = "usage-key";
const TO_PEER: (usize, usize) = (120, 1000); // packets, bytes each
const TO_CLIENT: (usize, usize) = (80, 700);
const STEP: Duration = Duration::from_secs(5);

fn addr_after(line: &str) -> SocketAddr {
    line.rsplit([' ', '/'])
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Joins `room` over a WebSocket; returns the socket (kept open), the peer id, and the TURN
/// username and credential of the welcome.
async fn join(server: SocketAddr, room: &str) -> (Ws, String, String, String) {
    let (ws, session) = join_session(server, room).await;
    let turn = session
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("a TURN server with credentials");
    let (username, credential) = (turn.username.clone(), turn.credential.clone());
    (
        ws,
        session.peer_id.0,
        username.unwrap(),
        credential.unwrap(),
    )
}

/// The (bytes_to_peer, bytes_to_client) of `user` and of `room` in a `/usage` JSON answer.
fn totals(body: &str, user: &str, room: &str) -> Option<((u64, u64), (u64, u64))> {
    let report: serde_json::Value = serde_json::from_str(body).ok()?;
    let pick = |list: &str, key: &str, value: &str| {
        report[list]
            .as_array()?
            .iter()
            .find(|e| e[key] == value)
            .map(|e| {
                (
                    e["bytes_to_peer"].as_u64().unwrap_or(0),
                    e["bytes_to_client"].as_u64().unwrap_or(0),
                )
            })
    };
    Some((pick("users", "user", user)?, pick("rooms", "room", room)?))
}

/// A UDP socket on loopback whose receive buffer holds all of `TO_PEER` (as much as the
/// system allows), so that a receiving task the loaded machine is slow to run drops nothing.
fn roomy_loopback_udp() -> UdpSocket {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}

/// Allocates on `relay` with the given credentials and relays `TO_PEER` to a loopback peer
/// and `TO_CLIENT` back, checking that none is lost; returns the TURN client (its allocation
/// still open) and the payload bytes (to the peer, to the client).
async fn relay_known_traffic(
    relay: SocketAddr,
    username: &str,
    credential: &str,
) -> (testkit::turn_client::Client, (u64, u64)) {
    let client = testkit::turn_client::udp_client(relay, username, credential).await;
    let relayed = timeout(STEP, client.allocate()).await.unwrap().unwrap();
    let relayed_addr = relayed.local_addr().unwrap();
    let peer = Arc::new(roomy_loopback_udp());
    let peer_addr = peer.local_addr().unwrap();

    // Client -> peer, counted by the peer.
    let receiving = tokio::spawn({
        let peer = Arc::clone(&peer);
        async move {
            let mut buf = vec![0u8; 2048];
            let mut got = 0usize;
            for _ in 0..TO_PEER.0 {
                match timeout(STEP, peer.recv_from(&mut buf)).await {
                    Ok(Ok((n, _))) => got += n,
                    _ => break,
                }
            }
            got
        }
    });
    let payload = vec![7u8; TO_PEER.1];
    for i in 0..TO_PEER.0 {
        relayed.send_to(&payload, peer_addr).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let peer_got = receiving.await.unwrap();
    assert_eq!(
        peer_got,
        TO_PEER.0 * TO_PEER.1,
        "loopback lost packets to the peer"
    );

    // Peer -> client, counted by the client.
    let reply = vec![9u8; TO_CLIENT.1];
    let mut client_got = 0usize;
    let mut buf = vec![0u8; 2048];
    for _ in 0..TO_CLIENT.0 {
        peer.send_to(&reply, relayed_addr).await.unwrap();
        let (n, _) = timeout(STEP, relayed.recv_from(&mut buf))
            .await
            .expect("relayed to the client")
            .unwrap();
        client_got += n;
    }
    assert_eq!(client_got, TO_CLIENT.0 * TO_CLIENT.1);
    let expected = (peer_got as u64, client_got as u64);
    (client, expected)
}

/// `GET path` on signaling's API with `Bearer key` (and `Accept: accept`): checked 200;
/// (content type, body).
async fn v1_get(addr: SocketAddr, key: &str, path: &str, accept: Option<&str>) -> (String, String) {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend(accept.map(|a| ("Accept", a)));
    let (status, content_type, body) = http_request(addr, "GET", path, &headers, "").await;
    assert_eq!(status, 200, "{path}: {body}");
    (content_type, body)
}

/// Reads a usage report with `read` (every 100 ms, for at most 5 s) until `user` and `room`
/// show `expected` bytes (to the peer, to the client); panics with the last report otherwise.
async fn await_totals<F, R>(mut read: F, user: &str, room: &str, expected: (u64, u64))
where
    F: FnMut() -> R,
    R: Future<Output = String>,
{
    let mut last = String::new();
    for _ in 0..50 {
        last = read().await;
        if totals(&last, user, room) == Some((expected, expected)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user}'s usage never showed {expected:?}: {last}");
}

/// `signaling --with-relay --api-key KEY` plus `extra`, on free ports: the process, and the
/// addresses of its relay (UDP), the relay's admin listener and the signaling listener.
fn signaling_with_relay(extra: &[&str]) -> (Spawned, [SocketAddr; 3]) {
    let mut command = Command::new(bin_path("signaling"));
    command
        .args(["--listen", "127.0.0.1:0", "--with-relay"])
        .args(["--relay-listen", "127.0.0.1:0", "--api-key", KEY])
        .args(extra)
        .env("RUST_LOG", "warn");
    let mut proc = Spawned::spawn(command, false);
    let relay = addr_after(&proc.wait_line(STEP * 4, |l| l.starts_with("relay udp ")));
    let admin = addr_after(&proc.wait_line(STEP, |l| l.starts_with("relay admin http://")));
    let server = addr_after(&proc.wait_line(STEP, |l| l.starts_with("listening on http://")));
    (proc, [relay, admin, server])
}

/// The relay's own `/usage` over the last 10 minutes, from its admin listener `admin`.
async fn relay_usage(admin: SocketAddr) -> String {
    let (status, _, body) = http_request(admin, "GET", "/usage?since=10m", &[], "").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_bytes_are_billed_to_the_peer_and_room_live() {
    let (mut proc, [relay, admin, server]) = signaling_with_relay(&[]);

    let room = "billing-room";
    let (_ws, peer_id, username, credential) = join(server, room).await;
    let user = format!("{room}:{peer_id}");
    assert!(username.ends_with(&format!(":{user}")), "{username}");

    let (client, expected) = relay_known_traffic(relay, &username, &credential).await;

    // The allocation is still open: the totals are there already (workers publish every
    // 200 ms), not only when it ends.
    await_totals(|| relay_usage(admin), &user, room, expected).await;

    // The same through signaling's admin API, JSON and CSV; refused without the key.
    let (_, body) = v1_get(server, KEY, "/v1/usage?since=10m", None).await;
    assert_eq!(
        totals(&body, &user, room),
        Some((expected, expected)),
        "{body}"
    );
    let (content_type, csv) = v1_get(server, KEY, "/v1/usage?by=room", Some("text/csv")).await;
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let line = csv
        .lines()
        .find(|l| l.contains(&format!(",{room},")))
        .unwrap_or_else(|| panic!("no line for the room: {csv}"));
    let fields: Vec<&str> = line.split(',').collect();
    assert_eq!(
        fields[3..6].join(","),
        format!("1,{},{}", expected.0, expected.1),
        "{csv}"
    );
    let (status, _, _) = http_request(server, "GET", "/v1/usage", &[], "").await;
    assert_eq!(status, 401);

    // Never a per-user label: the relay's series in /metrics do not name the user.
    let (_, _, metrics) = http_request(server, "GET", "/metrics", &[], "").await;
    assert!(!metrics.contains(&peer_id), "a metric names the peer");
    assert!(
        metrics.contains("relay_usage_overflow_total 0"),
        "{metrics}"
    );
    client.close().await.unwrap();
    proc.kill();
}

/// Usage past `--usage-retention` is dropped on time though nothing is relayed after it (it
/// stayed until new traffic came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_past_its_retention_is_dropped_without_new_traffic() {
    let retention = [
        "--relay-arg=--usage-bucket=2s",
        "--relay-arg=--usage-retention=2s",
    ];
    let (mut proc, [relay, admin, server]) = signaling_with_relay(&retention);
    let room = "retention-room";
    let (_ws, peer_id, username, credential) = join(server, room).await;
    let user = format!("{room}:{peer_id}");
    let (client, expected) = relay_known_traffic(relay, &username, &credential).await;
    await_totals(|| relay_usage(admin), &user, room, expected).await;
    client.close().await.unwrap();
    // Its bucket leaves the retention 4 s after it began at the latest.
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        let body = relay_usage(admin).await;
        if !body.contains(&user) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proc.kill();
}

/// `/v1/usage` with fleet relays (`--register`): each relay publishes its users' totals to
/// Redis on its heartbeats and once more when it stops, and signaling reports them summed,
/// after the relays are gone. Relay A (200 ms heartbeats) is seen live; relay B (heartbeats an
/// hour apart) publishes only when it stops, and nothing it relayed is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_relays_publish_their_usage_and_it_outlives_them() {
    let redis = e2e::redis::RedisServer::start();
    let signaling = start_fleet_signaling(&redis);
    let usage = || async {
        v1_get(signaling.addr, FLEET_KEY, "/v1/usage?since=1h", None)
            .await
            .1
    };
    let a = FleetCall::start(&redis, signaling.addr, "usage-a", "room-a", &[]).await;
    let (client, expected_a) = a.relay_known_traffic().await;
    await_totals(usage, &a.user, "room-a", expected_a).await;
    assert_eq!(relay_metric(&a.relay, "relay_usage_unpublished"), 0);
    client.close().await.unwrap();
    let user_a = a.user.clone();
    drop(a);

    let quiet = ["--node-heartbeat", "1h", "--node-lease", "2h"];
    let mut b = FleetCall::start(&redis, signaling.addr, "usage-b", "room-b", &quiet).await;
    let (client, expected_b) = b.relay_known_traffic().await;
    let body = usage().await;
    assert_eq!(
        totals(&body, &b.user, "room-b"),
        None,
        "B has not published yet: {body}"
    );
    // What B holds back shows in its metrics.
    await_held_back(&b.relay).await;
    client.close().await.unwrap();
    b.relay.proc.terminate();
    let status = b.relay.proc.wait_exit(STEP * 2);
    assert!(status.success(), "relay B: {status:?}");

    // Both relays are gone; what they relayed is reported, to the byte.
    let body = usage().await;
    assert_eq!(
        totals(&body, &b.user, "room-b"),
        Some((expected_b, expected_b)),
        "{body}"
    );
    assert_eq!(
        totals(&body, &user_a, "room-a"),
        Some((expected_a, expected_a)),
        "{body}"
    );
}

/// Waits until signaling's `/v1/relays` lists relay `id` and no other.
async fn await_fleet(addr: SocketAddr, id: &str) {
    let mut body = String::new();
    for _ in 0..100 {
        body = crate::fleet::api_get(addr, "/v1/relays").await.1;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if let Some([relay]) = view["relays"].as_array().map(Vec::as_slice)
            && relay["id"] == id
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fleet never became {id} alone: {body}");
}

/// A cluster node's in-process relay publishes to Redis like a fleet relay: its usage is
/// reported by another node, after the first has stopped. On a Redis Cluster (three masters):
/// the usage scripts keep to the one slot of `{fleet}` (the fleet relays' test runs them on a
/// standalone server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_relay_of_a_cluster_node_is_reported_by_every_node() {
    let redis = e2e::redis::RedisCluster::start();
    let node = |with_relay: bool| {
        let mut command = Command::new(bin_path("signaling"));
        command
            .args(["--listen", "127.0.0.1:0", "--api-key", KEY])
            .args(["--redis", &redis.urls(), "--node-heartbeat", "200ms"])
            .args(["--admin-listen", "none", "--drain-timeout", "1s"])
            .env("RUST_LOG", "warn");
        if with_relay {
            command.args(["--with-relay", "--relay-listen", "127.0.0.1:0"]);
            command.arg("--relay-arg=--admin-listen=127.0.0.1:0");
        }
        Spawned::spawn(command, false)
    };
    let mut first = node(true);
    let relay = addr_after(&first.wait_line(STEP * 4, |l| l.starts_with("relay udp ")));
    let server = addr_after(&first.wait_line(STEP, |l| l.starts_with("listening on http://")));
    let mut second = node(false);
    let other = addr_after(&second.wait_line(STEP * 4, |l| l.starts_with("listening on http://")));

    let room = "cluster-billing";
    let (_ws, peer_id, username, credential) = join(server, room).await;
    let user = format!("{room}:{peer_id}");
    let (client, expected) = relay_known_traffic(relay, &username, &credential).await;
    let usage_at =
        |addr: SocketAddr| async move { v1_get(addr, KEY, "/v1/usage?since=1h", None).await.1 };
    await_totals(|| usage_at(other), &user, room, expected).await;
    client.close().await.unwrap();
    first.terminate();
    assert!(first.wait_exit(STEP * 4).success());
    let body = usage_at(other).await;
    assert_eq!(
        totals(&body, &user, room),
        Some((expected, expected)),
        "after the stop: {body}"
    );
    second.kill();
}

/// A Redis outage (the server frozen with SIGSTOP) while a fleet relay relays: its usage is
/// held back (`relay_usage_unpublished`) and reaches `/v1/usage` whole once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_holds_the_usage_back_and_loses_none() {
    let redis = e2e::redis::RedisServer::start();
    let signaling = start_fleet_signaling(&redis);
    let call = FleetCall::start(&redis, signaling.addr, "outage-a", "outage", &[]).await;
    redis.freeze();
    let (client, expected) = call.relay_known_traffic().await;
    await_held_back(&call.relay).await;
    // Past a publication's deadline (2 s): it failed, and the change stays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(relay_metric(&call.relay, "relay_usage_unpublished"), 1);
    redis.thaw();

    let usage = || async {
        v1_get(signaling.addr, FLEET_KEY, "/v1/usage?since=1h", None)
            .await
            .1
    };
    await_totals(usage, &call.user, "outage", expected).await;
    client.close().await.unwrap();
}

/// Redis restarted without persistence (its data gone) under a fleet relay: the relay finds its
/// mark gone at its next heartbeat and publishes again all its ledger holds, so `/v1/usage`
/// reports the traffic relayed before the restart without any new traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_the_usage_published_again() {
    let mut redis = e2e::redis::RedisServer::start();
    let signaling = start_fleet_signaling(&redis);
    let call = FleetCall::start(&redis, signaling.addr, "amnesia-a", "amnesia", &[]).await;
    let (client, expected) = call.relay_known_traffic().await;
    client.close().await.unwrap();
    let usage = || async {
        v1_get(signaling.addr, FLEET_KEY, "/v1/usage?since=1h", None)
            .await
            .1
    };
    await_totals(usage, &call.user, "amnesia", expected).await;
    redis.restart();
    // Until signaling has its connection back, a read may answer 503.
    let auth = format!("Bearer {FLEET_KEY}");
    let usage = || async {
        let headers = [("Authorization", auth.as_str())];
        http_request(signaling.addr, "GET", "/v1/usage?since=1h", &headers, "")
            .await
            .2
    };
    await_totals(usage, &call.user, "amnesia", expected).await;
}

/// Waits (at most 3 s) until `relay` holds one (user, bucket) entry back from the fleet's
/// Redis (`relay_usage_unpublished`): once its workers have handed the counts over (200 ms).
async fn await_held_back(relay: &crate::fleet::FleetRelay) {
    let mut held = 0;
    for _ in 0..30 {
        held = relay_metric(relay, "relay_usage_unpublished");
        if held == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("relay_usage_unpublished is {held}, not 1");
}

/// A fleet relay that signaling hands out, and a peer joined to a room served by it.
struct FleetCall {
    relay: crate::fleet::FleetRelay,
    _ws: Ws,
    /// The user the relay bills: `ROOM:PEER`.
    user: String,
    username: String,
    credential: String,
}

impl FleetCall {
    /// Starts relay `id` in the fleet on `redis` (with `extra` flags; a 1 s drain), waits
    /// until signaling at `signaling` lists it alone, and joins `room` there.
    async fn start(
        redis: &e2e::redis::RedisServer,
        signaling: SocketAddr,
        id: &str,
        room: &str,
        extra: &[&str],
    ) -> Self {
        let flags = [extra, &["--drain-timeout", "1s"]].concat();
        let relay = start_fleet_relay_with(redis, id, &flags);
        await_fleet(signaling, id).await;
        let (ws, peer, username, credential) = join(signaling, room).await;
        Self {
            relay,
            _ws: ws,
            user: format!("{room}:{peer}"),
            username,
            credential,
        }
    }

    /// [`relay_known_traffic`] through this call's relay.
    async fn relay_known_traffic(&self) -> (testkit::turn_client::Client, (u64, u64)) {
        let relay = SocketAddr::from(([127, 0, 0, 1], self.relay.port));
        relay_known_traffic(relay, &self.username, &self.credential).await
    }
}

/// Two relays of different `--usage-retention` publish the same bucket: the shorter one never
/// shortens the bucket's time to live in Redis, and a read sums both (plain commands against a
/// real Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_retention_never_cuts_what_another_relay_keeps() {
    use fleet::usage::{BucketTotals, publish, read};
    let redis = e2e::redis::RedisServer::start();
    let (conn, _) = fleet::link::connect(&[redis.url()], STEP)
        .await
        .expect("connect");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = now - now % 60;
    let usage = |bytes, packets| relay_proto::Usage {
        bytes_to_peer: bytes,
        bytes_to_client: bytes,
        packets_to_peer: packets,
        packets_to_client: packets,
    };
    let bucket = |bytes| BucketTotals {
        start,
        width: 60,
        users: vec![("room:peer".to_owned(), usage(bytes, 1))],
        other: relay_proto::Usage::default(),
    };
    let hour = Duration::from_secs(3600);
    publish(&conn, "long#1", &bucket(100), hour, 0, STEP)
        .await
        .expect("publish");
    publish(
        &conn,
        "short#2",
        &bucket(20),
        Duration::from_secs(120),
        0,
        STEP,
    )
    .await
    .expect("publish");
    let ttl_ms: u64 = redis
        .cli(&["PTTL", &format!("sig:{{fleet}}:usage:{start}")])
        .trim()
        .parse()
        .expect("PTTL");
    assert!(
        ttl_ms > 3_000_000,
        "the bucket lives for the longer retention: {ttl_ms} ms"
    );
    let fleet = read(&conn, 0, u64::MAX, STEP).await.expect("read");
    assert_eq!(fleet.buckets.len(), 1, "{fleet:?}");
    assert_eq!(
        fleet.buckets[0].users,
        [("room:peer".to_owned(), usage(120, 2))]
    );
}
