//! Claims: `SELECT … FOR UPDATE SKIP LOCKED` of free rows, then one
//! `UPDATE … WHERE id IN (…)` handing them to the node, in one transaction.
//! Another node's claim skips the rows locked here instead of waiting.

use sqlx::{AssertSqlSafe, Row};

use super::super::{
    ClaimedRow, OutgoingRow, STATUS_INCOMING, STATUS_SCHEDULED, StoreError, StoreResult,
};
use super::commit::exec;
use super::schema::{id_list, parse_id};
use super::{MysqlStore, attempts, limit};

impl MysqlStore {
    pub(super) async fn claim_incoming_once(
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
        let cols = "SELECT id, attempts, received_at, body FROM";
        let mut tx = self.begin().await?;
        // Ready rows first in id (= time) order, then due scheduled rows.
        let mut rows = sqlx::query(AssertSqlSafe(format!(
            "{cols} {inc} WHERE status = '{STATUS_INCOMING}' AND owner_id = 0 \
             ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(limit(limit_rows))
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
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
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0).map_err(StoreError::db(op))?;
            out.push(ClaimedRow {
                id: parse_id(&id)?,
                attempts: attempts(row.try_get(1).map_err(StoreError::db(op))?),
                destination: row.try_get(2).map_err(StoreError::db(op))?,
                body: row.try_get(3).map_err(StoreError::db(op))?,
            });
        }
        let sql = format!(
            "UPDATE {inc} SET owner_id = {node_id}, status = '{STATUS_INCOMING}' WHERE id IN ({})",
            id_list(out.iter().map(|r| &r.id))
        );
        exec(&mut tx, sql, op).await?;
        tx.commit().await.map_err(StoreError::db(op))?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    pub(super) async fn claim_outgoing_once(
        &self,
        node_id: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<OutgoingRow>> {
        let op = "claim outgoing";
        if limit_rows == 0 {
            return Ok(Vec::new());
        }
        let out_table = &self.t.outgoing;
        let mut tx = self.begin().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, destination, deliver_by, attempts, body FROM {out_table} \
             WHERE owner_id = 0 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED"
        )))
        .bind(limit(limit_rows))
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0).map_err(StoreError::db(op))?;
            out.push(OutgoingRow {
                id: parse_id(&id)?,
                destination: r.try_get(1).map_err(StoreError::db(op))?,
                deliver_by: r.try_get(2).map_err(StoreError::db(op))?,
                attempts: attempts(r.try_get(3).map_err(StoreError::db(op))?),
                body: r.try_get(4).map_err(StoreError::db(op))?,
            });
        }
        if !out.is_empty() {
            let sql = format!(
                "UPDATE {out_table} SET owner_id = {node_id} WHERE id IN ({})",
                id_list(out.iter().map(|r| &r.id))
            );
            exec(&mut tx, sql, op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }
}
