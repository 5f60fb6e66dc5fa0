//! The MySQL/MariaDB message store: the tables `{schema}_incoming`,
//! `_outgoing`, `_dead_letters`, `_nodes` and `_state` in the database the URL
//! names (InnoDB; ids `CHAR(36)` ASCII, times `BIGINT` ms, bodies `LONGBLOB`),
//! their DDL (created under a `GET_LOCK` so hosts starting together do not
//! race), and every statement of the [`MessageStore`] contract with the
//! semantics of the SQLite reference.
//!
//! Connections run at `READ COMMITTED`: a queue does not want the gap locks of
//! `REPEATABLE READ`, which make concurrent inserters wait on (and deadlock
//! over) the gap after the newest id. Claims take rows with
//! `SELECT … FOR UPDATE SKIP LOCKED`, so nodes never get the same row nor wait
//! for each other; the group commit is one transaction of set-based statements
//! (see `commit.rs`). Written for MariaDB 10.6+ and MySQL 8.0+.
//!
//! Counts returned to callers come from `DELETE`s, from `UPDATE`s whose every
//! matched row changes, and from inserts without `ON DUPLICATE KEY`, so they
//! are right whether or not the connection reports found rows (sqlx sets
//! `CLIENT_FOUND_ROWS`) or changed ones.

mod admin;
mod claim;
mod commit;
mod schema;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{AssertSqlSafe, Connection, Executor, Row, Transaction};
use uuid::Uuid;

use self::commit::exec;
use self::schema::{CHUNK, MAX_SCHEMA, Tables, id_list, parse_id, redact};
use super::{
    ClaimedRow, CommitBatch, Counts, DeadLetter, InsertReport, MessageStore, NewIncoming,
    OutgoingRow, STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED, StateValue, StoreError,
    StoreResult,
};

/// Pool size per host.
const MAX_CONNECTIONS: u32 = 8;
/// How long `open` waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration waits for another host's migration (seconds).
const DDL_LOCK_WAIT: i64 = 30;
/// Upper bound of one multi-row statement, whatever `max_allowed_packet` allows.
const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// Open the store at `url` (`mysql://` or `mariadb://`) with the table
/// prefix `{schema}_`. Does not create tables.
pub async fn open(url: &str, schema: &str) -> StoreResult<Arc<dyn MessageStore>> {
    let target = redact(url);
    let open_err = |source| StoreError::Open {
        target: target.clone(),
        source,
    };
    let config = |msg: String| open_err(sqlx::Error::Configuration(msg.into()));
    let options = MySqlConnectOptions::from_str(url).map_err(open_err)?;
    if options.get_database().is_none_or(str::is_empty) {
        return Err(config(
            "the URL names no database (mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)".into(),
        ));
    }
    if schema.len() > MAX_SCHEMA {
        return Err(config(format!(
            "storage.schema {schema:?} is too long for MySQL: table names are limited to 64 characters, so the schema to {MAX_SCHEMA}"
        )));
    }
    let server = format!("{}:{}", options.get_host(), options.get_port());
    // One plain connection first: its error names the cause (refused, access
    // denied, unknown database), where the pool would retry a refused
    // connection until its timeout and then only say that it timed out.
    let mut probe = tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
        .await
        .map_err(|_| {
            open_err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{server} gave no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )))
        })?
        .map_err(|e| match e {
            sqlx::Error::Io(io) => open_err(sqlx::Error::Io(std::io::Error::new(
                io.kind(),
                format!("{server} is unreachable: {io}"),
            ))),
            other => open_err(other),
        })?;
    let (version, max_packet): (String, i64) =
        sqlx::query_as("SELECT VERSION(), CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&mut probe)
            .await
            .map_err(open_err)?;
    let _ = probe.close().await;
    if let Some(why) = too_old(&version) {
        return Err(config(why));
    }
    let budget = usize::try_from(max_packet / 2)
        .unwrap_or(0)
        .clamp(64 << 10, MAX_STATEMENT_BYTES);

    let pool = MySqlPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // Too long a value is an error, never silently cut.
                conn.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')")
                    .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(open_err)?;
    Ok(Arc::new(MysqlStore {
        pool,
        options,
        target,
        t: Tables::new(schema),
        budget,
    }))
}

/// The MySQL/MariaDB backend.
struct MysqlStore {
    pool: MySqlPool,
    /// For the dedicated DDL connection (see [`MysqlStore::ddl`]).
    options: MySqlConnectOptions,
    /// The URL without its password.
    target: String,
    t: Tables,
    /// Bytes per multi-row statement.
    budget: usize,
}

// By hand: the connect options hold the password.
impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("target", &self.target)
            .field("tables", &self.t.raw)
            .finish_non_exhaustive()
    }
}

/// Why a server version cannot run this store (it needs `SKIP LOCKED`:
/// MariaDB 10.6, MySQL 8.0); `None` when it can or the version is unknown.
fn too_old(version: &str) -> Option<String> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let (name, need) = if version.contains("MariaDB") {
        ("MariaDB", (10, 6))
    } else {
        ("MySQL", (8, 0))
    };
    ((major, minor) < need).then(|| {
        format!(
            "{name} {version} is too old: the store needs MariaDB 10.6+ or MySQL 8.0+ (FOR UPDATE SKIP LOCKED)"
        )
    })
}

fn attempts(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Run a whole transaction again when the server chose it as a deadlock
/// victim (it was rolled back entirely, so running it again is safe).
async fn retry_deadlock<T, F, Fut>(mut run: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    const TRIES: usize = 3;
    let mut tries = 1;
    loop {
        match run().await {
            Err(StoreError::Database { source, .. }) if tries < TRIES && is_deadlock(&source) => {
                tries += 1;
            }
            result => return result,
        }
    }
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    /// `ER_LOCK_DEADLOCK`
    const DEADLOCK: u16 = 1213;
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|d| d.number() == DEADLOCK)
}

impl MysqlStore {
    async fn begin(&self) -> StoreResult<Transaction<'static, MySql>> {
        self.pool
            .begin()
            .await
            .map_err(StoreError::db("begin transaction"))
    }

    /// Run DDL on a connection of its own holding the named lock of this
    /// prefix, so two hosts starting together take turns (MySQL DDL commits
    /// by itself; the lock is what makes the script atomic to the other host).
    /// The connection is closed afterwards, which also frees the lock if the
    /// future is dropped half-way.
    async fn ddl(&self, statements: &[String], op: &'static str) -> StoreResult<()> {
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(StoreError::db(op))?;
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
            .bind(&self.t.lock_name)
            .bind(DDL_LOCK_WAIT)
            .fetch_one(&mut conn)
            .await
            .map_err(StoreError::db(op))?;
        if got != Some(1) {
            let _ = conn.close().await;
            return Err(StoreError::Database {
                operation: op,
                source: sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another host held the lock {:?} for {DDL_LOCK_WAIT} s",
                        self.t.lock_name
                    ),
                )),
            });
        }
        let mut result = Ok(());
        for stmt in statements {
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(stmt.as_str()))
                .execute(&mut conn)
                .await
            {
                result = Err(StoreError::db(op)(e));
                break;
            }
        }
        let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&self.t.lock_name)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
    }

    /// `DELETE FROM table WHERE id IN (…)` in chunks, in one transaction.
    async fn delete_ids(&self, table: &str, ids: &[Uuid], op: &'static str) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!("DELETE FROM {table} WHERE id IN ({})", id_list(chunk));
            n += exec(&mut tx, sql, op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn insert_incoming_once(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        let mut report = InsertReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let mut tx = self.begin().await?;
        commit::insert_incoming(&mut tx, &self.t, self.budget, rows, &mut report).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("insert incoming"))?;
        Ok(report)
    }

    async fn commit_once(&self, batch: &CommitBatch) -> StoreResult<()> {
        let (t, budget) = (&self.t, self.budget);
        let mut tx = self.begin().await?;
        // The order of the SQLite reference: state, new messages, marks,
        // outgoing, retries, dead letters.
        commit::write_state(&mut tx, t, budget, &batch.state_writes, &batch.state_checks).await?;
        let mut report = InsertReport::default();
        commit::insert_incoming(&mut tx, t, budget, &batch.new_incoming, &mut report).await?;
        commit::mark_handled(&mut tx, t, &batch.handled).await?;
        commit::insert_outgoing(&mut tx, t, budget, &batch.outgoing).await?;
        commit::retry(&mut tx, t, &batch.retries).await?;
        commit::dead_letters(&mut tx, t, budget, &batch.dead_letters).await?;
        tx.commit().await.map_err(StoreError::db("commit batch"))
    }
}

#[async_trait]
impl MessageStore for MysqlStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.ddl(&self.t.ddl(), "create schema").await
    }

    async fn rebuild(&self) -> StoreResult<()> {
        let mut stmts = vec![self.t.drop_statement()];
        stmts.extend(self.t.ddl());
        self.ddl(&stmts, "rebuild schema").await
    }

    async fn drop_all(&self) -> StoreResult<()> {
        self.ddl(&[self.t.drop_statement()], "drop schema").await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let [a, b, c, d, e] = &self.t.raw;
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name IN (?, ?, ?, ?, ?)",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(d)
        .bind(e)
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
        let mut out = String::from(
            "-- jasper-host message store (MySQL 8 / MariaDB 10.6+)\n\
             -- Apply to the database that storage.url names, e.g. `mariadb DATABASE < FILE`.\n",
        );
        for stmt in self.t.ddl() {
            out.push_str(&stmt);
            out.push_str(";\n");
        }
        out
    }

    async fn insert_incoming(&self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        retry_deadlock(|| self.insert_incoming_once(rows)).await
    }

    async fn claim_incoming(
        &self,
        node_id: i64,
        now: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<ClaimedRow>> {
        retry_deadlock(|| self.claim_incoming_once(node_id, now, limit_rows)).await
    }

    async fn next_scheduled(&self) -> StoreResult<Option<i64>> {
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(format!(
            "SELECT MIN(execute_at) FROM {} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0",
            self.t.incoming
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("next scheduled"))
    }

    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let op = "read state";
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT value, version FROM {} WHERE plugin = ? AND `key` = ?",
            self.t.state
        )))
        .bind(plugin.as_bytes())
        .bind(key.as_bytes())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::db(op))?;
        row.map(|r| {
            Ok(StateValue {
                value: r.try_get(0).map_err(StoreError::db(op))?,
                version: r.try_get(1).map_err(StoreError::db(op))?,
            })
        })
        .transpose()
    }

    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        retry_deadlock(|| self.commit_once(batch)).await
    }

    async fn claim_outgoing(
        &self,
        node_id: i64,
        limit_rows: usize,
    ) -> StoreResult<Vec<OutgoingRow>> {
        retry_deadlock(|| self.claim_outgoing_once(node_id, limit_rows)).await
    }

    async fn delete_outgoing(&self, ids: &[Uuid]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete_ids(&self.t.outgoing, ids, "delete outgoing")
            .await
    }

    async fn delete_expired_handled(&self, now: i64, limit_rows: usize) -> StoreResult<u64> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE status = '{STATUS_HANDLED}' AND keep_until <= ? ORDER BY keep_until, id LIMIT ?",
            self.t.incoming
        )))
        .bind(now)
        .bind(limit(limit_rows))
        .execute(&self.pool)
        .await
        .map_err(StoreError::db("delete expired handled"))?
        .rows_affected();
        Ok(n)
    }

    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (node_id, name, started_at, heartbeat_at, listeners) VALUES (?, ?, ?, ?, '')",
            self.t.nodes
        )))
        .bind(node_id)
        .bind(name)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(StoreError::db("register node"))?;
        Ok(())
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET heartbeat_at = ? WHERE node_id = ?",
            self.t.nodes
        )))
        .bind(now)
        .bind(node_id)
        .execute(&self.pool)
        .await
        .map_err(StoreError::db("heartbeat"))?;
        Ok(())
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE node_id = ?",
            self.t.nodes
        )))
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
        self.release_dead_nodes_tx(self_id, same_name, stale_before)
            .await
    }

    async fn release_all(&self) -> StoreResult<u64> {
        let op = "release owned rows";
        let mut tx = self.begin().await?;
        let mut n = 0;
        for table in [&self.t.incoming, &self.t.outgoing] {
            let sql = format!("UPDATE {table} SET owner_id = 0 WHERE owner_id <> 0");
            n += exec(&mut tx, sql, op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let op = "counts";
        let (inc, out, dl) = (&self.t.incoming, &self.t.outgoing, &self.t.dead_letters);
        let count = |from: &str, filter: &str| {
            format!("CAST((SELECT COUNT(*) FROM {from}{filter}) AS SIGNED)")
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {}, {}, {}, {}, {}",
            count(inc, &format!(" WHERE status = '{STATUS_INCOMING}'")),
            count(inc, &format!(" WHERE status = '{STATUS_SCHEDULED}'")),
            count(inc, &format!(" WHERE status = '{STATUS_HANDLED}'")),
            count(out, ""),
            count(dl, ""),
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db(op))?;
        let get = |i: usize| row.try_get::<i64, _>(i).map_err(StoreError::db(op));
        Ok(Counts {
            incoming: get(0)?,
            scheduled: get(1)?,
            handled: get(2)?,
            outgoing: get(3)?,
            dead_letters: get(4)?,
        })
    }

    async fn dead_letters(&self, limit_rows: usize) -> StoreResult<Vec<DeadLetter>> {
        let op = "list dead letters";
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} ORDER BY failed_at, id LIMIT ?",
            self.t.dead_letters
        )))
        .bind(limit(limit_rows))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::db(op))?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(StoreError::db(op))?;
                Ok(DeadLetter {
                    id: parse_id(&id)?,
                    message_type: r.try_get(1).map_err(StoreError::db(op))?,
                    received_at: r.try_get(2).map_err(StoreError::db(op))?,
                    source: r.try_get(3).map_err(StoreError::db(op))?,
                    error_kind: r.try_get(4).map_err(StoreError::db(op))?,
                    error_message: r.try_get(5).map_err(StoreError::db(op))?,
                    failed_at: r.try_get(6).map_err(StoreError::db(op))?,
                    attempts: attempts(r.try_get(7).map_err(StoreError::db(op))?),
                    replayable: r.try_get(8).map_err(StoreError::db(op))?,
                    body: r.try_get(9).map_err(StoreError::db(op))?,
                })
            })
            .collect()
    }

    async fn replay_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        self.replay_tx(ids).await
    }

    async fn purge_dead_letters(&self, ids: &[Uuid]) -> StoreResult<u64> {
        let op = "purge dead letters";
        if ids.is_empty() {
            let mut conn = self.pool.acquire().await.map_err(StoreError::db(op))?;
            return exec(
                &mut conn,
                format!("DELETE FROM {}", self.t.dead_letters),
                op,
            )
            .await;
        }
        self.delete_ids(&self.t.dead_letters, ids, op).await
    }

    async fn clear(&self) -> StoreResult<()> {
        let op = "clear messages";
        let t = &self.t;
        let mut tx = self.begin().await?;
        for table in [&t.incoming, &t.outgoing, &t.dead_letters] {
            exec(&mut tx, format!("DELETE FROM {table}"), op).await?;
        }
        tx.commit().await.map_err(StoreError::db(op))
    }
}

#[cfg(test)]
mod tests {
    use super::too_old;

    #[test]
    fn servers_without_skip_locked_are_named() {
        assert_eq!(too_old("10.11.19-MariaDB-0+deb12u1"), None);
        assert_eq!(too_old("8.0.36"), None);
        assert_eq!(too_old("9.1.0"), None);
        assert_eq!(too_old("weird"), None);
        assert!(too_old("10.5.8-MariaDB").is_some_and(|m| m.contains("MariaDB 10.6+")));
        assert!(too_old("5.7.44-log").is_some_and(|m| m.contains("MySQL 5.7.44-log")));
    }
}
