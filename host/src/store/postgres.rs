//! The PostgreSQL message store: for several hosts sharing one database.
//!
//! Owns the connection pool, the tables in the configured PostgreSQL schema
//! (`jasper_incoming`, `jasper_outgoing`, `jasper_dead_letters`,
//! `jasper_nodes`, `jasper_state`, with partial indexes matching the
//! queries) and every statement run against them. Same semantics as the
//! SQLite store, with what sharing needs on top:
//!
//! - DDL (`migrate`, `rebuild`, `drop_all`) runs in one transaction holding
//!   `pg_advisory_xact_lock` on a key derived from the schema, so hosts that
//!   start together do not race; `migrate` only runs the DDL of objects that
//!   are missing.
//! - Claims (`claim_incoming`, `claim_outgoing`) are one `UPDATE … WHERE id IN
//!   (SELECT … FOR UPDATE SKIP LOCKED)`: two nodes never take the same row and
//!   never wait for each other.
//! - The group commit is one transaction of set-based statements
//!   (`postgres/commit.rs`).
//! - `open` connects once before building the pool, so an unreachable
//!   server, wrong credentials or a missing database are named at once
//!   (`postgres/connect.rs`); errors name the URL without its password.
//!
//! `postgres/sql.rs` holds the SQL text. Ids are native `uuid` columns bound
//! as text (sqlx's `uuid` feature is off) and read back as `id::text`.

mod commit;
mod connect;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use uuid::Uuid;

use self::sql::{Names, Object, Statements, TABLES, ddl_lock_key};
use super::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, InsertReport, MessageStore, NewIncoming,
    OutgoingRow, StateValue, StoreError, StoreResult,
};

/// Open the store at `url` (a `postgres://` URL) in PostgreSQL schema `schema`.
/// Connects once to report a bad URL, an unreachable server, wrong credentials
/// or a missing database right away. Does not create tables.
pub async fn open(url: &str, schema: &str) -> StoreResult<Arc<dyn MessageStore>> {
    Ok(Arc::new(PostgresStore::open(url, schema).await?))
}

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The URL without its password.
    target: String,
    names: Names,
    sql: Statements,
}

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

fn parse_id(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Database {
        operation: "read message id",
        source: sqlx::Error::Decode(Box::new(e)),
    })
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn i64_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn get<'r, T>(row: &'r PgRow, i: usize, op: &'static str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(i).map_err(StoreError::db(op))
}

fn ids_text(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// The SQLSTATE of a database error, if it is one.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

impl PostgresStore {
    pub async fn open(url: &str, schema: &str) -> StoreResult<Self> {
        let target = connect::redact(url);
        let open_err = |source| StoreError::Open {
            target: target.clone(),
            source,
        };
        if !sql::valid_schema(schema) {
            return Err(open_err(sqlx::Error::Configuration(
                format!(
                    "schema {schema:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 bytes)"
                )
                .into(),
            )));
        }
        let pool = connect::pool(url, &target).await?;
        let names = Names::new(schema);
        let sql = Statements::new(&names);
        Ok(PostgresStore {
            pool,
            target,
            names,
            sql,
        })
    }

    async fn begin(&self, op: &'static str) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(StoreError::db(op))
    }

    /// Begin a DDL transaction holding the schema's advisory lock.
    async fn begin_ddl(&self, op: &'static str) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.begin(op).await?;
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
        for (object, stmt) in sql::ddl(&self.names) {
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

    fn row_to_claimed(row: &PgRow) -> StoreResult<ClaimedRow> {
        let op = "claim incoming";
        let id: String = get(row, 0, op)?;
        Ok(ClaimedRow {
            id: parse_id(&id)?,
            attempts: u32_of(get(row, 1, op)?),
            destination: get(row, 2, op)?,
            body: get(row, 3, op)?,
        })
    }

    fn row_to_outgoing(row: &PgRow) -> StoreResult<OutgoingRow> {
        let op = "claim outgoing";
        let id: String = get(row, 0, op)?;
        Ok(OutgoingRow {
            id: parse_id(&id)?,
            destination: get(row, 1, op)?,
            deliver_by: get(row, 2, op)?,
            attempts: u32_of(get(row, 3, op)?),
            body: get(row, 4, op)?,
        })
    }

    fn row_to_dead(row: &PgRow) -> StoreResult<DeadLetter> {
        let op = "list dead letters";
        let id: String = get(row, 0, op)?;
        Ok(DeadLetter {
            id: parse_id(&id)?,
            message_type: get(row, 1, op)?,
            received_at: get(row, 2, op)?,
            source: get(row, 3, op)?,
            error_kind: get(row, 4, op)?,
            error_message: get(row, 5, op)?,
            failed_at: get(row, 6, op)?,
            attempts: u32_of(get(row, 7, op)?),
            replayable: get(row, 8, op)?,
            body: get(row, 9, op)?,
        })
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
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
        if n == i64_of(TABLES.len()) {
            Ok(())
        } else {
            Err(StoreError::MissingSchema {
                target: format!("schema \"{}\" of {}", self.names.schema, self.target),
            })
        }
    }

    fn schema_script(&self) -> String {
        sql::script(&self.names)
    }

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
        let rows = q(&self.sql.claim)
            .bind(node_id)
            .bind(now)
            .bind(i64_of(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::db("claim incoming"))?;
        let mut out = rows
            .iter()
            .map(Self::row_to_claimed)
            .collect::<StoreResult<Vec<_>>>()?;
        // RETURNING gives no order guarantee; handle in id (= send time) order.
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(self.sql.next_scheduled.clone()))
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("next scheduled"))
    }

    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let op = "read state";
        let row = q(&self.sql.read_state)
            .bind(plugin)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::db(op))?;
        row.map(|r| {
            Ok(StateValue {
                value: get(&r, 0, op)?,
                version: get(&r, 1, op)?,
            })
        })
        .transpose()
    }

    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        if batch.is_empty() && batch.state_checks.is_empty() {
            return Ok(());
        }
        let op = "commit batch";
        let mut tx = self.begin(op).await?;
        commit::commit(&mut tx, &self.sql, batch).await?;
        tx.commit().await.map_err(StoreError::db(op))
    }

    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        let rows = q(&self.sql.claim_outgoing)
            .bind(node_id)
            .bind(i64_of(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::db("claim outgoing"))?;
        let mut out = rows
            .iter()
            .map(Self::row_to_outgoing)
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(q(&self.sql.delete_outgoing)
            .bind(ids_text(ids))
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("delete outgoing"))?
            .rows_affected())
    }

    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        Ok(q(&self.sql.delete_expired_handled)
            .bind(now)
            .bind(i64_of(limit))
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("delete expired handled"))?
            .rows_affected())
    }

    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        q(&self.sql.register_node)
            .bind(node_id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("register node"))?;
        Ok(())
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<()> {
        q(&self.sql.heartbeat)
            .bind(node_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("heartbeat"))?;
        Ok(())
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        q(&self.sql.remove_node)
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("remove node"))?;
        Ok(())
    }

    async fn release_dead_nodes(
        &self,
        self_id: i64,
        same_name: Option<&str>,
        stale_before: i64,
    ) -> StoreResult<u64> {
        let op = "release dead nodes";
        let mut tx = self.begin(op).await?;
        let dead: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.dead_nodes.clone()))
            .bind(self_id)
            .bind(same_name)
            .bind(stale_before)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
        // Rows can also belong to nodes that never registered or were removed:
        // anything not owned by a live node is orphaned.
        let mut released = 0;
        for stmt in &self.sql.release_orphans {
            released += q(stmt)
                .bind(self_id)
                .bind(same_name)
                .bind(stale_before)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?
                .rows_affected();
        }
        if !dead.is_empty() {
            q(&self.sql.forget_nodes)
                .bind(dead)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(released)
    }

    async fn release_all(&self) -> StoreResult<u64> {
        let op = "release owned rows";
        let mut tx = self.begin(op).await?;
        let mut n = 0;
        for stmt in &self.sql.release_all {
            n += q(stmt)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?
                .rows_affected();
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let op = "counts";
        let row = q(&self.sql.counts)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db(op))?;
        Ok(Counts {
            incoming: get(&row, 0, op)?,
            scheduled: get(&row, 1, op)?,
            handled: get(&row, 2, op)?,
            outgoing: get(&row, 3, op)?,
            dead_letters: get(&row, 4, op)?,
        })
    }

    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let rows = q(&self.sql.dead_letters)
            .bind(i64_of(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::db("list dead letters"))?;
        rows.iter().map(Self::row_to_dead).collect()
    }

    async fn replay_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let query = if ids.is_empty() {
            q(&self.sql.replay_all)
        } else {
            q(&self.sql.replay_ids).bind(ids_text(ids))
        };
        Ok(query
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("replay dead letters"))?
            .rows_affected())
    }

    async fn purge_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let query = if ids.is_empty() {
            q(&self.sql.purge_all)
        } else {
            q(&self.sql.purge_ids).bind(ids_text(ids))
        };
        Ok(query
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("purge dead letters"))?
            .rows_affected())
    }

    async fn clear(&self) -> StoreResult<()> {
        let op = "clear messages";
        let mut tx = self.begin(op).await?;
        for stmt in &self.sql.clear {
            q(stmt)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
        }
        tx.commit().await.map_err(StoreError::db(op))
    }
}
