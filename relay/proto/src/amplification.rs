//! The amplification budget: over UDP a source address can be spoofed, so the bytes of
//! unauthenticated responses (Binding, 401, 438, 400, 420) sent to a source IP (IPv6 per /64)
//! may exceed the bytes of STUN requests received from it by at most a fixed allowance:
//! `bytes out <= bytes in + allowance`, whatever the request mix or rate, and whichever worker
//! (shard) the kernel hands each of its datagrams to.
//!
//! Every source starts with `allowance` bytes of credit; each request from it adds its size
//! (capped at `allowance`), each unauthenticated response takes its size, and a response the
//! credit cannot pay for is not sent. Authenticated requests earn credit like any other (a
//! source that authenticates is not reflecting someone else's traffic: its nonce is bound to
//! its IP). A source idle for [`AmplificationBudget::IDLE_RESET`] starts over.
//!
//! The credit lives in one table shared by every shard (in `SharedQuotas`): a fixed number of
//! buckets ([`AmplificationBudget::DEFAULT_BUCKETS`], 8 bytes each), each an `AtomicU64` holding
//! the bytes a source has spent beyond what it earned (its debt, at most the allowance) and the
//! second of its last use. A source's bucket is chosen by a keyed hash of its IP (the key is
//! random per process, so a remote party cannot aim at a given bucket). Memory is fixed and
//! nothing is ever refused for lack of room; sources that share a bucket share one credit, so
//! the bound holds for every bucket as a whole (the bytes sent to its sources never exceed the
//! bytes received from them plus one allowance), which is stricter than per source. The table
//! holds no clock: `now` comes in with every call, measured from the first `now` it saw.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fast_hash::FastHash;
use crate::quota::rate_key;

/// Per-source-IP byte credit for unauthenticated UDP responses, shared by every shard (see the
/// module docs).
pub(crate) struct AmplificationBudget {
    /// `debt` (low 32 bits) and `last use in seconds since `epoch`` (high 32 bits) per bucket;
    /// allocated on first use.
    buckets: OnceLock<Box<[AtomicU64]>>,
    /// A power of two.
    len: usize,
    hasher: FastHash,
    /// The first `now` seen: bucket times are seconds since it.
    epoch: OnceLock<Instant>,
}

impl std::fmt::Debug for AmplificationBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmplificationBudget")
            .field("buckets", &self.len)
            .field("allocated", &self.buckets.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for AmplificationBudget {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BUCKETS)
    }
}

impl AmplificationBudget {
    /// A source idle this long starts over with the full allowance.
    pub(crate) const IDLE_RESET: Duration = Duration::from_secs(60);

    /// Buckets of the shared table: 65,536 x 8 bytes = 512 KiB.
    pub(crate) const DEFAULT_BUCKETS: usize = 1 << 16;

    /// A table of `buckets` buckets (rounded up to a power of two).
    pub(crate) fn new(buckets: usize) -> Self {
        Self {
            buckets: OnceLock::new(),
            len: buckets.max(1).next_power_of_two(),
            hasher: FastHash::default(),
            epoch: OnceLock::new(),
        }
    }

    /// The table's size in bytes once allocated.
    #[cfg(test)]
    fn memory_bytes(&self) -> usize {
        self.len * size_of::<AtomicU64>()
    }

    fn bucket(&self, ip: IpAddr) -> &AtomicU64 {
        let buckets = self
            .buckets
            .get_or_init(|| (0..self.len).map(|_| AtomicU64::new(0)).collect());
        let index = self.hasher.hash_one(rate_key(ip)) as usize & (self.len - 1);
        &buckets[index]
    }

    fn seconds(&self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_init(|| now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// `bytes` of a request arrived from `ip`: credit them (up to the allowance).
    pub(crate) fn earn(&self, allowance: Option<u32>, now: Instant, ip: IpAddr, bytes: usize) {
        if allowance.is_none() {
            return;
        }
        let bucket = self.bucket(ip);
        let t = self.seconds(now);
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let debt = live_debt(current, t);
            if debt == 0 {
                // Already at the full allowance: nothing to write (the common case).
                return;
            }
            let next = pack(t, debt.saturating_sub(clamp(bytes)));
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether an unauthenticated response of `bytes` may go to `ip`; if so, it is charged.
    pub(crate) fn try_spend(
        &self,
        allowance: Option<u32>,
        now: Instant,
        ip: IpAddr,
        bytes: usize,
    ) -> bool {
        let Some(allowance) = allowance else {
            return true;
        };
        let bytes = clamp(bytes);
        if bytes > allowance {
            return false;
        }
        let bucket = self.bucket(ip);
        let t = self.seconds(now);
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let debt = live_debt(current, t);
            // A refused response still marks the source as active: a flood never resets.
            let (allowed, next) = if allowance.saturating_sub(debt) >= bytes {
                (true, pack(t, debt + bytes))
            } else {
                (false, pack(t, debt))
            };
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return allowed,
                Err(seen) => current = seen,
            }
        }
    }
}

fn pack(seconds: u32, debt: u32) -> u64 {
    (u64::from(seconds) << 32) | u64::from(debt)
}

/// The debt of a bucket at `t` seconds: zero once idle for `IDLE_RESET`.
fn live_debt(bucket: u64, t: u32) -> u32 {
    let last = (bucket >> 32) as u32;
    let debt = bucket as u32;
    if u64::from(t.saturating_sub(last)) >= AmplificationBudget::IDLE_RESET.as_secs() {
        0
    } else {
        debt
    }
}

fn clamp(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::test_util::ip;

    /// A default-sized budget, the instant a test starts at, and the source it spends for.
    fn fresh() -> (AmplificationBudget, Instant, IpAddr) {
        (
            AmplificationBudget::default(),
            Instant::now(),
            ip("192.0.2.1"),
        )
    }

    #[test]
    fn bytes_out_never_exceed_bytes_in_plus_the_allowance() {
        let (b, t0, src) = fresh();
        let a = Some(200);
        let (mut sent_in, mut sent_out) = (0usize, 0usize);
        // A flood of bare 20-byte requests, each answered with 68 bytes if the credit allows.
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            b.earn(a, now, src, 20);
            sent_in += 20;
            if b.try_spend(a, now, src, 68) {
                sent_out += 68;
            }
            assert!(
                sent_out <= sent_in + 200,
                "request {i}: {sent_out} > {sent_in} + 200"
            );
        }
        // And it answers as much as the bound allows: what is left unused is less than one
        // response plus the first request (earned while the source was at the allowance).
        assert!(
            sent_out + 68 + 20 > sent_in + 200,
            "{sent_out} vs {sent_in}"
        );
    }

    #[test]
    fn credit_is_capped_and_other_sources_are_independent() {
        let (b, t0, src) = fresh();
        let a = Some(100);
        assert!(b.try_spend(a, t0, src, 60));
        assert!(!b.try_spend(a, t0, src, 60), "only 40 left");
        // Large requests cannot bank more than the allowance.
        b.earn(a, t0, src, 10_000);
        assert!(b.try_spend(a, t0, src, 100));
        assert!(!b.try_spend(a, t0, src, 1));
        assert!(b.try_spend(a, t0, ip("192.0.2.2"), 100), "another source");
        // IPv6 sources share a budget per /64.
        assert!(b.try_spend(a, t0, ip("2001:db8:1:2::1"), 100));
        assert!(!b.try_spend(a, t0, ip("2001:db8:1:2::ffff"), 1));
        assert!(
            b.try_spend(a, t0, ip("::ffff:192.0.2.3"), 100),
            "mapped = IPv4"
        );
        assert!(!b.try_spend(a, t0, ip("192.0.2.3"), 1));
        assert!(
            !b.try_spend(a, t0, ip("192.0.2.9"), 101),
            "over the allowance"
        );
    }

    #[test]
    fn idle_sources_start_over_and_a_flood_never_idles() {
        let (b, t0, src) = fresh();
        let a = Some(100);
        assert!(b.try_spend(a, t0, src, 100));
        // Refused every 30 s: still active, still in debt.
        for k in 1..=4 {
            assert!(!b.try_spend(a, t0 + Duration::from_secs(30 * k), src, 1));
        }
        let idle = t0 + Duration::from_secs(120) + AmplificationBudget::IDLE_RESET;
        assert!(b.try_spend(a, idle, src, 100), "idle: the full allowance");
    }

    #[test]
    fn the_table_is_fixed_and_colliding_sources_share_one_credit() {
        let t0 = Instant::now();
        // Two buckets for 1,000 sources: every source is someone's neighbour.
        let b = AmplificationBudget::new(2);
        assert_eq!(b.memory_bytes(), 16);
        let a = Some(1000);
        let mut sent = 0;
        for i in 0..1000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
            if b.try_spend(a, t0, src, 100) {
                sent += 100;
            }
        }
        // Nothing was refused for lack of room; the two buckets paid for two allowances.
        assert_eq!(sent, 2000);
        assert_eq!(
            AmplificationBudget::default().memory_bytes(),
            512 * 1024,
            "the documented size"
        );
    }

    #[test]
    fn the_bound_holds_across_threads_sharing_the_table() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 20_000;
        let t0 = Instant::now();
        let b = Arc::new(AmplificationBudget::default());
        let a = Some(2048);
        let src = ip("198.51.100.7");
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let (mut earned, mut spent) = (0usize, 0usize);
                    for _ in 0..ROUNDS {
                        b.earn(a, t0, src, 20);
                        earned += 20;
                        if b.try_spend(a, t0, src, 68) {
                            spent += 68;
                        }
                    }
                    (earned, spent)
                })
            })
            .collect();
        let (earned, spent) = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(e, s), (e2, s2)| (e + e2, s + s2));
        assert!(
            spent <= earned + 2048,
            "{spent} out for {earned} in across {THREADS} threads"
        );
        // And the shared credit still pays for most of it (nothing lost to sharing).
        assert!(spent * 10 >= earned * 9, "{spent} vs {earned}");
    }

    #[test]
    fn disabled_budget_allows_everything_and_allocates_nothing() {
        let (b, t0, src) = fresh();
        for _ in 0..100 {
            assert!(b.try_spend(None, t0, src, 10_000));
        }
        b.earn(None, t0, src, 1);
        assert!(b.buckets.get().is_none());
    }
}
