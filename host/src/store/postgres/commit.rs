//! The state reads of the PostgreSQL store and its steps of the shared group
//! commit and maintenance sequences (`store/commit.rs`,
//! `store/maintenance.rs`): every step is one set-based statement (`unnest`
//! of parallel arrays, `= ANY(array)`) whatever the batch size, all inside
//! one transaction. The inbox insert is shared with `insert_incoming`.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use super::schema::{Names, Statements};
use super::{PostgresStore, q};
use crate::store::commit::{CommitSteps, DeadLetterRow, StateKey, Versions, report_of};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::StateReader;
use crate::store::maintenance::{MaintenanceSteps, NodeSweep, Table};
use crate::store::rows::{
    FencedRow, Held, InsertReport, NewIncoming, NewOutgoing, RetryMark, StateValue, StateWrite,
};
use crate::store::shared::{self, run};

const OP: &str = "commit batch";

/// One write transaction.
pub(crate) struct PgTx {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) names: Arc<Names>,
    pub(super) sql: Arc<Statements>,
}

/// One column of a batch, as an array to bind.
fn col<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

/// Insert incoming rows with one statement; an id already present (or
/// earlier in `rows`) is skipped and reported as a duplicate.
pub(super) async fn insert_incoming(
    conn: &mut PgConnection,
    sql: &Statements,
    rows: &[NewIncoming],
    op: &'static str,
) -> StoreResult<InsertReport> {
    if rows.is_empty() {
        return Ok(InsertReport::default());
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql.insert_incoming.clone()))
        .bind(col(rows, |r| r.id))
        .bind(col(rows, |r| r.owner_id))
        .bind(col(rows, |r| r.execute_at))
        .bind(col(rows, |r| i64::from(r.attempts)))
        .bind(col(rows, |r| r.message_type.as_str()))
        .bind(col(rows, |r| r.destination.as_str()))
        .bind(col(rows, |r| r.body.as_slice()))
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::db(op))?;
    Ok(report_of(
        rows,
        inserted.into_iter().collect::<HashSet<_>>(),
    ))
}

/// Rows a `RETURNING plugin, key` gave back.
fn returned(rows: &[PgRow]) -> u64 {
    u64::try_from(rows.len()).unwrap_or(u64::MAX)
}

impl PgTx {
    async fn run_text(&mut self, sql: &Arc<str>, op: &'static str) -> StoreResult<u64> {
        let query = q(sql);
        run(&mut *self.tx, query, op).await
    }
}

#[async_trait]
impl CommitSteps for PgTx {
    async fn lock_claimed(&mut self, ids: &[Uuid]) -> StoreResult<Vec<FencedRow>> {
        let rows = q(&self.sql.lock_claimed)
            .bind(ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(StoreError::db("fence claimed rows"))?;
        shared::fenced_rows(&rows)
    }

    /// Locks the rows of every key, in one global (byte-wise) order.
    async fn lock_versions(&mut self, keys: &[StateKey<'_>]) -> StoreResult<Versions> {
        let locked = q(&self.sql.state_lock)
            .bind(col(keys, |k| k.0))
            .bind(col(keys, |k| k.1))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(StoreError::db(OP))?;
        let mut versions = Versions::with_capacity(locked.len());
        for r in &locked {
            let plugin: String = r.try_get(0).map_err(StoreError::db(OP))?;
            let key: String = r.try_get(1).map_err(StoreError::db(OP))?;
            versions.insert((plugin, key), r.try_get(2).map_err(StoreError::db(OP))?);
        }
        Ok(versions)
    }

    async fn upsert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let query = q(&self.sql.state_upsert)
            .bind(col(writes, |w| w.plugin.as_str()))
            .bind(col(writes, |w| w.key.as_str()))
            .bind(col(writes, |w| w.value.as_deref().unwrap_or_default()));
        run(&mut *self.tx, query, OP).await
    }

    async fn insert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let rows = q(&self.sql.state_insert_new)
            .bind(col(writes, |w| w.plugin.as_str()))
            .bind(col(writes, |w| w.key.as_str()))
            .bind(col(writes, |w| w.value.as_deref().unwrap_or_default()))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(StoreError::db(OP))?;
        Ok(returned(&rows))
    }

    async fn update_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        let rows = q(&self.sql.state_update_checked)
            .bind(col(writes, |w| w.plugin.as_str()))
            .bind(col(writes, |w| w.key.as_str()))
            .bind(col(writes, |w| w.value.as_deref().unwrap_or_default()))
            .bind(col(writes, |w| w.expected_version.unwrap_or(0)))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(StoreError::db(OP))?;
        Ok(returned(&rows))
    }

    async fn delete_states(&mut self, writes: &[&StateWrite], checked: bool) -> StoreResult<u64> {
        let plugins = col(writes, |w| w.plugin.as_str());
        let keys = col(writes, |w| w.key.as_str());
        if checked {
            let rows = q(&self.sql.state_delete_checked)
                .bind(plugins)
                .bind(keys)
                .bind(col(writes, |w| w.expected_version.unwrap_or(0)))
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::db(OP))?;
            Ok(returned(&rows))
        } else {
            let query = q(&self.sql.state_delete).bind(plugins).bind(keys);
            run(&mut *self.tx, query, OP).await
        }
    }

    async fn insert_incoming(&mut self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        insert_incoming(&mut self.tx, &self.sql, rows, OP).await
    }

    async fn mark_handled(&mut self, keep_until: i64, ids: &[Uuid]) -> StoreResult<u64> {
        let query = q(&self.sql.mark_handled).bind(keep_until).bind(ids);
        run(&mut *self.tx, query, "mark handled").await
    }

    async fn mark_held(
        &mut self,
        node_id: i64,
        keep_until: i64,
        rows: &[Held],
    ) -> StoreResult<u64> {
        let query = q(&self.sql.mark_held)
            .bind(node_id)
            .bind(keep_until)
            .bind(col(rows, |h| h.id))
            .bind(col(rows, |h| i64::from(h.claim)));
        run(&mut *self.tx, query, "fence and mark handled").await
    }

    async fn insert_outgoing(&mut self, rows: &[NewOutgoing]) -> StoreResult<u64> {
        let query = q(&self.sql.insert_outgoing)
            .bind(col(rows, |r| r.id))
            .bind(col(rows, |r| r.owner_id))
            .bind(col(rows, |r| r.destination.as_str()))
            .bind(col(rows, |r| r.deliver_by))
            .bind(col(rows, |r| i64::from(r.attempts)))
            .bind(col(rows, |r| r.message_type.as_str()))
            .bind(col(rows, |r| r.body.as_slice()));
        run(&mut *self.tx, query, "insert outgoing").await
    }

    /// One `UPDATE … FROM unnest`.
    async fn retry(&mut self, marks: &[&RetryMark]) -> StoreResult<u64> {
        let query = q(&self.sql.retry)
            .bind(col(marks, |r| r.id))
            .bind(col(marks, |r| i64::from(r.attempts)))
            .bind(col(marks, |r| r.execute_at));
        run(&mut *self.tx, query, OP).await
    }

    async fn delete_incoming(&mut self, ids: &[Uuid]) -> StoreResult<u64> {
        let query = q(&self.sql.delete_incoming).bind(ids);
        run(&mut *self.tx, query, OP).await
    }

    async fn upsert_dead_letters(&mut self, rows: &[DeadLetterRow<'_>]) -> StoreResult<u64> {
        let query = q(&self.sql.insert_dead)
            .bind(col(rows, |d| d.first.id))
            .bind(col(rows, |d| d.first.message_type.as_str()))
            .bind(col(rows, |d| d.first.received_at.as_str()))
            .bind(col(rows, |d| d.first.source.as_deref()))
            .bind(col(rows, |d| d.last.error_kind.as_str()))
            .bind(col(rows, |d| d.last.error_message.as_str()))
            .bind(col(rows, |d| d.last.failed_at))
            .bind(col(rows, |d| i64::from(d.last.attempts)))
            .bind(col(rows, |d| d.first.replayable))
            .bind(col(rows, |d| d.last.body.as_slice()));
        run(&mut *self.tx, query, OP).await
    }

    async fn finish(self) -> StoreResult<()> {
        self.tx.commit().await.map_err(StoreError::db(OP))
    }
}

#[async_trait]
impl MaintenanceSteps for PgTx {
    async fn release_orphans(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        // Rows can also belong to nodes that never registered or were removed:
        // anything not owned by a live node is orphaned.
        let mut released = 0;
        for stmt in &self.sql.release_orphans {
            released += q(stmt)
                .bind(sweep.self_id)
                .bind(sweep.stale_before)
                .execute(&mut *self.tx)
                .await
                .map_err(StoreError::db("release dead nodes"))?
                .rows_affected();
        }
        Ok(released)
    }

    async fn forget_dead_nodes(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        let query = q(&self.sql.forget_dead_nodes)
            .bind(sweep.self_id)
            .bind(sweep.stale_before);
        run(&mut *self.tx, query, "release dead nodes").await
    }

    async fn release_owned(&mut self, table: Table) -> StoreResult<u64> {
        let sql: Arc<str> = format!(
            "UPDATE {} SET owner_id = 0 WHERE owner_id <> 0",
            self.names.of(table)
        )
        .into();
        self.run_text(&sql, "release owned rows").await
    }

    async fn delete_all(&mut self, table: Table) -> StoreResult<u64> {
        let sql: Arc<str> = format!("DELETE FROM {}", self.names.of(table)).into();
        self.run_text(&sql, "clear messages").await
    }
}

#[async_trait]
impl StateReader for PostgresStore {
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let query = q(&self.sql.read_state).bind(plugin).bind(key);
        shared::state_value(shared::fetch_optional(&self.pool, query, "read state").await?)
    }
}
