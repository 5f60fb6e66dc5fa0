//! What the benchmark binaries share: the backend a name stands for (servers
//! from `JASPER_BENCH_POSTGRES_URL` / `JASPER_BENCH_MYSQL_URL`, defaulting to
//! the local test servers) and the commit-rate probe every figure is set
//! against (the disk's fsync rate swings a lot here, so only ratios to a
//! probe taken in the same run mean something).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use jasper_host::config::Backend;
use jasper_host::envelope::{Envelope, local_row};
use jasper_host::store::{MessageStore, NewIncoming};
use sqlx::AssertSqlSafe;

/// The backend `name` (`sqlite`, `postgres`, `mysql`) stands for; SQLite in `dir`.
pub fn backend(name: &str, dir: &Path) -> anyhow::Result<Backend> {
    Ok(match name {
        "sqlite" => Backend::Sqlite {
            path: dir.join("bench.db"),
        },
        "postgres" => Backend::Postgres {
            url: std::env::var("JASPER_BENCH_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        },
        "mysql" => Backend::Mysql {
            url: std::env::var("JASPER_BENCH_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        },
        other => bail!("unknown backend {other}"),
    })
}

/// One-row autocommit inserts for `secs` on the same database: its commit rate now.
pub async fn commit_probe(backend: &Backend, schema: &str, secs: f64) -> anyhow::Result<f64> {
    macro_rules! probe {
        ($pool:expr, $create:expr, $insert:expr, $drop:expr) => {{
            let pool = $pool;
            sqlx::query(AssertSqlSafe($create)).execute(&pool).await?;
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                sqlx::query(AssertSqlSafe($insert))
                    .bind(vec![0u8; 200])
                    .execute(&pool)
                    .await?;
                n += 1;
            }
            let rate = n as f64 / start.elapsed().as_secs_f64();
            sqlx::query(AssertSqlSafe($drop)).execute(&pool).await?;
            Ok(rate)
        }};
    }
    let table = format!("{schema}_probe");
    match backend {
        Backend::Sqlite { path } => probe!(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(path.with_file_name("probe.db"))
                        .create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Full),
                )
                .await?,
            format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, v BLOB)"),
            format!("INSERT INTO {table} (v) VALUES (?1)"),
            format!("DROP TABLE {table}")
        ),
        Backend::Postgres { url } => probe!(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?,
            format!(
                "CREATE TABLE IF NOT EXISTS public.{table} (id BIGSERIAL PRIMARY KEY, v BYTEA)"
            ),
            format!("INSERT INTO public.{table} (v) VALUES ($1)"),
            format!("DROP TABLE public.{table}")
        ),
        Backend::Mysql { url } => probe!(
            sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?,
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BLOB) ENGINE=InnoDB"
            ),
            format!("INSERT INTO {table} (v) VALUES (?)"),
            format!("DROP TABLE {table}")
        ),
    }
}

/// Wait (polling, up to 600 s) until `store` counts `messages` handled rows;
/// the error names `what` and how far it got.
pub async fn wait_handled(
    store: &dyn MessageStore,
    messages: usize,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = store.counts().await?;
        if c.handled as usize >= messages {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: only {} of {messages} handled after 600 s",
                c.handled
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` inbox rows for the no-op plugin, 200-byte bodies.
pub fn noop_rows(n: usize) -> Vec<NewIncoming> {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes();
    (0..n)
        .map(|_| {
            let mut env = Envelope::new("bench.Noop", body.clone());
            env.destination = Some("local://noop".into());
            local_row(&env)
        })
        .collect()
}

/// Insert `rows` 1000 at a time.
pub async fn insert_all(store: &dyn MessageStore, rows: &[NewIncoming]) -> anyhow::Result<()> {
    for chunk in rows.chunks(1000) {
        store.insert_incoming(chunk).await?;
    }
    Ok(())
}
