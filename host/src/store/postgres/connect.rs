//! Connecting to PostgreSQL: one probe connection that names what is wrong
//! (unreachable server, wrong credentials, missing database), then the pool.

use std::io;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::store::{StoreError, StoreResult};

/// How long `open` waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per store (one host: workers, listeners, sweeps).
const MAX_CONNECTIONS: u32 = 8;
/// A pooled connection idle this long is pinged before use.
const PING_WHEN_IDLE: Duration = Duration::from_secs(10);

/// A pool for `url`, after one connection proved the server, the credentials
/// and the database are there. Errors are [`StoreError::Open`] for `target`
/// (the URL without its password).
pub(super) async fn pool(url: &str, target: &str) -> StoreResult<PgPool> {
    let open_err = |source| StoreError::Open {
        target: target.to_owned(),
        source,
    };
    let mut options = PgConnectOptions::from_str(url).map_err(open_err)?;
    if options.get_application_name().is_none() {
        options = options.application_name("jasper-host");
    }
    // A host frozen (or cut off) inside a transaction must not hold its row
    // locks forever: the server ends such a session. Lock waits and
    // statements end well before the host's own store timeout gives up on
    // them, so a statement the host abandoned does not run on.
    //
    // Every statement is prepared once per connection and planned once
    // (a generic plan). By default the server plans the first five runs of
    // each for their parameters, from table statistics that a queue's
    // tables seldom have right (rows come and go faster than analyze): on
    // a fresh inbox the group commit's handled marks were planned as a
    // nested loop over the whole table, 32 ms for 500 rows where the
    // generic plan takes 3 ms, on each new connection. Forcing the generic
    // plan took the durable local queue from 22,800 to 33,000-34,000
    // msgs/s (jasper-bench, PostgreSQL, 20,000 messages).
    options = options.options([
        ("idle_in_transaction_session_timeout", "10s"),
        ("lock_timeout", "10s"),
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    // One connection first: the pool would retry a refused connection
    // until its acquire timeout and then say only "timed out".
    let server = server_of(&options);
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Err(_) => {
            return Err(open_err(sqlx::Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{server} did not answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            ))));
        }
        Ok(Err(sqlx::Error::Io(e))) => {
            let what = match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
                    "answered, but not like a PostgreSQL server"
                }
                _ => "is unreachable",
            };
            return Err(open_err(sqlx::Error::Io(io::Error::new(
                e.kind(),
                format!("{server} {what}: {e}"),
            ))));
        }
        Ok(Err(e)) => return Err(open_err(e)),
        Ok(Ok(conn)) => {
            // Closing is a courtesy; the pool opens its own connections.
            let _ = conn.close().await;
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        // A ping before every acquire costs a round trip per call (the claim
        // and the group commit each acquire once); ping only connections that
        // sat idle, which a server restart or an idle timeout may have
        // closed. A connection that breaks while in use fails that call and
        // is discarded when it goes back to the pool (sqlx pings on release).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options);
    Ok(pool)
}

/// Where the options point, for "is unreachable" messages.
fn server_of(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(path) => format!("socket {}", path.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The test server (`JASPER_TEST_POSTGRES_URL` overrides).
    fn url() -> String {
        std::env::var("JASPER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    #[tokio::test]
    async fn every_pooled_connection_plans_each_statement_once() {
        let pool = pool(&url(), "test server").await.unwrap();
        // Two connections at once: each new one gets the session settings.
        let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        for conn in [&mut a, &mut b] {
            let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(mode, "force_generic_plan");
            let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(timeout, "10s");
        }
    }
}
