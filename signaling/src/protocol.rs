//! The wire protocol, version 1: every message a client and the server exchange.
//!
//! This module is the one definition of the wire. The server, the Rust peer SDK and the tests
//! all use these types; nothing else builds JSON by hand. `docs/protocol.md` documents every
//! message, field and error code, and a test parses each example of that document into
//! these types, so the two cannot drift apart.
//!
//! Frames are WebSocket *text* frames holding one JSON object each, tagged by `"type"`.
//! Messages are named by direction: [`ClientMessage`] (client -> server requests) and
//! [`ServerMessage`] (server -> client replies and events). Every server -> client message
//! travels inside a [`ServerFrame`], which adds the per-session sequence number `seq`
//! that resume is built on.

use serde::{Deserialize, Serialize};
use std::fmt;

mod strict_json;

/// The protocol version this module describes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every protocol version this build can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Picks the newest version both sides speak, or `None` when they share none.
pub fn negotiate_version(offered: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .copied()
        .find(|v| offered.contains(v))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A room name chosen by clients: 1 to 64 characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
    RoomId
);
string_id!(
    /// A peer's id, assigned by the server at join and kept across resumes.
    PeerId
);
string_id!(
    /// A session's id, assigned by the server; for logs and support, never a credential.
    SessionId
);
string_id!(
    /// The secret a client presents to resume its session after a dropped socket.
    ResumeToken
);

/// A client-chosen request id. Replies and errors caused by a request carry it back as `ref`.
pub type RequestId = u64;

/// A client's sequence number of a `signal` or `broadcast` frame (`cseq`): 1 for the session's
/// first numbered frame, one more for each next one, across resumes and transports. The server
/// remembers the highest it handled (`received` in `resumed` and `pong`) and drops a frame
/// numbered at or below it as a duplicate, so a client may send again whatever it could not
/// see confirmed: each numbered frame takes effect exactly once.
pub type ClientSeq = u64;

/// A `versions` field: integers from 1 to 2^32 - 1 (0 names no version, so a frame offering it
/// is `invalid_message`, as one offering -1 is).
fn versions<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
    let versions = Vec::<u32>::deserialize(deserializer)?;
    if versions.contains(&0) {
        return Err(serde::de::Error::custom("versions are integers from 1"));
    }
    Ok(versions)
}

/// An optional flag that may be `null`, which means what its absence means: `false`.
fn null_as_false<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// Client -> server requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message of a new session: which versions the client speaks and which room
    /// it joins. Answered by [`ServerMessage::Welcome`] or an error.
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Protocol versions the client speaks; the server picks the newest it shares.
        #[serde(deserialize_with = "versions")]
        versions: Vec<u32>,
        /// The room to join. May be omitted when the URL path already names it (`/ws/ROOM`);
        /// when both are present they must agree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// A display name shown to other peers (1 to 64 printable characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// An HS256 JWT granting the room, when the server requires one. May instead be given
        /// as the `token` query parameter of the WebSocket URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The first message of a reconnected socket that continues an earlier session. Answered
    /// by the missed messages (in order, with their original `seq`) followed by
    /// [`ServerMessage::Resumed`], or by an error with code `resume_failed`.
    Resume {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        #[serde(deserialize_with = "versions")]
        versions: Vec<u32>,
        /// The token from the last `welcome` or `resumed`.
        resume_token: ResumeToken,
        /// The highest `seq` the client has processed (0 if none).
        last_seq: u64,
    },
    /// Forward a negotiation message to one peer of the same room. The server checks the
    /// shape and the target, then forwards the payload opaquely and in order.
    Signal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The client's sequence number of this frame ([`ClientSeq`]), when it numbers them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cseq: Option<ClientSeq>,
        to: PeerId,
        signal: Signal,
    },
    /// Send a small application message to every other peer of the room.
    Broadcast {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The client's sequence number of this frame ([`ClientSeq`]), when it numbers them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cseq: Option<ClientSeq>,
        /// Any JSON; an object in it with a key written twice is refused, as in the frame.
        #[serde(deserialize_with = "strict_json::deserialize")]
        data: serde_json::Value,
    },
    /// Acknowledge every server message up to and including `seq`, so the server can drop
    /// them from the replay buffer. Send at least once per ping interval while messages arrive.
    Ack { seq: u64 },
    /// An application-level ping for clients that cannot see WebSocket pings (browsers).
    /// Answered by [`ServerMessage::Pong`]. Any frame counts as liveness for the server.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Leave the room for good; the session ends and other peers get `peer_left`.
    Leave {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// A report on the sender's connection to one other peer of the room (its selected ICE
    /// candidate pair, RTT and byte counts), sent when the selected pair changes and every
    /// [`client_rules::STATS_EVERY`]. Not answered; a bad report gets an error.
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        #[serde(flatten)]
        report: ConnectionStats,
    },
}

/// What a `stats` message reports about the sender's connection to `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// The other peer of the room the report is about.
    pub peer: PeerId,
    /// The selected candidate pair; absent (or `null`) while ICE has not selected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<CandidatePair>,
    /// The current round-trip time of the selected pair, in milliseconds (at most
    /// [`MAX_STATS_RTT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    /// Bytes sent and received on the connection's transport so far.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
}

/// The largest `rtt_ms` a `stats` report may carry (ten minutes).
pub const MAX_STATS_RTT_MS: u32 = 600_000;
/// The longest `relay_url` a `stats` report may carry, in bytes.
pub const MAX_STATS_RELAY_URL: usize = 256;

/// A selected ICE candidate pair, as `RTCPeerConnection.getStats()` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatePair {
    /// The local candidate's type.
    pub local: CandidateType,
    /// The remote candidate's type.
    pub remote: CandidateType,
    /// The pair's transport.
    pub protocol: IceProtocol,
    /// How the local relay candidate reaches its TURN server (only when `local` is `relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_protocol: Option<RelayProtocol>,
    /// The TURN URL the local relay candidate came from (only when `local` is `relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
}

impl CandidatePair {
    /// Whether media goes through a TURN relay (either side's candidate is a relay one).
    pub fn is_relayed(&self) -> bool {
        self.local == CandidateType::Relay || self.remote == CandidateType::Relay
    }
}

/// An ICE candidate type (RFC 8445).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl CandidateType {
    /// Every type, for bounded metric labels.
    pub const ALL: [Self; 4] = [Self::Host, Self::Srflx, Self::Prflx, Self::Relay];

    /// The type as the wire (and the SDP) writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Srflx => "srflx",
            Self::Prflx => "prflx",
            Self::Relay => "relay",
        }
    }
}

/// The transport of an ICE candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IceProtocol {
    Udp,
    Tcp,
}

/// How a relay candidate reaches its TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayProtocol {
    Udp,
    Tcp,
    Tls,
}

impl ConnectionStats {
    /// Checks what serde cannot: the RTT bound and the relay fields' consistency. The error
    /// text is for the `invalid_message` reply.
    pub fn check(&self) -> Result<(), String> {
        if self.rtt_ms.is_some_and(|rtt| rtt > MAX_STATS_RTT_MS) {
            return Err(format!("rtt_ms is at most {MAX_STATS_RTT_MS}"));
        }
        let Some(pair) = &self.pair else {
            return Ok(());
        };
        let relay_fields = pair.relay_protocol.is_some() || pair.relay_url.is_some();
        if relay_fields && pair.local != CandidateType::Relay {
            return Err("relay_protocol and relay_url need a local relay candidate".into());
        }
        if let Some(url) = &pair.relay_url {
            let scheme_ok = url.starts_with("turn:") || url.starts_with("turns:");
            if !scheme_ok || url.len() > MAX_STATS_RELAY_URL || url.chars().any(char::is_control) {
                return Err(format!(
                    "relay_url is a turn: or turns: URL of at most {MAX_STATS_RELAY_URL} bytes"
                ));
            }
        }
        Ok(())
    }
}

impl ClientMessage {
    /// The request id, for messages that have one.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Join { id, .. }
            | Self::Resume { id, .. }
            | Self::Signal { id, .. }
            | Self::Broadcast { id, .. }
            | Self::Ping { id }
            | Self::Leave { id }
            | Self::Stats { id, .. } => *id,
            Self::Ack { .. } => None,
        }
    }

    /// The frame's `cseq`, for the kinds a client may number (`signal`, `broadcast`).
    pub fn cseq(&self) -> Option<ClientSeq> {
        match self {
            Self::Signal { cseq, .. } | Self::Broadcast { cseq, .. } => *cseq,
            _ => None,
        }
    }

    /// The frame's `cseq` field, for the kinds a client may number; `None` for the others.
    pub fn cseq_mut(&mut self) -> Option<&mut Option<ClientSeq>> {
        match self {
            Self::Signal { cseq, .. } | Self::Broadcast { cseq, .. } => Some(cseq),
            _ => None,
        }
    }
}

/// A negotiation payload, forwarded opaquely from one peer to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// An SDP offer. `ice_restart` marks an offer made to restart ICE (informational).
    Offer {
        sdp: String,
        #[serde(
            default,
            deserialize_with = "null_as_false",
            skip_serializing_if = "std::ops::Not::not"
        )]
        ice_restart: bool,
    },
    /// An SDP answer.
    Answer { sdp: String },
    /// One trickled ICE candidate.
    Candidate { candidate: IceCandidate },
    /// The sender has gathered all its candidates (for the current ICE generation).
    EndOfCandidates {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username_fragment: Option<String>,
    },
}

/// An ICE candidate in the JSON shape of the browser's `RTCIceCandidateInit`
/// (`candidate.toJSON()`), hence the camelCase field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line, as in SDP.
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// One server -> client message with its per-session sequence number.
///
/// `seq` starts at 1 and grows by one with every message of the session, across resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    pub seq: u64,
    #[serde(flatten)]
    pub message: ServerMessage,
}

/// The HTTP transports (`docs/protocol.md`, "When WebSockets are blocked"): the reply to an
/// open (`POST /http/ROOM` with `join` or `resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOpened {
    /// The session token for `events`, `poll` and `send`: the session's resume token.
    pub session: ResumeToken,
}

/// The reply to a long-poll (`GET /http/poll`): the frames after the client's `last_seq`, and
/// the close code when the session was closed (the WebSocket close code it would have got).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollReply {
    pub frames: Vec<ServerFrame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<u16>,
}

/// The paths and parameters of the HTTP transports, shared by the server and its clients.
pub mod http {
    /// `POST` with a `join` or `resume` frame: `/http` or `/http/{room}`.
    pub const OPEN: &str = "/http";
    /// `GET`: Server-Sent Events.
    pub const EVENTS: &str = "/http/events";
    /// `GET`: long-polling.
    pub const POLL: &str = "/http/poll";
    /// `POST`: one client frame or an array of them.
    pub const SEND: &str = "/http/send";
    /// The query parameter naming the session (its token).
    pub const SESSION_PARAM: &str = "session";
    /// The query parameter with the highest `seq` the client has.
    pub const LAST_SEQ_PARAM: &str = "last_seq";
    /// The SSE event that carries a close code.
    pub const CLOSE_EVENT: &str = "close";
}

/// Server -> client replies and events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The reply to `join`: who you are, who is here, and how to stay connected.
    Welcome {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<RequestId>,
        #[serde(flatten)]
        session: SessionInfo,
    },
    /// Sent after the replayed messages of a successful `resume`.
    Resumed {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<RequestId>,
        #[serde(flatten)]
        session: SessionInfo,
        /// How many missed messages were replayed just before this one.
        replayed: u64,
        /// The highest `cseq` the session handled: send again the numbered frames after it.
        /// Always sent by this server; absent from servers that predate `cseq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received: Option<ClientSeq>,
    },
    /// Another peer joined the room.
    PeerJoined { peer: PeerInfo },
    /// A peer left the room: it said `leave`, its socket closed and the resume grace period
    /// passed, or it went silent past the ping timeout.
    PeerLeft {
        peer_id: PeerId,
        reason: LeaveReason,
    },
    /// A negotiation message from another peer of the room.
    Signal { from: PeerId, signal: Signal },
    /// An application message broadcast by another peer of the room.
    Broadcast {
        from: PeerId,
        data: serde_json::Value,
    },
    /// Fresh ICE servers (TURN credentials) replacing the earlier ones, sent before those expire.
    IceServers { ice_servers: Vec<IceServer> },
    /// The reply to a client `ping`.
    Pong {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<RequestId>,
        /// The highest `cseq` the session handled: the numbered frames up to it are confirmed.
        /// Always sent by this server; absent from servers that predate `cseq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received: Option<ClientSeq>,
    },
    /// The server is shutting down: reconnect (with `resume`) after the given delay, possibly
    /// to another instance. The socket closes when the drain time is over.
    Draining {
        reason: String,
        reconnect_after_ms: u64,
    },
    /// A request failed, or the session is ending. `ref` names the request when there was one.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<RequestId>,
    },
}

/// What a client learns at `welcome` and again at `resumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The protocol version the server picked.
    pub version: u32,
    pub peer_id: PeerId,
    pub session_id: SessionId,
    pub room: RoomId,
    /// The other peers in the room, oldest first, each with your role towards it.
    pub peers: Vec<PeerInfo>,
    /// STUN/TURN servers for `RTCPeerConnection`, with short-lived TURN credentials.
    pub ice_servers: Vec<IceServer>,
    /// The server sends a WebSocket ping this often; send an `ack` at least as often.
    pub ping_interval_ms: u64,
    /// A connection silent for this long is closed (and its peer leaves after the grace period).
    pub ping_timeout_ms: u64,
    /// Present this with `resume` to continue the session after a dropped socket.
    pub resume_token: ResumeToken,
    /// How long after a dropped socket the session can still be resumed.
    pub resume_grace_ms: u64,
    /// The largest text frame the server accepts, in bytes.
    pub max_message_bytes: usize,
}

/// Another peer as seen by the recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Perfect negotiation: whether *the recipient* is the polite side of the pair formed
    /// with this peer. The peer that joined later is polite; the rule is the same on both
    /// sides, so exactly one of each pair is polite.
    pub polite: bool,
}

/// An ICE server in the JSON shape of the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a peer left the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its socket closed and it did not resume within the grace period.
    Disconnected,
    /// It went silent past the ping timeout and did not resume within the grace period.
    Timeout,
    /// Its session ended because of an error (replay overflow, server shutdown).
    Ended,
}

/// Stable, machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// None of the client's `versions` is supported. The socket closes.
    UnsupportedVersion,
    /// The frame is not valid JSON, or not an object with a known `type` and the right fields.
    InvalidMessage,
    /// A binary frame arrived; the protocol is text only.
    BinaryNotSupported,
    /// The frame is larger than `max_message_bytes`. The socket closes (code 1009).
    MessageTooLarge,
    /// The first message must be `join` or `resume`.
    NotJoined,
    /// `join`/`resume` on a socket that has already joined.
    AlreadyJoined,
    /// The room id is empty, too long, `.` or `..`, or has characters outside `[A-Za-z0-9_.-]`.
    InvalidRoomId,
    /// The display name is empty, too long, or has control characters.
    InvalidName,
    /// The room already holds its maximum number of peers.
    RoomFull,
    /// The server already holds its maximum number of rooms.
    TooManyRooms,
    /// The server already holds its maximum number of sessions.
    TooManySessions,
    /// The client's address holds its maximum number of connections (HTTP 429 at the upgrade).
    TooManyConnections,
    /// The target peer is not in the sender's room (or does not exist). Nothing was delivered.
    UnknownPeer,
    /// Too many messages: the per-connection rate limit dropped this one.
    RateLimited,
    /// A token is required and was missing, invalid or expired.
    Unauthorized,
    /// The token does not grant this room (or name).
    Forbidden,
    /// The resume token is unknown or expired, or `last_seq` is below the acknowledged one or
    /// above the last one sent.
    ResumeFailed,
    /// The session's replay buffer overflowed while the client was away, or frames after a
    /// resume's `last_seq` were dropped before they were acknowledged: the session ended.
    ReplayOverflow,
    /// The client was too slow to read its messages: the session ended.
    SlowConsumer,
    /// The server is draining and accepts no new sessions.
    Draining,
    /// A fault on the server's side.
    Internal,
    /// The server cannot reach its shared store (cluster mode): try again shortly.
    Unavailable,
    /// An operator removed this peer (admin API): the session ended and cannot be resumed.
    Kicked,
    /// An operator closed the room (admin API): every session of it ended.
    RoomClosed,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidMessage => "invalid_message",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::MessageTooLarge => "message_too_large",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::InvalidRoomId => "invalid_room_id",
            Self::InvalidName => "invalid_name",
            Self::RoomFull => "room_full",
            Self::TooManyRooms => "too_many_rooms",
            Self::TooManySessions => "too_many_sessions",
            Self::TooManyConnections => "too_many_connections",
            Self::UnknownPeer => "unknown_peer",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ResumeFailed => "resume_failed",
            Self::ReplayOverflow => "replay_overflow",
            Self::SlowConsumer => "slow_consumer",
            Self::Draining => "draining",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Kicked => "kicked",
            Self::RoomClosed => "room_closed",
        }
    }
}

impl ErrorCode {
    /// Every code, in the order of the table in `docs/protocol.md`.
    pub const ALL: [Self; 24] = [
        Self::UnsupportedVersion,
        Self::InvalidMessage,
        Self::BinaryNotSupported,
        Self::MessageTooLarge,
        Self::NotJoined,
        Self::AlreadyJoined,
        Self::InvalidRoomId,
        Self::InvalidName,
        Self::RoomFull,
        Self::TooManyRooms,
        Self::TooManySessions,
        Self::TooManyConnections,
        Self::UnknownPeer,
        Self::RateLimited,
        Self::Unauthorized,
        Self::Forbidden,
        Self::ResumeFailed,
        Self::ReplayOverflow,
        Self::SlowConsumer,
        Self::Draining,
        Self::Internal,
        Self::Unavailable,
        Self::Kicked,
        Self::RoomClosed,
    ];

    /// The WebSocket close code the server closes the socket with after this error, or `None`
    /// when the socket stays open (`too_many_connections` is an HTTP 429 before any socket
    /// exists). One exception: `rate_limited` in answer to a `join` closes with 1013.
    pub fn close_code(self) -> Option<u16> {
        use close_code::*;
        match self {
            Self::InvalidMessage
            | Self::BinaryNotSupported
            | Self::NotJoined
            | Self::AlreadyJoined
            | Self::TooManyConnections
            | Self::UnknownPeer
            | Self::RateLimited => None,
            Self::MessageTooLarge => Some(TOO_BIG),
            Self::UnsupportedVersion
            | Self::InvalidRoomId
            | Self::InvalidName
            | Self::Unauthorized
            | Self::Forbidden
            | Self::ResumeFailed
            | Self::ReplayOverflow
            | Self::SlowConsumer
            | Self::Kicked
            | Self::RoomClosed => Some(POLICY),
            Self::RoomFull
            | Self::TooManyRooms
            | Self::TooManySessions
            | Self::Draining
            | Self::Unavailable => Some(TRY_AGAIN_LATER),
            Self::Internal => Some(INTERNAL),
        }
    }

    /// What a client does after this error ([`RetryClass`]; the client rules of
    /// `docs/protocol.md`).
    pub fn retry_class(self) -> RetryClass {
        match self {
            Self::InvalidMessage
            | Self::BinaryNotSupported
            | Self::NotJoined
            | Self::AlreadyJoined
            | Self::UnknownPeer
            | Self::RateLimited => RetryClass::Continue,
            Self::UnsupportedVersion
            | Self::InvalidRoomId
            | Self::InvalidName
            | Self::RoomFull
            | Self::Unauthorized
            | Self::Forbidden
            | Self::Kicked
            | Self::RoomClosed => RetryClass::Fatal,
            Self::ResumeFailed | Self::ReplayOverflow | Self::SlowConsumer => RetryClass::Rejoin,
            Self::MessageTooLarge
            | Self::TooManyRooms
            | Self::TooManySessions
            | Self::TooManyConnections
            | Self::Draining
            | Self::Internal
            | Self::Unavailable => RetryClass::Retry,
        }
    }
}

/// What a client does after an error: one rule per [`ErrorCode`], followed by every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    /// Only that request failed; the session goes on.
    Continue,
    /// The server ended the session: join again at once, as a new peer, on a new socket.
    Rejoin,
    /// Reconnect after the backoff and resume (join if there is no session yet).
    Retry,
    /// Retrying cannot help (a refused `join`): stop and tell the user.
    Fatal,
}

impl RetryClass {
    /// The class as the docs and the JSON rules write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Rejoin => "rejoin",
            Self::Retry => "retry",
            Self::Fatal => "fatal",
        }
    }
}

/// The WebSocket close codes the server uses.
pub mod close_code {
    /// After `leave`.
    pub const NORMAL: u16 = 1000;
    /// The server shut down after draining.
    pub const GOING_AWAY: u16 = 1001;
    /// A refused handshake, a timeout, a slow consumer, a session taken over by a resume, or
    /// a peer kicked or a room closed by an operator.
    pub const POLICY: u16 = 1008;
    /// A frame that breaks RFC 6455 (unmasked, reserved opcode or bits, oversize control).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8 (RFC 6455 section 8.1 fails the socket).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame larger than `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// A fault on the server's side (`internal`).
    pub const INTERNAL: u16 = 1011;
    /// A limit of the server (room full, too many sessions, draining), or a cluster node that
    /// lost its shared store: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How every client reconnects and acknowledges: one statement of the rules that the Rust SDK
/// and the JS client both follow (`docs/protocol.md`, "Client rules"; a test compares the JS
/// client's table with `ClientRules::v1`).
pub mod client_rules {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::Serialize;

    use super::{ErrorCode, RetryClass};

    /// The first reconnect delay; each failed attempt doubles it, up to [`BACKOFF_MAX`].
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
    /// The longest reconnect delay.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
    /// Each delay is scaled by a random factor in `[1 - BACKOFF_JITTER, 1]`.
    pub const BACKOFF_JITTER: f64 = 0.5;
    /// Acknowledge after this many unacknowledged frames...
    pub const ACK_EVERY: u64 = 16;
    /// ...or this long after the first unacknowledged one, whichever comes first.
    pub const ACK_DELAY: Duration = Duration::from_millis(200);
    /// A client that numbers its frames (`cseq`) sends a `ping`, whose `pong` confirms them,
    /// after this many numbered frames since its last `ping`...
    pub const CONFIRM_EVERY: u64 = 16;
    /// ...or this long after the first of them, whichever comes first.
    pub const CONFIRM_DELAY: Duration = Duration::from_secs(1);
    /// A client sends a `stats` report per connected peer when its selected candidate pair
    /// changes, and at least this often while it stays.
    pub const STATS_EVERY: Duration = Duration::from_secs(15);
    /// A client sends its offer again when no answer came this long after it: a signal to a
    /// peer whose session ended meanwhile is lost (`unknown_peer`), and while an offer waits
    /// no new one can be made.
    pub const OFFER_RESEND: Duration = Duration::from_secs(5);

    /// The reconnect delay before attempt `attempt` (1 for the first), before jitter:
    /// `min(BACKOFF_MAX, BACKOFF_INITIAL * 2^(attempt-1))`.
    pub fn backoff_ceiling(attempt: u32) -> Duration {
        BACKOFF_INITIAL
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(BACKOFF_MAX)
    }

    /// The rules as data (what the JS client's table must equal).
    #[derive(Debug, Serialize, PartialEq)]
    pub struct ClientRules {
        pub backoff: Backoff,
        pub ack: Ack,
        pub confirm: Confirm,
        pub stats: Stats,
        pub offer: Offer,
        /// Per error code: the close code (none: the socket stays open) and the retry class.
        pub errors: BTreeMap<&'static str, ErrorRule>,
    }

    #[derive(Debug, Serialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct Backoff {
        pub initial_ms: u64,
        pub max_ms: u64,
        pub factor: u32,
        pub jitter: f64,
    }

    #[derive(Debug, Serialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct Ack {
        pub every: u64,
        pub delay_ms: u64,
    }

    #[derive(Debug, Serialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct Confirm {
        pub every: u64,
        pub delay_ms: u64,
    }

    #[derive(Debug, Serialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct Stats {
        pub every_ms: u64,
    }

    #[derive(Debug, Serialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct Offer {
        pub resend_after_ms: u64,
    }

    #[derive(Debug, Serialize, PartialEq)]
    pub struct ErrorRule {
        pub close: Option<u16>,
        pub retry: RetryClass,
    }

    impl ClientRules {
        /// The rules of protocol version 1.
        pub fn v1() -> Self {
            Self {
                backoff: Backoff {
                    initial_ms: BACKOFF_INITIAL.as_millis() as u64,
                    max_ms: BACKOFF_MAX.as_millis() as u64,
                    factor: 2,
                    jitter: BACKOFF_JITTER,
                },
                ack: Ack {
                    every: ACK_EVERY,
                    delay_ms: ACK_DELAY.as_millis() as u64,
                },
                confirm: Confirm {
                    every: CONFIRM_EVERY,
                    delay_ms: CONFIRM_DELAY.as_millis() as u64,
                },
                stats: Stats {
                    every_ms: STATS_EVERY.as_millis() as u64,
                },
                offer: Offer {
                    resend_after_ms: OFFER_RESEND.as_millis() as u64,
                },
                errors: ErrorCode::ALL
                    .iter()
                    .map(|code| {
                        let rule = ErrorRule {
                            close: code.close_code(),
                            retry: code.retry_class(),
                        };
                        (code.as_str(), rule)
                    })
                    .collect(),
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a room id: 1 to 64 characters of `[A-Za-z0-9_.-]`, but not `.` or `..` (a URL path
/// segment that HTTP clients resolve away, so `/ws/..` could never reach the room).
pub fn is_valid_room_id(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room != "."
        && room != ".."
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a display name: 1 to 64 characters, none of them control characters or invisible
/// characters that change how the rest displays ([`is_invisible_format`]).
pub fn is_valid_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=64).contains(&count)
        && !name
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
}

/// Characters that show nothing themselves (or change how the text around them displays), so
/// a name could pass for another's or look empty: bidirectional overrides, embeddings and
/// isolates (U+202A-U+202E, U+2066-U+2069) and marks (U+200E, U+200F, U+061C), the zero-width
/// space and its kin (U+200B, U+2060-U+2064, U+FEFF, U+00AD, U+034F, U+180E), the blank Hangul
/// fillers (U+115F, U+1160, U+3164, U+FFA0) and line or paragraph separators (U+2028, U+2029).
/// The zero-width joiner and non-joiner (U+200C, U+200D) stay: emoji sequences and several
/// scripts need them.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180E}'
            | '\u{3164}'
            | '\u{FFA0}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_newest_shared_version() {
        assert_eq!(negotiate_version(&[1]), Some(1));
        assert_eq!(negotiate_version(&[1, 7]), Some(1));
        assert_eq!(negotiate_version(&[2, 3]), None);
        assert_eq!(negotiate_version(&[]), None);
    }

    /// protocol.md: an optional field that is `null` (or an `ice_restart` that is `false`)
    /// arrives absent.
    #[test]
    fn a_null_or_false_ice_restart_is_read_and_forwarded_as_absent() {
        for flag in ["null", "false"] {
            let text = format!(r#"{{"kind":"offer","sdp":"v=0","ice_restart":{flag}}}"#);
            let signal: Signal = serde_json::from_str(&text).unwrap();
            assert_eq!(
                serde_json::to_value(&signal).unwrap(),
                serde_json::json!({"kind":"offer","sdp":"v=0"}),
                "{text}"
            );
        }
        let restart: Signal =
            serde_json::from_str(r#"{"kind":"offer","sdp":"v=0","ice_restart":true}"#).unwrap();
        assert!(matches!(
            restart,
            Signal::Offer {
                ice_restart: true,
                ..
            }
        ));
    }

    #[test]
    fn server_frames_are_flat_objects_with_seq() {
        let frame = ServerFrame {
            seq: 7,
            message: ServerMessage::Error {
                code: ErrorCode::UnknownPeer,
                message: "no such peer".into(),
                reference: Some(3),
            },
        };
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq":7,"type":"error","code":"unknown_peer","message":"no such peer","ref":3})
        );
        let back: ServerFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn error_code_strings_match_serde() {
        for code in [
            ErrorCode::UnsupportedVersion,
            ErrorCode::ReplayOverflow,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn every_code_has_a_rule_and_the_backoff_doubles_to_its_cap() {
        let rules = client_rules::ClientRules::v1();
        assert_eq!(rules.errors.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            // A code that ends the session always closes the socket.
            if matches!(code.retry_class(), RetryClass::Rejoin | RetryClass::Fatal) {
                assert!(code.close_code().is_some(), "{code}");
            }
        }
        use client_rules::backoff_ceiling;
        assert_eq!(backoff_ceiling(1), client_rules::BACKOFF_INITIAL);
        assert_eq!(backoff_ceiling(3), client_rules::BACKOFF_INITIAL * 4);
        assert_eq!(backoff_ceiling(40), client_rules::BACKOFF_MAX);
    }

    #[test]
    fn room_and_name_validation() {
        assert!(is_valid_room_id("demo-1.room_A"));
        assert!(!is_valid_room_id(""));
        assert!(!is_valid_room_id("a/b"));
        assert!(!is_valid_room_id("."));
        assert!(!is_valid_room_id(".."));
        assert!(is_valid_room_id("..."));
        assert!(!is_valid_room_id(&"x".repeat(65)));
        assert!(is_valid_name("Zoë"));
        assert!(!is_valid_name("a\nb"));
        assert!(!is_valid_name(""));
        // Names that would display as another's: right-to-left override, zero-width space,
        // line separator, byte order mark.
        for spoof in [
            "Bob\u{202E}gpj.exe",
            "Al\u{200B}ice",
            "A\u{2028}B",
            "\u{FEFF}Eve",
            "\u{3164}",
            "Ma\u{00AD}llory",
        ] {
            assert!(!is_valid_name(spoof), "{spoof:?}");
        }
        assert!(is_valid_name("José María"));
        assert!(is_valid_name("محمد"));
        assert!(
            is_valid_name("👩\u{200D}💻"),
            "a zero-width joiner joins an emoji"
        );
    }
}
