//! The per-connection message rate limit: a token bucket (16 bytes per connection).

use std::time::Instant;

/// A token bucket refilled at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst as f32,
            last: now,
        }
    }

    /// Takes one token if there is one; `false` means the message is over the rate.
    pub fn try_take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (f64::from(self.tokens) + elapsed * rate).min(burst) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0, 10.0, 3.0)));
        assert!(!bucket.try_take(t0, 10.0, 3.0));
        // 100 ms at 10/s refills one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.try_take(t1, 10.0, 3.0));
        assert!(!bucket.try_take(t1, 10.0, 3.0));
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(
            (0..10).filter(|_| bucket.try_take(t2, 10.0, 3.0)).count(),
            3
        );
    }
}
