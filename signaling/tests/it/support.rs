//! The test harness: the server on port 0, and a typed WebSocket client.
//!
//! A server runs in this process by default (`signaling::serve` on a runtime of its own, as
//! `main` runs it), so most tests pay no process start. Tests of what only a process has (its
//! PID for RSS or SIGSTOP, kill -9, SIGTERM, `ulimit -n`) start the real binary with
//! [`Server::start_process`].

#![allow(dead_code)] // A toolbox shared by the test modules; not each uses every tool.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use signaling::protocol::{
    ClientMessage, ErrorCode, RequestId, ResumeToken, ServerFrame, ServerMessage, SessionInfo,
};
use testkit::Spawned;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected event.
pub(crate) const STEP: Duration = Duration::from_secs(5);

#[path = "../../../tests/src/redis.rs"]
pub(crate) mod redis;

/// How many nodes `Server::start` runs: 1, or the cluster size from `SIGNALING_IT_NODES`
/// (`scripts/test.sh` runs the suite both ways: the same semantics must hold on one node and
/// on three nodes sharing a Redis).
pub(crate) fn cluster_nodes() -> usize {
    std::env::var("SIGNALING_IT_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// A running server, killed on drop. In a cluster run, also the other nodes and their Redis:
/// [`Server::ws`] hands out the nodes' URLs in turn, so the clients of one test spread over
/// the nodes.
pub(crate) struct Server {
    node: Node,
    pub(crate) addr: SocketAddr,
    others: Vec<Self>,
    redis: Option<redis::RedisServer>,
    next: std::sync::atomic::AtomicUsize,
}

impl Server {
    /// Starts the server (or, in a cluster run, `cluster_nodes()` nodes on a fresh Redis) with
    /// `args`.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(args, Self::in_process)
    }

    /// Like [`Self::start`], with every node the real binary in its own process.
    pub(crate) fn start_process(args: &[&str]) -> Self {
        Self::start_with(args, Self::spawn)
    }

    fn start_with(args: &[&str], node: fn(&[&str]) -> Self) -> Self {
        let nodes = cluster_nodes();
        if nodes <= 1 {
            return node(args);
        }
        let redis = redis::RedisServer::start();
        let url = redis.url();
        let mut with_redis: Vec<&str> = args.to_vec();
        with_redis.extend(["--redis", &url]);
        let mut first = node(&with_redis);
        first.others = (1..nodes).map(|_| node(&with_redis)).collect();
        first.redis = Some(redis);
        first
    }

    /// Runs one node in this process, on a runtime of its own, with `--listen 127.0.0.1:0`
    /// plus `args`.
    pub(crate) fn in_process(args: &[&str]) -> Self {
        let argv = ["signaling", "--listen", "127.0.0.1:0"]
            .into_iter()
            .chain(args.iter().copied());
        let mut config = <signaling::config::Config as clap::Parser>::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (bound, address) = std::sync::mpsc::channel();
        let serving = runtime.spawn({
            let shutdown = shutdown.clone();
            async move {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .expect("bind");
                signaling::agree_turn_secret_if_needed(&mut config)
                    .await
                    .expect("TURN secret");
                let state = signaling::AppState::new(config)
                    .await
                    .expect("server state");
                let _ = bound.send(listener.local_addr().expect("local address"));
                signaling::serve(listener, state, shutdown).await
            }
        });
        let addr = address
            .recv_timeout(Duration::from_secs(20))
            .expect("the in-process server did not start");
        Self {
            node: Node::InProcess {
                runtime: Some(runtime),
                shutdown,
                serving,
            },
            addr,
            others: Vec::new(),
            redis: None,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The address of each node (one, or the cluster's).
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.others.iter().map(|o| o.addr))
            .collect()
    }

    /// The Redis of a cluster run.
    pub(crate) fn redis(&self) -> Option<&redis::RedisServer> {
        self.redis.as_ref()
    }

    /// Starts one node with `--listen 127.0.0.1:0` plus `args`, and waits for its address.
    pub(crate) fn spawn(args: &[&str]) -> Self {
        Self::spawn_command(Command::new(env!("CARGO_BIN_EXE_signaling")), args)
    }

    /// Starts one node on `listen` (for a port another program must know first) plus `args`.
    pub(crate) fn spawn_on(listen: SocketAddr, args: &[&str]) -> Self {
        let listen = listen.to_string();
        let mut with_listen = vec!["--listen", &listen];
        with_listen.extend_from_slice(args);
        Self::spawn_listening(Command::new(env!("CARGO_BIN_EXE_signaling")), &with_listen)
    }

    /// Starts one node whose process may open at most `fds` files (`ulimit -n`).
    pub(crate) fn spawn_with_fd_limit(fds: u32, args: &[&str]) -> Self {
        let mut shell = Command::new("sh");
        // `Spawned` cannot tell the shell runs our binary: no default admin port (as there).
        shell.env("SIGNALING_ADMIN_LISTEN", "127.0.0.1:0");
        shell.args([
            "-c",
            &format!("ulimit -n {fds} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_signaling"),
        ]);
        Self::spawn_command(shell, args)
    }

    fn spawn_command(command: Command, args: &[&str]) -> Self {
        let mut with_listen = vec!["--listen", "127.0.0.1:0"];
        with_listen.extend_from_slice(args);
        Self::spawn_listening(command, &with_listen)
    }

    fn spawn_listening(mut command: Command, args: &[&str]) -> Self {
        command.args(args).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut process = Spawned::spawn(command, false);
        let line = process.wait_line(Duration::from_secs(20), |l| {
            l.starts_with("listening on http")
        });
        let addr = line
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .expect("address");
        Self {
            node: Node::Process(process),
            addr,
            others: Vec::new(),
            redis: None,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Everything the process printed on stdout up to its `web demo:` line (with
    /// `--tls-self-signed`, the certificate's PEM is in it).
    pub(crate) fn startup_output(&mut self) -> String {
        let Node::Process(process) = &mut self.node else {
            panic!("an in-process server prints nothing: use start_process");
        };
        process.wait_seen(Duration::from_secs(20), |l| l.starts_with("web demo:"));
        process.seen.join("\n")
    }

    /// Stops the node at once, as a crash would: SIGKILL for a process; an in-process node's
    /// runtime is dropped with every task and socket on it.
    pub(crate) fn kill(&mut self) {
        match &mut self.node {
            Node::Process(process) => process.kill(),
            Node::InProcess { runtime, .. } => {
                if let Some(runtime) = runtime.take() {
                    runtime.shutdown_background();
                }
            }
        }
    }

    /// The process id (of a node started with [`Self::start_process`]).
    pub(crate) fn pid(&self) -> u32 {
        match &self.node {
            Node::Process(process) => process.pid(),
            Node::InProcess { .. } => panic!("an in-process server has no PID: use start_process"),
        }
    }

    /// `ws://ADDR{path}` of the first node, always.
    pub(crate) fn ws_first(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `ws://ADDR{path}`; in a cluster run, of each node in turn.
    pub(crate) fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.next_addr())
    }

    /// The address of the next node in turn (round-robin, as a balancer without stickiness).
    pub(crate) fn next_addr(&self) -> SocketAddr {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match n % (self.others.len() + 1) {
            0 => self.addr,
            i => self.others[i - 1].addr,
        }
    }

    /// Sends SIGTERM (to every node).
    pub(crate) fn terminate(&self) {
        match &self.node {
            Node::Process(process) => process.terminate(),
            Node::InProcess { shutdown, .. } => shutdown.cancel(),
        }
        for other in &self.others {
            other.terminate();
        }
    }

    /// Waits for the process (every node) to exit, up to `limit`; returns whether it did.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        let exited = match &mut self.node {
            Node::Process(process) => process.try_wait_exit(limit).is_some(),
            Node::InProcess { serving, .. } => {
                testkit::wait_until(limit, || serving.is_finished().then_some(())).is_some()
            }
        };
        if !exited {
            return false;
        }
        let left = limit.saturating_sub(start.elapsed());
        self.others.iter_mut().all(|o| o.wait_exit(left))
    }

    /// The value of one metric series (`name{labels}` as exposed), summed over the nodes.
    pub(crate) async fn metric(&self, series: &str) -> u64 {
        let mut sum = 0;
        for addr in std::iter::once(self.addr).chain(self.others.iter().map(|o| o.addr)) {
            let (_, _, text) = http_get(addr, "/metrics").await;
            sum += text
                .lines()
                .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        sum
    }

    /// How many errors with `code` the nodes counted (`signaling_errors_total{code}`).
    pub(crate) async fn errors(&self, code: ErrorCode) -> u64 {
        self.metric(&format!(
            "signaling_errors_total{{code=\"{}\"}}",
            code.as_str()
        ))
        .await
    }

    /// A plain HTTP GET: (status, content-type, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String, String) {
        http_get(self.addr, path).await
    }
}

/// How a node runs.
enum Node {
    /// The real binary.
    Process(Spawned),
    /// `signaling::serve` on a runtime of its own; SIGTERM is `shutdown`.
    InProcess {
        runtime: Option<tokio::runtime::Runtime>,
        shutdown: tokio_util::sync::CancellationToken,
        serving: tokio::task::JoinHandle<Result<(), signaling::error::Error>>,
    },
}

impl Drop for Node {
    /// An in-process node stops at once, as a killed process would (its sockets close).
    fn drop(&mut self) {
        if let Self::InProcess { runtime, .. } = self
            && let Some(runtime) = runtime.take()
        {
            runtime.shutdown_background();
        }
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A minimal HTTP/1.1 request with `Connection: close`: (status, content-type, body).
pub(crate) use crate::http_client::http_request;

/// A protocol client over a real WebSocket.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The highest `seq` received (what a resume would present).
    pub(crate) last_seq: u64,
}

/// What ended a socket, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    Code(u16),
    NoCode,
}

/// Waits (up to 5 s) until `server`'s metric `series` reads `want`.
pub(crate) async fn metric_becomes(server: &Server, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = server.metric(series).await;
        if value == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {value}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to `within`) until `series` is at least `at_least`.
pub(crate) async fn metric_reaches(server: &Server, series: &str, at_least: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = server.metric(series).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Client {
    pub(crate) async fn connect(url: &str) -> Self {
        Self::try_connect(url, &[]).await.expect("connect")
    }

    /// Connects with extra request headers; the error is the handshake's.
    pub(crate) async fn try_connect(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws, last_seq: 0 })
    }

    /// Connects to a `wss://` URL, trusting what `tls` trusts.
    pub(crate) async fn connect_tls(
        url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await?;
        Ok(Self { ws, last_seq: 0 })
    }

    /// Like [`Self::connect_tls`], over a TCP connection to `addr` whatever the URL's host
    /// resolves to (the host is still the TLS server name).
    pub(crate) async fn connect_tls_via(
        addr: SocketAddr,
        url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, _) =
            tokio_tungstenite::client_async_tls_with_config(url, tcp, None, Some(connector))
                .await?;
        Ok(Self { ws, last_seq: 0 })
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        let text = serde_json::to_string(message).expect("encode");
        self.send_raw(Message::text(text)).await;
    }

    pub(crate) async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// [`Self::send`] that may fail: `false` when the socket is gone (the server dropped it).
    pub(crate) async fn try_send(&mut self, message: &ClientMessage) -> bool {
        let text = serde_json::to_string(message).expect("encode");
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// The next server frame within `limit`, or `None`. Panics on a close or a non-frame.
    pub(crate) async fn recv_within(&mut self, limit: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("bad server frame {text}: {e}"));
                    if frame.seq != 0 {
                        assert!(
                            frame.seq > self.last_seq,
                            "seq went from {} to {}",
                            self.last_seq,
                            frame.seq
                        );
                        self.last_seq = frame.seq;
                    }
                    return Some(frame);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next server frame (within [`STEP`]).
    pub(crate) async fn recv(&mut self) -> ServerFrame {
        self.recv_within(STEP)
            .await
            .expect("a server frame in time")
    }

    /// The next server message.
    pub(crate) async fn recv_message(&mut self) -> ServerMessage {
        self.recv().await.message
    }

    /// Waits until the server has handled everything this client sent before (one socket's
    /// requests are served in order: the pong comes after them). Nothing else may arrive.
    pub(crate) async fn sync(&mut self) {
        self.ping(4242).await;
    }

    /// Sends the ping `id`; the next message must be its pong.
    pub(crate) async fn ping(&mut self, id: RequestId) {
        self.send(&ClientMessage::Ping { id: Some(id) }).await;
        match self.recv_message().await {
            ServerMessage::Pong { reference, .. } if reference == Some(id) => {}
            other => panic!("expected the pong to ping {id}, got {other:?}"),
        }
    }

    /// Asserts that nothing but pings arrives within `limit`.
    pub(crate) async fn expect_silence(&mut self, limit: Duration) {
        if let Some(frame) = self.recv_within(limit).await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Expects an error with `code`; returns the frame.
    pub(crate) async fn expect_error(&mut self, code: ErrorCode) -> ServerFrame {
        let frame = self.recv().await;
        match &frame.message {
            ServerMessage::Error { code: got, .. } if *got == code => frame,
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// Reads until the socket closes; returns the close code. Any frame before it fails.
    pub(crate) async fn expect_close(&mut self) -> Closed {
        self.read_to_close(false).await
    }

    /// Reads past whatever frames are still queued until the socket closes (within [`STEP`]);
    /// returns the close code.
    pub(crate) async fn close_after_frames(&mut self) -> Closed {
        self.read_to_close(true).await
    }

    async fn read_to_close(&mut self, past_frames: bool) -> Closed {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("socket closed in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed::Code(u16::from(frame.code));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoCode,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(_)) if past_frames => {}
                Some(Ok(other)) => panic!("expected a close, got {other:?}"),
            }
        }
    }

    /// The frames that arrive within `limit`, and how the socket closed if it did meanwhile.
    pub(crate) async fn frames_for(
        &mut self,
        limit: Duration,
    ) -> (Vec<ServerFrame>, Option<Closed>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return (frames, None);
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(&text).expect("server frame"));
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frames, Some(Closed::Code(u16::from(frame.code))));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (frames, Some(Closed::NoCode));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The error frames the server sends before it closes the socket (within [`STEP`]), and how
    /// it closed.
    pub(crate) async fn errors_then_close(&mut self) -> (Vec<ServerFrame>, Closed) {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut errors = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("socket closed in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame = serde_json::from_str(&text).expect("server frame");
                    assert_eq!(frame.seq, 0, "only errors before the close: {text}");
                    errors.push(frame);
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (errors, Closed::Code(u16::from(frame.code)));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (errors, Closed::NoCode);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// [`Self::errors_then_close`], expecting one error there, with `code`: how it closed.
    pub(crate) async fn one_error_then_close(&mut self, code: ErrorCode) -> Closed {
        let (errors, closed) = self.errors_then_close().await;
        assert!(
            matches!(
                errors.as_slice(),
                [ServerFrame {
                    message: ServerMessage::Error { code: got, .. },
                    ..
                }] if *got == code
            ),
            "expected one {code:?} error before the close, got {errors:?}"
        );
        closed
    }

    /// Closes the socket politely (a close frame, then waits for the server's).
    pub(crate) async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }

    /// A joins at `a_url`, then B at `b_url` (the same room, possibly through another node);
    /// A has read B's `peer_joined`.
    pub(crate) async fn pair(
        a_url: &str,
        b_url: &str,
    ) -> ((Self, SessionInfo), (Self, SessionInfo)) {
        let (mut a, a_info) = Self::join(a_url, None).await;
        let (b, b_info) = Self::join(b_url, None).await;
        match a.recv_message().await {
            ServerMessage::PeerJoined { peer, .. } if peer.id == b_info.peer_id => {}
            other => panic!("expected B's peer_joined, got {other:?}"),
        }
        ((a, a_info), (b, b_info))
    }

    /// Sends `join` for `room` (request id 1) and expects `welcome`.
    pub(crate) async fn join(url: &str, room: Option<&str>) -> (Self, SessionInfo) {
        let mut client = Self::connect(url).await;
        client
            .send(&ClientMessage::Join {
                id: Some(1),
                versions: vec![1],
                room: room.map(Into::into),
                name: None,
                token: None,
            })
            .await;
        let info = client.expect_welcome().await;
        (client, info)
    }

    /// Expects `welcome`; returns its session info.
    pub(crate) async fn expect_welcome(&mut self) -> SessionInfo {
        match self.recv().await {
            ServerFrame {
                seq: 1,
                message: ServerMessage::Welcome { session, .. },
            } => session,
            other => panic!("expected welcome with seq 1, got {other:?}"),
        }
    }
}

/// A `resume` message (request id 77) of the session `token` that processed frames up to
/// `last_seq`.
pub(crate) fn resume_message(token: &ResumeToken, last_seq: u64) -> ClientMessage {
    ClientMessage::Resume {
        id: Some(77),
        versions: vec![1],
        resume_token: token.clone(),
        last_seq,
    }
}

/// A `join` message for `room`.
pub(crate) fn join_message(room: &str) -> ClientMessage {
    ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: Some(room.into()),
        name: None,
        token: None,
    }
}
