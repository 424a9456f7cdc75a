//! What resume is built on: the per-session replay buffer of sent-but-unacknowledged frames,
//! and resume tokens.
//!
//! Every server frame of a session gets the next `seq` and is kept here until the client acks
//! it. While the socket is up the buffer is trimmed from the front when it passes its bounds
//! (the client has those frames; only a later resume from before them would fail). While the
//! session is parked, passing a bound ends the session with `replay_overflow`: the client could
//! not be given every missed message exactly once.
//!
//! A resume token is `<session-id>.<secret>`: the session id finds the session, the 128-bit
//! secret is compared in constant time.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use crate::protocol::ResumeToken;

/// The bounds of a replay buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Frames sent to a session and not yet acknowledged, oldest first, with contiguous seqs.
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    frames: VecDeque<(u64, Utf8Bytes)>,
    bytes: usize,
}

impl ReplayBuffer {
    /// Appends the frame with sequence number `seq` (one more than the last one pushed).
    pub fn push(&mut self, seq: u64, frame: Utf8Bytes) {
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

    /// The frames after `last_seq`, in order, when every one of them is still here;
    /// `None` when some were trimmed already. `next_seq` is the seq the next frame would get.
    pub fn since(&self, last_seq: u64, next_seq: u64) -> Option<Vec<Utf8Bytes>> {
        if last_seq >= next_seq {
            return None;
        }
        let first_kept = self.frames.front().map_or(next_seq, |(s, _)| *s);
        if last_seq + 1 < first_kept {
            return None;
        }
        Some(
            self.frames
                .iter()
                .filter(|(s, _)| *s > last_seq)
                .map(|(_, f)| f.clone())
                .collect(),
        )
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

/// The secret half of a resume token.
#[derive(Clone, Copy)]
pub struct ResumeSecret([u8; 16]);

impl ResumeSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = [0; 16];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The token a client presents: `<session-id>.<secret-hex>`.
    pub fn token(&self, session_id: u64) -> ResumeToken {
        ResumeToken(format!("{session_id:016x}.{}", hex::encode(self.0)))
    }

    /// The secret's hex form (the part of a token after the session id).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A secret from its hex form, if it has the right length.
    pub fn from_hex(presented: &str) -> Option<Self> {
        let bytes = hex::decode(presented).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Whether `presented` (hex) is this secret, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let Ok(bytes) = hex::decode(presented) else {
            return false;
        };
        bytes.len() == self.0.len() && bool::from(bytes.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSecret(<redacted>)")
    }
}

/// Splits a presented token into the session id and the secret's hex, if it has that shape.
pub fn parse_token(token: &ResumeToken) -> Option<(u64, &str)> {
    let (id, secret) = token.as_str().split_once('.')?;
    if id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
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
            replay.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            ["m4", "m5"]
        );
        assert_eq!(buf.since(5, 6).unwrap().len(), 0);
        // Seq 1 and 2 were acked away: a resume from 0 or 1 cannot be served exactly.
        assert!(buf.since(0, 6).is_none());
        assert!(buf.since(1, 6).is_none());
        assert!(buf.since(2, 6).is_some());
        // A client cannot claim messages that were never sent.
        assert!(buf.since(6, 6).is_none());
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
    fn tokens_round_trip_and_compare() {
        let secret = ResumeSecret::generate();
        let token = secret.token(0xabc);
        let (id, hex) = parse_token(&token).unwrap();
        assert_eq!(id, 0xabc);
        assert!(secret.matches(hex));
        assert!(!secret.matches("00"));
        assert!(!ResumeSecret::generate().matches(hex));
        assert!(parse_token(&ResumeToken::from("nonsense")).is_none());
    }
}
