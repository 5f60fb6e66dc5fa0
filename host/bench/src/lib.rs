//! What the benchmark binaries share: the backend a name stands for (servers
//! from `JASPER_BENCH_POSTGRES_URL` / `JASPER_BENCH_MYSQL_URL`, defaulting to
//! the local test servers) and the commit-rate probe every figure is set
//! against (the disk's fsync rate swings a lot here, so only ratios to a
//! probe taken in the same run mean something).

pub mod latency;

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

/// Wait (up to 600 s) until `messages` are handled by `hosts`, counted by
/// the hosts themselves ([`Metrics::handled_total`], once a batch commits):
/// looked at on each batch they announce and every 5 ms, so the database
/// does only the hosts' work and the clock stops with the batch that
/// completes the count. The error names `what` and how far it got.
///
/// [`Metrics::handled_total`]: jasper_host::admin::Metrics::handled_total
pub async fn wait_handled(
    hosts: &[&jasper_host::Host],
    messages: usize,
    what: &str,
) -> anyhow::Result<()> {
    let handled = || -> u64 { hosts.iter().map(|h| h.metrics().handled_total()).sum() };
    let mut events: Vec<_> = hosts.iter().map(|h| h.subscribe()).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let messages = messages as u64;
    while handled() < messages {
        if Instant::now() > deadline {
            bail!(
                "{what}: only {} of {messages} handled after 600 s",
                handled()
            );
        }
        let any = futures::future::select_all(events.iter_mut().map(|e| Box::pin(e.recv())));
        // An announcement, a lag or a closed channel: look again.
        let _ = tokio::time::timeout(Duration::from_millis(5), any).await;
    }
    Ok(())
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

/// A benchmark binary's `main`: `--help` (or `-h`) prints `usage`; the body
/// runs on a multi-thread runtime; an error ends it as one plain line on
/// stderr (the error and its causes, never a backtrace, even with
/// RUST_BACKTRACE set) with exit status 1, a bad argument with status 2.
pub fn run<F>(usage: &str, body: impl FnOnce() -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let name = std::env::args()
        .next()
        .and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "jasper-bench".into());
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<BadArgument>() => {
            eprintln!("{name}: {e}\n{usage}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command-line argument a benchmark cannot use (exit status 2).
#[derive(Debug)]
pub struct BadArgument(pub String);

impl std::fmt::Display for BadArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgument {}

/// The median of `v` (the mean of the middle two when even); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (v[mid - 1] + v[mid]) / 2.0,
        _ => v[mid],
    }
}

/// A bad argument as an error for `?`.
pub fn bad(message: impl Into<String>) -> anyhow::Error {
    BadArgument(message.into()).into()
}

/// The value after `flag`, parsed; `what` says what it takes ("a count").
pub fn value<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
    what: &str,
) -> anyhow::Result<T> {
    let raw = args
        .next()
        .ok_or_else(|| bad(format!("{flag} needs a value: {what}")))?;
    raw.parse()
        .map_err(|_| bad(format!("{flag} {raw:?}: expected {what}")))
}
