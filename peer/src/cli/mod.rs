//! Command-line parsing and the output conventions shared by every subcommand.
//!
//! Human output (default): room notices are lines starting with `* ` followed by a keyword
//! and `key=value` fields (`* joined room=R id=ID`, `* selected-pair peer=ID local=relay
//! remote=relay protocol=udp rtt_ms=0.4 relay=HOST:PORT`, `* ice-restart peer=ID
//! reason=relay-moved`); chat messages are `<name-or-id>: text`.
//! With `--json` every line is one JSON object with an `"event"` field instead.

mod chat;
mod file_transfer;
mod probe;

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use peer::protocol::PeerId;
use peer::{ChannelKind, PeerEvent, PeerEvents, PeerOptions, SelectedPair};

#[derive(Debug, Parser)]
#[command(
    name = "peer",
    version,
    about = "WebRTC data-channel peer: chat, file transfer, connectivity probe"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a room and chat: stdin lines go to every peer, their messages are printed.
    Join {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Send a file to the first peer that connects in the room.
    SendFile {
        url: String,
        path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Receive one file from a peer in the room and verify its SHA-256.
    RecvFile {
        url: String,
        out_path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check connectivity: connect to another peer/probe in the room (or, with --self, two
    /// internal peers to each other, direct and relay-only) and report the selected
    /// candidate pair types and the round-trip time.
    Probe {
        url: String,
        /// Connect two internal peers to each other instead of waiting for another peer.
        #[arg(long = "self")]
        self_test: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Force every connection through TURN (ICE transport policy relay).
    #[arg(long, env = "PEER_RELAY_ONLY")]
    relay_only: bool,
    /// Display name shown to other peers.
    #[arg(long, env = "PEER_NAME")]
    name: Option<String>,
    /// Local IP to bind ICE sockets to (0.0.0.0 = every non-loopback interface).
    #[arg(long, env = "PEER_BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// One JSON object per output line.
    #[arg(long)]
    json: bool,
    /// Extra CA certificates (PEM) to trust for `turns:` relays, besides the system bundle.
    #[arg(long, env = "PEER_TURN_CA", value_name = "PEM")]
    turn_ca: Option<std::path::PathBuf>,
}

impl CommonArgs {
    pub(crate) fn options(&self) -> PeerOptions {
        PeerOptions {
            name: self.name.clone(),
            relay_only: self.relay_only,
            udp_addrs: vec![std::net::SocketAddr::new(self.bind, 0).to_string()],
            turn_ca: self.turn_ca.clone(),
            ..PeerOptions::default()
        }
    }

    pub(crate) fn output(&self) -> Output {
        Output { json: self.json }
    }
}

/// Writes notices in the human or JSON format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    /// A notice: `* event k=v ...` or `{"event":..., k: v}`.
    pub(crate) fn notice(&self, event: &str, fields: &[(&str, String)]) {
        if self.json {
            let mut map = serde_json::Map::new();
            map.insert("event".into(), event.into());
            for (key, value) in fields {
                map.insert((*key).into(), value.clone().into());
            }
            println!("{}", serde_json::Value::Object(map));
        } else {
            let mut line = format!("* {event}");
            for (key, value) in fields {
                line.push(' ');
                line.push_str(key);
                line.push('=');
                if value.is_empty() || value.contains(char::is_whitespace) {
                    line.push_str(&format!("{value:?}"));
                } else {
                    line.push_str(value);
                }
            }
            println!("{line}");
        }
    }

    /// The selected candidate pair line.
    pub(crate) fn selected_pair(&self, peer: &str, pair: &SelectedPair, rtt_ms: Option<f64>) {
        let rtt = rtt_ms
            .or_else(|| pair.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0))
            .map(|ms| format!("{ms:.2}"))
            .unwrap_or_else(|| "unknown".into());
        let mut fields = vec![
            ("peer", peer.to_owned()),
            ("local", pair.local_type.clone()),
            ("remote", pair.remote_type.clone()),
            ("protocol", pair.protocol.clone()),
            ("local_addr", pair.local_address.clone()),
            ("remote_addr", pair.remote_address.clone()),
            ("rtt_ms", rtt),
        ];
        if let Some(relay) = pair.relay_server() {
            fields.push(("relay", relay));
        }
        self.notice("selected-pair", &fields);
    }
}

/// The selected pair, retried briefly: stats can lag an open channel by a moment.
pub(crate) async fn selected_pair_eventually(
    peer: &peer::Peer,
    remote: &PeerId,
) -> Option<SelectedPair> {
    for _ in 0..50 {
        if let Ok(Some(pair)) = peer.selected_pair(remote).await {
            return Some(pair);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Join { url, common } => chat::run(&url, &common).await,
        Command::SendFile { url, path, common } => file_transfer::send(&url, &path, &common).await,
        Command::RecvFile {
            url,
            out_path,
            common,
        } => file_transfer::receive(&url, &out_path, &common).await,
        Command::Probe {
            url,
            self_test,
            timeout,
            common,
        } => {
            probe::run(
                &url,
                self_test,
                std::time::Duration::from_secs(timeout),
                &common,
            )
            .await
        }
    }
}

/// Waits for the first remote peer whose reliable channel opens.
pub(crate) async fn first_open_peer(events: &mut PeerEvents) -> anyhow::Result<PeerId> {
    while let Some(event) = events.recv().await {
        match event {
            PeerEvent::ChannelOpen {
                peer,
                kind: ChannelKind::Reliable,
            } => return Ok(peer),
            PeerEvent::SignalingClosed { message } => bail!("signaling closed: {message}"),
            _ => {}
        }
    }
    bail!("peer closed before any peer connected")
}
