//! The batches one worker has in hand at once: a slot for each (at most
//! `handling.batches_in_flight` while a backlog waits, at most
//! [`LIGHT_DEPTH`] otherwise), the order they commit in (the order they were
//! claimed), and when to go back to one batch at a time (batches that keep
//! going stale on each other share a hot key: overlapping them only runs
//! their handlers twice).
//!
//! Why two depths: with a backlog every batch is full, and more of them in
//! hand keep the database and the handlers busy while earlier ones commit.
//! Without one, batches are small, and more of them in hand only split the
//! few messages there are into more commits, each waiting for the one before
//! (at 1,000 msgs/s on PostgreSQL, 4 in hand doubled the median latency of 2).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::BatchReport;

/// Batches run one at a time after one went stale.
const SERIAL_BATCHES: u32 = 32;

/// Batches in hand at most when the last claim was not full (no backlog).
pub(super) const LIGHT_DEPTH: u32 = 2;

/// A batch's place in the pipeline, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    _slot: OwnedSemaphorePermit,
    /// Held by a batch claimed without a backlog.
    _light: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub(super) struct Pipeline {
    depth: u32,
    slots: Arc<Semaphore>,
    /// At most [`LIGHT_DEPTH`] batches claimed without a backlog.
    light: Arc<Semaphore>,
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
            light: Arc::new(Semaphore::new(depth.min(LIGHT_DEPTH) as usize)),
            last: Mutex::new(None),
            serial: AtomicU32::new(0),
        }
    }

    /// A slot for one more batch, once one is free: any of the `depth`
    /// while a `backlog` waits (the last claim was full), else one of the
    /// first [`LIGHT_DEPTH`]. (The semaphores are never closed, so `None`
    /// does not happen.)
    pub(super) async fn slot(&self, backlog: bool) -> Option<Slot> {
        let light = if backlog {
            None
        } else {
            Some(Arc::clone(&self.light).acquire_owned().await.ok()?)
        };
        let slot = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        Some(Slot {
            _slot: slot,
            _light: light,
        })
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

    use std::time::Duration;

    use super::{LIGHT_DEPTH, Pipeline, SERIAL_BATCHES};
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
        let a = p.slot(false).await.unwrap();
        let b = p.slot(true).await.unwrap();
        let drained = tokio::time::timeout(Duration::from_millis(20), p.drain()).await;
        assert!(drained.is_err(), "two batches in hand");
        drop((a, b));
        assert!(p.drain().await.is_some());
    }

    #[tokio::test]
    async fn without_a_backlog_fewer_batches_are_in_hand() {
        let p = Pipeline::new(4);
        let light: Vec<_> = futures::future::join_all((0..LIGHT_DEPTH).map(|_| p.slot(false)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let more = tokio::time::timeout(Duration::from_millis(20), p.slot(false)).await;
        assert!(more.is_err(), "{LIGHT_DEPTH} small batches in hand at most");
        // A full claim (a backlog) takes the rest of the depth.
        let mut full = Vec::new();
        for _ in LIGHT_DEPTH..4 {
            full.push(p.slot(true).await.unwrap());
        }
        let fifth = tokio::time::timeout(Duration::from_millis(20), p.slot(true)).await;
        assert!(fifth.is_err(), "4 batches in hand at most");
        drop(light);
        assert!(p.slot(false).await.is_some());
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
