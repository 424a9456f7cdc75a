//! A connection's outbound queue, bounded in frames and in bytes.
//!
//! Frames wait here between the hub (or a cluster node's delivery) and the socket task that
//! writes them. A client that stops reading fills its queue; the hub then ends its session with
//! `slow_consumer` instead of buffering more. Bounding bytes as well as frames matters: 256
//! frames of 64 KiB would be 16 MiB for one silent receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

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
    let (tx, rx) = mpsc::channel(frames);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            tx,
            bytes: Arc::clone(&bytes),
            max_bytes,
            budget: Arc::clone(budget),
        },
        OutboundRx {
            rx,
            bytes,
            budget: Arc::clone(budget),
        },
    )
}

/// The sending side (cheap to clone).
#[derive(Debug, Clone)]
pub struct OutboundTx {
    tx: mpsc::Sender<Outbound>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    budget: Arc<MemoryBudget>,
}

impl OutboundTx {
    /// Whether a frame of `len` bytes fits. The last slot is kept for the error that ends a
    /// slow consumer.
    pub fn has_room(&self, len: usize) -> bool {
        self.tx.capacity() > 1 && self.bytes.load(Ordering::Acquire) + len <= self.max_bytes
    }

    /// Queues a frame (check [`Self::has_room`] first; a full queue drops it).
    pub fn push(&self, frame: Frame) {
        let len = frame.len();
        self.bytes.fetch_add(len, Ordering::AcqRel);
        self.budget.add(len);
        if self.tx.try_send(Outbound::Frame(frame)).is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            self.budget.release(len);
        }
    }

    /// Bytes of frames waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Queues a close (behind what is queued), if there is room.
    pub fn close(&self, frame: Option<Utf8Bytes>, code: u16) {
        let _ = self.tx.try_send(Outbound::Close { frame, code });
    }

    /// Queues a close, waiting for room (a full queue's reader frees it or dies).
    pub async fn close_when_room(&self, frame: Option<Utf8Bytes>, code: u16) {
        let _ = self.tx.send(Outbound::Close { frame, code }).await;
    }
}

/// The receiving side, owned by the socket task.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::Receiver<Outbound>,
    bytes: Arc<AtomicUsize>,
    budget: Arc<MemoryBudget>,
}

impl OutboundRx {
    /// The next entry. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let next = self.rx.recv().await;
        self.taken(next.as_ref());
        next
    }

    /// The next entry if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let next = self.rx.try_recv().ok();
        self.taken(next.as_ref());
        next
    }

    fn taken(&self, entry: Option<&Outbound>) {
        if let Some(Outbound::Frame(frame)) = entry {
            self.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
            self.budget.release(frame.len());
        }
    }
}

impl Drop for OutboundRx {
    /// Frames nobody will write any more leave the budget (new pushes fail from now on).
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(entry) = self.rx.try_recv() {
            self.taken(Some(&entry));
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
}
