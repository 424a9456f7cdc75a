//! `AllocationTable`: the live allocations of one shard in a slab with generational keys,
//! indexed by client 5-tuple (client packets) and by `RelayHandle` (peer packets), and the
//! relay handles themselves (`RelayHandles`). It only stores and finds; `Server` decides
//! (timers, quotas, gauges, outputs).

use std::time::Instant;

use crate::allocation::Allocation;
use crate::expiry::AllocKey;
use crate::fast_hash::FastMap;
use crate::five_tuple::FiveTuple;
use crate::relay_handle::{RelayHandle, RelayHandles};
use crate::slab_index;

/// One slab slot; the generation makes stale `AllocKey`s (in timers) harmless.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// The allocations of one shard.
#[derive(Debug, Default)]
pub(crate) struct AllocationTable {
    slots: Vec<Slot>,
    /// Indexes of empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Client packets find their allocation here (one lookup on the hot path).
    by_five_tuple: FastMap<FiveTuple, AllocKey>,
    /// Peer packets find theirs here, by the handle of the relay socket they arrived on
    /// (handles of pending binds too: they are handed out with `Output::BindRelay`).
    relays: RelayHandles,
}

impl AllocationTable {
    /// The allocation of `key`, unless it was removed since.
    pub(crate) fn get(&self, key: AllocKey) -> Option<&Allocation> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.allocation.as_ref()
    }

    /// See `get`.
    pub(crate) fn get_mut(&mut self, key: AllocKey) -> Option<&mut Allocation> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.allocation.as_mut()
    }

    /// The key of the allocation of `five_tuple` (live or expired but not swept yet).
    pub(crate) fn key_of(&self, five_tuple: &FiveTuple) -> Option<AllocKey> {
        self.by_five_tuple.get(five_tuple).copied()
    }

    /// A new relay handle, for the `Output::BindRelay` of a pending Allocate.
    pub(crate) fn open_relay(&mut self) -> RelayHandle {
        self.relays.open()
    }

    /// True if `relay` was handed out by `open_relay` and is not closed yet.
    pub(crate) fn is_relay_open(&self, relay: RelayHandle) -> bool {
        self.relays.is_open(relay)
    }

    /// Release a handle that never got an allocation (its bind failed or was cancelled).
    /// The allocation's handle is released by `remove`.
    pub(crate) fn close_relay(&mut self, relay: RelayHandle) {
        self.relays.close(relay);
    }

    /// The unexpired allocation of `from` (the client hot path: one hash lookup).
    #[inline]
    pub(crate) fn live_mut(&mut self, from: &FiveTuple, now: Instant) -> Option<&mut Allocation> {
        let key = self.by_five_tuple.get(from)?;
        let alloc = self
            .slots
            .get_mut(key.index as usize)?
            .allocation
            .as_mut()?;
        (now < alloc.expires).then_some(alloc)
    }

    /// The allocation relaying on `relay`, expired or not (the peer hot path: two indexes).
    #[inline]
    pub(crate) fn by_relay_mut(&mut self, relay: RelayHandle) -> Option<&mut Allocation> {
        let key = self.relays.allocation_of(relay)?;
        self.get_mut(key)
    }

    /// Store `alloc` and index it.
    pub(crate) fn insert(&mut self, alloc: Allocation) -> AllocKey {
        let index = slab_index::reuse_or_push(&mut self.slots, &mut self.free);
        let slot = &mut self.slots[index as usize];
        let key = AllocKey {
            index,
            generation: slot.generation,
        };
        self.by_five_tuple.insert(alloc.five_tuple, key);
        self.relays.bind(alloc.handle, key);
        slot.allocation = Some(alloc);
        key
    }

    /// Every live allocation (for the periodic usage drain; never on a packet path).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.slots.iter_mut().filter_map(|s| s.allocation.as_mut())
    }

    /// Take the allocation of `key` out of the table and its indexes; `None` if it is gone.
    pub(crate) fn remove(&mut self, key: AllocKey) -> Option<Allocation> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let alloc = slot.allocation.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index);
        self.by_five_tuple.remove(&alloc.five_tuple);
        self.relays.close(alloc.handle);
        Some(alloc)
    }
}
