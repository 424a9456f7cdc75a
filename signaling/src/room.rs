//! A room: the sessions that can signal each other, in the order they joined.
//!
//! Join order decides the perfect-negotiation roles: of any two peers, the one that joined
//! later is polite. A resumed session keeps its place.

use std::collections::HashMap;

use crate::hub::SessionKey;
use crate::protocol::PeerId;

/// The members of one room, oldest first, and an index from peer id to session. Rooms are
/// small (`--max-peers-per-room`, 32 by default), so the order is a vector; signals find their
/// target through the index.
#[derive(Debug, Default)]
pub struct Room {
    members: Vec<SessionKey>,
    by_peer: HashMap<PeerId, SessionKey>,
}

impl Room {
    /// The members, oldest first.
    pub fn members(&self) -> &[SessionKey] {
        &self.members
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds a newcomer at the end (the youngest, polite towards everyone already here).
    pub fn add(&mut self, key: SessionKey, peer: PeerId) {
        self.members.push(key);
        self.by_peer.insert(peer, key);
    }

    /// Removes a member, keeping the others' order.
    pub fn remove(&mut self, key: SessionKey, peer: &PeerId) {
        self.members.retain(|k| *k != key);
        self.by_peer.remove(peer);
    }

    /// The session of `peer`, if it is a member.
    pub fn session_of(&self, peer: &PeerId) -> Option<SessionKey> {
        self.by_peer.get(peer).copied()
    }

    /// Every member but `key`, each with whether `key` is polite towards it (joined later).
    pub fn others_with_roles(&self, key: SessionKey) -> impl Iterator<Item = (SessionKey, bool)> {
        let mine = self.members.iter().position(|k| *k == key);
        self.members
            .iter()
            .enumerate()
            .filter(move |(_, k)| **k != key)
            .map(move |(i, k)| (*k, mine.is_some_and(|m| m > i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_joiner_is_polite_towards_earlier_ones() {
        let mut room = Room::default();
        room.add(10, PeerId::from("a"));
        room.add(20, PeerId::from("b"));
        room.add(30, PeerId::from("c"));
        let roles: Vec<_> = room.others_with_roles(20).collect();
        assert_eq!(roles, [(10, true), (30, false)]);
        assert_eq!(room.session_of(&PeerId::from("b")), Some(20));
        room.remove(10, &PeerId::from("a"));
        assert_eq!(room.session_of(&PeerId::from("a")), None);
        assert_eq!(room.others_with_roles(30).collect::<Vec<_>>(), [(20, true)]);
        assert_eq!(room.len(), 2);
    }
}
