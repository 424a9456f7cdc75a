//! `PendingAllocations`: Allocates waiting for the I/O layer to bind their relay socket
//! (`Output::BindRelay` out, `Server::handle_relay_bound` back), by relay handle and by 5-tuple.

use std::collections::HashMap;

use crate::five_tuple::FiveTuple;
use crate::message::TransactionId;
use crate::relay_handle::RelayHandle;

/// An Allocate waiting for the I/O layer to bind its relay socket.
#[derive(Debug)]
pub(crate) struct PendingAllocation {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) transaction_id: TransactionId,
    pub(crate) lifetime_secs: u32,
    pub(crate) username: Box<str>,
    pub(crate) quota_user: Box<str>,
    pub(crate) key: [u8; 16],
    /// EVEN-PORT with R: reserve the next port once bound.
    pub(crate) reserve_next: bool,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: answered with ADDRESS-ERROR-CODE 440 for IPv6.
    pub(crate) dual_refused: bool,
    /// The client went away (stream closed) before the bind finished.
    pub(crate) cancelled: bool,
    /// When the Allocate arrived (for the allocation latency).
    pub(crate) received_at: std::time::Instant,
}

/// The Allocates of one shard in flight.
#[derive(Debug, Default)]
pub(crate) struct PendingAllocations {
    by_relay: HashMap<RelayHandle, PendingAllocation>,
    /// A second Allocate from the same 5-tuple meanwhile is a retransmission or a 437.
    by_five_tuple: HashMap<FiveTuple, RelayHandle>,
}

impl PendingAllocations {
    /// The transaction id of the Allocate pending for `five_tuple`, if any.
    pub(crate) fn transaction_of(&self, five_tuple: &FiveTuple) -> Option<TransactionId> {
        let relay = self.by_five_tuple.get(five_tuple)?;
        self.by_relay.get(relay).map(|p| p.transaction_id)
    }

    /// True if an Allocate from `five_tuple` waits for its bind.
    pub(crate) fn contains(&self, five_tuple: &FiveTuple) -> bool {
        self.by_five_tuple.contains_key(five_tuple)
    }

    /// Queue `p`, waiting for the relay socket `relay` (a handle just opened).
    pub(crate) fn insert(&mut self, relay: RelayHandle, p: PendingAllocation) {
        self.by_five_tuple.insert(p.five_tuple, relay);
        self.by_relay.insert(relay, p);
    }

    /// The bind of `relay` finished: take it out.
    pub(crate) fn take(&mut self, relay: RelayHandle) -> Option<PendingAllocation> {
        let p = self.by_relay.remove(&relay)?;
        if self.by_five_tuple.get(&p.five_tuple) == Some(&relay) {
            self.by_five_tuple.remove(&p.five_tuple);
        }
        Some(p)
    }

    /// The client of `five_tuple` went away: its bind, when it finishes, is released.
    pub(crate) fn cancel(&mut self, five_tuple: &FiveTuple) {
        if let Some(relay) = self.by_five_tuple.remove(five_tuple)
            && let Some(p) = self.by_relay.get_mut(&relay)
        {
            p.cancelled = true;
        }
    }
}
