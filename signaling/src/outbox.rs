//! A session's outbox: its frames numbered (`seq`) and kept until the client acknowledges them.
//!
//! Every server frame of a session gets the next `seq` and is kept in the replay buffer until the
//! client acks it. While the socket is up the buffer is trimmed from the front when it passes its
//! bounds (the client has those frames; only a later resume from before them would fail). While
//! the session is parked, passing a bound ends the session with `replay_overflow`: the client
//! could not be given every missed message exactly once.
//!
//! A message is encoded to JSON once, outside any lock, as a *body* (`{"type":...}`). Numbering
//! it keeps `seq` beside a reference to the body ([`Frame::Numbered`]); the text, the body with
//! `"seq":N` prepended, is composed only when the frame is written. So a broadcast to a room is
//! encoded once and held once, however many members queue it or keep it for replay. The
//! cluster's Lua scripts frame bodies the same way, in Redis ([`Frame::Whole`]).

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use crate::protocol::ServerMessage;

/// A server message encoded once, without its `seq`: a JSON object. Cloning it shares the text
/// (a reference count), so a broadcast is held once however many receivers queue or keep it.
#[derive(Debug, Clone)]
pub struct Body(Utf8Bytes);

impl Default for Body {
    /// An empty object (a placeholder that is never sent).
    fn default() -> Self {
        Self(Utf8Bytes::from_static("{}"))
    }
}

impl Body {
    /// Encodes `message`. Serialising these types cannot fail (no maps with non-string keys),
    /// but a failure would be logged rather than crash the server.
    pub fn encode(message: &ServerMessage) -> Self {
        Self(Utf8Bytes::from(to_json(message)))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The frame numbered `seq`, sharing this body.
    pub fn numbered(&self, seq: u64) -> Frame {
        Frame::Numbered {
            seq,
            body: self.clone(),
        }
    }
}

/// One frame for one session, as queued and kept for replay.
///
/// A frame the hub numbered keeps its `seq` beside a shared [`Body`]: the text
/// `{"seq":N,...}` is composed only when the frame is written, so the frames of a broadcast
/// waiting in many queues share one buffer. A frame that arrives whole (numbered by the
/// cluster's scripts, or an unnumbered error) is kept as it is.
#[derive(Debug, Clone)]
pub enum Frame {
    /// `{"seq":N,` followed by the body's fields.
    Numbered { seq: u64, body: Body },
    /// A complete frame.
    Whole(Utf8Bytes),
}

impl Frame {
    /// The frame's text, as written to the client.
    pub fn text(&self) -> Utf8Bytes {
        match self {
            Self::Whole(text) => text.clone(),
            Self::Numbered { .. } => {
                let mut text = String::with_capacity(self.len());
                self.append_to(&mut text);
                Utf8Bytes::from(text)
            }
        }
    }

    /// Appends the frame's text to `out` (for writers that gather frames into one chunk).
    pub fn append_to(&self, out: &mut String) {
        match self {
            Self::Whole(text) => out.push_str(text),
            Self::Numbered { seq, body } => {
                let fields = body.0.strip_prefix('{').unwrap_or("}");
                out.push_str(SEQ_PREFIX);
                out.push_str(&seq.to_string());
                if fields != "}" {
                    out.push(',');
                }
                out.push_str(fields);
            }
        }
    }

    /// The length of [`Self::text`] in bytes (what the frame counts against queue and memory
    /// bounds: each holder counts it, so the count is an upper bound of what is held).
    pub fn len(&self) -> usize {
        match self {
            Self::Whole(text) => text.len(),
            Self::Numbered { seq, body } => {
                let fields = body.0.len().saturating_sub(1);
                let comma = usize::from(fields > 1);
                SEQ_PREFIX.len() + decimal_digits(*seq) + comma + fields
            }
        }
    }

    /// Whether the text is empty (never, for a frame the server builds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const SEQ_PREFIX: &str = "{\"seq\":";

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// JSON of a serialisable value; `{}` (logged) if it cannot be encoded.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a server message");
        "{}".into()
    })
}

/// A session's numbering and replay buffer.
#[derive(Debug)]
pub struct Outbox {
    next_seq: u64,
    replay: ReplayBuffer,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            next_seq: 1,
            replay: ReplayBuffer::default(),
        }
    }
}

impl Outbox {
    /// The seq the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers `body` and keeps the frame for replay; returns it.
    pub fn push(&mut self, body: &Body) -> Frame {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = body.numbered(seq);
        self.replay.push(seq, frame.clone());
        frame
    }

    /// The client processed every frame up to `seq` (at most the last one sent).
    pub fn ack(&mut self, seq: u64) {
        self.replay.ack(seq.min(self.next_seq - 1));
    }

    /// The highest seq the client acknowledged (0: none).
    pub fn acked(&self) -> u64 {
        self.replay.acked
    }

    /// Bytes of frames kept for replay.
    pub fn bytes(&self) -> usize {
        self.replay.bytes
    }

    /// Whether the replay buffer holds more than `limits` allow.
    pub fn over(&self, limits: ReplayLimits) -> bool {
        self.replay.over(limits)
    }

    /// Drops the oldest frames until the buffer is within `limits`.
    pub fn trim(&mut self, limits: ReplayLimits) {
        self.replay.trim(limits);
    }

    /// The frames after `last_seq`, if every one of them is still here.
    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<Frame>, ReplayGap> {
        self.replay.since(last_seq, self.next_seq)
    }
}

/// The bounds of a replay buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Why the frames after a resume's `last_seq` cannot be replayed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayGap {
    /// `last_seq` was never sent.
    NotSent,
    /// `last_seq` is below what the client acknowledged: it contradicts itself, and the
    /// session is left as it was.
    BelowAck,
    /// Frames after `last_seq` were dropped before the client acknowledged them (the bound
    /// passed while a socket the server thought alive was attached): nobody can resume the
    /// session exactly any more.
    Dropped,
}

/// Frames sent to a session and not yet acknowledged, oldest first, with contiguous seqs.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    frames: VecDeque<(u64, Frame)>,
    bytes: usize,
    /// The highest seq the client acknowledged (0: none).
    acked: u64,
}

impl ReplayBuffer {
    /// Appends the frame with sequence number `seq` (one more than the last one pushed).
    pub fn push(&mut self, seq: u64, frame: Frame) {
        self.bytes += frame.len();
        self.frames.push_back((seq, frame));
    }

    /// Whether the buffer holds more than its bounds allow.
    pub fn over(&self, limits: ReplayLimits) -> bool {
        self.frames.len() > limits.max_messages || self.bytes > limits.max_bytes
    }

    /// Drops the oldest frames until the buffer is within its bounds.
    pub fn trim(&mut self, limits: ReplayLimits) {
        while self.over(limits) {
            self.pop_front();
        }
    }

    /// Drops every frame up to and including `seq` (the client has processed them).
    pub fn ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        while self.frames.front().is_some_and(|(s, _)| *s <= seq) {
            self.pop_front();
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // An idle session should not keep the memory of its last burst.
            self.frames = VecDeque::new();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, frame)) = self.frames.pop_front() {
            self.bytes -= frame.len();
        }
    }

    /// The frames after `last_seq`, in order, when every one of them is still here; else why
    /// not. `next_seq` is the seq the next frame would get.
    pub fn since(&self, last_seq: u64, next_seq: u64) -> Result<Vec<Frame>, ReplayGap> {
        if last_seq >= next_seq {
            return Err(ReplayGap::NotSent);
        }
        if last_seq < self.acked {
            return Err(ReplayGap::BelowAck);
        }
        let first_kept = self.frames.front().map_or(next_seq, |(s, _)| *s);
        if last_seq + 1 < first_kept {
            return Err(ReplayGap::Dropped);
        }
        Ok(self
            .frames
            .iter()
            .filter(|(s, _)| *s > last_seq)
            .map(|(_, f)| f.clone())
            .collect())
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        Frame::Whole(Utf8Bytes::from(s.to_owned()))
    }

    #[test]
    fn replays_exactly_what_follows_last_seq() {
        let mut buf = ReplayBuffer::default();
        for seq in 1..=5 {
            buf.push(seq, frame(&format!("m{seq}")));
        }
        buf.ack(2);
        let replay = buf.since(3, 6).unwrap();
        assert_eq!(
            replay
                .iter()
                .map(|f| f.text().to_string())
                .collect::<Vec<_>>(),
            ["m4", "m5"]
        );
        assert_eq!(buf.since(5, 6).unwrap().len(), 0);
        // Seq 1 and 2 were acked away: a resume from 0 or 1 contradicts the ack.
        assert_eq!(buf.since(0, 6).unwrap_err(), ReplayGap::BelowAck);
        assert_eq!(buf.since(1, 6).unwrap_err(), ReplayGap::BelowAck);
        assert!(buf.since(2, 6).is_ok());
        // A client cannot claim messages that were never sent.
        assert_eq!(buf.since(6, 6).unwrap_err(), ReplayGap::NotSent);
    }

    #[test]
    fn frames_trimmed_before_their_ack_are_a_gap_of_their_own() {
        let limits = ReplayLimits {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        let mut buf = ReplayBuffer::default();
        for seq in 1..=5 {
            buf.push(seq, frame(&format!("m{seq}")));
        }
        buf.ack(1);
        buf.trim(limits);
        // Seq 2 was dropped unacknowledged: from 1, the session cannot be resumed exactly.
        assert_eq!(buf.since(1, 6).unwrap_err(), ReplayGap::Dropped);
        assert_eq!(buf.since(0, 6).unwrap_err(), ReplayGap::BelowAck);
        assert_eq!(buf.since(2, 6).unwrap().len(), 3);
    }

    #[test]
    fn bounds_by_count_and_bytes() {
        let limits = ReplayLimits {
            max_messages: 3,
            max_bytes: 10,
        };
        let mut buf = ReplayBuffer::default();
        buf.push(1, frame("aaaa"));
        buf.push(2, frame("bbbb"));
        assert!(!buf.over(limits));
        buf.push(3, frame("cccc"));
        assert!(buf.over(limits), "12 bytes > 10");
        buf.trim(limits);
        assert_eq!(buf.len(), 2);
        buf.push(4, frame("d"));
        buf.push(5, frame("e"));
        assert!(buf.over(limits), "4 messages > 3");
    }

    #[test]
    fn bodies_are_numbered_without_reencoding() {
        let body = Body::encode(&ServerMessage::Pong {
            reference: Some(3),
            received: None,
        });
        let frame = body.numbered(42);
        let parsed: crate::protocol::ServerFrame = serde_json::from_str(&frame.text()).unwrap();
        assert_eq!(parsed.seq, 42);
        assert_eq!(
            parsed.message,
            ServerMessage::Pong {
                reference: Some(3),
                received: None,
            }
        );
        let mut outbox = Outbox::default();
        assert_eq!(outbox.push(&body).text(), body.numbered(1).text());
        assert_eq!(outbox.next_seq(), 2);
        assert_eq!(outbox.replay_after(0).unwrap().len(), 1);
    }

    #[test]
    fn a_frame_counts_the_length_of_its_text() {
        for body in [
            Body::default(),
            Body::encode(&ServerMessage::Pong {
                reference: None,
                received: None,
            }),
        ] {
            for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
                let frame = body.numbered(seq);
                assert_eq!(frame.len(), frame.text().len(), "{seq} {}", body.as_str());
            }
        }
        assert_eq!(Body::default().numbered(7).text().as_str(), "{\"seq\":7}");
    }

    #[test]
    fn the_frames_of_a_broadcast_share_one_body() {
        let body = Body::encode(&ServerMessage::Pong {
            reference: None,
            received: None,
        });
        let frames: Vec<Frame> = (1..=100).map(|seq| body.numbered(seq)).collect();
        for frame in &frames {
            let Frame::Numbered { body: shared, .. } = frame else {
                panic!("numbered");
            };
            assert_eq!(shared.as_str().as_ptr(), body.as_str().as_ptr(), "no copy");
        }
    }
}
