//! The message store: the narrow faces the host needs from its database
//! (`faces`: inbox, group commit, state, state listing, outbox, dead letters,
//! nodes, admin), the rows they carry (`rows`), and the backend chosen by the
//! `[storage] url` scheme (`sqlite/`, `postgres/`, `mysql/`, each laid out the
//! same way). The group commit and the maintenance sequences are written once
//! (`commit`, `maintenance`) over per-backend steps; `shared` holds the
//! helpers every backend uses; `reach` is the start-up's first contact, retried
//! while the database is not up yet. Owns no policy: what to retry or dead-letter is decided in
//! `handling`; the store only makes it durable.

mod commit;
mod dead_letter;
mod error;
mod faces;
mod maintenance;
mod mysql;
mod postgres;
mod reach;
mod rows;
mod shared;
mod sqlite;
mod timed;

use std::sync::Arc;

use crate::config::{Backend, StorageConfig};

pub(crate) use dead_letter::{DeadLetterCause, DeadLetterKind};
pub use error::{StoreError, StoreResult};
pub use faces::{
    Admin, DeadLetters, GroupCommit, Inbox, MessageStore, Nodes, Outbox, StateListing, StateReader,
};
pub(crate) use reach::open_and_migrate;
pub use rows::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, Fence, FencedRow, Held, InsertReport, NewIncoming,
    NewOutgoing, OutgoingRow, RetryMark, STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED,
    Selection, StateCheck, StateEntry, StateValue, StateWrite,
};
pub(crate) use sqlite::SqliteStore;
pub(crate) use timed::Timed;

/// [`open`], every call of the store after that bounded by `timeout` (see [`Timed`]).
pub(crate) async fn open_timed(
    config: &StorageConfig,
    timeout: std::time::Duration,
) -> StoreResult<Arc<dyn MessageStore>> {
    Ok(Arc::new(Timed::new(open(config).await?, timeout)))
}

/// Open the store the configuration names. Does not create tables.
pub async fn open(config: &StorageConfig) -> StoreResult<Arc<dyn MessageStore>> {
    match &config.backend {
        Backend::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path, &config.schema).await?)),
        Backend::Postgres { url } => postgres::open(url, &config.schema).await,
        Backend::Mysql { url } => mysql::open(url, &config.schema).await,
    }
}
