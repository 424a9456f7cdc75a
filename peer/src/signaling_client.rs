//! The signaling client: one WebSocket session with the signaling server, kept alive across
//! dropped sockets.
//!
//! It owns the socket, the session's resume token and the highest `seq` processed. It joins
//! the room, acknowledges what it received, and when the socket breaks (or the server says it
//! is draining) reconnects with exponential backoff and jitter and sends `resume` with the
//! last processed `seq`. Replayed messages are deduplicated by `seq`, so the rest of the SDK
//! sees every server message exactly once and in order. When the server refuses the resume
//! (the grace period passed, or it forgot the session), it joins the room again as a new
//! session and says so. It does not time the grace period itself: a cluster's grace restarts
//! when its shared store comes back from an outage, so only the server knows. Outgoing
//! messages written while disconnected are kept and sent
//! after the session is back; `signal` and `broadcast` frames are numbered (`cseq`) and kept
//! until the server confirms them, so those a dropped socket swallowed are sent again after
//! the resume, and take effect exactly once ([`ResendLog`]). `wss://` URLs are opened with
//! rustls, trusting the system CA bundle plus an optional CA file (`tls_roots`).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use signaling::protocol::{
    ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, RequestId, ResumeToken, RetryClass,
    ServerFrame, ServerMessage, SessionInfo, client_rules,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config,
};

use crate::error::{PeerError, Result};
use crate::resend::ResendLog;
use crate::tls_roots;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for `welcome` or `resumed` after opening a socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Give up re-joining after this long without a session.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// How long a `leave` waits for the server's close (the room's own wait for the leave is 2 s).
const LEAVE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the signaling client reports to the rest of the SDK.
#[derive(Debug)]
pub(crate) enum SignalingEvent {
    /// A server message, deduplicated and in order.
    Message(ServerMessage),
    /// The socket broke; a reconnect attempt follows after `delay`.
    Reconnecting { attempt: u32, delay: Duration },
    /// The session was resumed; `replayed` missed messages were delivered before this, and
    /// `resent` numbered frames are sent again. `ice_servers`: the fresh ones `resumed` carries.
    Resumed {
        replayed: u64,
        resent: u64,
        ice_servers: Vec<IceServer>,
    },
    /// The session could not be resumed (`reason`: the server's error, of the `rejoin`
    /// class); the client joined the room again as a new session.
    Rejoined {
        session: Box<SessionInfo>,
        reason: ErrorCode,
    },
    /// The client gave up (or left); no more events follow.
    Closed(PeerError),
}

/// The handle the rest of the SDK uses to send; the session runs in its own task.
#[derive(Clone)]
pub(crate) struct SignalingClient {
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

enum Outgoing {
    /// A message made in the session numbered `session` (see
    /// [`SignalingClient::send_in_session`]).
    Message {
        message: ClientMessage,
        session: u64,
    },
    /// Leave the room; `sent` fires once the `leave` frame is written.
    Leave { sent: oneshot::Sender<()> },
}

impl SignalingClient {
    /// Connects, joins the room named by the URL and starts the session task. A `wss://` URL
    /// trusts the system CA bundle plus the certificates of `ca` (a PEM file).
    pub(crate) async fn connect(
        url: &str,
        name: Option<String>,
        ca: Option<&Path>,
    ) -> Result<(Self, SessionInfo, mpsc::UnboundedReceiver<SignalingEvent>)> {
        validate_url(url)?;
        let connector = connector(url, ca)?;
        let (ws, info, seq) = first_join(url, &connector, name.clone()).await?;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let session = Session {
            url: url.to_owned(),
            connector,
            name,
            resume_token: info.resume_token.clone(),
            ping_timeout: Duration::from_millis(info.ping_timeout_ms.max(500)),
            max_message_bytes: info.max_message_bytes,
            last_seq: seq,
            last_acked: 0,
            session_lost: None,
            pending: VecDeque::new(),
            rejoins: 0,
            // The join was request 1.
            resume_id: 1,
            resend: ResendLog::default(),
            out_rx,
            events_tx,
        };
        tokio::spawn(session.run(ws));
        Ok((Self { outgoing: out_tx }, info, events_rx))
    }

    /// Queues a message for the server, made in session `session` (0 for the first join, one
    /// more for each re-join since, as told by [`SignalingEvent::Rejoined`]): the room's
    /// messages (`signal`, `stats`) name peers by their ids in that session. If the client
    /// has re-joined since, it is dropped: the new session does not know those ids
    /// (`unknown_peer`), and the room sends what still matters again once it knows the new
    /// ones. Fails only once the session is over.
    pub(crate) fn send_in_session(&self, message: ClientMessage, session: u64) -> Result<()> {
        self.outgoing
            .send(Outgoing::Message { message, session })
            .map_err(|_| PeerError::SessionClosed)
    }

    /// Leaves the room for good and ends the session. The receiver completes once the
    /// `leave` frame was written (or the session is over): a process that exits right after
    /// leaving must wait for it, or the room only learns of it when the grace period ends.
    pub(crate) fn leave(&self) -> oneshot::Receiver<()> {
        let (sent, written) = oneshot::channel();
        let _ = self.outgoing.send(Outgoing::Leave { sent });
        written
    }
}

/// Opens the socket and joins. A join refused for now (any class but `fatal`: `draining`,
/// `unavailable`, a full server, `rate_limited`) is tried again after the backoff, as a lost
/// session is (`docs/protocol.md`, client rules), for up to [`GIVE_UP_AFTER`]; from then on,
/// a server that cannot be reached or does not answer is tried again too (the balancer may be
/// switching nodes). Anything else fails at once: an unreachable server at the first try, a
/// refusal of the `fatal` class.
async fn first_join(
    url: &str,
    connector: &Connector,
    name: Option<String>,
) -> Result<(WsStream, SessionInfo, u64)> {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let joined = async {
            let mut ws = open(url, connector).await?;
            let (info, seq) = join(&mut ws, name.clone()).await?;
            Ok::<_, PeerError>((ws, info, seq))
        };
        let error = match joined.await {
            Ok(joined) => return Ok(joined),
            Err(error) => error,
        };
        let again = match &error {
            // As a reconnect does: every class but `fatal` (`rate_limited` too, the answer to
            // joins over the address's rate).
            PeerError::Signaling { code, .. } => code.retry_class() != RetryClass::Fatal,
            PeerError::SignalingConnect(_)
            | PeerError::SignalingTimeout(_)
            | PeerError::SessionClosed => attempt > 0,
            _ => false,
        };
        if !again || started.elapsed() > GIVE_UP_AFTER {
            return Err(error);
        }
        attempt += 1;
        let delay = backoff(attempt);
        tracing::warn!(%error, attempt, ?delay, "could not join yet: trying again");
        sleep(delay).await;
    }
}

/// Checks the URL is a WebSocket URL.
pub(crate) fn validate_url(url: &str) -> Result<()> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(())
    } else {
        Err(PeerError::InvalidUrl {
            url: url.to_owned(),
            reason: "must start with ws:// or wss://",
        })
    }
}

/// How to open sockets to `url`: plain for `ws://`, rustls trusting the system CA bundle
/// and `ca` for `wss://` (built once, reused by every reconnect).
fn connector(url: &str, ca: Option<&Path>) -> Result<Connector> {
    if url.starts_with("wss://") {
        Ok(Connector::Rustls(tls_roots::client_config(ca)?))
    } else {
        Ok(Connector::Plain)
    }
}

async fn open(url: &str, connector: &Connector) -> Result<WsStream> {
    let connect = connect_async_tls_with_config(url, None, false, Some(connector.clone()));
    let (ws, _response) = timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| PeerError::SignalingTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(ws)
}

/// After `leave`: reads what the server still sends until its close, which answers the
/// `leave` (within [`LEAVE_CLOSE_WAIT`]). Dropping the socket with frames unread would make
/// the kernel reset the connection, and a reset can discard the `leave` before the server
/// reads it: the room would see the peer leave only when its grace ran out. A `peer_left`
/// is passed on (closing our connection to that peer need not wait for it); the rest is
/// dropped.
async fn await_close(ws: &mut WsStream, events: &mpsc::UnboundedSender<SignalingEvent>) {
    let _ = timeout(LEAVE_CLOSE_WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if let WsMessage::Text(text) = &message
                && let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str())
                && let ServerMessage::PeerLeft { .. } = &frame.message
            {
                let _ = events.send(SignalingEvent::Message(frame.message));
            }
        }
    })
    .await;
}

async fn send_json(ws: &mut WsStream, message: &ClientMessage) -> Result<()> {
    let text = serde_json::to_string(message)?;
    ws.send(WsMessage::text(text)).await?;
    Ok(())
}

/// One thing read from the socket.
enum Incoming {
    /// A server frame.
    Frame(Box<ServerFrame>),
    /// A ping, pong or other non-text frame: no message, but proof the server is alive.
    Heartbeat,
}

/// Reads the next WebSocket message, answering pings on the way. `None` when the socket closed.
async fn next_incoming(ws: &mut WsStream) -> Result<Option<Incoming>> {
    let Some(message) = ws.next().await else {
        return Ok(None);
    };
    match message? {
        WsMessage::Text(text) => {
            let frame: ServerFrame = serde_json::from_str(text.as_str())
                .map_err(|err| PeerError::Protocol(format!("unparsable server frame: {err}")))?;
            Ok(Some(Incoming::Frame(Box::new(frame))))
        }
        WsMessage::Ping(_) => {
            // tungstenite queued the pong; make sure it leaves now.
            ws.flush().await?;
            Ok(Some(Incoming::Heartbeat))
        }
        WsMessage::Close(_) => Ok(None),
        WsMessage::Binary(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {
            Ok(Some(Incoming::Heartbeat))
        }
    }
}

/// Reads the next server frame, skipping control frames. `None` when the socket closed.
async fn next_frame(ws: &mut WsStream) -> Result<Option<ServerFrame>> {
    loop {
        match next_incoming(ws).await? {
            Some(Incoming::Frame(frame)) => return Ok(Some(*frame)),
            Some(Incoming::Heartbeat) => {}
            None => return Ok(None),
        }
    }
}

/// Sends `join` and waits for `welcome`. Returns the session and the welcome's `seq`.
async fn join(ws: &mut WsStream, name: Option<String>) -> Result<(SessionInfo, u64)> {
    send_json(
        ws,
        &ClientMessage::Join {
            id: Some(1),
            versions: vec![PROTOCOL_VERSION],
            room: None,
            name,
            token: None,
        },
    )
    .await?;
    let Ok(reply) = timeout(HANDSHAKE_TIMEOUT, next_frame(ws)).await else {
        // The join may have opened a session whose welcome did not come: leave it, or the
        // room would see this peer twice until its grace period ends (the next try joins
        // afresh). Not waited for long: the socket may be stalled.
        let leave = send_json(ws, &ClientMessage::Leave { id: None });
        let _ = timeout(LEAVE_CLOSE_WAIT, leave).await;
        return Err(PeerError::SignalingTimeout(HANDSHAKE_TIMEOUT));
    };
    match reply? {
        Some(ServerFrame {
            seq,
            message: ServerMessage::Welcome { session, .. },
        }) => Ok((session, seq)),
        Some(ServerFrame {
            message: ServerMessage::Error { code, message, .. },
            ..
        }) => Err(PeerError::Signaling { code, message }),
        Some(other) => Err(PeerError::Protocol(format!(
            "expected welcome, got {:?}",
            other.message
        ))),
        None => Err(PeerError::SessionClosed),
    }
}

/// Why a connected socket stopped being used.
enum Disconnect {
    /// The socket broke or went silent; reconnect now.
    Broken,
    /// The server is draining; reconnect after the delay.
    Draining(Duration),
    /// The application left, or the server ended the session for good.
    Finished(Option<PeerError>),
}

/// The outcome of one reconnect attempt.
enum Reconnect {
    Resumed(WsStream),
    Rejoined(WsStream),
    Failed,
    Fatal(PeerError),
}

struct Session {
    url: String,
    /// Plain or TLS (with the trusted CAs), for every socket of the session.
    connector: Connector,
    name: Option<String>,
    resume_token: ResumeToken,
    ping_timeout: Duration,
    /// The largest frame the server takes (from `welcome`/`resumed`).
    max_message_bytes: usize,
    /// The highest `seq` delivered to the SDK.
    last_seq: u64,
    last_acked: u64,
    /// The server ended the session or refused to resume it, with this error: join afresh
    /// from now on.
    session_lost: Option<ErrorCode>,
    /// Messages taken from `out_rx` but not yet written to a socket.
    pending: VecDeque<ClientMessage>,
    /// How many times the client re-joined (see [`SignalingClient::send_in_session`]).
    rejoins: u64,
    /// The id of the last `resume` sent: its `resumed` (the frame whose `ref` it is) is the
    /// answer; an earlier resume's, replayed before it, is not (`docs/protocol.md`, `resume`).
    resume_id: RequestId,
    /// The numbered frames written and not confirmed yet.
    resend: ResendLog,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    events_tx: mpsc::UnboundedSender<SignalingEvent>,
}

impl Session {
    async fn run(mut self, first: WsStream) {
        let mut ws = first;
        loop {
            let disconnect = self.serve(&mut ws).await;
            let _ = ws.close(None).await;
            drop(ws);
            let mut wait = match disconnect {
                Disconnect::Finished(error) => {
                    let _ = self.events_tx.send(SignalingEvent::Closed(
                        error.unwrap_or(PeerError::SessionClosed),
                    ));
                    return;
                }
                Disconnect::Broken => Duration::ZERO,
                Disconnect::Draining(delay) => delay,
            };
            let lost_at = Instant::now();
            let mut attempt = 0u32;
            ws = loop {
                if lost_at.elapsed() > GIVE_UP_AFTER {
                    let _ = self
                        .events_tx
                        .send(SignalingEvent::Closed(PeerError::SessionClosed));
                    return;
                }
                attempt += 1;
                // A session the server ended is joined again at once (the `rejoin` class).
                let delay = if attempt == 1 && self.session_lost.is_some() {
                    wait
                } else {
                    wait.max(backoff(attempt))
                };
                wait = Duration::ZERO;
                let _ = self
                    .events_tx
                    .send(SignalingEvent::Reconnecting { attempt, delay });
                sleep(delay).await;
                match self.reconnect(self.session_lost.is_none()).await {
                    Reconnect::Resumed(ws) | Reconnect::Rejoined(ws) => break ws,
                    Reconnect::Failed => {}
                    Reconnect::Fatal(error) => {
                        // Learnt on a resume or join (the socket that carried the error
                        // broke first): told as when it arrives on a live socket.
                        if let PeerError::Signaling { code, message } = &error {
                            let _ = self.events_tx.send(SignalingEvent::Message(
                                ServerMessage::Error {
                                    code: *code,
                                    message: message.clone(),
                                    reference: None,
                                },
                            ));
                        }
                        let _ = self.events_tx.send(SignalingEvent::Closed(error));
                        return;
                    }
                }
            };
        }
    }

    /// Serves one connected socket until it breaks or the session ends.
    async fn serve(&mut self, ws: &mut WsStream) -> Disconnect {
        // Flush what queued up while we were away.
        while let Some(message) = self.pending.pop_front() {
            if let Err(message) = self.write(ws, message).await {
                self.pending.push_front(message);
                return Disconnect::Broken;
            }
        }
        // Acks follow the client rules: after ACK_EVERY frames, or within ACK_DELAY of the
        // first unacknowledged one (the same tick checks the socket's silence).
        let mut ack_timer = tokio::time::interval(client_rules::ACK_DELAY);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                incoming = next_incoming(ws) => {
                    // Any frame, pings included, proves the socket is alive: a quiet room
                    // carries nothing but the server's pings.
                    last_heard = Instant::now();
                    match incoming {
                        Ok(Some(Incoming::Heartbeat)) => {}
                        Ok(Some(Incoming::Frame(frame))) => {
                            if let Some(disconnect) = self.on_frame(*frame) {
                                return disconnect;
                            }
                            if self.last_seq >= self.last_acked + client_rules::ACK_EVERY && self.ack(ws).await.is_err() {
                                return Disconnect::Broken;
                            }
                        }
                        Ok(None) | Err(_) => return Disconnect::Broken,
                    }
                }
                outgoing = self.out_rx.recv() => {
                    match outgoing {
                        Some(Outgoing::Message { session, .. }) if session != self.rejoins => {
                            tracing::debug!("a message of an earlier session dropped");
                        }
                        Some(Outgoing::Message { message, .. }) => {
                            if let Err(message) = self.write(ws, message).await {
                                self.pending.push_back(message);
                                return Disconnect::Broken;
                            }
                        }
                        Some(Outgoing::Leave { sent }) => {
                            let _ = send_json(ws, &ClientMessage::Leave { id: None }).await;
                            await_close(ws, &self.events_tx).await;
                            let _ = sent.send(());
                            return Disconnect::Finished(None);
                        }
                        None => {
                            let _ = send_json(ws, &ClientMessage::Leave { id: None }).await;
                            await_close(ws, &self.events_tx).await;
                            return Disconnect::Finished(None);
                        }
                    }
                }
                _ = ack_timer.tick() => {
                    if last_heard.elapsed() > self.ping_timeout {
                        tracing::warn!("signaling socket silent for {:?}, reconnecting", last_heard.elapsed());
                        return Disconnect::Broken;
                    }
                    if self.last_seq > self.last_acked && self.ack(ws).await.is_err() {
                        return Disconnect::Broken;
                    }
                    if self.resend.ping_due(Instant::now()) && self.ping(ws).await.is_err() {
                        return Disconnect::Broken;
                    }
                }
            }
        }
    }

    /// Writes one message, numbering it first when it is a `signal` or `broadcast`; gives it
    /// back when the socket failed. Pings for a confirmation when one is due.
    async fn write(
        &mut self,
        ws: &mut WsStream,
        mut message: ClientMessage,
    ) -> std::result::Result<(), ClientMessage> {
        // A frame the server would refuse (closing the socket with 1009) would come back
        // with every resume: drop it here, before it takes a number. Only frames about to be
        // numbered are measured: a resent one passed this check the first time.
        let max = self.max_message_bytes;
        let fits = |m: &ClientMessage| serde_json::to_string(m).is_ok_and(|t| t.len() <= max);
        let fresh = matches!(message.cseq_mut(), Some(None));
        if fresh && !self.resend.number_if_fits(&mut message, fits) {
            tracing::error!(
                max,
                "signaling frame over the server's max_message_bytes: not sent"
            );
            return Ok(());
        }
        if send_json(ws, &message).await.is_err() {
            return Err(message);
        }
        self.resend.written(message, Instant::now());
        if self.resend.ping_due(Instant::now()) {
            // A failure shows on the next read or write.
            let _ = self.ping(ws).await;
        }
        Ok(())
    }

    /// Asks for a `pong`, whose `received` confirms the numbered frames written so far.
    async fn ping(&mut self, ws: &mut WsStream) -> Result<()> {
        send_json(ws, &ClientMessage::Ping { id: None }).await?;
        self.resend.pinged();
        Ok(())
    }

    async fn ack(&mut self, ws: &mut WsStream) -> Result<()> {
        send_json(ws, &ClientMessage::Ack { seq: self.last_seq }).await?;
        self.last_acked = self.last_seq;
        Ok(())
    }

    /// Delivers a frame unless it is a duplicate. Returns why to stop, if the frame says so.
    fn on_frame(&mut self, frame: ServerFrame) -> Option<Disconnect> {
        if frame.seq != 0 && frame.seq <= self.last_seq {
            tracing::debug!(seq = frame.seq, "duplicate server frame dropped");
            return None;
        }
        if frame.seq != 0 {
            self.last_seq = frame.seq;
        }
        match frame.message {
            ServerMessage::Draining {
                reconnect_after_ms, ..
            } => {
                return Some(Disconnect::Draining(Duration::from_millis(
                    reconnect_after_ms,
                )));
            }
            ServerMessage::Error { code, message, .. }
                if code.retry_class() == RetryClass::Fatal =>
            {
                // An operator ended the session (`kicked`, `room_closed`): coming back,
                // even as a new peer, would defeat the order.
                // The application hears of it (`Closed`) and reports it: a note, not a warning.
                tracing::info!(%code, %message, "signaling session ended for good by the server");
                let _ = self
                    .events_tx
                    .send(SignalingEvent::Message(ServerMessage::Error {
                        code,
                        message: message.clone(),
                        reference: None,
                    }));
                return Some(Disconnect::Finished(Some(PeerError::Signaling {
                    code,
                    message,
                })));
            }
            ServerMessage::Error { code, message, .. } if is_session_fatal(code) => {
                tracing::warn!(%code, %message, "signaling session ended by the server");
                // The session is gone: join afresh, at once (the `rejoin` class).
                self.session_lost = Some(code);
                return Some(Disconnect::Broken);
            }
            ServerMessage::Resumed { session, .. } | ServerMessage::Welcome { session, .. } => {
                self.max_message_bytes = session.max_message_bytes;
                self.resume_token = session.resume_token;
            }
            ServerMessage::Pong { received, .. } => self.resend.confirmed(received),
            message => {
                let _ = self.events_tx.send(SignalingEvent::Message(message));
            }
        }
        None
    }

    /// Opens a new socket and resumes the session (or, failing that, joins afresh).
    async fn reconnect(&mut self, try_resume: bool) -> Reconnect {
        let Some(mut ws) = self.open_socket().await else {
            return Reconnect::Failed;
        };
        if try_resume {
            match self.resume(&mut ws).await {
                Ok(Resume::Done) => return Reconnect::Resumed(ws),
                Ok(Resume::Later) => return Reconnect::Failed,
                Ok(Resume::Lost(code)) => {
                    // The server closes a refused resume's socket (1008): join on a new one,
                    // at once (the `rejoin` class).
                    self.session_lost = Some(code);
                    let _ = ws.close(None).await;
                    let Some(fresh) = self.open_socket().await else {
                        return Reconnect::Failed;
                    };
                    ws = fresh;
                }
                Err(error @ PeerError::Signaling { .. }) => return Reconnect::Fatal(error),
                Err(err) => {
                    tracing::debug!("signaling resume failed: {err}");
                    return Reconnect::Failed;
                }
            }
        }
        match join(&mut ws, self.name.clone()).await {
            Ok((info, seq)) => {
                self.resume_token = info.resume_token.clone();
                self.max_message_bytes = info.max_message_bytes;
                self.last_seq = seq;
                self.last_acked = 0;
                let reason = self.session_lost.take().unwrap_or(ErrorCode::ResumeFailed);
                self.rejoins += 1;
                // What is queued was made in the old session: `signal`s and `stats` naming its
                // peers' ids, which the new one does not know (`unknown_peer`). The connections
                // send their offers again once their peers are back under their new ids and
                // the adoption's quiet is over (what is still in `out_rx` is dropped as it
                // comes: `Outgoing::Message`).
                if !self.pending.is_empty() {
                    tracing::debug!(
                        dropped = self.pending.len(),
                        "messages of the old session dropped at the re-join"
                    );
                    self.pending.clear();
                }
                self.resend.restart();
                let _ = self.events_tx.send(SignalingEvent::Rejoined {
                    session: Box::new(info),
                    reason,
                });
                Reconnect::Rejoined(ws)
            }
            Err(PeerError::Signaling { code, message })
                if code.retry_class() == RetryClass::Fatal =>
            {
                Reconnect::Fatal(PeerError::Signaling { code, message })
            }
            Err(err) => {
                tracing::debug!("signaling re-join failed: {err}");
                Reconnect::Failed
            }
        }
    }

    /// A new socket to the server, or `None` (logged) when it cannot be opened.
    async fn open_socket(&self) -> Option<WsStream> {
        open(&self.url, &self.connector)
            .await
            .inspect_err(|err| tracing::debug!("signaling reconnect failed: {err}"))
            .ok()
    }

    /// Sends `resume` and delivers the replay; or says why not (the server then closes the
    /// socket): the session is gone (join on a new socket), or not now (resume again later).
    async fn resume(&mut self, ws: &mut WsStream) -> Result<Resume> {
        self.resume_id += 1;
        send_json(
            ws,
            &ClientMessage::Resume {
                id: Some(self.resume_id),
                versions: vec![PROTOCOL_VERSION],
                resume_token: self.resume_token.clone(),
                last_seq: self.last_seq,
            },
        )
        .await?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, next_frame(ws))
                .await
                .map_err(|_| PeerError::SignalingTimeout(HANDSHAKE_TIMEOUT))??
                .ok_or(PeerError::SessionClosed)?;
            match frame.message {
                ServerMessage::Resumed {
                    reference,
                    session,
                    replayed,
                    received,
                } if reference.is_none_or(|id| id == self.resume_id) => {
                    if frame.seq > self.last_seq {
                        self.last_seq = frame.seq;
                    }
                    // What the dropped socket swallowed goes first, in its original order.
                    let mut again = self.resend.resend(received);
                    let resent = again.len() as u64;
                    again.append(&mut self.pending);
                    self.pending = again;
                    self.max_message_bytes = session.max_message_bytes;
                    self.resume_token = session.resume_token;
                    let _ = self.events_tx.send(SignalingEvent::Resumed {
                        replayed,
                        resent,
                        ice_servers: session.ice_servers,
                    });
                    return Ok(Resume::Done);
                }
                // The resume's own refusal: numbered 0, or naming it. A numbered error of the
                // session (an `unknown_peer` not acknowledged yet) is part of the replay.
                ServerMessage::Error {
                    code,
                    message,
                    reference,
                } if frame.seq == 0 || reference == Some(self.resume_id) => {
                    match code.retry_class() {
                        // Ended by an operator while we were away: stop, as `join` would.
                        RetryClass::Fatal => return Err(PeerError::Signaling { code, message }),
                        // The session is gone: join afresh.
                        RetryClass::Rejoin => {
                            tracing::info!(%code, %message, "signaling session could not be resumed");
                            return Ok(Resume::Lost(code));
                        }
                        // Not now (a node at its limits, draining, or without its store): the
                        // session is kept; back off and resume again.
                        RetryClass::Retry | RetryClass::Continue => {
                            tracing::info!(%code, %message, "signaling resume refused for now");
                            return Ok(Resume::Later);
                        }
                    }
                }
                message => {
                    if self
                        .on_frame(ServerFrame {
                            seq: frame.seq,
                            message,
                        })
                        .is_some()
                    {
                        return Err(PeerError::SessionClosed);
                    }
                }
            }
        }
    }
}

/// What a `resume` came to.
enum Resume {
    /// Resumed: the replay was delivered.
    Done,
    /// The session is gone (the `rejoin` class, this error): join afresh.
    Lost(ErrorCode),
    /// Refused for now (the `retry` class): the session is kept; try again after the backoff.
    Later,
}

/// Errors after which the server has ended the session (the `rejoin` class).
fn is_session_fatal(code: ErrorCode) -> bool {
    code.retry_class() == RetryClass::Rejoin
}

/// The reconnect delay before attempt `attempt`: the protocol's backoff ceiling, scaled by a
/// random factor in `[1 - BACKOFF_JITTER, 1]`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = client_rules::backoff_ceiling(attempt);
    ceiling.mul_f64(1.0 - client_rules::BACKOFF_JITTER * rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
            let third = backoff(3);
            assert!(third >= Duration::from_millis(500) && third <= Duration::from_millis(1000));
            let late = backoff(40);
            let max = client_rules::BACKOFF_MAX;
            assert!(late >= max / 2 && late <= max);
        }
    }

    /// A TCP proxy in front of the server whose connections can go deaf (what the client
    /// writes is dropped, as on a path that died without a reset) and then be cut, or be mute
    /// from the start (what the server writes after its upgrade answer is dropped).
    struct DeafProxy {
        addr: std::net::SocketAddr,
        deaf: std::sync::Arc<std::sync::atomic::AtomicBool>,
        live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    }

    impl DeafProxy {
        async fn start(upstream: std::net::SocketAddr) -> Self {
            Self::start_muting(upstream, false).await
        }

        async fn start_muting(upstream: std::net::SocketAddr, mute: bool) -> Self {
            use std::sync::atomic::Ordering;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let deaf = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (deaf2, live2) = (deaf.clone(), live.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let deaf = deaf2.clone();
                    let up = tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                            if !deaf.load(Ordering::Relaxed)
                                && server_tx.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    });
                    let down = tokio::spawn(async move {
                        if !mute {
                            let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                            return;
                        }
                        // The upgrade answer (up to its blank line) passes, the rest not.
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                continue;
                            }
                            head.extend_from_slice(&buf[..n]);
                            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                                continue;
                            };
                            if client_tx.write_all(&head[..end + 4]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut live = live2.lock().unwrap();
                    live.push(up.abort_handle());
                    live.push(down.abort_handle());
                }
            });
            Self { addr, deaf, live }
        }

        fn go_deaf(&self) {
            self.deaf.store(true, std::sync::atomic::Ordering::Relaxed);
        }

        /// Closes every connection made so far; new ones pass everything again.
        fn cut(&self) {
            for task in self.live.lock().unwrap().drain(..) {
                task.abort();
            }
            self.deaf.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The next `broadcast` B's socket reads (within 10 s), as its `data`.
    async fn next_broadcast(b: &mut WsStream) -> Option<serde_json::Value> {
        loop {
            let frame = timeout(Duration::from_secs(10), next_frame(b)).await.ok()?;
            match frame.ok()??.message {
                ServerMessage::Broadcast { data, .. } => return Some(data),
                _ => continue,
            }
        }
    }

    /// A `signaling` server on a free loopback port, and its address.
    fn start_server() -> (testkit::Spawned, std::net::SocketAddr) {
        let mut command = std::process::Command::new(testkit::bin_path("signaling"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::null());
        let mut server = testkit::Spawned::spawn(command, false);
        let marker = "listening on http://";
        let line = server.wait_line(Duration::from_secs(20), |l| l.starts_with(marker));
        let addr = line[marker.len()..].trim().parse().unwrap();
        (server, addr)
    }

    /// The next [`SignalingEvent::Resumed`] within 15 s: its `replayed` and `resent`.
    async fn next_resumed(
        events: &mut mpsc::UnboundedReceiver<SignalingEvent>,
    ) -> Option<(u64, u64)> {
        timeout(Duration::from_secs(15), async {
            while let Some(event) = events.recv().await {
                if let SignalingEvent::Resumed {
                    replayed, resent, ..
                } = event
                {
                    return Some((replayed, resent));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    #[tokio::test]
    async fn frames_a_dead_socket_swallowed_are_sent_again_after_the_resume_once() {
        let (mut server, server_addr) = start_server();
        let proxy = DeafProxy::start(server_addr).await;

        // B joins straight to the server, A through the proxy with the SDK.
        let mut b = open(&format!("ws://{server_addr}/ws/deaf"), &Connector::Plain)
            .await
            .unwrap();
        join(&mut b, Some("b".into())).await.unwrap();
        let url = format!("ws://{}/ws/deaf", proxy.addr);
        let (a, _info, mut events) = SignalingClient::connect(&url, Some("a".into()), None)
            .await
            .unwrap();
        let broadcast = |n: u32| ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::json!(n),
        };
        a.send_in_session(broadcast(1), 0).unwrap();
        assert_eq!(next_broadcast(&mut b).await, Some(serde_json::json!(1)));

        // The path dies silently: 2 and 3 are written to a socket that delivers nothing.
        proxy.go_deaf();
        a.send_in_session(broadcast(2), 0).unwrap();
        a.send_in_session(broadcast(3), 0).unwrap();
        sleep(Duration::from_millis(300)).await;
        proxy.cut();
        assert_eq!(
            next_resumed(&mut events).await.map(|(_, resent)| resent),
            Some(2),
            "resumed through the proxy, 2 and 3 sent again"
        );
        for n in [2, 3] {
            assert_eq!(next_broadcast(&mut b).await, Some(serde_json::json!(n)));
        }
        // Exactly once: nothing follows.
        a.send_in_session(broadcast(4), 0).unwrap();
        assert_eq!(next_broadcast(&mut b).await, Some(serde_json::json!(4)));
        server.kill();
    }

    /// A join whose welcome does not come within the handshake timeout leaves the session it
    /// may have opened: the room sees the peer leave at once (`left`), not after the grace
    /// period, beside the session of the next try.
    #[tokio::test]
    async fn a_join_whose_welcome_does_not_come_leaves_its_session() {
        let (mut server, server_addr) = start_server();
        let proxy = DeafProxy::start_muting(server_addr, true).await;
        let mut b = open(&format!("ws://{server_addr}/ws/mute"), &Connector::Plain)
            .await
            .unwrap();
        join(&mut b, Some("b".into())).await.unwrap();
        let mut a = open(&format!("ws://{}/ws/mute", proxy.addr), &Connector::Plain)
            .await
            .unwrap();
        let joined = join(&mut a, Some("a".into())).await;
        assert!(
            matches!(joined, Err(PeerError::SignalingTimeout(_))),
            "{joined:?}"
        );
        let left = timeout(Duration::from_secs(5), async {
            loop {
                match next_frame(&mut b).await.ok()??.message {
                    ServerMessage::PeerLeft { reason, .. } => return Some(reason),
                    _ => continue,
                }
            }
        })
        .await;
        assert_eq!(
            left.ok().flatten(),
            Some(signaling::protocol::LeaveReason::Left)
        );
        server.kill();
    }

    /// Another socket resumes A's session (request 999), which the server answers with a
    /// `resumed` numbered after A's last seq, then makes an `unknown_peer` error, numbered
    /// too: A's own resume gets both replayed before its answer, and takes only its answer
    /// for it (`docs/protocol.md`, `resume`; a replayed error taken for a refusal had A
    /// resume again from the same seq, for ever).
    #[tokio::test]
    async fn an_earlier_resumes_answer_and_an_error_replayed_are_not_taken_for_this_ones() {
        use signaling::protocol::{PeerId, Signal};
        let (mut server, server_addr) = start_server();
        let url = format!("ws://{server_addr}/ws/replayed");
        let (_a, info, mut events) = SignalingClient::connect(&url, Some("a".into()), None)
            .await
            .unwrap();
        let mut other = open(&url, &Connector::Plain).await.unwrap();
        // Sends `message` on the other socket and reads its answer.
        async fn ask(ws: &mut WsStream, message: &ClientMessage) -> ServerFrame {
            send_json(ws, message).await.unwrap();
            timeout(Duration::from_secs(10), next_frame(ws))
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        }
        let resume = ClientMessage::Resume {
            id: Some(999),
            versions: vec![PROTOCOL_VERSION],
            resume_token: info.resume_token.clone(),
            last_seq: 1,
        };
        let theirs = ask(&mut other, &resume).await;
        assert!(
            matches!(
                theirs.message,
                ServerMessage::Resumed {
                    reference: Some(999),
                    ..
                }
            ),
            "{theirs:?}"
        );
        // And an error of the session, numbered, that the replay carries too: not the
        // answer to A's resume either.
        let to_nobody = ClientMessage::Signal {
            id: Some(7),
            cseq: None,
            to: PeerId("000000000000".into()),
            signal: Signal::EndOfCandidates {
                username_fragment: None,
            },
        };
        let error = ask(&mut other, &to_nobody).await;
        assert!(
            error.seq > 0
                && matches!(
                    error.message,
                    ServerMessage::Error {
                        code: ErrorCode::UnknownPeer,
                        ..
                    }
                ),
            "{error:?}"
        );
        drop(other);
        assert_eq!(
            next_resumed(&mut events)
                .await
                .map(|(replayed, _)| replayed),
            Some(2),
            "A's own answer, after the other socket's resumed and error (replayed)"
        );
        server.kill();
    }

    #[test]
    fn urls_must_be_websocket_urls() {
        assert!(validate_url("ws://127.0.0.1:1/ws/room").is_ok());
        assert!(validate_url("wss://example.org/ws/room").is_ok());
        assert!(matches!(
            validate_url("http://example.org/ws/room"),
            Err(PeerError::InvalidUrl { .. })
        ));
    }
}
