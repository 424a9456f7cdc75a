//! One TURN allocation (RFC 8656 section 2.2): the relayed transport address, its lifetime,
//! the credentials it was created with, and its permissions and channels.

use std::net::SocketAddr;
use std::time::Instant;

use crate::channel::Channels;
use crate::five_tuple::FiveTuple;
use crate::message::TransactionId;
use crate::permission::Permissions;
use crate::quota::TokenBucket;
use crate::relay_handle::RelayHandle;
use crate::usage::Usage;

/// The state of one allocation.
#[derive(Debug)]
pub(crate) struct Allocation {
    /// The client 5-tuple that owns it.
    pub(crate) five_tuple: FiveTuple,
    /// The relay socket, as named to the I/O layer (where peer packets arrive).
    pub(crate) handle: RelayHandle,
    /// Local address of the relay socket (its family; learned by the peer policy).
    pub(crate) relay: SocketAddr,
    /// The address put in XOR-RELAYED-ADDRESS (the public one behind 1:1 NAT).
    pub(crate) advertised: SocketAddr,
    /// When it expires unless refreshed.
    pub(crate) expires: Instant,
    /// USERNAME of the Allocate: later requests with another one get 441.
    pub(crate) username: Box<str>,
    /// The user its quota slot belongs to.
    pub(crate) quota_user: Box<str>,
    /// The earliest queued expiry timer (a refresh that shortens the lifetime queues another).
    pub(crate) timer_at: Instant,
    /// Transaction id of the Allocate that created it (a retransmission gets the same answer).
    pub(crate) created_by: TransactionId,
    /// Installed permissions.
    pub(crate) permissions: Permissions,
    /// Channel bindings.
    pub(crate) channels: Channels,
    /// Relayed-bytes budget (when `Quotas::bandwidth_per_allocation` is set).
    pub(crate) bandwidth: Option<TokenBucket>,
    /// Traffic relayed since the last `Server::drain_usage`, billed to `quota_user`.
    pub(crate) unbilled: Usage,
}
