//! `Stats`: plain counters of one `Server` (one shard). The I/O layer sums shards for metrics.

use crate::policy::DenyReason;
use crate::quota::QuotaKind;

/// Counters and gauges of one shard. Gauges (`allocations`, `permissions`, `channels`) are the
/// current values; everything else only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live allocations (gauge).
    pub allocations: u64,
    /// Live permissions over all allocations (gauge).
    pub permissions: u64,
    /// Live channel bindings over all allocations (gauge).
    pub channels: u64,
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that timed out.
    pub allocations_expired: u64,
    /// Allocations deleted by Refresh with lifetime 0 or a closed stream.
    pub allocations_deleted: u64,
    /// STUN Binding requests answered.
    pub binding_requests: u64,
    /// Packets relayed client -> peer (Send indications and ChannelData).
    pub packets_to_peer: u64,
    /// Payload bytes relayed client -> peer.
    pub bytes_to_peer: u64,
    /// Packets relayed peer -> client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer -> client.
    pub bytes_to_client: u64,
    /// 401 challenges to requests without credentials.
    pub auth_challenges: u64,
    /// Requests with credentials that failed (unknown user, bad integrity, expired REST user).
    pub auth_failures: u64,
    /// 438 Stale Nonce responses.
    pub stale_nonces: u64,
    /// 441 Wrong Credentials (a request with another user's credentials on an allocation).
    pub wrong_credentials: u64,
    /// 437 Allocation Mismatch responses.
    pub allocation_mismatches: u64,
    /// Other error responses (400, 420, 440, 442, 508...).
    pub error_responses: u64,
    /// Undecodable packets (bad STUN, bad ChannelData, bad attributes).
    pub malformed_packets: u64,
    /// Packets dropped for lack of an allocation, permission or channel.
    pub dropped_packets: u64,
    /// Sends to a peer that failed in the I/O layer (`Server::record_send_failure`).
    pub send_failures: u64,
    /// Bytes of STUN requests received over UDP (what the amplification budget credits).
    pub udp_request_bytes: u64,
    /// Bytes of unauthenticated responses sent over UDP (what the amplification budget charges).
    pub udp_unauthenticated_response_bytes: u64,
    /// Peer addresses refused by the policy, indexed by `DenyReason::index()`.
    pub peer_denied: [u64; DenyReason::COUNT],
    /// Quota and rate-limit hits, indexed by `QuotaKind::index()`.
    pub quota_hits: [u64; QuotaKind::COUNT],
    /// New allocations: the Allocate received -> its success response queued (the relay
    /// socket's bind in between).
    pub allocation_latency: LatencyHistogram,
}

/// A latency histogram with fixed bounds (plain integers: shards merge by adding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative): `counts[i]` for values up to
    /// `LATENCY_BOUNDS_MICROS[i]`, the last for anything larger.
    pub counts: [u64; LATENCY_BOUNDS_MICROS.len() + 1],
    /// The sum of the observations, in microseconds.
    pub sum_micros: u64,
}

/// The upper bounds of [`LatencyHistogram`]'s buckets, in microseconds (100 us to 2.5 s).
pub const LATENCY_BOUNDS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

impl LatencyHistogram {
    /// Counts one observation.
    pub fn observe(&mut self, latency: std::time::Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MICROS.len());
        self.counts[bucket] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    /// How many observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another shard's observations.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }
}

impl Stats {
    /// Denials for one reason.
    pub fn denied(&self, reason: DenyReason) -> u64 {
        self.peer_denied[reason.index()]
    }

    /// Hits of one quota.
    pub fn quota(&self, kind: QuotaKind) -> u64 {
        self.quota_hits[kind.index()]
    }

    /// Add another shard's counters into this one.
    pub fn merge(&mut self, other: &Self) {
        let Self {
            allocations,
            permissions,
            channels,
            allocations_created,
            allocations_expired,
            allocations_deleted,
            binding_requests,
            packets_to_peer,
            bytes_to_peer,
            packets_to_client,
            bytes_to_client,
            auth_challenges,
            auth_failures,
            stale_nonces,
            wrong_credentials,
            allocation_mismatches,
            error_responses,
            malformed_packets,
            dropped_packets,
            send_failures,
            udp_request_bytes,
            udp_unauthenticated_response_bytes,
            peer_denied,
            quota_hits,
            allocation_latency,
        } = other;
        self.allocations += allocations;
        self.permissions += permissions;
        self.channels += channels;
        self.allocations_created += allocations_created;
        self.allocations_expired += allocations_expired;
        self.allocations_deleted += allocations_deleted;
        self.binding_requests += binding_requests;
        self.packets_to_peer += packets_to_peer;
        self.bytes_to_peer += bytes_to_peer;
        self.packets_to_client += packets_to_client;
        self.bytes_to_client += bytes_to_client;
        self.auth_challenges += auth_challenges;
        self.auth_failures += auth_failures;
        self.stale_nonces += stale_nonces;
        self.wrong_credentials += wrong_credentials;
        self.allocation_mismatches += allocation_mismatches;
        self.error_responses += error_responses;
        self.malformed_packets += malformed_packets;
        self.dropped_packets += dropped_packets;
        self.send_failures += send_failures;
        self.udp_request_bytes += udp_request_bytes;
        self.udp_unauthenticated_response_bytes += udp_unauthenticated_response_bytes;
        self.allocation_latency.merge(allocation_latency);
        for (a, b) in self.peer_denied.iter_mut().zip(peer_denied) {
            *a += b;
        }
        for (a, b) in self.quota_hits.iter_mut().zip(quota_hits) {
            *a += b;
        }
    }
}
