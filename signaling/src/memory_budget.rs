//! One budget for the frames a node holds: those queued for its connections (WebSockets, SSE
//! streams, long-polls) and, on a single node, those kept in sessions' replay buffers (a
//! cluster keeps those in Redis).
//!
//! Each queue and replay buffer is bounded on its own (`--outbound-queue-bytes`,
//! `--replay-max-bytes`), but their product with the number of connections and sessions is far
//! more than a machine has. The budget (`--memory-budget`) bounds the sum: a frame counts from
//! the moment it is queued or kept until it is written and acknowledged (a frame both queued
//! and kept counts twice, and the frames of a broadcast share one body but count once per
//! receiver, so the count is an upper bound of what is held). When a delivery
//! takes the count past the budget, the hub ends the sessions that hold the most, most first
//! (connected ones with frames queued: `slow_consumer`; parked ones: `replay_overflow`), until
//! the count is back under nine tenths of the budget.

use std::sync::atomic::{AtomicUsize, Ordering};

/// See the module docs.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// A budget that is never exceeded (tests, embedded uses that bound memory otherwise).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Counts `bytes` more.
    pub fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Counts `bytes` fewer.
    pub fn release(&self, bytes: usize) {
        // Saturating: a release can never take the count below zero, even if a caller got the
        // order of its updates wrong.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Applies the change of a holder's size from `before` to `after` bytes.
    pub fn resize(&self, before: usize, after: usize) {
        if after > before {
            self.add(after - before);
        } else {
            self.release(before - after);
        }
    }

    /// Whether the count is past the budget.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// How many bytes must be freed to get back under nine tenths of the budget.
    pub fn excess(&self) -> usize {
        self.used().saturating_sub(self.limit / 10 * 9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_never_below_zero() {
        let budget = MemoryBudget::new(1000);
        budget.add(600);
        budget.resize(600, 1100);
        assert!(budget.over());
        assert_eq!(budget.excess(), 1100 - 900);
        budget.release(5000);
        assert_eq!(budget.used(), 0);
        assert!(!MemoryBudget::unlimited().over());
    }
}
