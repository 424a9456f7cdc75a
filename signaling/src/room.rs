//! A room: the sessions that can signal each other, in the order they joined.
//!
//! Join order decides the perfect-negotiation roles: of any two peers, the one that joined
//! later is polite. A resumed session keeps its place.

use crate::hub::SessionKey;

/// The members of one room, oldest first. Rooms are small (`--max-peers-per-room`, 32 by
/// default), so a vector beats a map for every operation.
#[derive(Debug, Default)]
pub struct Room {
    members: Vec<SessionKey>,
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
    pub fn add(&mut self, key: SessionKey) {
        self.members.push(key);
    }

    /// Removes a member, keeping the others' order.
    pub fn remove(&mut self, key: SessionKey) {
        self.members.retain(|k| *k != key);
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
        room.add(10);
        room.add(20);
        room.add(30);
        let roles: Vec<_> = room.others_with_roles(20).collect();
        assert_eq!(roles, [(10, true), (30, false)]);
        room.remove(10);
        assert_eq!(room.others_with_roles(30).collect::<Vec<_>>(), [(20, true)]);
        assert_eq!(room.len(), 2);
    }
}
