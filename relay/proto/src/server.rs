//! `Server`: the TURN state of one shard and its relay paths. ChannelData and peer datagrams
//! are handled here without allocation (hash lookup + header write); STUN requests go to the
//! method handlers in `methods`; every expiry goes through one `ExpiryQueue`.

use std::collections::{HashMap, VecDeque};

use crate::fast_hash::FastMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::trace;

use crate::allocation::{Allocation, PendingAllocation};
use crate::attributes::{self, AttributeType};
use crate::auth::Authenticator;
use crate::channel_data;
use crate::config::ServerConfig;
use crate::expiry::{AllocKey, ExpiryQueue, Timer};
use crate::five_tuple::FiveTuple;
use crate::message::{Class, MessageBuilder, Method, StunMessage, TransactionId};
use crate::nonce::NonceKeys;
use crate::output::{BindError, ClientAction, HEADROOM, Output, PeerAction, RelayRequestId};
use crate::quota::{IpRateLimiter, QuotaKind, Quotas, SharedQuotas};
use crate::stats::Stats;

/// Largest peer payload a Data indication can carry (65535 minus XOR-PEER-ADDRESS for IPv6 and
/// the DATA attribute header, rounded down to a multiple of 4).
const MAX_DATA_INDICATION_PAYLOAD: usize = 65_535 - 24 - 4 - 3;

/// `now + d` that cannot panic on absurd configured durations (capped at one year).
#[inline]
pub(crate) fn later(now: Instant, d: std::time::Duration) -> Instant {
    let d = d.min(std::time::Duration::from_secs(365 * 24 * 3600));
    now.checked_add(d).unwrap_or(now)
}

/// One slab slot; the generation makes stale `AllocKey`s (in timers) harmless.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) allocation: Option<Allocation>,
}

/// The STUN/TURN server state of one shard: allocations keyed by 5-tuple, an index from relay
/// address to allocation, one deadline queue for every expiry. Drive it as the crate docs say.
#[derive(Debug)]
pub struct Server {
    pub(crate) config: ServerConfig,
    pub(crate) shared: Arc<SharedQuotas>,
    pub(crate) auth: Authenticator,
    pub(crate) nonces: NonceKeys,
    pub(crate) slots: Vec<Slot>,
    pub(crate) free: Vec<u32>,
    pub(crate) by_five_tuple: FastMap<FiveTuple, AllocKey>,
    pub(crate) by_relay: FastMap<SocketAddr, AllocKey>,
    pub(crate) pending: HashMap<RelayRequestId, PendingAllocation>,
    pub(crate) pending_by_five_tuple: HashMap<FiveTuple, RelayRequestId>,
    pub(crate) next_request: u64,
    pub(crate) expiry: ExpiryQueue,
    /// Requests without MESSAGE-INTEGRITY per source IP.
    pub(crate) unauthenticated: IpRateLimiter,
    /// 401/438 responses per source IP.
    pub(crate) unauthorized: IpRateLimiter,
    pub(crate) next_sweep: Option<Instant>,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    pub(crate) draining: bool,
}

impl Server {
    /// A server with its own (unshared) allocation counters.
    pub fn new(config: ServerConfig) -> Self {
        Self::with_shared_quotas(config, Arc::new(SharedQuotas::new()))
    }

    /// A shard: allocation counts (per user, total) and the drain flag are shared through `shared`.
    pub fn with_shared_quotas(config: ServerConfig, shared: Arc<SharedQuotas>) -> Self {
        let auth = Authenticator::new(&config.realm, &config.auth);
        let nonces = NonceKeys::new(
            &config.auth.nonce_secret,
            config.auth.nonce_lifetime.as_secs(),
        );
        let q = &config.quotas;
        let unauthenticated = IpRateLimiter::new(q.unauthenticated_per_ip, q.rate_limit_table_size);
        let unauthorized = IpRateLimiter::new(q.unauthorized_per_ip, q.rate_limit_table_size);
        let draining = config.draining;
        Self {
            config,
            shared,
            auth,
            nonces,
            slots: Vec::new(),
            free: Vec::new(),
            by_five_tuple: FastMap::default(),
            by_relay: FastMap::default(),
            pending: HashMap::new(),
            pending_by_five_tuple: HashMap::new(),
            next_request: 0,
            expiry: ExpiryQueue::default(),
            unauthenticated,
            unauthorized,
            next_sweep: None,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            draining,
        }
    }

    /// One UDP datagram, or one framed message from a TCP/TLS stream (`framing`), from a
    /// client. ChannelData and Send indications return `ClientAction::Forward` without
    /// allocating; requests queue their response (`ClientAction::Queued`).
    pub fn handle_client_packet(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &[u8],
    ) -> ClientAction {
        let Some(&first) = packet.first() else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        if channel_data::is_channel_data(first) {
            return self.client_channel_data(now, from, packet);
        }
        let msg = match StunMessage::parse(packet) {
            Ok(msg) => msg,
            Err(err) => {
                trace!(client = %from.client, %err, "malformed packet from client");
                self.stats.malformed_packets += 1;
                return ClientAction::Drop;
            }
        };
        match msg.class() {
            Class::Request => {
                let before = self.outputs.len();
                self.handle_request(now, from, &msg);
                if self.outputs.len() > before {
                    ClientAction::Queued
                } else {
                    ClientAction::Drop
                }
            }
            Class::Indication if msg.method() == Some(Method::Send) => {
                self.client_send_indication(now, from, &msg, packet)
            }
            // A Binding indication is a keepalive (RFC 8489 section 6.3.2): nothing to do.
            Class::Indication if msg.method() == Some(Method::Binding) => ClientAction::Drop,
            _ => {
                self.stats.dropped_packets += 1;
                ClientAction::Drop
            }
        }
    }

    /// ChannelData from a client: the hot path (two lookups, no allocation).
    fn client_channel_data(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &[u8],
    ) -> ClientAction {
        let Ok((number, payload)) = channel_data::parse(packet) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        let Some(alloc) = live_allocation(&self.by_five_tuple, &mut self.slots, &from, now) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        let Some(peer) = alloc.channels.by_number(number, now).map(|c| c.peer) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        if !alloc.permissions.is_permitted(peer.ip(), now) {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        if !charge_to_peer(
            &self.config.quotas,
            &mut self.stats,
            alloc,
            now,
            payload.len(),
        ) {
            return ClientAction::Drop;
        }
        let relay = alloc.relay;
        ClientAction::Forward {
            relay,
            peer,
            payload,
        }
    }

    /// A Send indication (RFC 8656 section 11.2): forward its DATA to the peer in place.
    fn client_send_indication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &StunMessage<'_>,
        packet: &[u8],
    ) -> ClientAction {
        let tid = msg.transaction_id();
        let (Some(peer), Some(data)) = (
            msg.get(AttributeType::XorPeerAddress),
            msg.get(AttributeType::Data),
        ) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        let Ok(peer) = attributes::decode_xor_address(peer, &tid) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        if let Err(reason) = self.config.policy.check_addr(peer) {
            self.count_denial(from, peer, reason);
            return ClientAction::Drop;
        }
        let Some(alloc) = live_allocation(&self.by_five_tuple, &mut self.slots, &from, now) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        if alloc.relay.is_ipv4() != peer.is_ipv4()
            || !alloc.permissions.is_permitted(peer.ip(), now)
        {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        if !charge_to_peer(&self.config.quotas, &mut self.stats, alloc, now, data.len()) {
            return ClientAction::Drop;
        }
        let relay = alloc.relay;
        // `data` borrows `packet`: its offset is the distance between the two pointers.
        let start = data.as_ptr() as usize - packet.as_ptr() as usize;
        ClientAction::Forward {
            relay,
            peer,
            payload: start..start + data.len(),
        }
    }

    /// A datagram from `peer` on the relay socket bound to `relay`. The payload is
    /// `buf[HEADROOM..HEADROOM + len]`; leave `TAILROOM` bytes after it for stream clients.
    /// With a channel bound to `peer`, the ChannelData header is written into the headroom and
    /// `PeerAction::ToClient` names the bytes to send; otherwise a Data indication is queued.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        if buf.len() < HEADROOM + len || len > usize::from(u16::MAX) {
            self.stats.malformed_packets += 1;
            return PeerAction::Drop;
        }
        let Some(&key) = self.by_relay.get(&relay) else {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        };
        let Some(alloc) = self
            .slots
            .get_mut(key.index as usize)
            .and_then(|s| s.allocation.as_mut())
        else {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        };
        if now >= alloc.expires || !alloc.permissions.is_permitted(peer.ip(), now) {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        }
        if let (Some(limit), Some(bucket)) = (
            self.config.quotas.bandwidth_per_allocation,
            alloc.bandwidth.as_mut(),
        ) && !bucket.try_take(now, limit, len as u64)
        {
            self.stats.quota_hits[QuotaKind::Bandwidth.index()] += 1;
            return PeerAction::Drop;
        }
        let to = alloc.five_tuple;
        let channel = alloc.channels.by_peer(peer, now).map(|c| c.number);
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        let Some(number) = channel else {
            if len > MAX_DATA_INDICATION_PAYLOAD {
                // Would not fit in a STUN message's 16-bit length with its headers.
                self.stats.dropped_packets += 1;
                return PeerAction::Drop;
            }
            let data = data_indication(peer, &buf[HEADROOM..HEADROOM + len]);
            self.outputs.push_back(Output::Transmit { to, data });
            return PeerAction::Queued;
        };
        let mut header = [0u8; channel_data::CHANNEL_DATA_HEADER_LEN];
        channel_data::write_header(&mut header, number, len as u16);
        buf[..HEADROOM].copy_from_slice(&header);
        let total = channel_data::framed_len(len, to.transport.is_stream());
        if total > HEADROOM + len {
            if buf.len() < total {
                // No tailroom for the stream padding: one copy through the output queue.
                let mut data = buf[..HEADROOM + len].to_vec();
                data.resize(total, 0);
                self.outputs.push_back(Output::Transmit { to, data });
                return PeerAction::Queued;
            }
            buf[HEADROOM + len..total].fill(0);
        }
        PeerAction::ToClient {
            to,
            range: 0..total,
        }
    }

    /// The answer to `Output::BindRelay`: the local address of the new relay socket, or why
    /// none could be bound (440 / 508 to the client).
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        request: RelayRequestId,
        result: Result<SocketAddr, BindError>,
    ) {
        self.finish_allocate(now, request, result);
    }

    /// The TCP/TLS connection of `five_tuple` closed: its allocation is deleted (RFC 8656
    /// section 3.1); a pending one is cancelled.
    pub fn handle_connection_closed(&mut self, now: Instant, five_tuple: FiveTuple) {
        let _ = now;
        if let Some(request) = self.pending_by_five_tuple.remove(&five_tuple)
            && let Some(p) = self.pending.get_mut(&request)
        {
            p.cancelled = true;
        }
        if let Some(&key) = self.by_five_tuple.get(&five_tuple) {
            self.remove_allocation(key);
            self.stats.allocations_deleted += 1;
        }
    }

    /// Run every expiry due at `now` (allocations, permissions, channels, rate-limit tables).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.expiry.pop_due(now) {
            match timer {
                Timer::Allocation(key) => self.allocation_timer(key, now),
                Timer::Permission(key, ip) => {
                    let Some(alloc) = self.allocation_mut(key) else {
                        continue;
                    };
                    if alloc.permissions.remove_if_expired(ip, now) {
                        self.stats.permissions = self.stats.permissions.saturating_sub(1);
                    } else if let Some(at) = alloc.permissions.expiry_of(ip) {
                        self.expiry.push(at, Timer::Permission(key, ip));
                    }
                }
                Timer::Channel(key, number) => {
                    let Some(alloc) = self.allocation_mut(key) else {
                        continue;
                    };
                    let (uncount, next) = alloc.channels.on_timer(number, now);
                    if uncount {
                        self.stats.channels = self.stats.channels.saturating_sub(1);
                    }
                    if let Some(at) = next {
                        self.expiry.push(at, Timer::Channel(key, number));
                    }
                }
            }
        }
        if self.next_sweep.is_some_and(|at| now >= at) {
            self.unauthenticated.sweep(now);
            self.unauthorized.sweep(now);
            let tracked = self.unauthenticated.len() + self.unauthorized.len();
            self.next_sweep = (tracked > 0).then(|| now + IpRateLimiter::SWEEP_INTERVAL);
        }
    }

    fn allocation_timer(&mut self, key: AllocKey, now: Instant) {
        let Some(alloc) = self.allocation_mut(key) else {
            return;
        };
        if now >= alloc.expires {
            trace!(client = %alloc.five_tuple.client, "allocation expired");
            self.remove_allocation(key);
            self.stats.allocations_expired += 1;
        } else if alloc.timer_at <= now {
            // This was the only queued timer: queue the next one at the refreshed expiry.
            alloc.timer_at = alloc.expires;
            let at = alloc.expires;
            self.expiry.push(at, Timer::Allocation(key));
        }
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.expiry.next_deadline(), self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next queued output; drain until `None` after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Refuse new allocations (existing ones live on until they expire) when `true`.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// True while new allocations are refused (this shard's flag or the shared one).
    pub fn is_draining(&self) -> bool {
        self.draining || self.shared.is_draining()
    }

    /// The I/O layer failed to send a relayed packet to a peer (ENETUNREACH...): counted, the
    /// allocation stays.
    pub fn record_send_failure(&mut self) {
        self.stats.send_failures += 1;
    }

    /// The configuration in use (the policy includes the addresses learned at run time).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The relay address (local) of the allocation of `five_tuple`, if one is live.
    pub fn relay_address_of(&self, five_tuple: &FiveTuple) -> Option<SocketAddr> {
        let key = self.by_five_tuple.get(five_tuple)?;
        self.allocation(*key).map(|a| a.relay)
    }

    pub(crate) fn allocation(&self, key: AllocKey) -> Option<&Allocation> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.allocation.as_ref()
    }

    pub(crate) fn allocation_mut(&mut self, key: AllocKey) -> Option<&mut Allocation> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.allocation.as_mut()
    }

    /// Store a new allocation in the slab and index it.
    pub(crate) fn insert_allocation(&mut self, alloc: Allocation) -> AllocKey {
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
        self.expiry.push(alloc.expires, Timer::Allocation(key));
        slot.allocation = Some(alloc);
        self.stats.allocations += 1;
        self.stats.allocations_created += 1;
        key
    }

    /// Delete an allocation: indexes, quota slot, gauges, and release its relay socket.
    pub(crate) fn remove_allocation(&mut self, key: AllocKey) {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return;
        };
        if slot.generation != key.generation {
            return;
        }
        let Some(alloc) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index);
        self.by_five_tuple.remove(&alloc.five_tuple);
        self.by_relay.remove(&alloc.relay);
        self.shared.release(&alloc.quota_user);
        self.stats.allocations = self.stats.allocations.saturating_sub(1);
        self.stats.permissions = self
            .stats
            .permissions
            .saturating_sub(alloc.permissions.len() as u64);
        self.stats.channels = self
            .stats
            .channels
            .saturating_sub(alloc.channels.live() as u64);
        self.outputs
            .push_back(Output::ReleaseRelay { relay: alloc.relay });
    }

    pub(crate) fn count_denial(
        &mut self,
        from: FiveTuple,
        peer: SocketAddr,
        reason: crate::policy::DenyReason,
    ) {
        tracing::debug!(client = %from.client, %peer, %reason, "peer address denied");
        self.stats.peer_denied[reason.index()] += 1;
    }
}

/// Charges `len` payload bytes sent to a peer against the allocation's bandwidth quota and
/// counts them. `false`: over quota (counted as a quota hit); drop the packet.
fn charge_to_peer(
    quotas: &Quotas,
    stats: &mut Stats,
    alloc: &mut Allocation,
    now: Instant,
    len: usize,
) -> bool {
    let len = len as u64;
    if let (Some(limit), Some(bucket)) = (quotas.bandwidth_per_allocation, alloc.bandwidth.as_mut())
        && !bucket.try_take(now, limit, len)
    {
        stats.quota_hits[QuotaKind::Bandwidth.index()] += 1;
        return false;
    }
    stats.packets_to_peer += 1;
    stats.bytes_to_peer += len;
    true
}

/// The live allocation of `from` (split borrow so the caller can still update `stats`).
#[inline]
fn live_allocation<'a>(
    by_five_tuple: &FastMap<FiveTuple, AllocKey>,
    slots: &'a mut [Slot],
    from: &FiveTuple,
    now: Instant,
) -> Option<&'a mut Allocation> {
    let key = by_five_tuple.get(from)?;
    let alloc = slots.get_mut(key.index as usize)?.allocation.as_mut()?;
    (now < alloc.expires).then_some(alloc)
}

/// A Data indication carrying `data` from `peer` (RFC 8656 section 11.3).
fn data_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid = TransactionId(rand::random());
    let mut b = MessageBuilder::new(Method::Data, Class::Indication, tid);
    b.add_xor_address(AttributeType::XorPeerAddress, peer)
        .add(AttributeType::Data, data);
    b.finish()
}
