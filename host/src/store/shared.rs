//! What every backend needs the same way, in one copy: decoding the store's
//! rows from a result row, the attempts and limit conversions, inlined id
//! lists, and the URL without its password for error messages.

use futures::FutureExt;
use sqlx::query_builder::Separated;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Execute, Executor, Pool, QueryBuilder, Row, Transaction,
    Type,
};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::dead_letter::DeadLetterKind;
use super::error::{StoreError, StoreResult};
use super::rows::{
    ClaimedRow, Counts, DeadLetter, FencedRow, NewIncoming, NewOutgoing, OutgoingRow, StateEntry,
    StateValue,
};

/// Rows per multi-row statement or inlined id list (SQLite and MySQL).
pub(crate) const CHUNK: usize = 500;

/// An attempts column as the count it is (never negative, at most `u32::MAX`).
pub(crate) fn attempts_of(v: i64) -> u32 {
    u32::try_from(v.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX)
}

/// A row count or limit as the `BIGINT` the databases take.
pub(crate) fn db_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `'id','id',…` for an `IN (…)` list. Uuids render as `[0-9a-f-]` only, so
/// quoting them inline is safe.
pub(crate) fn inline_ids<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> String {
    let mut out = String::new();
    for id in ids {
        if !out.is_empty() {
            out.push(',');
        }
        out.push('\'');
        out.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        out.push('\'');
    }
    out
}

/// The rows a statement affected, whatever the backend.
pub(crate) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

// These return the executor's boxed future (mapped) instead of being
// `async fn`s: a generic `async fn` over an `Executor` trips the compiler's
// "implementation of `Executor` is not general enough" when the caller's
// future must be `Send` (`async_trait`).

/// Run one statement on `executor` (a pool, a connection, a transaction's
/// connection); returns the rows it affected.
pub(crate) fn run<'e, 'c: 'e, 'q: 'e, E, Q>(
    executor: E,
    query: Q,
    op: &'static str,
) -> impl Future<Output = StoreResult<u64>> + Send + 'e
where
    E: 'e + Executor<'c>,
    Q: 'q + Execute<'q, E::Database>,
    <E::Database as Database>::QueryResult: RowsAffected,
{
    executor
        .execute(query)
        .map(move |r| r.map(|r| r.rows()).map_err(StoreError::db(op)))
}

/// Run one query on `executor`; returns its rows.
pub(crate) fn fetch_all<'e, 'c: 'e, 'q: 'e, E, Q>(
    executor: E,
    query: Q,
    op: &'static str,
) -> impl Future<Output = StoreResult<Vec<<E::Database as Database>::Row>>> + Send + 'e
where
    E: 'e + Executor<'c>,
    Q: 'q + Execute<'q, E::Database>,
{
    executor
        .fetch_all(query)
        .map(move |r| r.map_err(StoreError::db(op)))
}

/// Run one query on `executor`; returns its one row.
pub(crate) fn fetch_one<'e, 'c: 'e, 'q: 'e, E, Q>(
    executor: E,
    query: Q,
    op: &'static str,
) -> impl Future<Output = StoreResult<<E::Database as Database>::Row>> + Send + 'e
where
    E: 'e + Executor<'c>,
    Q: 'q + Execute<'q, E::Database>,
{
    executor
        .fetch_one(query)
        .map(move |r| r.map_err(StoreError::db(op)))
}

/// Run one query on `executor`; returns its row if there is one.
pub(crate) fn fetch_optional<'e, 'c: 'e, 'q: 'e, E, Q>(
    executor: E,
    query: Q,
    op: &'static str,
) -> impl Future<Output = StoreResult<Option<<E::Database as Database>::Row>>> + Send + 'e
where
    E: 'e + Executor<'c>,
    Q: 'q + Execute<'q, E::Database>,
{
    executor
        .fetch_optional(query)
        .map(move |r| r.map_err(StoreError::db(op)))
}

/// Begin a transaction on `pool`.
pub(crate) async fn begin<DB: Database>(pool: &Pool<DB>) -> StoreResult<Transaction<'static, DB>> {
    pool.begin()
        .await
        .map_err(StoreError::db("begin transaction"))
}

/// A database whose multi-row `INSERT … VALUES` takes the inbox and outbox
/// rows as they are (SQLite and MySQL; PostgreSQL binds arrays instead).
pub(crate) trait ValuesOf: Database {
    fn incoming(b: Separated<'_, Self, &'static str>, row: &NewIncoming);
    fn outgoing(b: Separated<'_, Self, &'static str>, row: &NewOutgoing);
}

impl<DB> ValuesOf for DB
where
    DB: Database,
    Hyphenated: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB>,
    for<'s> &'s [u8]: Encode<'s, DB> + Type<DB>,
{
    fn incoming(mut b: Separated<'_, Self, &'static str>, row: &NewIncoming) {
        b.push_bind(row.id.hyphenated())
            .push_bind(row.status())
            .push_bind(row.owner_id)
            .push_bind(row.execute_at)
            .push_bind(i64::from(row.attempts))
            .push_bind(row.message_type.as_str())
            .push_bind(row.destination.as_str())
            .push_bind(row.body.as_slice());
    }

    fn outgoing(mut b: Separated<'_, Self, &'static str>, row: &NewOutgoing) {
        b.push_bind(row.id.hyphenated())
            .push_bind(row.owner_id)
            .push_bind(row.destination.as_str())
            .push_bind(row.deliver_by)
            .push_bind(i64::from(row.attempts))
            .push_bind(row.message_type.as_str())
            .push_bind(row.body.as_slice());
    }
}

/// `INSERT INTO {table} (…incoming columns…) VALUES (…), …` of `rows`; the
/// caller appends its dialect's conflict clause.
pub(crate) fn incoming_values<'a, DB>(
    table: &str,
    rows: impl IntoIterator<Item = &'a NewIncoming>,
) -> QueryBuilder<DB>
where
    DB: ValuesOf,
    DB::Arguments: Default,
{
    let mut qb = QueryBuilder::new(format!(
        "INSERT INTO {table} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) "
    ));
    qb.push_values(rows, DB::incoming);
    qb
}

/// `INSERT INTO {table} (…outgoing columns…) VALUES (…), …` of `rows`; the
/// caller appends its dialect's conflict clause.
pub(crate) fn outgoing_values<'a, DB>(
    table: &str,
    rows: impl IntoIterator<Item = &'a NewOutgoing>,
) -> QueryBuilder<DB>
where
    DB: ValuesOf,
    DB::Arguments: Default,
{
    let mut qb = QueryBuilder::new(format!(
        "INSERT INTO {table} (id, owner_id, destination, deliver_by, attempts, message_type, body) "
    ));
    qb.push_values(rows, DB::outgoing);
    qb
}

/// How a backend's id column decodes: `uuid::fmt::Hyphenated` where ids are
/// text (SQLite, MySQL), `Uuid` where the column is a native uuid (PostgreSQL).
pub(crate) trait IdColumn: Row {
    type Id: Into<Uuid> + for<'r> Decode<'r, Self::Database> + Type<Self::Database>;
}

impl IdColumn for sqlx::sqlite::SqliteRow {
    type Id = uuid::fmt::Hyphenated;
}

impl IdColumn for sqlx::mysql::MySqlRow {
    type Id = uuid::fmt::Hyphenated;
}

impl IdColumn for sqlx::postgres::PgRow {
    type Id = Uuid;
}

/// The column types of the store, read from a result row by index.
pub(crate) trait Columns {
    fn id(&self, i: usize, op: &'static str) -> StoreResult<Uuid>;
    fn int(&self, i: usize, op: &'static str) -> StoreResult<i64>;
    fn opt_int(&self, i: usize, op: &'static str) -> StoreResult<Option<i64>>;
    fn text(&self, i: usize, op: &'static str) -> StoreResult<String>;
    fn opt_text(&self, i: usize, op: &'static str) -> StoreResult<Option<String>>;
    fn bytes(&self, i: usize, op: &'static str) -> StoreResult<Vec<u8>>;
    fn flag(&self, i: usize, op: &'static str) -> StoreResult<bool>;
}

impl<R> Columns for R
where
    R: IdColumn,
    usize: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    bool: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn id(&self, i: usize, op: &'static str) -> StoreResult<Uuid> {
        self.try_get::<R::Id, _>(i)
            .map(Into::into)
            .map_err(StoreError::db(op))
    }
    fn int(&self, i: usize, op: &'static str) -> StoreResult<i64> {
        self.try_get(i).map_err(StoreError::db(op))
    }
    fn opt_int(&self, i: usize, op: &'static str) -> StoreResult<Option<i64>> {
        self.try_get(i).map_err(StoreError::db(op))
    }
    fn text(&self, i: usize, op: &'static str) -> StoreResult<String> {
        self.try_get(i).map_err(StoreError::db(op))
    }
    fn opt_text(&self, i: usize, op: &'static str) -> StoreResult<Option<String>> {
        self.try_get(i).map_err(StoreError::db(op))
    }
    fn bytes(&self, i: usize, op: &'static str) -> StoreResult<Vec<u8>> {
        self.try_get(i).map_err(StoreError::db(op))
    }
    fn flag(&self, i: usize, op: &'static str) -> StoreResult<bool> {
        self.try_get(i).map_err(StoreError::db(op))
    }
}

/// `id, attempts, received_at, body` of a claimed inbox row, `attempts` as
/// the claim left it (counting this attempt).
fn claimed(row: &impl Columns) -> StoreResult<ClaimedRow> {
    let op = "claim incoming";
    Ok(ClaimedRow::claimed(
        row.id(0, op)?,
        attempts_of(row.int(1, op)?),
        row.text(2, op)?,
        row.bytes(3, op)?,
    ))
}

/// `id, destination, deliver_by, attempts, body` of a claimed outgoing row.
fn outgoing(row: &impl Columns) -> StoreResult<OutgoingRow> {
    let op = "claim outgoing";
    Ok(OutgoingRow {
        id: row.id(0, op)?,
        destination: row.text(1, op)?,
        deliver_by: row.opt_int(2, op)?,
        attempts: attempts_of(row.int(3, op)?),
        body: row.bytes(4, op)?,
    })
}

/// `id, message_type, received_at, source, error_kind, error_message,
/// failed_at, attempts, replayable, body` of a dead letter.
fn dead_letter(row: &impl Columns) -> StoreResult<DeadLetter> {
    let op = "list dead letters";
    Ok(DeadLetter {
        id: row.id(0, op)?,
        message_type: row.text(1, op)?,
        received_at: row.text(2, op)?,
        source: row.opt_text(3, op)?,
        error_kind: DeadLetterKind::from_stored(&row.text(4, op)?),
        error_message: row.text(5, op)?,
        failed_at: row.int(6, op)?,
        attempts: attempts_of(row.int(7, op)?),
        replayable: row.flag(8, op)?,
        body: row.bytes(9, op)?,
    })
}

/// Tables of the store (incoming, outgoing, dead letters, nodes, state).
pub(crate) const TABLE_COUNT: i64 = 5;

/// `Ok` when a schema check found all [`TABLE_COUNT`] tables, else
/// [`StoreError::MissingSchema`] for the target `where_`.
pub(crate) fn all_tables(found: i64, where_: impl FnOnce() -> String) -> StoreResult<()> {
    if found == TABLE_COUNT {
        Ok(())
    } else {
        Err(StoreError::MissingSchema { target: where_() })
    }
}

/// `value, version` of a state key, when there is one.
pub(crate) fn state_value(row: Option<impl Columns>) -> StoreResult<Option<StateValue>> {
    let op = "read state";
    row.map(|r| {
        Ok(StateValue {
            value: r.bytes(0, op)?,
            version: r.int(1, op)?,
        })
    })
    .transpose()
}

/// `key, value, version` of listed state rows, in the order given.
pub(crate) fn state_entries<R: Columns>(rows: &[R]) -> StoreResult<Vec<StateEntry>> {
    let op = "list state";
    rows.iter()
        .map(|r| {
            Ok(StateEntry {
                key: r.text(0, op)?,
                value: r.bytes(1, op)?,
                version: r.int(2, op)?,
            })
        })
        .collect()
}

/// The five counts of `storage counts`, in [`Counts`] field order.
pub(crate) fn counts(row: &impl Columns) -> StoreResult<Counts> {
    let op = "counts";
    Ok(Counts {
        incoming: row.int(0, op)?,
        scheduled: row.int(1, op)?,
        handled: row.int(2, op)?,
        outgoing: row.int(3, op)?,
        dead_letters: row.int(4, op)?,
    })
}

/// `destination, count` rows of `outgoing_by_destination`.
pub(crate) fn destination_counts<R: Columns>(rows: &[R]) -> StoreResult<Vec<(String, i64)>> {
    let op = "outgoing by destination";
    rows.iter()
        .map(|r| Ok((r.text(0, op)?, r.int(1, op)?)))
        .collect()
}

/// The query of `outgoing_by_destination` over table `outgoing`.
pub(crate) fn outgoing_by_destination_sql(outgoing: &str, count: &str) -> String {
    format!(
        "SELECT destination, {count} AS n FROM {outgoing} GROUP BY destination ORDER BY n DESC, destination"
    )
}

/// `id, owner_id, attempts, status` of rows the fence locked.
pub(crate) fn fenced_rows<R: Columns>(rows: &[R]) -> StoreResult<Vec<FencedRow>> {
    let op = "fence claimed rows";
    rows.iter()
        .map(|r| {
            Ok(FencedRow {
                id: r.id(0, op)?,
                owner_id: r.int(1, op)?,
                attempts: r.int(2, op)?,
                status: r.text(3, op)?,
            })
        })
        .collect()
}

/// Claimed inbox rows in id (= send time) order: `RETURNING` and
/// multi-part claims give no order guarantee.
pub(crate) fn claimed_in_order<R: Columns>(rows: &[R]) -> StoreResult<Vec<ClaimedRow>> {
    let mut out = rows.iter().map(claimed).collect::<StoreResult<Vec<_>>>()?;
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// Claimed outgoing rows in id (= send time) order.
pub(crate) fn outgoing_in_order<R: Columns>(rows: &[R]) -> StoreResult<Vec<OutgoingRow>> {
    let mut out = rows.iter().map(outgoing).collect::<StoreResult<Vec<_>>>()?;
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// The one dead letter a lookup by id found, if any.
pub(crate) fn one_dead_letter<R: Columns>(row: Option<R>) -> StoreResult<Option<DeadLetter>> {
    row.as_ref().map(dead_letter).transpose()
}

/// Dead letters as listed.
pub(crate) fn dead_letters<R: Columns>(rows: &[R]) -> StoreResult<Vec<DeadLetter>> {
    rows.iter().map(dead_letter).collect()
}

/// `url` without its password (in the user info or a `password=` query
/// parameter), for error messages and the store's target name.
pub(crate) fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return redact_unparsed(url);
    };
    // An `@` the parser did not take as the end of the user info (a password
    // with a `/`, read as a port and a path): cut by hand.
    if parsed.username().is_empty() && before_query(url).contains('@') {
        return redact_unparsed(url);
    }
    // Fails only for URLs without a host, which carry no user info.
    let _ = parsed.set_password(None);
    if let Some(query) = parsed.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| {
                let key = p.split('=').next().unwrap_or_default();
                !key.eq_ignore_ascii_case("password")
            })
            .collect();
        let kept = kept.join("&");
        parsed.set_query((!kept.is_empty()).then_some(kept.as_str()));
    }
    parsed.to_string()
}

/// `url` up to its query or fragment.
fn before_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A URL the parser refuses (a password with a `/` in it, say) still has its
/// password cut: the user info ends at the last `@` before the query.
fn redact_unparsed(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest.get(..end).and_then(|r| r.rfind('@')) {
        Some(at) => {
            let userinfo = rest.get(..at).unwrap_or_default();
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!(
                "{scheme}://{user}@{}",
                rest.get(at + 1..).unwrap_or_default()
            )
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_left_out_of_the_target() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/app"),
            "postgres://u@db:5432/app"
        );
        assert_eq!(
            redact("postgres://u@db/app?sslmode=require&password=secret"),
            "postgres://u@db/app?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://u:p%40ss@db/app?password=x"),
            "postgresql://u@db/app"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
    }

    #[test]
    fn passwords_are_left_out_of_targets() {
        assert_eq!(
            redact("mysql://root:s3cr/t@db:3306/test?ssl-mode=required"),
            "mysql://root@db:3306/test?ssl-mode=required"
        );
        assert_eq!(redact("mysql://root@db/test"), "mysql://root@db/test");
        assert_eq!(redact("mariadb://db/test"), "mariadb://db/test");
        assert_eq!(redact("mysql://root:12/t@db/test"), "mysql://root@db/test");
    }

    #[test]
    fn attempts_are_clamped_to_the_count_they_are() {
        assert_eq!(attempts_of(-3), 0);
        assert_eq!(attempts_of(7), 7);
        assert_eq!(attempts_of(i64::MAX), u32::MAX);
    }

    #[test]
    fn inlined_ids_are_quoted_hyphenated() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            inline_ids([&id, &id]),
            "'01234567-89ab-cdef-0123-456789abcdef','01234567-89ab-cdef-0123-456789abcdef'"
        );
    }
}
