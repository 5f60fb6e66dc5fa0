//! A store whose every call has a deadline: [`Timed`] wraps any
//! [`MessageStore`] and turns a call that outlasts `durability.store_timeout_ms`
//! into [`StoreError::Timeout`], which its callers retry with backoff. A hung
//! database (a black-holed connection, a stuck server) so stalls no worker,
//! heartbeat or listener for good; dropping the call drops its connection,
//! and the server ends a transaction left open that way. Schema and admin
//! calls have no deadline (a migration may wait for another host's DDL lock).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::error::{StoreError, StoreResult};
use super::faces::{
    Admin, DeadLetters, GroupCommit, Inbox, MessageStore, Nodes, Outbox, StateListing, StateReader,
};
use super::rows::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, InsertReport, NewIncoming, OutgoingRow, Selection,
    StateEntry, StateValue,
};

/// How long a call past its deadline may still finish.
const GRACE: Duration = Duration::from_millis(100);

/// `inner` with a deadline on every message, node and dead-letter call.
#[derive(Debug)]
pub(crate) struct Timed {
    inner: Arc<dyn MessageStore>,
    after: Duration,
}

impl Timed {
    pub(crate) fn new(inner: Arc<dyn MessageStore>, after: Duration) -> Self {
        Timed { inner, after }
    }

    async fn within<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let mut call = std::pin::pin!(call);
        if let Ok(result) = tokio::time::timeout(self.after, call.as_mut()).await {
            return result;
        }
        // A process that was paused (SIGSTOP, a VM freeze) wakes with the
        // deadline passed and the answer perhaps waiting in the socket,
        // unread: the call gets one more short look before it counts as
        // timed out (a claim that did commit is then not handed back).
        match tokio::time::timeout(GRACE, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                operation,
                after_ms: u64::try_from(self.after.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

#[async_trait]
impl Inbox for Timed {
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        self.within("insert incoming", self.inner.insert_incoming(rows))
            .await
    }
    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        self.within(
            "claim incoming",
            self.inner.claim_incoming(node_id, now, limit),
        )
        .await
    }
    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64> {
        self.within("release claimed rows", self.inner.release_claimed(node_id))
            .await
    }
    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        self.within("next scheduled", self.inner.next_scheduled())
            .await
    }
    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        self.within(
            "delete expired handled",
            self.inner.delete_expired_handled(now, limit),
        )
        .await
    }
}

#[async_trait]
impl GroupCommit for Timed {
    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        self.within("commit batch", self.inner.commit(batch)).await
    }
}

#[async_trait]
impl StateReader for Timed {
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        self.within("read state", self.inner.read_state(plugin, key))
            .await
    }
}

#[async_trait]
impl StateListing for Timed {
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>> {
        self.within("list state", self.inner.list_state(plugin, prefix, limit))
            .await
    }
}

#[async_trait]
impl Outbox for Timed {
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        self.within("claim outgoing", self.inner.claim_outgoing(node_id, limit))
            .await
    }
    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        self.within("delete outgoing", self.inner.delete_outgoing(ids))
            .await
    }
}

#[async_trait]
impl DeadLetters for Timed {
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        self.within("list dead letters", self.inner.dead_letters(limit))
            .await
    }
    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        self.within("show dead letter", self.inner.dead_letter(id))
            .await
    }
    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        self.within("replay dead letters", self.inner.replay_dead_letters(which))
            .await
    }
    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        self.within("purge dead letters", self.inner.purge_dead_letters(which))
            .await
    }
}

#[async_trait]
impl Nodes for Timed {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        self.within(
            "register node",
            self.inner.register_node(node_id, name, now),
        )
        .await
    }
    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        self.within("heartbeat", self.inner.heartbeat(node_id, now))
            .await
    }
    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        self.within("remove node", self.inner.remove_node(node_id))
            .await
    }
    async fn release_dead_nodes(&self, self_id: i64, stale_before: i64) -> StoreResult<u64> {
        self.within(
            "release dead nodes",
            self.inner.release_dead_nodes(self_id, stale_before),
        )
        .await
    }
    async fn release_all(&self) -> StoreResult<u64> {
        self.within("release owned rows", self.inner.release_all())
            .await
    }
}

#[async_trait]
impl Admin for Timed {
    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await
    }
    async fn rebuild(&self) -> StoreResult<()> {
        self.inner.rebuild().await
    }
    async fn drop_all(&self) -> StoreResult<()> {
        self.inner.drop_all().await
    }
    async fn check_schema(&self) -> StoreResult<()> {
        self.inner.check_schema().await
    }
    fn schema_script(&self) -> String {
        self.inner.schema_script()
    }
    async fn counts(&self) -> StoreResult<Counts> {
        self.inner.counts().await
    }
    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>> {
        self.inner.outgoing_by_destination().await
    }
    async fn clear(&self) -> StoreResult<()> {
        self.inner.clear().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migrated SQLite store in a temp dir (kept alive by the caller)
    /// behind a deadline of `after_ms`.
    async fn timed_sqlite(after_ms: u64) -> (Timed, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let inner = crate::store::SqliteStore::open(&dir.path().join("t.db"), "jasper")
            .await
            .unwrap();
        inner.migrate().await.unwrap();
        (
            Timed::new(Arc::new(inner), Duration::from_millis(after_ms)),
            dir,
        )
    }

    #[tokio::test]
    async fn a_call_that_hangs_times_out_and_names_itself() {
        let (timed, _dir) = timed_sqlite(50).await;
        let hung = std::future::pending::<StoreResult<()>>();
        let err = timed.within("commit batch", hung).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Timeout {
                    operation: "commit batch",
                    after_ms: 50
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("durability.store_timeout_ms"));
        // A call that answers in time passes through.
        assert!(timed.claim_incoming(1, 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_just_past_the_deadline_is_taken() {
        let (timed, _dir) = timed_sqlite(50).await;
        // As a process paused past the deadline sees it: the answer is there
        // by the time the timer is looked at.
        let late = async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok(7)
        };
        assert_eq!(timed.within("claim incoming", late).await.unwrap(), 7);
    }
}
