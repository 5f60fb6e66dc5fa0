//! The message store: the narrow faces the host needs from its database (inbox,
//! scheduled, handled marks, dead letters, handler state, nodes, admin) and the
//! backend chosen by the `[storage] url` scheme. Owns no policy: what to retry
//! or dead-letter is decided in `handling`; the store only makes it durable.

mod mysql;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::config::{Backend, StorageConfig};

pub use sqlite::SqliteStore;

/// Status of a row in the incoming table.
pub const STATUS_INCOMING: &str = "incoming";
pub const STATUS_SCHEDULED: &str = "scheduled";
pub const STATUS_HANDLED: &str = "handled";

/// Errors of the message store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the message store at {target}")]
    Open {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the message store has no tables yet in {target}; run `jasper-host storage rebuild --config FILE` or start the host once"
    )]
    MissingSchema { target: String },
    #[error("the {backend} backend is not available yet (storage.url = {url})")]
    Unsupported { backend: &'static str, url: String },
    #[error("state {plugin}/{key} changed since it was read (expected version {expected})")]
    StaleState {
        plugin: String,
        key: String,
        expected: i64,
    },
    #[error("database error during {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { operation, source }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A new row for the incoming table.
#[derive(Debug, Clone)]
pub struct NewIncoming {
    pub id: Uuid,
    pub message_type: String,
    /// Where it is to be handled, e.g. `local://audit`.
    pub destination: String,
    /// Owner node; 0 lets any node claim it.
    pub owner_id: i64,
    /// `Some(t)`: scheduled, to run at `t` (ms).
    pub execute_at: Option<i64>,
    pub attempts: u32,
    /// The encoded envelope.
    pub body: Vec<u8>,
}

impl NewIncoming {
    /// The status the row starts in: scheduled when it has a time to run at.
    pub fn status(&self) -> &'static str {
        if self.execute_at.is_some() {
            STATUS_SCHEDULED
        } else {
            STATUS_INCOMING
        }
    }
}

/// A new row for the outgoing table: a message for a remote destination,
/// written in the handler's transaction and deleted once the peer confirms.
#[derive(Debug, Clone)]
pub struct NewOutgoing {
    pub id: Uuid,
    pub destination: String,
    pub deliver_by: Option<i64>,
    pub attempts: u32,
    pub message_type: String,
    /// The node that will send it; 0 lets any node take it.
    pub owner_id: i64,
    /// The encoded envelope.
    pub body: Vec<u8>,
}

/// An outgoing row taken for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRow {
    pub id: Uuid,
    pub destination: String,
    pub deliver_by: Option<i64>,
    pub attempts: u32,
    pub body: Vec<u8>,
}

/// What `insert_incoming` did.
#[derive(Debug, Default, Clone)]
pub struct InsertReport {
    pub inserted: usize,
    /// Ids already present (the inbox dedupes by id).
    pub duplicates: Vec<Uuid>,
}

/// A row claimed by this node for handling.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: Uuid,
    pub attempts: u32,
    pub destination: String,
    pub body: Vec<u8>,
}

/// A committed state value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateValue {
    pub value: Vec<u8>,
    pub version: i64,
}

/// A state change in a group commit.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub plugin: String,
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// The version the batch read (0: absent); `None`: a blind write.
    pub expected_version: Option<i64>,
}

/// A state key read but not written by a batch: its version is checked at commit.
#[derive(Debug, Clone)]
pub struct StateCheck {
    pub plugin: String,
    pub key: String,
    pub expected_version: i64,
}

/// A failed attempt that will be tried again.
#[derive(Debug, Clone)]
pub struct RetryMark {
    pub id: Uuid,
    pub attempts: u32,
    /// `None`: right away; `Some(t)`: scheduled for `t`.
    pub execute_at: Option<i64>,
}

/// A message moved to dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub message_type: String,
    pub received_at: String,
    pub source: Option<String>,
    pub error_kind: String,
    pub error_message: String,
    pub failed_at: i64,
    pub attempts: u32,
    pub replayable: bool,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Everything one batch of handled messages makes durable, in one transaction.
#[derive(Debug, Default, Clone)]
pub struct CommitBatch {
    /// Incoming ids to mark handled, kept until the given time (ms).
    pub handled: Vec<(Uuid, i64)>,
    pub new_incoming: Vec<NewIncoming>,
    /// Messages for remote destinations (inserted; an existing id is kept).
    pub outgoing: Vec<NewOutgoing>,
    pub state_writes: Vec<StateWrite>,
    pub state_checks: Vec<StateCheck>,
    pub retries: Vec<RetryMark>,
    pub dead_letters: Vec<DeadLetter>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.handled.is_empty()
            && self.new_incoming.is_empty()
            && self.outgoing.is_empty()
            && self.state_writes.is_empty()
            && self.retries.is_empty()
            && self.dead_letters.is_empty()
    }
}

/// Row counts per kind, for `storage counts`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub incoming: i64,
    pub scheduled: i64,
    pub handled: i64,
    pub outgoing: i64,
    pub dead_letters: i64,
}

/// The message store. One implementation per backend; every method is one
/// transaction or less.
#[async_trait]
pub trait MessageStore: Send + Sync + std::fmt::Debug {
    /// Create every table and index that is missing (idempotent).
    async fn migrate(&self) -> StoreResult<()>;
    /// Drop and recreate every message-store object.
    async fn rebuild(&self) -> StoreResult<()>;
    /// Drop every message-store object (and, on PostgreSQL, the schema if it
    /// is empty afterwards). For tests that must leave nothing behind.
    async fn drop_all(&self) -> StoreResult<()>;
    /// Fail with [`StoreError::MissingSchema`] when the tables are not there.
    async fn check_schema(&self) -> StoreResult<()>;
    /// The DDL that `migrate` runs, as one script.
    fn schema_script(&self) -> String;

    /// Insert new incoming rows in one transaction; an id already present is skipped.
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport>;
    /// Claim up to `limit` rows that any node may take and that are due, for `node_id`.
    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>>;
    /// The earliest `execute_at` of a scheduled row anyone may claim.
    async fn next_scheduled(&self) -> StoreResult<Option<i64>>;
    /// Committed state of one key.
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>>;
    /// Make a batch's outcome durable in one transaction. A stale state
    /// version fails the whole commit with [`StoreError::StaleState`].
    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()>;
    /// Take up to `limit` outgoing rows that any node may send (owner 0) for
    /// `node_id`, oldest first.
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>>;
    /// Delete outgoing rows (the peer confirmed them, or they expired); returns how many.
    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64>;
    /// Delete up to `limit` handled rows whose keep window ended; returns how many.
    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64>;

    /// Register this node (a new id per process start).
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()>;
    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<()>;
    async fn remove_node(&self, node_id: i64) -> StoreResult<()>;
    /// Release the rows of every other node whose heartbeat is older than
    /// `stale_before` or (at start-up) that carries `same_name` (an earlier run
    /// of this node), and of owners that are no live node; forget the dead
    /// nodes. Returns rows released.
    async fn release_dead_nodes(
        &self,
        self_id: i64,
        same_name: Option<&str>,
        stale_before: i64,
    ) -> StoreResult<u64>;
    /// Hand every owned row back to any node (owner 0); returns rows released.
    async fn release_all(&self) -> StoreResult<u64>;

    async fn counts(&self) -> StoreResult<Counts>;
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// Move dead letters back to the inbox (all when `ids` is empty); returns how many.
    async fn replay_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64>;
    async fn purge_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64>;
    /// Delete every persisted message of every kind; keep schema and state.
    async fn clear(&self) -> StoreResult<()>;
}

/// Open the store the configuration names. Does not create tables.
pub async fn open(config: &StorageConfig) -> StoreResult<Arc<dyn MessageStore>> {
    match &config.backend {
        Backend::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path, &config.schema).await?)),
        Backend::Postgres { url } => postgres::open(url, &config.schema).await,
        Backend::Mysql { url } => mysql::open(url, &config.schema).await,
    }
}
