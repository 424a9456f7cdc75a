//! Errors: [`RequestError`] is caused by a client and becomes an `error` message with a code;
//! [`Error`] is fatal to the server (bad configuration, cannot bind).

use std::borrow::Cow;

use crate::protocol::{ErrorCode, RoomId};

/// A client-caused failure: answered with `{"type":"error","code":...}`, counted, and the
/// connection decides whether to continue or close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    /// The stable code the client sees.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: Cow<'static, str>,
}

impl RequestError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The refusal of a `resume` of a session that ended with `code` (its tombstone): the
    /// message of that code's end, so a client learns an operator's kick or close in the same
    /// words on a live socket or later (an end by the memory budget said more at the time).
    pub(crate) fn ended(code: ErrorCode) -> Self {
        Self::new(code, crate::hub::ended_message(code))
    }

    /// `unavailable` (close 1013, HTTP 503): a cluster node cannot serve the request now; the
    /// client tries again shortly, on any node.
    pub(crate) fn unavailable(why: Unavailable) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            match why {
                Unavailable::StoreUnreachable => {
                    "the server cannot reach its shared store: try again shortly"
                }
                Unavailable::RoomMoving => {
                    "the room is moving between the nodes of the shared store: try again shortly"
                }
            },
        )
    }

    /// The refusal of a join or resume while the server drains.
    pub(crate) fn draining() -> Self {
        Self::new(ErrorCode::Draining, "the server is shutting down")
    }

    /// The refusal of a new session past `--max-sessions`.
    pub(crate) fn too_many_sessions() -> Self {
        Self::new(
            ErrorCode::TooManySessions,
            "the server holds its maximum number of sessions",
        )
    }

    /// The refusal of a new room past `--max-rooms`.
    pub(crate) fn too_many_rooms() -> Self {
        Self::new(
            ErrorCode::TooManyRooms,
            "the server holds its maximum number of rooms",
        )
    }

    /// The refusal of a join to `room`, which holds its `capacity` of peers.
    pub(crate) fn room_full(room: &RoomId, capacity: usize) -> Self {
        Self::new(
            ErrorCode::RoomFull,
            format!("room {room} already has {capacity} peers"),
        )
    }
}

/// Why a cluster node cannot serve a request now: what its `unavailable` error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Its shared store (Redis) does not answer.
    StoreUnreachable,
    /// The request's room is moving between the nodes of a Redis Cluster (resharding): that
    /// room's requests fail until the move ends; the node and its other rooms are fine.
    RoomMoving,
}

/// A fault that stops the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Socket I/O failed (binding, serving).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A service the configuration names could not be used at start-up (Redis).
    #[error("{0}")]
    Unreachable(String),
}
