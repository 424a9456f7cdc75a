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

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use peer::protocol::PeerId;
use peer::{ChannelKind, Peer, PeerError, PeerEvent, PeerEvents, PeerOptions, SelectedPair};

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
    ///
    /// Runs until Ctrl-C or until stdin closes: then the lines read so far are sent (to the
    /// first peer that connects, if none is connected yet) and the room is left. When the
    /// server ends the session for good (an operator's `kicked` or `room_closed`, or no resume
    /// or join possible for five minutes) it prints `* signaling-closed reason=...` and exits with
    /// status 1. It exits with status 1 too, printing `error: ...`, when it cannot join: the
    /// server is unreachable, refuses, or (wss://) has a certificate not trusted (see --ca).
    Join {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Send a file to the first peer that connects in the room.
    SendFile {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        /// The file to send; the receiver sees its file name, size and SHA-256.
        path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Receive one file from a peer in the room and verify its SHA-256.
    RecvFile {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        /// Where to write the received file (overwritten if it exists).
        out_path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check connectivity: connect to another peer/probe in the room (or, with --self, two
    /// internal peers to each other, direct and relay-only) and report the selected
    /// candidate pair types and the round-trip time.
    Probe {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        /// Connect two internal peers to each other instead of waiting for another peer.
        #[arg(long = "self")]
        self_test: bool,
        /// Give up after this long (`20s`, `1500ms`, `2m`; a plain number is seconds).
        #[arg(long, default_value = "20s", value_parser = startup::duration::parse)]
        timeout: std::time::Duration,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Force every connection through TURN (ICE transport policy relay).
    #[arg(long, env = "PEER_RELAY_ONLY")]
    relay_only: bool,
    /// Display name shown to other peers [default: this machine's host name].
    #[arg(long, env = "PEER_NAME")]
    name: Option<String>,
    /// Local IP to bind ICE sockets to (0.0.0.0 = every non-loopback interface).
    #[arg(long, env = "PEER_BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// One JSON object per output line.
    #[arg(long)]
    json: bool,
    /// Trust this PEM CA bundle too, besides the system one, for wss:// signaling and turns:
    /// relays (e.g. the certificate `signaling --tls-self-signed` prints).
    #[arg(long, env = "PEER_CA", value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// Trust this PEM CA bundle too, for turns: relays only (on top of --ca).
    #[arg(long, env = "PEER_TURN_CA", value_name = "PEM")]
    turn_ca: Option<std::path::PathBuf>,
}

impl CommonArgs {
    pub(crate) fn options(&self) -> PeerOptions {
        PeerOptions {
            name: self.name.clone().or_else(default_name),
            relay_only: self.relay_only,
            udp_addrs: vec![std::net::SocketAddr::new(self.bind, 0).to_string()],
            ca: self.ca.clone(),
            turn_ca: self.turn_ca.clone(),
            ..PeerOptions::default()
        }
    }

    pub(crate) fn output(&self) -> Output {
        Output { json: self.json }
    }
}

/// The name other peers see when `--name` is not given: this machine's host name.
fn default_name() -> Option<String> {
    let from_file = |path: &str| std::fs::read_to_string(path).ok();
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| Some("peer".to_owned()))
}

/// Hides the WebRTC stack's `ERROR TURN permission request failed: ... 403` lines: a relay
/// refusing to relay to some of a peer's candidate addresses (private or loopback ones, by
/// its policy) is expected, and the connection uses another pair. Shown with `PEER_LOG` set.
pub(crate) struct ExpectedRefusals;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExpectedRefusals {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        // Not filtered by target: events of the `log` crate (the WebRTC stack's) all carry
        // the target `log` here.
        let mut message = Message(String::new());
        event.record(&mut message);
        !is_expected_refusal(&message.0)
    }
}

/// Whether a log line of the WebRTC stack is a relay's refusal of a permission (403).
fn is_expected_refusal(message: &str) -> bool {
    message.contains("TURN permission request failed") && message.contains("403")
}

/// An error and its causes on one line, each message once: a cause whose text its wrapper
/// already quotes (`signaling connection failed: IO error: X` caused by `IO error: X`
/// caused by `X`) is not repeated.
pub(crate) fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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
pub(crate) async fn selected_pair_eventually(peer: &Peer, remote: &PeerId) -> Option<SelectedPair> {
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
        } => probe::run(&url, self_test, timeout, &common).await,
    }
}

/// Joins the room of `url` with the options of `common` and prints the `joined` notice (room
/// and own id): how every subcommand with one peer starts.
pub(crate) async fn join(url: &str, common: &CommonArgs) -> anyhow::Result<(Peer, PeerEvents)> {
    let (peer, events) = connect(url, common.options()).await?;
    common.output().notice(
        "joined",
        &[
            ("room", peer.room().to_string()),
            ("id", peer.id().to_string()),
        ],
    );
    Ok((peer, events))
}

/// [`Peer::connect`], with the way out of an untrusted certificate in its error.
pub(crate) async fn connect(url: &str, options: PeerOptions) -> anyhow::Result<(Peer, PeerEvents)> {
    Peer::connect(url, options).await.map_err(with_hint)
}

/// An SDK error for the user, with the flag that fixes it where there is one.
fn with_hint(err: PeerError) -> anyhow::Error {
    match err {
        PeerError::UntrustedCertificate { .. } => {
            anyhow!("{err} (pass --ca FILE with the PEM certificate of its CA to trust it)")
        }
        err => err.into(),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_argument_of_every_subcommand_is_described() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_id() == "help" {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|help| !help.to_string().is_empty()),
                    "`peer {} --help` does not describe <{}>",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn a_cause_quoted_by_its_wrapper_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let err = PeerError::from(tokio_tungstenite::tungstenite::Error::Io(io));
        let line = error_chain(&anyhow::Error::from(err));
        assert_eq!(
            line,
            "signaling connection failed: IO error: Connection refused"
        );
        let err = anyhow::anyhow!("disk full").context("write out.bin");
        assert_eq!(error_chain(&err), "write out.bin: disk full");
    }

    #[test]
    fn an_untrusted_certificate_names_the_cause_and_the_flag() {
        use tokio_rustls::rustls;
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let err = PeerError::from(tokio_tungstenite::tungstenite::Error::Io(handshake));
        assert!(
            matches!(err, PeerError::UntrustedCertificate { .. }),
            "{err}"
        );
        assert_eq!(
            error_chain(&with_hint(err)),
            "signaling server certificate not trusted: invalid peer certificate: UnknownIssuer \
             (pass --ca FILE with the PEM certificate of its CA to trust it)"
        );
        // Any other TLS failure stays a connection failure, without the hint.
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::HandshakeNotComplete,
        );
        let err = PeerError::from(tokio_tungstenite::tungstenite::Error::Io(other));
        assert!(matches!(err, PeerError::SignalingConnect(_)), "{err}");
        assert!(!error_chain(&with_hint(err)).contains("--ca"));
    }

    #[test]
    fn a_relay_refusing_a_permission_is_not_an_error() {
        assert!(is_expected_refusal(
            "TURN permission request failed: CreatePermission error response (error 403: Forbidden)"
        ));
        assert!(!is_expected_refusal(
            "TURN allocation failed from 127.0.0.1:1 to 127.0.0.1:3478: error 401"
        ));
    }

    #[test]
    fn without_a_name_the_host_name_is_used() {
        let name = default_name().expect("a default name");
        assert!(!name.trim().is_empty());
        assert_eq!(name, name.trim());
    }
}
