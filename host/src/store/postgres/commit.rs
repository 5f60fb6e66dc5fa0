//! The group commit of the PostgreSQL store and the inbox insert it shares
//! with `insert_incoming`: every part of a batch is one set-based statement
//! (`unnest` of parallel arrays, `= ANY(array)`), whatever the batch size, all
//! inside the caller's transaction. Same outcome as the SQLite store's
//! statement-by-statement commit, including for repeated ids in one batch.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use super::sql::Statements;
use super::{parse_id, q};
use crate::store::{
    CommitBatch, DeadLetter, InsertReport, NewIncoming, NewOutgoing, StateCheck, StateWrite,
    StoreError, StoreResult,
};

const OP: &str = "commit batch";

/// Everything of a batch, in the SQLite store's order: state checks and
/// writes, new incoming rows, handled marks, outgoing rows, retries, dead letters.
pub(super) async fn commit(
    conn: &mut PgConnection,
    sql: &Statements,
    batch: &CommitBatch,
) -> StoreResult<()> {
    apply_state(conn, sql, &batch.state_checks, &batch.state_writes).await?;
    insert_incoming(conn, sql, &batch.new_incoming, OP).await?;
    mark_handled(conn, sql, &batch.handled).await?;
    insert_outgoing(conn, sql, &batch.outgoing).await?;
    retry(conn, sql, batch).await?;
    dead_letters(conn, sql, &batch.dead_letters).await
}

/// Insert incoming rows with one statement; an id already present (or
/// earlier in `rows`) is skipped and reported as a duplicate.
pub(super) async fn insert_incoming(
    conn: &mut PgConnection,
    sql: &Statements,
    rows: &[NewIncoming],
    op: &'static str,
) -> StoreResult<InsertReport> {
    let mut report = InsertReport::default();
    if rows.is_empty() {
        return Ok(report);
    }
    let inserted: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.insert_incoming.clone()))
        .bind(ids(rows.iter().map(|r| r.id)))
        .bind(col(rows, |r| r.owner_id))
        .bind(col(rows, |r| r.execute_at))
        .bind(col(rows, |r| i64::from(r.attempts)))
        .bind(col(rows, |r| r.message_type.as_str()))
        .bind(col(rows, |r| r.destination.as_str()))
        .bind(col(rows, |r| r.body.as_slice()))
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::db(op))?;
    report.inserted = inserted.len();
    if inserted.len() < rows.len() {
        // Every row not returned is a duplicate, including a second copy of
        // an id inside this very statement.
        let mut fresh = inserted
            .iter()
            .map(|id| parse_id(id))
            .collect::<StoreResult<HashSet<Uuid>>>()?;
        report.duplicates = rows
            .iter()
            .map(|r| r.id)
            .filter(|id| !fresh.remove(id))
            .collect();
    }
    Ok(report)
}

/// One column of a batch, as an array to bind.
fn col<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

fn ids(ids: impl Iterator<Item = Uuid>) -> Vec<String> {
    ids.map(|id| id.to_string()).collect()
}

/// One statement per distinct keep window (normally one).
async fn mark_handled(
    conn: &mut PgConnection,
    sql: &Statements,
    handled: &[(Uuid, i64)],
) -> StoreResult<()> {
    let mut by_keep: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (id, keep) in handled {
        by_keep.entry(*keep).or_default().push(id.to_string());
    }
    for (keep, ids) in by_keep {
        q(&sql.mark_handled)
            .bind(keep)
            .bind(ids)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db("mark handled"))?;
    }
    Ok(())
}

async fn insert_outgoing(
    conn: &mut PgConnection,
    sql: &Statements,
    rows: &[NewOutgoing],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    q(&sql.insert_outgoing)
        .bind(ids(rows.iter().map(|r| r.id)))
        .bind(col(rows, |r| r.owner_id))
        .bind(col(rows, |r| r.destination.as_str()))
        .bind(col(rows, |r| r.deliver_by))
        .bind(col(rows, |r| i64::from(r.attempts)))
        .bind(col(rows, |r| r.message_type.as_str()))
        .bind(col(rows, |r| r.body.as_slice()))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::db("insert outgoing"))?;
    Ok(())
}

/// One `UPDATE … FROM unnest`. A repeated id keeps its last mark, as
/// statement-by-statement updates would.
async fn retry(conn: &mut PgConnection, sql: &Statements, batch: &CommitBatch) -> StoreResult<()> {
    if batch.retries.is_empty() {
        return Ok(());
    }
    let mut at: HashMap<Uuid, usize> = HashMap::new();
    let mut marks = Vec::with_capacity(batch.retries.len());
    for r in &batch.retries {
        if let Some(slot) = at.get(&r.id).and_then(|&i| marks.get_mut(i)) {
            *slot = r;
        } else {
            at.insert(r.id, marks.len());
            marks.push(r);
        }
    }
    q(&sql.retry)
        .bind(ids(marks.iter().map(|r| r.id)))
        .bind(col(&marks, |r| i64::from(r.attempts)))
        .bind(col(&marks, |r| r.execute_at))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::db(OP))?;
    Ok(())
}

/// Delete from the inbox and upsert into dead letters, one statement each. A
/// repeated id becomes one row: the columns an upsert keeps come from its
/// first copy, the ones it overwrites from its last.
async fn dead_letters(
    conn: &mut PgConnection,
    sql: &Statements,
    dead: &[DeadLetter],
) -> StoreResult<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let mut at: HashMap<Uuid, usize> = HashMap::new();
    let mut rows: Vec<(&DeadLetter, &DeadLetter)> = Vec::with_capacity(dead.len());
    for d in dead {
        if let Some(slot) = at.get(&d.id).and_then(|&i| rows.get_mut(i)) {
            slot.1 = d;
        } else {
            at.insert(d.id, rows.len());
            rows.push((d, d));
        }
    }
    let id_list = ids(rows.iter().map(|(f, _)| f.id));
    q(&sql.delete_incoming)
        .bind(&id_list)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::db(OP))?;
    q(&sql.insert_dead)
        .bind(&id_list)
        .bind(col(&rows, |(f, _)| f.message_type.as_str()))
        .bind(col(&rows, |(f, _)| f.received_at.as_str()))
        .bind(col(&rows, |(f, _)| f.source.as_deref()))
        .bind(col(&rows, |(_, l)| l.error_kind.as_str()))
        .bind(col(&rows, |(_, l)| l.error_message.as_str()))
        .bind(col(&rows, |(_, l)| l.failed_at))
        .bind(col(&rows, |(_, l)| i64::from(l.attempts)))
        .bind(col(&rows, |(f, _)| f.replayable))
        .bind(col(&rows, |(_, l)| l.body.as_slice()))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::db(OP))?;
    Ok(())
}

/// State checks and writes. Writes are applied in rounds of distinct keys
/// (the n-th write of a key goes into round n), which gives the outcome of
/// applying them one by one; a batch from the host has one round.
async fn apply_state(
    conn: &mut PgConnection,
    sql: &Statements,
    checks: &[StateCheck],
    writes: &[StateWrite],
) -> StoreResult<()> {
    let mut rounds: Vec<Vec<&StateWrite>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for w in writes {
        let n = seen.entry((&w.plugin, &w.key)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        if let Some(round) = rounds.get_mut(*n) {
            round.push(w);
        }
        *n += 1;
    }
    if rounds.is_empty() && !checks.is_empty() {
        rounds.push(Vec::new());
    }
    for (i, round) in rounds.iter().enumerate() {
        let checks = if i == 0 { checks } else { &[] };
        state_round(conn, sql, checks, round).await?;
    }
    Ok(())
}

fn stale(plugin: &str, key: &str, expected: i64) -> StoreError {
    StoreError::StaleState {
        plugin: plugin.to_owned(),
        key: key.to_owned(),
        expected,
    }
}

/// Keys returned by a `RETURNING plugin, key`.
fn returned_keys(rows: &[PgRow]) -> StoreResult<HashSet<(String, String)>> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(StoreError::db(OP))?,
                r.try_get(1).map_err(StoreError::db(OP))?,
            ))
        })
        .collect()
}

/// The first write of `expected` whose key is not in `done`, as a stale error.
fn first_missing(writes: &[&StateWrite], done: &HashSet<(String, String)>) -> StoreResult<()> {
    match writes
        .iter()
        .find(|w| !done.contains(&(w.plugin.clone(), w.key.clone())))
    {
        Some(w) => Err(stale(&w.plugin, &w.key, w.expected_version.unwrap_or(0))),
        None => Ok(()),
    }
}

/// Lock the rows of every key involved (one global order), compare versions
/// in memory, then apply each kind of write with one statement.
async fn state_round(
    conn: &mut PgConnection,
    sql: &Statements,
    checks: &[StateCheck],
    writes: &[&StateWrite],
) -> StoreResult<()> {
    let plugins: Vec<&str> = checks
        .iter()
        .map(|c| c.plugin.as_str())
        .chain(writes.iter().map(|w| w.plugin.as_str()))
        .collect();
    let keys: Vec<&str> = checks
        .iter()
        .map(|c| c.key.as_str())
        .chain(writes.iter().map(|w| w.key.as_str()))
        .collect();
    let locked = q(&sql.state_lock)
        .bind(plugins)
        .bind(keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::db(OP))?;
    let mut versions: HashMap<(String, String), i64> = HashMap::with_capacity(locked.len());
    for r in &locked {
        let plugin: String = r.try_get(0).map_err(StoreError::db(OP))?;
        let key: String = r.try_get(1).map_err(StoreError::db(OP))?;
        versions.insert((plugin, key), r.try_get(2).map_err(StoreError::db(OP))?);
    }
    let current = |plugin: &str, key: &str| {
        versions
            .get(&(plugin.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for c in checks {
        if current(&c.plugin, &c.key) != c.expected_version {
            return Err(stale(&c.plugin, &c.key, c.expected_version));
        }
    }
    for w in writes {
        if let Some(e) = w.expected_version
            && current(&w.plugin, &w.key) != e
        {
            return Err(stale(&w.plugin, &w.key, e));
        }
    }

    // Each kind in key order, so that concurrent commits inserting the same
    // new keys take their locks in the same order.
    let kind = |value: bool, expected: fn(Option<i64>) -> bool| -> Vec<&StateWrite> {
        let mut ws: Vec<&StateWrite> = writes
            .iter()
            .copied()
            .filter(|w| w.value.is_some() == value && expected(w.expected_version))
            .collect();
        ws.sort_by(|a, b| (&a.plugin, &a.key).cmp(&(&b.plugin, &b.key)));
        ws
    };
    let upserts = kind(true, |e| e.is_none());
    let inserts = kind(true, |e| e == Some(0));
    let updates = kind(true, |e| matches!(e, Some(v) if v != 0));
    let deletes = kind(false, |e| e.is_none());
    let checked_deletes = kind(false, |e| matches!(e, Some(v) if v != 0));
    // A delete of a key read as absent was checked above: nothing to do.

    if !upserts.is_empty() {
        q(&sql.state_upsert)
            .bind(col(&upserts, |w| w.plugin.as_str()))
            .bind(col(&upserts, |w| w.key.as_str()))
            .bind(col(&upserts, |w| w.value.as_deref().unwrap_or_default()))
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db(OP))?;
    }
    if !inserts.is_empty() {
        // Absent when locked, but a concurrent commit may insert the key
        // meanwhile: RETURNING tells.
        let rows = q(&sql.state_insert_new)
            .bind(col(&inserts, |w| w.plugin.as_str()))
            .bind(col(&inserts, |w| w.key.as_str()))
            .bind(col(&inserts, |w| w.value.as_deref().unwrap_or_default()))
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db(OP))?;
        if rows.len() < inserts.len() {
            first_missing(&inserts, &returned_keys(&rows)?)?;
        }
    }
    if !updates.is_empty() {
        let rows = q(&sql.state_update_checked)
            .bind(col(&updates, |w| w.plugin.as_str()))
            .bind(col(&updates, |w| w.key.as_str()))
            .bind(col(&updates, |w| w.value.as_deref().unwrap_or_default()))
            .bind(col(&updates, |w| w.expected_version.unwrap_or(0)))
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db(OP))?;
        if rows.len() < updates.len() {
            first_missing(&updates, &returned_keys(&rows)?)?;
        }
    }
    if !checked_deletes.is_empty() {
        let rows = q(&sql.state_delete_checked)
            .bind(col(&checked_deletes, |w| w.plugin.as_str()))
            .bind(col(&checked_deletes, |w| w.key.as_str()))
            .bind(col(&checked_deletes, |w| w.expected_version.unwrap_or(0)))
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::db(OP))?;
        if rows.len() < checked_deletes.len() {
            first_missing(&checked_deletes, &returned_keys(&rows)?)?;
        }
    }
    if !deletes.is_empty() {
        q(&sql.state_delete)
            .bind(col(&deletes, |w| w.plugin.as_str()))
            .bind(col(&deletes, |w| w.key.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(StoreError::db(OP))?;
    }
    Ok(())
}
