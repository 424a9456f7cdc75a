//! `RelayHandle`: the opaque name of one relay socket across the sans-IO boundary (like
//! quinn's `ConnectionHandle`), and `RelayHandles`, the core's slab that hands them out and
//! maps them to allocations. The relayed address stays inside the core (XOR-RELAYED-ADDRESS,
//! the peer policy); the I/O layer never has to look a socket up by address.

use crate::expiry::AllocKey;
use crate::slab_index;

/// One relay socket, named by the core when it asks for the socket (`Output::BindRelay`) and
/// used in both directions from then on: `Server::handle_relay_bound`,
/// `Server::handle_peer_packet`, `ClientAction::Forward` and `Output::ReleaseRelay`.
///
/// A slab index plus a generation. The I/O layer keeps its sockets in a `Vec` at
/// [`RelayHandle::index`] (the core keeps indexes small: a released index is reused) and
/// compares the whole handle, so that a stale handle never reaches the socket that reused its
/// index. A handle is live from the `BindRelay` that names it until the `ReleaseRelay` that
/// names it, or until `handle_relay_bound` answers it with an error (nothing was bound, so
/// nothing is released). Opaque: the core never accepts one it did not hand out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayHandle {
    index: u32,
    generation: u32,
}

impl RelayHandle {
    /// The slab index, for the I/O layer's table of sockets (small and reused, never the
    /// same live value twice).
    #[inline]
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl std::fmt::Display for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "relay-{}.{}", self.index, self.generation)
    }
}

/// What a handed-out handle stands for.
#[derive(Debug, Default, Clone, Copy)]
enum State {
    /// Not handed out (its index is on the free list).
    #[default]
    Free,
    /// `BindRelay` sent, `handle_relay_bound` not yet called.
    Binding,
    /// The relay socket of this allocation.
    Bound(AllocKey),
}

#[derive(Debug, Default)]
struct Entry {
    generation: u32,
    state: State,
}

/// The relay handles of one shard.
#[derive(Debug, Default)]
pub(crate) struct RelayHandles {
    entries: Vec<Entry>,
    /// Indexes of released handles, reused before the slab grows.
    free: Vec<u32>,
}

impl RelayHandles {
    /// A new handle for a relay socket about to be asked for.
    pub(crate) fn open(&mut self) -> RelayHandle {
        let index = slab_index::reuse_or_push(&mut self.entries, &mut self.free);
        let entry = &mut self.entries[index as usize];
        entry.state = State::Binding;
        RelayHandle {
            index,
            generation: entry.generation,
        }
    }

    fn entry_mut(&mut self, handle: RelayHandle) -> Option<&mut Entry> {
        self.entries
            .get_mut(handle.index as usize)
            .filter(|e| e.generation == handle.generation)
    }

    /// True if `handle` was handed out and is not released yet.
    pub(crate) fn is_open(&self, handle: RelayHandle) -> bool {
        self.entries
            .get(handle.index as usize)
            .is_some_and(|e| e.generation == handle.generation && !matches!(e.state, State::Free))
    }

    /// The socket of `handle` now relays for the allocation `key`.
    pub(crate) fn bind(&mut self, handle: RelayHandle, key: AllocKey) {
        if let Some(entry) = self.entry_mut(handle) {
            entry.state = State::Bound(key);
        }
    }

    /// The allocation relaying on `handle` (the peer hot path: one index, one compare).
    #[inline]
    pub(crate) fn allocation_of(&self, handle: RelayHandle) -> Option<AllocKey> {
        match self.entries.get(handle.index as usize) {
            Some(Entry {
                generation,
                state: State::Bound(key),
            }) if *generation == handle.generation => Some(*key),
            _ => None,
        }
    }

    /// `handle` is released (its `ReleaseRelay` is queued, or its bind failed): its index may
    /// be handed out again, under the next generation.
    pub(crate) fn close(&mut self, handle: RelayHandle) {
        let Some(entry) = self.entry_mut(handle) else {
            return;
        };
        if matches!(entry.state, State::Free) {
            return;
        }
        entry.state = State::Free;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(handle.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_reused_under_a_new_generation() {
        let mut h = RelayHandles::default();
        let a = h.open();
        let b = h.open();
        assert_eq!((a.index(), b.index()), (0, 1));
        let key = AllocKey {
            index: 7,
            generation: 0,
        };
        h.bind(a, key);
        assert_eq!(h.allocation_of(a), Some(key));
        assert_eq!(h.allocation_of(b), None, "still binding");
        h.close(a);
        assert!(!h.is_open(a));
        assert_eq!(h.allocation_of(a), None);
        let c = h.open();
        assert_eq!(c.index(), a.index());
        assert_ne!(c, a);
        // A stale handle neither finds nor releases the new one.
        h.bind(c, key);
        h.close(a);
        assert_eq!(h.allocation_of(c), Some(key));
        assert_eq!(h.allocation_of(a), None);
    }
}
