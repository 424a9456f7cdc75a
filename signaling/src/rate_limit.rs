//! The per-connection message rate limit: a token bucket (16 bytes per connection).
//! HTTP `send`s take several tokens at once, all or none. A message costs one token, a
//! broadcast one per started KiB of its data ([`message_cost`]).

use std::time::{Duration, Instant};

use crate::protocol::ClientMessage;

/// Bytes of broadcast data per token.
pub const BROADCAST_BYTES_PER_TOKEN: usize = 1024;

/// The tokens `message` takes from its session's message rate: one, or for a broadcast one
/// per started KiB of its data. A broadcast is copied to every peer of the room (and, in a
/// cluster, to every node): at one token each, a client could make the server write its
/// message rate times `--max-message-bytes` times the room's size every second.
pub fn message_cost(message: &ClientMessage) -> usize {
    match message {
        ClientMessage::Broadcast { data, .. } => fan_out_cost(data, BROADCAST_BYTES_PER_TOKEN),
        _ => 1,
    }
}

/// Bytes of a y-webrtc `publish`'s data per token. Every y-webrtc signal is a publish to the
/// whole topic (offers, answers and candidates, grown by encryption and base64 with a
/// password), so they keep to one or two tokens each and honest rooms keep headroom at their
/// join; 4 KiB still bounds a flood of 64 KiB publishes to 16 times fewer than at one token.
pub const PUBLISH_BYTES_PER_TOKEN: usize = 4096;

/// The tokens a message copied to many takes for its `data` (a broadcast, a y-webrtc
/// `publish`): one per started `bytes_per_token` of its JSON, at least one.
pub fn fan_out_cost(data: &serde_json::Value, bytes_per_token: usize) -> usize {
    serde_json::to_vec(data)
        .map_or(1, |bytes| bytes.len().div_ceil(bytes_per_token))
        .max(1)
}

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

impl TokenBucket {
    /// The tokens there would be at `now`.
    pub fn available(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (f64::from(self.tokens) + elapsed * rate).min(burst)
    }

    /// Takes `n` tokens if there are that many, else none; `Err` says how long until there
    /// are (never, when `n` is over the burst: then `Duration::MAX`).
    pub fn try_take_n(
        &mut self,
        now: Instant,
        n: usize,
        rate: f64,
        burst: f64,
    ) -> Result<(), Duration> {
        let tokens = self.available(now, rate, burst);
        let wanted = n as f64;
        if wanted > burst {
            return Err(Duration::MAX);
        }
        if tokens < wanted {
            return Err(Duration::from_secs_f64((wanted - tokens) / rate));
        }
        self.tokens = (tokens - wanted) as f32;
        self.last = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_costs_a_token_per_started_kib_and_anything_else_one() {
        let broadcast = |len: usize| ClientMessage::Broadcast {
            id: None,
            cseq: None,
            data: serde_json::Value::String("x".repeat(len)),
        };
        // The data's JSON: the string and its two quotes.
        assert_eq!(message_cost(&broadcast(0)), 1);
        assert_eq!(message_cost(&broadcast(1022)), 1);
        assert_eq!(message_cost(&broadcast(1023)), 2);
        assert_eq!(message_cost(&broadcast(64_000)), 63);
        assert_eq!(message_cost(&ClientMessage::Leave { id: None }), 1);
        // A y-webrtc publish: per started 4 KiB.
        let publish = |len: usize| serde_json::Value::String("x".repeat(len));
        assert_eq!(fan_out_cost(&publish(4094), PUBLISH_BYTES_PER_TOKEN), 1);
        assert_eq!(fan_out_cost(&publish(4095), PUBLISH_BYTES_PER_TOKEN), 2);
        assert_eq!(fan_out_cost(&publish(60_000), PUBLISH_BYTES_PER_TOKEN), 15);
    }

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

    #[test]
    fn takes_several_tokens_all_or_none() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        assert!(bucket.try_take_n(t0, 8, 5.0, 10.0).is_ok());
        // Two left: three are refused, and nothing is taken.
        let wait = bucket.try_take_n(t0, 3, 5.0, 10.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert!(bucket.try_take_n(t0, 2, 5.0, 10.0).is_ok());
        assert_eq!(bucket.try_take_n(t0, 11, 5.0, 10.0), Err(Duration::MAX));
    }
}
