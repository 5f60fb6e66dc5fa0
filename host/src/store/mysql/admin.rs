//! The node sweep and dead-letter replay: the two maintenance operations
//! that read before they write.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::super::{STATUS_INCOMING, StoreError, StoreResult};
use super::MysqlStore;
use super::commit::exec;
use super::schema::{CHUNK, id_list, parse_id};

impl MysqlStore {
    pub(super) async fn release_dead_nodes_tx(
        &self,
        self_id: i64,
        same_name: Option<&str>,
        stale_before: i64,
    ) -> StoreResult<u64> {
        let op = "release dead nodes";
        let nodes = &self.t.nodes;
        let mut tx = self.begin().await?;
        // Dead: another node whose heartbeat is stale or (at start-up) an
        // earlier run with this node's name. Live: every other node.
        let (dead, live) = match same_name {
            Some(_) => (
                format!("node_id <> {self_id} AND (heartbeat_at < {stale_before} OR name = ?)"),
                format!("node_id = {self_id} OR (heartbeat_at >= {stale_before} AND name <> ?)"),
            ),
            None => (
                format!("node_id <> {self_id} AND heartbeat_at < {stale_before}"),
                format!("node_id = {self_id} OR heartbeat_at >= {stale_before}"),
            ),
        };
        // Rows can also belong to nodes that never registered or were removed:
        // anything not owned by a live node is orphaned. The owners are read
        // before the live nodes: a node registers before it claims, so an
        // owner seen here is either live in the next read or gone for good,
        // and no row of a node that registered meanwhile is released. (One
        // `NOT IN (SELECT … nodes)` could miss such a node under READ
        // COMMITTED, its statement snapshot being older than its row reads.)
        let tables = [&self.t.incoming, &self.t.outgoing];
        let mut owners: Vec<Vec<i64>> = Vec::with_capacity(tables.len());
        for table in tables {
            owners.push(
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT DISTINCT owner_id FROM {table} WHERE owner_id <> 0"
                )))
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::db(op))?,
            );
        }
        let q = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT node_id FROM {nodes} WHERE {live}"
        )));
        let q = match same_name {
            Some(name) => q.bind(name),
            None => q,
        };
        let live: HashSet<i64> = q
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .into_iter()
            .collect();
        let mut released = 0;
        for (table, owners) in tables.into_iter().zip(owners) {
            let orphans: Vec<String> = owners
                .iter()
                .filter(|o| !live.contains(o))
                .map(i64::to_string)
                .collect();
            if !orphans.is_empty() {
                let sql = format!(
                    "UPDATE {table} SET owner_id = 0 WHERE owner_id IN ({})",
                    orphans.join(",")
                );
                released += exec(&mut tx, sql, op).await?;
            }
        }
        let q = sqlx::query(AssertSqlSafe(format!("DELETE FROM {nodes} WHERE {dead}")));
        let q = match same_name {
            Some(name) => q.bind(name),
            None => q,
        };
        q.execute(&mut *tx).await.map_err(StoreError::db(op))?;
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(released)
    }

    pub(super) async fn replay_tx(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let op = "replay dead letters";
        let t = &self.t;
        let mut tx = self.begin().await?;
        // Lock the dead letters first: one committed meanwhile must not be
        // deleted without having been replayed.
        let mut chosen: Vec<Uuid> = Vec::new();
        let filters: Vec<String> = if ids.is_empty() {
            vec![String::new()]
        } else {
            ids.chunks(CHUNK)
                .map(|c| format!(" AND id IN ({})", id_list(c)))
                .collect()
        };
        for filter in filters {
            let rows = sqlx::raw_sql(AssertSqlSafe(format!(
                "SELECT id FROM {} WHERE replayable <> 0{filter} ORDER BY id FOR UPDATE",
                t.dead_letters
            )))
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
            for r in rows {
                let id: String = r.try_get(0).map_err(StoreError::db(op))?;
                chosen.push(parse_id(&id)?);
            }
        }
        // Back into the inbox as fresh attempts; an id still in the inbox wins.
        let mut n = 0;
        for chunk in chosen.chunks(CHUNK) {
            let list = id_list(chunk);
            n += exec(
                &mut tx,
                format!(
                    "INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
                     SELECT d.id, '{STATUS_INCOMING}', 0, NULL, 0, d.message_type, d.received_at, d.body \
                     FROM {dl} d WHERE d.id IN ({list}) \
                     AND NOT EXISTS (SELECT 1 FROM {inc} i WHERE i.id = d.id)",
                    inc = t.incoming,
                    dl = t.dead_letters
                ),
                op,
            )
            .await?;
            exec(
                &mut tx,
                format!("DELETE FROM {} WHERE id IN ({list})", t.dead_letters),
                op,
            )
            .await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }
}
