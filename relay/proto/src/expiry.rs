//! One deadline queue for every expiry of a shard (allocations, permissions, channels), instead
//! of a timer per object. Entries are hints: when one fires, the owner checks the object's
//! current expiry (a refresh pushes a new entry and leaves the old one to fire harmlessly).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::Instant;

/// Slab index + generation of an allocation (stale entries of a reused slot are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AllocKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The allocation may have expired.
    Allocation(AllocKey),
    /// A permission of the allocation may have expired.
    Permission(AllocKey, IpAddr),
    /// A channel binding may have expired (or its post-expiry quarantine ended).
    Channel(AllocKey, u16),
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A min-heap of deadlines.
///
/// Every live allocation, permission and channel has one entry. A deleted allocation's
/// entries stay until their deadline (up to 10 minutes), so a client that churns allocations
/// would grow the heap: [`Self::compact`] drops them once the heap is more than twice what it
/// kept last time (plus [`COMPACT_SLACK`]), so it holds at most about twice the live entries.
#[derive(Debug, Default)]
pub(crate) struct ExpiryQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// Entries kept by the last compaction.
    kept: usize,
}

/// Entries above twice the last compaction's before the next one (amortised: a compaction
/// costs one pass over the heap and happens once every this many pushes at least).
pub(crate) const COMPACT_SLACK: usize = 1024;

impl ExpiryQueue {
    /// Schedule `timer` at `at`.
    pub(crate) fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            timer,
        }));
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Pop one timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.timer)
    }

    /// Whether enough stale entries may have piled up for [`Self::compact`] to be worth it.
    pub(crate) fn needs_compaction(&self) -> bool {
        self.heap.len() > 2 * self.kept + COMPACT_SLACK
    }

    /// Drops the entries `live` says are stale, and the memory they held.
    pub(crate) fn compact(&mut self, live: impl Fn(&Timer) -> bool) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.retain(|Reverse(e)| live(&e.timer));
        entries.shrink_to_fit();
        self.heap = BinaryHeap::from(entries);
        self.kept = self.heap.len();
    }

    /// Number of queued entries.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let k = AllocKey {
            index: 0,
            generation: 0,
        };
        let mut q = ExpiryQueue::default();
        q.push(t0 + Duration::from_secs(3), Timer::Channel(k, 0x4000));
        q.push(t0 + Duration::from_secs(1), Timer::Allocation(k));
        q.push(
            t0 + Duration::from_secs(2),
            Timer::Permission(k, "192.0.2.1".parse().unwrap()),
        );
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(2)),
            Some(Timer::Allocation(k))
        );
        assert!(matches!(
            q.pop_due(t0 + Duration::from_secs(2)),
            Some(Timer::Permission(..))
        ));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(2)), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn compaction_drops_stale_entries_and_keeps_the_order() {
        let t0 = Instant::now();
        let key = |index| AllocKey {
            index,
            generation: 0,
        };
        let mut q = ExpiryQueue::default();
        assert!(!q.needs_compaction());
        let n = COMPACT_SLACK as u32 + 10;
        for i in 0..n {
            q.push(
                t0 + Duration::from_secs(u64::from(n - i)),
                Timer::Allocation(key(i)),
            );
        }
        assert!(q.needs_compaction());
        // Only the even allocations are still there.
        q.compact(|t| matches!(t, Timer::Allocation(k) if k.index % 2 == 0));
        assert_eq!(q.len(), (n as usize).div_ceil(2));
        assert!(!q.needs_compaction());
        let mut last = None;
        while let Some(Timer::Allocation(k)) = q.pop_due(t0 + Duration::from_secs(u64::from(n))) {
            assert_eq!(k.index % 2, 0);
            assert!(last.is_none_or(|l| l > k.index), "deadline order kept");
            last = Some(k.index);
        }
        assert_eq!(q.len(), 0);
    }
}
