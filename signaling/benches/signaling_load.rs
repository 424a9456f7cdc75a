//! Signaling load benchmark: idle-connection memory and relay latency of a release server.
//!
//! ```sh
//! cargo bench -p signaling --bench signaling_load -- \
//!     --connections 10000 --rooms 5000 --pairs 50 --rate 5000 --duration 10
//! ```
//!
//! 1. Starts the release `signaling` binary on 127.0.0.1:0 (or uses `--url ws://HOST:PORT` with
//!    `--pid PID` of a running server).
//! 2. Opens `--connections` WebSockets in `--rooms` rooms (each joins and acks its frames) and
//!    reports the connections held, the server's RSS (VmRSS from /proc/PID/status) and the RSS
//!    per idle connection (growth over the empty server, divided by the connections).
//! 3. In `--pairs` of those rooms, the first peer sends the second offer/answer/candidate
//!    signals at `--rate` messages/s in total for `--duration` seconds, a send timestamp in
//!    each payload; the receiver records relay latency. Reports p50/p99/max, loss, and the
//!    server's CPU time.
//!
//! The client side's own memory is not counted: only the server process's RSS is read.
//!
//! Cluster mode (`--nodes N`, N > 1): starts a private `redis-server` and N nodes on it. The
//! k-th joiner of every room connects to node k mod N, so each signal crosses nodes (sender on
//! node 0, receiver on node 1). Adds the Redis figures: commands per delivered signal (from
//! `INFO commandstats`: top-level `EVALSHA` round trips, and every command including those run
//! inside the scripts) and Redis memory per session. `--failover` then kills node 1 with
//! SIGKILL and reports how long its clients took to resume on another node (median, max).
//! `scripts/bench-signaling-cluster.sh` runs one node and three side by side. With
//! `--redis-cluster` the nodes share a private Redis Cluster of three masters instead (what the
//! cluster's per-script guard costs).
//!
//! `--numbered`: the senders number their signals (`cseq`, as the SDK and the JS client do), so
//! the server checks and records each number: what exactly-once sending costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::SplitSink;
use signaling::protocol::{ClientMessage, PeerId, ResumeToken, ServerFrame, ServerMessage};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{
    Ws, cpu_seconds, make_signal, percentile, raise_fd_limit, send, spawn_server, timestamp_of,
};

#[path = "../../tests/src/redis.rs"]
mod redis;

type Sink = SplitSink<Ws, Message>;

#[derive(Debug, Clone)]
/// Signaling load benchmark (see the module's documentation).
#[derive(clap::Parser)]
struct Args {
    /// WebSocket connections in all (at least twice `--pairs`).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms they join.
    #[arg(long, default_value_t = 5_000)]
    rooms: usize,
    /// Sending pairs (at most `--rooms`).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Signals per second, all pairs together.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value = "10", value_parser = common::seconds)]
    duration: Duration,
    /// A running server to load instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// That server's process, for its CPU and memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Servers to start (on a private `redis-server` when more than 1).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With `--nodes` > 1: a private Redis Cluster (`--redis-cluster-masters`) instead of one
    /// `redis-server` (the Redis figures add up the masters).
    #[arg(long)]
    redis_cluster: bool,
    /// With `--redis-cluster`: how many masters (1, or 3 or more). One master that holds every
    /// slot runs the cluster client and the scripts' guard with no cluster bus between masters.
    #[arg(long, default_value_t = 3)]
    redis_cluster_masters: usize,
    /// After sending, kill node 1 and time its clients' resumes elsewhere (cluster mode).
    #[arg(long)]
    failover: bool,
    /// Number the signals (`cseq`): what exactly-once sending costs.
    #[arg(long)]
    numbered: bool,
}

struct ServerProcess {
    child: Option<std::process::Child>,
    pid: u32,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The private Redis of a cluster run: one server, or a Redis Cluster.
enum Redis {
    Server(redis::RedisServer),
    Cluster(redis::RedisCluster),
}

impl Redis {
    /// What the nodes' `--redis` takes.
    fn url(&self) -> String {
        match self {
            Self::Server(server) => server.url(),
            Self::Cluster(cluster) => cluster.urls(),
        }
    }

    /// Its servers (a Redis Cluster's masters).
    fn servers(&self) -> &[redis::RedisServer] {
        match self {
            Self::Server(server) => std::slice::from_ref(server),
            Self::Cluster(cluster) => &cluster.nodes,
        }
    }
}

/// The servers under test: one node, or N nodes on a private Redis.
struct Servers {
    nodes: Vec<ServerProcess>,
    redis: Option<Redis>,
}

impl Servers {
    fn start(args: &Args) -> Self {
        if let Some(url) = &args.url {
            let node = ServerProcess {
                child: None,
                pid: args
                    .pid
                    .expect("--url needs --pid (to read the server's RSS)"),
                url: url.trim_end_matches('/').to_owned(),
            };
            return Self {
                nodes: vec![node],
                redis: None,
            };
        }
        let redis = (args.nodes > 1).then(|| {
            if args.redis_cluster {
                Redis::Cluster(redis::RedisCluster::with_masters(
                    args.redis_cluster_masters,
                ))
            } else {
                Redis::Server(redis::RedisServer::start())
            }
        });
        let nodes = (0..args.nodes.max(1))
            .map(|_| spawn_node(args, redis.as_ref().map(Redis::url)))
            .collect();
        Self { nodes, redis }
    }

    /// Summed VmRSS of the nodes, KiB.
    fn rss_kib(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| testkit::proc_status_kib(n.pid, "VmRSS"))
            .sum()
    }

    /// Summed CPU seconds of the nodes.
    fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(|n| cpu_seconds(n.pid)).sum()
    }
}

fn spawn_node(args: &Args, redis: Option<String>) -> ServerProcess {
    let max = (args.connections + 1000).to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"));
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--max-connections",
        &max,
        "--max-sessions",
        &max,
        "--max-rooms",
        &max,
        // Every client of the bench is 127.0.0.1.
        "--max-connections-per-ip",
        &max,
        "--max-http-connections-per-ip",
        &max,
        "--max-sessions-per-ip",
        &max,
        "--join-rate-per-ip",
        "100000",
        "--join-burst-per-ip",
        "100000",
    ]);
    if let Some(redis) = redis {
        // Default heartbeat (1 s) and lease (5 s): a node saturated by the failover must not
        // look dead.
        command.args(["--redis", &redis]);
    }
    let (child, addr) = spawn_server(command);
    ServerProcess {
        pid: child.id(),
        child: Some(child),
        url: format!("ws://{addr}"),
    }
}

/// Sums the `calls=` of `INFO commandstats` over the servers: (EVALSHA calls, all calls).
fn redis_calls(redis: &Redis) -> (u64, u64) {
    let stats: String = redis
        .servers()
        .iter()
        .map(|server| server.cli(&["INFO", "commandstats"]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut evalsha = 0;
    let mut all = 0;
    for line in stats.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if name == "cmdstat_info" {
            continue;
        }
        all += calls;
        if name == "cmdstat_evalsha" || name == "cmdstat_eval" {
            evalsha += calls;
        }
    }
    (evalsha, all)
}

/// `used_memory` of Redis (summed over its servers), bytes.
fn redis_memory(redis: &Redis) -> u64 {
    redis
        .servers()
        .iter()
        .map(|server| {
            server
                .cli(&["INFO", "memory"])
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// A joined connection: its socket, peer id and resume token.
struct Joined {
    ws: Ws,
    peer: PeerId,
    token: ResumeToken,
}

/// Connects and joins.
async fn join(url: &str, room: &str) -> Result<Joined, String> {
    let (ws, session) = common::join(&format!("{url}/ws/{room}")).await?;
    Ok(Joined {
        ws,
        peer: session.peer_id,
        token: session.resume_token,
    })
}

/// Connects to `url` and resumes; returns the socket once `resumed` arrived.
async fn resume(url: &str, token: &ResumeToken, last_seq: u64) -> Result<Ws, String> {
    let mut ws = common::connect(&format!("{url}/ws")).await?;
    let message = ClientMessage::Resume {
        id: Some(2),
        versions: vec![1],
        resume_token: token.clone(),
        last_seq,
    };
    if !send(&mut ws, &message).await {
        return Err("send resume".into());
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: ServerFrame = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                match frame.message {
                    ServerMessage::Resumed { .. } => return Ok(ws),
                    ServerMessage::Error { code, message, .. } => {
                        return Err(format!("{code}: {message}"));
                    }
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            other => return Err(format!("socket ended: {other:?}")),
        }
    }
}

/// Latency samples in nanoseconds, and counters.
#[derive(Default)]
struct Recorder {
    samples: std::sync::Mutex<Vec<u64>>,
    received: AtomicU64,
}

/// The failover phase: which node was killed when, and how long its clients took to resume.
struct Failover {
    urls: Vec<String>,
    killed_at: std::sync::OnceLock<Instant>,
    resumed: std::sync::Mutex<Vec<Duration>>,
    failed: AtomicU64,
}

/// What a reader needs to resume elsewhere when its node is killed.
struct Resumable {
    token: ResumeToken,
    node: usize,
    failover: Arc<Failover>,
}

/// Reads a connection until it ends: answers pings (tungstenite does), acks every 32 frames,
/// and records the latency of timestamped signals. A connection of the killed node resumes on
/// the next node and goes on.
fn spawn_reader(
    mut stream: futures_util::stream::SplitStream<Ws>,
    sink: Arc<Mutex<Sink>>,
    epoch: Instant,
    recorder: Arc<Recorder>,
    resumable: Option<Resumable>,
) {
    tokio::spawn(async move {
        let mut unacked = 0u32;
        let mut last_seq = 1;
        let mut resumed_once = false;
        loop {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                    continue;
                };
                last_seq = last_seq.max(frame.seq);
                if let ServerMessage::Signal { signal, .. } = &frame.message
                    && let Some(sent) = timestamp_of(signal)
                {
                    let now = epoch.elapsed().as_nanos() as u64;
                    recorder
                        .samples
                        .lock()
                        .expect("samples")
                        .push(now.saturating_sub(sent));
                    recorder.received.fetch_add(1, Ordering::Relaxed);
                }
                unacked += 1;
                if unacked >= 32 {
                    unacked = 0;
                    let mut sink = sink.lock().await;
                    send(&mut *sink, &ClientMessage::Ack { seq: frame.seq }).await;
                }
            }
            let Some(r) = &resumable else { return };
            let Some(killed) = r.failover.killed_at.get().copied() else {
                return;
            };
            let url = &r.failover.urls[(r.node + 1) % r.failover.urls.len()];
            let mut resumed = None;
            for _ in 0..50 {
                match resume(url, &r.token, last_seq).await {
                    Ok(ws) => {
                        resumed = Some(ws);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let Some(ws) = resumed else {
                r.failover.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if !resumed_once {
                resumed_once = true;
                r.failover
                    .resumed
                    .lock()
                    .expect("resumed")
                    .push(killed.elapsed());
            }
            let (new_sink, new_stream) = ws.split();
            *sink.lock().await = new_sink;
            stream = new_stream;
        }
    });
}

#[tokio::main]
async fn main() {
    let args: Args = common::parse_args();
    assert!(args.rooms >= 1 && args.connections >= 2 * args.pairs.max(1));
    assert!(args.pairs <= args.rooms, "--pairs must be <= --rooms");
    raise_fd_limit();
    let mut servers = Servers::start(&args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss = servers.rss_kib();
    let urls: Vec<String> = servers.nodes.iter().map(|n| n.url.clone()).collect();
    println!(
        "{} node(s) at {}{}: baseline RSS {} KiB",
        servers.nodes.len(),
        urls.join(" "),
        servers
            .redis
            .as_ref()
            .map_or(String::new(), |r| format!(" on {}", r.url())),
        base_rss
    );
    let base_redis_memory = servers.redis.as_ref().map_or(0, redis_memory);

    // Phase 1: N connections in M rooms; the k-th joiner of a room goes to node k mod N.
    let epoch = Instant::now();
    let recorder = Arc::new(Recorder::default());
    let failover = Arc::new(Failover {
        urls: urls.clone(),
        killed_at: std::sync::OnceLock::new(),
        resumed: std::sync::Mutex::new(Vec::new()),
        failed: AtomicU64::new(0),
    });
    let started = Instant::now();
    let urls = Arc::new(urls);
    let node_of = |i: usize| (i / args.rooms) % urls.len();
    let mut pending = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let urls = Arc::clone(&urls);
            let room = format!("room-{}", i % args.rooms);
            async move { (i, join(&urls[node_of(i)], &room).await) }
        })
        .buffer_unordered(args.connect_concurrency);
    // The first two connections of the first `pairs` rooms carry the traffic.
    let mut senders: Vec<Option<(Arc<Mutex<Sink>>, PeerId)>> = vec![None; args.pairs];
    let mut receivers: Vec<Option<PeerId>> = vec![None; args.pairs];
    let mut failed = 0usize;
    let mut held = 0usize;
    let mut on_victim = 0usize;
    while let Some((i, result)) = pending.next().await {
        match result {
            Ok(joined) => {
                held += 1;
                let (sink, stream) = joined.ws.split();
                let sink = Arc::new(Mutex::new(sink));
                let node = node_of(i);
                if node == 1 {
                    on_victim += 1;
                }
                let resumable = (urls.len() > 1).then(|| Resumable {
                    token: joined.token,
                    node,
                    failover: Arc::clone(&failover),
                });
                spawn_reader(
                    stream,
                    Arc::clone(&sink),
                    epoch,
                    Arc::clone(&recorder),
                    resumable,
                );
                let room = i % args.rooms;
                if room < args.pairs {
                    if i / args.rooms == 0 {
                        senders[room] = Some((sink, joined.peer));
                    } else if i / args.rooms == 1 {
                        receivers[room] = Some(joined.peer);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("connection {i} failed: {e}");
                }
            }
        }
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = servers.rss_kib();
    let per_conn = (idle_rss.saturating_sub(base_rss) as f64 * 1024.0) / held.max(1) as f64;
    println!(
        "connections held: {held} (failed {failed}) in {} rooms, opened in {:.1} s",
        args.rooms,
        connect_time.as_secs_f64()
    );
    println!(
        "server RSS idle (all nodes): {idle_rss} KiB; per idle connection: {:.0} bytes ({:.1} KiB)",
        per_conn,
        per_conn / 1024.0
    );
    if let Some(redis) = &servers.redis {
        let per_session =
            redis_memory(redis).saturating_sub(base_redis_memory) as f64 / held.max(1) as f64;
        println!("redis memory per session: {per_session:.0} bytes");
    }

    // Phase 2: timestamped signals at the given rate.
    let pairs: Vec<(Arc<Mutex<Sink>>, PeerId)> = senders
        .into_iter()
        .zip(receivers)
        .filter_map(|(s, r)| Some((s?.0, r?)))
        .collect();
    if pairs.is_empty() || args.rate <= 0.0 {
        return;
    }
    let cpu_before = servers.cpu_seconds();
    let calls_before = servers.redis.as_ref().map(redis_calls);
    let per_pair = args.rate / pairs.len() as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let n_pairs = pairs.len() as f64;
    let mut tasks = Vec::new();
    let numbered = args.numbered;
    for (k, (sink, to)) in pairs.iter().cloned().enumerate() {
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / per_pair);
            // Spread the pairs' sends over one period.
            let offset = period.mul_f64(k as f64 / n_pairs);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                let stamp = epoch.elapsed().as_nanos() as u64;
                let message = ClientMessage::Signal {
                    id: None,
                    cseq: numbered.then_some(n + 1),
                    to: to.clone(),
                    signal: make_signal(n, stamp),
                };
                let mut sink = sink.lock().await;
                if !send(&mut *sink, &message).await {
                    break;
                }
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = servers.cpu_seconds() - cpu_before;
    let sent = sent.load(Ordering::Relaxed);
    let received = recorder.received.load(Ordering::Relaxed);
    let mut samples = std::mem::take(&mut *recorder.samples.lock().expect("samples"));
    samples.sort_unstable();
    println!(
        "traffic: {} pairs, {:.0} msg/s target, {:.1} s: sent {sent}, received {received} (lost {}), {:.0} msg/s delivered",
        pairs.len(),
        args.rate,
        args.duration.as_secs_f64(),
        sent.saturating_sub(received),
        received as f64 / args.duration.as_secs_f64()
    );
    println!(
        "relay latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().map_or(f64::NAN, |m| *m as f64 / 1e6)
    );
    println!(
        "server CPU during traffic (all nodes): {:.2} s ({:.0}% of one core); RSS {} KiB",
        cpu,
        100.0 * cpu / args.duration.as_secs_f64(),
        servers.rss_kib()
    );
    if let (Some(redis), Some((evalsha0, all0))) = (&servers.redis, calls_before) {
        let (evalsha1, all1) = redis_calls(redis);
        let delivered = received.max(1) as f64;
        println!(
            "redis commands per delivered signal: {:.2} round trips (EVALSHA), {:.1} counting the commands inside the scripts",
            (evalsha1 - evalsha0) as f64 / delivered,
            (all1 - all0) as f64 / delivered
        );
    }

    // Phase 3: kill -9 node 1; its clients resume on node 2.
    if args.failover && servers.nodes.len() > 1 {
        let victim = &mut servers.nodes[1];
        let _ = failover.killed_at.set(Instant::now());
        if let Some(child) = &mut victim.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let limit = Instant::now() + Duration::from_secs(60);
        while Instant::now() < limit {
            let done = failover.resumed.lock().expect("resumed").len()
                + failover.failed.load(Ordering::Relaxed) as usize;
            if done >= on_victim {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times = failover.resumed.lock().expect("resumed").clone();
        times.sort_unstable();
        let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        println!(
            "failover: kill -9 of a node with {on_victim} clients: {} resumed elsewhere, {} failed; time to resume median {:.0} ms, max {:.0} ms",
            times.len(),
            failover.failed.load(Ordering::Relaxed),
            ms(times.get(times.len() / 2)),
            ms(times.last())
        );
    }
}
