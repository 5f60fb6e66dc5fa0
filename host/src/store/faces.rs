//! The faces of the message store, one per kind of caller, as Wolverine's
//! message store splits its own: the inbox (listeners, `send`, the worker's
//! claims, the cleanup), the group commit and the state reads (the worker),
//! the outbox (the sending agents and the relay), dead letters, state listing
//! and admin (the CLI), nodes (durability). [`MessageStore`] is all of them at once: what a
//! backend implements and what [`super::open`] returns; a caller that needs
//! one face holds that face (`Arc<dyn MessageStore>` upcasts to `Arc<dyn Outbox>`).
//!
//! Every method is one transaction or less.

use std::fmt::Debug;

use async_trait::async_trait;
use uuid::Uuid;

use super::error::StoreResult;
use super::rows::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, InsertReport, NewIncoming, OutgoingRow, Selection,
    StateEntry, StateValue,
};

/// Messages to handle here: written by receivers, claimed by the worker,
/// deleted by the cleanup once handled and kept long enough.
#[async_trait]
pub trait Inbox: Send + Sync + Debug {
    /// Insert new incoming rows in one transaction; an id already present is skipped.
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport>;
    /// Claim up to `limit` rows that any node may take and that are due, for `node_id`.
    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>>;
    /// Hand back every inbox row `node_id` holds claimed, for a worker that
    /// holds none in hand: the rows of a claim whose answer never came
    /// (timed out, connection lost). Returns rows released.
    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64>;
    /// The earliest `execute_at` of a scheduled row anyone may claim.
    async fn next_scheduled(&self) -> StoreResult<Option<i64>>;
    /// Delete up to `limit` handled rows whose keep window ended; returns how many.
    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64>;
}

/// The outcome of a batch, made durable at once.
#[async_trait]
pub trait GroupCommit: Send + Sync + Debug {
    /// Make a batch's outcome durable in one transaction. A stale state
    /// version fails the whole commit with [`super::StoreError::StaleState`].
    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()>;
}

/// Committed handler state, read by a handler's state view.
#[async_trait]
pub trait StateReader: Send + Sync + Debug {
    /// Committed state of one key.
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>>;
}

/// Committed handler state as an operator browses it (`state list`): apart
/// from [`StateReader`], which a handler's state view holds and which needs
/// no listing.
#[async_trait]
pub trait StateListing: Send + Sync + Debug {
    /// Up to `limit` keys of `plugin` that start with `prefix` (taken
    /// literally: no character is a wildcard; `""` matches every key), in
    /// key order (byte-wise, on every backend).
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>>;
}

/// Messages for remote destinations, written by the group commit, taken by
/// the sending agents and deleted once the peer confirmed them.
#[async_trait]
pub trait Outbox: Send + Sync + Debug {
    /// Take up to `limit` outgoing rows that any node may send (owner 0) for
    /// `node_id`, oldest first.
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>>;
    /// Delete outgoing rows (the peer confirmed them, or they expired); returns how many.
    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64>;
}

/// Messages that failed for good, for an operator to look at, replay or purge.
#[async_trait]
pub trait DeadLetters: Send + Sync + Debug {
    /// Up to `limit` dead letters, oldest failure first.
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// The dead letter with this id, if there is one.
    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>>;
    /// Move the selected replayable dead letters back to the inbox as fresh
    /// attempts (an id still in the inbox wins); returns how many went in.
    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64>;
    /// Delete the selected dead letters; returns how many.
    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64>;
}

/// The nodes sharing the store, and the rows they own.
#[async_trait]
pub trait Nodes: Send + Sync + Debug {
    /// Register this node (a new id per process start).
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()>;
    /// Renew this node's lease. Returns false when its registry row is gone
    /// (another node judged it dead and released its rows).
    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool>;
    async fn remove_node(&self, node_id: i64) -> StoreResult<()>;
    /// Release the rows of every other node whose heartbeat is older than
    /// `stale_before`, and of owners that are no live node; forget the dead
    /// nodes. Never by name: two live hosts may share one. Returns rows released.
    async fn release_dead_nodes(&self, self_id: i64, stale_before: i64) -> StoreResult<u64>;
    /// Hand every owned row back to any node (owner 0); returns rows released.
    async fn release_all(&self) -> StoreResult<u64>;
    /// Leave the store on a clean stop: forget this node, then hand back
    /// (owner 0) every row it still owns, so another host takes them at once
    /// instead of after `stale_after_ms`. Rows of other owners that are no
    /// live node go back too. Returns rows released.
    async fn leave(&self, node_id: i64) -> StoreResult<u64> {
        self.remove_node(node_id).await?;
        // With its registry row gone, this node's rows are owned by no live
        // node; `stale_before` 0 judges no live node dead.
        self.release_dead_nodes(node_id, 0).await
    }
}

/// The schema and the operator's whole-store commands.
#[async_trait]
pub trait Admin: Send + Sync + Debug {
    /// Create every table and index that is missing (idempotent).
    async fn migrate(&self) -> StoreResult<()>;
    /// Drop and recreate every message-store object.
    async fn rebuild(&self) -> StoreResult<()>;
    /// Drop every message-store object (and, on PostgreSQL, the schema if it
    /// is empty afterwards). For tests that must leave nothing behind.
    async fn drop_all(&self) -> StoreResult<()>;
    /// Fail with [`super::StoreError::MissingSchema`] when the tables are not there.
    async fn check_schema(&self) -> StoreResult<()>;
    /// The DDL that `migrate` runs, as one script.
    fn schema_script(&self) -> String;
    /// Row counts per kind.
    async fn counts(&self) -> StoreResult<Counts>;
    /// Outgoing rows per destination, busiest first (`queue_depth` per peer).
    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Delete every persisted message of every kind; keep schema and state.
    async fn clear(&self) -> StoreResult<()>;
}

/// The whole message store: every face. One implementation per backend (by
/// implementing the faces; this trait comes with them).
pub trait MessageStore:
    Inbox + GroupCommit + StateReader + StateListing + Outbox + DeadLetters + Nodes + Admin
{
}

impl<T> MessageStore for T where
    T: Inbox + GroupCommit + StateReader + StateListing + Outbox + DeadLetters + Nodes + Admin
{
}
