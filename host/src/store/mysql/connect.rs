//! Connecting to MySQL/MariaDB: one probe connection that names what is
//! wrong (unreachable server, wrong credentials, unknown database, a server
//! too old for `SKIP LOCKED`) and sizes statements to `max_allowed_packet`,
//! then the pool (`READ COMMITTED`, strict mode).

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::schema::MAX_SCHEMA;
use crate::store::error::{StoreError, StoreResult};

/// Pool size per host.
const MAX_CONNECTIONS: u32 = 8;
/// How long `open` waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of one multi-row statement, whatever `max_allowed_packet` allows.
const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// What `open` connected to.
pub(super) struct Connected {
    pub pool: MySqlPool,
    pub options: MySqlConnectOptions,
    /// Bytes per multi-row statement.
    pub budget: usize,
}

/// Connect to `url` for a store with table prefix `{schema}_`; errors are
/// [`StoreError::Open`] for `target` (the URL without its password).
pub(super) async fn connect(url: &str, schema: &str, target: &str) -> StoreResult<Connected> {
    let open_err = |source| StoreError::Open {
        target: target.to_owned(),
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

    let mariadb = version.contains("MariaDB");
    let pool = MySqlPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // Too long a value is an error, never silently cut.
                conn.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')")
                    .await?;
                // A host frozen (or cut off) inside a transaction must not
                // hold its row locks forever: the server ends such a session.
                // Lock waits end well before that.
                conn.execute(AssertSqlSafe(format!(
                    "SET SESSION innodb_lock_wait_timeout = {}",
                    LOCK_WAIT.as_secs()
                )))
                .await?;
                if mariadb {
                    conn.execute(AssertSqlSafe(format!(
                        "SET SESSION idle_transaction_timeout = {}",
                        IDLE_IN_TRANSACTION.as_secs()
                    )))
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(open_err)?;
    Ok(Connected {
        pool,
        options,
        budget,
    })
}

/// How long a session may sit idle inside a transaction before the server
/// ends it (MariaDB; the host never waits inside one).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);
/// How long a statement waits for a row lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

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
