//! The protocol over plain HTTP, for clients whose WebSockets are blocked
//! (`docs/protocol.md`, "When WebSockets are blocked"): `open` creates or takes over a session,
//! `events` (Server-Sent Events) or `poll` (long-polling) carry its frames to the client, and
//! `send` carries the client's frames to it.
//!
//! Nothing here is sticky: every request names its session by token, and a stream request
//! re-attaches the session to the node that serves it, exactly like a `resume` (quietly: no
//! `resumed` frame). Between stream requests the session is parked as if its socket dropped,
//! so everything the hub promises (order, exactly once, replay, grace) holds unchanged, on one
//! node or across a cluster.

mod send_rate;
mod stream;

pub use send_rate::SendRates;
pub use stream::{events, poll};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::admission::Admission;
use crate::api::Transport;
use crate::client_request::ClientRequest;
use crate::error::RequestError;
use crate::hub::{Flow, encode};
use crate::listener::BodyTooSlow;
use crate::protocol::{
    ClientMessage, ErrorCode, HttpOpened, LeaveReason, RequestId, ResumeToken, RoomId, ServerFrame,
    ServerMessage, http,
};
use crate::rate_limit::message_cost;

/// The HTTP status of a refusal with `code` (the table in `docs/protocol.md`).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidMessage
        | ErrorCode::UnsupportedVersion
        | ErrorCode::InvalidRoomId
        | ErrorCode::InvalidName
        | ErrorCode::NotJoined
        | ErrorCode::BinaryNotSupported
        | ErrorCode::AlreadyJoined
        | ErrorCode::UnknownPeer => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::ResumeFailed
        | ErrorCode::ReplayOverflow
        | ErrorCode::SlowConsumer
        | ErrorCode::Kicked
        | ErrorCode::RoomClosed => StatusCode::GONE,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RoomFull
        | ErrorCode::TooManyRooms
        | ErrorCode::TooManySessions
        | ErrorCode::Draining
        | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal: the status of its code, and one error frame (`seq` 0) as the body. Counted.
/// `Retry-After` (429 and 503) is 1 s, or for `draining` the `--reconnect-after` that the
/// `draining` message suggests (whole seconds, at least 1).
pub fn refusal(app: &AppState, error: RequestError) -> Response {
    refusal_of(app, error, None)
}

/// A [`refusal`] of the request frame whose `id` was `reference` (the frame's `ref`).
fn refusal_of(app: &AppState, error: RequestError, reference: Option<RequestId>) -> Response {
    let retry_after = match error.code {
        ErrorCode::Draining => app.config.reconnect_after.as_secs_f64().ceil().max(1.0) as u64,
        _ => 1,
    };
    refusal_after(app, error, reference, retry_after)
}

/// A refusal whose `Retry-After` (for 429 and 503) is `retry_after` seconds.
fn refusal_after(
    app: &AppState,
    error: RequestError,
    reference: Option<RequestId>,
    retry_after: u64,
) -> Response {
    app.metrics.error(error.code);
    tracing::debug!(code = %error.code, message = %error.message, "HTTP transport refusal");
    let status = status_of(error.code);
    let body = encode(&ServerFrame {
        seq: 0,
        message: ServerMessage::Error {
            code: error.code,
            message: error.message.into_owned(),
            reference,
        },
    });
    let mut response = (status, json_body(body.as_str().to_owned())).into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    response
}

/// A JSON body that no cache keeps.
fn json_body(body: String) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

/// The `session` query parameter.
fn session_token(query: &HashMap<String, String>) -> Result<ResumeToken, RequestError> {
    query
        .get(http::SESSION_PARAM)
        .filter(|t| !t.is_empty())
        .map(|t| ResumeToken(t.clone()))
        .ok_or_else(|| {
            RequestError::new(
                ErrorCode::InvalidMessage,
                "the session query parameter is missing",
            )
        })
}

/// A request body of at most `max_message_bytes` (a larger `Content-Length` is refused before
/// a byte of the body is read), which must arrive within `--header-read-timeout`; one that
/// cannot be read (a malformed chunked encoding) is `invalid_message`.
async fn read_body(app: &AppState, body: Body) -> Result<axum::body::Bytes, RequestError> {
    let limit = app.config.max_message_bytes;
    let too_large = || {
        RequestError::new(
            ErrorCode::MessageTooLarge,
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = cause {
            if error.is::<BodyTooSlow>() {
                return RequestError::new(ErrorCode::InvalidMessage, BodyTooSlow.to_string());
            }
            // The connection's own failure (a chunk size that is not one, a body cut short),
            // not the limit.
            if error.is::<hyper::Error>() {
                return RequestError::new(
                    ErrorCode::InvalidMessage,
                    format!("the request body could not be read: {error}"),
                );
            }
            cause = error.source();
        }
        too_large()
    })
}

/// `POST /http`: open with a `join` naming its room, or a `resume`.
pub async fn open(State(app): State<Arc<AppState>>, client: ClientRequest, body: Body) -> Response {
    open_session(app, None, client, body).await
}

/// `POST /http/{room}`: open in the room of the URL.
pub async fn open_room(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    client: ClientRequest,
    body: Body,
) -> Response {
    open_session(app, Some(RoomId(room)), client, body).await
}

async fn open_session(
    app: Arc<AppState>,
    path_room: Option<RoomId>,
    client: ClientRequest,
    body: Body,
) -> Response {
    app.metrics.http_request("open");
    match try_open(&app, path_room, &client, body).await {
        Ok(token) => {
            let body = serde_json::to_string(&HttpOpened { session: token }).unwrap_or_default();
            json_body(body).into_response()
        }
        Err((error, reference)) => refusal_of(&app, error, reference),
    }
}

/// Runs a request's work on the hub in a task of its own, so that it completes even when the
/// request is dropped half-way (its client gave up while Redis answered): a session is then
/// never left attached to a queue nobody reads. `what` names the work in the `internal` error
/// of a task that panicked.
async fn to_completion<T: Send + 'static>(
    what: &str,
    work: impl Future<Output = Result<T, RequestError>> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::spawn(work)
        .await
        .map_err(|e| RequestError::new(ErrorCode::Internal, format!("{what} failed: {e}")))?
}

/// The session's token, or the refusal with the `id` of the frame it answers (once parsed).
async fn try_open(
    app: &Arc<AppState>,
    path_room: Option<RoomId>,
    client: &ClientRequest,
    body: Body,
) -> Result<ResumeToken, (RequestError, Option<RequestId>)> {
    let unparsed = |e| (e, None);
    client.check_origin(app).map_err(unparsed)?;
    let ip_slot = client.address_slot(app).map_err(unparsed)?;
    let claims = client.claims(app).map_err(unparsed)?;
    let body = read_body(app, body).await.map_err(unparsed)?;
    let message: ClientMessage = serde_json::from_slice(&body).map_err(|e| {
        let error = RequestError::new(
            ErrorCode::InvalidMessage,
            crate::session::short(e.to_string()),
        );
        (error, None)
    })?;
    let reference = message.request_id();
    // The session is attached to a queue nobody reads for the length of this request, then
    // parked: its frames, `welcome` or `resumed` included, wait in its outbox for a stream.
    // In a task of its own: a client that gives up on the request (its connection dropped
    // while Redis answers) must not leave the session attached to a queue nobody will read.
    let (tx, _rx) = app.outbound_queue();
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let task_app = Arc::clone(app);
    let attached = to_completion("opening", async move {
        let app = &task_app;
        let door = Admission {
            app,
            conn,
            tx: &tx,
            path_room: path_room.as_ref(),
            claims: claims.as_ref(),
            ip_slot: &ip_slot,
            transport: Transport::Http,
        };
        let attached = door.admit(message).await?;
        app.hub
            .detach(attached.key, conn, LeaveReason::Disconnected)
            .await;
        Ok(attached)
    })
    .await
    .map_err(|e| (e, reference))?;
    tracing::info!(
        peer = %attached.peer,
        room = %attached.room,
        name = attached.name.as_deref().unwrap_or(""),
        "opened over HTTP"
    );
    Ok(attached.token)
}

/// `POST /http/send?session=S`: one client frame, or an array of them, handled in order.
pub async fn send(State(app): State<Arc<AppState>>, client: ClientRequest, body: Body) -> Response {
    app.metrics.http_request("send");
    match try_send(&app, &client, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((error, retry_after)) => refusal_after(&app, error, None, retry_after),
    }
}

async fn try_send(
    app: &AppState,
    client: &ClientRequest,
    body: Body,
) -> Result<(), (RequestError, u64)> {
    let plain = |e| (e, 1);
    client.check_origin(app).map_err(plain)?;
    let token = session_token(&client.query).map_err(plain)?;
    let body = read_body(app, body).await.map_err(plain)?;
    let messages = parse_frames(&body).map_err(plain)?;
    if messages.is_empty() {
        return Ok(());
    }
    let config = app.live();
    let now = Instant::now();
    // One token a frame, a broadcast one per started KiB (`rate_limit::message_cost`).
    let cost: usize = messages.iter().map(message_cost).sum();
    if let Err(wait) = app.send_rates.check(&token, cost, now) {
        let error = if cost as f64 > config.rate_burst {
            RequestError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "a send holds at most {} frames, a broadcast counting one per KiB (the message burst)",
                    config.rate_burst
                ),
            )
        } else {
            RequestError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages/s (burst {}; a broadcast counts one per KiB): nothing of this send was handled; retry it",
                    config.rate_limit, config.rate_burst
                ),
            )
        };
        return Err((error, wait.as_secs_f64().ceil().max(1.0) as u64));
    }
    match app.hub.handle_by_token(&token, messages).await {
        Ok(Flow::Continue | Flow::Left) => {
            app.send_rates.take(&token, cost, now);
            Ok(())
        }
        // The send ended the session (its replies overflowed the replay buffer of a parked
        // session, say): answered with the session's end, as the next request would be.
        Ok(Flow::Gone) => Err(plain(app.hub.why_gone(&token).await)),
        Ok(Flow::Retry(why)) => Err(plain(RequestError::unavailable(why))),
        Err(error) => Err(plain(error)),
    }
}

/// One frame or an array of frames; every one must parse, or none is handled. Each is read
/// from the body's own text, as strictly as a WebSocket frame (a key written twice is refused).
fn parse_frames(body: &[u8]) -> Result<Vec<ClientMessage>, RequestError> {
    use serde::de::DeserializeSeed as _;
    let failed_at = std::cell::Cell::new(None);
    let mut json = serde_json::Deserializer::from_slice(body);
    let frames = SendBody {
        failed_at: &failed_at,
    }
    .deserialize(&mut json)
    .and_then(|frames| json.end().map(|()| frames));
    frames.map_err(|e| {
        let message = match failed_at.get() {
            Some(index) => format!("frame {index}: {e}"),
            None => e.to_string(),
        };
        RequestError::new(ErrorCode::InvalidMessage, crate::session::short(message))
    })
}

/// Reads the body of a `send`: one frame, or an array of them, noting in `failed_at` the index
/// of a frame of the array that does not parse (the error names it).
struct SendBody<'a> {
    failed_at: &'a std::cell::Cell<Option<usize>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for SendBody<'_> {
    type Value = Vec<ClientMessage>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SendBody<'_> {
    type Value = Vec<ClientMessage>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a frame (an object) or an array of frames")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut frames = Vec::new();
        loop {
            self.failed_at.set(Some(frames.len()));
            match seq.next_element::<ClientMessage>()? {
                Some(frame) => frames.push(frame),
                None => {
                    self.failed_at.set(None);
                    return Ok(frames);
                }
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let deserializer = serde::de::value::MapAccessDeserializer::new(map);
        <ClientMessage as serde::Deserialize>::deserialize(deserializer).map(|frame| vec![frame])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_body_is_one_frame_or_an_array_and_a_bad_frame_is_named() {
        assert_eq!(parse_frames(br#"{"type":"ping"}"#).unwrap().len(), 1);
        assert_eq!(
            parse_frames(br#"[{"type":"ping"},{"type":"ack","seq":3}]"#)
                .unwrap()
                .len(),
            2
        );
        assert!(parse_frames(b"[]").unwrap().is_empty());
        let error = parse_frames(br#"[{"type":"ping"},{"type":"nope"}]"#).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidMessage);
        assert!(error.message.starts_with("frame 1:"), "{}", error.message);
        // Its position once, from where the parser stopped.
        let error = parse_frames(br#"[{"type":"ping"},{"type":"ack"}]"#).unwrap_err();
        let message = &error.message;
        assert!(message.starts_with("frame 1: missing field"), "{message}");
        assert_eq!(message.matches(" at line ").count(), 1, "{message}");
        // A key written twice, at the top or inside a broadcast's data, as on a WebSocket.
        for bad in [
            r#"{"type":"ping","id":6,"id":7}"#,
            r#"[{"type":"ack","seq":1,"seq":2}]"#,
            r#"[{"type":"ping"},{"type":"broadcast","data":{"a":1,"a":2}}]"#,
            r#"{"type":"broadcast","data":1,"data":2}"#,
        ] {
            let error = parse_frames(bad.as_bytes()).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidMessage, "{bad}");
            assert!(
                error.message.contains("duplicate"),
                "{bad}: {}",
                error.message
            );
        }
        for bad in ["1", "\"ping\"", "null"] {
            assert!(parse_frames(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
