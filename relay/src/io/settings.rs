//! New live settings for every worker (the SIGHUP reload): one watch channel to all workers,
//! and one back from each saying which generation its shard applied, so that a reload is
//! reported done only once every shard runs with it.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relay_proto::LiveSettings;
use tokio::sync::watch;

use super::shard::Shard;

/// How long a reload waits for the workers to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One delivery: the settings and their generation (1, 2, ...; 0 is the start-up
/// configuration, which the workers were built with).
#[derive(Debug)]
struct Delivery {
    generation: u64,
    settings: LiveSettings,
}

/// The relay handle's end: sends settings to every worker and waits for them.
#[derive(Debug)]
pub(crate) struct SettingsSender {
    tx: watch::Sender<Option<Arc<Delivery>>>,
    applied: Vec<watch::Receiver<u64>>,
    generation: AtomicU64,
}

/// A worker's end (moved into its thread).
#[derive(Debug)]
pub(crate) struct SettingsReceiver {
    rx: watch::Receiver<Option<Arc<Delivery>>>,
    applied: watch::Sender<u64>,
}

/// A sender and one receiver per worker.
pub(crate) fn channel(workers: usize) -> (SettingsSender, Vec<SettingsReceiver>) {
    let (tx, rx) = watch::channel(None);
    let (applied, receivers) = (0..workers)
        .map(|_| {
            let (applied_tx, applied_rx) = watch::channel(0);
            (
                applied_rx,
                SettingsReceiver {
                    rx: rx.clone(),
                    applied: applied_tx,
                },
            )
        })
        .unzip();
    let sender = SettingsSender {
        tx,
        applied,
        generation: AtomicU64::new(0),
    };
    (sender, receivers)
}

/// The workers did not all confirm new settings in time (a worker stopped).
#[derive(Debug)]
pub(crate) struct NotApplied;

impl SettingsSender {
    /// Sends `settings` to every worker and waits until each shard has applied them.
    pub(crate) async fn deliver(&self, settings: LiveSettings) -> Result<(), NotApplied> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.tx.send_replace(Some(Arc::new(Delivery {
            generation,
            settings,
        })));
        let every = async {
            for applied in &self.applied {
                let mut applied = applied.clone();
                applied
                    .wait_for(|g| *g >= generation)
                    .await
                    .map_err(|_| NotApplied)?;
            }
            Ok::<(), NotApplied>(())
        };
        tokio::time::timeout(APPLY_TIMEOUT, every)
            .await
            .map_err(|_| NotApplied)?
    }
}

/// A worker's task: applies each delivery to its shard's core, then confirms it.
pub(crate) async fn run(shard: Rc<Shard>, mut receiver: SettingsReceiver) {
    while receiver.rx.changed().await.is_ok() {
        let delivery = receiver.rx.borrow_and_update().clone();
        if let Some(delivery) = delivery {
            shard.reconfigure(&delivery.settings);
            let _ = receiver.applied.send(delivery.generation);
        }
    }
}
