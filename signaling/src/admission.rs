//! Admitting a `join` or `resume`: version negotiation, the join rate of the client's address,
//! the room (URL or message), the name, auth, then the hub. Shared by the WebSocket task and
//! the HTTP transports' open request, so both refuse the same things with the same codes.

use std::time::Instant;

use crate::AppState;
use crate::api::Transport;
use crate::auth::{Claims, check_grant};
use crate::client_ip::IpSlot;
use crate::error::RequestError;
use crate::hub::{Attached, ConnId, JoinRequest, OutboundTx, ResumeFrom, ResumeRequest};
use crate::protocol::{
    ClientMessage, ErrorCode, RequestId, ResumeToken, RoomId, SUPPORTED_VERSIONS, close_code,
    is_valid_name, is_valid_room_id, negotiate_version,
};

/// Where a session is being opened: the connection's id and queue, and what its HTTP request
/// said.
pub struct Admission<'a> {
    pub app: &'a AppState,
    pub conn: ConnId,
    pub tx: &'a OutboundTx,
    /// The room named by the URL, not validated yet.
    pub path_room: Option<&'a RoomId>,
    /// The claims of a valid `?token=`.
    pub claims: Option<&'a Claims>,
    pub ip_slot: &'a IpSlot,
    /// How the client connects (what the admin API lists).
    pub transport: Transport,
}

impl Admission<'_> {
    /// Admits `message`, which must be `join` or `resume` (anything else: `not_joined`). On
    /// success the session is attached to `tx`.
    pub async fn admit(&self, message: ClientMessage) -> Result<Attached, RequestError> {
        let reference = message.request_id();
        match message {
            ClientMessage::Join {
                versions,
                room,
                name,
                token,
                ..
            } => {
                let received = Instant::now();
                let joined = self.join(reference, &versions, room, name, token).await;
                if joined.is_ok() {
                    let latency = received.elapsed().as_secs_f64();
                    self.app.metrics.join_latency.observe(latency);
                }
                joined
            }
            ClientMessage::Resume {
                versions,
                resume_token,
                last_seq,
                ..
            } => {
                self.resume(reference, &versions, resume_token, last_seq)
                    .await
            }
            _ => Err(RequestError::new(
                ErrorCode::NotJoined,
                "send join or resume first",
            )),
        }
    }

    async fn join(
        &self,
        reference: Option<RequestId>,
        versions: &[u32],
        room: Option<RoomId>,
        name: Option<String>,
        token: Option<String>,
    ) -> Result<Attached, RequestError> {
        let version = negotiate(versions)?;
        if !self.ip_slot.try_join(Instant::now()) {
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many joins from this address (at most {}/s, burst {})",
                    self.app.config.join_rate_per_ip, self.app.config.join_burst_per_ip
                ),
            ));
        }
        let ticket = self.ip_slot.try_session().ok_or_else(|| {
            RequestError::new(
                ErrorCode::TooManySessions,
                format!(
                    "this address holds its maximum number of sessions ({})",
                    self.app.config.max_sessions_per_ip
                ),
            )
        })?;
        let room = match (room, self.path_room) {
            (Some(asked), Some(path)) if &asked != path => {
                return Err(RequestError::new(
                    ErrorCode::InvalidRoomId,
                    format!("join names room {asked} but the URL names {path}"),
                ));
            }
            (Some(asked), _) => asked,
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(RequestError::new(
                    ErrorCode::InvalidRoomId,
                    "no room: give it in the URL (/ws/ROOM) or in join",
                ));
            }
        };
        if !is_valid_room_id(room.as_str()) {
            return Err(RequestError::new(
                ErrorCode::InvalidRoomId,
                "room ids are 1 to 64 characters of [A-Za-z0-9_.-], not . or ..",
            ));
        }
        if name.as_deref().is_some_and(|n| !is_valid_name(n)) {
            return Err(RequestError::new(
                ErrorCode::InvalidName,
                "names are 1 to 64 characters, without control or invisible formatting characters",
            ));
        }
        let name = match self.app.live().auth.clone() {
            None => name,
            Some(auth) => {
                let claims = match token {
                    Some(token) => auth.verify(&token)?,
                    None => self.claims.cloned().ok_or_else(|| {
                        RequestError::new(
                            ErrorCode::Unauthorized,
                            "this server requires a token (?token= or in join)",
                        )
                    })?,
                };
                check_grant(&claims, &room, name)?
            }
        };
        self.app
            .hub
            .join(
                self.conn,
                self.tx,
                JoinRequest {
                    reference,
                    version,
                    room,
                    name,
                    ticket: Some(ticket),
                    transport: self.transport,
                    alone: false,
                },
            )
            .await
    }

    async fn resume(
        &self,
        reference: Option<RequestId>,
        versions: &[u32],
        token: ResumeToken,
        last_seq: u64,
    ) -> Result<Attached, RequestError> {
        let version = negotiate(versions)?;
        self.app
            .hub
            .resume(
                self.conn,
                self.tx,
                ResumeRequest {
                    reference,
                    version,
                    token,
                    from: ResumeFrom::After(last_seq),
                    announce: true,
                    ticket: self.ip_slot.try_session(),
                },
            )
            .await
    }
}

/// How a socket is closed after a refused `join`/`resume` with `code`: the code's own close
/// code ([`ErrorCode::close_code`]); a refused join rate closes with 1013 (try again later);
/// any other refusal with 1008.
pub fn refusal_close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::RateLimited => close_code::TRY_AGAIN_LATER,
        code => code.close_code().unwrap_or(close_code::POLICY),
    }
}

fn negotiate(offered: &[u32]) -> Result<u32, RequestError> {
    negotiate_version(offered).ok_or_else(|| {
        RequestError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "the server speaks versions {SUPPORTED_VERSIONS:?}, the client offered {offered:?}"
            ),
        )
    })
}
