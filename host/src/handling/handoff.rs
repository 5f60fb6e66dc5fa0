//! Inbox rows a listener wrote already claimed for this node, handed to the
//! worker in memory once their insert committed: the worker runs them as if
//! its own claim had returned them, which spares a claim (a write
//! transaction reading every row back) per batch. Bounded: a listener that
//! finds no room writes its rows unclaimed, and the worker claims them from
//! the inbox as usual. A crash loses nothing: the rows are committed claims
//! of this node, released like any other when it is gone.
//!
//! What owns nothing here: the insert (`transport::receive`) and the run
//! (`handling`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::store::ClaimedRow;

/// Batches handed over and not taken yet, at most, by default.
pub(crate) const HANDOFF_BATCHES: usize = 4;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Vec<ClaimedRow>>,
    /// Rooms given out and neither used nor given back.
    reserved: usize,
    closed: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Handoff {
    state: Mutex<State>,
    limit: usize,
    released: Notify,
}

/// Room for one batch, taken before its insert; given back when dropped
/// unused.
#[derive(Debug)]
pub(crate) struct Room(Arc<Handoff>);

impl Drop for Room {
    fn drop(&mut self) {
        self.0.lock().reserved -= 1;
        self.0.released.notify_waiters();
    }
}

impl Room {
    /// Hand over rows whose claimed insert committed.
    pub(crate) fn hand(self, rows: Vec<ClaimedRow>) {
        if !rows.is_empty() {
            self.0.lock().queue.push_back(rows);
        }
    }
}

impl Handoff {
    pub(crate) fn new(limit: usize) -> Arc<Handoff> {
        Arc::new(Handoff {
            state: Mutex::new(State::default()),
            limit: limit.max(1),
            released: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: plain counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Room for a batch if the worker has it and takes hand-offs still.
    pub(crate) fn room(self: &Arc<Self>) -> Option<Room> {
        let mut s = self.lock();
        if s.closed || s.queue.len() + s.reserved >= self.limit {
            return None;
        }
        s.reserved += 1;
        Some(Room(Arc::clone(self)))
    }

    /// The oldest rows handed over, at most `max` (the rest of their batch
    /// stays first in line).
    pub(crate) fn take(&self, max: usize) -> Option<Vec<ClaimedRow>> {
        let mut s = self.lock();
        let mut rows = s.queue.pop_front()?;
        if rows.len() > max.max(1) {
            let rest = rows.split_off(max.max(1));
            s.queue.push_front(rest);
        }
        Some(rows)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Take no more, and wait until every room given out was used or given
    /// back: after this, what [`Handoff::take`] returns is all there is.
    pub(crate) async fn close(&self) {
        loop {
            let released = self.released.notified();
            {
                let mut s = self.lock();
                s.closed = true;
                if s.reserved == 0 {
                    return;
                }
            }
            released.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn rows(n: usize) -> Vec<ClaimedRow> {
        (0..n)
            .map(|_| ClaimedRow {
                id: Uuid::now_v7(),
                attempts: 0,
                claim: 1,
                destination: "local://noop".into(),
                body: Vec::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn rooms_are_bounded_handed_in_order_and_close_waits_for_the_rooms_out() {
        let h = Handoff::new(2);
        let (a, b) = (h.room().unwrap(), h.room().unwrap());
        assert!(h.room().is_none(), "two batches at most");
        let first = rows(2);
        let first_ids: Vec<Uuid> = first.iter().map(|r| r.id).collect();
        a.hand(first);
        assert!(
            h.room().is_none(),
            "a handed batch holds its room until taken"
        );
        // In pieces of at most `max`, in order.
        let taken: Vec<Uuid> = [h.take(1).unwrap(), h.take(5).unwrap()]
            .concat()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(taken, first_ids);
        let c = h.room().unwrap();
        drop(c);
        // `b` is still out: close waits for it.
        let closing = {
            let h = Arc::clone(&h);
            tokio::spawn(async move { h.close().await })
        };
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        assert!(h.room().is_none(), "closed: no more rooms");
        b.hand(rows(1));
        closing.await.unwrap();
        assert_eq!(
            h.take(5).unwrap().len(),
            1,
            "what was handed stays to be taken"
        );
        assert!(h.take(5).is_none() && h.is_empty());
    }
}
