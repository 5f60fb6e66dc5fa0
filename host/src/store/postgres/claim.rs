//! The inbox and the outbox of the PostgreSQL store: one statement each, no
//! explicit transaction (a single statement is atomic).

use async_trait::async_trait;
use uuid::Uuid;

use super::{PostgresStore, commit, q};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::{Inbox, Outbox};
use crate::store::rows::{ClaimedRow, InsertReport, NewIncoming, OutgoingRow};
use crate::store::shared::{
    Columns, claimed_in_order, db_count, fetch_all, fetch_one, outgoing_in_order, run,
};

#[async_trait]
impl Inbox for PostgresStore {
    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        let op = "insert incoming";
        // One statement: atomic without an explicit transaction.
        let mut conn = self.pool.acquire().await.map_err(StoreError::db(op))?;
        commit::insert_incoming(&mut conn, &self.sql, rows, op).await
    }

    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        let query = q(&self.sql.claim)
            .bind(node_id)
            .bind(now)
            .bind(db_count(limit));
        claimed_in_order(&fetch_all(&self.pool, query, "claim incoming").await?)
    }

    async fn release_claimed(&self, node_id: i64) -> StoreResult<u64> {
        let query = q(&self.sql.release_claimed).bind(node_id);
        run(&self.pool, query, "release claimed rows").await
    }

    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        let op = "next scheduled";
        fetch_one(&self.pool, q(&self.sql.next_scheduled), op)
            .await?
            .opt_int(0, op)
    }

    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        let query = q(&self.sql.delete_expired_handled)
            .bind(now)
            .bind(db_count(limit));
        run(&self.pool, query, "delete expired handled").await
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        let query = q(&self.sql.claim_outgoing)
            .bind(node_id)
            .bind(db_count(limit));
        outgoing_in_order(&fetch_all(&self.pool, query, "claim outgoing").await?)
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let query = q(&self.sql.delete_outgoing).bind(ids);
        run(&self.pool, query, "delete outgoing").await
    }
}
