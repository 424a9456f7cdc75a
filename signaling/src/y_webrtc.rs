//! y-webrtc compatibility (`GET /y-webrtc`, a WebSocket): the signaling protocol of Yjs's
//! WebRTC provider, served by our hub, so a Yjs app gets our limits, auth, metrics and cluster
//! by changing its `signaling` URL. See `docs/compat.md`.
//!
//! The wire (JSON text frames): `{"type":"subscribe","topics":[..]}`,
//! `{"type":"unsubscribe","topics":[..]}`, `{"type":"publish","topic":T,"data":..}` (delivered
//! to the topic's other subscribers as the same message) and `{"type":"ping"}` (answered
//! `{"type":"pong"}`). Each subscription is a hub session in a room named after the topic's
//! hash (topics are free-form strings; room ids are not), with its own outbound queue so frames
//! can be told apart by topic; a `publish` is a `broadcast` of that session. The payloads (SDP,
//! ICE candidates, optionally encrypted with the y-webrtc room password) pass opaquely. y-webrtc
//! has no resume: a closed socket leaves every topic at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{Utf8Bytes, WebSocket};
use axum::response::Response;
use futures_util::stream::{SelectAll, Stream, StreamExt as _};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::Transport;
use crate::auth::Claims;
use crate::client_ip::IpSlot;
use crate::client_request::{ClientRequest, Refusal, Upgrade, refuse, with_limits};
use crate::connection::{Connection, Heard, Inbound};
use crate::error::RequestError;
use crate::hub::{ConnId, Flow, JoinRequest, Outbound, OutboundRx, OutboundTx, SessionKey};
use crate::protocol::{ClientMessage, ErrorCode, PeerId, RoomId, close_code};
use crate::rate_limit::{PUBLISH_BYTES_PER_TOKEN, TokenBucket, fan_out_cost};
use crate::written_acks::{self, LibraryFrame, WrittenFrames};

/// Topics one connection may subscribe to at once.
pub const MAX_TOPICS: usize = 64;
/// The longest topic name, in bytes: a connection keeps the names of its topics, so that
/// each costs at most this much (a name as long as a frame, 64 KiB, times every subscription
/// of a node was gigabytes outside every other bound).
pub const MAX_TOPIC_BYTES: usize = 1024;

/// Close codes of this endpoint (RFC 6455).
mod close {
    /// Not JSON, or not a y-webrtc message.
    pub(super) const INVALID: u16 = 1007;
    /// A limit (topics, rate, auth).
    pub(super) const POLICY: u16 = 1008;
}

/// A client message of y-webrtc's signaling protocol.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum YMessage {
    Subscribe {
        #[serde(default)]
        topics: Vec<String>,
    },
    Unsubscribe {
        #[serde(default)]
        topics: Vec<String>,
    },
    Publish {
        topic: String,
        #[serde(default)]
        data: serde_json::Value,
    },
    Ping,
}

/// A `publish` as subscribers receive it.
#[derive(Serialize)]
struct Published<'a> {
    r#type: &'static str,
    topic: &'a str,
    data: &'a serde_json::Value,
}

/// The room of a topic: its SHA-256, so any string maps to a valid room id, the same on every
/// node.
pub fn topic_room(topic: &str) -> RoomId {
    let digest = ring::digest::digest(&ring::digest::SHA256, topic.as_bytes());
    RoomId(format!("y.{}", hex::encode(&digest.as_ref()[..20])))
}

/// `GET /y-webrtc`: the upgrade, after the same checks as `/ws` (origin, draining, connection
/// limits, `?token=`).
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    client: ClientRequest,
    Upgrade(ws): Upgrade,
) -> Result<Response, Refusal> {
    let (ip_slot, claims) = client.admit_socket_with_claims(&app)?;
    if claims.is_none() && app.live().auth.is_some() {
        let e = RequestError::new(
            ErrorCode::Unauthorized,
            "this server requires a token (?token=) granting the topic",
        );
        return Err(refuse(&app, &e));
    }
    Ok(with_limits(ws, &app).on_upgrade(move |socket| run(socket, app, ip_slot, claims)))
}

/// One subscription: the hub session of the topic and its queue's handle.
struct Subscription {
    /// Which of this connection's subscriptions it is: the frames of its queue carry it, so
    /// those of an earlier subscription to the same topic (unsubscribed, whose queue may still
    /// deliver its last frames and its close) are told apart from this one's.
    generation: u64,
    key: SessionKey,
    peer: PeerId,
    /// Held so the queue never reports "closed"; the hub closes it explicitly.
    _tx: OutboundTx,
    /// Frames written since the last ack to the hub.
    written: WrittenFrames,
}

impl Subscription {
    /// Hands `message` to the hub as this topic's session on connection `conn`.
    async fn send(&self, app: &AppState, conn: ConnId, message: ClientMessage) -> Flow {
        app.hub.handle(self.key, conn, &self.peer, message).await
    }
}

/// A frame of a subscription's queue, tagged with its topic and the subscription's generation.
type Tagged = (Arc<str>, u64, Outbound);

/// The frames of every subscription, current or ended (an ended one's queue runs dry and
/// closes once the hub dropped the session).
type Inboxes = SelectAll<Pin<Box<dyn Stream<Item = Tagged> + Send>>>;

fn inbox(
    topic: Arc<str>,
    generation: u64,
    rx: OutboundRx,
) -> Pin<Box<dyn Stream<Item = Tagged> + Send>> {
    Box::pin(futures_util::stream::unfold(rx, move |mut rx| {
        let topic = Arc::clone(&topic);
        async move { rx.recv().await.map(|out| ((topic, generation, out), rx)) }
    }))
}

struct YConnection {
    app: Arc<AppState>,
    conn: ConnId,
    socket: Connection,
    ip_slot: IpSlot,
    claims: Option<Claims>,
    /// The current subscription of each topic. Every session this connection created and did
    /// not end is here: removing one ends its session (see [`YConnection::end`]), and
    /// [`YConnection::leave_all`] ends the rest when the socket goes.
    topics: HashMap<Arc<str>, Subscription>,
    /// The generation of the next subscription.
    next_generation: u64,
    bucket: TokenBucket,
    /// When the frames written and not yet acknowledged are acknowledged at the latest.
    ack_at: Option<tokio::time::Instant>,
    /// Bytes queued for this socket in all its topics' queues, which share
    /// `--outbound-queue-bytes`: a socket that does not read holds that much, not that much
    /// per topic.
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// When the client was last heard from (anything it sent, read while a write waited too).
    last_heard: Instant,
}

/// Why the connection ends: a close to send, or nothing (the client went away).
type End = Option<(u16, &'static str)>;

async fn run(socket: WebSocket, app: Arc<AppState>, ip_slot: IpSlot, claims: Option<Claims>) {
    let now = Instant::now();
    let mut this = YConnection {
        conn: app.next_conn.fetch_add(1, Ordering::Relaxed),
        socket: Connection::new(socket, app.config.ping_timeout),
        bucket: TokenBucket::new(app.live().rate_burst, now),
        app,
        ip_slot,
        claims,
        topics: HashMap::new(),
        next_generation: 0,
        ack_at: None,
        queued_bytes: Arc::default(),
        last_heard: now,
    };
    let _open = this.app.connections.open();
    let mut inboxes = Inboxes::new();
    let interval = this.app.config.ping_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let end: End = loop {
        let step = tokio::select! {
            // Its answer, if any (a pong), is heard through as any write is.
            inbound = this.socket.recv() => {
                this.hear_through(Heard::Inbound(inbound), &mut inboxes).await
            }
            Some((topic, generation, out)) = inboxes.next(), if !inboxes.is_empty() => {
                this.on_outbound(&topic, generation, out, &mut inboxes).await
            }
            () = written_acks::sleep_until(this.ack_at), if this.ack_at.is_some() => {
                this.ack_written().await;
                Ok(())
            }
            _ = ticker.tick() => {
                if this.last_heard.elapsed() >= this.app.config.ping_timeout {
                    Err(Some((close::POLICY, "ping timeout")))
                } else {
                    let heard = this.socket.ping_hearing(true).await;
                    this.hear_through(heard, &mut inboxes).await
                }
            }
        };
        if let Err(end) = step {
            break end;
        }
    };
    if let Some((code, reason)) = end {
        this.socket.close(code, reason).await;
    }
    this.socket.release();
    this.leave_all().await;
}

impl YConnection {
    /// Counts a client error with `error`, and ends the connection with `close` and `reason`.
    fn close_with(&self, error: ErrorCode, close: u16, reason: &'static str) -> Result<(), End> {
        self.app.metrics.error(error);
        Err(Some((close, reason)))
    }

    async fn on_inbound(&mut self, inbound: Inbound, inboxes: &mut Inboxes) -> Result<(), End> {
        self.last_heard = Instant::now();
        let (error, code, reason) = match inbound {
            Inbound::Text(text) => return self.on_text(text, inboxes).await,
            Inbound::Alive => return Ok(()),
            Inbound::Closed => return Err(None),
            Inbound::Binary => (
                ErrorCode::BinaryNotSupported,
                close::INVALID,
                "text frames only",
            ),
            Inbound::TooLarge => (ErrorCode::MessageTooLarge, 1009, "message too large"),
            Inbound::NotUtf8 => (
                ErrorCode::InvalidMessage,
                close::INVALID,
                "text frames must be UTF-8",
            ),
            Inbound::ProtocolViolation => (
                ErrorCode::InvalidMessage,
                1002,
                "WebSocket protocol violation",
            ),
        };
        self.close_with(error, code, reason)
    }

    /// A text frame: a y-webrtc message, taken if the client is within its rate.
    async fn on_text(&mut self, text: Utf8Bytes, inboxes: &mut Inboxes) -> Result<(), End> {
        let received = Instant::now();
        let config = self.app.live();
        if !self
            .bucket
            .try_take(Instant::now(), config.rate_limit, config.rate_burst)
        {
            return self.close_with(ErrorCode::RateLimited, close::POLICY, "rate limited");
        }
        let Ok(message) = serde_json::from_str::<YMessage>(&text) else {
            return self.close_with(
                ErrorCode::InvalidMessage,
                close::INVALID,
                "not a y-webrtc signaling message",
            );
        };
        // A publish is copied to every subscriber: one token per started 4 KiB of its data.
        if let YMessage::Publish { data, .. } = &message {
            let rest = fan_out_cost(data, PUBLISH_BYTES_PER_TOKEN) - 1;
            if rest > 0
                && self
                    .bucket
                    .try_take_n(Instant::now(), rest, config.rate_limit, config.rate_burst)
                    .is_err()
            {
                return self.close_with(ErrorCode::RateLimited, close::POLICY, "rate limited");
            }
        }
        match message {
            YMessage::Subscribe { topics } => {
                for topic in topics {
                    self.subscribe(topic, inboxes, received).await?;
                }
                Ok(())
            }
            YMessage::Unsubscribe { topics } => {
                for topic in topics {
                    self.unsubscribe(&topic).await;
                }
                Ok(())
            }
            YMessage::Publish { topic, data } => self.publish(&topic, data).await,
            YMessage::Ping => {
                // Queued: a ping read while a write waits does not stop the hearing.
                self.socket
                    .queue_text(Utf8Bytes::from_static(r#"{"type":"pong"}"#));
                Ok(())
            }
        }
    }

    /// Subscribes to `topic`, as a `join` of its room: counted in
    /// `signaling_join_latency_seconds` from `received` (when the `subscribe` was read) to the
    /// subscription in place.
    async fn subscribe(
        &mut self,
        topic: String,
        inboxes: &mut Inboxes,
        received: Instant,
    ) -> Result<(), End> {
        if self.topics.contains_key(topic.as_str()) {
            return Ok(());
        }
        if topic.len() > MAX_TOPIC_BYTES {
            return self.close_with(
                ErrorCode::InvalidRoomId,
                close::POLICY,
                "topic name too long",
            );
        }
        if self.topics.len() >= MAX_TOPICS {
            return self.close_with(
                ErrorCode::TooManyRooms,
                close::POLICY,
                "too many topics on one connection",
            );
        }
        if let Some(claims) = &self.claims
            && claims.room.as_str() != topic
        {
            return self.close_with(
                ErrorCode::Forbidden,
                close::POLICY,
                "the token does not grant this topic",
            );
        }
        if !self.ip_slot.try_join(Instant::now()) {
            return self.close_with(
                ErrorCode::RateLimited,
                close::POLICY,
                "too many subscriptions from this address",
            );
        }
        let Some(ticket) = self.ip_slot.try_session() else {
            return self.close_with(
                ErrorCode::TooManySessions,
                close::POLICY,
                "too many sessions from this address",
            );
        };
        let (tx, rx) = self.app.topic_queue(&self.queued_bytes);
        let joined = self
            .app
            .hub
            .join(
                self.conn,
                &tx,
                JoinRequest {
                    reference: None,
                    version: 1,
                    room: topic_room(&topic),
                    name: None,
                    ticket: Some(ticket),
                    transport: Transport::YWebrtc,
                    alone: false,
                },
            )
            .await;
        let attached = match joined {
            Ok(attached) => {
                let latency = received.elapsed().as_secs_f64();
                self.app.metrics.join_latency.observe(latency);
                attached
            }
            Err(error) => {
                return self.close_with(
                    error.code,
                    close::POLICY,
                    "the topic cannot take more subscribers",
                );
            }
        };
        let topic: Arc<str> = Arc::from(topic);
        let generation = self.next_generation;
        self.next_generation += 1;
        inboxes.push(inbox(Arc::clone(&topic), generation, rx));
        self.topics.insert(
            topic,
            Subscription {
                generation,
                key: attached.key,
                peer: attached.peer,
                _tx: tx,
                written: WrittenFrames::default(),
            },
        );
        Ok(())
    }

    async fn unsubscribe(&mut self, topic: &str) {
        if let Some(sub) = self.topics.remove(topic) {
            self.end(sub).await;
        }
    }

    /// Ends the session of `sub`, just removed from [`Self::topics`] (a no-op if the hub
    /// already ended it). Its queue's stream ends when the hub drops the session's handle;
    /// what it still delivers is ignored (its generation is no topic's current one).
    async fn end(&mut self, sub: Subscription) {
        let _ = sub
            .send(&self.app, self.conn, ClientMessage::Leave { id: None })
            .await;
    }

    async fn publish(&mut self, topic: &str, data: serde_json::Value) -> Result<(), End> {
        let Some(sub) = self.topics.get(topic) else {
            // The reference server delivers it anyway; y-webrtc always subscribes first.
            self.app.metrics.error(ErrorCode::NotJoined);
            return Ok(());
        };
        let flow = sub
            .send(
                &self.app,
                self.conn,
                ClientMessage::Broadcast {
                    id: None,
                    cseq: None,
                    data,
                },
            )
            .await;
        match flow {
            Flow::Continue => Ok(()),
            Flow::Retry(_) => Err(Some((1013, "unavailable"))),
            // The hub ended the session (slow consumer, budget) and its close waits behind the
            // frames still queued for it: close now, as that close would (dropping the topic
            // instead would leave the client subscribed to nothing without knowing it).
            Flow::Left | Flow::Gone => Err(Some((close::POLICY, "session ended"))),
        }
    }

    /// Sees a write through (`heard`: how it went so far), handling what the client sends
    /// meanwhile: a client slow to read is still heard (its pings, its unsubscribes), not
    /// found silent once the write is done.
    async fn hear_through(&mut self, mut heard: Heard, inboxes: &mut Inboxes) -> Result<(), End> {
        loop {
            match heard {
                Heard::Sent(sent) => return sent.map_err(|_| None),
                Heard::Inbound(inbound) => self.on_inbound(inbound, inboxes).await?,
            }
            heard = self.socket.go_on_hearing(true).await;
        }
    }

    /// Whether `topic`'s subscription is still the one of `generation`.
    fn subscribed(&self, topic: &str, generation: u64) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|sub| sub.generation == generation)
    }

    async fn on_outbound(
        &mut self,
        topic: &Arc<str>,
        generation: u64,
        out: Outbound,
        inboxes: &mut Inboxes,
    ) -> Result<(), End> {
        if !self.subscribed(topic, generation) {
            // From a subscription that is over (unsubscribed, and maybe subscribed again since:
            // its close must not end the new one, its frames are not the new one's to ack).
            return Ok(());
        }
        let frame = match out {
            Outbound::Frame(frame) => frame,
            Outbound::Close { code, .. } => {
                return match code {
                    // The session was ended by a `leave`: the socket stays, for other topics.
                    close_code::NORMAL => {
                        if let Some(sub) = self.topics.remove(topic) {
                            self.end(sub).await;
                        }
                        Ok(())
                    }
                    // A cluster node that lost Redis closes its sockets so their clients come
                    // back later.
                    close_code::TRY_AGAIN_LATER => Err(Some((code, "unavailable"))),
                    // The hub ended the session (slow consumer, budget) or closes the socket
                    // (drain) with the session still there: the socket closes first, then
                    // `leave_all` ends whatever is left.
                    code => Err(Some((code, "session ended"))),
                };
            }
        };
        let (seq, len, data) = match LibraryFrame::of(&frame) {
            Some(LibraryFrame::Broadcast { seq, len, data }) => (seq, len, data),
            // Closed at once: lib0's socket reconnects after any close, through the balancer
            // to another node.
            Some(LibraryFrame::Draining { .. }) => {
                return Err(Some((close_code::GOING_AWAY, "server shutting down")));
            }
            // welcome, peer_joined, peer_left...: y-webrtc has no such messages.
            Some(LibraryFrame::Other { seq, len }) => {
                self.handled(topic, seq, len).await;
                return Ok(());
            }
            None => return Ok(()),
        };
        let published = serde_json::to_string(&Published {
            r#type: "publish",
            topic,
            data: &data,
        })
        .unwrap_or_default();
        // Counted by the hub, once per delivery.
        let heard = self
            .socket
            .send_text_hearing(Utf8Bytes::from(published), true)
            .await;
        self.hear_through(heard, inboxes).await?;
        // Unsubscribed meanwhile (and maybe subscribed again): not the new one's to ack.
        if self.subscribed(topic, generation) {
            self.handled(topic, seq, len).await;
        }
        Ok(())
    }

    /// Frame `seq` (`len` bytes) of `topic`'s session is written (or has nothing to write): it
    /// is acknowledged now or by the ack timer.
    async fn handled(&mut self, topic: &str, seq: u64, len: usize) {
        let Some(sub) = self.topics.get_mut(topic) else {
            return;
        };
        if let Some(seq) = sub.written.record(seq, len, &mut self.ack_at) {
            let _ = sub
                .send(&self.app, self.conn, ClientMessage::Ack { seq })
                .await;
        }
    }

    /// Acknowledges every frame written and not yet acknowledged, on every topic.
    async fn ack_written(&mut self) {
        self.ack_at = None;
        for sub in self.topics.values_mut() {
            if let Some(seq) = sub.written.take() {
                let _ = sub
                    .send(&self.app, self.conn, ClientMessage::Ack { seq })
                    .await;
            }
        }
    }

    async fn leave_all(&mut self) {
        let topics: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        for topic in topics {
            self.unsubscribe(&topic).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_valid_room_ids_the_same_everywhere() {
        let room = topic_room("my document / ünïcode");
        assert!(crate::protocol::is_valid_room_id(room.as_str()), "{room}");
        assert_eq!(room, topic_room("my document / ünïcode"));
        assert_ne!(room, topic_room("another"));
    }

    #[test]
    fn the_client_messages_parse() {
        let m: YMessage =
            serde_json::from_str(r#"{"type":"subscribe","topics":["a","b"]}"#).unwrap();
        assert!(matches!(m, YMessage::Subscribe { topics } if topics.len() == 2));
        let m: YMessage =
            serde_json::from_str(r#"{"type":"publish","topic":"a","data":{"x":1}}"#).unwrap();
        assert!(matches!(m, YMessage::Publish { .. }));
        assert!(serde_json::from_str::<YMessage>(r#"{"type":"ping"}"#).is_ok());
        assert!(serde_json::from_str::<YMessage>(r#"{"type":"dance"}"#).is_err());
    }
}
