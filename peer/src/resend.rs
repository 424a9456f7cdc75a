//! The client's side of `cseq` (`docs/protocol.md`, "Client sequence numbers"): `signal` and
//! `broadcast` frames are numbered as they are written, kept until the server confirms them
//! (`received` in `pong` and `resumed`), and written again after a resume when the server did
//! not handle them before the socket dropped. The server drops what it handled already, so
//! each frame takes effect exactly once. A server that predates `cseq` sends no `received`:
//! then nothing is kept or sent again. Pure state: the time is passed in.

use std::collections::VecDeque;

use signaling::protocol::{ClientMessage, ClientSeq, client_rules};
use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ResendLog {
    /// The number the next numbered frame gets.
    next: ClientSeq,
    /// Numbered frames written to a socket and not confirmed yet, in order.
    unconfirmed: VecDeque<ClientMessage>,
    /// Numbered frames written since the last `ping`, and when the first of them was.
    since_ping: u64,
    first_since_ping: Option<Instant>,
    /// False once the server showed it does not confirm (no `received`).
    confirming: bool,
}

impl Default for ResendLog {
    fn default() -> Self {
        Self {
            next: 1,
            unconfirmed: VecDeque::new(),
            since_ping: 0,
            first_since_ping: None,
            confirming: true,
        }
    }
}

impl ResendLog {
    /// Gives a `signal` or `broadcast` that has no number yet the next one, if `fits` says the
    /// numbered frame is small enough to send; if not, leaves it unnumbered (its number goes to
    /// the next frame) and returns false. A frame the server would refuse for its size would
    /// come back with every resume, so it must not take a number (`docs/protocol.md`, "cseq").
    /// Any other frame is only measured.
    pub(crate) fn number_if_fits(
        &mut self,
        message: &mut ClientMessage,
        fits: impl FnOnce(&ClientMessage) -> bool,
    ) -> bool {
        let Some(cseq @ None) = message.cseq_mut() else {
            return fits(message);
        };
        *cseq = Some(self.next);
        if !fits(message) {
            if let Some(cseq) = message.cseq_mut() {
                *cseq = None;
            }
            return false;
        }
        self.next += 1;
        true
    }

    /// `message` was written to the socket at `now`: a numbered one is kept until confirmed.
    pub(crate) fn written(&mut self, message: ClientMessage, now: Instant) {
        if self.confirming && message.cseq().is_some() {
            self.unconfirmed.push_back(message);
            self.since_ping += 1;
            self.first_since_ping.get_or_insert(now);
        }
    }

    /// Whether to send a `ping` now so that its `pong` confirms what was written
    /// ([`client_rules::CONFIRM_EVERY`] frames, or [`client_rules::CONFIRM_DELAY`] after the
    /// first of them).
    pub(crate) fn ping_due(&self, now: Instant) -> bool {
        self.since_ping >= client_rules::CONFIRM_EVERY
            || self
                .first_since_ping
                .is_some_and(|at| now.saturating_duration_since(at) >= client_rules::CONFIRM_DELAY)
    }

    /// A `ping` was written.
    pub(crate) fn pinged(&mut self) {
        self.since_ping = 0;
        self.first_since_ping = None;
    }

    /// The server handled every numbered frame up to `received` (`pong`, `resumed`); `None`:
    /// the server predates `cseq` and will never confirm, so nothing is kept from now on.
    pub(crate) fn confirmed(&mut self, received: Option<ClientSeq>) {
        let Some(received) = received else {
            self.confirming = false;
            self.unconfirmed.clear();
            return;
        };
        while self
            .unconfirmed
            .front()
            .and_then(ClientMessage::cseq)
            .is_some_and(|n| n <= received)
        {
            self.unconfirmed.pop_front();
        }
    }

    /// A resume said the server handled up to `received`: the frames after it, in order, to
    /// write again before anything else.
    pub(crate) fn resend(&mut self, received: Option<ClientSeq>) -> VecDeque<ClientMessage> {
        self.confirmed(received);
        self.since_ping = 0;
        self.first_since_ping = None;
        std::mem::take(&mut self.unconfirmed)
    }

    /// The session was lost and joined again as a new one: numbering starts over and nothing
    /// is sent again (its peers are gone; the client drops what it had queued, too).
    pub(crate) fn restart(&mut self) {
        *self = Self {
            confirming: self.confirming,
            ..Self::default()
        };
    }

    /// How many numbered frames wait for confirmation.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.unconfirmed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::protocol::PeerId;
    use std::time::Duration;

    fn broadcast(n: u64) -> ClientMessage {
        ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::json!(n),
        }
    }

    /// Numbers broadcast `n` and writes it at `at`; returns its number.
    fn write(log: &mut ResendLog, n: u64, at: Instant) -> Option<ClientSeq> {
        let mut message = broadcast(n);
        log.number_if_fits(&mut message, |_| true);
        let cseq = message.cseq();
        log.written(message, at);
        cseq
    }

    #[test]
    fn a_frame_too_large_once_numbered_takes_no_number() {
        let mut log = ResendLog::default();
        let encoded = |m: &ClientMessage| serde_json::to_string(m).unwrap().len();
        let mut first = broadcast(1000);
        assert!(log.number_if_fits(&mut first, |m| encoded(m) <= 64));
        assert_eq!(first.cseq(), Some(1));
        // The limit is the numbered frame's exact size: to the byte, not one over.
        let max = encoded(&first);
        let mut at_max = broadcast(1001);
        assert!(log.number_if_fits(&mut at_max, |m| encoded(m) <= max));
        assert_eq!((at_max.cseq(), encoded(&at_max)), (Some(2), max));
        let mut over = broadcast(10000);
        assert!(!log.number_if_fits(&mut over, |m| encoded(m) <= max));
        assert_eq!(over.cseq(), None, "a frame not sent keeps no number");
        let mut next = broadcast(3);
        assert!(log.number_if_fits(&mut next, |_| true));
        assert_eq!(next.cseq(), Some(3), "the number went to the next frame");
        // A frame that is never numbered is only measured.
        let mut ping = ClientMessage::Ping { id: None };
        assert!(!log.number_if_fits(&mut ping, |_| false));
        assert_eq!(log.next, 4);
    }

    #[test]
    fn frames_are_numbered_kept_until_confirmed_and_written_again_after_a_resume() {
        let mut log = ResendLog::default();
        let t0 = Instant::now();
        for n in 0..5 {
            assert_eq!(write(&mut log, n, t0), Some(n + 1));
        }
        let mut ping = ClientMessage::Ping { id: None };
        log.number_if_fits(&mut ping, |_| true);
        log.written(ping, t0);
        assert_eq!(log.waiting(), 5, "pings are not numbered or kept");
        log.confirmed(Some(2));
        assert_eq!(log.waiting(), 3);
        let again: Vec<_> = log
            .resend(Some(3))
            .iter()
            .filter_map(ClientMessage::cseq)
            .collect();
        assert_eq!(again, [4, 5]);
        assert_eq!(log.waiting(), 0);
        // A frame keeps its number when it is written again.
        let mut message = ClientMessage::Signal {
            id: None,
            cseq: Some(4),
            to: PeerId("p".into()),
            signal: signaling::protocol::Signal::EndOfCandidates {
                username_fragment: None,
            },
        };
        log.number_if_fits(&mut message, |_| true);
        assert_eq!(message.cseq(), Some(4));
    }

    #[test]
    fn a_server_without_received_gets_nothing_kept_or_sent_again() {
        let mut log = ResendLog::default();
        let t0 = Instant::now();
        write(&mut log, 0, t0);
        log.confirmed(None);
        assert_eq!(log.waiting(), 0);
        write(&mut log, 1, t0);
        assert_eq!(log.waiting(), 0);
        assert!(log.resend(None).is_empty());
    }

    #[test]
    fn a_ping_is_due_after_enough_frames_or_time() {
        let mut log = ResendLog::default();
        let t0 = Instant::now();
        assert!(
            !log.ping_due(t0 + Duration::from_secs(60)),
            "nothing to confirm"
        );
        write(&mut log, 0, t0);
        assert!(!log.ping_due(t0));
        assert!(log.ping_due(t0 + client_rules::CONFIRM_DELAY));
        log.pinged();
        for n in 1..client_rules::CONFIRM_EVERY {
            write(&mut log, n, t0);
            assert!(!log.ping_due(t0));
        }
        write(&mut log, 99, t0);
        assert!(log.ping_due(t0));
    }

    #[test]
    fn a_new_session_numbers_from_one_and_forgets_the_old_frames() {
        let mut log = ResendLog::default();
        let t0 = Instant::now();
        write(&mut log, 0, t0);
        log.restart();
        assert_eq!(log.waiting(), 0);
        let mut next = broadcast(1);
        log.number_if_fits(&mut next, |_| true);
        assert_eq!(next.cseq(), Some(1));
    }
}
