//! The message rate of HTTP `send`s, per session: a session has no socket to hang its token
//! bucket on, so this node keeps one per session token it served. Buckets are stored only
//! for sends that named a live session, and a bucket that has refilled to the burst is
//! indistinguishable from a new one, so it is forgotten: the table holds at most the sessions
//! that sent within the last `burst / rate` seconds (4 s by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::ResumeToken;
use crate::rate_limit::TokenBucket;

/// See the module docs.
#[derive(Debug)]
pub struct SendRates {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Messages per second (`--rate-limit`).
    rate: f64,
    /// Messages at once (`--rate-burst`).
    burst: f64,
    by_session: HashMap<ResumeToken, TokenBucket>,
    /// Forget full buckets once the table reaches this size.
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

impl SendRates {
    /// `rate` messages per second, `burst` at once (`--rate-limit`, `--rate-burst`).
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            buckets: Mutex::new(Buckets {
                rate,
                burst,
                by_session: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    /// A new rate and burst (SIGHUP), for every session from now on.
    pub fn set_rate(&self, rate: f64, burst: f64) {
        let mut buckets = self.lock();
        buckets.rate = rate;
        buckets.burst = burst;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `n` messages of `session` are within the rate now (nothing is taken); `Err`
    /// says how long until they would be.
    pub fn check(&self, session: &ResumeToken, n: usize, now: Instant) -> Result<(), Duration> {
        let buckets = self.lock();
        let (rate, burst) = (buckets.rate, buckets.burst);
        let mut bucket = buckets
            .by_session
            .get(session)
            .copied()
            .unwrap_or_else(|| TokenBucket::new(burst, now));
        drop(buckets);
        bucket.try_take_n(now, n, rate, burst)
    }

    /// Takes `n` messages of `session` (after they were handled).
    pub fn take(&self, session: &ResumeToken, n: usize, now: Instant) {
        let mut buckets = self.lock();
        let (rate, burst) = (buckets.rate, buckets.burst);
        let bucket = buckets
            .by_session
            .entry(session.clone())
            .or_insert_with(|| TokenBucket::new(burst, now));
        // Concurrent sends may have taken the tokens since `check`: then take what is left.
        if bucket.try_take_n(now, n, rate, burst).is_err() {
            let _ = bucket.try_take_n(
                now,
                bucket.available(now, rate, burst) as usize,
                rate,
                burst,
            );
        }
        if buckets.by_session.len() >= buckets.prune_at {
            buckets
                .by_session
                .retain(|_, b| b.available(now, rate, burst) < burst);
            buckets.prune_at = (buckets.by_session.len() * 2).max(MIN_PRUNE_AT);
        }
    }

    /// How many sessions have a bucket (for tests).
    pub fn len(&self) -> usize {
        self.lock().by_session.len()
    }

    /// Whether no session has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gets_the_burst_then_the_rate_and_full_buckets_are_forgotten() {
        let rates = SendRates::new(10.0, 20.0);
        let t0 = Instant::now();
        let a = ResumeToken::from("a");
        assert!(rates.check(&a, 20, t0).is_ok());
        rates.take(&a, 20, t0);
        assert_eq!(rates.check(&a, 1, t0), Err(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(500);
        assert!(rates.check(&a, 5, t1).is_ok());
        assert!(rates.check(&a, 6, t1).is_err());
        // Many sessions that sent once: their buckets refill and are pruned.
        let t2 = t1 + Duration::from_secs(10);
        for i in 0..MIN_PRUNE_AT - 2 {
            rates.take(&ResumeToken(format!("s{i}")), 1, t1);
        }
        assert_eq!(rates.len(), MIN_PRUNE_AT - 1);
        rates.take(&ResumeToken::from("late"), 1, t2);
        assert_eq!(
            rates.len(),
            1,
            "only the bucket that is not full again is kept"
        );
    }
}
