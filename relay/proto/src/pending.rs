//! `PendingAllocations`: Allocates waiting for the I/O layer to bind their relay socket
//! (`Output::BindRelay` out, `Server::handle_relay_bound` back), by request id and by 5-tuple.

use std::collections::HashMap;

use crate::five_tuple::FiveTuple;
use crate::message::TransactionId;
use crate::output::RelayRequestId;

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
    /// The client went away (stream closed) before the bind finished.
    pub(crate) cancelled: bool,
}

/// The Allocates of one shard in flight.
#[derive(Debug, Default)]
pub(crate) struct PendingAllocations {
    by_request: HashMap<RelayRequestId, PendingAllocation>,
    /// A second Allocate from the same 5-tuple meanwhile is a retransmission or a 437.
    by_five_tuple: HashMap<FiveTuple, RelayRequestId>,
    next_request: u64,
}

impl PendingAllocations {
    /// The transaction id of the Allocate pending for `five_tuple`, if any.
    pub(crate) fn transaction_of(&self, five_tuple: &FiveTuple) -> Option<TransactionId> {
        let request = self.by_five_tuple.get(five_tuple)?;
        self.by_request.get(request).map(|p| p.transaction_id)
    }

    /// True if an Allocate from `five_tuple` waits for its bind.
    pub(crate) fn contains(&self, five_tuple: &FiveTuple) -> bool {
        self.by_five_tuple.contains_key(five_tuple)
    }

    /// Queue `p` under a new request id.
    pub(crate) fn insert(&mut self, p: PendingAllocation) -> RelayRequestId {
        self.next_request += 1;
        let request = RelayRequestId(self.next_request);
        self.by_five_tuple.insert(p.five_tuple, request);
        self.by_request.insert(request, p);
        request
    }

    /// The bind of `request` finished: take it out.
    pub(crate) fn take(&mut self, request: RelayRequestId) -> Option<PendingAllocation> {
        let p = self.by_request.remove(&request)?;
        if self.by_five_tuple.get(&p.five_tuple) == Some(&request) {
            self.by_five_tuple.remove(&p.five_tuple);
        }
        Some(p)
    }

    /// The client of `five_tuple` went away: its bind, when it finishes, is released.
    pub(crate) fn cancel(&mut self, five_tuple: &FiveTuple) {
        if let Some(request) = self.by_five_tuple.remove(five_tuple)
            && let Some(p) = self.by_request.get_mut(&request)
        {
            p.cancelled = true;
        }
    }
}
