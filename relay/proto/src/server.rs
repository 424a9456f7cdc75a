//! `Server`: the TURN state of one shard and its relay paths. ChannelData and peer datagrams
//! are handled here without allocation (hash lookup + header write); STUN requests go to the
//! method handlers in `methods`; every expiry goes through one `ExpiryQueue`. The state is
//! split by concern: `AllocationTable`, `PendingAllocations`, `Admission`, `OwnAddresses`, and
//! `SharedQuotas` (counters, reservations, the drain flag) shared with the other shards.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::trace;

use crate::admission::Admission;
use crate::allocation::Allocation;
use crate::allocation_table::AllocationTable;
use crate::attributes::{self, AttributeType};
use crate::channel_data;
use crate::config::{LiveSettings, ServerConfig};
use crate::expiry::{AllocKey, ExpiryQueue, Timer};
use crate::five_tuple::FiveTuple;
use crate::message::{Class, MessageBuilder, Method, StunMessage, TransactionId};
use crate::output::{BindError, ClientAction, HEADROOM, Output, PeerAction};
use crate::own_addresses::OwnAddresses;
use crate::pending::PendingAllocations;
use crate::quota::{QuotaKind, Quotas, RateLimit, SharedQuotas, TokenBucket};
use crate::relay_handle::RelayHandle;
use crate::stats::Stats;
use crate::usage::{UnbilledUsage, Usage};

/// Largest peer payload a Data indication can carry (65535 minus XOR-PEER-ADDRESS for IPv6 and
/// the DATA attribute header, rounded down to a multiple of 4).
const MAX_DATA_INDICATION_PAYLOAD: usize = 65_535 - 24 - 4 - 3;

/// The largest UDP payload to `to`: 65,535 bytes less the IPv4 and UDP headers (65,507), or
/// less the UDP header over IPv6 (65,527; no jumbograms). A larger datagram cannot be sent.
fn max_udp_payload(to: SocketAddr) -> usize {
    let v4 = match to.ip() {
        std::net::IpAddr::V4(_) => true,
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    if v4 { 65_535 - 20 - 8 } else { 65_535 - 8 }
}

/// The length of the Data indication carrying `len` bytes from `peer` (header, XOR-PEER-ADDRESS,
/// DATA padded to 4).
fn data_indication_len(peer: SocketAddr, len: usize) -> usize {
    let address = if peer.is_ipv4() { 8 } else { 20 };
    20 + 4 + address + 4 + len.next_multiple_of(4)
}

/// `now + d` that cannot panic on absurd configured durations (capped at one year).
#[inline]
pub(crate) fn later(now: Instant, d: std::time::Duration) -> Instant {
    let d = d.min(std::time::Duration::from_secs(365 * 24 * 3600));
    now.checked_add(d).unwrap_or(now)
}

/// The STUN/TURN server state of one shard: the allocations, the Allocates waiting for a
/// relay socket, admission (credentials, nonces, rate limits), the addresses learned at run
/// time, one deadline queue for every expiry, and the output queue. Drive it as the crate docs
/// say.
#[derive(Debug)]
pub struct Server {
    /// As given, except the parts [`Server::reconfigure`] replaces (learned addresses go to
    /// `own`).
    pub(crate) config: ServerConfig,
    /// Allocation counts, reservations, amplification credit and the drain flag of every
    /// shard.
    pub(crate) shared: Arc<SharedQuotas>,
    pub(crate) admission: Admission,
    pub(crate) allocations: AllocationTable,
    pub(crate) pending: PendingAllocations,
    /// The host's addresses for the peer policy, configured plus learned.
    pub(crate) own: OwnAddresses,
    /// Allocation, permission and channel deadlines (the rate-limit sweep is `admission`'s).
    pub(crate) expiry: ExpiryQueue,
    /// Drained by `poll_output`.
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    /// The last counts of allocations that ended, until `drain_usage`.
    pub(crate) unbilled: UnbilledUsage,
}

impl Server {
    /// A server with its own (unshared) allocation counters.
    pub fn new(config: ServerConfig) -> Self {
        Self::with_shared_quotas(config, Arc::new(SharedQuotas::new()))
    }

    /// A shard: allocation counts (per user, total), reservations, the amplification credit
    /// and the drain flag are shared through `shared`.
    pub fn with_shared_quotas(config: ServerConfig, shared: Arc<SharedQuotas>) -> Self {
        Self {
            admission: Admission::new(&config, Arc::clone(&shared)),
            own: OwnAddresses::new(&config.policy),
            config,
            shared,
            allocations: AllocationTable::default(),
            pending: PendingAllocations::default(),
            expiry: ExpiryQueue::default(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
            unbilled: UnbilledUsage::default(),
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
        let Some(alloc) = self.allocations.live_mut(&from, now) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        let Some(peer) = alloc.channels.by_number(number, now).map(|c| c.peer) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        if !alloc.permissions.is_permitted(peer.ip(), now) || payload.len() > max_udp_payload(peer)
        {
            // Not permitted, or more than one datagram to the peer holds (a stream client's
            // ChannelData may carry up to 65,535 bytes): not relayed, not billed.
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
        let relay = alloc.handle;
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
        // RFC 8489 section 6.3.3: an indication with an unknown comprehension-required
        // attribute is discarded.
        let (_, unknown) = msg.unknown_required();
        let (Some(peer), Some(data), 0) = (
            msg.get(AttributeType::XorPeerAddress),
            msg.get(AttributeType::Data),
            unknown,
        ) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        let Ok(peer) = attributes::decode_xor_address(peer, &tid) else {
            self.stats.malformed_packets += 1;
            return ClientAction::Drop;
        };
        if let Err(reason) = self.own.check_peer(&self.config.policy, peer) {
            self.count_denial(from, peer, reason);
            return ClientAction::Drop;
        }
        let Some(alloc) = self.allocations.live_mut(&from, now) else {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        };
        if alloc.relay.is_ipv4() != peer.is_ipv4()
            || !alloc.permissions.is_permitted(peer.ip(), now)
            || data.len() > max_udp_payload(peer)
        {
            self.stats.dropped_packets += 1;
            return ClientAction::Drop;
        }
        if !charge_to_peer(&self.config.quotas, &mut self.stats, alloc, now, data.len()) {
            return ClientAction::Drop;
        }
        let relay = alloc.handle;
        // `data` borrows `packet`: its offset is the distance between the two pointers.
        let start = data.as_ptr() as usize - packet.as_ptr() as usize;
        ClientAction::Forward {
            relay,
            peer,
            payload: start..start + data.len(),
        }
    }

    /// A peer packet of `len` payload bytes that [`Self::handle_peer_packet`] counted to the
    /// client of `relay` (its `PeerAction::ToClient`, or the Data indication of
    /// `PeerAction::Queued`) was not sent: the client's stream queue was full (it does not
    /// read). Takes it out of the counts and the allocation's bill: a user is billed for what
    /// its client was sent.
    pub fn client_missed(&mut self, relay: RelayHandle, len: usize) {
        let len = len as u64;
        self.stats.packets_to_client = self.stats.packets_to_client.saturating_sub(1);
        self.stats.bytes_to_client = self.stats.bytes_to_client.saturating_sub(len);
        if let Some(alloc) = self.allocations.by_relay_mut(relay) {
            alloc.unbilled.uncount_to_client(len);
        }
    }

    /// A datagram from `peer` on the relay socket `relay` (the handle of its `BindRelay`; a
    /// stale or unknown handle is dropped). The payload is
    /// `buf[HEADROOM..HEADROOM + len]`; leave `TAILROOM` bytes after it for stream clients.
    /// With a channel bound to `peer`, the ChannelData header is written into the headroom and
    /// `PeerAction::ToClient` names the bytes to send; otherwise a Data indication is queued.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        relay: RelayHandle,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        if buf.len() < HEADROOM + len || len > usize::from(u16::MAX) {
            self.stats.malformed_packets += 1;
            return PeerAction::Drop;
        }
        let Some(alloc) = self.allocations.by_relay_mut(relay) else {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        };
        if now >= alloc.expires || !alloc.permissions.is_permitted(peer.ip(), now) {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        }
        let to = alloc.five_tuple;
        let channel = alloc.channels.by_peer(peer, now).map(|c| c.number);
        let too_big = match channel {
            // Would not fit in a STUN message's 16-bit length with its headers.
            None if len > MAX_DATA_INDICATION_PAYLOAD => true,
            _ if to.transport.is_stream() => false,
            // Would not fit in one datagram to a UDP client.
            None => data_indication_len(peer, len) > max_udp_payload(to.client),
            Some(_) => channel_data::CHANNEL_DATA_HEADER_LEN + len > max_udp_payload(to.client),
        };
        if too_big {
            // Not relayed, not billed, and no bandwidth spent on it.
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        }
        if let Some(limit) = self.config.quotas.bandwidth_per_allocation
            && !bandwidth_bucket(alloc, now, limit).try_take(now, limit, len as u64)
        {
            self.stats.quota_hits[QuotaKind::Bandwidth.index()] += 1;
            return PeerAction::Drop;
        }
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        alloc.unbilled.count_to_client(len as u64);
        let Some(number) = channel else {
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

    /// The answer to the `Output::BindRelay` that handed out `relay`: the local address of
    /// the new relay socket, or why none could be bound (440 / 508 to the client; the handle
    /// is dead then). A socket the core no longer wants (its client went away meanwhile) is
    /// released with `Output::ReleaseRelay`.
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        relay: RelayHandle,
        result: Result<SocketAddr, BindError>,
    ) {
        self.finish_allocate(now, relay, result);
    }

    /// The TCP/TLS connection of `five_tuple` closed: its allocation is deleted (RFC 8656
    /// section 3.1); a pending one is cancelled.
    pub fn handle_connection_closed(&mut self, now: Instant, five_tuple: FiveTuple) {
        let _ = now;
        self.pending.cancel(&five_tuple);
        if let Some(key) = self.allocations.key_of(&five_tuple) {
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
        self.admission.handle_timeout(now);
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
        match (self.expiry.next_deadline(), self.admission.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next queued output; drain until `None` after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Deadlines queued (live allocations, permissions and channels, plus those of deleted
    /// allocations not yet compacted away): at most twice what the last compaction kept, plus
    /// 1024 (stale entries also leave when they fire, within 10 minutes).
    pub fn queued_timers(&self) -> usize {
        self.expiry.len()
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Hands `sink` the traffic relayed since the last call, per user (the `<user>` of a REST
    /// username, or the static user), and starts counting afresh: live allocations and those
    /// that ended since. Call it periodically (it walks every allocation of the shard), not
    /// per packet; a user may be named more than once in one call.
    pub fn drain_usage(&mut self, mut sink: impl FnMut(&str, Usage)) {
        for alloc in self.allocations.iter_mut() {
            if !alloc.unbilled.is_zero() {
                sink(&alloc.quota_user, std::mem::take(&mut alloc.unbilled));
            }
        }
        self.unbilled.drain(&mut sink);
    }

    /// Refuse new allocations (existing ones live on until they expire) when `true`. The flag
    /// is `SharedQuotas`': this drains every shard sharing it (`SharedQuotas::set_draining`).
    pub fn set_draining(&mut self, draining: bool) {
        self.shared.set_draining(draining);
    }

    /// True while new allocations are refused.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// The I/O layer failed to send a relayed packet to a peer (ENETUNREACH...): counted, the
    /// allocation stays.
    pub fn record_send_failure(&mut self) {
        self.stats.send_failures += 1;
    }

    /// The configuration, as given to `new` with what [`Self::reconfigure`] replaced since.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Takes new credentials, peer allow/deny lists and quotas (the relay's SIGHUP reload);
    /// everything else stays as given to `new`. Allocations, permissions and channels that
    /// exist stay: the new values apply to every request from now on (a removed REST secret
    /// or user stops verifying at once, a permission is checked against the new lists when
    /// it is created or refreshed), and bandwidth limits to every relayed packet.
    pub fn reconfigure(&mut self, live: &LiveSettings) {
        live.apply_to(&mut self.config);
        self.admission.reconfigure(&self.config);
    }

    /// The host's own addresses the peer policy refuses: the configured ones plus those
    /// learned from 5-tuples and relay sockets.
    pub fn own_addresses(&self) -> &OwnAddresses {
        &self.own
    }

    /// The relay address (local) of the allocation of `five_tuple`, if one is live.
    pub fn relay_address_of(&self, five_tuple: &FiveTuple) -> Option<SocketAddr> {
        let key = self.allocations.key_of(five_tuple)?;
        self.allocation(key).map(|a| a.relay)
    }

    /// The relay socket handle of the allocation of `five_tuple`, if one is live.
    pub fn relay_handle_of(&self, five_tuple: &FiveTuple) -> Option<RelayHandle> {
        let key = self.allocations.key_of(five_tuple)?;
        self.allocation(key).map(|a| a.handle)
    }

    pub(crate) fn allocation(&self, key: AllocKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    pub(crate) fn allocation_mut(&mut self, key: AllocKey) -> Option<&mut Allocation> {
        self.allocations.get_mut(key)
    }

    /// Store a new allocation, queue its expiry and count it.
    pub(crate) fn insert_allocation(&mut self, alloc: Allocation) -> AllocKey {
        let expires = alloc.expires;
        let key = self.allocations.insert(alloc);
        self.expiry.push(expires, Timer::Allocation(key));
        self.stats.allocations += 1;
        self.stats.allocations_created += 1;
        key
    }

    /// Delete an allocation: indexes, quota slot, gauges, and release its relay socket.
    pub(crate) fn remove_allocation(&mut self, key: AllocKey) {
        let Some(alloc) = self.allocations.remove(key) else {
            return;
        };
        tracing::debug!(
            client = %alloc.five_tuple.client,
            relayed = %alloc.advertised,
            user = %alloc.quota_user,
            permissions = alloc.permissions.len(),
            "allocation ended"
        );
        self.shared.release(&alloc.quota_user);
        self.unbilled.keep(&alloc.quota_user, alloc.unbilled);
        self.stats.allocations = self.stats.allocations.saturating_sub(1);
        self.stats.permissions = self
            .stats
            .permissions
            .saturating_sub(alloc.permissions.len() as u64);
        self.stats.channels = self
            .stats
            .channels
            .saturating_sub(alloc.channels.live() as u64);
        self.outputs.push_back(Output::ReleaseRelay {
            relay: alloc.handle,
        });
        // Its timers stay queued until their deadlines: compacted away under churn.
        if self.expiry.needs_compaction() {
            let allocations = &self.allocations;
            self.expiry.compact(|timer| {
                let (Timer::Allocation(key) | Timer::Permission(key, _) | Timer::Channel(key, _)) =
                    *timer;
                allocations.get(key).is_some()
            });
        }
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
    if let Some(limit) = quotas.bandwidth_per_allocation
        && !bandwidth_bucket(alloc, now, limit).try_take(now, limit, len)
    {
        stats.quota_hits[QuotaKind::Bandwidth.index()] += 1;
        return false;
    }
    stats.packets_to_peer += 1;
    stats.bytes_to_peer += len;
    alloc.unbilled.count_to_peer(len);
    true
}

/// The allocation's bandwidth bucket, made full now if it has none yet (the limit was set by
/// [`Server::reconfigure`] after the allocation was created).
fn bandwidth_bucket(alloc: &mut Allocation, now: Instant, limit: RateLimit) -> &mut TokenBucket {
    alloc
        .bandwidth
        .get_or_insert_with(|| TokenBucket::new(now, limit))
}

/// A Data indication carrying `data` from `peer` (RFC 8656 section 11.3).
fn data_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid = TransactionId(rand::random());
    let mut b = MessageBuilder::new(Method::Data, Class::Indication, tid);
    b.add_xor_address(AttributeType::XorPeerAddress, peer)
        .add(AttributeType::Data, data);
    b.finish()
}
