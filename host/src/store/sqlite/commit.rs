//! The state reads of the SQLite store and its steps of the shared group
//! commit and maintenance sequences (`store/commit.rs`,
//! `store/maintenance.rs`): statement by statement inside one
//! `BEGIN IMMEDIATE` transaction, which holds the database's write lock, so
//! the versions read are the versions written over.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::SqliteArguments;
use sqlx::{AssertSqlSafe, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::schema::{Sql, Tables};
use super::{SqliteStore, q};
use crate::store::commit::{CommitSteps, DeadLetterRow, StateKey, Versions, by_claim, report_of};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::StateReader;
use crate::store::maintenance::{MaintenanceSteps, NodeSweep, Table};
use crate::store::rows::{
    FencedRow, Held, InsertReport, NewIncoming, NewOutgoing, RetryMark, STATUS_HANDLED,
    STATUS_INCOMING, StateValue, StateWrite,
};
use crate::store::shared::{self, CHUNK, incoming_values, inline_ids, outgoing_values, run};

const OP: &str = "commit batch";

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// A write transaction of this process (see `SqliteStore::begin`).
pub(crate) struct SqliteTx {
    pub(super) _writer: tokio::sync::OwnedMutexGuard<()>,
    pub(super) tx: Transaction<'static, Sqlite>,
    pub(super) tables: Arc<Tables>,
    pub(super) sql: Arc<Sql>,
}

impl SqliteTx {
    /// Run `sql` as is; returns rows affected.
    pub(super) async fn exec(&mut self, sql: String, op: &'static str) -> StoreResult<u64> {
        run(&mut *self.tx, sqlx::query(AssertSqlSafe(sql)), op).await
    }

    /// One statement per item, `query` binding it; returns the rows affected in all.
    async fn each<T: Sync>(
        &mut self,
        items: &[T],
        query: impl Fn(&Sql, &T) -> Query + Send + Sync,
        op: &'static str,
    ) -> StoreResult<u64> {
        let sql = self.sql.clone();
        let mut n = 0;
        for item in items {
            n += run(&mut *self.tx, query(&sql, item), op).await?;
        }
        Ok(n)
    }
}

/// `query` with a write's plugin, key and value bound (`?1`, `?2`, `?3`).
fn with_value(query: Query, w: &StateWrite) -> Query {
    query
        .bind(w.plugin.as_str())
        .bind(w.key.as_str())
        .bind(w.value.as_deref().unwrap_or_default())
}

#[async_trait]
impl CommitSteps for SqliteTx {
    /// The write lock `BEGIN IMMEDIATE` took covers the rows read.
    async fn lock_claimed(&mut self, ids: &[Uuid]) -> StoreResult<Vec<FencedRow>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, owner_id, attempts, status FROM {} WHERE id IN ({})",
                self.tables.incoming,
                inline_ids(chunk)
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::db("fence claimed rows"))?;
            found.extend(shared::fenced_rows(&rows)?);
        }
        Ok(found)
    }

    async fn lock_versions(&mut self, keys: &[StateKey<'_>]) -> StoreResult<Versions> {
        let mut out = Versions::with_capacity(keys.len());
        for (plugin, key) in keys {
            let v: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.state_version.clone()))
                .bind(plugin)
                .bind(key)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(StoreError::db(OP))?;
            if let Some(v) = v {
                out.insert(((*plugin).to_owned(), (*key).to_owned()), v);
            }
        }
        Ok(out)
    }

    async fn upsert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let upsert = |sql: &Sql, w: &&StateWrite| with_value(q(&sql.state_upsert), w);
        self.each(writes, upsert, OP).await
    }

    async fn insert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let insert = |sql: &Sql, w: &&StateWrite| with_value(q(&sql.state_insert_new), w);
        self.each(writes, insert, OP).await
    }

    async fn update_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let update = |sql: &Sql, w: &&StateWrite| {
            with_value(q(&sql.state_update_checked), w).bind(w.expected_version.unwrap_or(0))
        };
        self.each(writes, update, OP).await
    }

    async fn delete_states(&mut self, writes: &[&StateWrite], checked: bool) -> StoreResult<u64> {
        let delete = move |sql: &Sql, w: &&StateWrite| {
            if checked {
                q(&sql.state_delete_checked)
                    .bind(&w.plugin)
                    .bind(&w.key)
                    .bind(w.expected_version.unwrap_or(0))
            } else {
                q(&sql.state_delete).bind(&w.plugin).bind(&w.key)
            }
        };
        self.each(writes, delete, OP).await
    }

    /// Multi-row statements with `RETURNING id`.
    async fn insert_incoming(&mut self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        let mut report = InsertReport::default();
        for chunk in rows.chunks(CHUNK) {
            let mut qb = incoming_values::<Sqlite>(&self.tables.incoming, chunk);
            qb.push(" ON CONFLICT(id) DO NOTHING RETURNING id");
            let inserted: Vec<Hyphenated> = qb
                .build_query_scalar()
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::db("insert incoming"))?;
            let inserted: HashSet<Uuid> = inserted.into_iter().map(Uuid::from).collect();
            let part = report_of(chunk, inserted);
            report.inserted += part.inserted;
            report.duplicates.extend(part.duplicates);
        }
        Ok(report)
    }

    async fn mark_handled(&mut self, keep_until: i64, ids: &[Uuid]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = ?1, owner_id = 0 WHERE id IN ({})",
                self.tables.incoming,
                inline_ids(chunk)
            );
            let query = sqlx::query(AssertSqlSafe(sql)).bind(keep_until);
            n += run(&mut *self.tx, query, "mark handled").await?;
        }
        Ok(n)
    }

    /// The write lock is held already: the fenced update is the fence.
    async fn mark_held(
        &mut self,
        node_id: i64,
        keep_until: i64,
        rows: &[Held],
    ) -> StoreResult<u64> {
        let mut n = 0;
        for (claim, ids) in by_claim(rows) {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = ?1, owner_id = 0 \
                     WHERE id IN ({}) AND owner_id = ?2 AND status = '{STATUS_INCOMING}' AND attempts = ?3",
                    self.tables.incoming,
                    inline_ids(chunk)
                );
                let query = sqlx::query(AssertSqlSafe(sql))
                    .bind(keep_until)
                    .bind(node_id)
                    .bind(i64::from(claim));
                n += run(&mut *self.tx, query, "fence and mark handled").await?;
            }
        }
        Ok(n)
    }

    async fn insert_outgoing(&mut self, rows: &[NewOutgoing]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in rows.chunks(CHUNK) {
            let mut qb = outgoing_values::<Sqlite>(&self.tables.outgoing, chunk);
            qb.push(" ON CONFLICT(id) DO NOTHING");
            n += run(&mut *self.tx, qb.build(), "insert outgoing").await?;
        }
        Ok(n)
    }

    async fn retry(&mut self, marks: &[&RetryMark]) -> StoreResult<u64> {
        let retry = |sql: &Sql, r: &&RetryMark| {
            q(&sql.retry)
                .bind(r.id.hyphenated())
                .bind(i64::from(r.attempts))
                .bind(r.execute_at)
        };
        self.each(marks, retry, OP).await
    }

    async fn delete_incoming(&mut self, ids: &[Uuid]) -> StoreResult<u64> {
        let delete = |sql: &Sql, id: &Uuid| q(&sql.delete_incoming).bind(id.hyphenated());
        self.each(ids, delete, OP).await
    }

    async fn upsert_dead_letters(&mut self, rows: &[DeadLetterRow<'_>]) -> StoreResult<u64> {
        let upsert = |sql: &Sql, DeadLetterRow { first, last }: &DeadLetterRow<'_>| {
            q(&sql.insert_dead)
                .bind(first.id.hyphenated())
                .bind(&first.message_type)
                .bind(&first.received_at)
                .bind(&first.source)
                .bind(last.error_kind.as_str())
                .bind(&last.error_message)
                .bind(last.failed_at)
                .bind(i64::from(last.attempts))
                .bind(first.replayable)
                .bind(&last.body)
        };
        self.each(rows, upsert, OP).await
    }

    async fn finish(self) -> StoreResult<()> {
        self.tx.commit().await.map_err(StoreError::db(OP))
    }
}

#[async_trait]
impl MaintenanceSteps for SqliteTx {
    /// Rows can also belong to nodes that never registered or were removed:
    /// anything not owned by a live node is orphaned.
    async fn release_orphans(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        let tables = self.tables.clone();
        let release = |_: &Sql, table: &&String| {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET owner_id = 0 WHERE owner_id <> 0 AND owner_id NOT IN \
                 (SELECT node_id FROM {} WHERE node_id = ?1 OR heartbeat_at >= ?2)",
                tables.nodes
            )))
            .bind(sweep.self_id)
            .bind(sweep.stale_before)
        };
        self.each(
            &[&tables.incoming, &tables.outgoing],
            release,
            "release dead nodes",
        )
        .await
    }

    async fn forget_dead_nodes(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE node_id <> ?1 AND heartbeat_at < ?2",
            self.tables.nodes
        )))
        .bind(sweep.self_id)
        .bind(sweep.stale_before);
        run(&mut *self.tx, query, "release dead nodes").await
    }

    async fn release_owned(&mut self, table: Table) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE {} SET owner_id = 0 WHERE owner_id <> 0",
            self.tables.of(table)
        );
        self.exec(sql, "release owned rows").await
    }

    async fn delete_all(&mut self, table: Table) -> StoreResult<u64> {
        let sql = format!("DELETE FROM {}", self.tables.of(table));
        self.exec(sql, "clear messages").await
    }
}

#[async_trait]
impl StateReader for SqliteStore {
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let query = q(&self.sql.read_state).bind(plugin).bind(key);
        shared::state_value(shared::fetch_optional(&self.pool, query, "read state").await?)
    }
}
