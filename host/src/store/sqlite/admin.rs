//! The schema of the SQLite store (create, rebuild, drop, check, script), the
//! whole-store commands (counts, clear) and the operator's state listing.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use crate::store::commit::CommitSteps;
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::{Admin, StateListing};
use crate::store::maintenance;
use crate::store::rows::{Counts, STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED, StateEntry};
use crate::store::shared::{self, db_count};

impl SqliteStore {
    async fn exec_script(&self, statements: &[String], operation: &'static str) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for stmt in statements {
            tx.exec(stmt.clone(), operation).await?;
        }
        tx.finish().await
    }

    fn drop_statements(&self) -> Vec<String> {
        self.tables
            .all()
            .iter()
            .map(|t| format!("DROP TABLE IF EXISTS {t}"))
            .collect()
    }
}

#[async_trait]
impl Admin for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.exec_script(&self.tables.ddl(), "create schema").await
    }

    async fn rebuild(&self) -> StoreResult<()> {
        let mut stmts = self.drop_statements();
        stmts.extend(self.tables.ddl());
        self.exec_script(&stmts, "rebuild schema").await
    }

    async fn drop_all(&self) -> StoreResult<()> {
        self.exec_script(&self.drop_statements(), "drop schema")
            .await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let t = &self.tables;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&t.incoming)
        .bind(&t.outgoing)
        .bind(&t.dead_letters)
        .bind(&t.nodes)
        .bind(&t.state)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("check schema"))?;
        shared::all_tables(n, || self.target.clone())
    }

    fn schema_script(&self) -> String {
        let mut out = String::from("-- jasper-host message store (SQLite)\n");
        for stmt in self.tables.ddl() {
            out.push_str(&stmt);
            out.push_str(";\n");
        }
        out
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let t = &self.tables;
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_INCOMING}'), \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_SCHEDULED}'), \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_HANDLED}'), \
               (SELECT count(*) FROM {out}), \
               (SELECT count(*) FROM {dl})",
            inc = t.incoming,
            out = t.outgoing,
            dl = t.dead_letters
        )));
        shared::counts(&shared::fetch_one(&self.pool, query, "counts").await?)
    }

    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>> {
        let sql = shared::outgoing_by_destination_sql(&self.tables.outgoing, "count(*)");
        let rows = shared::fetch_all(
            &self.pool,
            sqlx::query(AssertSqlSafe(sql)),
            "outgoing by destination",
        )
        .await?;
        shared::destination_counts(&rows)
    }

    async fn clear(&self) -> StoreResult<()> {
        maintenance::clear(self).await
    }
}

#[async_trait]
impl StateListing for SqliteStore {
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>> {
        // substr, not LIKE: SQLite's LIKE has wildcards and ignores ASCII
        // case. Keys are TEXT in the BINARY collation, so `key >= prefix`
        // starts the primary-key range and the order is byte-wise.
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT key, value, version FROM {} \
             WHERE plugin = ?1 AND key >= ?2 AND substr(key, 1, length(?2)) = ?2 \
             ORDER BY key LIMIT ?3",
            self.tables.state
        )))
        .bind(plugin)
        .bind(prefix)
        .bind(db_count(limit));
        shared::state_entries(&shared::fetch_all(&self.pool, query, "list state").await?)
    }
}
