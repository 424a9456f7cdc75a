//! The amplification budget: over UDP a source address can be spoofed, so the bytes of
//! unauthenticated responses (Binding, 401, 438, 400, 420) sent to a source IP (IPv6 per /64)
//! may exceed the bytes of STUN requests received from it by at most a fixed allowance:
//! `bytes out <= bytes in + allowance`, whatever the request mix or rate.
//!
//! Every source starts with `allowance` bytes of credit; each request from it adds its size
//! (capped at `allowance`), each unauthenticated response takes its size, and a response the
//! credit cannot pay for is not sent. Authenticated requests earn credit like any other (a
//! source that authenticates is not reflecting someone else's traffic: its nonce is bound to
//! its IP). Sources without an entry have the full allowance, so the table only holds sources
//! that used some of it; entries are forgotten once back at the allowance or idle for
//! [`AmplificationBudget::IDLE_RESET`], and the table is bounded (when it is full of active
//! sources, new ones get no unauthenticated answers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::quota::rate_key;

/// One source's credit.
#[derive(Clone, Copy, Debug)]
struct Credit {
    /// Bytes that may still be sent; at most the allowance.
    bytes: u32,
    /// The last request or response of this source.
    last: Instant,
}

/// Per-source-IP byte credit for unauthenticated UDP responses (see the module docs).
#[derive(Debug)]
pub(crate) struct AmplificationBudget {
    /// `None`: no byte limit.
    allowance: Option<u32>,
    max_entries: usize,
    credits: HashMap<IpAddr, Credit>,
}

impl AmplificationBudget {
    /// A source idle this long starts over with the full allowance (and leaves the table).
    pub(crate) const IDLE_RESET: Duration = Duration::from_secs(60);

    pub(crate) fn new(allowance: Option<u32>, max_entries: usize) -> Self {
        Self {
            allowance,
            max_entries: max_entries.max(1),
            credits: HashMap::new(),
        }
    }

    /// `bytes` of a request arrived from `ip`: credit them (up to the allowance).
    pub(crate) fn earn(&mut self, now: Instant, ip: IpAddr, bytes: usize) {
        let Some(allowance) = self.allowance else {
            return;
        };
        // No entry: the source already has the full allowance.
        if let Some(credit) = self.credits.get_mut(&rate_key(ip)) {
            credit.bytes = credit.bytes.saturating_add(clamp(bytes)).min(allowance);
            credit.last = now;
        }
    }

    /// Whether an unauthenticated response of `bytes` may go to `ip`; if so, it is charged.
    pub(crate) fn try_spend(&mut self, now: Instant, ip: IpAddr, bytes: usize) -> bool {
        let Some(allowance) = self.allowance else {
            return true;
        };
        let bytes = clamp(bytes);
        let key = rate_key(ip);
        if let Some(credit) = self.credits.get_mut(&key) {
            credit.last = now;
            if credit.bytes < bytes {
                return false;
            }
            credit.bytes -= bytes;
            return true;
        }
        if bytes > allowance {
            return false;
        }
        if self.credits.len() >= self.max_entries {
            self.sweep(now);
            if self.credits.len() >= self.max_entries {
                // Full of sources in debt (a distributed flood): no new ones until they expire.
                return false;
            }
        }
        self.credits.insert(
            key,
            Credit {
                bytes: allowance - bytes,
                last: now,
            },
        );
        true
    }

    /// Forget sources back at the full allowance or idle for `IDLE_RESET`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let Some(allowance) = self.allowance else {
            return;
        };
        self.credits.retain(|_, c| {
            c.bytes < allowance && now.saturating_duration_since(c.last) < Self::IDLE_RESET
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.credits.len()
    }
}

fn clamp(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bytes_out_never_exceed_bytes_in_plus_the_allowance() {
        let t0 = Instant::now();
        let mut b = AmplificationBudget::new(Some(200), 16);
        let src = ip("192.0.2.1");
        let (mut sent_in, mut sent_out) = (0usize, 0usize);
        // A flood of bare 20-byte requests, each answered with 68 bytes if the credit allows.
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            b.earn(now, src, 20);
            sent_in += 20;
            if b.try_spend(now, src, 68) {
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
        let t0 = Instant::now();
        let mut b = AmplificationBudget::new(Some(100), 16);
        let a = ip("192.0.2.1");
        assert!(b.try_spend(t0, a, 60));
        assert!(!b.try_spend(t0, a, 60), "only 40 left");
        // Large requests cannot bank more than the allowance.
        b.earn(t0, a, 10_000);
        assert!(b.try_spend(t0, a, 100));
        assert!(!b.try_spend(t0, a, 1));
        assert!(b.try_spend(t0, ip("192.0.2.2"), 100), "another source");
        // IPv6 sources share a budget per /64.
        assert!(b.try_spend(t0, ip("2001:db8:1:2::1"), 100));
        assert!(!b.try_spend(t0, ip("2001:db8:1:2::ffff"), 1));
        assert!(
            b.try_spend(t0, ip("::ffff:192.0.2.3"), 100),
            "mapped = IPv4"
        );
        assert!(!b.try_spend(t0, ip("192.0.2.3"), 1));
    }

    #[test]
    fn idle_and_refilled_sources_leave_the_table_and_it_stays_bounded() {
        let t0 = Instant::now();
        let mut b = AmplificationBudget::new(Some(100), 2);
        assert!(b.try_spend(t0, ip("192.0.2.1"), 100));
        assert!(b.try_spend(t0, ip("192.0.2.2"), 50));
        assert!(
            !b.try_spend(t0, ip("192.0.2.3"), 1),
            "table full of sources in debt"
        );
        b.earn(t0, ip("192.0.2.2"), 50);
        b.sweep(t0);
        assert_eq!(b.len(), 1, "a source back at the allowance is forgotten");
        assert!(b.try_spend(t0, ip("192.0.2.3"), 1));
        let later = t0 + AmplificationBudget::IDLE_RESET;
        b.sweep(later);
        assert_eq!(b.len(), 0, "idle sources start over");
        assert!(b.try_spend(later, ip("192.0.2.1"), 100));
    }

    #[test]
    fn disabled_budget_allows_everything_and_keeps_nothing() {
        let t0 = Instant::now();
        let mut b = AmplificationBudget::new(None, 2);
        for _ in 0..100 {
            assert!(b.try_spend(t0, ip("192.0.2.1"), 10_000));
        }
        b.earn(t0, ip("192.0.2.1"), 1);
        assert_eq!(b.len(), 0);
    }
}
