//! Acknowledgements on behalf of clients whose protocol has none (y-webrtc, PeerJS).
//!
//! A session's frames stay in its replay buffer, and count in the node's `--memory-budget`,
//! until they are acknowledged. Those clients never send `ack`, so their socket tasks
//! acknowledge what they wrote themselves, by the client rulebook
//! ([`client_rules::ACK_EVERY`] frames, or [`client_rules::ACK_DELAY`] after the first) and by
//! size ([`ACK_BYTES`]): what is written and not yet acknowledged stays under `ACK_BYTES` plus
//! one frame per session, for at most `ACK_DELAY`. [`LibraryFrame`]: what a session's frame is to
//! those sockets.

use std::time::Duration;

use crate::outbox::Frame;
use crate::protocol::{ServerFrame, ServerMessage, client_rules};

/// Acknowledge once the frames written and not acknowledged reach this many bytes.
pub const ACK_BYTES: usize = 16 * 1024;

/// A session's frame as a library's socket sees it: those libraries speak broadcasts only.
#[derive(Debug)]
pub enum LibraryFrame {
    /// A broadcast's `data`, to write in the library's own form.
    Broadcast {
        seq: u64,
        len: usize,
        data: serde_json::Value,
    },
    /// The node drains: the socket closes, so the client reconnects through the balancer.
    Draining { seq: u64, len: usize },
    /// Anything else (`welcome`, `ice_servers`, ...): nothing to write, but handled.
    Other { seq: u64, len: usize },
}

impl LibraryFrame {
    /// `frame` parsed (`None` for a frame that is not a server frame, which never happens).
    pub fn of(frame: &Frame) -> Option<Self> {
        let parsed = serde_json::from_str::<ServerFrame>(&frame.text()).ok()?;
        let (seq, len) = (parsed.seq, frame.len());
        Some(match parsed.message {
            ServerMessage::Broadcast { data, .. } => Self::Broadcast { seq, len, data },
            ServerMessage::Draining { .. } => Self::Draining { seq, len },
            _ => Self::Other { seq, len },
        })
    }
}

/// The frames of one session written to its client and not yet acknowledged.
#[derive(Debug, Default)]
pub struct WrittenFrames {
    last_seq: u64,
    frames: u64,
    bytes: usize,
}

impl WrittenFrames {
    /// Records frame `seq` (`len` bytes) as written: `Some(seq)` when it is time to acknowledge
    /// everything up to it; otherwise the acknowledgement is due by `ack_at`, set to
    /// [`client_rules::ACK_DELAY`] from now unless it is set already.
    pub fn record(
        &mut self,
        seq: u64,
        len: usize,
        ack_at: &mut Option<tokio::time::Instant>,
    ) -> Option<u64> {
        self.last_seq = seq;
        self.frames += 1;
        self.bytes += len;
        if self.frames >= client_rules::ACK_EVERY || self.bytes >= ACK_BYTES {
            return self.take();
        }
        ack_at.get_or_insert_with(|| tokio::time::Instant::now() + client_rules::ACK_DELAY);
        None
    }

    /// The frame to acknowledge everything written so far with, if anything is unacknowledged.
    pub fn take(&mut self) -> Option<u64> {
        if self.frames == 0 {
            return None;
        }
        self.frames = 0;
        self.bytes = 0;
        Some(self.last_seq)
    }

    /// Whether any frame written is unacknowledged.
    pub fn is_pending(&self) -> bool {
        self.frames > 0
    }
}

/// A deadline for a timer branch of `select!` that is off while `at` is `None` (the future is
/// built either way; it is polled only while `at` is set).
pub fn sleep_until(at: Option<tokio::time::Instant>) -> tokio::time::Sleep {
    tokio::time::sleep_until(
        at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acknowledges_every_16_frames_or_16_kib() {
        let mut written = WrittenFrames::default();
        let mut ack_at = None;
        for seq in 1..16 {
            assert_eq!(written.record(seq, 100, &mut ack_at), None);
        }
        assert!(written.is_pending());
        assert!(ack_at.is_some(), "the acknowledgement is due later");
        assert_eq!(written.record(16, 100, &mut ack_at), Some(16));
        assert!(!written.is_pending());
        assert_eq!(written.record(17, 10_000, &mut ack_at), None);
        assert_eq!(written.record(18, 10_000, &mut ack_at), Some(18));
        assert_eq!(written.record(19, 60_000, &mut ack_at), Some(19));
        assert_eq!(written.take(), None);
        assert_eq!(written.record(20, 1, &mut ack_at), None);
        assert_eq!(written.take(), Some(20));
    }
}
