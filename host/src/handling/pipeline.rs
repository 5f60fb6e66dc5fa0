//! The batches one worker has in hand at once: a slot for each (at most
//! `handling.batches_in_flight`), the order they commit in (the order they were
//! claimed), and when to go back to one batch at a time (batches that keep
//! going stale on each other share a hot key: overlapping them only runs
//! their handlers twice).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::BatchReport;

/// Batches run one at a time after one went stale.
const SERIAL_BATCHES: u32 = 32;

#[derive(Debug)]
pub(super) struct Pipeline {
    depth: u32,
    slots: Arc<Semaphore>,
    /// Resolves when the batch handed out last has committed.
    last: Mutex<Option<oneshot::Receiver<()>>>,
    /// Batches left to run one at a time.
    serial: AtomicU32,
}

impl Pipeline {
    /// At most `depth` batches in hand at once.
    pub(super) fn new(depth: u32) -> Self {
        let depth = depth.max(1);
        Pipeline {
            depth,
            slots: Arc::new(Semaphore::new(depth as usize)),
            last: Mutex::new(None),
            serial: AtomicU32::new(0),
        }
    }

    /// A slot for one more batch, once one is free. (The semaphore is never
    /// closed, so `None` does not happen.)
    pub(super) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// Every slot: returns once no batch is in hand.
    pub(super) async fn drain(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots)
            .acquire_many_owned(self.depth)
            .await
            .ok()
    }

    /// The next batch's turn: dropping the sender tells the batch after it
    /// that it has committed; the receiver resolves when the batch before
    /// it has.
    pub(super) fn next_turn(&self) -> (oneshot::Sender<()>, oneshot::Receiver<()>) {
        let (done, next_waits) = oneshot::channel();
        let before = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(next_waits);
        let before = before.unwrap_or_else(|| {
            // Nothing before it: a turn that is already over.
            let (over, rx) = oneshot::channel();
            drop(over);
            rx
        });
        (done, before)
    }

    /// Whether the next batch may overlap the ones in hand.
    pub(super) fn on(&self) -> bool {
        self.depth > 1
            && self
                .serial
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_err()
    }

    /// Note how a batch went: one that went stale turns overlapping off for
    /// a while.
    pub(super) fn saw(&self, report: &BatchReport) {
        if report.reruns > 0 {
            self.serial.store(SERIAL_BATCHES, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Pipeline, SERIAL_BATCHES};
    use crate::handling::BatchReport;

    #[tokio::test]
    async fn turns_come_in_the_order_they_were_handed_out() {
        let p = Pipeline::new(2);
        let (first_done, first_waits) = p.next_turn();
        let (second_done, mut second_waits) = p.next_turn();
        // The first waits for nothing; the second for the first.
        first_waits.await.unwrap_err();
        assert!(second_waits.try_recv().is_err());
        drop(first_done);
        second_waits.await.unwrap_err();
        drop(second_done);
    }

    #[tokio::test]
    async fn drain_waits_for_every_slot() {
        let p = Pipeline::new(2);
        let a = p.slot().await.unwrap();
        let b = p.slot().await.unwrap();
        let drained = tokio::time::timeout(std::time::Duration::from_millis(20), p.drain()).await;
        assert!(drained.is_err(), "two batches in hand");
        drop((a, b));
        assert!(p.drain().await.is_some());
    }

    #[test]
    fn a_stale_batch_turns_overlap_off_for_a_while() {
        let p = Pipeline::new(2);
        assert!(p.on());
        p.saw(&BatchReport {
            reruns: 1,
            ..BatchReport::default()
        });
        for _ in 0..SERIAL_BATCHES {
            assert!(!p.on());
        }
        assert!(p.on());
    }
}
