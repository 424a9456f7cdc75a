//! The server -> client side of the HTTP transports: `GET /http/events` (Server-Sent Events)
//! and `GET /http/poll` (long-polling). Each request re-attaches its session to this node, as
//! a quiet `resume` from the client's position, and detaches (parks) it when it ends; the
//! frames come through the same bounded outbound queue as a WebSocket's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::{json_body, refusal, session_token, to_completion};
use crate::AppState;
use crate::client_ip::IpSlot;
use crate::client_request::ClientRequest;
use crate::cluster::inbox::frame_seq;
use crate::error::RequestError;
use crate::hub::{ConnId, Outbound, OutboundRx, OutboundTx, ResumeFrom, ResumeRequest, SessionKey};
use crate::listener::{HttpSlot, SlotLoan};
use crate::open_connections::ConnectionGuard;
use crate::outbox::Frame;
use crate::protocol::{ErrorCode, LeaveReason, SUPPORTED_VERSIONS, http};

/// A session attached to this request. Dropping it (the client went away mid-request) parks
/// the session, as a dropped socket does.
struct StreamSession {
    app: Arc<AppState>,
    key: SessionKey,
    conn: ConnId,
    /// Our own handle on the queue: it never reports "closed"; the hub closes explicitly.
    _tx: OutboundTx,
    rx: OutboundRx,
    /// Frames after the client's position, to write before the queue's.
    replay: Vec<Frame>,
    _open: ConnectionGuard,
    _ip_slot: IpSlot,
    /// The connection is out of `--max-http-connections` while the stream counts as one.
    _http_slot: Option<SlotLoan>,
    detached: bool,
}

impl StreamSession {
    /// Parks the session (unless it was taken over or ended meanwhile: then nothing happens)
    /// and waits for it.
    async fn detach(mut self) {
        self.detached = true;
        let _ = self.park().await;
    }

    /// Parks the session in a task of its own: the park completes even if this request is
    /// dropped meanwhile.
    fn park(&self) -> tokio::task::JoinHandle<()> {
        let (app, key, conn) = (Arc::clone(&self.app), self.key, self.conn);
        tokio::spawn(async move {
            app.hub.detach(key, conn, LeaveReason::Disconnected).await;
        })
    }
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        if !self.detached {
            self.park();
        }
    }
}

/// A stream request of `kind` (counted), attached after `last_seq`: its session, or the
/// refusal to answer (a bad position, a failed check or resume).
async fn open(
    app: &Arc<AppState>,
    kind: &'static str,
    http_slot: Option<Extension<HttpSlot>>,
    client: &ClientRequest,
    last_seq: Result<u64, RequestError>,
) -> Result<StreamSession, Response> {
    app.metrics.http_request(kind);
    let slot = http_slot.as_ref().map(|Extension(slot)| slot);
    let session = match last_seq {
        Ok(last_seq) => attach(app, slot, client, last_seq).await,
        Err(error) => Err(error),
    };
    session.map_err(|error| refusal(app, error))
}

/// The checks of a stream request (origin, connection limits), then the quiet resume.
async fn attach(
    app: &Arc<AppState>,
    http_slot: Option<&HttpSlot>,
    client: &ClientRequest,
    last_seq: u64,
) -> Result<StreamSession, RequestError> {
    client.check_origin(app)?;
    let token = session_token(&client.query)?;
    ClientRequest::connection_room(app)?;
    let ip_slot = client.address_slot(app)?;
    let (tx, rx) = app.outbound_queue();
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    // Open (a drain waits for it) while its resume runs; accepted once the resume took it.
    let open = app.connections.open_unaccepted();
    let http_slot = http_slot.map(HttpSlot::lend);
    let app = Arc::clone(app);
    // In a task of its own, which builds the `StreamSession` whose drop parks the session: a
    // request dropped while Redis answers never leaves the session attached to a dead queue.
    to_completion("attaching", async move {
        let attached = app
            .hub
            .resume(
                conn,
                &tx,
                ResumeRequest {
                    reference: None,
                    version: SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1],
                    token,
                    from: ResumeFrom::After(last_seq),
                    announce: false,
                    ticket: ip_slot.try_session(),
                },
            )
            .await?;
        open.accepted();
        Ok(StreamSession {
            _open: open,
            app,
            key: attached.key,
            conn,
            _tx: tx,
            rx,
            replay: attached.replay,
            _ip_slot: ip_slot,
            _http_slot: http_slot,
            detached: false,
        })
    })
    .await
}

/// A position given as `what` (`last_seq` or `Last-Event-ID`).
fn parse_seq(text: &str, what: &str) -> Result<u64, RequestError> {
    text.trim().parse().map_err(|_| {
        RequestError::new(
            ErrorCode::InvalidMessage,
            format!("{what} is an unsigned integer"),
        )
    })
}

/// The client's position: `Last-Event-ID`, else [`last_seq`].
fn position(client: &ClientRequest) -> Result<u64, RequestError> {
    if let Some(id) = client.headers.get("last-event-id") {
        return parse_seq(id.to_str().unwrap_or(""), "Last-Event-ID");
    }
    last_seq(client)
}

/// The client's `last_seq`, else 0.
fn last_seq(client: &ClientRequest) -> Result<u64, RequestError> {
    match client.query.get(http::LAST_SEQ_PARAM) {
        Some(seq) => parse_seq(seq, http::LAST_SEQ_PARAM),
        None => Ok(0),
    }
}

/// `GET /http/events?session=S`: the session's frames as Server-Sent Events.
pub async fn events(
    State(app): State<Arc<AppState>>,
    http_slot: Option<Extension<HttpSlot>>,
    client: ClientRequest,
) -> Response {
    let session = match open(&app, "events", http_slot, &client, position(&client)).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    // A small channel: a client that does not read holds up the writer, which then times out.
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(pump_events(session, body_tx));
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-transform"),
            // Asks buffering reverse proxies (nginx) to pass events on at once.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// One SSE event per frame; `id` is the frame's seq.
fn push_event(chunk: &mut String, frame: &Frame) {
    let seq = match frame {
        Frame::Numbered { seq, .. } => Some(*seq),
        Frame::Whole(text) => frame_seq(text),
    };
    if let Some(seq) = seq {
        chunk.push_str("id: ");
        chunk.push_str(&seq.to_string());
        chunk.push('\n');
    }
    chunk.push_str("data: ");
    frame.append_to(chunk);
    chunk.push_str("\n\n");
}

/// What the stream writes next.
enum Next {
    Write(String),
    /// Write this, then end the stream.
    Last(String),
    Stop,
}

/// At most this much is gathered into one chunk from what is already queued.
const CHUNK_BYTES: usize = 64 * 1024;

async fn pump_events(mut session: StreamSession, body: mpsc::Sender<Bytes>) {
    let app = Arc::clone(&session.app);
    let write_timeout = app.config.ping_timeout;
    let interval = app.config.ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A short reconnection delay for EventSource, then what the client missed.
    let mut first = String::from("retry: 1000\n\n");
    let replayed = session.replay.len() as u64;
    for frame in std::mem::take(&mut session.replay) {
        push_event(&mut first, &frame);
    }
    app.metrics.http_frames(replayed);
    let mut next = Next::Write(first);
    loop {
        let (chunk, last) = match next {
            Next::Write(chunk) => (chunk, false),
            Next::Last(chunk) => (chunk, true),
            Next::Stop => break,
        };
        let sent = tokio::time::timeout(write_timeout, body.send(Bytes::from(chunk))).await;
        if !matches!(sent, Ok(Ok(()))) || last {
            break;
        }
        next = tokio::select! {
            out = session.rx.recv() => gather(&app, &mut session.rx, out),
            _ = ticker.tick() => Next::Write(": ping\n\n".to_owned()),
            () = body.closed() => Next::Stop,
        };
    }
    // The stream ends now (its client sees the end right after a close event), while the
    // park, which a hanging Redis holds up, goes on.
    drop(body);
    session.detach().await;
}

/// The event for `out`, and whatever else is queued already, as one chunk.
fn gather(app: &AppState, rx: &mut OutboundRx, out: Option<Outbound>) -> Next {
    let mut chunk = String::new();
    let mut out = out;
    let mut frames = 0;
    loop {
        match out {
            None => break,
            Some(Outbound::Frame(frame)) => {
                push_event(&mut chunk, &frame);
                frames += 1;
            }
            Some(Outbound::Close { frame, code }) => {
                if let Some(frame) = frame {
                    push_event(&mut chunk, &Frame::Whole(frame));
                    frames += 1;
                }
                chunk.push_str(&format!("event: {}\ndata: {code}\n\n", http::CLOSE_EVENT));
                app.metrics.http_frames(frames);
                return Next::Last(chunk);
            }
        }
        if chunk.len() >= CHUNK_BYTES {
            break;
        }
        out = rx.try_recv();
    }
    app.metrics.http_frames(frames);
    if chunk.is_empty() {
        Next::Stop
    } else {
        Next::Write(chunk)
    }
}

/// `GET /http/poll?session=S&last_seq=N`: the frames after N as soon as there are any.
pub async fn poll(
    State(app): State<Arc<AppState>>,
    http_slot: Option<Extension<HttpSlot>>,
    client: ClientRequest,
) -> Response {
    let mut session = match open(&app, "poll", http_slot, &client, last_seq(&client)).await {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let mut frames = std::mem::take(&mut session.replay);
    let mut close = None;
    if frames.is_empty()
        && let Ok(Some(out)) =
            tokio::time::timeout(app.config.poll_timeout, session.rx.recv()).await
    {
        close = take(out, &mut frames);
    }
    // Everything queued goes out now: a frame left in the queue would only come back from
    // the outbox at the next poll.
    while close.is_none()
        && let Some(out) = session.rx.try_recv()
    {
        close = take(out, &mut frames);
    }
    if close.is_some() {
        // The session's stream ended (an outage, a drain, a kick): the reply goes now, whole,
        // and the park, which a hanging Redis holds up, goes on without it (dropping parks).
        drop(session);
    } else {
        // A reply holds at most what the outbound queue holds (protocol.md): the rest of a
        // longer replay (the replay buffer's bounds may be larger) stays in the outbox,
        // unacknowledged, and goes with the next polls.
        let bytes = app.config.outbound_queue_bytes;
        frames.truncate(fitting(&frames, app.config.outbound_queue, bytes));
        session.detach().await;
    }
    app.metrics.http_frames(frames.len() as u64);
    let mut body = String::with_capacity(16 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    body.push_str("{\"frames\":[");
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        frame.append_to(&mut body);
    }
    body.push(']');
    if let Some(code) = close {
        body.push_str(&format!(",\"close\":{code}"));
    }
    body.push('}');
    json_body(body).into_response()
}

/// How many of `frames`, from the first, fit in `max_frames` and `max_bytes` (one at least).
fn fitting(frames: &[Frame], max_frames: usize, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let over = frames.iter().position(|frame| {
        bytes += frame.len();
        bytes > max_bytes
    });
    over.unwrap_or(frames.len()).min(max_frames).max(1)
}

/// Adds `out` to a poll reply; returns the close code if it ends the session's stream.
fn take(out: Outbound, frames: &mut Vec<Frame>) -> Option<u16> {
    match out {
        Outbound::Frame(frame) => {
            frames.push(frame);
            None
        }
        Outbound::Close { frame, code } => {
            frames.extend(frame.map(Frame::Whole));
            Some(code)
        }
    }
}
