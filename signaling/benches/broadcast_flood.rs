//! Broadcast flood benchmark: what a room of big broadcasts does to another room.
//!
//! ```sh
//! cargo bench -p signaling --bench broadcast_flood -- --nodes 3
//! ```
//!
//! Starts `--nodes` release servers with the default message limits (on a private
//! `redis-server` when N > 1; only the per-address limits are raised, every client being
//! 127.0.0.1). A probe pair in its own room (sender on node 0, receiver on node 1 mod N) sends
//! a timestamped signal every 50 ms. After `--baseline` seconds, `--senders` peers of each of
//! `--rooms` rooms of `--room-size` (spread over the nodes) broadcast `--bytes` of data each at
//! `--rate` per second for `--duration` seconds; the others read and acknowledge. Reports the
//! probe's latency before and during the flood, the broadcasts sent, refused (`rate_limited`)
//! and delivered, the sockets the servers closed, and the nodes' outages and CPU. The load generator shares the
//! machine: compare one node and three in one run (`scripts/bench-broadcast-flood.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use signaling::protocol::{ClientMessage, ErrorCode, ServerFrame, ServerMessage};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{
    cpu_seconds, make_signal, percentile, raise_fd_limit, send, spawn_server, timestamp_of,
};

#[path = "../../tests/src/redis.rs"]
mod redis;

/// Broadcast flood benchmark (see the module's documentation).
#[derive(clap::Parser)]
struct Args {
    /// Servers (on a private `redis-server` when more than 1).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Flooding rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Peers per flooding room.
    #[arg(long, default_value_t = 32)]
    room_size: usize,
    /// Broadcasting peers per flooding room (fewer than `--room-size`).
    #[arg(long, default_value_t = 3)]
    senders: usize,
    /// Bytes of data per broadcast.
    #[arg(long, default_value_t = 64_000)]
    bytes: usize,
    /// Broadcasts per second per sender.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of probe before the flood.
    #[arg(long, default_value = "5", value_parser = common::seconds)]
    baseline: Duration,
    /// Seconds of flood.
    #[arg(long, default_value = "20", value_parser = common::seconds)]
    duration: Duration,
    /// More flags for the servers, split at spaces (`--server-args "--rate-limit 3200"`).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    server_args: Vec<String>,
}

/// A node: its process (killed on drop) and its `ws://HOST:PORT` and `HOST:PORT`.
struct Node {
    process: testkit::ChildGuard,
    url: String,
    addr: std::net::SocketAddr,
}

fn spawn_node(redis: Option<&str>, extra: &[String]) -> Node {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"));
    // The default message limits; every client of the bench is 127.0.0.1.
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "none",
        "--max-connections-per-ip",
        "10000",
        "--max-sessions-per-ip",
        "10000",
        "--join-rate-per-ip",
        "10000",
        "--join-burst-per-ip",
        "10000",
    ]);
    if let Some(redis) = redis {
        command.args(["--redis", redis]);
    }
    command.args(extra);
    let (child, addr) = spawn_server(command);
    Node {
        process: testkit::ChildGuard {
            child,
            name: "signaling".into(),
        },
        url: format!("ws://{addr}"),
        addr: addr.parse().expect("node address"),
    }
}

/// The probe's samples: when each signal was sent (since the epoch) and its latency (ns).
type Latencies = Arc<std::sync::Mutex<Vec<(Duration, u64)>>>;

/// What the clients saw.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    refused: AtomicU64,
    delivered: AtomicU64,
    closed: AtomicU64,
}

/// A socket's writing half, shared by its reader (which acknowledges) and its sender.
type SharedSink = Arc<Mutex<futures_util::stream::SplitSink<common::Ws, Message>>>;

/// Splits `ws` and spawns [`read`] on its reading half; returns the writing half.
fn spawn_reader(
    ws: common::Ws,
    epoch: Instant,
    counts: Arc<Counts>,
    latency: Option<Latencies>,
) -> SharedSink {
    let (sink, stream) = ws.split();
    let sink = Arc::new(Mutex::new(sink));
    tokio::spawn(read(stream, Arc::clone(&sink), epoch, counts, latency));
    sink
}

/// Reads a socket until it ends: acknowledges every 32 frames, counts broadcasts delivered and
/// `rate_limited` refusals, and hands each signal's send time and latency to `latency`.
async fn read(
    mut stream: futures_util::stream::SplitStream<common::Ws>,
    sink: SharedSink,
    epoch: Instant,
    counts: Arc<Counts>,
    latency: Option<Latencies>,
) {
    let mut unacked = 0;
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
            continue;
        };
        match frame.message {
            ServerMessage::Broadcast { .. } => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
            }
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            ServerMessage::Signal { signal, .. } => {
                if let (Some(latency), Some(stamp)) = (&latency, timestamp_of(&signal)) {
                    let now = epoch.elapsed();
                    let sent = Duration::from_nanos(stamp);
                    latency
                        .lock()
                        .expect("latency")
                        .push((sent, now.saturating_sub(sent).as_nanos() as u64));
                }
            }
            _ => {}
        }
        unacked += 1;
        if unacked >= 32 && frame.seq > 0 {
            unacked = 0;
            send(
                &mut *sink.lock().await,
                &ClientMessage::Ack { seq: frame.seq },
            )
            .await;
        }
    }
    counts.closed.fetch_add(1, Ordering::Relaxed);
}

/// p50 / p99 / max of the latencies (ns) sent within `from..to`, in ms.
fn summary(samples: &[(Duration, u64)], from: Duration, to: Duration) -> String {
    let mut in_window: Vec<u64> = samples
        .iter()
        .filter(|(sent, _)| *sent >= from && *sent < to)
        .map(|(_, ns)| *ns)
        .collect();
    in_window.sort_unstable();
    format!(
        "{} signals, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        in_window.len(),
        percentile(&in_window, 0.5),
        percentile(&in_window, 0.99),
        in_window.last().map_or(f64::NAN, |ns| *ns as f64 / 1e6)
    )
}

/// The sum of every sample of `family` in each node's `/metrics`.
fn metric_sum(nodes: &[Node], family: &str) -> f64 {
    nodes
        .iter()
        .filter_map(|node| testkit::http_get(node.addr, "/metrics").ok())
        .flat_map(|(_, text)| {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[tokio::main]
async fn main() {
    raise_fd_limit();
    let args: Args = common::parse_args();
    assert!(args.nodes >= 1 && args.rooms >= 1 && args.senders < args.room_size);
    let redis = (args.nodes > 1).then(redis::RedisServer::start);
    let nodes: Vec<Node> = (0..args.nodes)
        .map(|_| {
            spawn_node(
                redis.as_ref().map(redis::RedisServer::url).as_deref(),
                &args.server_args,
            )
        })
        .collect();
    let epoch = Instant::now();
    let counts = Arc::new(Counts::default());
    let latency: Latencies = Arc::new(std::sync::Mutex::new(Vec::new()));

    // The probe pair.
    let (probe_tx, _) = common::join(&format!("{}/ws/probe", nodes[0].url))
        .await
        .expect("probe sender joins");
    let (probe_rx, probe_rx_info) =
        common::join(&format!("{}/ws/probe", nodes[1 % args.nodes].url))
            .await
            .expect("probe receiver joins");
    spawn_reader(
        probe_rx,
        epoch,
        Arc::clone(&counts),
        Some(Arc::clone(&latency)),
    );
    let tx_sink = spawn_reader(probe_tx, epoch, Arc::new(Counts::default()), None);
    let probe_to = probe_rx_info.peer_id;
    let flood_ends = args.baseline + args.duration;
    tokio::spawn(async move {
        let mut n = 0;
        while epoch.elapsed() < flood_ends + Duration::from_secs(1) {
            let stamp = epoch.elapsed().as_nanos() as u64;
            let message = ClientMessage::Signal {
                id: None,
                cseq: None,
                to: probe_to.clone(),
                signal: make_signal(n, stamp),
            };
            send(&mut *tx_sink.lock().await, &message).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // The flood rooms: everyone joins now, the senders start after the baseline.
    let blob = "f".repeat(args.bytes);
    for (room, i) in (0..args.rooms).flat_map(|room| (0..args.room_size).map(move |i| (room, i))) {
        let url = format!("{}/ws/flood{room}", nodes[i % args.nodes].url);
        let (ws, _) = common::join(&url).await.expect("flood peer joins");
        let sink = spawn_reader(ws, epoch, Arc::clone(&counts), None);
        if i < args.senders {
            let (counts, blob, rate) = (Arc::clone(&counts), blob.clone(), args.rate);
            let start = args.baseline;
            tokio::spawn(async move {
                tokio::time::sleep(start.saturating_sub(epoch.elapsed())).await;
                let message = ClientMessage::Broadcast {
                    id: None,
                    cseq: None,
                    data: serde_json::Value::String(blob),
                };
                while epoch.elapsed() < flood_ends {
                    if !send(&mut *sink.lock().await, &message).await {
                        break;
                    }
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
                }
            });
        }
    }
    let cpu_before: f64 = nodes.iter().map(|n| cpu_seconds(n.process.pid())).sum();
    tokio::time::sleep((flood_ends + Duration::from_secs(2)).saturating_sub(epoch.elapsed())).await;
    let cpu: f64 = nodes
        .iter()
        .map(|n| cpu_seconds(n.process.pid()))
        .sum::<f64>()
        - cpu_before;

    let samples = latency.lock().expect("latency").clone();
    println!(
        "nodes {}: {} room(s) of {} where {} peers broadcast {} bytes at {}/s each for {} s",
        args.nodes,
        args.rooms,
        args.room_size,
        args.senders,
        args.bytes,
        args.rate,
        args.duration.as_secs()
    );
    println!(
        "probe latency (another room, across nodes when N > 1) before: {}",
        summary(&samples, Duration::from_secs(1), args.baseline)
    );
    println!(
        "probe latency during the flood:                            {}",
        summary(&samples, args.baseline, flood_ends)
    );
    let delivered = counts.delivered.load(Ordering::Relaxed);
    println!(
        "broadcast attempts {}, passed {} (each delivered to the {} others: {} frames, {:.1} MB), rate_limited replies {}; sockets closed by the servers {}",
        counts.sent.load(Ordering::Relaxed),
        delivered / (args.room_size as u64 - 1),
        args.room_size - 1,
        delivered,
        delivered as f64 * args.bytes as f64 / 1e6,
        counts.refused.load(Ordering::Relaxed),
        counts.closed.load(Ordering::Relaxed)
    );
    let outages = if args.nodes > 1 {
        format!("{}", metric_sum(&nodes, "signaling_cluster_outages_total"))
    } else {
        "n/a".into()
    };
    println!("node outages (signaling_cluster_outages_total) {outages}; nodes' CPU {cpu:.1} s");
}
