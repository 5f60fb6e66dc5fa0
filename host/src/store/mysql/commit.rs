//! The state reads of the MySQL/MariaDB store and its steps of the shared
//! group commit and maintenance sequences (`store/commit.rs`,
//! `store/maintenance.rs`): multi-row inserts in chunks that fit the packet
//! size, one `UPDATE … WHERE id IN (…)` per chunk of marks, one locking read
//! over the state keys a round touches.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::MysqlStore;
use super::schema::{Tables, chunks};
use crate::store::commit::{CommitSteps, DeadLetterRow, StateKey, Versions, by_claim};
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::StateReader;
use crate::store::maintenance::{MaintenanceSteps, NodeSweep, OWNED, Table};
use crate::store::rows::{
    FencedRow, Held, InsertReport, NewIncoming, NewOutgoing, RetryMark, STATUS_HANDLED,
    STATUS_INCOMING, STATUS_SCHEDULED, StateValue, StateWrite,
};
use crate::store::shared::{
    self, CHUNK, Columns, incoming_values, inline_ids, outgoing_values, run,
};

/// How often a multi-row insert is tried again when a concurrent transaction
/// committed one of its ids between the duplicate check and the insert.
const INSERT_TRIES: usize = 4;
/// State keys per locking read or delete (two parameters each).
const KEY_CHUNK: usize = 200;
/// A generous allowance for a row's fixed-size columns and encoding overhead.
const ROW_OVERHEAD: usize = 128;

/// One write transaction.
pub(crate) struct MysqlTx {
    pub(super) tx: Transaction<'static, MySql>,
    pub(super) t: Arc<Tables>,
    pub(super) budget: usize,
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Run an inlined statement (ids and integers only) as a plain text query,
/// which fills no prepared-statement cache.
pub(super) async fn exec(
    conn: &mut MySqlConnection,
    sql: String,
    operation: &'static str,
) -> StoreResult<u64> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(StoreError::db(operation))
}

fn len_u64<T>(items: &[T]) -> u64 {
    u64::try_from(items.len()).unwrap_or(u64::MAX)
}

/// The ids of `table` among `ids`, locked for this transaction.
pub(super) async fn locked_ids<'a>(
    conn: &mut MySqlConnection,
    table: &str,
    ids: impl IntoIterator<Item = &'a Uuid>,
    operation: &'static str,
) -> StoreResult<HashSet<Uuid>> {
    let list = inline_ids(ids);
    if list.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT id FROM {table} WHERE id IN ({list}) FOR UPDATE"
    )))
    .fetch_all(conn)
    .await
    .map_err(StoreError::db(operation))?;
    rows.iter().map(|r| r.id(0, operation)).collect()
}

/// Insert incoming rows; every row not inserted (an id already present, or a
/// second copy of an id earlier in `rows`) is reported as a duplicate, in order.
///
/// Per chunk: one locking read of the ids already present, then one plain
/// multi-row `INSERT` of the rest. A plain insert (not `INSERT IGNORE`, which
/// also turns other errors into warnings) that still meets a duplicate, because
/// another transaction committed the id in between, fails as a statement only;
/// the chunk is then checked and inserted again, so the report stays exact.
pub(super) async fn insert_incoming(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    rows: &[NewIncoming],
    report: &mut InsertReport,
) -> StoreResult<()> {
    let op = "insert incoming";
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(rows.len());
    let size =
        |r: &NewIncoming| r.body.len() + r.message_type.len() + r.destination.len() + ROW_OVERHEAD;
    for chunk in chunks(rows, budget, size) {
        let first: Vec<bool> = chunk.iter().map(|r| seen.insert(r.id)).collect();
        let candidates: Vec<&NewIncoming> = chunk
            .iter()
            .zip(&first)
            .filter_map(|(r, f)| f.then_some(r))
            .collect();
        let mut tries = 0;
        let existing = loop {
            let existing =
                locked_ids(conn, &t.incoming, candidates.iter().map(|r| &r.id), op).await?;
            let mut fresh: Vec<&NewIncoming> = candidates
                .iter()
                .copied()
                .filter(|r| !existing.contains(&r.id))
                .collect();
            // In id order: two transactions inserting the same ids take
            // their locks in one order, so they wait instead of deadlocking.
            fresh.sort_by_key(|r| r.id);
            if fresh.is_empty() {
                break existing;
            }
            match insert_incoming_rows(conn, t, &fresh).await {
                Ok(()) => break existing,
                Err(e) if is_unique_violation(&e) && tries + 1 < INSERT_TRIES => tries += 1,
                Err(e) => return Err(StoreError::db(op)(e)),
            }
        };
        for (r, first) in chunk.iter().zip(first) {
            if first && !existing.contains(&r.id) {
                report.inserted += 1;
            } else {
                report.duplicates.push(r.id);
            }
        }
    }
    Ok(())
}

async fn insert_incoming_rows(
    conn: &mut MySqlConnection,
    t: &Tables,
    rows: &[&NewIncoming],
) -> Result<(), sqlx::Error> {
    let mut qb = incoming_values::<MySql>(&t.incoming, rows.iter().copied());
    qb.build().execute(conn).await.map(|_| ())
}

#[async_trait]
impl CommitSteps for MysqlTx {
    async fn lock_claimed(&mut self, ids: &[Uuid]) -> StoreResult<Vec<FencedRow>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, owner_id, attempts, status FROM {} WHERE id IN ({}) ORDER BY id FOR UPDATE",
                self.t.incoming,
                inline_ids(chunk)
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::db("fence claimed rows"))?;
            found.extend(shared::fenced_rows(&rows)?);
        }
        Ok(found)
    }

    async fn lock_versions(&mut self, keys: &[StateKey<'_>]) -> StoreResult<Versions> {
        lock_versions(&mut self.tx, &self.t, keys, "commit state").await
    }

    async fn upsert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        upsert_state(&mut self.tx, &self.t, self.budget, writes, true)
            .await
            .map_err(StoreError::db("commit state"))?;
        // `ON DUPLICATE KEY` counts 2 per updated row; every write went in.
        Ok(len_u64(writes))
    }

    /// A plain insert, so that a key another transaction created meanwhile
    /// (absent keys take no lock) fails it: fewer rows than asked.
    async fn insert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        match upsert_state(&mut self.tx, &self.t, self.budget, writes, false).await {
            Ok(()) => Ok(len_u64(writes)),
            Err(e) if is_unique_violation(&e) => Ok(0),
            Err(e) => Err(StoreError::db("commit state")(e)),
        }
    }

    /// The rows are locked and their versions checked: an upsert that bumps
    /// them finds them exactly as read.
    async fn update_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64> {
        self.upsert_states(writes).await
    }

    /// Checked or not, a plain delete: checked rows are locked as read.
    async fn delete_states(&mut self, writes: &[&StateWrite], _checked: bool) -> StoreResult<u64> {
        let keys: Vec<StateKey<'_>> = writes
            .iter()
            .map(|w| (w.plugin.as_str(), w.key.as_str()))
            .collect();
        let mut n = 0;
        for chunk in keys.chunks(KEY_CHUNK) {
            let mut qb: QueryBuilder<MySql> =
                QueryBuilder::new(format!("DELETE FROM {} WHERE ", self.t.state));
            push_keys(&mut qb, chunk);
            n += qb
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(StoreError::db("commit state"))?
                .rows_affected();
        }
        Ok(n)
    }

    async fn insert_incoming(&mut self, rows: &[NewIncoming]) -> StoreResult<InsertReport> {
        let mut report = InsertReport::default();
        insert_incoming(&mut self.tx, &self.t, self.budget, rows, &mut report).await?;
        Ok(report)
    }

    async fn mark_handled(&mut self, keep_until: i64, ids: &[Uuid]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = {keep_until}, owner_id = 0 WHERE id IN ({})",
                self.t.incoming,
                inline_ids(chunk)
            );
            n += exec(&mut self.tx, sql, "mark handled").await?;
        }
        Ok(n)
    }

    /// Rows are locked in id order as the update finds them; a row not held
    /// at its claim is not changed (its status changes when it is, so the
    /// rows affected are the rows marked).
    async fn mark_held(
        &mut self,
        node_id: i64,
        keep_until: i64,
        rows: &[Held],
    ) -> StoreResult<u64> {
        let mut n = 0;
        for (claim, ids) in by_claim(rows) {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = {keep_until}, owner_id = 0 \
                     WHERE id IN ({}) AND owner_id = {node_id} AND status = '{STATUS_INCOMING}' AND attempts = {claim} \
                     ORDER BY id",
                    self.t.incoming,
                    inline_ids(chunk)
                );
                n += exec(&mut self.tx, sql, "fence and mark handled").await?;
            }
        }
        Ok(n)
    }

    /// An existing id is kept as it is (`ON DUPLICATE KEY UPDATE id = id`).
    async fn insert_outgoing(&mut self, rows: &[NewOutgoing]) -> StoreResult<u64> {
        let size = |r: &NewOutgoing| {
            r.body.len() + r.message_type.len() + r.destination.len() + ROW_OVERHEAD
        };
        let mut n = 0;
        for chunk in chunks(rows, self.budget, size) {
            let mut qb = outgoing_values::<MySql>(&self.t.outgoing, chunk);
            qb.push(" ON DUPLICATE KEY UPDATE id = id");
            n += run(&mut *self.tx, qb.build(), "insert outgoing").await?;
        }
        Ok(n)
    }

    /// One `UPDATE … CASE id …` per chunk.
    async fn retry(&mut self, marks: &[&RetryMark]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in marks.chunks(CHUNK) {
            let (mut attempts, mut execute_at, mut status) =
                (String::new(), String::new(), String::new());
            for r in chunk {
                let id = r.id;
                attempts.push_str(&format!(" WHEN '{id}' THEN {}", r.attempts));
                match r.execute_at {
                    Some(at) => {
                        execute_at.push_str(&format!(" WHEN '{id}' THEN {at}"));
                        status.push_str(&format!(" WHEN '{id}' THEN '{STATUS_SCHEDULED}'"));
                    }
                    None => {
                        execute_at.push_str(&format!(" WHEN '{id}' THEN NULL"));
                        status.push_str(&format!(" WHEN '{id}' THEN '{STATUS_INCOMING}'"));
                    }
                }
            }
            // Each CASE depends on `id` only: MySQL evaluates SET left to right
            // with the new values, so no expression may read an assigned column.
            let sql = format!(
                "UPDATE {} SET owner_id = 0, attempts = CASE id{attempts} END, \
             execute_at = CASE id{execute_at} END, status = CASE id{status} END \
             WHERE id IN ({})",
                self.t.incoming,
                inline_ids(chunk.iter().map(|r| &r.id))
            );
            n += exec(&mut self.tx, sql, "retry").await?;
        }
        Ok(n)
    }

    async fn delete_incoming(&mut self, ids: &[Uuid]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM {} WHERE id IN ({})",
                self.t.incoming,
                inline_ids(chunk)
            );
            n += exec(&mut self.tx, sql, "dead-letter").await?;
        }
        Ok(n)
    }

    /// A multi-row upsert per chunk (a dead letter already there takes the
    /// new failure).
    async fn upsert_dead_letters(&mut self, dead: &[DeadLetterRow<'_>]) -> StoreResult<u64> {
        let size = |d: &DeadLetterRow<'_>| {
            d.last.body.len()
                + d.first.message_type.len()
                + d.first.received_at.len()
                + d.first.source.as_ref().map_or(0, String::len)
                + d.last.error_kind.as_str().len()
                + d.last.error_message.len()
                + ROW_OVERHEAD
        };
        for chunk in chunks(dead, self.budget, size) {
            let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
                "INSERT INTO {} (id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) ",
                self.t.dead_letters
            ));
            qb.push_values(chunk, |mut b, DeadLetterRow { first, last }| {
                b.push_bind(first.id.hyphenated())
                    .push_bind(first.message_type.as_str())
                    .push_bind(first.received_at.as_str())
                    .push_bind(first.source.as_deref())
                    .push_bind(last.error_kind.as_str())
                    .push_bind(last.error_message.as_str())
                    .push_bind(last.failed_at)
                    .push_bind(i64::from(last.attempts))
                    .push_bind(first.replayable)
                    .push_bind(last.body.as_slice());
            });
            qb.push(
                " ON DUPLICATE KEY UPDATE error_kind = VALUES(error_kind), error_message = VALUES(error_message), \
                 failed_at = VALUES(failed_at), attempts = VALUES(attempts), body = VALUES(body)",
            );
            qb.build()
                .execute(&mut *self.tx)
                .await
                .map_err(StoreError::db("dead-letter"))?;
        }
        // `ON DUPLICATE KEY` counts 2 per updated row; every row went in.
        Ok(len_u64(dead))
    }

    async fn finish(self) -> StoreResult<()> {
        self.tx
            .commit()
            .await
            .map_err(StoreError::db("commit batch"))
    }
}

/// `(plugin = ? AND `key` = ?) OR …`: a range read of the primary key on
/// MySQL and MariaDB alike (row-constructor `IN` is not optimised everywhere).
fn push_keys(qb: &mut QueryBuilder<MySql>, keys: &[StateKey<'_>]) {
    for (i, (plugin, key)) in keys.iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push("(plugin = ")
            .push_bind(plugin.as_bytes())
            .push(" AND `key` = ")
            .push_bind(key.as_bytes())
            .push(")");
    }
}

/// The versions of `keys` that exist, locked for this transaction.
async fn lock_versions(
    conn: &mut MySqlConnection,
    t: &Tables,
    keys: &[StateKey<'_>],
    op: &'static str,
) -> StoreResult<Versions> {
    let mut out = Versions::new();
    for chunk in keys.chunks(KEY_CHUNK) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "SELECT plugin, `key`, version FROM {} WHERE ",
            t.state
        ));
        push_keys(&mut qb, chunk);
        qb.push(" FOR UPDATE");
        let rows = qb
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db(op))?;
        for r in rows {
            // VARBINARY columns: the bytes of the strings bound.
            let plugin: Vec<u8> = r.try_get(0).map_err(StoreError::db(op))?;
            let key: Vec<u8> = r.try_get(1).map_err(StoreError::db(op))?;
            let (Ok(plugin), Ok(key)) = (String::from_utf8(plugin), String::from_utf8(key)) else {
                continue;
            };
            let version: i64 = r.try_get(2).map_err(StoreError::db(op))?;
            out.insert((plugin, key), version);
        }
    }
    Ok(out)
}

/// Multi-row insert of state values at version 1; `bump` turns an existing
/// key into value = new, version + 1.
async fn upsert_state(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    writes: &[&StateWrite],
    bump: bool,
) -> Result<(), sqlx::Error> {
    let size = |w: &&StateWrite| {
        w.plugin.len() + w.key.len() + w.value.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD
    };
    for chunk in chunks(writes, budget, size) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "INSERT INTO {} (plugin, `key`, value, version) ",
            t.state
        ));
        qb.push_values(chunk, |mut b, w| {
            b.push_bind(w.plugin.as_bytes())
                .push_bind(w.key.as_bytes())
                .push_bind(w.value.as_deref().unwrap_or_default())
                .push_bind(1_i64);
        });
        if bump {
            qb.push(" ON DUPLICATE KEY UPDATE value = VALUES(value), version = version + 1");
        }
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait]
impl MaintenanceSteps for MysqlTx {
    /// The owners are read before the live nodes: a node registers before it
    /// claims, so an owner seen here is either live in the next read or gone
    /// for good, and no row of a node that registered meanwhile is released.
    /// (One `NOT IN (SELECT … nodes)` could miss such a node under READ
    /// COMMITTED, its statement snapshot being older than its row reads.)
    async fn release_orphans(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        let op = "release dead nodes";
        let mut owners: Vec<Vec<i64>> = Vec::with_capacity(OWNED.len());
        for table in OWNED {
            owners.push(
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT DISTINCT owner_id FROM {} WHERE owner_id <> 0",
                    self.t.of(table)
                )))
                .fetch_all(&mut *self.tx)
                .await
                .map_err(StoreError::db(op))?,
            );
        }
        let (self_id, stale_before) = (sweep.self_id, sweep.stale_before);
        let q = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT node_id FROM {} WHERE node_id = {self_id} OR heartbeat_at >= {stale_before}",
            self.t.nodes
        )));
        let live: HashSet<i64> = q
            .fetch_all(&mut *self.tx)
            .await
            .map_err(StoreError::db(op))?
            .into_iter()
            .collect();
        let mut released = 0;
        for (table, owners) in OWNED.into_iter().zip(owners) {
            let orphans: Vec<String> = owners
                .iter()
                .filter(|o| !live.contains(o))
                .map(i64::to_string)
                .collect();
            if !orphans.is_empty() {
                let sql = format!(
                    "UPDATE {} SET owner_id = 0 WHERE owner_id IN ({})",
                    self.t.of(table),
                    orphans.join(",")
                );
                released += exec(&mut self.tx, sql, op).await?;
            }
        }
        Ok(released)
    }

    async fn forget_dead_nodes(&mut self, sweep: &NodeSweep) -> StoreResult<u64> {
        let (self_id, stale_before) = (sweep.self_id, sweep.stale_before);
        let q = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE node_id <> {self_id} AND heartbeat_at < {stale_before}",
            self.t.nodes
        )));
        Ok(q.execute(&mut *self.tx)
            .await
            .map_err(StoreError::db("release dead nodes"))?
            .rows_affected())
    }

    async fn release_owned(&mut self, table: Table) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE {} SET owner_id = 0 WHERE owner_id <> 0",
            self.t.of(table)
        );
        exec(&mut self.tx, sql, "release owned rows").await
    }

    async fn delete_all(&mut self, table: Table) -> StoreResult<u64> {
        let sql = format!("DELETE FROM {}", self.t.of(table));
        exec(&mut self.tx, sql, "clear messages").await
    }
}

#[async_trait]
impl StateReader for MysqlStore {
    async fn read_state(&self, plugin: &str, key: &str) -> StoreResult<Option<StateValue>> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT value, version FROM {} WHERE plugin = ? AND `key` = ?",
            self.t.state
        )))
        .bind(plugin.as_bytes())
        .bind(key.as_bytes());
        shared::state_value(shared::fetch_optional(&self.pool, query, "read state").await?)
    }
}
