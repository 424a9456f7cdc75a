//! One WebSocket: receive frames classified for the session, send encoded frames, pings and
//! closes. The frame size limit is enforced by tungstenite (configured in `ws.rs`); here an
//! oversize frame is recognised so the session can answer it with `message_too_large` and 1009.

use std::collections::VecDeque;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

/// What arrived on the socket.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame (a protocol message, not parsed yet).
    Text(Utf8Bytes),
    /// A binary frame: the protocol is text only.
    Binary,
    /// A ping or pong: the peer is alive.
    Alive,
    /// A frame larger than the limit; the socket cannot be read any further.
    TooLarge,
    /// A text frame that is not UTF-8: RFC 6455 (section 8.1) has the socket failed.
    NotUtf8,
    /// A frame that breaks RFC 6455 (unmasked, a reserved opcode or bit, a control frame over
    /// 125 bytes or fragmented): the socket cannot be read any further.
    ProtocolViolation,
    /// The peer closed the socket, or it failed.
    Closed,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailed {
    /// The client does not read: the write waited past the write timeout.
    Stalled,
    /// The connection failed or was closed.
    Broken,
}

/// What ended a write that hears the client meanwhile ([`Connection::send_text_hearing`]).
#[derive(Debug)]
pub enum Heard {
    /// The write ended, as [`Connection::send_text`]'s would.
    Sent(Result<(), SendFailed>),
    /// The client's next event came first: the write is not done
    /// ([`Connection::go_on_hearing`]).
    Inbound(Inbound),
}

/// A write that gave way to the client's next event and is not done yet.
struct Unfinished {
    /// The messages, in order, each until the socket takes it (then its bytes wait in the
    /// socket's buffer): the one that gave way, and the answers queued behind it meanwhile
    /// ([`Connection::queue_text`]).
    messages: VecDeque<Message>,
    /// When it times out: a write's timeout counts from its start, however often it gave way.
    until: Instant,
}

/// While this many messages wait behind a write that gave way, the client is not read: each
/// frame read may queue an answer.
const MAX_QUEUED: usize = 64;

/// A WebSocket connection of the server.
pub struct Connection {
    /// `None` once [`Self::release`]d.
    socket: Option<WebSocket>,
    /// How long one write may wait for a client that does not read (its TCP window is full)
    /// before the connection counts as dead. Without it, a stuck write would also stop the
    /// ping timer that detects zombies.
    write_timeout: Duration,
    /// A write that gave way to what the client sent meanwhile (with what was queued behind
    /// it); any later write finishes it first.
    unfinished: Option<Unfinished>,
}

/// Close frames are a courtesy: never wait long for a peer to take one.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl Connection {
    /// Wraps an upgraded socket.
    pub fn new(socket: WebSocket, write_timeout: Duration) -> Self {
        Self {
            socket: Some(socket),
            write_timeout,
            unfinished: None,
        }
    }

    /// The next inbound event. Cancel-safe (it is `Stream::next`), so it can sit in a `select!`;
    /// but for the client's close frame: it is answered before `Closed` is returned (cancelled
    /// meanwhile, the answer may not go, and the next call returns `Closed`).
    pub async fn recv(&mut self) -> Inbound {
        let Some(socket) = self.socket.as_mut() else {
            return Inbound::Closed;
        };
        let next = socket.recv().await;
        self.inbound(next).await
    }

    /// What `next`, the socket's next item, is.
    async fn inbound(&mut self, next: Option<Result<Message, axum::Error>>) -> Inbound {
        match next {
            Some(Ok(Message::Text(text))) => Inbound::Text(text),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
            Some(Ok(Message::Close(_))) => {
                // RFC 6455 section 5.5.1: a close frame is answered with one. tungstenite has
                // queued it (with 1002 for a code the RFC forbids); write it out.
                if let Some(socket) = self.socket.as_mut() {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
                }
                Inbound::Closed
            }
            None => Inbound::Closed,
            Some(Err(e)) => {
                let inner = e.into_inner();
                match inner.downcast_ref::<tungstenite::Error>() {
                    Some(tungstenite::Error::Capacity(_)) => Inbound::TooLarge,
                    Some(tungstenite::Error::Utf8(_)) => Inbound::NotUtf8,
                    Some(tungstenite::Error::Protocol(e)) if is_violation(e) => {
                        tracing::debug!(error = %e, "WebSocket protocol violation");
                        Inbound::ProtocolViolation
                    }
                    _ => {
                        tracing::debug!(error = %inner, "socket read failed");
                        Inbound::Closed
                    }
                }
            }
        }
    }

    /// Writes one text frame and flushes it, within the write timeout.
    pub async fn send_text(&mut self, frame: Utf8Bytes) -> Result<(), SendFailed> {
        self.send(Message::Text(frame), self.write_timeout).await
    }

    /// Sends a WebSocket ping, within the write timeout.
    pub async fn ping(&mut self) -> Result<(), SendFailed> {
        self.send(Message::Ping(Bytes::new()), self.write_timeout)
            .await
    }

    /// [`Self::send_text`], reading the client meanwhile (if `reading`): a client that does not
    /// read, so that the write stalls until the write timeout, is still heard (its `leave`).
    /// An event that comes first ends the wait and leaves the write unfinished:
    /// [`Self::go_on_hearing`] goes on with it (within the write timeout counted from its
    /// start); any other write finishes it first. Go on with an unfinished write before
    /// starting another.
    pub async fn send_text_hearing(&mut self, frame: Utf8Bytes, reading: bool) -> Heard {
        self.start(Message::Text(frame));
        self.go_on_hearing(reading).await
    }

    /// [`Self::ping`], reading the client meanwhile as [`Self::send_text_hearing`] does.
    pub async fn ping_hearing(&mut self, reading: bool) -> Heard {
        self.start(Message::Ping(Bytes::new()));
        self.go_on_hearing(reading).await
    }

    /// Queues `frame` behind the unfinished write, or as one of its own (started, not waited
    /// for): an answer to what the client sent while a write waits, which does not stop the
    /// hearing. [`Self::go_on_hearing`], or any other write, sends it.
    pub fn queue_text(&mut self, frame: Utf8Bytes) {
        self.start(Message::Text(frame));
    }

    /// Goes on with the unfinished write (done at once if there is none), reading the client
    /// meanwhile if `reading` (and while fewer than 64 messages wait, `MAX_QUEUED`).
    pub async fn go_on_hearing(&mut self, reading: bool) -> Heard {
        let Some(mut write) = self.unfinished.take() else {
            return Heard::Sent(Ok(()));
        };
        let Some(socket) = self.socket.as_mut() else {
            return Heard::Sent(Err(SendFailed::Broken));
        };
        let messages = &mut write.messages;
        let either = std::future::poll_fn(|cx| {
            if let Poll::Ready(sent) = poll_write(socket, messages, cx) {
                return Poll::Ready(Ok(sent));
            }
            // Reading while the write waits: tokio-tungstenite keeps a waker for each side.
            let reading = reading && messages.len() < MAX_QUEUED;
            if reading && let Poll::Ready(next) = socket.poll_next_unpin(cx) {
                return Poll::Ready(Err(next));
            }
            Poll::Pending
        });
        let ended = tokio::time::timeout_at(write.until, either).await;
        match ended {
            Ok(Ok(sent)) => Heard::Sent(sent),
            Err(_) => Heard::Sent(Err(SendFailed::Stalled)),
            Ok(Err(next)) => {
                self.unfinished = Some(write);
                Heard::Inbound(self.inbound(next).await)
            }
        }
    }

    /// Finishes the unfinished write, if any, without reading.
    pub async fn finish(&mut self) -> Result<(), SendFailed> {
        match self.go_on_hearing(false).await {
            Heard::Sent(sent) => sent,
            Heard::Inbound(_) => unreachable!("nothing is read"),
        }
    }

    /// Queues `message` on the unfinished write, or makes it one, due within the write
    /// timeout (or when the one it is queued behind is due, if earlier).
    fn start(&mut self, message: Message) {
        let until = Instant::now() + self.write_timeout;
        let write = self.unfinished.get_or_insert_with(|| Unfinished {
            messages: VecDeque::new(),
            until,
        });
        write.messages.push_back(message);
    }

    /// Sends a close frame with `code` and `reason`; the socket is done afterwards. Then reads,
    /// and drops, what the client still sends until its own close (at most `CLOSE_TIMEOUT`):
    /// closing a socket with unread bytes makes the kernel reset the connection, and a client
    /// that was still sending (a flood over the rate) would lose our close frame to the reset
    /// and see 1006 instead of the code.
    /// Returns whether it waited so: `false` when the close frame could not be sent or the
    /// socket could not be read (after a frame it cannot read past).
    pub async fn close(&mut self, code: u16, reason: &'static str) -> bool {
        self.close_seeing(code, reason, |_| {}).await
    }

    /// [`Self::close`], showing `seen` each text frame the client still sent meanwhile (before
    /// it is dropped).
    pub async fn close_seeing(
        &mut self,
        code: u16,
        reason: &'static str,
        mut seen: impl FnMut(&str),
    ) -> bool {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if self
            .send(Message::Close(Some(frame)), CLOSE_TIMEOUT)
            .await
            .is_err()
        {
            return false;
        }
        let Some(socket) = self.socket.as_mut() else {
            return false;
        };
        tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(message)) = socket.recv().await {
                match message {
                    Message::Close(_) => return true,
                    Message::Text(text) => seen(text.as_str()),
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap_or(true)
    }

    /// Lets go of the connection now (its client sees it end), before the work that follows
    /// a session's end (parking it, in a cluster a Redis round trip that an outage holds up);
    /// every later read finds it closed, every write fails.
    pub fn release(&mut self) {
        self.socket = None;
        self.unfinished = None;
    }

    /// Writes `message` within `limit`, after the unfinished write if any (no later than that
    /// one is due).
    async fn send(&mut self, message: Message, limit: Duration) -> Result<(), SendFailed> {
        let mut until = Instant::now() + limit;
        let mut messages = match self.unfinished.take() {
            Some(earlier) => {
                until = until.min(earlier.until);
                earlier.messages
            }
            None => VecDeque::new(),
        };
        messages.push_back(message);
        let Some(socket) = self.socket.as_mut() else {
            return Err(SendFailed::Broken);
        };
        let write = std::future::poll_fn(|cx| poll_write(socket, &mut messages, cx));
        let sent = tokio::time::timeout_at(until, write).await;
        sent.unwrap_or(Err(SendFailed::Stalled))
    }
}

/// Drives one write: each of `messages` in turn once the socket is ready for it (taken then),
/// then the flush of all the socket holds. Ready when the write is done or failed.
fn poll_write(
    socket: &mut WebSocket,
    messages: &mut VecDeque<Message>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SendFailed>> {
    while !messages.is_empty() {
        ready!(socket.poll_ready_unpin(cx)).map_err(|_| SendFailed::Broken)?;
        if let Some(message) = messages.pop_front() {
            socket
                .start_send_unpin(message)
                .map_err(|_| SendFailed::Broken)?;
        }
    }
    socket.poll_flush_unpin(cx).map_err(|_| SendFailed::Broken)
}

/// Whether a read error is a frame the client got wrong (answered with 1002), rather than the
/// connection ending (a reset without a closing handshake is a client that went away).
fn is_violation(error: &tungstenite::error::ProtocolError) -> bool {
    use tungstenite::error::ProtocolError as P;
    matches!(
        error,
        P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
            | P::InvalidCloseSequence
    )
}
