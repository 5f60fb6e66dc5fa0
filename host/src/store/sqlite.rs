//! The SQLite message store: the embedded default. One file, WAL journal,
//! `synchronous=FULL` so a commit survives a crash of the process and of the
//! machine. Writers take the lock up front (`BEGIN IMMEDIATE`) so concurrent
//! writers (the host and `jasper-host send`) queue on the busy timeout instead
//! of failing on a lock upgrade.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, InsertReport, MessageStore, NewIncoming,
    NewOutgoing, OutgoingRow, STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED, StateValue,
    StoreError, StoreResult,
};

/// Table names for one prefix.
#[derive(Debug, Clone)]
struct Tables {
    incoming: String,
    outgoing: String,
    dead_letters: String,
    nodes: String,
    state: String,
    prefix: String,
}

impl Tables {
    fn new(schema: &str) -> Self {
        let p = format!("{schema}_");
        Tables {
            incoming: format!("{p}incoming"),
            outgoing: format!("{p}outgoing"),
            dead_letters: format!("{p}dead_letters"),
            nodes: format!("{p}nodes"),
            state: format!("{p}state"),
            prefix: p,
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.incoming,
            &self.outgoing,
            &self.dead_letters,
            &self.nodes,
            &self.state,
        ]
    }
}

/// Pre-built statements (table names are configuration, checked to be plain identifiers).
#[derive(Debug)]
struct Sql {
    claim: Arc<str>,
    next_scheduled: Arc<str>,
    read_state: Arc<str>,
    retry: Arc<str>,
    delete_incoming: Arc<str>,
    insert_dead: Arc<str>,
    state_upsert: Arc<str>,
    state_insert_new: Arc<str>,
    state_update_checked: Arc<str>,
    state_delete_checked: Arc<str>,
    state_delete: Arc<str>,
    state_version: Arc<str>,
}

impl Sql {
    fn new(t: &Tables) -> Self {
        let (inc, dl, st) = (&t.incoming, &t.dead_letters, &t.state);
        let s = |x: String| -> Arc<str> { x.into() };
        Sql {
            // Ready rows first in id (= time) order, then due scheduled rows.
            claim: s(format!(
                "UPDATE {inc} SET owner_id = ?1, status = '{STATUS_INCOMING}' WHERE id IN ( \
                   SELECT id FROM (SELECT id FROM {inc} WHERE status = '{STATUS_INCOMING}' AND owner_id = 0 ORDER BY id LIMIT ?3) \
                   UNION ALL \
                   SELECT id FROM (SELECT id FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0 AND execute_at <= ?2 ORDER BY execute_at LIMIT ?3) \
                   LIMIT ?3) \
                 RETURNING id, attempts, received_at, body"
            )),
            next_scheduled: s(format!(
                "SELECT MIN(execute_at) FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0"
            )),
            read_state: s(format!(
                "SELECT value, version FROM {st} WHERE plugin = ?1 AND key = ?2"
            )),
            retry: s(format!(
                "UPDATE {inc} SET owner_id = 0, attempts = ?2, execute_at = ?3, \
                 status = CASE WHEN ?3 IS NULL THEN '{STATUS_INCOMING}' ELSE '{STATUS_SCHEDULED}' END WHERE id = ?1"
            )),
            delete_incoming: s(format!("DELETE FROM {inc} WHERE id = ?1")),
            insert_dead: s(format!(
                "INSERT INTO {dl} (id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT(id) DO UPDATE SET error_kind = excluded.error_kind, error_message = excluded.error_message, \
                 failed_at = excluded.failed_at, attempts = excluded.attempts, body = excluded.body"
            )),
            state_upsert: s(format!(
                "INSERT INTO {st} (plugin, key, value, version) VALUES (?1, ?2, ?3, 1) \
                 ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value, version = version + 1"
            )),
            state_insert_new: s(format!(
                "INSERT INTO {st} (plugin, key, value, version) VALUES (?1, ?2, ?3, 1) ON CONFLICT(plugin, key) DO NOTHING"
            )),
            state_update_checked: s(format!(
                "UPDATE {st} SET value = ?3, version = version + 1 WHERE plugin = ?1 AND key = ?2 AND version = ?4"
            )),
            state_delete_checked: s(format!(
                "DELETE FROM {st} WHERE plugin = ?1 AND key = ?2 AND version = ?3"
            )),
            state_delete: s(format!("DELETE FROM {st} WHERE plugin = ?1 AND key = ?2")),
            state_version: s(format!(
                "SELECT version FROM {st} WHERE plugin = ?1 AND key = ?2"
            )),
        }
    }
}

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// The SQLite backend.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Held for the length of each write transaction (see `begin`).
    writer: Arc<tokio::sync::Mutex<()>>,
    target: String,
    tables: Tables,
    sql: Sql,
}

impl SqliteStore {
    /// Open (creating the file if missing) the database at `path`.
    pub async fn open(path: &Path, schema: &str) -> StoreResult<Self> {
        let target = path.display().to_string();
        let open_err = |source| StoreError::Open {
            target: target.clone(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            return Err(open_err(sqlx::Error::Configuration(
                format!("folder {} does not exist", dir.display()).into(),
            )));
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .pragma("temp_store", "memory")
            // 64 MiB of page cache per connection: the inbox's hot pages stay in memory.
            .pragma("cache_size", "-65536");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let tables = Tables::new(schema);
        let sql = Sql::new(&tables);
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            target,
            tables,
            sql,
        })
    }

    /// A write transaction. Writers of this process queue on an in-process
    /// lock first: SQLite's busy handler sleeps in growing steps (up to
    /// 100 ms) when two connections want the write lock, which showed as
    /// latency spikes when the worker, the listeners and the senders wrote at
    /// once. Other processes still queue on the busy timeout.
    async fn begin(
        &self,
    ) -> StoreResult<(
        tokio::sync::OwnedMutexGuard<()>,
        Transaction<'static, Sqlite>,
    )> {
        let writer = self.writer.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin transaction"))?;
        Ok((writer, tx))
    }

    fn ddl(&self) -> Vec<String> {
        let t = &self.tables;
        let p = &t.prefix;
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  status TEXT NOT NULL,\n  owner_id INTEGER NOT NULL DEFAULT 0,\n  execute_at INTEGER,\n  attempts INTEGER NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  keep_until INTEGER,\n  body BLOB NOT NULL\n)",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_ready ON {} (id) WHERE status = '{STATUS_INCOMING}' AND owner_id = 0",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_scheduled ON {} (execute_at) WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_handled ON {} (keep_until) WHERE status = '{STATUS_HANDLED}'",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_owner ON {} (owner_id) WHERE owner_id <> 0",
                t.incoming
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  owner_id INTEGER NOT NULL DEFAULT 0,\n  destination TEXT NOT NULL,\n  deliver_by INTEGER,\n  attempts INTEGER NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  body BLOB NOT NULL\n)",
                t.outgoing
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}outgoing_free ON {} (id) WHERE owner_id = 0",
                t.outgoing
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  source TEXT,\n  error_kind TEXT NOT NULL,\n  error_message TEXT NOT NULL,\n  failed_at INTEGER NOT NULL,\n  attempts INTEGER NOT NULL,\n  replayable INTEGER NOT NULL DEFAULT 1,\n  body BLOB NOT NULL\n)",
                t.dead_letters
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  node_id INTEGER PRIMARY KEY NOT NULL,\n  name TEXT NOT NULL,\n  started_at INTEGER NOT NULL,\n  heartbeat_at INTEGER NOT NULL,\n  listeners TEXT NOT NULL DEFAULT ''\n)",
                t.nodes
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  plugin TEXT NOT NULL,\n  key TEXT NOT NULL,\n  value BLOB NOT NULL,\n  version INTEGER NOT NULL,\n  PRIMARY KEY (plugin, key)\n)",
                t.state
            ),
        ]
    }

    async fn exec_script(&self, statements: &[String], operation: &'static str) -> StoreResult<()> {
        let (_writer, mut tx) = self.begin().await?;
        for stmt in statements {
            sqlx::query(AssertSqlSafe(stmt.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(operation))?;
        }
        tx.commit().await.map_err(StoreError::db(operation))
    }
}

fn parse_id(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Database {
        operation: "read message id",
        source: sqlx::Error::Decode(Box::new(e)),
    })
}

/// An attempts column as the count it is (never negative, at most u32::MAX).
fn to_attempts(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn ids_list(ids: &[Uuid]) -> String {
    // Uuids render as [0-9a-f-] only, so quoting them inline is safe.
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.exec_script(&self.ddl(), "create schema").await
    }

    async fn rebuild(&self) -> StoreResult<()> {
        let mut stmts: Vec<String> = self
            .tables
            .all()
            .iter()
            .map(|t| format!("DROP TABLE IF EXISTS {t}"))
            .collect();
        stmts.extend(self.ddl());
        self.exec_script(&stmts, "rebuild schema").await
    }

    async fn drop_all(&self) -> StoreResult<()> {
        let stmts: Vec<String> = self
            .tables
            .all()
            .iter()
            .map(|t| format!("DROP TABLE IF EXISTS {t}"))
            .collect();
        self.exec_script(&stmts, "drop schema").await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&self.tables.incoming)
        .bind(&self.tables.outgoing)
        .bind(&self.tables.dead_letters)
        .bind(&self.tables.nodes)
        .bind(&self.tables.state)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("check schema"))?;
        if n == 5 {
            Ok(())
        } else {
            Err(StoreError::MissingSchema {
                target: self.target.clone(),
            })
        }
    }

    fn schema_script(&self) -> String {
        let mut out = String::from("-- jasper-host message store (SQLite)\n");
        for stmt in self.ddl() {
            out.push_str(&stmt);
            out.push_str(";\n");
        }
        out
    }

    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        let mut report = InsertReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let (_writer, mut tx) = self.begin().await?;
        insert_rows(&mut tx, &self.tables, rows, &mut report).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("insert incoming"))?;
        Ok(report)
    }

    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        let (_writer, mut tx) = self.begin().await?;
        let rows = q(&self.sql.claim)
            .bind(node_id)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db("claim incoming"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("claim incoming"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let attempts: i64 = row.get(1);
            out.push(ClaimedRow {
                id: parse_id(&id)?,
                attempts: to_attempts(attempts),
                destination: row.get(2),
                body: row.get(3),
            });
        }
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
        let row = q(&self.sql.read_state)
            .bind(plugin)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::db("read state"))?;
        Ok(row.map(|r| StateValue {
            value: r.get(0),
            version: r.get(1),
        }))
    }

    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        let sql = &self.sql;
        let (_writer, mut tx) = self.begin().await?;
        let op = "commit batch";
        for check in &batch.state_checks {
            let v: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.state_version.clone()))
                .bind(&check.plugin)
                .bind(&check.key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
            if v.unwrap_or(0) != check.expected_version {
                return Err(StoreError::StaleState {
                    plugin: check.plugin.clone(),
                    key: check.key.clone(),
                    expected: check.expected_version,
                });
            }
        }
        for w in &batch.state_writes {
            let affected = match (&w.value, w.expected_version) {
                (Some(v), None) => q(&sql.state_upsert).bind(&w.plugin).bind(&w.key).bind(v),
                (Some(v), Some(0)) => q(&sql.state_insert_new)
                    .bind(&w.plugin)
                    .bind(&w.key)
                    .bind(v),
                (Some(v), Some(e)) => q(&sql.state_update_checked)
                    .bind(&w.plugin)
                    .bind(&w.key)
                    .bind(v)
                    .bind(e),
                (None, None) => q(&sql.state_delete).bind(&w.plugin).bind(&w.key),
                (None, Some(0)) => {
                    // Absent when read, deleted now: still absent?
                    let v: Option<i64> =
                        sqlx::query_scalar(AssertSqlSafe(sql.state_version.clone()))
                            .bind(&w.plugin)
                            .bind(&w.key)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(StoreError::db(op))?;
                    if v.is_some() {
                        return Err(StoreError::StaleState {
                            plugin: w.plugin.clone(),
                            key: w.key.clone(),
                            expected: 0,
                        });
                    }
                    continue;
                }
                (None, Some(e)) => q(&sql.state_delete_checked)
                    .bind(&w.plugin)
                    .bind(&w.key)
                    .bind(e),
            }
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .rows_affected();
            if affected == 0 && w.expected_version.is_some() {
                return Err(StoreError::StaleState {
                    plugin: w.plugin.clone(),
                    key: w.key.clone(),
                    expected: w.expected_version.unwrap_or(0),
                });
            }
        }
        let mut report = InsertReport::default();
        insert_rows(&mut tx, &self.tables, &batch.new_incoming, &mut report).await?;
        mark_handled(&mut tx, &self.tables, &batch.handled).await?;
        insert_outgoing(&mut tx, &self.tables, &batch.outgoing).await?;
        for r in &batch.retries {
            q(&sql.retry)
                .bind(r.id.to_string())
                .bind(r.attempts as i64)
                .bind(r.execute_at)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
        }
        for d in &batch.dead_letters {
            q(&sql.delete_incoming)
                .bind(d.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
            q(&sql.insert_dead)
                .bind(d.id.to_string())
                .bind(&d.message_type)
                .bind(&d.received_at)
                .bind(&d.source)
                .bind(&d.error_kind)
                .bind(&d.error_message)
                .bind(d.failed_at)
                .bind(d.attempts as i64)
                .bind(d.replayable)
                .bind(&d.body)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db(op))?;
        }
        tx.commit().await.map_err(StoreError::db(op))
    }

    async fn claim_outgoing(&self, node_id: i64, limit: usize) -> StoreResult<Vec<OutgoingRow>> {
        let op = "claim outgoing";
        let (_writer, mut tx) = self.begin().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {out} SET owner_id = ?1 WHERE id IN (SELECT id FROM {out} WHERE owner_id = 0 ORDER BY id LIMIT ?2) \
             RETURNING id, destination, deliver_by, attempts, body",
            out = self.tables.outgoing
        )))
        .bind(node_id)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        tx.commit().await.map_err(StoreError::db(op))?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                let id: String = r.get(0);
                let attempts: i64 = r.get(3);
                Ok(OutgoingRow {
                    id: parse_id(&id)?,
                    destination: r.get(1),
                    deliver_by: r.get(2),
                    attempts: to_attempts(attempts),
                    body: r.get(4),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let op = "delete outgoing";
        let mut n = 0;
        let (_writer, mut tx) = self.begin().await?;
        for chunk in ids.chunks(CHUNK) {
            n += sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id IN ({})",
                self.tables.outgoing,
                ids_list(chunk)
            )))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .rows_affected();
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn delete_expired_handled(&self, now: i64, limit: usize) -> StoreResult<u64> {
        let sql = format!(
            "DELETE FROM {inc} WHERE rowid IN (SELECT rowid FROM {inc} WHERE status = '{STATUS_HANDLED}' AND keep_until <= ?1 LIMIT ?2)",
            inc = self.tables.incoming
        );
        let (_writer, mut tx) = self.begin().await?;
        let n = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(limit as i64)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("delete expired handled"))?
            .rows_affected();
        tx.commit()
            .await
            .map_err(StoreError::db("delete expired handled"))?;
        Ok(n)
    }

    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO {} (node_id, name, started_at, heartbeat_at, listeners) VALUES (?1, ?2, ?3, ?3, '')",
            self.tables.nodes
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(node_id)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("register node"))?;
        Ok(())
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<()> {
        let sql = format!(
            "UPDATE {} SET heartbeat_at = ?2 WHERE node_id = ?1",
            self.tables.nodes
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(node_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("heartbeat"))?;
        Ok(())
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        let sql = format!("DELETE FROM {} WHERE node_id = ?1", self.tables.nodes);
        sqlx::query(AssertSqlSafe(sql))
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
        let name = same_name;
        let nodes = &self.tables.nodes;
        let op = "release dead nodes";
        let (_writer, mut tx) = self.begin().await?;
        let dead: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT node_id FROM {nodes} WHERE node_id <> ?1 AND (heartbeat_at < ?3 OR (?2 IS NOT NULL AND name = ?2))"
        )))
        .bind(self_id)
        .bind(name)
        .bind(stale_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        // Rows can also belong to nodes that never registered or were removed:
        // anything not owned by a live node is orphaned.
        let live = format!(
            "SELECT node_id FROM {nodes} WHERE node_id = ?1 OR (heartbeat_at >= ?3 AND (?2 IS NULL OR name <> ?2))"
        );
        let mut released = 0;
        for table in [&self.tables.incoming, &self.tables.outgoing] {
            released += sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET owner_id = 0 WHERE owner_id <> 0 AND owner_id NOT IN ({live})"
            )))
            .bind(self_id)
            .bind(name)
            .bind(stale_before)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .rows_affected();
        }
        for id in dead {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {nodes} WHERE node_id = ?1"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(released)
    }

    async fn release_all(&self) -> StoreResult<u64> {
        let op = "release owned rows";
        let (_writer, mut tx) = self.begin().await?;
        let mut n = 0;
        for table in [&self.tables.incoming, &self.tables.outgoing] {
            n += sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET owner_id = 0 WHERE owner_id <> 0"
            )))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .rows_affected();
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let t = &self.tables;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_INCOMING}'), \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_SCHEDULED}'), \
               (SELECT count(*) FROM {inc} WHERE status = '{STATUS_HANDLED}'), \
               (SELECT count(*) FROM {out}), \
               (SELECT count(*) FROM {dl})",
            inc = t.incoming,
            out = t.outgoing,
            dl = t.dead_letters
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("counts"))?;
        Ok(Counts {
            incoming: row.get(0),
            scheduled: row.get(1),
            handled: row.get(2),
            outgoing: row.get(3),
            dead_letters: row.get(4),
        })
    }

    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} ORDER BY failed_at, id LIMIT ?1",
            self.tables.dead_letters
        )))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::db("list dead letters"))?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.get(0);
                let attempts: i64 = r.get(7);
                Ok(DeadLetter {
                    id: parse_id(&id)?,
                    message_type: r.get(1),
                    received_at: r.get(2),
                    source: r.get(3),
                    error_kind: r.get(4),
                    error_message: r.get(5),
                    failed_at: r.get(6),
                    attempts: to_attempts(attempts),
                    replayable: r.get(8),
                    body: r.get(9),
                })
            })
            .collect()
    }

    async fn replay_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let t = &self.tables;
        let filter = if ids.is_empty() {
            "replayable <> 0".to_string()
        } else {
            format!("replayable <> 0 AND id IN ({})", ids_list(ids))
        };
        let op = "replay dead letters";
        let (_writer, mut tx) = self.begin().await?;
        // Back into the inbox as fresh attempts; an id still in the inbox wins.
        let n = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
             SELECT id, '{STATUS_INCOMING}', 0, NULL, 0, message_type, received_at, body FROM {dl} WHERE {filter} \
             ON CONFLICT(id) DO NOTHING",
            inc = t.incoming,
            dl = t.dead_letters
        )))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db(op))?
        .rows_affected();
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE {filter}",
            t.dead_letters
        )))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn purge_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let filter = if ids.is_empty() {
            "1 = 1".to_string()
        } else {
            format!("id IN ({})", ids_list(ids))
        };
        let n = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE {filter}",
            self.tables.dead_letters
        )))
        .execute(&self.pool)
        .await
        .map_err(StoreError::db("purge dead letters"))?
        .rows_affected();
        Ok(n)
    }

    async fn clear(&self) -> StoreResult<()> {
        let t = &self.tables;
        let stmts: Vec<String> = [&t.incoming, &t.outgoing, &t.dead_letters]
            .iter()
            .map(|table| format!("DELETE FROM {table}"))
            .collect();
        self.exec_script(&stmts, "clear messages").await
    }
}

/// Rows per multi-row statement (8 parameters each, far below SQLite's limit).
const CHUNK: usize = 500;

/// Insert rows with multi-row statements; ids already present are reported
/// as duplicates (the inbox dedupes by id).
async fn insert_rows(
    tx: &mut Transaction<'static, Sqlite>,
    tables: &Tables,
    rows: &[NewIncoming],
    report: &mut InsertReport,
) -> StoreResult<()> {
    for chunk in rows.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT INTO {} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) ",
            tables.incoming
        ));
        qb.push_values(chunk, |mut b, row| {
            b.push_bind(row.id.to_string())
                .push_bind(row.status())
                .push_bind(row.owner_id)
                .push_bind(row.execute_at)
                .push_bind(row.attempts as i64)
                .push_bind(row.message_type.clone())
                .push_bind(row.destination.clone())
                .push_bind(row.body.clone());
        });
        qb.push(" ON CONFLICT(id) DO NOTHING RETURNING id");
        let inserted: Vec<String> = qb
            .build_query_scalar()
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::db("insert incoming"))?;
        report.inserted += inserted.len();
        if inserted.len() < chunk.len() {
            // Every row not returned is a duplicate, including a second copy
            // of an id inside this very statement.
            let mut fresh: std::collections::HashSet<String> = inserted.into_iter().collect();
            report.duplicates.extend(
                chunk
                    .iter()
                    .map(|r| r.id)
                    .filter(|id| !fresh.remove(&id.to_string())),
            );
        }
    }
    Ok(())
}

/// Insert outgoing rows with multi-row statements; an existing id is kept.
async fn insert_outgoing(
    tx: &mut Transaction<'static, Sqlite>,
    tables: &Tables,
    rows: &[NewOutgoing],
) -> StoreResult<()> {
    for chunk in rows.chunks(CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT INTO {} (id, owner_id, destination, deliver_by, attempts, message_type, body) ",
            tables.outgoing
        ));
        qb.push_values(chunk, |mut b, row| {
            b.push_bind(row.id.to_string())
                .push_bind(row.owner_id)
                .push_bind(row.destination.clone())
                .push_bind(row.deliver_by)
                .push_bind(row.attempts as i64)
                .push_bind(row.message_type.clone())
                .push_bind(row.body.clone());
        });
        qb.push(" ON CONFLICT(id) DO NOTHING");
        qb.build()
            .execute(&mut **tx)
            .await
            .map_err(StoreError::db("insert outgoing"))?;
    }
    Ok(())
}

/// Mark rows handled, one statement per chunk of ids.
async fn mark_handled(
    tx: &mut Transaction<'static, Sqlite>,
    tables: &Tables,
    handled: &[(Uuid, i64)],
) -> StoreResult<()> {
    let mut by_keep: std::collections::BTreeMap<i64, Vec<Uuid>> = Default::default();
    for (id, keep) in handled {
        by_keep.entry(*keep).or_default().push(*id);
    }
    for (keep, ids) in by_keep {
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = ?1, owner_id = 0 WHERE id IN ({})",
                tables.incoming,
                ids_list(chunk)
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(keep)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::db("mark handled"))?;
        }
    }
    Ok(())
}
