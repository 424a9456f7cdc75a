//! The Rust peer SDK: join a room of the signaling server by URL and exchange data-channel
//! messages with every other peer in it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), peer::PeerError> {
//! use peer::{ChannelKind, Peer, PeerEvent, PeerOptions};
//! let (peer, mut events) = Peer::connect("ws://127.0.0.1:8080/ws/demo", PeerOptions::default()).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         PeerEvent::ChannelOpen { peer: remote, kind: ChannelKind::Reliable } => {
//!             peer.send_text(&remote, ChannelKind::Reliable, "hello").await?;
//!         }
//!         PeerEvent::Message { from, data, .. } => println!("{from}: {}", String::from_utf8_lossy(&data)),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Signaling transport: WebSocket only (`ws://` or `wss://`; TLS with rustls on ring, trusting
//! the system CA bundle plus [`PeerOptions::ca`]). The server's HTTP fallbacks (SSE +
//! POST, long-polling; `docs/protocol.md`, "When WebSockets are blocked") are for browsers
//! behind proxies that refuse WebSockets; the JS client uses them, this SDK does not.
//!
//! Inside (private modules, one job each, for who works on the SDK): `signaling_client` (the
//! WebSocket session, resume, backoff), `resend` (numbered frames kept until the server
//! confirms them, sent again after a resume),
//! `negotiation` (perfect negotiation decisions), `connection` (one `webrtc` peer
//! connection per remote peer), [`channel`] (data channels and their registry), `room` (which
//! connection exists for which peer), `ice_servers` (fresh ICE servers: credential refresh or
//! relay move, and which connections restart ICE), `turn_tcp_bridge` (TURN over TCP for
//! webrtc), `turn_check` (why a TURN server gives no relayed candidate, said when a connection
//! fails), `tls_roots` (the CAs trusted for `wss://` and `turns:`), [`error`].

pub mod channel;
mod connection;
pub mod error;
mod ice_servers;
mod negotiation;
mod resend;
mod room;
mod sent_log;
mod signaling_client;
mod tls_roots;
mod turn_check;
mod turn_tcp_bridge;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use signaling::protocol::{ErrorCode, LeaveReason, PeerId, RoomId};
use tokio::sync::{mpsc, oneshot};
use webrtc::peer_connection::RTCPeerConnectionState;

pub use channel::ChannelKind;
pub use error::{PeerError, Result};
pub use signaling::protocol;
pub use tls_roots::TlsRootsError;

use channel::{ChannelRegistry, ChannelSender};
use room::{Room, RoomCommand};
use sent_log::Outgoing;
use signaling_client::SignalingClient;

/// The largest data-channel message [`Peer::send`] takes, in bytes: the `max-message-size`
/// both sides offer (the SDP default of RFC 8841, 64 KiB, which the SDK keeps); the SCTP
/// layer refuses a longer one.
pub const MAX_MESSAGE_BYTES: usize = 65536;

/// [`PeerError::MessageTooLarge`] for a message over [`MAX_MESSAGE_BYTES`].
fn fits(message: &Outgoing) -> Result<()> {
    if message.data.len() > MAX_MESSAGE_BYTES {
        return Err(PeerError::MessageTooLarge {
            size: message.data.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// How a [`Peer`] connects.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Display name announced to the other peers.
    pub name: Option<String>,
    /// Force every connection through TURN (ICE transport policy `relay`).
    pub relay_only: bool,
    /// Ignore the TURN servers (keep STUN): only direct paths (host and server-reflexive
    /// candidates), so a connectivity probe can tell them from relayed ones.
    pub no_turn: bool,
    /// Local UDP addresses to bind ICE sockets to. `0.0.0.0:0` (the default) binds one
    /// socket per non-loopback interface (two peers on one machine pair over one of those);
    /// `127.0.0.1:0` keeps everything on loopback (a machine with no other interface needs
    /// it).
    pub udp_addrs: Vec<String>,
    /// Per-channel bound on bytes handed to a channel but not yet acknowledged: `send` waits
    /// when it is reached (back-pressure instead of unbounded buffering). Default 1 MiB.
    pub send_buffer_limit: usize,
    /// Extra CA certificates (a PEM file, one or more certificates) trusted besides the system
    /// CA bundle, for `wss://` signaling and `turns:` relays alike: the CA of a server with a
    /// private or self-signed certificate (`signaling --tls-self-signed` prints its
    /// certificate). Without it, such a server's certificate is not trusted and
    /// [`Peer::connect`] fails with [`PeerError::UntrustedCertificate`].
    pub ca: Option<PathBuf>,
    /// Extra CA certificates (PEM file) trusted for `turns:` relays only, on top of
    /// [`ca`](Self::ca).
    pub turn_ca: Option<PathBuf>,
}

impl PeerOptions {
    /// The extra CA files trusted for `turns:` relays.
    fn turn_ca_files(&self) -> Vec<PathBuf> {
        self.ca.iter().chain(&self.turn_ca).cloned().collect()
    }
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            name: None,
            relay_only: false,
            no_turn: false,
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            send_buffer_limit: 1024 * 1024,
            ca: None,
            turn_ca: None,
        }
    }
}

/// A peer connection's overall state, as in `RTCPeerConnectionState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

impl From<RTCPeerConnectionState> for ConnectionState {
    fn from(state: RTCPeerConnectionState) -> Self {
        match state {
            RTCPeerConnectionState::Connecting => Self::Connecting,
            RTCPeerConnectionState::Connected => Self::Connected,
            RTCPeerConnectionState::Disconnected => Self::Disconnected,
            RTCPeerConnectionState::Failed => Self::Failed,
            RTCPeerConnectionState::Closed => Self::Closed,
            _ => Self::New,
        }
    }
}

/// The candidate pair ICE selected for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPair {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub local_type: String,
    pub remote_type: String,
    pub local_address: String,
    pub remote_address: String,
    /// `udp` or `tcp`.
    pub protocol: String,
    /// The latest STUN round-trip time on the pair, once measured.
    pub rtt: Option<Duration>,
    /// For a relayed local candidate: the URL of the TURN server it was allocated on, as the
    /// signaling server listed it (`turn:HOST:PORT?transport=udp`; a TCP or TLS URL, not the
    /// local bridge `webrtc` was handed). `None` for direct candidates or when unknown.
    pub relay_url: Option<String>,
}

impl SelectedPair {
    /// `HOST:PORT` of the TURN server carrying a relayed local candidate (from
    /// [`relay_url`](Self::relay_url)).
    pub fn relay_server(&self) -> Option<String> {
        self.relay_url
            .as_deref()
            .and_then(ice_servers::TurnUrl::parse)
            .map(|url| url.server())
    }
}

/// Why a connection restarted ICE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IceRestartReason {
    /// The connection failed.
    Failed,
    /// The room moved to another relay (`ice_servers` with other TURN URLs) and the selected
    /// pair went through a TURN server that is no longer listed.
    RelayMoved,
    /// Fresh TURN credentials (`ice_servers` with the same TURN URLs) and the selected pair's
    /// local candidate is relayed: the path moves onto allocations made with them, before the
    /// secret that signed the old ones is rotated out (then the old ones stop refreshing).
    FreshCredentials,
}

impl std::fmt::Display for IceRestartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Failed => "failed",
            Self::RelayMoved => "relay-moved",
            Self::FreshCredentials => "fresh-credentials",
        })
    }
}

/// Why a connection was replaced by a new one to the same peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplaceReason {
    /// The peer made a new connection (an offer or answer with another DTLS fingerprint): it
    /// did not keep its side across a re-join, or switched to relay-only.
    PeerStartedOver,
    /// The peer answered our ICE restart with the ICE credentials it had, and ICE was not
    /// connected again 2 to 3 s later (or the connection before showed the same): it cannot
    /// restart ICE (aiortc cannot), so a new connection offers instead.
    IceRestartRefused,
}

impl std::fmt::Display for ReplaceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PeerStartedOver => "peer-started-over",
            Self::IceRestartRefused => "ice-restart-refused",
        })
    }
}

/// What happens in the room.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A peer is in the room (already there when we joined, or joined after us).
    PeerJoined { peer: PeerId, name: Option<String> },
    /// A peer left the room: 1 s after the server said so, or 30 s after our re-join for a
    /// peer of the old session that did not come back (`ended`). What its connection had
    /// received comes before this event, unless the application was behind: then the rest
    /// follows it (the connection closes once it was read up to the peer's channels' closes,
    /// 10 s at most; at once when its path is down, as after a peer that was killed).
    PeerLeft { peer: PeerId, reason: LeaveReason },
    /// After a signaling re-join, a peer that re-joined too took over its old connection.
    PeerRenamed { old: PeerId, new: PeerId },
    /// A data channel to a peer is open: sending on it works from now on.
    ChannelOpen { peer: PeerId, kind: ChannelKind },
    /// A data channel to a peer closed.
    ChannelClosed { peer: PeerId, kind: ChannelKind },
    /// The connection to `peer` ends, and a new one replaces it (its channels open anew).
    ConnectionReplaced { peer: PeerId, reason: ReplaceReason },
    /// The connection to `peer` was replaced ([`PeerEvent::ConnectionReplaced`]), and
    /// `messages` reliable messages sent on it that SCTP had not acknowledged were sent again
    /// on the new one, before its [`PeerEvent::ChannelOpen`] and anything sent after (one the
    /// peer had received without acknowledging it yet arrives twice).
    Resent { peer: PeerId, messages: usize },
    /// `peer` left the room (before [`PeerEvent::PeerLeft`]), and `messages` reliable messages
    /// sent to it had not been acknowledged by its SCTP: they may not have arrived. That
    /// counts those on a channel the peer closed first, as of at most 100 ms before it
    /// closed (its acknowledgements are not known after). Not counted: what its SCTP had
    /// acknowledged but its application had not read when it closed (up to its receive
    /// buffer, about 1 MiB, when it closes in the middle of a fast stream): a peer that must
    /// get everything waits, before it closes, until the sender closed its side
    /// ([`PeerEvent::ChannelClosed`]) or says it is done.
    Unacknowledged { peer: PeerId, messages: usize },
    /// A data-channel message.
    Message {
        from: PeerId,
        kind: ChannelKind,
        /// Whether it was sent as text (UTF-8) rather than binary.
        text: bool,
        data: Bytes,
    },
    /// A connection's state changed (an ICE restart of a connection that works, for a relay
    /// move or fresh TURN credentials, goes from `Connected` through `Connecting` and back).
    ConnectionState {
        peer: PeerId,
        state: ConnectionState,
    },
    /// A room-wide application message relayed by the signaling server.
    Broadcast {
        from: PeerId,
        data: serde_json::Value,
    },
    /// The signaling socket broke; reconnecting after `delay`.
    SignalingReconnecting { attempt: u32, delay: Duration },
    /// The signaling session was resumed: `replayed` missed messages delivered, and `resent`
    /// of our own signals sent again (the dropped socket had swallowed them).
    SignalingResumed { replayed: u64, resent: u64 },
    /// The signaling session could not be resumed (`reason`: the server's error, e.g.
    /// `resume_failed`, `replay_overflow`, `slow_consumer`); we joined again under a new id.
    /// Live connections keep working.
    SignalingRejoined { peer_id: PeerId, reason: ErrorCode },
    /// The signaling server sent fresh ICE servers (`ice_servers`: new TURN credentials, or
    /// the room's relay changed). Every connection took them; those that had to restart ICE
    /// report [`PeerEvent::IceRestart`].
    IceServersUpdated,
    /// A connection restarted ICE (a new offer with fresh ICE credentials follows).
    IceRestart {
        peer: PeerId,
        reason: IceRestartReason,
    },
    /// Signaling is over for good: the server ended the session (`code`: `kicked`,
    /// `room_closed`, or another error the client rules call fatal; a
    /// [`PeerEvent::Error`] with the server's message came just before), or no session could
    /// be resumed or joined again for 5 minutes (`code` is `None`). Not sent for
    /// [`Peer::close`]. The connections close then: their last events (messages, channel
    /// closes, states) may follow it, then the events end.
    #[non_exhaustive]
    SignalingClosed {
        code: Option<ErrorCode>,
        message: String,
    },
    /// A connection failed, and no TURN server of its configuration gives an allocation with
    /// the credentials signaling handed out: one event per server, `reason` saying why
    /// (refused credentials, no answer, ...). Checked once per configuration (`turns:` URLs
    /// are not checked); the connection keeps trying.
    TurnUnusable {
        peer: PeerId,
        url: String,
        reason: String,
    },
    /// A non-fatal error (a failed negotiation step, a refused signal), or the server's error
    /// that ends the session (before [`PeerEvent::SignalingClosed`]). `peer` is the peer a
    /// connection's error is about; `None` for the server's errors (an `unknown_peer` for a
    /// signal to a peer that left meanwhile names it in `message`).
    Error {
        peer: Option<PeerId>,
        message: String,
    },
}

/// The stream of [`PeerEvent`]s of a [`Peer`]. Keep reading it for as long as the peer lives
/// (and after [`Peer::close`], until `None`): messages wait in it (4096 events at most), and
/// a channel whose next message cannot be handed on stops reading, so the remote's sends
/// wait. Dropping it stops delivery: the channels are no longer read to their close, and
/// [`Peer::close`] may wait its whole 10 s for the connections.
pub struct PeerEvents {
    rx: mpsc::Receiver<PeerEvent>,
}

impl PeerEvents {
    /// The next event; `None` once the peer is closed.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued, without waiting: after [`Peer::close`], what arrived
    /// before the close ended.
    pub fn try_recv(&mut self) -> Option<PeerEvent> {
        self.rx.try_recv().ok()
    }
}

/// A member of a room: the handle to send messages and query connections. Dropping it leaves
/// the room as [`Peer::close_at_once`] does, without waiting for anything: the `leave` goes
/// out only if the runtime goes on running (dropped as `main` returns, the others see the
/// peer go after the server's resume grace period instead). For an orderly end, call
/// [`Peer::close`] and read the [`PeerEvents`] until `None`.
pub struct Peer {
    me: Arc<RwLock<PeerId>>,
    room: RoomId,
    registry: Arc<ChannelRegistry>,
    commands: mpsc::UnboundedSender<RoomCommand>,
}

impl Peer {
    /// Joins the room named by the signaling URL (`ws://host:port/ws/ROOM`, or `wss://` for
    /// TLS) and starts connecting to every peer in it. Returns once the server welcomed us.
    /// A join the server refuses for now (an error of the `retry` class: `draining`,
    /// `unavailable`, a full server) is tried again after the backoff for up to five minutes,
    /// unreachable servers too from then on; a server unreachable at the first try, or a
    /// refusal of the `fatal` class, fails at once.
    pub async fn connect(url: &str, options: PeerOptions) -> Result<(Self, PeerEvents)> {
        let (signaling, info, signaling_rx) =
            SignalingClient::connect(url, options.name.clone(), options.ca.as_deref()).await?;
        let offers_turn = info
            .ice_servers
            .iter()
            .flat_map(|server| &server.urls)
            .any(|url| url.starts_with("turn:") || url.starts_with("turns:"));
        if options.relay_only && !offers_turn {
            tracing::warn!(
                "relay-only, but the signaling server offers no TURN server: no peer can be reached"
            );
        }
        let (events_tx, events_rx) = mpsc::channel(4096);
        let registry = Arc::new(ChannelRegistry::default());
        let me = Arc::new(RwLock::new(info.peer_id.clone()));
        let (room, output_rx) = Room::new(
            me.clone(),
            signaling,
            Arc::new(options),
            registry.clone(),
            events_tx,
            info.ice_servers.clone(),
        );
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(room.run(info.peers, signaling_rx, output_rx, commands_rx));
        Ok((
            Self {
                me,
                room: info.room,
                registry,
                commands: commands_tx,
            },
            PeerEvents { rx: events_rx },
        ))
    }

    /// Our peer id (it changes only if the signaling session had to be re-joined).
    pub fn id(&self) -> PeerId {
        channel::read_remote(&self.me)
    }

    /// The room we are in.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Peers with an open channel of that kind.
    pub fn connected_peers(&self, kind: ChannelKind) -> Vec<PeerId> {
        self.registry
            .all(kind)
            .into_iter()
            .map(|(peer, _)| peer)
            .collect()
    }

    /// Sends a binary message to one peer: [`MAX_MESSAGE_BYTES`] at most (more is
    /// [`PeerError::MessageTooLarge`], nothing sent). Waits while the channel's send buffer is
    /// full ([`PeerOptions::send_buffer_limit`]), without a time limit (the remote application
    /// may not be reading): bound it with `tokio::time::timeout` if needed (a send dropped
    /// while it waits may or may not have sent the message). A peer that is not (or no
    /// longer) connected is [`PeerError::ChannelNotOpen`]; one whose connection died while
    /// the send waited, too, at the latest when it leaves the room.
    pub async fn send(&self, to: &PeerId, kind: ChannelKind, data: impl Into<Bytes>) -> Result<()> {
        let message = Outgoing {
            data: data.into(),
            text: false,
        };
        self.send_on(to, kind, message).await
    }

    /// Sends a text message to one peer, as [`Peer::send`] does (the same limit, in bytes of
    /// UTF-8).
    pub async fn send_text(&self, to: &PeerId, kind: ChannelKind, text: &str) -> Result<()> {
        let message = Outgoing {
            data: Bytes::copy_from_slice(text.as_bytes()),
            text: true,
        };
        self.send_on(to, kind, message).await
    }

    /// Sends on `to`'s channel of `kind`: one that closed meanwhile (the peer is leaving) is
    /// [`PeerError::ChannelNotOpen`], as one that was not open.
    async fn send_on(&self, to: &PeerId, kind: ChannelKind, message: Outgoing) -> Result<()> {
        fits(&message)?;
        match self.channel(to, kind)?.send(message).await {
            Err(PeerError::WebRtc(webrtc::error::Error::ErrDataChannelClosed)) => {
                Err(PeerError::ChannelNotOpen {
                    peer: to.clone(),
                    kind,
                })
            }
            sent => sent,
        }
    }

    /// For every peer with an open reliable channel, how many reliable messages sent to it
    /// its SCTP has not acknowledged yet: before leaving the room, a sender waits for them
    /// (closing the connection drops them).
    pub async fn unacknowledged(&self) -> Vec<(PeerId, usize)> {
        self.registry.unacknowledged().await
    }

    /// Sends a text message to every peer with an open channel of `kind` (over the data
    /// channels, not the signaling server); returns how many got it (0 when none is open,
    /// after [`Peer::close`] too). [`MAX_MESSAGE_BYTES`] at most, as for [`Peer::send`].
    pub async fn broadcast_text(&self, kind: ChannelKind, text: &str) -> Result<usize> {
        let message = Outgoing {
            data: Bytes::copy_from_slice(text.as_bytes()),
            text: true,
        };
        fits(&message)?;
        let mut sent = 0;
        for (peer, channel) in self.registry.all(kind) {
            match channel.send(message.clone()).await {
                Ok(()) => sent += 1,
                Err(err) => tracing::debug!(%peer, "broadcast send failed: {err}"),
            }
        }
        Ok(sent)
    }

    fn channel(&self, to: &PeerId, kind: ChannelKind) -> Result<ChannelSender> {
        self.registry
            .get(to, kind)
            .ok_or_else(|| PeerError::ChannelNotOpen {
                peer: to.clone(),
                kind,
            })
    }

    /// The candidate pair ICE selected for the connection to `peer`.
    pub async fn selected_pair(&self, peer: &PeerId) -> Result<Option<SelectedPair>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(RoomCommand::SelectedPair {
                peer: peer.clone(),
                reply,
            })
            .map_err(|_| PeerError::Closed)?;
        rx.await.map_err(|_| PeerError::Closed)
    }

    /// Leaves the room and closes every connection: each closes its data channels, the room
    /// is left 1 s later, and each waits (11 s at most, not at all if its path is down) for
    /// the peer to close its side or leave too. A peer on this SDK closes once it has read
    /// what was sent to it: its SCTP acknowledges a message before its application reads it,
    /// and closing at once would drop what it had not read. Returns once every connection
    /// closed or that wait is over: within about 14 s (1 s, the `leave` written, 2 s at
    /// most, then 11 s). [`Peer::close_at_once`] called meanwhile cuts it short, and both
    /// return then. Once the peer closed, what needs the room fails with
    /// [`PeerError::Closed`] or [`PeerError::ChannelNotOpen`].
    ///
    /// Returns the peers that had not closed their side when the wait for it ended (it ran
    /// out, the path went down, or [`Peer::close_at_once`] cut it short): what they had not
    /// read yet may be lost.
    pub async fn close(&self) -> Vec<PeerId> {
        self.close_with(false).await
    }

    /// Leaves the room and closes every connection without the waits of [`Peer::close`]:
    /// what a peer's SCTP acknowledged but its application had not read yet may be lost. For
    /// an application whose peers confirmed what they needed (the CLI's `send-file` once the
    /// receiver confirmed the file), or that will not wait any longer for a [`Peer::close`]
    /// under way (the CLI on a second Ctrl-C): that close leaves at once if it had not left
    /// yet, and no longer waits for the peers. Returns once the `leave` was written (2 s at
    /// most) and the connections closed (1 s at most), with what [`Peer::close`] returns
    /// (peers that a close under way had already found did not close in time).
    pub async fn close_at_once(&self) -> Vec<PeerId> {
        self.close_with(true).await
    }

    async fn close_with(&self, at_once: bool) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(RoomCommand::Close { at_once, reply })
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_the_limit_is_refused_before_it_is_sent() {
        let message = |len: usize| Outgoing {
            data: Bytes::from(vec![0u8; len]),
            text: false,
        };
        assert!(fits(&message(MAX_MESSAGE_BYTES)).is_ok());
        assert!(matches!(
            fits(&message(MAX_MESSAGE_BYTES + 1)),
            Err(PeerError::MessageTooLarge {
                size: 65537,
                max: 65536
            })
        ));
    }
}
