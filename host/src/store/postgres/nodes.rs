//! The nodes table of the PostgreSQL store (the node sweeps are the shared
//! sequences of `store/maintenance.rs`, their statements in `commit.rs`).

use async_trait::async_trait;

use super::{PostgresStore, q};
use crate::store::error::StoreResult;
use crate::store::maintenance::NodeRows;
use crate::store::shared::run;

#[async_trait]
impl NodeRows for PostgresStore {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        let query = q(&self.sql.register_node)
            .bind(node_id)
            .bind(name)
            .bind(now);
        run(&self.pool, query, "register node").await.map(drop)
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        let query = q(&self.sql.heartbeat).bind(node_id).bind(now);
        Ok(run(&self.pool, query, "heartbeat").await? > 0)
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        let query = q(&self.sql.remove_node).bind(node_id);
        run(&self.pool, query, "remove node").await.map(drop)
    }
}
