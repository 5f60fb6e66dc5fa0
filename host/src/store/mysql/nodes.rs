//! The nodes table of the MySQL/MariaDB store (the node sweeps are the
//! shared sequences of `store/maintenance.rs`, their statements in `commit.rs`).

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::MysqlStore;
use crate::store::error::StoreResult;
use crate::store::maintenance::NodeRows;
use crate::store::shared::run;

#[async_trait]
impl NodeRows for MysqlStore {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (node_id, name, started_at, heartbeat_at, listeners) VALUES (?, ?, ?, ?, '')",
            self.t.nodes
        )))
        .bind(node_id)
        .bind(name)
        .bind(now)
        .bind(now);
        run(&self.pool, query, "register node").await.map(drop)
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET heartbeat_at = ? WHERE node_id = ?",
            self.t.nodes
        )))
        .bind(now)
        .bind(node_id);
        Ok(run(&self.pool, query, "heartbeat").await? > 0)
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE node_id = ?",
            self.t.nodes
        )))
        .bind(node_id);
        run(&self.pool, query, "remove node").await.map(drop)
    }
}
