//! The reliable messages a data channel may not have delivered yet, so that a connection that
//! is replaced can send them again on its successor
//! (`ChannelRegistry::take_unacknowledged`, in `channel`).

use std::collections::VecDeque;

use bytes::Bytes;

/// A message handed to a data channel: its bytes, and whether it is text.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) data: Bytes,
    pub(crate) text: bool,
}

/// The newest messages sent on a reliable channel, as many as SCTP may not have acknowledged:
/// their bytes reach the channel's outstanding bytes (`DataChannel::outstanding_bytes`: handed
/// over and not yet acknowledged) as of the last send or refresh ([`Self::trim_since`], 10
/// times a second while it holds any). With one sender at a time it holds at most the send
/// buffer limit ([`crate::PeerOptions::send_buffer_limit`], 1 MiB by default)
/// plus one message; each concurrent sender adds at most one message more. Messages sent on
/// one channel by concurrent tasks may be logged in another order than SCTP took them.
#[derive(Default)]
pub(crate) struct SentLog {
    messages: VecDeque<Outgoing>,
    bytes: usize,
    /// The bytes of every message recorded so far, so that outstanding bytes read before
    /// some were recorded can be told apart ([`Self::trim_since`]).
    recorded: u64,
    /// [`Self::take`] emptied it for good: the connection is being replaced.
    taken: bool,
}

impl SentLog {
    /// `message` was sent, and `outstanding` bytes are not acknowledged (`None`: not known,
    /// the channel closed meanwhile; nothing is dropped then). `false`: the log was taken
    /// before (the connection is being replaced), and the message is not carried over.
    pub(crate) fn record(&mut self, message: Outgoing, outstanding: Option<usize>) -> bool {
        if self.taken {
            return false;
        }
        self.bytes += message.data.len();
        self.recorded += message.data.len() as u64;
        self.messages.push_back(message);
        if let Some(outstanding) = outstanding {
            self.trim(outstanding);
        }
        true
    }

    /// Whether it holds no message.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The bytes recorded so far: read it before the channel's outstanding bytes, for
    /// [`Self::trim_since`].
    pub(crate) fn recorded(&self) -> u64 {
        self.recorded
    }

    /// [`Self::trim`] with `outstanding` read after [`Self::recorded`] was `recorded_before`:
    /// a message recorded meanwhile, sent after `outstanding` was read, counts as outstanding
    /// (otherwise older messages, not acknowledged, would be taken for acknowledged in its
    /// stead). Returns the outstanding bytes it took.
    pub(crate) fn trim_since(&mut self, outstanding: usize, recorded_before: u64) -> usize {
        let since = usize::try_from(self.recorded - recorded_before).unwrap_or(usize::MAX);
        let outstanding = outstanding.saturating_add(since);
        self.trim(outstanding);
        outstanding
    }

    /// Forgets the oldest messages that `outstanding` (the channel's bytes not acknowledged
    /// now) shows were acknowledged.
    fn trim(&mut self, outstanding: usize) {
        while let Some(oldest) = self.messages.front() {
            if self.bytes - oldest.data.len() < outstanding {
                break;
            }
            self.bytes -= oldest.data.len();
            self.messages.pop_front();
        }
    }

    /// The messages SCTP has not acknowledged ([`Self::unacknowledged`]), once: the log keeps
    /// nothing after, and records nothing more.
    pub(crate) fn take(&mut self, outstanding: usize) -> Vec<Outgoing> {
        let messages = self.unacknowledged(outstanding);
        self.taken = true;
        self.messages.clear();
        self.bytes = 0;
        messages
    }

    /// The newest messages whose bytes reach `outstanding`: those SCTP has not acknowledged
    /// (all of them, or the rest of one it acknowledged in part).
    pub(crate) fn unacknowledged(&self, outstanding: usize) -> Vec<Outgoing> {
        let mut bytes = 0;
        let count = self
            .messages
            .iter()
            .rev()
            .take_while(|message| {
                let more = bytes < outstanding;
                bytes += message.data.len();
                more
            })
            .count();
        self.messages
            .iter()
            .skip(self.messages.len() - count)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &str) -> Outgoing {
        Outgoing {
            data: Bytes::copy_from_slice(line.as_bytes()),
            text: true,
        }
    }

    fn lines(messages: &[Outgoing]) -> Vec<&str> {
        messages
            .iter()
            .map(|message| std::str::from_utf8(&message.data).expect("utf-8"))
            .collect()
    }

    #[test]
    fn the_sent_log_keeps_the_messages_that_may_not_be_acknowledged() {
        let mut log = SentLog::default();
        // "one" is acknowledged by the time "two" is sent: only "two" is outstanding.
        assert!(log.record(text("one"), Some(3)));
        log.record(text("two"), Some(3));
        assert_eq!(
            lines(&log.messages.iter().cloned().collect::<Vec<_>>()),
            ["two"]
        );
        // Nothing acknowledged since: both are kept.
        log.record(text("three"), Some(8));
        assert_eq!(log.bytes, 8);
        assert_eq!(lines(&log.unacknowledged(8)), ["two", "three"]);
        // A message acknowledged in part is not delivered.
        assert_eq!(lines(&log.unacknowledged(6)), ["two", "three"]);
        assert_eq!(lines(&log.unacknowledged(5)), ["three"]);
        assert_eq!(lines(&log.unacknowledged(1)), ["three"]);
        assert!(log.unacknowledged(0).is_empty());
        // Not known (the channel closed): nothing is dropped.
        log.record(text("four"), None);
        assert_eq!(
            lines(&log.unacknowledged(usize::MAX)),
            ["two", "three", "four"]
        );
        // All acknowledged: the log empties at the next send but for that one.
        log.record(text("five"), Some(4));
        assert_eq!(lines(&log.unacknowledged(usize::MAX)), ["five"]);
        assert_eq!(log.bytes, 4);
        // A refresh that read 0 outstanding bytes before "six" was recorded keeps "six".
        let before = log.recorded();
        log.record(text("six"), None);
        assert_eq!(log.trim_since(0, before), 3);
        assert_eq!(lines(&log.unacknowledged(usize::MAX)), ["six"]);
        // Acknowledged since, as a refresh finds: a channel that closes now held nothing
        // unacknowledged.
        assert_eq!(log.trim_since(0, log.recorded()), 0);
        assert!(log.is_empty());
        assert_eq!(log.bytes, 0);
        // Taken once, for a connection's successor: then it logs nothing more.
        log.record(text("six"), Some(7));
        assert_eq!(lines(&log.take(3)), ["six"]);
        assert!(!log.record(text("seven"), Some(5)));
        assert!(log.take(5).is_empty());
    }
}
