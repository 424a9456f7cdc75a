//! `TaskGroup`: the tasks a worker waits for when it stops (mini-redis's drop guard: every
//! task holds a clone of one `mpsc::Sender`, and "the last sender dropped" means every task
//! has ended). A task that is cancelled drops its guard too, so nothing leaks on an early
//! return or an abort.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The connection and relay-socket tasks of one worker (one thread: no `Send` needed).
pub(crate) struct TaskGroup {
    /// Cloned into every task; `None` once the group is closed.
    guard: RefCell<Option<mpsc::Sender<()>>>,
    /// Yields `None` once every guard is gone; taken by `close_and_wait`.
    done: RefCell<Option<mpsc::Receiver<()>>>,
}

impl TaskGroup {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self {
            guard: RefCell::new(Some(tx)),
            done: RefCell::new(Some(rx)),
        }
    }

    /// Spawns `task` on the worker's `LocalSet`, tracked: `close_and_wait` waits for it.
    pub(crate) fn spawn_local<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + 'static,
    {
        let guard = self.guard.borrow().clone();
        tokio::task::spawn_local(async move {
            task.await;
            // Also dropped (and so counted as ended) if the task is cancelled.
            drop(guard);
        })
    }

    /// Stops tracking new tasks and waits until every tracked task has ended, at most
    /// `timeout`. `true` if they all ended.
    pub(crate) async fn close_and_wait(&self, timeout: Duration) -> bool {
        drop(self.guard.borrow_mut().take());
        let Some(mut done) = self.done.borrow_mut().take() else {
            return true;
        };
        tokio::time::timeout(timeout, done.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    #[tokio::test]
    async fn waits_for_finished_and_cancelled_tasks_only() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let group = Rc::new(TaskGroup::new());
                group.spawn_local(tokio::time::sleep(Duration::from_millis(50)));
                let forever = group.spawn_local(std::future::pending());
                tokio::task::yield_now().await;
                forever.abort();
                let started = std::time::Instant::now();
                assert!(group.close_and_wait(Duration::from_secs(10)).await);
                let waited = started.elapsed();
                assert!(
                    waited >= Duration::from_millis(40),
                    "the sleeper ended: {waited:?}"
                );
                assert!(
                    waited < Duration::from_secs(5),
                    "the aborted task did not hold it"
                );

                let group = TaskGroup::new();
                group.spawn_local(std::future::pending());
                assert!(
                    !group.close_and_wait(Duration::from_millis(100)).await,
                    "a task that does not end is waited for at most the timeout"
                );
            })
            .await;
    }
}
