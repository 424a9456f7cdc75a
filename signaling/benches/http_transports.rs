//! The three transports of the signaling protocol side by side: WebSocket, SSE + POST and
//! long-polling (`docs/protocol.md`, "Transport" and "When WebSockets are blocked").
//!
//! ```sh
//! cargo bench -p signaling --bench http_transports -- \
//!     --rate 1000 --pairs 20 --duration 10 --idle 1000 --transports websocket,sse,long-poll
//! ```
//!
//! For each transport, two fresh release `signaling` servers on 127.0.0.1:0 (one after the
//! other, so that each figure starts from an empty process):
//!
//! 1. **Latency.** `--pairs` rooms with a sender and a receiver, both full clients of the
//!    transport (each has its stream open). Every sender sends `signal` frames (the offer /
//!    answer / candidate mix of `signaling_load`) carrying a send timestamp, `--rate` msg/s in
//!    total, for `--warmup` + `--duration` seconds; only signals sent after the warm-up count.
//!    WebSocket: frames on the socket, `ack` every 50 frames. SSE: one `POST /http/send` per
//!    signal on a keep-alive HTTP/1.1 connection per sender; the receiver reads
//!    `GET /http/events` and POSTs an `ack` every 50 frames (from another task, on its own
//!    keep-alive connection). Long-poll: sends as for SSE; the receiver polls again at once
//!    with `last_seq` = the highest seq received, on one keep-alive connection (that poll is
//!    its ack). Reports p50/p99/max of send -> receive, loss, the server's CPU, HTTP requests
//!    per delivered signal (the server's `signaling_http_requests_total`), and for long-poll
//!    the polls per delivered frame, counted by the client and by the server (`/metrics`).
//! 2. **Idle sessions.** `--idle` sessions, two per room. WebSocket: joined sockets. SSE: open,
//!    then an open events stream each. Long-poll: open, then a poll always pending (the server
//!    holds it for `--poll-timeout`; polled again when it returns). The server's RSS (VmRSS
//!    from /proc/PID/status) before and 2 s after they are all open, divided by the sessions.
//!
//! Then one table with the transports side by side. Client and server share the machine: only
//! the server's RSS and CPU are read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use signaling::protocol::{ClientMessage, PeerId, PollReply, ServerFrame, ServerMessage};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{
    Ws, cpu_seconds, make_signal, percentile, raise_fd_limit, send, spawn_server, timestamp_of,
};

#[path = "../../tests/src/signaling_http.rs"]
mod signaling_http;

use signaling_http::{Event, Sse};

/// Frames between two acks of a WebSocket or SSE receiver.
const ACK_EVERY: u64 = 50;
/// Any one request, connect or join of the set-up phases.
const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "long-poll",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "websocket" | "ws" => Ok(Self::WebSocket),
            "sse" => Ok(Self::Sse),
            "long-poll" | "poll" => Ok(Self::LongPoll),
            other => Err(format!(
                "unknown transport {other} (websocket, sse, long-poll)"
            )),
        }
    }
}

/// HTTP transports benchmark (see the module's documentation).
#[derive(Debug, Clone, clap::Parser)]
struct Args {
    /// Signals per second, all pairs of a transport together.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Sending pairs per transport.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Seconds of sending.
    #[arg(long, default_value = "10", value_parser = common::seconds)]
    duration: Duration,
    /// Seconds of sending before the measurement.
    #[arg(long, default_value = "2", value_parser = common::seconds)]
    warmup: Duration,
    /// Idle sessions per transport.
    #[arg(long, default_value_t = 1_000)]
    idle: usize,
    /// The transports to measure.
    #[arg(long, value_delimiter = ',', default_value = "websocket,sse,long-poll", value_parser = Transport::parse)]
    transports: Vec<Transport>,
    /// The servers' `--poll-timeout`, in seconds.
    #[arg(long = "poll-timeout", default_value_t = 25)]
    poll_timeout_s: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// More flags for every server, split at spaces (`--server-args "--max-http-connections
    /// 1024"`); one of the bench's own defaults given here replaces it.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    server_args: Vec<String>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A release server, killed on drop.
struct Server {
    child: std::process::Child,
    pid: u32,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &Args) -> Self {
        // Room for every session, stream, keep-alive connection and in-flight open.
        let max = (4 * args.idle + 8 * args.pairs + 1_000).to_string();
        let poll_timeout = format!("{}s", args.poll_timeout_s);
        let defaults = [
            ("--listen", "127.0.0.1:0"),
            ("--rate-limit", "100000"),
            ("--rate-burst", "100000"),
            ("--max-connections", &max),
            ("--max-sessions", &max),
            ("--max-rooms", &max),
            // SSE streams and pending polls are HTTP connections, not WebSockets.
            ("--max-http-connections", &max),
            // Every client of the bench is 127.0.0.1.
            ("--max-connections-per-ip", &max),
            ("--max-http-connections-per-ip", &max),
            ("--max-sessions-per-ip", &max),
            ("--join-rate-per-ip", "100000"),
            ("--join-burst-per-ip", "100000"),
            ("--poll-timeout", &poll_timeout),
        ];
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"));
        for (flag, value) in defaults {
            // A `--server-args` flag of the same name replaces the default.
            if !args.server_args.iter().any(|a| a == flag) {
                command.args([flag, value]);
            }
        }
        command.args(&args.server_args);
        let (child, addr) = spawn_server(command);
        let addr = addr.parse().expect("server address");
        Self {
            pid: child.id(),
            child,
            addr,
        }
    }

    fn rss_kib(&self) -> u64 {
        testkit::proc_status_kib(self.pid, "VmRSS")
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid)
    }

    /// The server's metrics that matter here.
    async fn metrics(&self) -> Metrics {
        let mut client = HttpClient::new(self.addr);
        let text = match client.request("GET", "/metrics", "").await {
            Ok((200, body)) => String::from_utf8_lossy(&body).into_owned(),
            _ => String::new(),
        };
        let value = |prefix: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum()
        };
        Metrics {
            polls: value("signaling_http_requests_total{kind=\"poll\"}"),
            http_requests: value("signaling_http_requests_total{"),
            frames_delivered: value("signaling_http_frames_delivered_total "),
            connections: value("signaling_connections "),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    polls: u64,
    http_requests: u64,
    frames_delivered: u64,
    connections: u64,
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: one keep-alive connection, one request at a time.

/// Why a request failed: `Stale` when a reused connection ended before any byte of the reply
/// (the server closed it while idle): the request can be sent again on a new connection.
enum RequestError {
    Stale,
    Failed(String),
}

struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// `method path` with `body` (JSON): (status, body), within [`STEP`] per attempt.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        self.request_within(method, path, body, STEP).await
    }

    /// As [`Self::request`], within `limit` per attempt; a reused connection the server closed
    /// meanwhile is replaced once.
    async fn request_within(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        limit: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        for _ in 0..2 {
            let reused = self.conn.is_some();
            match tokio::time::timeout(limit, self.try_request(method, path, body)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(RequestError::Stale)) if reused => self.conn = None,
                Ok(Err(RequestError::Stale)) => {
                    self.conn = None;
                    return Err("connection closed before the reply".into());
                }
                Ok(Err(RequestError::Failed(e))) => {
                    self.conn = None;
                    return Err(e);
                }
                Err(_) => {
                    self.conn = None;
                    return Err(format!("{method} {path}: no reply within {limit:?}"));
                }
            }
        }
        Err("connection closed before the reply, twice".into())
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), RequestError> {
        let failed = |e: std::io::Error| RequestError::Failed(e.to_string());
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(failed)?;
            stream.set_nodelay(true).map_err(failed)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        conn.get_mut()
            .write_all(&request)
            .await
            .map_err(|_| RequestError::Stale)?;
        let mut line = String::new();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return Err(RequestError::Stale),
            Ok(_) => {}
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RequestError::Failed(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None::<usize>, false, false);
        for _ in 0..100 {
            line.clear();
            if conn.read_line(&mut line).await.map_err(failed)? == 0 {
                return Err(RequestError::Failed("reply headers cut short".into()));
            }
            if line == "\r\n" {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        if status == 204 || status == 304 || (100..200).contains(&status) {
        } else if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(failed)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| RequestError::Failed(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    for _ in 0..100 {
                        line.clear();
                        if conn.read_line(&mut line).await.map_err(failed)? == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size + 2, 0);
                conn.read_exact(&mut body[start..]).await.map_err(failed)?;
                body.truncate(start + size);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            conn.read_exact(&mut body).await.map_err(failed)?;
        } else {
            conn.read_to_end(&mut body).await.map_err(failed)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }

    /// `POST /http/send?session=S` with one frame; 204 expected.
    async fn send(&mut self, session: &str, message: &ClientMessage) -> Result<(), String> {
        let body = serde_json::to_string(message).expect("encode");
        match self
            .request("POST", &format!("/http/send?session={session}"), &body)
            .await?
        {
            (204, _) => Ok(()),
            (status, body) => Err(format!("send: {status} {}", String::from_utf8_lossy(&body))),
        }
    }

    /// `GET /http/poll?session=S&last_seq=N`, waiting up to the server's poll timeout.
    async fn poll(
        &mut self,
        session: &str,
        last_seq: u64,
        poll_timeout: Duration,
    ) -> Result<PollReply, String> {
        let path = format!("/http/poll?session={session}&last_seq={last_seq}");
        match self
            .request_within("GET", &path, "", poll_timeout + STEP)
            .await?
        {
            (200, body) => serde_json::from_slice(&body).map_err(|e| e.to_string()),
            (status, body) => Err(format!("poll: {status} {}", String::from_utf8_lossy(&body))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions over each transport.

/// Connects a WebSocket and joins `room`: the socket and its peer id.
async fn ws_join(addr: SocketAddr, room: &str) -> Result<(Ws, PeerId), String> {
    let (ws, session) = common::join(&format!("ws://{addr}/ws/{room}")).await?;
    Ok((ws, session.peer_id))
}

/// `POST /http/ROOM` with a join: the session token.
async fn http_open(addr: SocketAddr, room: &str) -> Result<String, String> {
    tokio::time::timeout(
        STEP,
        signaling_http::open(addr, room, &signaling_http::join("bench")),
    )
    .await
    .map_err(|_| "open: no reply in time".to_owned())?
    .map_err(|reply| format!("open: {} {}", reply.status, reply.body))
}

/// Opens an SSE stream (panics of the shared client become errors: it runs in a task).
async fn sse_connect(addr: SocketAddr, session: String) -> Result<Sse, String> {
    let sse = tokio::spawn(async move { Sse::connect(addr, &session, None).await })
        .await
        .map_err(|e| format!("events: {e}"))?;
    if sse.status != 200 {
        return Err(format!("events: status {}", sse.status));
    }
    Ok(sse)
}

/// The next frame of an SSE stream within `limit`: `Ok(None)` on a quiet stream, `Err` when
/// it ended.
async fn sse_next(sse: &mut Sse, limit: Duration) -> Result<Option<ServerFrame>, String> {
    let deadline = Instant::now() + limit;
    match sse.next_within(limit).await {
        Some(Event::Frame { frame, .. }) => Ok(Some(*frame)),
        Some(Event::Close(code)) => Err(format!("stream closed with {code}")),
        // A quiet stream and a closed one look the same: tell them apart by the time.
        None if Instant::now() >= deadline => Ok(None),
        None => Err("stream ended".into()),
    }
}

fn welcome_peer(frame: &ServerFrame) -> Option<PeerId> {
    match &frame.message {
        ServerMessage::Welcome { session, .. } => Some(session.peer_id.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Latency.

/// What the receivers saw. `received` counts signals sent after the warm-up; `frames` and
/// `polls` count everything (snapshots taken at the edges of the measured window).
struct Recorder {
    /// Timestamps are nanoseconds since this instant.
    epoch: Instant,
    /// Signals stamped before this are the warm-up (`u64::MAX` until the traffic starts).
    measure_from: AtomicU64,
    samples: std::sync::Mutex<Vec<u64>>,
    received: AtomicU64,
    frames: AtomicU64,
    polls: AtomicU64,
}

impl Recorder {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            measure_from: AtomicU64::new(u64::MAX),
            samples: std::sync::Mutex::default(),
            received: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Counts one frame a receiver got, and its latency if it is a measured signal.
    fn frame(&self, frame: &ServerFrame) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if let ServerMessage::Signal { signal, .. } = &frame.message
            && let Some(sent) = timestamp_of(signal)
            && sent >= self.measure_from.load(Ordering::Relaxed)
        {
            let latency = self.now().saturating_sub(sent);
            self.samples.lock().expect("samples").push(latency);
            self.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a sender sends.
enum Outgoing {
    Ws(futures_util::stream::SplitSink<Ws, Message>),
    Http { client: HttpClient, session: String },
}

impl Outgoing {
    async fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        match self {
            Self::Ws(sink) => {
                if send(sink, message).await {
                    Ok(())
                } else {
                    Err("socket closed".into())
                }
            }
            Self::Http { client, session } => client.send(session, message).await,
        }
    }
}

/// Reads a WebSocket until it ends: records frames (when `recorder` is given), acks every
/// [`ACK_EVERY`] frames.
async fn ws_reader(mut ws: Ws, recorder: Option<Arc<Recorder>>) {
    let mut unacked = 0;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
            continue;
        };
        if let Some(recorder) = &recorder {
            recorder.frame(&frame);
        }
        unacked += 1;
        if unacked >= ACK_EVERY {
            unacked = 0;
            if !send(&mut ws, &ClientMessage::Ack { seq: frame.seq }).await {
                return;
            }
        }
    }
}

/// Reads only (the sender's socket: its writes go through the sink).
async fn ws_drain(mut stream: futures_util::stream::SplitStream<Ws>) {
    while let Some(Ok(_)) = stream.next().await {}
}

/// Reads an SSE stream until it ends; every [`ACK_EVERY`] frames the latest seq goes to an
/// acking task (its own keep-alive connection), as a browser's `fetch` runs beside its
/// `EventSource`.
async fn sse_reader(
    addr: SocketAddr,
    session: String,
    mut sse: Sse,
    recorder: Option<Arc<Recorder>>,
) {
    let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(0u64);
    let acker = tokio::spawn({
        let session = session.clone();
        async move {
            let mut client = HttpClient::new(addr);
            while ack_rx.changed().await.is_ok() {
                let seq = *ack_rx.borrow_and_update();
                if client
                    .send(&session, &ClientMessage::Ack { seq })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let mut unacked = 0;
    loop {
        match sse_next(&mut sse, Duration::from_secs(60)).await {
            Ok(Some(frame)) => {
                if let Some(recorder) = &recorder {
                    recorder.frame(&frame);
                }
                unacked += 1;
                if unacked >= ACK_EVERY {
                    unacked = 0;
                    let _ = ack_tx.send(frame.seq);
                }
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    acker.abort();
}

/// Polls until the session closes or a poll fails; each reply's frames recorded, then polled
/// again at once from the highest seq (which acks them).
async fn poll_loop(
    addr: SocketAddr,
    session: String,
    mut last_seq: u64,
    poll_timeout: Duration,
    recorder: Option<Arc<Recorder>>,
) {
    let mut client = HttpClient::new(addr);
    loop {
        let Ok(reply) = client.poll(&session, last_seq, poll_timeout).await else {
            return;
        };
        if let Some(recorder) = &recorder {
            recorder.polls.fetch_add(1, Ordering::Relaxed);
        }
        for frame in &reply.frames {
            last_seq = last_seq.max(frame.seq);
            if let Some(recorder) = &recorder {
                recorder.frame(frame);
            }
        }
        if reply.close.is_some() {
            return;
        }
    }
}

/// One sender -> receiver pair in `room`, both full clients of `transport`: the sender's
/// outgoing side (its reading side and the receiver's run in `tasks`) and the receiver's id.
async fn open_pair(
    transport: Transport,
    addr: SocketAddr,
    room: &str,
    poll_timeout: Duration,
    recorder: &Arc<Recorder>,
    tasks: &mut JoinSet<()>,
) -> Result<(Outgoing, PeerId), String> {
    match transport {
        Transport::WebSocket => {
            let (sender, _) = ws_join(addr, room).await?;
            let (receiver, peer) = ws_join(addr, room).await?;
            let (sink, stream) = sender.split();
            tasks.spawn(ws_drain(stream));
            tasks.spawn(ws_reader(receiver, Some(Arc::clone(recorder))));
            Ok((Outgoing::Ws(sink), peer))
        }
        Transport::Sse | Transport::LongPoll => {
            let sender = http_open(addr, room).await?;
            let receiver = http_open(addr, room).await?;
            let peer = if transport == Transport::Sse {
                sse_pair_streams(addr, &sender, receiver, recorder, tasks).await?
            } else {
                poll_pair_loops(addr, &sender, receiver, poll_timeout, recorder, tasks).await?
            };
            let outgoing = Outgoing::Http {
                client: HttpClient::new(addr),
                session: sender,
            };
            Ok((outgoing, peer))
        }
    }
}

/// SSE: the events streams of an open pair's `sender` (drained) and `receiver` (recorded),
/// run in `tasks`: the receiver's id, from the welcome on its stream.
async fn sse_pair_streams(
    addr: SocketAddr,
    sender: &str,
    receiver: String,
    recorder: &Arc<Recorder>,
    tasks: &mut JoinSet<()>,
) -> Result<PeerId, String> {
    let sender_sse = sse_connect(addr, sender.to_owned()).await?;
    tasks.spawn(sse_reader(addr, sender.to_owned(), sender_sse, None));
    let mut receiver_sse = sse_connect(addr, receiver.clone()).await?;
    let welcome = sse_next(&mut receiver_sse, STEP)
        .await?
        .ok_or("no welcome on the stream")?;
    let peer = welcome_peer(&welcome).ok_or("the first frame is not welcome")?;
    tasks.spawn(sse_reader(
        addr,
        receiver,
        receiver_sse,
        Some(Arc::clone(recorder)),
    ));
    Ok(peer)
}

/// Long-poll: the poll loops of an open pair's `sender` (drained) and `receiver` (recorded),
/// run in `tasks`: the receiver's id, from the welcome of its first poll.
async fn poll_pair_loops(
    addr: SocketAddr,
    sender: &str,
    receiver: String,
    poll_timeout: Duration,
    recorder: &Arc<Recorder>,
    tasks: &mut JoinSet<()>,
) -> Result<PeerId, String> {
    tasks.spawn(poll_loop(addr, sender.to_owned(), 0, poll_timeout, None));
    let mut client = HttpClient::new(addr);
    let first = client.poll(&receiver, 0, poll_timeout).await?;
    let welcome = first.frames.first().ok_or("no welcome in the first poll")?;
    let peer = welcome_peer(welcome).ok_or("the first frame is not welcome")?;
    let last_seq = first.frames.iter().map(|f| f.seq).max().unwrap_or(0);
    tasks.spawn(poll_loop(
        addr,
        receiver,
        last_seq,
        poll_timeout,
        Some(Arc::clone(recorder)),
    ));
    Ok(peer)
}

/// The figures of one latency run.
#[derive(Debug, Default, Clone)]
struct LatencyResult {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    sent: u64,
    received: u64,
    cpu_percent: f64,
    /// Server CPU time per delivered signal, microseconds.
    cpu_us_per_signal: f64,
    /// HTTP requests (all kinds, server's count) per delivered signal.
    http_per_signal: Option<f64>,
    /// Long-poll: the receivers' polls per frame they received.
    polls_per_frame_client: Option<f64>,
    /// Long-poll: `http_requests_total{kind="poll"}` / `http_frames_delivered_total`.
    polls_per_frame_server: Option<f64>,
    errors: u64,
}

async fn latency_run(transport: Transport, args: &Args) -> Result<LatencyResult, String> {
    let server = Server::start(args);
    let addr = server.addr;
    let poll_timeout = Duration::from_secs(args.poll_timeout_s);
    let recorder = Arc::new(Recorder::new());
    let mut tasks = JoinSet::new();
    let mut pairs = Vec::new();
    for k in 0..args.pairs {
        let opened = tokio::time::timeout(
            STEP * 3,
            open_pair(
                transport,
                addr,
                &format!("lat-{k}"),
                poll_timeout,
                &recorder,
                &mut tasks,
            ),
        )
        .await
        .map_err(|_| format!("pair {k}: not open in time"))??;
        pairs.push(opened);
    }
    let epoch = recorder.epoch;
    let start = epoch.elapsed() + Duration::from_millis(200);
    let measure_from = start + args.warmup;
    let stop_at = measure_from + args.duration;
    recorder
        .measure_from
        .store(measure_from.as_nanos() as u64, Ordering::Relaxed);
    let per_pair = args.rate / pairs.len() as f64;
    let period = Duration::from_secs_f64(1.0 / per_pair);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let n_pairs = pairs.len() as f64;
    let mut senders = JoinSet::new();
    for (k, (mut outgoing, to)) in pairs.into_iter().enumerate() {
        let (sent, errors, recorder) = (
            Arc::clone(&sent),
            Arc::clone(&errors),
            Arc::clone(&recorder),
        );
        senders.spawn(async move {
            // The pairs' sends spread over one period.
            let first =
                tokio::time::Instant::from_std(epoch + start) + period.mul_f64(k as f64 / n_pairs);
            let mut ticker = tokio::time::interval_at(first, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            // Bounded by the clock, and by a count in case the clock misbehaves.
            let most = ((stop_at - start).as_secs_f64() * per_pair) as u64 + 10;
            while n < most {
                ticker.tick().await;
                let stamp = recorder.now();
                if stamp >= stop_at.as_nanos() as u64 {
                    break;
                }
                let message = ClientMessage::Signal {
                    id: None,
                    cseq: None,
                    to: to.clone(),
                    signal: make_signal(n, stamp),
                };
                if let Err(e) = outgoing.send(&message).await {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("{}: send failed: {e}", transport.name());
                    }
                    break;
                }
                n += 1;
                if stamp >= measure_from.as_nanos() as u64 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            outgoing
        });
    }
    // The measured window: from the end of the warm-up to the last signal's delivery.
    tokio::time::sleep_until(tokio::time::Instant::from_std(epoch + measure_from)).await;
    let (frames0, polls0) = (
        recorder.frames.load(Ordering::Relaxed),
        recorder.polls.load(Ordering::Relaxed),
    );
    let metrics0 = server.metrics().await;
    let cpu0 = server.cpu_seconds();
    let window_start = Instant::now();
    let mut outgoings = Vec::new();
    while let Some(done) = tokio::time::timeout(args.duration + STEP, senders.join_next())
        .await
        .map_err(|_| "senders did not finish in time")?
    {
        outgoings.push(done.map_err(|e| e.to_string())?);
    }
    let sent = sent.load(Ordering::Relaxed);
    // Until everything sent arrived, or 3 s.
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while recorder.received.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = window_start.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu0;
    let metrics1 = server.metrics().await;
    let frames = recorder.frames.load(Ordering::Relaxed) - frames0;
    let polls = recorder.polls.load(Ordering::Relaxed) - polls0;
    let received = recorder.received.load(Ordering::Relaxed);
    let mut samples: Vec<u64> = std::mem::take(&mut *recorder.samples.lock().expect("samples"));
    samples.sort_unstable();
    drop(tasks);
    drop(outgoings);
    drop(server);
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let long_poll = transport == Transport::LongPoll;
    Ok(LatencyResult {
        p50_ms: percentile(&samples, 0.5),
        p99_ms: percentile(&samples, 0.99),
        max_ms: samples.last().map_or(f64::NAN, |m| *m as f64 / 1e6),
        sent,
        received,
        cpu_percent: 100.0 * cpu / window,
        cpu_us_per_signal: 1e6 * cpu / received.max(1) as f64,
        http_per_signal: (transport != Transport::WebSocket)
            .then(|| ratio(metrics1.http_requests - metrics0.http_requests, received))
            .flatten(),
        polls_per_frame_client: long_poll.then(|| ratio(polls, frames)).flatten(),
        polls_per_frame_server: long_poll
            .then(|| {
                ratio(
                    metrics1.polls - metrics0.polls,
                    metrics1.frames_delivered - metrics0.frames_delivered,
                )
            })
            .flatten(),
        errors: errors.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------------------------
// Idle sessions.

#[derive(Debug, Default, Clone)]
struct IdleResult {
    held: usize,
    streams: u64,
    base_kib: u64,
    idle_kib: u64,
}

impl IdleResult {
    fn per_session_kib(&self) -> f64 {
        self.idle_kib.saturating_sub(self.base_kib) as f64 / self.held.max(1) as f64
    }
}

/// Opens one idle session; once open, reports on `ready` and keeps it open (its stream read,
/// its poll pending) until the task is aborted or the server goes away.
async fn idle_session(
    transport: Transport,
    addr: SocketAddr,
    room: String,
    poll_timeout: Duration,
    gate: Arc<tokio::sync::Semaphore>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let permit = gate.acquire_owned().await;
    match transport {
        Transport::WebSocket => {
            let ws = tokio::time::timeout(STEP, ws_join(addr, &room))
                .await
                .unwrap_or_else(|_| Err("join: no welcome in time".into()));
            drop(permit);
            report_then_hold(ws, ready, |(ws, _)| ws_reader(ws, None)).await;
        }
        Transport::Sse => {
            let opened = async {
                let session = http_open(addr, &room).await?;
                let sse = sse_connect(addr, session.clone()).await?;
                Ok::<_, String>((session, sse))
            }
            .await;
            drop(permit);
            report_then_hold(opened, ready, |(session, sse)| {
                sse_reader(addr, session, sse, None)
            })
            .await;
        }
        Transport::LongPoll => {
            let opened = async {
                let session = http_open(addr, &room).await?;
                let mut client = HttpClient::new(addr);
                let first = client.poll(&session, 0, poll_timeout).await?;
                let last_seq = first.frames.iter().map(|f| f.seq).max().unwrap_or(0);
                Ok::<_, String>((session, last_seq))
            }
            .await;
            drop(permit);
            report_then_hold(opened, ready, |(session, last_seq)| {
                poll_loop(addr, session, last_seq, poll_timeout, None)
            })
            .await;
        }
    }
}

/// Reports how opening went on `ready`; once open, holds the session with `hold`.
async fn report_then_hold<T, H: Future<Output = ()>>(
    opened: Result<T, String>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    hold: impl FnOnce(T) -> H,
) {
    match opened {
        Ok(open) => {
            let _ = ready.send(Ok(()));
            hold(open).await;
        }
        Err(e) => drop(ready.send(Err(e))),
    }
}

async fn idle_run(transport: Transport, args: &Args) -> IdleResult {
    let server = Server::start(args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_kib = server.rss_kib();
    let poll_timeout = Duration::from_secs(args.poll_timeout_s);
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let rooms = args.idle.div_ceil(2).max(1);
    let mut tasks = JoinSet::new();
    let mut readies = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let (tx, rx) = tokio::sync::oneshot::channel();
        readies.push(rx);
        tasks.spawn(idle_session(
            transport,
            server.addr,
            format!("idle-{}", i % rooms),
            poll_timeout,
            Arc::clone(&gate),
            tx,
        ));
    }
    let deadline = tokio::time::Instant::now() + STEP + Duration::from_secs(args.idle as u64 / 10);
    let mut held = 0;
    let mut failed = 0;
    for ready in readies {
        match tokio::time::timeout_at(deadline, ready).await {
            Ok(Ok(Ok(()))) => held += 1,
            Ok(Ok(Err(e))) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("{}: idle session failed: {e}", transport.name());
                }
            }
            _ => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("{}: {failed} idle sessions failed", transport.name());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = server.rss_kib();
    let streams = server.metrics().await.connections;
    drop(tasks);
    drop(server);
    IdleResult {
        held,
        streams,
        base_kib,
        idle_kib,
    }
}

// ---------------------------------------------------------------------------------------------

fn table(rows: &[(String, Vec<String>)], transports: &[Transport]) -> String {
    let mut header = vec!["figure".to_owned()];
    header.extend(transports.iter().map(|t| t.name().to_owned()));
    let mut all = vec![header];
    all.extend(rows.iter().map(|(name, cells)| {
        let mut row = vec![name.clone()];
        row.extend(cells.iter().cloned());
        row
    }));
    let widths: Vec<usize> = (0..all[0].len())
        .map(|c| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in all.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w - 1))
                    }
                })
                .collect();
            out.push_str(&format!("| {} |\n", rule.join(" | ")));
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let args: Args = common::parse_args();
    assert!(
        args.pairs >= 1 && args.rate > 0.0,
        "--pairs and --rate must be > 0"
    );
    assert!(args.connect_concurrency >= 1);
    raise_fd_limit();
    println!(
        "{} pairs at {:.0} msg/s in total for {:.0} s (after {:.0} s warm-up); {} idle sessions; poll timeout {} s; load average {}",
        args.pairs,
        args.rate,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.idle,
        args.poll_timeout_s,
        load_average()
    );
    let mut results = Vec::new();
    for &transport in &args.transports {
        let latency = match latency_run(transport, &args).await {
            Ok(result) => result,
            Err(e) => {
                eprintln!("{}: latency run failed: {e}", transport.name());
                LatencyResult {
                    p50_ms: f64::NAN,
                    p99_ms: f64::NAN,
                    max_ms: f64::NAN,
                    ..LatencyResult::default()
                }
            }
        };
        println!(
            "{}: latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; sent {}, received {}; server CPU {:.0}% of a core",
            transport.name(),
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
            latency.sent,
            latency.received,
            latency.cpu_percent
        );
        let idle = if args.idle > 0 {
            let idle = idle_run(transport, &args).await;
            println!(
                "{}: {} idle sessions held ({} streams open), RSS {} -> {} KiB, {:.1} KiB per session",
                transport.name(),
                idle.held,
                idle.streams,
                idle.base_kib,
                idle.idle_kib,
                idle.per_session_kib()
            );
            Some(idle)
        } else {
            None
        };
        results.push((latency, idle));
    }
    let row = |name: &str, cell: &dyn Fn(&LatencyResult) -> String| {
        (
            name.to_owned(),
            results.iter().map(|(l, _)| cell(l)).collect::<Vec<_>>(),
        )
    };
    // The idle figures, "-" without an idle run.
    let idle_row = |name: &str, cell: &dyn Fn(&IdleResult) -> String| {
        (
            name.to_owned(),
            results
                .iter()
                .map(|(_, i)| i.as_ref().map_or("-".to_owned(), cell))
                .collect::<Vec<_>>(),
        )
    };
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let rows = vec![
        row(
            &format!("relay latency p50 at {:.0} msg/s (ms)", args.rate),
            &|l| format!("{:.3}", l.p50_ms),
        ),
        row("relay latency p99 (ms)", &|l| format!("{:.3}", l.p99_ms)),
        row("relay latency max (ms)", &|l| format!("{:.1}", l.max_ms)),
        row("signals sent / received", &|l| {
            format!("{} / {}", l.sent, l.received)
        }),
        row("server CPU during traffic (% of a core)", &|l| {
            format!("{:.0}", l.cpu_percent)
        }),
        row("server CPU per delivered signal (µs)", &|l| {
            format!("{:.0}", l.cpu_us_per_signal)
        }),
        row("HTTP requests per delivered signal", &|l| {
            opt(l.http_per_signal)
        }),
        row("polls per delivered frame (client)", &|l| {
            opt(l.polls_per_frame_client)
        }),
        row("polls per frame (server /metrics)", &|l| {
            opt(l.polls_per_frame_server)
        }),
        idle_row("idle sessions held (streams open)", &|i| {
            format!("{} ({})", i.held, i.streams)
        }),
        idle_row("server RSS empty -> idle (MiB)", &|i| {
            format!(
                "{:.1} -> {:.1}",
                i.base_kib as f64 / 1024.0,
                i.idle_kib as f64 / 1024.0
            )
        }),
        idle_row("RSS per idle session (KiB)", &|i| {
            format!("{:.1}", i.per_session_kib())
        }),
    ];
    println!();
    print!("{}", table(&rows, &args.transports));
    let errors: u64 = results.iter().map(|(l, _)| l.errors).sum();
    if errors > 0 {
        println!("({errors} senders stopped on a failed send)");
    }
}
