//! The STUN/TURN request handlers of `Server`, one per method, each citing its RFC section,
//! plus authentication and response building. Unauthenticated responses carry no SOFTWARE, no
//! reason phrase, and a FINGERPRINT only when the response still fits in the request's size;
//! over UDP they are paid for by the source's amplification budget.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, trace};

use crate::allocation::Allocation;
use crate::attributes::{self, AttributeType as Attr};
use crate::auth::{AuthFailure, Identity, MAX_USERNAME};
use crate::channel::BindConflict;
use crate::channel_data;
use crate::error_code::ErrorCode;
use crate::expiry::{AllocKey, Timer};
use crate::five_tuple::{AddressFamily, FiveTuple, Transport};
use crate::message::{Class, MessageBuilder, Method, StunMessage, TransactionId};
use crate::output::{BindError, Output};
use crate::pending::PendingAllocation;
use crate::policy::DenyReason;
use crate::quota::{QuotaKind, TokenBucket};
use crate::relay_handle::RelayHandle;
use crate::server::{Server, later};

/// Size of a FINGERPRINT attribute.
const FINGERPRINT_SIZE: usize = 8;

/// The request methods this server implements; requests of any other method (or of a
/// method that is not a request, like Send or Data) are dropped.
fn supported_request(method: Option<Method>) -> Option<Method> {
    method.filter(|m| {
        matches!(
            m,
            Method::Binding
                | Method::Allocate
                | Method::Refresh
                | Method::CreatePermission
                | Method::ChannelBind
        )
    })
}

/// A request that passed authentication.
struct Authenticated {
    identity: Identity,
    username: Box<str>,
}

/// A request that passed authentication and is about the requester's own live allocation
/// (the common opening of Refresh, CreatePermission and ChannelBind).
struct Authorized {
    /// The long-term key that signs the response.
    key: [u8; 16],
    /// The allocation of the request's 5-tuple.
    alloc: AllocKey,
}

/// The client's address as it should appear in XOR-MAPPED-ADDRESS: an IPv4-mapped IPv6
/// address (a dual-stack socket's view of an IPv4 client) is reported as the IPv4 address.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(v4.into(), addr.port())),
        std::net::IpAddr::V4(_) => addr,
    }
}

/// What an Allocate asks for besides credentials and lifetime.
struct AllocateParams {
    family: AddressFamily,
    /// EVEN-PORT present.
    even_port: bool,
    /// EVEN-PORT with the R bit: reserve the next port.
    reserve_next: bool,
    /// RESERVATION-TOKEN: use a port reserved by an earlier Allocate.
    token: Option<[u8; 8]>,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: a dual allocation, which this server does not make;
    /// the IPv4 allocation is answered with ADDRESS-ERROR-CODE 440 for IPv6.
    dual_refused: bool,
}

/// The ADDRESS-ERROR-CODE of an allocation asked as dual: the IPv6 half was not made.
fn refuse_ipv6_half(b: &mut MessageBuilder) {
    let code = ErrorCode::AddressFamilyNotSupported;
    b.add_with(Attr::AddressErrorCode, |out| {
        attributes::encode_address_error_code(out, 0x02, code.code(), code.reason());
    });
}

/// Whether `msg` asks for a dual allocation (ADDITIONAL-ADDRESS-FAMILY IPv6).
fn asks_dual(msg: &StunMessage<'_>) -> bool {
    msg.get(Attr::AdditionalAddressFamily)
        .map(attributes::decode_address_family)
        == Some(Ok(0x02))
}

/// RFC 8656 section 7.2 steps 2-6: family, EVEN-PORT and RESERVATION-TOKEN, or an error code.
fn allocate_params(msg: &StunMessage<'_>) -> Result<AllocateParams, ErrorCode> {
    let Some(Ok(transport)) = msg
        .get(Attr::RequestedTransport)
        .map(attributes::decode_requested_transport)
    else {
        return Err(ErrorCode::BadRequest);
    };
    if transport != attributes::PROTOCOL_UDP {
        return Err(ErrorCode::UnsupportedTransportProtocol);
    }
    let family_attr = msg.get(Attr::RequestedAddressFamily);
    let additional = msg.get(Attr::AdditionalAddressFamily);
    let even_port = msg.get(Attr::EvenPort);
    let token = match msg.get(Attr::ReservationToken) {
        None => None,
        Some(_) if family_attr.is_some() || additional.is_some() || even_port.is_some() => {
            return Err(ErrorCode::BadRequest);
        }
        Some(t) => Some(<[u8; 8]>::try_from(t).map_err(|_| ErrorCode::BadRequest)?),
    };
    // Section 7.2 step 6: with REQUESTED-ADDRESS-FAMILY, or naming IPv4 (the family every
    // allocation has), it is a 400.
    let dual_refused = match additional.map(attributes::decode_address_family) {
        None => false,
        Some(Ok(0x02)) if family_attr.is_none() => true,
        Some(Ok(0x02) | Ok(0x01)) | Some(Err(_)) => return Err(ErrorCode::BadRequest),
        Some(Ok(_)) => return Err(ErrorCode::AddressFamilyNotSupported),
    };
    let reserve_next = match even_port {
        None => false,
        Some([first, ..]) => first & 0x80 != 0,
        Some([]) => return Err(ErrorCode::BadRequest),
    };
    let family = match family_attr.map(attributes::decode_address_family) {
        None | Some(Ok(0x01)) => AddressFamily::V4,
        Some(Ok(0x02)) => AddressFamily::V6,
        Some(Ok(_)) => return Err(ErrorCode::AddressFamilyNotSupported),
        Some(Err(_)) => return Err(ErrorCode::BadRequest),
    };
    Ok(AllocateParams {
        family,
        even_port: even_port.is_some(),
        reserve_next,
        token,
        dual_refused,
    })
}

impl Server {
    /// Dispatch a request (RFC 8489 section 6.3).
    pub(crate) fn handle_request(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        if from.transport == Transport::Udp {
            let len = msg.raw().len();
            self.stats.udp_request_bytes += len as u64;
            self.shared.amplification.earn(
                self.config.quotas.amplification_allowance,
                now,
                from.client.ip(),
                len,
            );
        }
        let Some(method) = supported_request(msg.method()) else {
            // RFC 8489 section 6.3: a method the server does not support, or one that is not
            // a request (Send, Data), fails the basic checks and is silently discarded.
            self.stats.malformed_packets += 1;
            let method = msg.method_code();
            trace!(client = %from.client, method, "request of an unsupported method dropped");
            return;
        };
        if !msg.has_integrity() && !self.admission.allow_unauthenticated(now, from.client.ip()) {
            self.stats.quota_hits[QuotaKind::UnauthenticatedRate.index()] += 1;
            return;
        }
        let (unknown, n) = msg.unknown_required();
        if n > 0 {
            // Before authentication (RFC 8489 section 6.3 checks credentials first): a 420 is
            // the smaller answer (36 bytes for one attribute, a 401 is 68) and reveals nothing.
            self.stats.error_responses += 1;
            let mut b = self.error_builder(msg, ErrorCode::UnknownAttribute, false);
            b.add_with(Attr::UnknownAttributes, |out| {
                for t in &unknown[..n] {
                    out.extend_from_slice(&t.to_be_bytes());
                }
            });
            self.send_unauthenticated(now, from, msg.raw().len(), b);
            return;
        }
        match method {
            Method::Binding => self.binding(now, from, msg),
            Method::Allocate => self.allocate(now, from, msg),
            Method::Refresh => self.refresh(now, from, msg),
            Method::CreatePermission => self.create_permission(now, from, msg),
            Method::ChannelBind => self.channel_bind(now, from, msg),
            Method::Send | Method::Data => {} // Not requests: refused above.
        }
    }

    /// RFC 8489 section 6.3.1: Binding answered with XOR-MAPPED-ADDRESS only.
    fn binding(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        self.stats.binding_requests += 1;
        let mut b = MessageBuilder::new(Method::Binding, Class::Success, msg.transaction_id());
        b.add_xor_address(Attr::XorMappedAddress, unmapped(from.client));
        self.send_unauthenticated(now, from, msg.raw().len(), b);
    }

    /// RFC 8656 section 7.2: Allocate. The relay socket is asked for with
    /// `Output::BindRelay`; `finish_allocate` answers once it is bound.
    fn allocate(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        let Some(auth) = self.authenticate(now, from, msg) else {
            return;
        };
        let key = auth.identity.key;
        if self.allocate_from_existing(now, from, msg, &key) {
            return;
        }
        let params = match allocate_params(msg) {
            Ok(params) => params,
            Err(code) => return self.error_authenticated(from, msg, &key, code),
        };
        let address = match self.admit_allocate(now, &params, &auth.identity.quota_user) {
            Ok(address) => address,
            Err(code) => return self.error_authenticated(from, msg, &key, code),
        };
        let lifetime_secs = match self.desired_lifetime(msg) {
            Ok(0) | Err(_) => self.config.default_allocation_lifetime.as_secs() as u32,
            Ok(secs) => secs,
        };
        let relay = self.allocations.open_relay();
        self.pending.insert(
            relay,
            PendingAllocation {
                five_tuple: from,
                transaction_id: msg.transaction_id(),
                lifetime_secs,
                username: auth.username,
                quota_user: auth.identity.quota_user,
                key,
                reserve_next: params.reserve_next,
                dual_refused: params.dual_refused,
                cancelled: false,
                received_at: now,
            },
        );
        self.outputs.push_back(Output::BindRelay {
            relay,
            family: address.map_or(params.family, |a| AddressFamily::of(&a)),
            five_tuple: from,
            even_port: params.even_port,
            reserve_next: params.reserve_next,
            address,
        });
    }

    /// RFC 8656 section 7.2, after authentication: the 5-tuple already has an allocation (or
    /// one is being bound). A retransmission of the Allocate that created it gets the same
    /// answer (or, while pending, none yet); any other Allocate gets 437. `false`: no
    /// allocation, go on. An allocation that expired but was not swept yet is deleted first.
    fn allocate_from_existing(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &StunMessage<'_>,
        key: &[u8; 16],
    ) -> bool {
        let tid = msg.transaction_id();
        if let Some(existing) = self.allocations.key_of(&from)
            && self.allocation(existing).is_some_and(|a| now >= a.expires)
        {
            self.remove_allocation(existing);
            self.stats.allocations_expired += 1;
        }
        if let Some(existing) = self.allocations.key_of(&from) {
            match self.allocation(existing) {
                Some(a) if a.created_by == tid => {
                    let mut b = self.allocate_success(tid, a, now);
                    if asks_dual(msg) {
                        refuse_ipv6_half(&mut b);
                    }
                    self.send_authenticated(from, b, key);
                }
                _ => self.error_authenticated(from, msg, key, ErrorCode::AllocationMismatch),
            }
            return true;
        }
        if self.pending.contains(&from) {
            if self.pending.transaction_of(&from) != Some(tid) {
                self.error_authenticated(from, msg, key, ErrorCode::AllocationMismatch);
            }
            return true;
        }
        false
    }

    /// RFC 8656 section 7.2, after the attributes, in this order: the port reserved by
    /// RESERVATION-TOKEN (508 if gone), the drain (508), the allocation quotas (486; on
    /// success the slot is taken). The address to bind, if one was reserved. A port the user
    /// holds reserved counts against its `--user-quota` as an allocation does, and an
    /// Allocate that asks for one (EVEN-PORT with R) needs room for it too: deleting the
    /// allocation and asking again cannot pile up held ports. That port counts from the
    /// admission on (a pledge, turned into the reservation by `finish_allocate`), so Allocates
    /// of one user admitted together see each other's.
    fn admit_allocate(
        &mut self,
        now: Instant,
        params: &AllocateParams,
        quota_user: &str,
    ) -> Result<Option<SocketAddr>, ErrorCode> {
        let address = match params.token {
            None => None,
            Some(token) => Some(
                self.take_reservation(token, now)
                    .ok_or(ErrorCode::InsufficientCapacity)?,
            ),
        };
        if self.is_draining() {
            return Err(ErrorCode::InsufficientCapacity);
        }
        let q = &self.config.quotas;
        let reservations = &self.shared.reservations;
        if params.reserve_next {
            reservations.pledge(quota_user);
        }
        let per_user = q
            .allocations_per_user
            .saturating_sub(reservations.held_by(quota_user, now));
        if let Err(kind) = self
            .shared
            .try_acquire(quota_user, per_user, q.total_allocations)
        {
            if params.reserve_next {
                reservations.unpledge(quota_user);
            }
            self.stats.quota_hits[kind.index()] += 1;
            return Err(ErrorCode::AllocationQuotaReached);
        }
        Ok(address)
    }

    /// Second half of Allocate: the relay socket is bound (or not).
    pub(crate) fn finish_allocate(
        &mut self,
        now: Instant,
        handle: RelayHandle,
        result: Result<SocketAddr, BindError>,
    ) {
        let Some(p) = self.pending.take(handle) else {
            // Not a handle waiting for its bind: close what was bound, unless the handle names
            // a live socket (then this answer is a duplicate and the socket stays).
            if result.is_ok() && !self.allocations.is_relay_open(handle) {
                self.outputs
                    .push_back(Output::ReleaseRelay { relay: handle });
            }
            return;
        };
        if p.reserve_next && (p.cancelled || result.is_err()) {
            self.shared.reservations.unpledge(&p.quota_user);
        }
        let relay = match result {
            Ok(_) if p.cancelled => {
                self.shared.release(&p.quota_user);
                self.allocations.close_relay(handle);
                self.outputs
                    .push_back(Output::ReleaseRelay { relay: handle });
                return;
            }
            Ok(relay) => relay,
            Err(err) => {
                self.allocations.close_relay(handle);
                self.shared.release(&p.quota_user);
                if !p.cancelled {
                    let code = if err == BindError::FamilyNotSupported {
                        ErrorCode::AddressFamilyNotSupported
                    } else {
                        ErrorCode::InsufficientCapacity
                    };
                    self.allocate_error(&p, code);
                }
                return;
            }
        };
        let advertised = self.advertised(relay);
        self.own.learn(p.five_tuple.server, relay, advertised);
        let bandwidth = self
            .config
            .quotas
            .bandwidth_per_allocation
            .map(|l| TokenBucket::new(now, l));
        let token = match p.reserve_next {
            false => None,
            true if relay.port() % 2 == 0 && relay.port() < u16::MAX => Some(self.reserve(
                SocketAddr::new(relay.ip(), relay.port() + 1),
                &p.quota_user,
                now,
            )),
            true => {
                self.shared.reservations.unpledge(&p.quota_user);
                None
            }
        };
        let alloc = Allocation {
            five_tuple: p.five_tuple,
            handle,
            relay,
            advertised,
            expires: later(now, Duration::from_secs(u64::from(p.lifetime_secs))),
            username: p.username,
            quota_user: p.quota_user,
            timer_at: later(now, Duration::from_secs(u64::from(p.lifetime_secs))),
            created_by: p.transaction_id,
            permissions: Default::default(),
            channels: Default::default(),
            bandwidth,
            unbilled: Default::default(),
        };
        debug!(
            client = %alloc.five_tuple.client,
            transport = ?alloc.five_tuple.transport,
            relayed = %alloc.advertised,
            user = %alloc.quota_user,
            "allocation created"
        );
        let key = self.insert_allocation(alloc);
        self.stats
            .allocation_latency
            .observe(now.saturating_duration_since(p.received_at));
        if let Some(a) = self.allocation(key) {
            let mut b = self.allocate_success(p.transaction_id, a, now);
            if let Some(token) = token {
                b.add(Attr::ReservationToken, &token);
            }
            if p.dual_refused {
                refuse_ipv6_half(&mut b);
            }
            self.send_authenticated(p.five_tuple, b, &p.key);
        }
    }

    /// RFC 8656 section 7.2 (EVEN-PORT with R): remember `address` for a later Allocate
    /// carrying the returned RESERVATION-TOKEN, in place of the Allocate's pledge (see
    /// `admit_allocate`), in `SharedQuotas` so that the Allocate may come
    /// from another source port (as the RTCP half of an RTP/RTCP pair does) and so reach
    /// another shard. The I/O layer holds the port open meanwhile (`BindRelay::reserve_next`).
    fn reserve(&mut self, address: SocketAddr, user: &str, now: Instant) -> [u8; 8] {
        let token: [u8; 8] = rand::random();
        self.shared.reservations.reserve(token, address, user, now);
        token
    }

    /// The address reserved under `token`, if it has not expired (single use).
    fn take_reservation(&mut self, token: [u8; 8], now: Instant) -> Option<SocketAddr> {
        self.shared.reservations.take(token, now)
    }

    fn allocate_success(&self, tid: TransactionId, a: &Allocation, now: Instant) -> MessageBuilder {
        let remaining = a.expires.saturating_duration_since(now).as_secs() as u32;
        let mut b = MessageBuilder::new(Method::Allocate, Class::Success, tid);
        b.add_xor_address(Attr::XorRelayedAddress, a.advertised)
            .add_u32(Attr::Lifetime, remaining)
            .add_xor_address(Attr::XorMappedAddress, unmapped(a.five_tuple.client));
        b
    }

    fn allocate_error(&mut self, p: &PendingAllocation, code: ErrorCode) {
        self.stats.error_responses += 1;
        let mut b = MessageBuilder::new(Method::Allocate, Class::Error, p.transaction_id);
        b.add_error_code(code, code.reason());
        self.send_authenticated(p.five_tuple, b, &p.key);
    }

    /// RFC 8656 section 8.2: Refresh (lifetime 0 deletes).
    fn refresh(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        let Some(auth) = self.authorized_allocation(now, from, msg) else {
            return;
        };
        let desired = match self.desired_lifetime(msg) {
            Ok(desired) => desired,
            Err(code) => return self.error_authenticated(from, msg, &auth.key, code),
        };
        if let Some(fam) = msg.get(Attr::RequestedAddressFamily) {
            let relay_v4 = self
                .allocation(auth.alloc)
                .is_some_and(|a| a.relay.is_ipv4());
            let wants_v4 = attributes::decode_address_family(fam) == Ok(0x01);
            if relay_v4 != wants_v4 {
                return self.error_authenticated(
                    from,
                    msg,
                    &auth.key,
                    ErrorCode::PeerAddressFamilyMismatch,
                );
            }
        }
        if desired == 0 {
            self.remove_allocation(auth.alloc);
            self.stats.allocations_deleted += 1;
        } else if let Some(alloc) = self.allocation_mut(auth.alloc) {
            alloc.expires = later(now, Duration::from_secs(u64::from(desired)));
            // One queued timer per allocation, unless the lifetime was shortened.
            if alloc.expires < alloc.timer_at {
                alloc.timer_at = alloc.expires;
                let at = alloc.expires;
                self.expiry.push(at, Timer::Allocation(auth.alloc));
            }
        }
        let mut b = MessageBuilder::new(Method::Refresh, Class::Success, msg.transaction_id());
        b.add_u32(Attr::Lifetime, desired);
        self.send_authenticated(from, b, &auth.key);
    }

    /// RFC 8656 section 10.2: CreatePermission for one or more XOR-PEER-ADDRESSes.
    fn create_permission(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        let Some(auth) = self.authorized_allocation(now, from, msg) else {
            return;
        };
        let tid = msg.transaction_id();
        let relay_v4 = self
            .allocation(auth.alloc)
            .is_some_and(|a| a.relay.is_ipv4());
        let mut peers: Vec<SocketAddr> = Vec::new();
        for value in msg.get_all(Attr::XorPeerAddress) {
            let Ok(peer) = attributes::decode_xor_address(value, &tid) else {
                return self.error_authenticated(from, msg, &auth.key, ErrorCode::BadRequest);
            };
            let verdict = self.own.check_permission(&self.config.policy, peer.ip());
            if !self.peer_admitted(from, msg, &auth, relay_v4, peer, verdict) {
                return;
            }
            peers.push(peer);
        }
        if peers.is_empty() {
            return self.error_authenticated(from, msg, &auth.key, ErrorCode::BadRequest);
        }
        let limit = self.config.quotas.permissions_per_allocation as usize;
        let Some(alloc) = self.allocation(auth.alloc) else {
            return;
        };
        let mut new_ips: Vec<_> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !alloc.permissions.contains(*ip))
            .collect();
        new_ips.sort_unstable();
        new_ips.dedup();
        if alloc.permissions.len() + new_ips.len() > limit {
            self.stats.quota_hits[QuotaKind::Permissions.index()] += 1;
            return self.error_authenticated(from, msg, &auth.key, ErrorCode::InsufficientCapacity);
        }
        let expires = later(now, self.config.permission_lifetime);
        for peer in peers {
            self.install_permission(auth.alloc, peer.ip(), expires);
        }
        let b = MessageBuilder::new(Method::CreatePermission, Class::Success, tid);
        self.send_authenticated(from, b, &auth.key);
    }

    /// RFC 8656 section 12.2: ChannelBind (also installs or refreshes the peer's permission).
    fn channel_bind(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>) {
        let Some(auth) = self.authorized_allocation(now, from, msg) else {
            return;
        };
        let tid = msg.transaction_id();
        let number = match msg
            .get(Attr::ChannelNumber)
            .map(attributes::decode_channel_number)
        {
            Some(Ok(n)) if channel_data::is_valid_channel(n) => n,
            _ => return self.error_authenticated(from, msg, &auth.key, ErrorCode::BadRequest),
        };
        let Some(Ok(peer)) = msg
            .get(Attr::XorPeerAddress)
            .map(|v| attributes::decode_xor_address(v, &tid))
        else {
            return self.error_authenticated(from, msg, &auth.key, ErrorCode::BadRequest);
        };
        let Some(relay_v4) = self.allocation(auth.alloc).map(|a| a.relay.is_ipv4()) else {
            return;
        };
        let verdict = self.own.check_peer(&self.config.policy, peer);
        if !self.peer_admitted(from, msg, &auth, relay_v4, peer, verdict) {
            return;
        }
        let Some(alloc) = self.allocation(auth.alloc) else {
            return;
        };
        let new_channel = match alloc.channels.check(number, peer) {
            Ok(new) => new,
            Err(BindConflict::NumberInUse | BindConflict::PeerInUse) => {
                return self.error_authenticated(from, msg, &auth.key, ErrorCode::BadRequest);
            }
        };
        let q = &self.config.quotas;
        let channel_full =
            new_channel && alloc.channels.len() >= q.channels_per_allocation as usize;
        let permission_full = !alloc.permissions.contains(peer.ip())
            && alloc.permissions.len() >= q.permissions_per_allocation as usize;
        if channel_full || permission_full {
            let kind = if channel_full {
                QuotaKind::Channels
            } else {
                QuotaKind::Permissions
            };
            self.stats.quota_hits[kind.index()] += 1;
            return self.error_authenticated(from, msg, &auth.key, ErrorCode::InsufficientCapacity);
        }
        let channel_expires = later(now, self.config.channel_lifetime);
        // The permission lasts as long as the channel, as coturn has it: aioice (aiortc)
        // refreshes its channels every 500 s and never their permissions on their own.
        let permission_expires = later(
            now,
            self.config
                .permission_lifetime
                .max(self.config.channel_lifetime),
        );
        if let Some(alloc) = self.allocation_mut(auth.alloc) {
            if alloc.channels.bind(number, peer, channel_expires) {
                self.stats.channels += 1;
            }
            if new_channel {
                self.expiry
                    .push(channel_expires, Timer::Channel(auth.alloc, number));
            }
        }
        self.install_permission(auth.alloc, peer.ip(), permission_expires);
        let b = MessageBuilder::new(Method::ChannelBind, Class::Success, tid);
        self.send_authenticated(from, b, &auth.key);
    }

    /// The checks of one XOR-PEER-ADDRESS (CreatePermission, ChannelBind): the family of the
    /// relayed address (443), then the peer policy's `verdict` (403, counted). `false`: the
    /// error response is queued.
    fn peer_admitted(
        &mut self,
        from: FiveTuple,
        msg: &StunMessage<'_>,
        auth: &Authorized,
        relay_v4: bool,
        peer: SocketAddr,
        verdict: Result<(), DenyReason>,
    ) -> bool {
        if peer.is_ipv4() != relay_v4 {
            self.error_authenticated(from, msg, &auth.key, ErrorCode::PeerAddressFamilyMismatch);
            return false;
        }
        if let Err(reason) = verdict {
            self.count_denial(from, peer, reason);
            self.error_authenticated(from, msg, &auth.key, ErrorCode::Forbidden);
            return false;
        }
        true
    }

    fn install_permission(&mut self, key: AllocKey, ip: std::net::IpAddr, expires: Instant) {
        let Some(alloc) = self.allocation_mut(key) else {
            return;
        };
        if alloc.permissions.install(ip, expires) {
            self.stats.permissions += 1;
            self.expiry.push(expires, Timer::Permission(key, ip));
        }
    }

    /// The common opening of the requests about an existing allocation (Refresh,
    /// CreatePermission, ChannelBind): authenticate (400/401/438), then find the live
    /// allocation of `from` (437) and check that the same user created it (441). `None`: the
    /// error response is queued.
    fn authorized_allocation(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &StunMessage<'_>,
    ) -> Option<Authorized> {
        let auth = self.authenticate(now, from, msg)?;
        let key = auth.identity.key;
        let found = self.allocations.key_of(&from).and_then(|k| {
            self.allocation(k)
                .filter(|a| now < a.expires)
                .map(|a| (k, a))
        });
        let Some((alloc_key, alloc)) = found else {
            self.error_authenticated(from, msg, &key, ErrorCode::AllocationMismatch);
            return None;
        };
        if alloc.username != auth.username {
            self.error_authenticated(from, msg, &key, ErrorCode::WrongCredentials);
            return None;
        }
        Some(Authorized {
            key,
            alloc: alloc_key,
        })
    }

    /// RFC 8656 sections 7.2 and 8.2: `max(default, min(requested, max))` seconds; 0 stays 0.
    /// A LIFETIME of the wrong size is a 400 (Refresh answers it; Allocate uses the default).
    fn desired_lifetime(&self, msg: &StunMessage<'_>) -> Result<u32, ErrorCode> {
        let default = self.config.default_allocation_lifetime.as_secs() as u32;
        let max = self.config.max_allocation_lifetime.as_secs() as u32;
        match msg.get(Attr::Lifetime).map(attributes::decode_u32) {
            None => Ok(default),
            Some(Err(_)) => Err(ErrorCode::BadRequest),
            Some(Ok(0)) => Ok(0),
            Some(Ok(v)) => Ok(v.min(max).max(default.min(max))),
        }
    }

    /// RFC 8489 section 9.2.4: long-term credential checks, answering 400/401/438 itself.
    fn authenticate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &StunMessage<'_>,
    ) -> Option<Authenticated> {
        if !msg.has_integrity() {
            self.stats.auth_challenges += 1;
            self.challenge(now, from, msg, ErrorCode::Unauthorized);
            return None;
        }
        // A missing USERNAME, REALM or NONCE, or a USERNAME too long or not UTF-8: 400.
        let (Some(Ok(username)), Some(realm), Some(nonce)) = (
            msg.get(Attr::Username)
                .map(|user| attributes::decode_text(user, MAX_USERNAME)),
            msg.get(Attr::Realm),
            msg.get(Attr::Nonce),
        ) else {
            self.stats.error_responses += 1;
            let b = self.error_builder(msg, ErrorCode::BadRequest, false);
            self.send_unauthenticated(now, from, msg.raw().len(), b);
            return None;
        };
        let now_unix = self.config.clock.unix_secs_at(now);
        if !self
            .admission
            .nonce_is_valid(nonce, now_unix, from.client.ip())
        {
            self.stats.stale_nonces += 1;
            self.challenge(now, from, msg, ErrorCode::StaleNonce);
            return None;
        }
        // This 5-tuple's live allocation was made with this username: its owner knows the
        // password already.
        let holds_allocation = self
            .allocations
            .key_of(&from)
            .and_then(|k| self.allocation(k))
            .is_some_and(|a| &*a.username == username && now < a.expires);
        // A source guessing passwords: dropped unchecked, right guess or not (but never the
        // requests of an allocation it holds: a guesser behind the same NAT address must not
        // cut live calls).
        if !holds_allocation && !self.admission.may_check_credentials(now, from.client.ip()) {
            self.stats.quota_hits[QuotaKind::AuthFailureRate.index()] += 1;
            trace!(client = %from.client, "failed-credentials rate limit hit");
            return None;
        }
        // A REST username's expiry bounds when an allocation may be made: the requests of an
        // allocation it made (Refresh, permissions, channels) go on being accepted with it.
        let allocated_with_it = msg.method() != Some(Method::Allocate) && holds_allocation;
        // The key is derived with our realm, whatever the request names: one that names
        // another realm is refused as such (its integrity could still match our key).
        if realm != self.config.realm.as_bytes() {
            self.stats.auth_failures += 1;
            debug!(client = %from.client, why = "another realm", "authentication failed");
            self.challenge(now, from, msg, ErrorCode::Unauthorized);
            return None;
        }
        match self.admission.verify(
            msg,
            username,
            now,
            now_unix,
            from.client.ip(),
            !allocated_with_it,
        ) {
            Ok(identity) => Some(Authenticated {
                identity,
                username: username.into(),
            }),
            Err(failure) => {
                self.stats.auth_failures += 1;
                let why = match failure {
                    AuthFailure::UnknownUser => "unknown user",
                    AuthFailure::Expired => "expired REST username",
                    AuthFailure::BadIntegrity => "integrity mismatch",
                };
                debug!(client = %from.client, why, "authentication failed");
                self.challenge(now, from, msg, ErrorCode::Unauthorized);
                None
            }
        }
    }

    /// 401 or 438 with REALM and a fresh NONCE, rate-limited per source IP over UDP. Over
    /// TCP/TLS the source is proven and nothing amplifies, and a client never asks again for
    /// an answer dropped there (no retransmission over a stream): it would wait out its
    /// transaction.
    fn challenge(&mut self, now: Instant, from: FiveTuple, msg: &StunMessage<'_>, code: ErrorCode) {
        if from.transport == Transport::Udp
            && !self.admission.allow_challenge(now, from.client.ip())
        {
            self.stats.quota_hits[QuotaKind::UnauthorizedRate.index()] += 1;
            trace!(client = %from.client, "401 rate limit hit");
            return;
        }
        let nonce = self
            .admission
            .issue_nonce(self.config.clock.unix_secs_at(now), from.client.ip());
        let mut b = self.error_builder(msg, code, false);
        b.add(Attr::Realm, self.config.realm.as_bytes())
            .add(Attr::Nonce, nonce.as_bytes());
        self.send_unauthenticated(now, from, msg.raw().len(), b);
    }

    fn error_builder(
        &self,
        msg: &StunMessage<'_>,
        code: ErrorCode,
        with_reason: bool,
    ) -> MessageBuilder {
        let mut b = MessageBuilder::new(msg.method_code(), Class::Error, msg.transaction_id());
        b.add_error_code(code, if with_reason { code.reason() } else { "" });
        b
    }

    /// An error response protected with the requester's key, counted once: 437 and 441 in
    /// their own counters, any other code in `error_responses`.
    fn error_authenticated(
        &mut self,
        from: FiveTuple,
        msg: &StunMessage<'_>,
        key: &[u8; 16],
        code: ErrorCode,
    ) {
        match code {
            ErrorCode::AllocationMismatch => self.stats.allocation_mismatches += 1,
            ErrorCode::WrongCredentials => self.stats.wrong_credentials += 1,
            _ => self.stats.error_responses += 1,
        }
        trace!(client = %from.client, code = code.code(), "error response");
        let b = self.error_builder(msg, code, true);
        self.send_authenticated(from, b, key);
    }

    /// Add SOFTWARE (if configured), MESSAGE-INTEGRITY and FINGERPRINT, and queue.
    fn send_authenticated(&mut self, to: FiveTuple, mut b: MessageBuilder, key: &[u8; 16]) {
        if let Some(software) = &self.config.software {
            b.add(Attr::Software, software.as_bytes());
        }
        b.add_message_integrity(key).add_fingerprint();
        self.outputs.push_back(Output::Transmit {
            to,
            data: b.finish(),
        });
    }

    /// Queue an unauthenticated response; FINGERPRINT only if the result is no larger than the
    /// request, and over UDP only if the source's byte credit pays for it (amplification
    /// hardening: see `amplification`).
    fn send_unauthenticated(
        &mut self,
        now: Instant,
        to: FiveTuple,
        request_len: usize,
        mut b: MessageBuilder,
    ) {
        if b.len() + FINGERPRINT_SIZE <= request_len {
            b.add_fingerprint();
        }
        let data = b.finish();
        if to.transport == Transport::Udp {
            if !self.shared.amplification.try_spend(
                self.config.quotas.amplification_allowance,
                now,
                to.client.ip(),
                data.len(),
            ) {
                self.stats.quota_hits[QuotaKind::UnauthenticatedBytes.index()] += 1;
                trace!(client = %to.client, "amplification budget: response not sent");
                return;
            }
            self.stats.udp_unauthenticated_response_bytes += data.len() as u64;
        }
        self.outputs.push_back(Output::Transmit { to, data });
    }

    /// XOR-RELAYED-ADDRESS for a relay socket: the 1:1 NAT public IP if one maps it.
    fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        let mapped = self.config.external_ips.iter().find(|e| match e.private {
            Some(private) => private == relay.ip(),
            None => e.public.is_ipv4() == relay.is_ipv4(),
        });
        mapped.map_or(relay, |e| SocketAddr::new(e.public, relay.port()))
    }
}
