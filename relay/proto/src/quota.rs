//! Quotas and abuse limits: per-user and total allocation counts shared by every shard
//! (`SharedQuotas`), per-allocation token buckets, and bounded per-source-IP rate limiters for
//! unauthenticated requests and 401 responses (the byte budget of unauthenticated responses is
//! `amplification`, one table in `SharedQuotas` for every shard).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::amplification::AmplificationBudget;
use crate::reservations::Reservations;

/// A rate with a burst allowance (token bucket parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained units per second (bytes or requests).
    pub per_second: u64,
    /// Bucket size: how many units may be spent at once after idling.
    pub burst: u64,
}

enum_with_all! {
    /// Which limit was hit (a metrics label; `Stats::quota_hits` is indexed by it).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum QuotaKind {
        /// `Quotas::allocations_per_user` (486).
        AllocationsPerUser,
        /// `Quotas::total_allocations` (486).
        TotalAllocations,
        /// `Quotas::permissions_per_allocation` (508).
        Permissions,
        /// `Quotas::channels_per_allocation` (508).
        Channels,
        /// `Quotas::bandwidth_per_allocation`: packet dropped.
        Bandwidth,
        /// `Quotas::unauthenticated_per_ip`: request dropped.
        UnauthenticatedRate,
        /// `Quotas::unauthorized_per_ip`: 401 not sent.
        UnauthorizedRate,
        /// `Quotas::auth_failures_per_ip`: a request with credentials dropped unchecked.
        AuthFailureRate,
        /// `Quotas::amplification_allowance`: an unauthenticated UDP response not sent because
        /// the source's byte credit could not pay for it.
        UnauthenticatedBytes,
    }
}

impl QuotaKind {
    /// Number of variants.
    pub const COUNT: usize = Self::ALL.len();

    /// Index into `Stats::quota_hits`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllocationsPerUser => "allocations_per_user",
            Self::TotalAllocations => "total_allocations",
            Self::Permissions => "permissions",
            Self::Channels => "channels",
            Self::Bandwidth => "bandwidth",
            Self::UnauthenticatedRate => "unauthenticated_rate",
            Self::UnauthorizedRate => "unauthorized_rate",
            Self::AuthFailureRate => "auth_failure_rate",
            Self::UnauthenticatedBytes => "unauthenticated_bytes",
        }
    }
}

/// The default `Quotas::amplification_allowance`: the 401 round trips of about 60 fresh clients
/// behind one address (each nets about 32 bytes before its authenticated requests earn more).
pub const DEFAULT_AMPLIFICATION_ALLOWANCE: u32 = 2048;

/// Limits (part of `ServerConfig`). `None` disables a rate limit (benchmarks from one IP).
#[derive(Clone, Debug)]
pub struct Quotas {
    /// Concurrent allocations per username across all shards (486 beyond).
    pub allocations_per_user: u32,
    /// Concurrent allocations in total across all shards (486 beyond).
    pub total_allocations: u32,
    /// Permissions per allocation (508 beyond).
    pub permissions_per_allocation: u32,
    /// Channel bindings per allocation (508 beyond).
    pub channels_per_allocation: u32,
    /// Relayed bytes per second per allocation, both directions together; excess is dropped.
    pub bandwidth_per_allocation: Option<RateLimit>,
    /// Requests without valid credentials (Binding, first Allocate) per source IP (IPv6 per /64).
    pub unauthenticated_per_ip: Option<RateLimit>,
    /// 401 responses per source IP (IPv6 per /64): beyond it requests are dropped silently.
    pub unauthorized_per_ip: Option<RateLimit>,
    /// Wrong passwords (a MESSAGE-INTEGRITY that does not match) per source IP (IPv6 per /64):
    /// beyond it, that source's requests with credentials are dropped silently without being
    /// checked (but those of an allocation it holds), so that a password cannot be guessed
    /// faster (the 401 limit alone only hides the answers to wrong guesses).
    pub auth_failures_per_ip: Option<RateLimit>,
    /// UDP only: bytes of unauthenticated responses a source IP (IPv6 per /64) may receive
    /// beyond the bytes of the requests it sent (`bytes out <= bytes in + allowance`), across
    /// every shard sharing one `SharedQuotas`; a response over it is not sent. `None`: no byte
    /// limit.
    pub amplification_allowance: Option<u32>,
    /// Maximum tracked source IPs per limiter (a bounded table; idle entries are swept).
    pub rate_limit_table_size: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            allocations_per_user: 200,
            total_allocations: 100_000,
            permissions_per_allocation: 128,
            channels_per_allocation: 128,
            bandwidth_per_allocation: None,
            unauthenticated_per_ip: Some(RateLimit {
                per_second: 200,
                burst: 400,
            }),
            unauthorized_per_ip: Some(RateLimit {
                per_second: 50,
                burst: 100,
            }),
            auth_failures_per_ip: Some(RateLimit {
                per_second: 5,
                burst: 20,
            }),
            amplification_allowance: Some(DEFAULT_AMPLIFICATION_ALLOWANCE),
            rate_limit_table_size: 65_536,
        }
    }
}

/// State shared by every shard's `Server` (wrap in an `Arc`): allocation counters (only
/// touched when an allocation is created or freed, never on the relay path), the drain flag,
/// and the amplification byte credit of unauthenticated UDP responses per source IP (a fixed
/// table of 65,536 atomic buckets, 512 KiB, allocated on first use), so that a source whose
/// datagrams the kernel spreads over several shards has one credit, not one per shard.
#[derive(Debug, Default)]
pub struct SharedQuotas {
    total: AtomicU32,
    /// Username -> live allocations. A `Mutex` is fine: held for a map update on the control path.
    per_user: Mutex<HashMap<String, u32>>,
    draining: AtomicBool,
    /// `Quotas::amplification_allowance` credit per source IP, for every shard.
    pub(crate) amplification: AmplificationBudget,
    /// RESERVATION-TOKENs for every shard: the Allocate that claims a reservation may reach
    /// another shard than the one that made it.
    pub(crate) reservations: Reservations,
    /// Failed credential checks per source IP (`Quotas::auth_failures_per_ip`), for every
    /// shard: a source whose datagrams reach several shards guesses at one rate, not one per
    /// shard.
    pub(crate) auth_failures: SharedIpRateLimiter,
}

/// An [`IpRateLimiter`] that every shard consults. A `Mutex`: taken by requests with
/// credentials only, never on the relay path.
#[derive(Debug)]
pub(crate) struct SharedIpRateLimiter(Mutex<IpRateLimiter>);

impl Default for SharedIpRateLimiter {
    /// No limit until a shard configures it.
    fn default() -> Self {
        Self(Mutex::new(IpRateLimiter::new(None, 1)))
    }
}

impl SharedIpRateLimiter {
    pub(crate) fn lock(&self) -> MutexGuard<'_, IpRateLimiter> {
        // A poisoned lock only means another shard panicked mid-update of a plain table.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SharedQuotas {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live (and pending) allocations across all shards.
    pub fn allocations(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Live (and pending) allocations of `user` across all shards.
    pub fn allocations_of(&self, user: &str) -> u32 {
        self.lock().get(user).copied().unwrap_or(0)
    }

    /// Drain every shard sharing these counters (new allocations refused). The one place the
    /// drain state lives: `Server::is_draining`, the relay's `/readyz` and its fleet
    /// registration all read it.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// See `set_draining`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Reserve one allocation for `user`, or say which limit stops it.
    pub(crate) fn try_acquire(
        &self,
        user: &str,
        per_user: u32,
        total: u32,
    ) -> Result<(), QuotaKind> {
        let mut map = self.lock();
        let count = map.get(user).copied().unwrap_or(0);
        if count >= per_user {
            return Err(QuotaKind::AllocationsPerUser);
        }
        if self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < total).then_some(t + 1)
            })
            .is_err()
        {
            return Err(QuotaKind::TotalAllocations);
        }
        map.insert(user.to_owned(), count + 1);
        Ok(())
    }

    /// Give back one allocation of `user`.
    pub(crate) fn release(&self, user: &str) {
        let mut map = self.lock();
        if let Some(count) = map.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                map.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned lock only means another shard panicked mid-update of plain counters.
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A token bucket (units scaled by 1000 for sub-unit refill precision).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    milli_tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(now: Instant, limit: RateLimit) -> Self {
        Self {
            milli_tokens: limit.burst.saturating_mul(1000),
            last: now,
        }
    }

    /// Refill for the time since the last call, then take `units` if available.
    pub(crate) fn try_take(&mut self, now: Instant, limit: RateLimit, units: u64) -> bool {
        let available = self.can_take(now, limit, units);
        if available {
            self.milli_tokens -= units.saturating_mul(1000);
        }
        available
    }

    /// Refill for the time since the last call: whether `units` are available.
    fn can_take(&mut self, now: Instant, limit: RateLimit, units: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add = elapsed
                .as_micros()
                .saturating_mul(u128::from(limit.per_second))
                / 1000;
            let cap = limit.burst.saturating_mul(1000);
            self.milli_tokens = (u128::from(self.milli_tokens) + add).min(u128::from(cap)) as u64;
            self.last = now;
        }
        self.milli_tokens >= units.saturating_mul(1000)
    }

    /// Put `units` back (capped at the burst): the event they paid for turned out legitimate.
    fn give_back(&mut self, limit: RateLimit, units: u64) {
        let cap = limit.burst.saturating_mul(1000);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(units.saturating_mul(1000))
            .min(cap);
    }

    /// True if the bucket would be full at `now` (the entry carries no state worth keeping).
    fn is_full_at(&self, now: Instant, limit: RateLimit) -> bool {
        let missing = limit
            .burst
            .saturating_mul(1000)
            .saturating_sub(self.milli_tokens);
        let refill = now
            .saturating_duration_since(self.last)
            .as_micros()
            .saturating_mul(u128::from(limit.per_second))
            / 1000;
        refill >= u128::from(missing)
    }
}

/// Per-source-IP token buckets in a bounded table.
#[derive(Debug)]
pub(crate) struct IpRateLimiter {
    limit: Option<RateLimit>,
    max_entries: usize,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl IpRateLimiter {
    pub(crate) fn new(limit: Option<RateLimit>, max_entries: usize) -> Self {
        Self {
            limit,
            max_entries: max_entries.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Limits by `limit` from now on, tracking at most `max_entries` sources (see
    /// [`Self::set_limit`]).
    pub(crate) fn configure(&mut self, limit: Option<RateLimit>, max_entries: usize) {
        self.max_entries = max_entries.max(1);
        self.set_limit(limit);
    }

    /// Limits by `limit` from now on: a source keeps its tokens, capped at the new burst;
    /// `None` forgets every source.
    pub(crate) fn set_limit(&mut self, limit: Option<RateLimit>) {
        self.limit = limit;
        match limit {
            Some(limit) => {
                let cap = limit.burst.saturating_mul(1000);
                for bucket in self.buckets.values_mut() {
                    bucket.milli_tokens = bucket.milli_tokens.min(cap);
                }
            }
            None => self.buckets.clear(),
        }
    }

    /// Count one event from `ip`; false if over the limit.
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let Some(limit) = self.limit else { return true };
        let key = rate_key(ip);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.try_take(now, limit, 1);
        }
        if self.buckets.len() >= self.max_entries {
            self.sweep(now);
            if self.buckets.len() >= self.max_entries {
                // Table full of active sources (a distributed flood): refuse new ones.
                return false;
            }
        }
        let mut bucket = TokenBucket::new(now, limit);
        let ok = bucket.try_take(now, limit, 1);
        self.buckets.insert(key, bucket);
        ok
    }

    /// Whether `ip` may have one more event now (nothing is counted). A source the table
    /// does not track may, unless the table is full of active sources (a distributed flood):
    /// then, as [`Self::allow`] does, it may not.
    pub(crate) fn would_allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let Some(limit) = self.limit else { return true };
        if let Some(bucket) = self.buckets.get_mut(&rate_key(ip)) {
            return bucket.can_take(now, limit, 1);
        }
        if self.buckets.len() >= self.max_entries {
            self.sweep(now);
        }
        self.buckets.len() < self.max_entries
    }

    /// Give back the event last counted for `ip`: the source answered its challenge with valid
    /// credentials, so the unauthenticated request (or the 401/438 it got) was the first half
    /// of a legitimate challenge/response round trip, not abuse. Only sources that never
    /// authenticate use up their allowance; one that does is bounded by the allocation quotas.
    pub(crate) fn refund(&mut self, ip: IpAddr) {
        let Some(limit) = self.limit else { return };
        if let Some(bucket) = self.buckets.get_mut(&rate_key(ip)) {
            bucket.give_back(limit, 1);
        }
    }

    /// Drop entries whose bucket has refilled (they are equivalent to absent ones).
    pub(crate) fn sweep(&mut self, now: Instant) {
        if let Some(limit) = self.limit {
            self.buckets.retain(|_, b| !b.is_full_at(now, limit));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// How often `sweep` is worth running.
    pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
}

/// IPv4 by address, IPv6 by /64 (one subscriber's prefix).
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match crate::policy::canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ip;

    /// `per_second` with a bucket of `burst`.
    fn rate(per_second: u64, burst: u64) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn shared_quotas_count_per_user_and_total() {
        let q = SharedQuotas::new();
        for _ in 0..10 {
            q.try_acquire("alice", 10, 15).unwrap();
        }
        assert_eq!(
            q.try_acquire("alice", 10, 15),
            Err(QuotaKind::AllocationsPerUser)
        );
        for _ in 0..5 {
            q.try_acquire("bob", 10, 15).unwrap();
        }
        assert_eq!(
            q.try_acquire("carol", 10, 15),
            Err(QuotaKind::TotalAllocations)
        );
        q.release("alice");
        assert_eq!(q.allocations_of("alice"), 9);
        q.try_acquire("carol", 10, 15).unwrap();
        assert_eq!(q.allocations(), 15);
        q.release("nobody");
        assert_eq!(q.allocations(), 15);
    }

    #[test]
    fn token_bucket_refills_at_rate() {
        let t0 = Instant::now();
        let limit = rate(1000, 100);
        let mut b = TokenBucket::new(t0, limit);
        assert!(b.try_take(t0, limit, 100));
        assert!(!b.try_take(t0, limit, 1));
        assert!(b.try_take(t0 + Duration::from_millis(10), limit, 10));
        assert!(!b.try_take(t0 + Duration::from_millis(10), limit, 1));
        assert!(b.try_take(t0 + Duration::from_secs(5), limit, 100));
    }

    #[test]
    fn ip_limiter_is_bounded_and_sweeps() {
        let t0 = Instant::now();
        let mut l = IpRateLimiter::new(Some(rate(1, 2)), 2);
        let [a, b, c] = ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(ip);
        assert!(l.allow(t0, a));
        assert!(l.allow(t0, a));
        assert!(!l.allow(t0, a));
        assert!(l.allow(t0, b));
        assert!(!l.allow(t0, c), "table full of active sources");
        assert!(
            l.allow(t0 + Duration::from_secs(5), c),
            "swept after refill"
        );
        assert!(l.len() <= 2);
    }

    #[test]
    fn would_allow_counts_nothing_and_refuses_new_sources_when_the_table_is_full() {
        let t0 = Instant::now();
        let mut l = IpRateLimiter::new(Some(rate(1, 2)), 2);
        let [a, b, c] = ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(ip);
        assert!(
            l.would_allow(t0, a) && l.would_allow(t0, a),
            "nothing counted"
        );
        assert!(l.allow(t0, a) && l.allow(t0, a));
        assert!(!l.would_allow(t0, a));
        assert!(l.allow(t0, b));
        assert!(!l.would_allow(t0, c), "table full of active sources");
        assert!(
            l.would_allow(t0 + Duration::from_secs(5), c),
            "swept after refill"
        );
        assert!(l.would_allow(t0 + Duration::from_secs(5), a), "refilled");
    }

    #[test]
    fn refunds_restore_the_allowance_up_to_the_burst() {
        let t0 = Instant::now();
        let mut l = IpRateLimiter::new(Some(rate(1, 2)), 10);
        let a = ip("192.0.2.1");
        // Challenge, then an authenticated request gives the token back: forever allowed.
        for _ in 0..1000 {
            assert!(l.allow(t0, a));
            l.refund(a);
        }
        // Refunds never raise the allowance above the burst.
        for _ in 0..10 {
            l.refund(a);
        }
        assert!(l.allow(t0, a));
        assert!(l.allow(t0, a));
        assert!(!l.allow(t0, a), "still limited without refunds");
        // An unknown source has nothing to refund; a disabled limiter ignores refunds.
        l.refund(ip("192.0.2.9"));
        assert_eq!(l.len(), 1);
        IpRateLimiter::new(None, 10).refund(a);
    }

    #[test]
    fn a_new_limit_caps_what_sources_hold_and_none_forgets_them() {
        let t0 = Instant::now();
        let wide = rate(1, 10);
        let mut l = IpRateLimiter::new(Some(wide), 10);
        let a = ip("192.0.2.1");
        assert!(l.allow(t0, a));
        l.set_limit(Some(rate(1, 2)));
        assert!(l.allow(t0, a));
        assert!(l.allow(t0, a));
        assert!(!l.allow(t0, a), "capped at the new burst at once");
        l.set_limit(None);
        assert_eq!(l.len(), 0);
        assert!((0..100).all(|_| l.allow(t0, a)));
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let t0 = Instant::now();
        let mut l = IpRateLimiter::new(Some(rate(1, 1)), 10);
        assert!(l.allow(t0, ip("2001:db8:1:2::1")));
        assert!(!l.allow(t0, ip("2001:db8:1:2::ffff")));
        assert!(l.allow(t0, ip("2001:db8:1:3::1")));
    }
}
