//! What the signaling benchmarks share: the server process, its limits and readings, the WebSocket
//! client (configuration, connect, join), and the signal mix with its embedded send timestamp.

#![allow(dead_code)] // Each benchmark uses its own share.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{Sink, SinkExt as _, StreamExt as _};
use signaling::protocol::{
    ClientMessage, IceCandidate, ServerFrame, ServerMessage, SessionInfo, Signal,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A benchmark client's WebSocket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A duration flag's value: seconds, fractions allowed (`--duration 2.5`).
pub(crate) fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{value:?} is not a number of seconds"))
}

/// Parses the benchmark's flags, leaving out `--bench`, which `cargo bench` passes.
pub(crate) fn parse_args<A: clap::Parser>() -> A {
    A::parse_from(std::env::args().filter(|a| a != "--bench"))
}

pub(crate) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Spawns the signaling server of `command` (logging at `warn`, stderr inherited) and reads its
/// stdout up to `listening on http://HOST:PORT`: the child and that `HOST:PORT`. The rest of its
/// stdout is drained on a thread.
pub(crate) fn spawn_server(mut command: Command) -> (Child, String) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the signaling server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before printing its address")
            .expect("read stdout");
        if let Some(addr) = line.strip_prefix("listening on http://") {
            break addr.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

pub(crate) fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Sends `message` as one text frame; false once the socket is gone.
pub(crate) async fn send(ws: &mut (impl Sink<Message> + Unpin), message: &ClientMessage) -> bool {
    let text = serde_json::to_string(message).expect("encode");
    ws.send(Message::text(text)).await.is_ok()
}

/// Opens a WebSocket to `url` with [`client_config`] and TCP_NODELAY, like browsers.
pub(crate) async fn connect(url: &str) -> Result<Ws, String> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        url,
        Some(client_config()),
        true, // TCP_NODELAY, like browsers
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Connects to `url` (`ws://HOST:PORT/ws/ROOM`), joins that room and acks the welcome: the
/// socket and its session.
pub(crate) async fn join(url: &str) -> Result<(Ws, SessionInfo), String> {
    let mut ws = connect(url).await?;
    let join = ClientMessage::Join {
        id: Some(1),
        versions: vec![1],
        room: None,
        name: None,
        token: None,
    };
    if !send(&mut ws, &join).await {
        return Err("send join".into());
    }
    for _ in 0..16 {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: ServerFrame = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                return match frame.message {
                    ServerMessage::Welcome { session, .. } => {
                        send(&mut ws, &ClientMessage::Ack { seq: frame.seq }).await;
                        Ok((ws, session))
                    }
                    other => Err(format!("expected welcome, got {other:?}")),
                };
            }
            Some(Ok(_)) => {}
            other => return Err(format!("socket ended: {other:?}")),
        }
    }
    Err("no welcome".into())
}

pub(crate) fn timestamp_of(signal: &Signal) -> Option<u64> {
    let text = match signal {
        Signal::Offer { sdp, .. } | Signal::Answer { sdp } => sdp.as_str(),
        Signal::Candidate { candidate } => candidate.candidate.as_str(),
        Signal::EndOfCandidates { .. } => return None,
    };
    text.rsplit_once(" t=")?.1.trim().parse().ok()
}

/// A realistic mix: per 10 messages, one offer and one answer (~2 KB of SDP) and 8 candidates.
pub(crate) fn make_signal(n: u64, stamp: u64) -> Signal {
    let sdp = || {
        format!(
            "v=0\r\n{}\r\n t={stamp}",
            "a=fingerprint:sha-256 AB:CD ".repeat(70)
        )
    };
    match n % 10 {
        0 => Signal::Offer {
            sdp: sdp(),
            ice_restart: false,
        },
        1 => Signal::Answer { sdp: sdp() },
        _ => Signal::Candidate {
            candidate: IceCandidate {
                candidate: format!(
                    "candidate:{n} 1 udp 2122260223 192.0.2.{} {} typ host t={stamp}",
                    n % 250,
                    40000 + n % 20000
                ),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: Some("bench".into()),
            },
        },
    }
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1e6
}
