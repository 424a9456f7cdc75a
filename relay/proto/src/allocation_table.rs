//! `AllocationTable`: the live allocations of one shard in a slab with generational keys,
//! indexed by client 5-tuple (client packets) and by relay address (peer packets). It only
//! stores and finds; `Server` decides (timers, quotas, gauges, outputs).

use std::net::SocketAddr;
use std::time::Instant;

use crate::allocation::Allocation;
use crate::expiry::AllocKey;
use crate::fast_hash::FastMap;
use crate::five_tuple::FiveTuple;

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
    /// Peer packets find theirs here, by the relay socket they arrived on.
    by_relay: FastMap<SocketAddr, AllocKey>,
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

    /// True if an allocation relays on `relay`.
    pub(crate) fn has_relay(&self, relay: &SocketAddr) -> bool {
        self.by_relay.contains_key(relay)
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

    /// The allocation relaying on `relay`, expired or not (the peer hot path).
    #[inline]
    pub(crate) fn by_relay_mut(&mut self, relay: &SocketAddr) -> Option<&mut Allocation> {
        let key = self.by_relay.get(relay)?;
        self.slots.get_mut(key.index as usize)?.allocation.as_mut()
    }

    /// Store `alloc` and index it.
    pub(crate) fn insert(&mut self, alloc: Allocation) -> AllocKey {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let key = AllocKey {
            index,
            generation: slot.generation,
        };
        self.by_five_tuple.insert(alloc.five_tuple, key);
        self.by_relay.insert(alloc.relay, key);
        slot.allocation = Some(alloc);
        key
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
        self.by_relay.remove(&alloc.relay);
        Some(alloc)
    }
}
