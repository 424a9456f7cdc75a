//! The chat lines `peer join` holds until a peer can take them: lines typed while no peer was
//! in the room, for the next one that connects, and lines for a peer in the room whose chat
//! channel is not open (it is connecting, its connection is being replaced, or its path is
//! down), for that peer once it is back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use peer::protocol::PeerId;

/// The most lines held for no peer, and for each peer (each at most one message, 64 KiB: 64 MiB
/// at worst, a line held for several peers held once).
pub(crate) const MAX_HELD_LINES: usize = 1024;

/// A chat line, shared by the peers it waits for.
pub(crate) type Line = Arc<str>;

#[derive(Default)]
pub(crate) struct Outbox {
    /// Typed while no peer was in the room: for the next peer that connects.
    unaddressed: VecDeque<Line>,
    /// For a peer in the room that could not take them yet, in order.
    waiting: HashMap<PeerId, VecDeque<Line>>,
    /// The peers the user was told lines are held for, until a line reaches them: a peer
    /// whose channel keeps failing as lines are sent is named once, not once a line.
    announced: HashSet<PeerId>,
}

/// Why a line is not held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_HELD_LINES`] lines already wait.
    Full,
}

impl Outbox {
    /// Holds `line` for the next peer that connects; `true` if it is the first one held.
    pub(crate) fn hold_unaddressed(&mut self, line: Line) -> Result<bool, Refused> {
        if self.unaddressed.len() >= MAX_HELD_LINES {
            return Err(Refused::Full);
        }
        self.unaddressed.push_back(line);
        Ok(self.unaddressed.len() == 1)
    }

    /// Holds `line` for `peer`; `true` if it is the first one held for it since a line last
    /// reached it ([`Self::reached`]): the time to tell the user.
    pub(crate) fn hold_for(&mut self, peer: &PeerId, line: Line) -> Result<bool, Refused> {
        let queue = self.waiting.entry(peer.clone()).or_default();
        if queue.len() >= MAX_HELD_LINES {
            return Err(Refused::Full);
        }
        queue.push_back(line);
        Ok(self.announced.insert(peer.clone()))
    }

    /// A line reached `peer`: lines held for it from now on are news again.
    pub(crate) fn reached(&mut self, peer: &PeerId) {
        self.announced.remove(peer);
    }

    /// What `peer`, which can take lines now, gets: the unaddressed lines first (they were
    /// typed before), then its own.
    pub(crate) fn take_for(&mut self, peer: &PeerId) -> Vec<Line> {
        let mut lines: Vec<Line> = self.unaddressed.drain(..).collect();
        lines.extend(self.waiting.remove(peer).into_iter().flatten());
        lines
    }

    /// `peer` left the room: how many lines waited for it.
    pub(crate) fn forget(&mut self, peer: &PeerId) -> usize {
        self.announced.remove(peer);
        self.waiting.remove(peer).map_or(0, |queue| queue.len())
    }

    /// `old` is known as `new` now (a re-join).
    pub(crate) fn rename(&mut self, old: &PeerId, new: &PeerId) {
        if let Some(queue) = self.waiting.remove(old) {
            self.waiting.insert(new.clone(), queue);
        }
        if self.announced.remove(old) {
            self.announced.insert(new.clone());
        }
    }

    /// Whether stdin may be read: fewer than [`MAX_HELD_LINES`] lines wait for no peer, and
    /// for each peer.
    pub(crate) fn has_room(&self) -> bool {
        self.unaddressed.len() < MAX_HELD_LINES
            && self
                .waiting
                .values()
                .all(|queue| queue.len() < MAX_HELD_LINES)
    }

    pub(crate) fn unaddressed_len(&self) -> usize {
        self.unaddressed.len()
    }

    /// The peers lines wait for, and how many each.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = (&PeerId, usize)> {
        self.waiting.iter().map(|(peer, queue)| (peer, queue.len()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.unaddressed.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::from(s)
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|line| &**line).collect()
    }

    #[test]
    fn a_peer_gets_the_unaddressed_lines_then_its_own_in_order() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.hold_unaddressed("early".into()), Ok(true));
        assert_eq!(outbox.hold_for(&id("ada"), "one".into()), Ok(true));
        assert_eq!(outbox.hold_for(&id("ada"), "two".into()), Ok(false));
        assert_eq!(outbox.hold_for(&id("bob"), "two".into()), Ok(true));
        assert_eq!(texts(&outbox.take_for(&id("ada"))), ["early", "one", "two"]);
        // The unaddressed lines went to the first peer that took them.
        assert_eq!(texts(&outbox.take_for(&id("bob"))), ["two"]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_peer_whose_lines_bounce_is_announced_once_until_a_line_reaches_it() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.hold_for(&id("ada"), "one".into()), Ok(true));
        // Its channel seems open, the held line is taken, and the send fails: held again.
        let taken = outbox.take_for(&id("ada"));
        assert_eq!(outbox.hold_for(&id("ada"), taken[0].clone()), Ok(false));
        assert_eq!(outbox.hold_for(&id("ada"), "two".into()), Ok(false));
        assert_eq!(texts(&outbox.take_for(&id("ada"))), ["one", "two"]);
        outbox.reached(&id("ada"));
        assert_eq!(outbox.hold_for(&id("ada"), "three".into()), Ok(true));
        // A renamed peer keeps what it was told; one that left starts afresh.
        outbox.rename(&id("ada"), &id("ada2"));
        assert_eq!(outbox.hold_for(&id("ada2"), "four".into()), Ok(false));
        outbox.forget(&id("ada2"));
        assert_eq!(outbox.hold_for(&id("ada2"), "five".into()), Ok(true));
    }

    #[test]
    fn lines_follow_a_renamed_peer_and_are_counted_when_it_leaves() {
        let mut outbox = Outbox::default();
        outbox.hold_for(&id("old"), "a".into()).unwrap();
        outbox.rename(&id("old"), &id("new"));
        assert!(outbox.take_for(&id("old")).is_empty());
        outbox.hold_for(&id("new"), "b".into()).unwrap();
        assert_eq!(outbox.waiting().collect::<Vec<_>>(), [(&id("new"), 2)]);
        assert_eq!(outbox.forget(&id("new")), 2);
        assert_eq!(outbox.forget(&id("new")), 0);
        assert!(outbox.is_empty());
    }

    #[test]
    fn at_most_max_held_lines_wait_for_each_peer_and_for_none() {
        let mut outbox = Outbox::default();
        for _ in 0..MAX_HELD_LINES {
            outbox.hold_for(&id("ada"), "x".into()).unwrap();
            outbox.hold_unaddressed("y".into()).unwrap();
        }
        assert_eq!(outbox.hold_for(&id("ada"), "x".into()), Err(Refused::Full));
        assert_eq!(outbox.hold_unaddressed("y".into()), Err(Refused::Full));
        assert!(!outbox.has_room());
        outbox.take_for(&id("bob"));
        assert!(!outbox.has_room(), "ada's lines still fill her queue");
        outbox.take_for(&id("ada"));
        assert!(outbox.has_room());
        assert_eq!(outbox.hold_for(&id("bob"), "x".into()), Ok(true));
    }
}
