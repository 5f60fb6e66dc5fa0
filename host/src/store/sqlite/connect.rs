//! Opening the SQLite file (WAL, `synchronous=FULL`, a busy timeout) and the
//! write transaction every writer of this process queues for.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::SqliteStore;
use super::commit::SqliteTx;
use crate::store::error::{StoreError, StoreResult};

/// A pool on the database at `path` (created if missing; its folder must exist).
pub(super) async fn pool(path: &Path, target: &str) -> StoreResult<SqlitePool> {
    let open_err = |source| StoreError::Open {
        target: target.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        return Err(open_err(sqlx::Error::Configuration(
            format!("folder {} does not exist", dir.display()).into(),
        )));
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(open_err)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("temp_store", "memory")
        // 64 MiB of page cache per connection: the inbox's hot pages stay in memory.
        .pragma("cache_size", "-65536");
    SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options)
        .await
        .map_err(open_err)
}

impl SqliteStore {
    /// A write transaction. Writers of this process queue on an in-process
    /// lock first: SQLite's busy handler sleeps in growing steps (up to
    /// 100 ms) when two connections want the write lock, which showed as
    /// latency spikes when the worker, the listeners and the senders wrote at
    /// once. Other processes still queue on the busy timeout.
    pub(super) async fn begin(&self) -> StoreResult<SqliteTx> {
        let writer = self.writer.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin transaction"))?;
        Ok(SqliteTx {
            _writer: writer,
            tx,
            tables: self.tables.clone(),
            sql: self.sql.clone(),
        })
    }
}
