//! The inbox and the outbox of the MySQL/MariaDB store. Claims: `SELECT … FOR UPDATE SKIP LOCKED` of free rows, then one
//! `UPDATE … WHERE id IN (…)` handing them to the node, in one transaction.
//! Another node's claim skips the rows locked here instead of waiting.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::MysqlStore;
use super::commit::exec;
use crate::store::commit::{CommitSteps, Transactional, run_again};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::{Inbox, Outbox};
use crate::store::rows::{
    ClaimedRow, InsertReport, NewIncoming, OutgoingRow, STATUS_HANDLED, STATUS_INCOMING,
    STATUS_SCHEDULED,
};
use crate::store::shared::{
    CHUNK, Columns, claimed_in_order, db_count as limit, inline_ids, outgoing_in_order, run,
};

impl MysqlStore {
    async fn claim_incoming_once(
        &self,
        node_id: i64,
        now: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        let op = "claim incoming";
        if limit_rows == 0 {
            return Ok(Vec::new());
        }
        let inc = &self.t.incoming;
        // The attempt count as the claim leaves it (it counts this attempt).
        let cols = "SELECT id, attempts + 1, received_at, body FROM";
        let mut tx = self.pool.begin().await.map_err(StoreError::db(op))?;
        // Ready rows first in id (= time) order, then due scheduled rows.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{cols} {inc} WHERE status = '{STATUS_INCOMING}' AND owner_id = 0 \
             ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(limit(limit_rows))
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        // Of the ready rows claimed before without an outcome, only the
        // first (see `rows::ClaimedRow`); the others stay unclaimed.
        let mut resumed = false;
        let mut keep = Vec::with_capacity(rows.len());
        for row in rows {
            let earlier = row.int(1, op)? > 1;
            if !earlier || !std::mem::replace(&mut resumed, true) {
                keep.push(row);
            }
        }
        let mut rows = keep;
        if rows.len() < limit_rows {
            rows.extend(
                sqlx::query(AssertSqlSafe(format!(
                    "{cols} {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0 AND execute_at <= ? \
                     ORDER BY execute_at LIMIT ? FOR UPDATE SKIP LOCKED"
                )))
                .bind(now)
                .bind(limit(limit_rows - rows.len()))
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::db(op))?,
            );
        }
        if rows.is_empty() {
            tx.commit().await.map_err(StoreError::db(op))?;
            return Ok(Vec::new());
        }
        let out = claimed_in_order(&rows)?;
        let sql = format!(
            "UPDATE {inc} SET owner_id = {node_id}, status = '{STATUS_INCOMING}', attempts = attempts + 1 WHERE id IN ({})",
            inline_ids(out.iter().map(|r| &r.id))
        );
        exec(&mut tx, sql, op).await?;
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(out)
    }

    async fn claim_outgoing_once(
        &self,
        node_id: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<OutgoingRow>> {
        let op = "claim outgoing";
        if limit_rows == 0 {
            return Ok(Vec::new());
        }
        let out_table = &self.t.outgoing;
        let mut tx = self.pool.begin().await.map_err(StoreError::db(op))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, destination, deliver_by, attempts, body FROM {out_table} \
             WHERE owner_id = 0 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(limit(limit_rows))
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        let out = outgoing_in_order(&rows)?;
        if !out.is_empty() {
            let sql = format!(
                "UPDATE {out_table} SET owner_id = {node_id} WHERE id IN ({})",
                inline_ids(out.iter().map(|r| &r.id))
            );
            exec(&mut tx, sql, op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(out)
    }
}

#[async_trait]
impl Inbox for MysqlStore {
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        run_again(self, || async {
            let mut tx = self.begin_steps().await?;
            let report = tx.insert_incoming(rows).await?;
            tx.finish().await?;
            Ok(report)
        })
        .await
    }

    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        run_again(self, || self.claim_incoming_once(node_id, now, limit_rows)).await
    }

    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET owner_id = 0 WHERE owner_id = ? AND status = '{STATUS_INCOMING}'",
            self.t.incoming
        )))
        .bind(node_id);
        run(&self.pool, query, "release claimed rows").await
    }

    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(format!(
            "SELECT MIN(execute_at) FROM {} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0",
            self.t.incoming
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("next scheduled"))
    }

    async fn delete_expired_handled(&self, now: i64, limit_rows: usize) -> StoreResult<u64> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE status = '{STATUS_HANDLED}' AND keep_until <= ? ORDER BY keep_until, id LIMIT ?",
            self.t.incoming
        )))
        .bind(now)
        .bind(limit(limit_rows));
        run(&self.pool, query, "delete expired handled").await
    }
}

#[async_trait]
impl Outbox for MysqlStore {
    async fn claim_outgoing(
        &self,
        node_id: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<OutgoingRow>> {
        run_again(self, || self.claim_outgoing_once(node_id, limit_rows)).await
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete_ids(&self.t.outgoing, ids, "delete outgoing")
            .await
    }
}

impl MysqlStore {
    /// `DELETE FROM table WHERE id IN (…)` in chunks, in one transaction.
    pub(super) async fn delete_ids(
        &self,
        table: &str,
        ids: &[Uuid],
        op: &'static str,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(StoreError::db(op))?;
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!("DELETE FROM {table} WHERE id IN ({})", inline_ids(chunk));
            n += exec(&mut tx, sql, op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }
}
