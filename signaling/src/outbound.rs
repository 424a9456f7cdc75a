//! A connection's outbound queue, bounded in frames and in bytes.
//!
//! Frames wait here between the hub (or a cluster node's delivery) and the socket task that
//! writes them. A client that stops reading fills its queue; the hub then ends its session with
//! `slow_consumer` instead of buffering more, and drops what the queue holds
//! ([`OutboundTx::discard_and_close`]: a deque the sending side can clear, not a channel), so a
//! session that ends frees its frames at once, not when its stalled write gives up. Bounding
//! bytes as well as frames matters: 256 frames of 64 KiB would be 16 MiB for one silent
//! receiver. The queues of one y-webrtc socket share their byte bound ([`queue_sharing`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::memory_budget::MemoryBudget;
use crate::outbox::Frame;

/// What a session's socket task is told to write.
#[derive(Debug)]
pub enum Outbound {
    /// One server frame (its text is composed when written).
    Frame(Frame),
    /// Write `frame` (if any), then close the socket with `code`.
    Close { frame: Option<Utf8Bytes>, code: u16 },
}

/// A queue of at most `frames` entries and `max_bytes` bytes of frames, whose frames also
/// count against the node's `budget`.
pub fn queue(
    frames: usize,
    max_bytes: usize,
    budget: &Arc<MemoryBudget>,
) -> (OutboundTx, OutboundRx) {
    queue_sharing(frames, max_bytes, budget, Arc::default())
}

/// [`queue`], its bytes bounded together with every queue given the same `connection_bytes`:
/// the queues of the sessions one socket serves (y-webrtc's topics) hold `max_bytes` in all,
/// not each.
pub fn queue_sharing(
    frames: usize,
    max_bytes: usize,
    budget: &Arc<MemoryBudget>,
    connection_bytes: Arc<AtomicUsize>,
) -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            entries: VecDeque::new(),
            bytes: 0,
            senders: 1,
            receiver_gone: false,
        }),
        queued: Notify::new(),
        capacity: frames.max(1),
        max_bytes,
        connection_bytes,
        budget: Arc::clone(budget),
    });
    (
        OutboundTx {
            shared: Arc::clone(&shared),
        },
        OutboundRx { shared },
    )
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the receiver: an entry was queued, or the last sender is gone.
    queued: Notify,
    capacity: usize,
    max_bytes: usize,
    /// Bytes of frames queued here and in the queues that share this one's bound.
    connection_bytes: Arc<AtomicUsize>,
    budget: Arc<MemoryBudget>,
}

#[derive(Debug)]
struct Queue {
    entries: VecDeque<Outbound>,
    /// Bytes of the frames in `entries`.
    bytes: usize,
    senders: usize,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `entry` out of the bytes it was counted in.
    fn release(&self, queue: &mut Queue, entry: &Outbound) {
        if let Outbound::Frame(frame) = entry {
            queue.bytes -= frame.len();
            self.connection_bytes
                .fetch_sub(frame.len(), Ordering::AcqRel);
            self.budget.release(frame.len());
        }
    }

    /// Queues `entry` if there is a slot and a receiver (else it is dropped).
    fn try_queue(&self, queue: &mut Queue, entry: Outbound) {
        if queue.receiver_gone || queue.entries.len() >= self.capacity {
            return;
        }
        if let Outbound::Frame(frame) = &entry {
            queue.bytes += frame.len();
            self.connection_bytes
                .fetch_add(frame.len(), Ordering::AcqRel);
            self.budget.add(frame.len());
        }
        queue.entries.push_back(entry);
        self.queued.notify_one();
    }

    fn discard(&self, queue: &mut Queue) {
        let entries = std::mem::take(&mut queue.entries);
        for entry in entries {
            if matches!(entry, Outbound::Close { .. }) {
                queue.entries.push_back(entry);
            } else {
                self.release(queue, &entry);
            }
        }
    }

    fn take(&self) -> Result<Option<Outbound>, ()> {
        let mut queue = self.lock();
        match queue.entries.pop_front() {
            Some(entry) => {
                self.release(&mut queue, &entry);
                Ok(Some(entry))
            }
            None if queue.senders == 0 => Ok(None),
            None => Err(()),
        }
    }
}

/// The sending side (cheap to clone).
#[derive(Debug)]
pub struct OutboundTx {
    shared: Arc<Shared>,
}

impl Clone for OutboundTx {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.senders -= 1;
        if queue.senders == 0 {
            self.shared.queued.notify_one();
        }
    }
}

impl OutboundTx {
    /// Whether a frame of `len` bytes fits. The last slot is kept for the error that ends a
    /// slow consumer.
    pub fn has_room(&self, len: usize) -> bool {
        let queue = self.shared.lock();
        queue.entries.len() + 2 <= self.shared.capacity
            && self.shared.connection_bytes.load(Ordering::Acquire) + len <= self.shared.max_bytes
    }

    /// Queues a frame (check [`Self::has_room`] first; a full queue drops it).
    pub fn push(&self, frame: Frame) {
        let mut queue = self.shared.lock();
        self.shared.try_queue(&mut queue, Outbound::Frame(frame));
    }

    /// Bytes of frames waiting in this queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Queues a close (behind what is queued), if there is room.
    pub fn close(&self, frame: Option<Utf8Bytes>, code: u16) {
        let mut queue = self.shared.lock();
        self.shared
            .try_queue(&mut queue, Outbound::Close { frame, code });
    }

    /// Drops the frames still queued (a close queued stays): for a session that ends because
    /// its client does not read. What they held is free at once, not when the socket's stalled
    /// write gives up (`--ping-timeout` later), so the memory budget can count on it.
    pub fn discard(&self) {
        let mut queue = self.shared.lock();
        self.shared.discard(&mut queue);
    }

    /// [`Self::discard`], then queues a close.
    pub fn discard_and_close(&self, frame: Option<Utf8Bytes>, code: u16) {
        let mut queue = self.shared.lock();
        self.shared.discard(&mut queue);
        self.shared
            .try_queue(&mut queue, Outbound::Close { frame, code });
    }
}

/// The receiving side, owned by the socket task.
#[derive(Debug)]
pub struct OutboundRx {
    shared: Arc<Shared>,
}

impl OutboundRx {
    /// The next entry; `None` once every sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            let queued = self.shared.queued.notified();
            if let Ok(next) = self.shared.take() {
                return next;
            }
            queued.await;
        }
    }

    /// The next entry if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.take().ok().flatten()
    }
}

impl Drop for OutboundRx {
    /// Frames nobody will write any more leave the budget (new pushes fail from now on).
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.receiver_gone = true;
        while let Some(entry) = queue.entries.pop_front() {
            self.shared.release(&mut queue, &entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_frames_and_bytes() {
        let (tx, mut rx) = queue(8, 100, &Arc::new(MemoryBudget::unlimited()));
        let frame = |n: usize| Frame::Whole(Utf8Bytes::from("x".repeat(n)));
        assert!(tx.has_room(60));
        tx.push(frame(60));
        assert!(!tx.has_room(60), "120 bytes > 100");
        assert!(tx.has_room(40));
        assert!(matches!(rx.try_recv(), Some(Outbound::Frame(_))));
        assert!(tx.has_room(100), "bytes given back when taken");
        let (tx, _rx) = queue(2, 1000, &Arc::new(MemoryBudget::unlimited()));
        tx.push(frame(1));
        assert!(!tx.has_room(1), "the last slot is kept for the close");
    }

    #[test]
    fn queued_frames_count_against_the_budget_until_taken_or_dropped() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let (tx, mut rx) = queue(8, 1000, &budget);
        tx.push(Frame::Whole(Utf8Bytes::from("x".repeat(100))));
        tx.push(Frame::Whole(Utf8Bytes::from("y".repeat(50))));
        assert_eq!((budget.used(), tx.queued_bytes()), (150, 150));
        rx.try_recv();
        assert_eq!(budget.used(), 50);
        drop(rx);
        assert_eq!(
            budget.used(),
            0,
            "dropping the receiver releases what it held"
        );
        tx.push(Frame::Whole(Utf8Bytes::from("z".repeat(10))));
        assert_eq!(budget.used(), 0, "a push to a dropped queue is not counted");
    }

    #[test]
    fn a_discarded_queue_frees_its_frames_at_once_and_closes() {
        let budget = Arc::new(MemoryBudget::new(10_000));
        let (tx, mut rx) = queue(8, 10_000, &budget);
        for _ in 0..3 {
            tx.push(Frame::Whole(Utf8Bytes::from("x".repeat(1000))));
        }
        assert_eq!(budget.used(), 3000);
        tx.discard_and_close(None, 1008);
        assert_eq!((budget.used(), tx.queued_bytes()), (0, 0));
        assert!(matches!(
            rx.try_recv(),
            Some(Outbound::Close { code: 1008, .. })
        ));
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn queues_sharing_a_bound_hold_it_in_all() {
        let budget = Arc::new(MemoryBudget::unlimited());
        let connection = Arc::new(AtomicUsize::new(0));
        let (a, _ra) = queue_sharing(8, 100, &budget, Arc::clone(&connection));
        let (b, mut rb) = queue_sharing(8, 100, &budget, Arc::clone(&connection));
        a.push(Frame::Whole(Utf8Bytes::from("x".repeat(60))));
        assert!(!b.has_room(60), "60 + 60 > the 100 both share");
        assert!(b.has_room(40));
        b.push(Frame::Whole(Utf8Bytes::from("y".repeat(40))));
        assert_eq!((a.queued_bytes(), b.queued_bytes()), (60, 40));
        rb.try_recv();
        assert!(b.has_room(40) && !b.has_room(41));
    }

    #[tokio::test]
    async fn the_receiver_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = queue(4, 1000, &Arc::new(MemoryBudget::unlimited()));
        let other = tx.clone();
        let waiting = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        tx.push(Frame::Whole(Utf8Bytes::from("a")));
        drop((tx, other));
        assert!(!waiting.await.unwrap(), "the frame first");
        let (tx, mut rx) = queue(4, 1000, &Arc::new(MemoryBudget::unlimited()));
        tx.close(None, 1000);
        drop(tx);
        assert!(matches!(rx.recv().await, Some(Outbound::Close { .. })));
        assert!(rx.recv().await.is_none(), "every sender gone");
    }
}
