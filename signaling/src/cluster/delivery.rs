//! Frames on their way from Redis to this node's sockets: the node's pub/sub channel, the
//! dispatch of each frame to its session's inbox, slow consumers, and what a lost Redis does to
//! the sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt as _;

use super::inbox::{Offer, frame_seq};
use super::{ClusterHub, Guard, StatsSource, channel};
use crate::hub::{ConnId, SessionKey, encode};
use crate::metrics::Outage;
use crate::outbox::Frame;
use crate::protocol::{
    ConnectionStats, ErrorCode, LeaveReason, RoomId, ServerFrame, ServerMessage, close_code,
};

impl ClusterHub {
    /// Redis is gone (or this node's lease): every attached socket is closed with 1013 so its
    /// client resumes once Redis is back (frames published meanwhile may not have reached this
    /// node). An outage is counted (and logged as an error) once, by its first cause, however
    /// many of its parts fail, until a heartbeat finds the node whole again (a Redis restarted
    /// without its data drops the subscription, then the lease: one outage).
    pub(super) fn outage(&self, why: Outage) {
        let first = !self.in_outage.swap(true, Ordering::AcqRel);
        let st = self.lock();
        if first {
            self.metrics.cluster_outage(why);
            tracing::error!(
                why = why.as_str(),
                sessions = st.attached.len(),
                "cluster store unavailable: closing sockets"
            );
        } else {
            tracing::debug!(
                why = why.as_str(),
                sessions = st.attached.len(),
                "still unavailable: closing sockets"
            );
        }
        for session in st.attached.values() {
            session.tx.close(None, close_code::TRY_AGAIN_LATER);
        }
    }

    /// Receives this node's channel for as long as the node lives, reconnecting after losses.
    pub(super) async fn subscriber(self: Arc<Self>) {
        let me = channel(&self.cluster.node_id);
        loop {
            let connected = tokio::time::timeout(self.cluster.redis_timeout, async {
                let mut pubsub = self.pubsub.get_async_pubsub().await?;
                pubsub.subscribe(&me).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let mut pubsub = match connected {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot subscribe");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(_) => continue,
            };
            self.subscribed.store(true, Ordering::Release);
            tracing::debug!(channel = %me, "subscribed");
            self.receive(&me, pubsub.on_message()).await;
            self.subscribed.store(false, Ordering::Release);
            // Frames published while unsubscribed would be lost to the sockets: cut them, so
            // their clients resume from the outbox.
            self.outage(Outage::Pubsub);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Dispatches the node's channel until it ends, or stops delivering: a probe is published
    /// to it every `--node-heartbeat`, and one that does not come back within `--redis-timeout`
    /// of Redis taking it ends the subscription. A
    /// connection that stays open but passes nothing (a stalled link, a proxy that holds it)
    /// otherwise looks like a quiet channel, while the node's sockets get nothing.
    async fn receive(
        self: &Arc<Self>,
        me: &str,
        messages: impl futures_util::Stream<Item = redis::Msg> + Unpin,
    ) {
        let mut messages = messages;
        let mut ticker = tokio::time::interval(self.cluster.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (published_tx, mut published) = tokio::sync::mpsc::channel(1);
        let mut probe = ChannelProbe::default();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return };
                    let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                    match String::from_utf8(payload) {
                        Ok(text) => match text.strip_prefix(PROBE_PREFIX) {
                            Some(n) => probe.came_back(n),
                            None => self.dispatch(text),
                        },
                        Err(_) => tracing::warn!("non-UTF-8 frame on the node channel"),
                    }
                }
                Some((n, taken)) = published.recv() => probe.published(n, taken, Instant::now()),
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if probe.overdue(now, self.cluster.redis_timeout) {
                        tracing::warn!(
                            "a probe published to this node's channel did not come back within \
                             --redis-timeout: subscribing again"
                        );
                        return;
                    }
                    if let Some(n) = probe.next() {
                        let hub = Arc::clone(self);
                        let (channel, done) = (me.to_owned(), published_tx.clone());
                        tokio::spawn(async move {
                            let mut publish = redis::cmd("PUBLISH");
                            publish.arg(channel).arg(format!("{PROBE_PREFIX}{n}"));
                            let taken = hub.store.query::<i64>(&publish).await.is_ok();
                            let _ = done.send((n, taken)).await;
                        });
                    }
                }
            }
        }
    }

    /// One message of the node's channel: a frame (`SID` + JSON), frames of one body for
    /// several sessions (`!bc SID:SEQ,... BODY`), or a control (`!close SID CONN [CODE]`, 1008
    /// when no code is given; `!moved SID EXPIRES_MS`, a session parked here was resumed
    /// elsewhere or ended; `!stats SID JSON`, a session's `stats` report that reached another
    /// node).
    pub(super) fn dispatch(self: &Arc<Self>, text: String) {
        if let Some(forwarded) = text.strip_prefix("!stats ") {
            let Some((id, json)) = forwarded.split_once(' ') else {
                return;
            };
            let (Ok(key), Ok(report)) = (
                u64::from_str_radix(id, 16),
                serde_json::from_str::<ConnectionStats>(json),
            ) else {
                return;
            };
            let Some(room) = self.lock().attached.get(&key).map(|s| s.room.clone()) else {
                return;
            };
            let hub = Arc::clone(self);
            tokio::spawn(async move {
                hub.record_stats(key, &room, report, StatsSource::Forwarded)
                    .await;
            });
            return;
        }
        if let Some(moved) = text.strip_prefix("!moved ") {
            // A session parked here (until `expires_ms`) was resumed on another node, or ended
            // (a kick, an HTTP `leave` through another node): it no longer counts here (its
            // place among its address's sessions is given back).
            let Some((id, expires_ms)) = moved.split_once(' ') else {
                return;
            };
            let (Ok(key), Ok(expires_ms)) =
                (u64::from_str_radix(id, 16), expires_ms.parse::<u64>())
            else {
                return;
            };
            let mut st = self.lock();
            if st
                .parked
                .get(&key)
                .is_some_and(|p| p.expires_ms == expires_ms)
            {
                drop(st.unpark(key));
                self.update_gauges(&st);
            }
            return;
        }
        if let Some(control) = text.strip_prefix("!close ") {
            let mut parts = control.split(' ');
            let (Some(id), Some(conn)) = (parts.next(), parts.next()) else {
                return;
            };
            let (Ok(key), Ok(conn)) = (u64::from_str_radix(id, 16), conn.parse::<ConnId>()) else {
                return;
            };
            let code = parts
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(close_code::POLICY);
            let mut st = self.lock();
            if st.attached.get(&key).is_some_and(|s| s.conn == conn)
                && let Some(session) = st.detach(key)
            {
                session.tx.close(None, code);
            } else if let Some(resuming) = st.resuming.get_mut(&key)
                && resuming.conn == conn
            {
                // Its resume here is not done yet (Redis ran its script first, then what let
                // go of it): closed once it is.
                resuming.close_on_attach = Some(code);
            }
            self.update_gauges(&st);
            return;
        }
        if let Some(batch) = text.strip_prefix("!bc ") {
            // One body for several sessions of this node, each with its seq: the frame of
            // each is numbered here exactly as the scripts number frames.
            let Some((list, body)) = batch.split_once(' ') else {
                return;
            };
            let Some(fields) = body.strip_prefix('{') else {
                return;
            };
            for entry in list.split(',') {
                let Some((id, seq)) = entry.split_once(':') else {
                    continue;
                };
                let (Ok(key), Ok(seq)) = (u64::from_str_radix(id, 16), seq.parse::<u64>()) else {
                    continue;
                };
                let frame = format!("{{\"seq\":{seq},{fields}");
                self.deliver(key, seq, Utf8Bytes::from(frame));
            }
            return;
        }
        if text.len() < 16 || !text.is_char_boundary(16) {
            return;
        }
        let (id, frame) = text.split_at(16);
        let (Ok(key), Some(seq)) = (u64::from_str_radix(id, 16), frame_seq(frame)) else {
            return;
        };
        self.deliver(key, seq, Utf8Bytes::from(frame.to_owned()));
    }

    /// Frame `seq` of session `key`, from the node's channel: on to its socket, in order.
    fn deliver(self: &Arc<Self>, key: SessionKey, seq: u64, frame: Utf8Bytes) {
        let mut st = self.lock();
        if let Some(resuming) = st.resuming.get_mut(&key) {
            let _ = resuming.inbox.offer(seq, frame.clone());
        }
        let Some(session) = st.attached.get_mut(&key) else {
            return;
        };
        if session.ending {
            return;
        }
        let out = match session.inbox.offer(seq, frame) {
            Offer::Write(out) => out,
            Offer::Nothing => return,
            Offer::Overflow => {
                session.tx.close(None, close_code::TRY_AGAIN_LATER);
                return;
            }
        };
        for frame in out {
            if !session.tx.has_room(frame.len()) {
                // The error takes the seq of the first frame not queued (those queued are
                // dropped: the client sees a gap before it, `protocol.md` says so).
                session.ending = true;
                // Ending: what is queued goes now, not once Redis has ended the session.
                session.tx.discard();
                let (room, conn, error_seq) =
                    (session.room.clone(), session.conn, frame_seq(&frame));
                drop(st);
                let hub = Arc::clone(self);
                tokio::spawn(
                    async move { hub.end_slow_consumer(room, key, conn, error_seq).await },
                );
                return;
            }
            session.tx.push(Frame::Whole(frame));
        }
        session.close_if_due();
        if self.settings.memory.over() {
            self.evict_over_budget(st);
        }
    }

    /// Past the memory budget: ends the local session with the most queued (the slowest
    /// consumer) with `slow_consumer`. The sessions already being ended dropped their queues
    /// when their end was decided. Redis holds the replay buffers of a cluster: only queues
    /// count here.
    fn evict_over_budget(self: &Arc<Self>, mut st: std::sync::MutexGuard<'_, super::LocalState>) {
        if self.settings.memory.excess() == 0 {
            return;
        }
        let Some((key, session)) = st
            .attached
            .iter_mut()
            .filter(|(_, s)| !s.ending && s.tx.queued_bytes() > 0)
            .max_by_key(|(_, s)| s.tx.queued_bytes())
        else {
            return;
        };
        session.ending = true;
        let queued = session.tx.queued_bytes();
        // Ending: what is queued goes now, not once Redis has ended the session.
        session.tx.discard();
        // Every frame so far went to the queue: the error takes the next seq.
        let error_seq = session.inbox.next();
        let (key, room, conn) = (*key, session.room.clone(), session.conn);
        tracing::warn!(
            session = %format!("{key:016x}"),
            queued,
            used = self.settings.memory.used(),
            budget = self.settings.memory.limit(),
            "over the memory budget: ending the slowest consumer"
        );
        drop(st);
        self.metrics.budget_evictions.inc();
        let hub = Arc::clone(self);
        tokio::spawn(async move { hub.end_slow_consumer(room, key, conn, error_seq).await });
    }

    /// Ends a local session whose queue is full (it does not read): `slow_consumer`, as the
    /// frame numbered `error_seq` (the first one the session was not sent; when unknown, the
    /// session's next seq in Redis).
    pub(super) async fn end_slow_consumer(
        &self,
        room: RoomId,
        key: SessionKey,
        conn: ConnId,
        error_seq: Option<u64>,
    ) {
        let reply = self
            .end(
                &room,
                key,
                LeaveReason::Ended,
                Some(ErrorCode::SlowConsumer),
                Guard::Conn(conn),
            )
            .await;
        // Only the connection that was too slow: a request that took the session over
        // meanwhile keeps it.
        let session = {
            let mut st = self.lock();
            let ours = st.attached.get(&key).is_some_and(|s| s.conn == conn);
            let session = if ours { st.detach(key) } else { None };
            self.update_gauges(&st);
            session
        };
        let next = match &reply {
            Ok(reply) if reply.status == "ok" => {
                error_seq.or_else(|| reply.rest.get(2).and_then(|n| n.parse::<u64>().ok()))
            }
            _ => None,
        };
        if let Some(session) = session {
            let frame = next.map(|seq| {
                encode(&ServerFrame {
                    seq,
                    message: ServerMessage::Error {
                        code: ErrorCode::SlowConsumer,
                        message: crate::hub::ended_message(ErrorCode::SlowConsumer).into(),
                        reference: None,
                    },
                })
            });
            // Its client does not read: what is queued would only wait for the stalled write
            // to give up, held in the memory budget meanwhile.
            session.tx.discard_and_close(frame, close_code::POLICY);
        }
    }
}

/// What a node publishes to its own channel to see that the channel still delivers.
const PROBE_PREFIX: &str = "!probe ";

/// The probe of the node's channel: at most one under way.
#[derive(Debug, Default)]
struct ChannelProbe {
    next: u64,
    /// The probe under way: its number, and when Redis took it (`None` while its `PUBLISH`
    /// is not answered: it may come back before that answer).
    out: Option<(u64, Option<Instant>)>,
}

impl ChannelProbe {
    /// The number of a probe to publish now, unless one is under way.
    fn next(&mut self) -> Option<u64> {
        if self.out.is_some() {
            return None;
        }
        self.next += 1;
        self.out = Some((self.next, None));
        Some(self.next)
    }

    /// Probe `n`'s `PUBLISH` was answered: `taken` by Redis, or the call failed (which the
    /// store's own checks see to: nothing is waited for). (Its count of receivers says nothing
    /// on a Redis Cluster, where it counts only the subscribers of the Redis node that took it.)
    fn published(&mut self, n: u64, taken: bool, now: Instant) {
        let Some((out, since)) = &mut self.out else {
            return;
        };
        if *out != n {
            return;
        }
        if taken {
            *since = Some(now);
        } else {
            self.out = None;
        }
    }

    /// A probe came back (`n` as written after the prefix).
    fn came_back(&mut self, n: &str) {
        if self.out.is_some_and(|(out, _)| n.parse() == Ok(out)) {
            self.out = None;
        }
    }

    /// Whether the probe under way was taken by Redis longer than `limit` ago.
    fn overdue(&self, now: Instant, limit: Duration) -> bool {
        self.out
            .and_then(|(_, since)| since)
            .is_some_and(|since| now.duration_since(since) > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_does_not_come_back_is_overdue() {
        let limit = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut probe = ChannelProbe::default();
        let n = probe.next().expect("a first probe");
        assert_eq!(probe.next(), None, "one at a time");
        probe.published(n, true, t0);
        assert!(!probe.overdue(t0 + limit, limit));
        assert!(probe.overdue(t0 + limit * 2, limit));
        // Back: the next one goes.
        probe.came_back(&n.to_string());
        assert!(!probe.overdue(t0 + limit * 2, limit));
        let m = probe.next().expect("the next probe");
        assert_ne!(m, n);
        // A failed publish waits for nothing; a stale answer changes nothing.
        probe.published(m, false, t0);
        probe.published(n, true, t0);
        assert!(!probe.overdue(t0 + limit * 9, limit));
        // Back before Redis answered its PUBLISH: nothing is waited for.
        let k = probe.next().expect("another");
        probe.came_back(&k.to_string());
        probe.published(k, true, t0);
        assert!(!probe.overdue(t0 + limit * 9, limit));
        assert!(probe.next().is_some());
    }
}
