//! `jasper-bench`: durable local-queue throughput on SQLite with a no-op
//! plugin, beside a commit-rate probe of the same disk in the same run, and
//! the cost of the Wasm call alone (fresh pooled instance + call).
//!
//! Usage: `jasper-bench [--messages N] [--noop PATH/noop.wasm]`
//! (`make bench` builds the plugin and runs it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jasper_host::Host;
use jasper_host::config::{Backend, Config};
use jasper_host::envelope::Envelope;
use jasper_host::handling::local_row;
use jasper_host::runtime::Runtime;
use jasper_host::runtime::state_view::{BatchState, StateView};
use jasper_host::store::{self, MessageStore};

struct Args {
    messages: usize,
    noop: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = it.next().context("--messages N")?.parse()?,
            "--noop" => a.noop = it.next().context("--noop PATH")?.into(),
            other => {
                bail!("unknown argument {other}; usage: jasper-bench [--messages N] [--noop PATH]")
            }
        }
    }
    if !a.noop.exists() {
        bail!(
            "{} not found; build it with `make plugins`",
            a.noop.display()
        );
    }
    Ok(a)
}

/// One-row autocommit inserts for `secs`: the disk's commit rate right now.
async fn commit_probe(dir: &std::path::Path, secs: f64) -> anyhow::Result<f64> {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.join("probe.db"))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full),
        )
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS p (id INTEGER PRIMARY KEY, v BLOB)")
        .execute(&pool)
        .await?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        sqlx::query("INSERT INTO p (v) VALUES (?1)")
            .bind(vec![0u8; 200])
            .execute(&pool)
            .await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = Config::for_dir(dir.path());
    config.storage.backend = Backend::Sqlite {
        path: dir.path().join("bench.db"),
    };
    config.plugins.dir = plugins;
    config.handling.batch_size = 500;
    config.handling.poll_interval_ms = 10;

    let probe_before = commit_probe(dir.path(), 2.0).await?;

    // Enqueue: 200-byte bodies, 1,000 rows per transaction.
    let store = store::open(&config.storage).await?;
    store.migrate().await?;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes();
    let rows: Vec<_> = (0..a.messages)
        .map(|_| {
            let mut env = Envelope::new("bench.Noop", body.clone());
            env.destination = Some("local://noop".into());
            local_row(&env)
        })
        .collect();
    let t = Instant::now();
    for chunk in rows.chunks(1000) {
        store.insert_incoming(chunk).await?;
    }
    let enqueue = a.messages as f64 / t.elapsed().as_secs_f64();

    // Handle: start a host and wait until every message is handled.
    let t = Instant::now();
    let host = Host::start(config.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = store.counts().await?;
        if c.handled as usize >= a.messages {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {} handled after 600 s", c.handled, a.messages);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled = a.messages as f64 / t.elapsed().as_secs_f64();
    host.shutdown().await?;
    let probe_after = commit_probe(dir.path(), 2.0).await?;

    // The Wasm call alone: fresh pooled instance + call of the no-op handler.
    let runtime = Arc::new(Runtime::new(&config.plugins)?);
    let plugin = runtime
        .load_plugin(&config.plugins.dir.join("noop.wasm"))
        .await?;
    let store: Arc<dyn MessageStore> = store;
    let env = {
        let mut e = Envelope::new("bench.Noop", body.clone());
        e.destination = Some("local://noop".into());
        e
    };
    let router = Arc::new(Default::default());
    let calls = 20_000;
    let mut state = BatchState::default();
    let t = Instant::now();
    for _ in 0..calls {
        let view = StateView::new(store.clone(), plugin.name.clone(), state);
        let out = runtime
            .handle(&plugin, &env, Arc::clone(&router), view)
            .await;
        state = out.state;
        if let Err(e) = out.result {
            bail!("noop handler failed: {e:?}");
        }
    }
    let call_us = t.elapsed().as_secs_f64() * 1e6 / calls as f64;

    let probe = (probe_before + probe_after) / 2.0;
    println!(
        "jasper-bench: {} messages, 200-byte bodies, SQLite (WAL, synchronous=FULL)",
        a.messages
    );
    println!(
        "  commit probe (1-row autocommit inserts): {probe_before:.0} /s before, {probe_after:.0} /s after"
    );
    println!("  enqueue (1,000 per transaction):         {enqueue:.0} msgs/s");
    println!(
        "  durable local queue, no-op plugin:       {handled:.0} msgs/s  = {:.1}x the commit probe",
        handled / probe
    );
    println!(
        "  wasm call alone (fresh instance + call): {call_us:.1} us/msg  = {:.1}% of the per-message time",
        call_us / (1e6 / handled) * 100.0
    );
    Ok(())
}
