//! The schema of the PostgreSQL store (create what is missing, rebuild,
//! drop, check, script), serialized across hosts by an advisory lock, the
//! whole-store commands (counts, clear) and the operator's state listing.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::schema::{self, Object, TABLES, ddl_lock_key};
use super::{PostgresStore, q};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::{Admin, StateListing};
use crate::store::maintenance;
use crate::store::rows::{Counts, StateEntry};
use crate::store::shared::{self, db_count};

/// The SQLSTATE of a database error, if it is one.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

impl PostgresStore {
    /// Begin a DDL transaction holding the schema's advisory lock.
    async fn begin_ddl(&self, op: &'static str) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(StoreError::db(op))?;
        // No "already exists, skipping" notices in the host's log.
        sqlx::query("SET LOCAL client_min_messages TO warning")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ddl_lock_key(&self.names.schema))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
        Ok(tx)
    }

    /// Run the DDL of every object that does not exist yet. Skipping what
    /// exists lets a role without CREATE rights start on a migrated schema.
    async fn create_missing(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        op: &'static str,
    ) -> StoreResult<()> {
        let schema_exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        )
        .bind(&self.names.schema)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::db(op))?;
        let existing: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.existing_objects.clone()))
                .bind(&self.names.schema)
                .fetch_all(&mut **tx)
                .await
                .map_err(StoreError::db(op))?;
        for (object, stmt) in schema::ddl(&self.names) {
            let exists = match object {
                Object::Schema => schema_exists,
                Object::Relation(name) => existing.iter().any(|e| e == name),
            };
            if !exists {
                sqlx::query(AssertSqlSafe(stmt))
                    .execute(&mut **tx)
                    .await
                    .map_err(StoreError::db(op))?;
            }
        }
        Ok(())
    }

    async fn drop_tables(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        op: &'static str,
    ) -> StoreResult<()> {
        let stmt = format!("DROP TABLE IF EXISTS {}", self.names.all().join(", "));
        sqlx::query(AssertSqlSafe(stmt))
            .execute(&mut **tx)
            .await
            .map_err(StoreError::db(op))?;
        Ok(())
    }
}

#[async_trait]
impl Admin for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        let op = "create schema";
        let mut tx = self.begin_ddl(op).await?;
        self.create_missing(&mut tx, op).await?;
        tx.commit().await.map_err(StoreError::db(op))
    }

    async fn rebuild(&self) -> StoreResult<()> {
        let op = "rebuild schema";
        let mut tx = self.begin_ddl(op).await?;
        self.drop_tables(&mut tx, op).await?;
        self.create_missing(&mut tx, op).await?;
        tx.commit().await.map_err(StoreError::db(op))
    }

    async fn drop_all(&self) -> StoreResult<()> {
        let op = "drop schema";
        let mut tx = self.begin_ddl(op).await?;
        self.drop_tables(&mut tx, op).await?;
        // The schema goes too if nothing else lives in it (no CASCADE), and
        // never `public`. Not empty, or not ours to drop: keep it.
        if self.names.schema != "public" {
            let savepoint = |s: &'static str| sqlx::query(s);
            savepoint("SAVEPOINT jasper_drop_schema")
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
            let dropped = sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {}",
                self.names.schema_q
            )))
            .execute(&mut *tx)
            .await;
            match dropped {
                Ok(_) => {}
                // dependent_objects_still_exist, insufficient_privilege
                Err(e) if matches!(sqlstate(&e).as_deref(), Some("2BP01" | "42501")) => {
                    savepoint("ROLLBACK TO SAVEPOINT jasper_drop_schema")
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::db(op))?;
                }
                Err(e) => return Err(StoreError::db(op)(e)),
            }
        }
        tx.commit().await.map_err(StoreError::db(op))
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.check_schema.clone()))
            .bind(&self.names.schema)
            .bind(TABLES.to_vec())
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("check schema"))?;
        shared::all_tables(n, || {
            format!("schema \"{}\" of {}", self.names.schema, self.target)
        })
    }

    fn schema_script(&self) -> String {
        schema::script(&self.names)
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let op = "counts";
        let query = q(&self.sql.counts);
        shared::counts(&shared::fetch_one(&self.pool, query, op).await?)
    }

    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>> {
        let sql = shared::outgoing_by_destination_sql(&self.names.outgoing, "count(*)");
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
impl StateListing for PostgresStore {
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>> {
        let query = q(&self.sql.list_state)
            .bind(plugin)
            .bind(prefix)
            .bind(db_count(limit));
        shared::state_entries(&shared::fetch_all(&self.pool, query, "list state").await?)
    }
}
