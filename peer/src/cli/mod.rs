//! Command-line parsing and the output conventions shared by every subcommand.
//!
//! Human output (default): room notices are lines starting with `* ` followed by a keyword
//! and `key=value` fields (`* joined room=R id=ID`, `* selected-pair peer=ID local=relay
//! remote=relay protocol=udp rtt_ms=0.4 relay=HOST:PORT`, `* ice-restart peer=ID
//! reason=relay-moved`); chat messages are `<name-or-id>: text`, one line each, with control
//! and invisible formatting characters escaped ([`escape`]) so that what a remote peer sends
//! can neither pass for a notice nor drive the terminal. `error:` and `warning:` lines and logs
//! go to stderr. With `--json` every stdout line is one JSON object with an `"event"` field
//! instead, text as sent.
//!
//! Every subcommand stops on SIGINT or SIGTERM ([`Stop`]): it leaves the room, so the others
//! see it go at once, and exits with 130 or 143 (`join` exits 0 on SIGINT, Ctrl-C being how a
//! chat ends).

mod chat;
mod file_transfer;
mod outbox;
mod probe;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{ArgAction, Args, Parser, Subcommand};
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

    /// Which logs to write on stderr: `info`, `warn,peer=debug`, ... (`RUST_LOG` syntax).
    /// Unset: warnings, without the WebRTC stack's errors about TURN permissions a relay
    /// refuses by its policy (expected: the connection uses another pair).
    #[arg(long, global = true, env = "RUST_LOG", value_parser = startup::logging::parse_filter)]
    pub(crate) log_filter: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a room and chat: stdin lines go to every connected peer; theirs are printed.
    ///
    /// Each stdin line is one message of at most 65536 bytes (a longer line is not sent, with a
    /// `warning:`); invalid UTF-8 is sent with U+FFFD in its place, with a `warning:`. Lines
    /// read while no peer is connected (none joined yet, or every connection is down) are kept
    /// and sent to the next peer that connects (up to 1024: then stdin waits for a peer).
    /// Text output shows each message on one line
    /// as `NAME: TEXT`, control characters escaped (`\n`, `\x1b`, `\u{202e}`); use --json
    /// for the exact text. Binary messages show as `* binary-message`. Stdout carries chat
    /// lines and `* ` notices; stderr `error:` and `warning:` lines and logs.
    ///
    /// When the signaling connection drops it prints `* signaling-reconnecting attempt=N
    /// delay_ms=D` before each attempt, then `* signaling-resumed replayed=N resent=N` (the
    /// session went on; the data channels are not touched) or, when the server no longer holds
    /// the session, `* signaling-rejoined id=NEW reason=CODE` (a new peer id; CODE is the
    /// server's error: `resume_failed`, `replay_overflow` or `slow_consumer`; a peer it was
    /// connected to that does the same shows as `* peer-renamed old=ID new=ID`). A connection
    /// that restarts ICE prints `* ice-restart peer=ID reason=R`: `failed`, `relay-moved` (the
    /// room's relay changed) or `fresh-credentials` (new TURN credentials for a relayed path).
    ///
    /// Leaves the room on Ctrl-C (exit 0) or SIGTERM (exit 143), waiting for the peers to read
    /// what was sent (a second signal leaves at once), or when stdin closes: then the lines
    /// read so far are sent first (to the next peer that connects, if none is in the room),
    /// and acknowledged by each peer (30 s at most, then a warning). When the server ends the session for good (an operator's `kicked` or
    /// `room_closed`, or no resume or join possible for five minutes) it prints
    /// `* signaling-closed reason=...` and exits with status 1. It exits with status 1 too,
    /// printing `error: ...`, when it cannot join: the server is unreachable, refuses for good
    /// (a refusal for now, such as `draining` or `unavailable`, is tried again for up to five
    /// minutes, with a warning each time), or (wss://) has a certificate not trusted (see --ca).
    Join {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Send a file to the first peer that connects in the room (run `peer recv-file` there).
    ///
    /// A `peer join` peer that connects first declines the file: send-file then fails.
    /// SIGINT or SIGTERM leave the room and exit with 130 or 143.
    SendFile {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        /// The file to send; the receiver sees its file name, size and SHA-256.
        path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Receive one file from a peer in the room and verify its SHA-256.
    ///
    /// The file is written beside the output path and put in place once it has all arrived with
    /// the right SHA-256: a transfer that does not complete (the sender left, SIGINT or
    /// SIGTERM, an error) or a wrong file leaves the output path as it was. SIGINT or SIGTERM
    /// exit with 130 or 143.
    RecvFile {
        /// Signaling URL naming the room, e.g. ws://127.0.0.1:8080/ws/demo
        url: String,
        /// Where to write the received file (its content replaced once it has all arrived and
        /// checked out).
        out_path: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check connectivity: connect to another peer/probe in the room (or, with --self, two
    /// internal peers to each other, direct and relay-only) and report the selected
    /// candidate pair types and the round-trip time. SIGINT or SIGTERM exit with 130 or 143.
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
    /// Force every connection through TURN (ICE transport policy relay). The environment
    /// variable takes 1/0, true/false, yes/no, on/off.
    #[arg(
        long,
        env = "PEER_RELAY_ONLY",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
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

/// Hides the WebRTC stack's error lines about what is expected (shown with `--log-filter`
/// set): see [`is_expected_error`].
pub(crate) struct ExpectedErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExpectedErrors {
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
        !is_expected_error(&message.0)
    }
}

/// Whether an error line of the WebRTC stack is about what is expected:
/// - `TURN permission request failed: ... 403`: a relay refusing to relay to some of a peer's
///   candidate addresses (private or loopback ones, by its policy); the connection uses
///   another pair;
/// - `handle_inbound got err: abort chunk`: the peer closing its connection (it aborts its
///   SCTP association), as every peer does when it leaves.
fn is_expected_error(message: &str) -> bool {
    (message.contains("TURN permission request failed") && message.contains("403"))
        || message.contains("abort chunk")
}

/// Prints `line` on stdout. A closed stdout (`peer join | head`) ends the process quietly, as
/// it ends other tools, with 141 (the shell's code for SIGPIPE), instead of a panic.
pub(crate) fn print_line(line: &str) {
    use std::io::Write as _;
    if let Err(err) = writeln!(std::io::stdout().lock(), "{line}")
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(141);
    }
}

/// `text` for a terminal line: control characters (C0, DEL, C1) and invisible formatting
/// characters (bidirectional overrides, zero-width spaces, line separators: the ones a
/// display name may not contain, [`is_invisible_format`](peer::protocol::is_invisible_format))
/// escaped as `\n`, `\r`, `\t`, `\x1b` or `\u{202e}`. The result is one line that cannot move
/// the cursor, change the terminal's state or reorder what follows it. Backslashes stay as
/// they are: the exact text is what `--json` is for.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut line = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if needs_escape(c) && c.is_ascii() => {
                let _ = write!(line, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    Cow::Owned(line)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || peer::protocol::is_invisible_format(c)
}

/// A notice field's value in the text format: [`escape`]d, and quoted when it is empty or
/// holds whitespace or a quote (so that it stays one `key=value` field).
fn field_value(value: &str) -> Cow<'_, str> {
    let escaped = escape(value);
    if escaped.is_empty() || escaped.contains(|c: char| c.is_whitespace() || c == '"') {
        Cow::Owned(format!("\"{}\"", escaped.replace('"', "\\\"")))
    } else {
        escaped
    }
}

/// Why a subcommand stopped early: SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Interrupted {
    /// SIGINT (Ctrl-C).
    #[error("interrupted (SIGINT)")]
    Int,
    /// SIGTERM.
    #[error("terminated (SIGTERM)")]
    Term,
}

impl Interrupted {
    /// The shell's status for a process ended by the signal: 128 + its number.
    pub(crate) fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Self::Int => 130,
            Self::Term => 143,
        })
    }
}

/// SIGINT and SIGTERM, caught for the whole run of a subcommand: it races its work against
/// them ([`Stop::guard`]), and leaves the room ([`Stop::leave`]) whether the work completed or
/// not, so the other peers see it go at once rather than after the server's resume grace.
pub(crate) struct Stop {
    signals: startup::signals::ShutdownSignals,
}

impl Stop {
    /// Catches SIGINT and SIGTERM from now on.
    pub(crate) fn install() -> anyhow::Result<Self> {
        let signals = startup::signals::ShutdownSignals::install()
            .map_err(|err| anyhow!("cannot catch SIGINT and SIGTERM: {err}"))?;
        Ok(Self { signals })
    }

    /// `work`'s output, or the signal that came first (`work` is dropped then).
    pub(crate) async fn guard<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        tokio::select! {
            output = work => Ok(output),
            signal = self.signals.recv() => Err(match signal {
                "SIGINT" => Interrupted::Int,
                _ => Interrupted::Term,
            }),
        }
    }

    /// Leaves the room and closes every connection as `how` says. A signal meanwhile cuts
    /// that short: the peer leaves at once ([`Peer::close_at_once`]); one more, and it
    /// returns without waiting for that. The peers that did not close their side in time
    /// ([`Peer::close`]).
    pub(crate) async fn leave(&mut self, peer: Peer, how: Leave) -> Vec<PeerId> {
        let closed = match how {
            Leave::Gracefully => self.guard(peer.close()).await,
            Leave::AtOnce => self.guard(peer.close_at_once()).await,
        };
        match closed {
            Ok(unconfirmed) => unconfirmed,
            Err(_) => self.guard(peer.close_at_once()).await.unwrap_or_default(),
        }
    }

    /// Joins the room of `url` and runs `session` with the peer and its events, then leaves
    /// the room whether the session completed or not: the session's output, or the signal that
    /// came first (an error when it came while joining). `join_within` bounds the join (the SDK
    /// tries a join refused for now again for up to five minutes).
    pub(crate) async fn in_room<T>(
        &mut self,
        url: &str,
        common: &CommonArgs,
        how: Leave,
        join_within: Option<std::time::Duration>,
        session: impl AsyncFnOnce(&Peer, &mut PeerEvents) -> T,
    ) -> anyhow::Result<Result<T, Interrupted>> {
        let joining = async {
            match join_within {
                Some(limit) => tokio::time::timeout(limit, join(url, common))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("not joined within {limit:?}"))),
                None => join(url, common).await,
            }
        };
        let (peer, mut events) = self.guard(joining).await??;
        let outcome = self.guard(session(&peer, &mut events)).await;
        discarding_events(self.leave(peer, how), &mut events).await;
        Ok(outcome)
    }
}

/// `leaving`'s output; meanwhile the peer's events are read and dropped: the room waits for
/// room in their queue to hand on an event, and would not hear a second signal's
/// [`Peer::close_at_once`] while a full queue held it up.
pub(crate) async fn discarding_events<T>(
    leaving: impl Future<Output = T>,
    events: &mut PeerEvents,
) -> T {
    tokio::pin!(leaving);
    loop {
        tokio::select! {
            left = &mut leaving => return left,
            Some(_) = events.recv() => {}
        }
    }
}

/// How a command leaves the room at its end.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leave {
    /// [`Peer::close`]: the peers read what was sent to them first.
    Gracefully,
    /// [`Peer::close_at_once`]: the peers confirmed what they needed (a file's receiver its
    /// checksum, a probe's peer its pongs).
    AtOnce,
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
        let fields: Vec<(&str, serde_json::Value)> = fields
            .iter()
            .map(|(key, value)| (*key, value.as_str().into()))
            .collect();
        self.notice_values(event, &fields);
    }

    /// A notice about peer `id` and one thing of it: `* event peer=ID key=VALUE`.
    pub(crate) fn peer_notice(
        &self,
        event: &str,
        id: &PeerId,
        key: &str,
        value: impl std::fmt::Display,
    ) {
        self.notice(event, &[("peer", id.to_string()), (key, value.to_string())]);
    }

    /// A notice with typed values: numbers stay numbers in JSON; `null` is `unknown` in text.
    pub(crate) fn notice_values(&self, event: &str, fields: &[(&str, serde_json::Value)]) {
        print_line(&self.notice_line(event, fields));
    }

    fn notice_line(&self, event: &str, fields: &[(&str, serde_json::Value)]) -> String {
        if self.json {
            let mut map = serde_json::Map::new();
            map.insert("event".into(), event.into());
            for (key, value) in fields {
                map.insert((*key).into(), value.clone());
            }
            return serde_json::Value::Object(map).to_string();
        }
        let mut line = format!("* {event}");
        for (key, value) in fields {
            let _ = match value {
                serde_json::Value::String(text) => write!(line, " {key}={}", field_value(text)),
                serde_json::Value::Null => write!(line, " {key}=unknown"),
                other => write!(line, " {key}={}", field_value(&other.to_string())),
            };
        }
        line
    }

    /// The selected candidate pair line; `rtt_ms` a number (two decimals) or unknown.
    pub(crate) fn selected_pair(&self, peer: &str, pair: &SelectedPair, rtt_ms: Option<f64>) {
        let rtt = rtt_ms.or_else(|| pair.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0));
        let mut fields: Vec<(&str, serde_json::Value)> = vec![
            ("peer", peer.into()),
            ("local", pair.local_type.as_str().into()),
            ("remote", pair.remote_type.as_str().into()),
            ("protocol", pair.protocol.as_str().into()),
            ("local_addr", pair.local_address.as_str().into()),
            ("remote_addr", pair.remote_address.as_str().into()),
            ("rtt_ms", rtt_value(rtt)),
        ];
        if let Some(relay) = pair.relay_server() {
            fields.push(("relay", relay.into()));
        }
        self.notice_values("selected-pair", &fields);
    }
}

/// A round-trip time in milliseconds for a notice: a number rounded to two decimals, or `null`
/// (`unknown`) when not measured.
pub(crate) fn rtt_value(rtt_ms: Option<f64>) -> serde_json::Value {
    rtt_ms
        .map(|ms| (ms * 100.0).round() / 100.0)
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The selected pair, retried briefly (stats can lag an open channel by a moment), for at most
/// [`PAIR_LOOK`] in all. Each question is bounded too: the room answers between the events it
/// hands on, and with its event queue full it waits for the caller's loop to read one, which
/// cannot happen while that loop waits here.
pub(crate) async fn selected_pair_eventually(peer: &Peer, remote: &PeerId) -> Option<SelectedPair> {
    let until = tokio::time::Instant::now() + PAIR_LOOK;
    loop {
        let answer = tokio::time::timeout_at(until, peer.selected_pair(remote)).await;
        if let Ok(Ok(Some(pair))) = answer {
            return Some(pair);
        }
        let next = tokio::time::Instant::now() + PAIR_RETRY;
        if next >= until {
            return None;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// How long [`selected_pair_eventually`] looks for a pair.
const PAIR_LOOK: std::time::Duration = std::time::Duration::from_millis(2500);
/// How often it asks again.
const PAIR_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut stop = Stop::install()?;
    let stop = &mut stop;
    let result = match cli.command {
        Command::Join { url, common } => chat::run(&url, &common, stop).await,
        Command::SendFile { url, path, common } => {
            file_transfer::send(&url, &path, &common, stop).await
        }
        Command::RecvFile {
            url,
            out_path,
            common,
        } => file_transfer::receive(&url, &out_path, &common, stop).await,
        Command::Probe {
            url,
            self_test,
            timeout,
            common,
        } => probe::run(&url, self_test, timeout, &common, stop).await,
    };
    match result {
        Err(err) => match err.downcast_ref::<Interrupted>() {
            Some(signal) => Ok(signal.exit_code()),
            None => Err(err),
        },
        ok => ok,
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
    use peer::protocol::ErrorCode;
    use tokio_rustls::rustls::{CertificateError, OtherError};
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match &err {
        // webpki refuses a server certificate marked as a CA (basicConstraints CA:TRUE, as
        // `openssl req -x509` makes by default), even when it is the one given with --ca.
        PeerError::UntrustedCertificate {
            source:
                tokio_rustls::rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))),
        } if e.to_string().contains("CaUsedAsEndEntity") => anyhow!(
            "{err} (the server's certificate is a CA certificate: a server certificate must \
             have basicConstraints CA:FALSE; with openssl add \
             -addext basicConstraints=critical,CA:FALSE)"
        ),
        PeerError::UntrustedCertificate { .. } => {
            anyhow!("{err} (pass --ca FILE with the PEM certificate of its CA to trust it)")
        }
        PeerError::SignalingConnect(e) => match &**e {
            WsError::Protocol(ProtocolError::HandshakeIncomplete) => {
                anyhow!("{err} (no HTTP answer: is this the signaling server's address and port?)")
            }
            _ => err.into(),
        },
        PeerError::NotTls { .. } => {
            anyhow!("{err} (the server does not speak TLS there: use ws://)")
        }
        PeerError::Signaling {
            code: ErrorCode::InvalidRoomId,
            ..
        } => anyhow!("{err} (the peer CLI takes the room from the URL: ws://HOST:PORT/ws/ROOM)"),
        _ => err.into(),
    }
}

/// Waits for the first remote peer whose reliable channel opens. A TURN server that gives no
/// allocation when a connection fails ends the wait, saying why (the connection would only
/// retry the same server).
pub(crate) async fn first_open_peer(events: &mut PeerEvents) -> anyhow::Result<PeerId> {
    while let Some(event) = events.recv().await {
        match event {
            PeerEvent::ChannelOpen {
                peer,
                kind: ChannelKind::Reliable,
            } => return Ok(peer),
            PeerEvent::TurnUnusable { url, reason, .. } => {
                bail!("connection failed; TURN {url}: {reason}")
            }
            PeerEvent::SignalingClosed { message, .. } => bail!("signaling closed: {message}"),
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
    fn a_page_url_is_said_not_to_be_a_signaling_url() {
        use tokio_tungstenite::tungstenite;
        let page = tungstenite::http::Response::builder()
            .status(200)
            .body(None)
            .unwrap();
        let err = PeerError::from(tungstenite::Error::Http(Box::new(page)));
        assert!(
            matches!(err, PeerError::NotSignaling { status: 200 }),
            "{err}"
        );
        assert!(
            error_chain(&with_hint(err))
                .ends_with("(not a signaling URL: use ws://HOST:PORT/ws/ROOM, or wss://)")
        );
        // A refusal of the upgrade (a full server) is not a wrong URL.
        let busy = tungstenite::http::Response::builder()
            .status(503)
            .body(None)
            .unwrap();
        let err = PeerError::from(tungstenite::Error::Http(Box::new(busy)));
        assert!(!error_chain(&with_hint(err)).contains("not a signaling URL"));
    }

    #[test]
    fn refusals_and_wrong_ports_say_what_the_server_said_or_what_to_check() {
        use tokio_tungstenite::tungstenite;
        // A refused upgrade carries an `error` frame: its code and message are the error.
        let refused = tungstenite::http::Response::builder()
            .status(401)
            .body(Some(
                br#"{"seq":0,"type":"error","code":"unauthorized","message":"invalid token"}"#
                    .to_vec(),
            ))
            .unwrap();
        let err = PeerError::from(tungstenite::Error::Http(Box::new(refused)));
        assert_eq!(
            error_chain(&with_hint(err)),
            "signaling server error unauthorized: invalid token"
        );
        // wss:// to a plain-text server.
        let not_tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tokio_rustls::rustls::Error::InvalidMessage(
                tokio_rustls::rustls::InvalidMessage::InvalidContentType,
            ),
        );
        let err = PeerError::from(tungstenite::Error::Io(not_tls));
        assert!(
            error_chain(&with_hint(err))
                .ends_with("(the server does not speak TLS there: use ws://)")
        );
        // A port where no HTTP server answers.
        let silent =
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete);
        assert!(
            error_chain(&with_hint(PeerError::from(silent)))
                .contains("is this the signaling server's address and port?")
        );
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
    fn a_relay_refusing_a_permission_or_a_peer_closing_is_not_an_error() {
        assert!(is_expected_error(
            "TURN permission request failed: CreatePermission error response (error 403: Forbidden)"
        ));
        assert!(is_expected_error(
            "[Client] handle_inbound got err: abort chunk, with following errors: "
        ));
        assert!(!is_expected_error(
            "TURN allocation failed from 127.0.0.1:1 to 127.0.0.1:3478: error 401"
        ));
    }

    #[test]
    fn a_remote_text_cannot_fake_a_notice_or_drive_the_terminal() {
        let fake = "line one\n* peer-left id=deadbeef name=bob reason=left";
        assert_eq!(
            escape(fake),
            "line one\\n* peer-left id=deadbeef name=bob reason=left"
        );
        let cases = [
            ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
            ("\x1b[2J", "\\x1b[2J"),
            ("over\rwrite", "over\\rwrite"),
            ("a\tb", "a\\tb"),
            ("nul\0 del\x7f", "nul\\x00 del\\x7f"),
            ("c1 \u{9b}31m", "c1 \\u{9b}31m"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            (
                "zero\u{200b}width \u{2066}isolate",
                "zero\\u{200b}width \\u{2066}isolate",
            ),
            ("line\u{2028}separator", "line\\u{2028}separator"),
        ];
        for (text, shown) in cases {
            assert_eq!(escape(text), shown, "{text:?}");
            assert!(!escape(text).contains(|c: char| c.is_control()), "{text:?}");
        }
        // Ordinary text, backslashes and emoji joined by U+200D stay as they are.
        for text in ["café, naïve, 日本語", r"C:\path\n", "👩\u{200d}💻", ""] {
            assert!(matches!(escape(text), Cow::Borrowed(_)), "{text:?}");
        }
    }

    #[test]
    fn a_notice_field_stays_one_field_on_one_line() {
        let out = Output { json: false };
        let line = out.notice_line(
            "signaling-closed",
            &[("reason", "kicked\n* joined room=x\x1b[2J".into())],
        );
        assert_eq!(
            line,
            r#"* signaling-closed reason="kicked\n* joined room=x\x1b[2J""#
        );
        let line = out.notice_line("x", &[("a", "".into()), ("b", "say \"hi\"".into())]);
        assert_eq!(line, r#"* x a="" b="say \"hi\"""#);
        let json = Output { json: true }.notice_line("x", &[("reason", "a\nb".into())]);
        assert_eq!(json, r#"{"event":"x","reason":"a\nb"}"#);
    }

    #[test]
    fn a_round_trip_time_is_a_number_in_json_and_unknown_when_not_measured() {
        let fields = |rtt| [("rtt_ms", rtt_value(rtt))];
        let (text, json) = (Output { json: false }, Output { json: true });
        assert_eq!(
            json.notice_line("probe", &fields(Some(0.4267))),
            r#"{"event":"probe","rtt_ms":0.43}"#
        );
        assert_eq!(
            json.notice_line("probe", &fields(None)),
            r#"{"event":"probe","rtt_ms":null}"#
        );
        assert_eq!(
            text.notice_line("probe", &fields(Some(12.0))),
            "* probe rtt_ms=12.0"
        );
        assert_eq!(
            text.notice_line("probe", &fields(None)),
            "* probe rtt_ms=unknown"
        );
    }

    #[test]
    fn relay_only_is_a_flag_read_from_the_environment_too() {
        let cli = Cli::command();
        let join = cli.find_subcommand("join").expect("join");
        let arg = join
            .get_arguments()
            .find(|arg| arg.get_id() == "relay_only")
            .expect("--relay-only");
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new("PEER_RELAY_ONLY")));
        let parsed = Cli::try_parse_from(["peer", "join", "ws://h/ws/r", "--relay-only"]);
        let Ok(Cli {
            command: Command::Join { common, .. },
            ..
        }) = parsed
        else {
            panic!("join with --relay-only: {parsed:?}");
        };
        assert!(common.relay_only);
    }

    #[test]
    fn without_a_name_the_host_name_is_used() {
        let name = default_name().expect("a default name");
        assert!(!name.trim().is_empty());
        assert_eq!(name, name.trim());
    }
}
