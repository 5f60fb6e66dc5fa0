//! The set-based statements of a group commit (and of `insert_incoming`):
//! multi-row inserts in chunks, one `UPDATE … WHERE id IN (…)` per chunk of
//! marks, version checks with one locking read over the touched state keys.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::{AssertSqlSafe, QueryBuilder, Row};
use uuid::Uuid;

use super::super::{
    DeadLetter, InsertReport, NewIncoming, NewOutgoing, RetryMark, STATUS_HANDLED, STATUS_INCOMING,
    STATUS_SCHEDULED, StateCheck, StateWrite, StoreError, StoreResult,
};
use super::schema::{CHUNK, Tables, chunks, id_list, parse_id};

/// How often a multi-row insert is tried again when a concurrent transaction
/// committed one of its ids between the duplicate check and the insert.
const INSERT_TRIES: usize = 4;
/// State keys per locking read or delete (two parameters each).
const KEY_CHUNK: usize = 200;
/// A generous allowance for a row's fixed-size columns and encoding overhead.
const ROW_OVERHEAD: usize = 128;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Run an inlined statement (ids and integers only) as a plain text query.
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

/// The ids of `table` among `ids`, locked for this transaction.
pub(super) async fn locked_ids<'a>(
    conn: &mut MySqlConnection,
    table: &str,
    ids: impl IntoIterator<Item = &'a Uuid>,
    operation: &'static str,
) -> StoreResult<HashSet<Uuid>> {
    let list = id_list(ids);
    if list.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT id FROM {table} WHERE id IN ({list}) FOR UPDATE"
    )))
    .fetch_all(conn)
    .await
    .map_err(StoreError::db(operation))?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0).map_err(StoreError::db(operation))?;
            parse_id(&id)
        })
        .collect()
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
            let fresh: Vec<&NewIncoming> = candidates
                .iter()
                .copied()
                .filter(|r| !existing.contains(&r.id))
                .collect();
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
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "INSERT INTO {} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) ",
        t.incoming
    ));
    qb.push_values(rows, |mut b, row| {
        b.push_bind(row.id.to_string())
            .push_bind(row.status())
            .push_bind(row.owner_id)
            .push_bind(row.execute_at)
            .push_bind(i64::from(row.attempts))
            .push_bind(row.message_type.as_str())
            .push_bind(row.destination.as_str())
            .push_bind(row.body.as_slice());
    });
    qb.build().execute(conn).await.map(|_| ())
}

/// Insert outgoing rows; an existing id (or a second copy in `rows`) is kept
/// as it is.
pub(super) async fn insert_outgoing(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    rows: &[NewOutgoing],
) -> StoreResult<()> {
    let size =
        |r: &NewOutgoing| r.body.len() + r.message_type.len() + r.destination.len() + ROW_OVERHEAD;
    for chunk in chunks(rows, budget, size) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "INSERT INTO {} (id, owner_id, destination, deliver_by, attempts, message_type, body) ",
            t.outgoing
        ));
        qb.push_values(chunk, |mut b, row| {
            b.push_bind(row.id.to_string())
                .push_bind(row.owner_id)
                .push_bind(row.destination.as_str())
                .push_bind(row.deliver_by)
                .push_bind(i64::from(row.attempts))
                .push_bind(row.message_type.as_str())
                .push_bind(row.body.as_slice());
        });
        qb.push(" ON DUPLICATE KEY UPDATE id = id");
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db("insert outgoing"))?;
    }
    Ok(())
}

/// Mark rows handled: one statement per keep time and chunk of ids.
pub(super) async fn mark_handled(
    conn: &mut MySqlConnection,
    t: &Tables,
    handled: &[(Uuid, i64)],
) -> StoreResult<()> {
    let mut by_keep: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for (id, keep) in handled {
        by_keep.entry(*keep).or_default().push(*id);
    }
    for (keep, ids) in by_keep {
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {} SET status = '{STATUS_HANDLED}', keep_until = {keep}, owner_id = 0 WHERE id IN ({})",
                t.incoming,
                id_list(chunk)
            );
            exec(conn, sql, "mark handled").await?;
        }
    }
    Ok(())
}

/// Hand failed rows back for another attempt: one `UPDATE … CASE id …` per
/// chunk. When an id appears twice, the last mark wins (as if applied in order).
pub(super) async fn retry(
    conn: &mut MySqlConnection,
    t: &Tables,
    retries: &[RetryMark],
) -> StoreResult<()> {
    let mut last: HashMap<Uuid, usize> = HashMap::with_capacity(retries.len());
    for (i, r) in retries.iter().enumerate() {
        last.insert(r.id, i);
    }
    let marks: Vec<&RetryMark> = retries
        .iter()
        .enumerate()
        .filter(|(i, r)| last.get(&r.id) == Some(i))
        .map(|(_, r)| r)
        .collect();
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
            t.incoming,
            id_list(chunk.iter().map(|r| &r.id))
        );
        exec(conn, sql, "retry").await?;
    }
    Ok(())
}

/// Move failed rows to dead letters: one `DELETE` per chunk of ids, then a
/// multi-row upsert (a dead letter already there takes the new failure).
pub(super) async fn dead_letters(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    dead: &[DeadLetter],
) -> StoreResult<()> {
    let op = "dead-letter";
    for chunk in dead.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM {} WHERE id IN ({})",
            t.incoming,
            id_list(chunk.iter().map(|d| &d.id))
        );
        exec(conn, sql, op).await?;
    }
    let size = |d: &DeadLetter| {
        d.body.len()
            + d.message_type.len()
            + d.received_at.len()
            + d.source.as_ref().map_or(0, String::len)
            + d.error_kind.len()
            + d.error_message.len()
            + ROW_OVERHEAD
    };
    for chunk in chunks(dead, budget, size) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "INSERT INTO {} (id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) ",
            t.dead_letters
        ));
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(d.id.to_string())
                .push_bind(d.message_type.as_str())
                .push_bind(d.received_at.as_str())
                .push_bind(d.source.as_deref())
                .push_bind(d.error_kind.as_str())
                .push_bind(d.error_message.as_str())
                .push_bind(d.failed_at)
                .push_bind(i64::from(d.attempts))
                .push_bind(d.replayable)
                .push_bind(d.body.as_slice());
        });
        qb.push(
            " ON DUPLICATE KEY UPDATE error_kind = VALUES(error_kind), error_message = VALUES(error_message), \
             failed_at = VALUES(failed_at), attempts = VALUES(attempts), body = VALUES(body)",
        );
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db(op))?;
    }
    Ok(())
}

type Key<'a> = (&'a str, &'a str);

/// Does the version found (`None`: absent) match the version a batch read
/// (0: absent)?
fn version_matches(found: Option<i64>, expected: i64) -> bool {
    match found {
        None => expected == 0,
        Some(v) => expected != 0 && v == expected,
    }
}

fn stale(plugin: &str, key: &str, expected: i64) -> StoreError {
    StoreError::StaleState {
        plugin: plugin.to_string(),
        key: key.to_string(),
        expected,
    }
}

/// Apply state writes and checks. Every version-checked key is read with one
/// locking read (`FOR UPDATE`, so it cannot change before the commit), any
/// mismatch fails with [`StoreError::StaleState`], then the writes go as one
/// multi-row upsert, one multi-row insert (keys that were absent) and one
/// delete. A key written twice in one batch (the host never does) goes to a
/// later round, so the outcome is that of applying the writes in order.
pub(super) async fn write_state(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    writes: &[StateWrite],
    checks: &[StateCheck],
) -> StoreResult<()> {
    let mut rounds: Vec<Vec<&StateWrite>> = vec![Vec::new()];
    let mut times: HashMap<Key, usize> = HashMap::with_capacity(writes.len());
    for w in writes {
        let n = times.entry((&w.plugin, &w.key)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        if let Some(round) = rounds.get_mut(*n) {
            round.push(w);
        }
        *n += 1;
    }
    for (i, round) in rounds.iter().enumerate() {
        let checks = if i == 0 { checks } else { &[] };
        write_round(conn, t, budget, round, checks).await?;
    }
    Ok(())
}

async fn write_round(
    conn: &mut MySqlConnection,
    t: &Tables,
    budget: usize,
    writes: &[&StateWrite],
    checks: &[StateCheck],
) -> StoreResult<()> {
    let op = "commit state";
    let mut keys: Vec<Key> = checks
        .iter()
        .map(|c| (c.plugin.as_str(), c.key.as_str()))
        .chain(
            writes
                .iter()
                .filter(|w| w.expected_version.is_some())
                .map(|w| (w.plugin.as_str(), w.key.as_str())),
        )
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let found = lock_versions(conn, t, &keys, op).await?;
    let version = |plugin: &str, key: &str| {
        found
            .get(&(plugin.as_bytes().to_vec(), key.as_bytes().to_vec()))
            .copied()
    };
    for c in checks {
        if !version_matches(version(&c.plugin, &c.key), c.expected_version) {
            return Err(stale(&c.plugin, &c.key, c.expected_version));
        }
    }
    for w in writes {
        if let Some(e) = w.expected_version
            && !version_matches(version(&w.plugin, &w.key), e)
        {
            return Err(stale(&w.plugin, &w.key, e));
        }
    }

    // Present (or not checked): insert or bump. Checked rows are locked, so
    // the upsert finds them exactly as read.
    let upserts: Vec<&StateWrite> = writes
        .iter()
        .copied()
        .filter(|w| w.value.is_some() && w.expected_version != Some(0))
        .collect();
    upsert_state(conn, t, budget, &upserts, true)
        .await
        .map_err(StoreError::db(op))?;

    // Absent when read: a plain insert, so that a key another transaction
    // created meanwhile (absent keys take no lock) fails as stale.
    let inserts: Vec<&StateWrite> = writes
        .iter()
        .copied()
        .filter(|w| w.value.is_some() && w.expected_version == Some(0))
        .collect();
    if let Err(e) = upsert_state(conn, t, budget, &inserts, false).await {
        if !is_unique_violation(&e) {
            return Err(StoreError::db(op)(e));
        }
        let keys: Vec<Key> = inserts
            .iter()
            .map(|w| (w.plugin.as_str(), w.key.as_str()))
            .collect();
        let now = lock_versions(conn, t, &keys, op).await?;
        let culprit = inserts
            .iter()
            .find(|w| now.contains_key(&(w.plugin.as_bytes().to_vec(), w.key.as_bytes().to_vec())))
            .or(inserts.first());
        return Err(match culprit {
            Some(w) => stale(&w.plugin, &w.key, 0),
            None => StoreError::db(op)(e),
        });
    }

    // Deletes; one checked against 0 (absent when read) is already done.
    let deletes: Vec<Key> = writes
        .iter()
        .filter(|w| w.value.is_none() && w.expected_version != Some(0))
        .map(|w| (w.plugin.as_str(), w.key.as_str()))
        .collect();
    for chunk in deletes.chunks(KEY_CHUNK) {
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new(format!("DELETE FROM {} WHERE ", t.state));
        push_keys(&mut qb, chunk);
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db(op))?;
    }
    Ok(())
}

/// `(plugin = ? AND `key` = ?) OR …`: a range read of the primary key on
/// MySQL and MariaDB alike (row-constructor `IN` is not optimised everywhere).
fn push_keys(qb: &mut QueryBuilder<MySql>, keys: &[Key]) {
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
    keys: &[Key<'_>],
    op: &'static str,
) -> StoreResult<HashMap<(Vec<u8>, Vec<u8>), i64>> {
    let mut out = HashMap::new();
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
            let plugin: Vec<u8> = r.try_get(0).map_err(StoreError::db(op))?;
            let key: Vec<u8> = r.try_get(1).map_err(StoreError::db(op))?;
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
