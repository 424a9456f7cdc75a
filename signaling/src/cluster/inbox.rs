//! The frames of one attached session on their way from Redis to its socket, in `seq` order.
//!
//! Frames arrive through the node's pub/sub channel in the order Redis numbered them, but a
//! resume races with them: frames published between the resume script and the moment the
//! replay is written must neither be lost nor written twice. The inbox holds what arrives
//! before it knows where the session stands, then passes on exactly the contiguous run after
//! the last frame written. Pure state: no I/O, no clock.

use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;

/// How many out-of-order frames an inbox holds before it gives up on the session (a gap that
/// never fills means frames were lost: the session must resume from its outbox instead).
pub const MAX_HELD: usize = 1024;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Inbox {
    /// The seq of the next frame to write; `None` until the session's position is known.
    next: Option<u64>,
    held: BTreeMap<u64, Utf8Bytes>,
}

/// What an offered frame leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Write these frames, in order.
    Write(Vec<Utf8Bytes>),
    /// Held or dropped (a duplicate): nothing to write now.
    Nothing,
    /// Too many frames wait behind a gap: the session must be cut off and resumed.
    Overflow,
}

impl Inbox {
    /// An inbox whose next frame is `next`.
    pub fn starting_at(next: u64) -> Self {
        Self {
            next: Some(next),
            held: BTreeMap::new(),
        }
    }

    /// An inbox that holds every frame until [`Inbox::start`].
    pub fn pending() -> Self {
        Self::default()
    }

    /// The session's position is known: frames before `next` were written (the replay).
    /// Returns the held frames that now follow in order.
    pub fn start(&mut self, next: u64) -> Vec<Utf8Bytes> {
        self.next = Some(next);
        self.drain()
    }

    /// The seq of the next frame to write, once known.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// A frame with `seq` arrived.
    pub fn offer(&mut self, seq: u64, frame: Utf8Bytes) -> Offer {
        if self.next.is_some_and(|next| seq < next) {
            return Offer::Nothing;
        }
        if self.held.len() >= MAX_HELD {
            return Offer::Overflow;
        }
        self.held.insert(seq, frame);
        let out = self.drain();
        if out.is_empty() {
            Offer::Nothing
        } else {
            Offer::Write(out)
        }
    }

    fn drain(&mut self) -> Vec<Utf8Bytes> {
        let Some(mut next) = self.next else {
            return Vec::new();
        };
        self.held.retain(|seq, _| *seq >= next);
        let mut out = Vec::new();
        while let Some(frame) = self.held.remove(&next) {
            out.push(frame);
            next += 1;
        }
        self.next = Some(next);
        out
    }
}

/// The `seq` of an encoded frame: every frame starts with `{"seq":N,`.
pub fn frame_seq(frame: &str) -> Option<u64> {
    let digits = frame.strip_prefix("{\"seq\":")?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("{{\"seq\":{seq},\"type\":\"pong\"}}"))
    }

    fn seqs(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames.iter().map(|x| frame_seq(x).unwrap()).collect()
    }

    #[test]
    fn frames_racing_a_resume_are_written_once_in_order() {
        let mut inbox = Inbox::pending();
        // Published after the resume script, before its replay (seq 5..=7) was written.
        assert_eq!(inbox.offer(9, f(9)), Offer::Nothing);
        assert_eq!(inbox.offer(8, f(8)), Offer::Nothing);
        // A duplicate of a replayed frame.
        assert_eq!(inbox.offer(7, f(7)), Offer::Nothing);
        assert_eq!(seqs(&inbox.start(8)), [8, 9]);
        assert_eq!(inbox.offer(9, f(9)), Offer::Nothing);
        let Offer::Write(out) = inbox.offer(10, f(10)) else {
            panic!()
        };
        assert_eq!(seqs(&out), [10]);
    }

    #[test]
    fn a_gap_holds_until_filled_and_is_bounded() {
        let mut inbox = Inbox::starting_at(1);
        assert_eq!(inbox.offer(3, f(3)), Offer::Nothing);
        let Offer::Write(out) = inbox.offer(1, f(1)) else {
            panic!()
        };
        assert_eq!(seqs(&out), [1]);
        let Offer::Write(out) = inbox.offer(2, f(2)) else {
            panic!()
        };
        assert_eq!(seqs(&out), [2, 3]);
        for seq in 0..MAX_HELD as u64 {
            assert_eq!(inbox.offer(100 + seq, f(100 + seq)), Offer::Nothing);
        }
        assert_eq!(inbox.offer(5000, f(5000)), Offer::Overflow);
    }

    #[test]
    fn seq_is_read_from_the_frame_head() {
        assert_eq!(frame_seq("{\"seq\":42,\"type\":\"pong\"}"), Some(42));
        assert_eq!(frame_seq("{\"type\":\"pong\"}"), None);
    }
}
