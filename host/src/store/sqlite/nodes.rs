//! The nodes table of the SQLite store (the node sweeps are the shared
//! sequences of `store/maintenance.rs`, their statements in `commit.rs`).

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use crate::store::error::StoreResult;
use crate::store::maintenance::NodeRows;
use crate::store::shared::run;

#[async_trait]
impl NodeRows for SqliteStore {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO {} (node_id, name, started_at, heartbeat_at, listeners) VALUES (?1, ?2, ?3, ?3, '')",
            self.tables.nodes
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(node_id)
            .bind(name)
            .bind(now);
        run(&self.pool, query, "register node").await.map(drop)
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE {} SET heartbeat_at = ?2 WHERE node_id = ?1",
            self.tables.nodes
        );
        let query = sqlx::query(AssertSqlSafe(sql)).bind(node_id).bind(now);
        Ok(run(&self.pool, query, "heartbeat").await? > 0)
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        let sql = format!("DELETE FROM {} WHERE node_id = ?1", self.tables.nodes);
        let query = sqlx::query(AssertSqlSafe(sql)).bind(node_id);
        run(&self.pool, query, "remove node").await.map(drop)
    }
}
