//! Test support for unit tests under paused tokio time
//! (`#[tokio::test(start_paused = true)]`): a wall clock that follows the
//! paused clock, and the real SQLite store with the clock held still while
//! each of its calls runs.
//!
//! Why the store needs holding: sqlx runs every SQLite connection on its own
//! thread and waits for it under a tokio timeout (the pool's acquire
//! timeout). A paused runtime that has nothing to run jumps its clock to the
//! next timer, so while a query is on that thread the clock would leap to
//! whatever timer is next — the code under test's backoff, the test's
//! deadline, or the acquire timeout itself (the call then fails with
//! `PoolTimedOut`). [`Frozen`] makes each call take no time on the paused
//! clock: it holds a blocking task for the call's length, and tokio does not
//! auto-advance while a blocking task runs. Every call still goes to the
//! real database; nothing is mocked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::{Backend, StorageConfig};
use crate::store::{
    Admin, ClaimedRow, CommitBatch, Counts, DeadLetter, DeadLetters, GroupCommit, Inbox,
    InsertReport, MessageStore, NewIncoming, Nodes, Outbox, OutgoingRow, Selection, StateEntry,
    StateListing, StateReader, StateValue, StoreResult,
};

thread_local! {
    /// The wall clock and the tokio clock read together, once per thread.
    static BASE: Cell<Option<(SystemTime, Instant)>> = const { Cell::new(None) };
}

/// Milliseconds since the Unix epoch on a wall clock that moves with tokio's
/// clock: under paused time it moves only when tokio time does (so a
/// `deliver_by` or a scheduled time falls due when the paused clock says);
/// otherwise it keeps to the system clock. Stands in for
/// [`crate::envelope::now_ms`] in the modules tested under paused time.
pub(crate) fn now_ms() -> i64 {
    let (wall, at) = BASE.with(|b| {
        let base = b
            .get()
            .unwrap_or_else(|| (SystemTime::now(), Instant::now()));
        b.set(Some(base));
        base
    });
    let now = wall + at.elapsed();
    let since_epoch = now.duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("ms fit in i64")
}

/// Keeps the paused clock from auto-advancing while alive.
#[must_use]
struct Hold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

fn hold() -> Hold {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Ends when the sender drops; tokio counts a running blocking task as
    // work in flight and does not jump the clock meanwhile.
    drop(tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    }));
    Hold(tx)
}

/// Open and migrate a SQLite store in `dir` (the file `jasper.db`).
pub(crate) async fn sqlite(dir: &Path) -> Arc<Frozen> {
    let _hold = hold();
    let config = StorageConfig {
        backend: Backend::Sqlite {
            path: dir.join("jasper.db"),
        },
        ..StorageConfig::default()
    };
    let inner = crate::store::open(&config).await.expect("open sqlite");
    inner.migrate().await.expect("migrate");
    Arc::new(Frozen {
        inner,
        claims: Mutex::new(Vec::new()),
    })
}

/// When `claim_incoming` was called and what it came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    pub at: Instant,
    /// Rows claimed; `None`: the call failed.
    pub rows: Option<usize>,
}

/// The real store, each call made with the paused clock held (see the
/// module docs); it also notes when the inbox was claimed from.
#[derive(Debug)]
pub(crate) struct Frozen {
    inner: Arc<dyn MessageStore>,
    claims: Mutex<Vec<Claim>>,
}

impl Frozen {
    /// Every `claim_incoming` so far, in order.
    pub(crate) fn claims(&self) -> Vec<Claim> {
        self.claims.lock().unwrap().clone()
    }
}

#[async_trait]
impl Inbox for Frozen {
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        let _hold = hold();
        self.inner.insert_incoming(rows).await
    }
    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        let at = Instant::now();
        let result = {
            let _hold = hold();
            self.inner.claim_incoming(node_id, now, limit).await
        };
        let rows = result.as_ref().ok().map(Vec::len);
        self.claims.lock().unwrap().push(Claim { at, rows });
        result
    }
    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.release_claimed(node_id).await
    }
    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        let _hold = hold();
        self.inner.next_scheduled().await
    }
    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.delete_expired_handled(now, limit).await
    }
}

#[async_trait]
impl GroupCommit for Frozen {
    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        let _hold = hold();
        self.inner.commit(batch).await
    }
}

#[async_trait]
impl StateReader for Frozen {
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let _hold = hold();
        self.inner.read_state(plugin, key).await
    }
}

#[async_trait]
impl StateListing for Frozen {
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>> {
        let _hold = hold();
        self.inner.list_state(plugin, prefix, limit).await
    }
}

#[async_trait]
impl Outbox for Frozen {
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        let _hold = hold();
        self.inner.claim_outgoing(node_id, limit).await
    }
    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.delete_outgoing(ids).await
    }
}

#[async_trait]
impl DeadLetters for Frozen {
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let _hold = hold();
        self.inner.dead_letters(limit).await
    }
    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        let _hold = hold();
        self.inner.dead_letter(id).await
    }
    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.replay_dead_letters(which).await
    }
    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.purge_dead_letters(which).await
    }
}

#[async_trait]
impl Nodes for Frozen {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        let _hold = hold();
        self.inner.register_node(node_id, name, now).await
    }
    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        let _hold = hold();
        self.inner.heartbeat(node_id, now).await
    }
    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        let _hold = hold();
        self.inner.remove_node(node_id).await
    }
    async fn release_dead_nodes(&self, self_id: i64, stale_before: i64) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.release_dead_nodes(self_id, stale_before).await
    }
    async fn release_all(&self) -> StoreResult<u64> {
        let _hold = hold();
        self.inner.release_all().await
    }
}

#[async_trait]
impl Admin for Frozen {
    async fn migrate(&self) -> StoreResult<()> {
        let _hold = hold();
        self.inner.migrate().await
    }
    async fn rebuild(&self) -> StoreResult<()> {
        let _hold = hold();
        self.inner.rebuild().await
    }
    async fn drop_all(&self) -> StoreResult<()> {
        let _hold = hold();
        self.inner.drop_all().await
    }
    async fn check_schema(&self) -> StoreResult<()> {
        let _hold = hold();
        self.inner.check_schema().await
    }
    fn schema_script(&self) -> String {
        self.inner.schema_script()
    }
    async fn counts(&self) -> StoreResult<Counts> {
        let _hold = hold();
        self.inner.counts().await
    }
    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>> {
        let _hold = hold();
        self.inner.outgoing_by_destination().await
    }
    async fn clear(&self) -> StoreResult<()> {
        let _hold = hold();
        self.inner.clear().await
    }
}

/// Wait until `f` gives `Some`, polling every millisecond of (paused) time;
/// fails at `deadline` of paused time. Store calls take no paused time, so
/// the deadline only passes when the code under test is truly stuck.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
