//! The inbox and the outbox of the SQLite store: inserts, claims (one
//! `UPDATE … RETURNING` each), the next scheduled time, deletes.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{SqliteStore, q};
use crate::store::commit::CommitSteps;
use crate::store::error::StoreResult;
use crate::store::faces::{Inbox, Outbox};
use crate::store::rows::{
    ClaimedRow, InsertReport, NewIncoming, OutgoingRow, STATUS_HANDLED, STATUS_INCOMING,
};
use crate::store::shared::{
    CHUNK, Columns, claimed_in_order, db_count, fetch_all, fetch_one, inline_ids,
    outgoing_in_order, run,
};

#[async_trait]
impl Inbox for SqliteStore {
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        let mut tx = self.begin().await?;
        let report = tx.insert_incoming(rows).await?;
        tx.finish().await?;
        Ok(report)
    }

    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        let mut tx = self.begin().await?;
        let query = q(&self.sql.claim)
            .bind(node_id)
            .bind(now)
            .bind(db_count(limit));
        let rows = fetch_all(&mut *tx.tx, query, "claim incoming").await?;
        tx.finish().await?;
        claimed_in_order(&rows)
    }

    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE {} SET owner_id = 0 WHERE owner_id = ?1 AND status = '{STATUS_INCOMING}'",
            self.tables.incoming
        );
        let mut tx = self.begin().await?;
        let n = run(
            &mut *tx.tx,
            sqlx::query(AssertSqlSafe(sql)).bind(node_id),
            "release claimed rows",
        )
        .await?;
        tx.finish().await?;
        Ok(n)
    }

    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        let op = "next scheduled";
        fetch_one(&self.pool, q(&self.sql.next_scheduled), op)
            .await?
            .opt_int(0, op)
    }

    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        let sql = format!(
            "DELETE FROM {inc} WHERE rowid IN (SELECT rowid FROM {inc} WHERE status = '{STATUS_HANDLED}' AND keep_until <= ?1 LIMIT ?2)",
            inc = self.tables.incoming
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(db_count(limit));
        let mut tx = self.begin().await?;
        let n = run(&mut *tx.tx, query, "delete expired handled").await?;
        tx.finish().await?;
        Ok(n)
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {out} SET owner_id = ?1 WHERE id IN (SELECT id FROM {out} WHERE owner_id = 0 ORDER BY id LIMIT ?2) \
             RETURNING id, destination, deliver_by, attempts, body",
            out = self.tables.outgoing
        )))
        .bind(node_id)
        .bind(db_count(limit));
        let mut tx = self.begin().await?;
        let rows = fetch_all(&mut *tx.tx, query, "claim outgoing").await?;
        tx.finish().await?;
        outgoing_in_order(&rows)
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let mut n = 0;
        let mut tx = self.begin().await?;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM {} WHERE id IN ({})",
                self.tables.outgoing,
                inline_ids(chunk)
            );
            n += tx.exec(sql, "delete outgoing").await?;
        }
        tx.finish().await?;
        Ok(n)
    }
}
