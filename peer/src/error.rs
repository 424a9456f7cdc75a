//! The SDK's error type: one variant per way a peer operation can fail.

use signaling::protocol::{ErrorCode, PeerId};

/// Everything that can go wrong in the peer SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The signaling URL is not a `ws://` or `wss://` URL.
    #[error("invalid signaling URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },

    /// The WebSocket to the signaling server could not be opened or broke.
    #[error("signaling connection failed: {0}")]
    SignalingConnect(#[from] Box<tokio_tungstenite::tungstenite::Error>),

    /// The URL answered an HTTP page (`status`: a success, or 404) instead of opening a
    /// WebSocket: it is not a signaling endpoint (a page's URL such as `/r/ROOM`, or a path
    /// the server does not serve). The signaling URL is `ws://HOST:PORT/ws/ROOM` (or `wss://`).
    #[error(
        "signaling connection failed: the server answered HTTP {status} instead of opening a \
         WebSocket (not a signaling URL: use ws://HOST:PORT/ws/ROOM, or wss://)"
    )]
    NotSignaling { status: u16 },

    /// The `wss://` signaling server's TLS certificate failed verification against the
    /// trusted CAs (the system bundle plus [`PeerOptions::ca`](crate::PeerOptions::ca)):
    /// issued by an unknown CA (e.g. self-signed), expired, or for another name.
    #[error("signaling server certificate not trusted: {source}")]
    UntrustedCertificate {
        /// `rustls::Error::InvalidCertificate`, saying why.
        #[source]
        source: tokio_rustls::rustls::Error,
    },

    /// A `wss://` signaling server answered in plain text, not TLS (it serves `ws://`).
    #[error("signaling connection failed: {source}")]
    NotTls {
        /// `rustls::Error::InvalidMessage`, what the first bytes were.
        #[source]
        source: tokio_rustls::rustls::Error,
    },

    /// The CAs to trust for TLS could not be loaded (an unreadable CA file, or nothing to
    /// trust).
    #[error("TLS trust: {0}")]
    TlsRoots(#[from] crate::TlsRootsError),

    /// The signaling server refused a request or ended the session.
    #[error("signaling server error {code}: {message}")]
    Signaling { code: ErrorCode, message: String },

    /// The signaling server sent something this client does not understand.
    #[error("signaling protocol violation: {0}")]
    Protocol(String),

    /// The signaling server did not answer in time.
    #[error("signaling server did not answer within {0:?}")]
    SignalingTimeout(std::time::Duration),

    /// The signaling session is over (left, or could not be resumed or re-joined).
    #[error("signaling session closed")]
    SessionClosed,

    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),

    /// No open data channel of that kind to that peer.
    #[error("no open {kind} data channel to peer {peer}")]
    ChannelNotOpen {
        peer: PeerId,
        kind: crate::ChannelKind,
    },

    /// A message over the data channels' size limit ([`crate::MAX_MESSAGE_BYTES`]): nothing
    /// was sent, and the channel stays open.
    #[error("a message of {size} bytes is over the {max}-byte limit of a data-channel message")]
    MessageTooLarge { size: usize, max: usize },

    /// The connection to the peer was replaced by a new one while the message was sent: it
    /// may not arrive (the messages sent before go again on the new connection).
    #[error("the connection was replaced while the message was sent: it may not arrive")]
    Replaced,

    /// The SDK's background task has stopped (the `Peer` was closed).
    #[error("peer is closed")]
    Closed,

    /// A JSON encoding failure (never expected with our own types).
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for PeerError {
    /// A TLS handshake that failed on the server's certificate becomes
    /// [`PeerError::UntrustedCertificate`], one with a server that does not speak TLS
    /// [`PeerError::NotTls`]; an upgrade the server refused with an `error` frame
    /// as its body (an invalid token, a full server: `docs/protocol.md`) becomes
    /// [`PeerError::Signaling`] with its code and message; a page instead of the upgrade
    /// (a success, or 404) [`PeerError::NotSignaling`]; anything else
    /// [`PeerError::SignalingConnect`].
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        use signaling::protocol::{ServerFrame, ServerMessage};
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::error::TlsError;
        if let WsError::Http(response) = &err
            && let Some(body) = response.body()
            && let Ok(ServerFrame {
                message: ServerMessage::Error { code, message, .. },
                ..
            }) = serde_json::from_slice::<ServerFrame>(body)
        {
            return Self::Signaling { code, message };
        }
        if let WsError::Http(response) = &err
            && (response.status().is_success() || response.status().as_u16() == 404)
        {
            return Self::NotSignaling {
                status: response.status().as_u16(),
            };
        }
        let rustls_error = match &err {
            // tokio-rustls reports a failed handshake as an I/O error wrapping rustls's.
            WsError::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>()),
            WsError::Tls(TlsError::Rustls(rustls)) => Some(rustls.as_ref()),
            _ => None,
        };
        match rustls_error {
            Some(source @ tokio_rustls::rustls::Error::InvalidCertificate(_)) => {
                Self::UntrustedCertificate {
                    source: source.clone(),
                }
            }
            // Its first bytes are no TLS record: a plain `ws://` server.
            Some(source @ tokio_rustls::rustls::Error::InvalidMessage(_)) => Self::NotTls {
                source: source.clone(),
            },
            _ => Self::SignalingConnect(Box::new(err)),
        }
    }
}

/// Shorthand for results of the SDK.
pub type Result<T, E = PeerError> = std::result::Result<T, E>;
