//! Publishes a relay's usage ledger to the fleet's Redis (`fleet::usage`): the totals of what
//! changed since Redis last confirmed them, so that signaling's `/v1/usage` reports every relay
//! and the counts outlive the process. Used by a registered relay on its heartbeats and at its
//! stop, and by signaling's in-process relay in a cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet::link::Connection;

use crate::usage::UsageBook;

/// What one relay process publishes, and where.
pub struct UsagePublisher {
    conn: Connection,
    /// `fleet::usage::publisher_id`: the relay's id and a tag of this process.
    publisher: String,
    book: Arc<UsageBook>,
    /// How long Redis keeps a bucket (the retention plus one bucket).
    keep: Duration,
    timeout: Duration,
    /// Held from reading the changes to their confirmation, so that totals reach Redis in the
    /// order they were read (an older total never lands over a newer one).
    publishing: tokio::sync::Mutex<()>,
    /// Whether this process has set its mark in Redis once (`fleet::usage::hold`).
    marked: AtomicBool,
}

impl UsagePublisher {
    /// Publishes `book` as relay `relay` (this process gets its own tag), kept in Redis for
    /// the book's retention plus one bucket; from now on the ledger remembers what changed.
    pub fn new(conn: Connection, relay: &str, book: Arc<UsageBook>, timeout: Duration) -> Self {
        let keep = {
            let mut ledger = book.lock();
            ledger.track_changes();
            ledger.limits().retention + ledger.limits().bucket
        };
        Self {
            conn,
            publisher: fleet::usage::publisher_id(relay, rand::random()),
            book,
            keep,
            timeout,
            publishing: tokio::sync::Mutex::new(()),
            marked: AtomicBool::new(false),
        }
    }

    /// Publishes the usage that changed since it was last published, or all the ledger holds
    /// when Redis lost what was (its mark of this process is gone). What is not confirmed
    /// published (a failure, or a dropped call) stays a change in the ledger and goes with the
    /// next publication; nothing is counted twice, as the totals are absolute. True when
    /// everything was published.
    pub async fn publish(&self) -> bool {
        let _publishing = self.publishing.lock().await;
        match fleet::usage::hold(&self.conn, &self.publisher, self.keep, self.timeout).await {
            Ok(true) => {}
            Ok(false) => {
                // Missing at the first publication: nothing was published yet, and the ledger
                // counts everything it holds as changed already.
                if self.marked.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the relay fleet's Redis lost the usage this relay published (restarted without persistence?): publishing again all it holds"
                    );
                }
                self.book.lock().mark_all_changed();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not publish usage to the relay fleet");
                return false;
            }
        }
        let mut after = None;
        loop {
            // One bucket at a time: the workers share the ledger's lock.
            let (bucket, overflowed) = {
                let ledger = self.book.lock();
                (ledger.next_change(after), ledger.overflowed())
            };
            let Some(bucket) = bucket else {
                return true;
            };
            after = Some(bucket.start);
            let published = fleet::usage::publish(
                &self.conn,
                &self.publisher,
                &bucket,
                self.keep,
                overflowed,
                self.timeout,
            )
            .await;
            if let Err(e) = published {
                tracing::warn!(error = %e, "could not publish usage to the relay fleet");
                return false;
            }
            self.book.lock().confirm_published(&bucket);
        }
    }

    /// Publishes every `every` until dropped (spawn it; abort the task to stop).
    pub async fn run(&self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let _ = self.publish().await;
        }
    }

    /// The last publication, at the stop: tried `attempts` times, `pause` apart, while Redis
    /// does not answer; then an error is logged.
    pub async fn publish_last(&self, attempts: u32, pause: Duration) {
        for attempt in 1..=attempts {
            if self.publish().await {
                return;
            }
            if attempt < attempts {
                tokio::time::sleep(pause).await;
            }
        }
        tracing::error!(
            attempts,
            "the last usage could not be published to the relay fleet: it was on this relay's /usage only"
        );
    }
}
