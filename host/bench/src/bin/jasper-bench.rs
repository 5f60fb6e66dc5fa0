//! `jasper-bench`: durable local-queue throughput with a no-op plugin on each
//! backend asked for, in one run, each beside a commit-rate probe of the same
//! database taken in the same run (the disk's fsync rate swings a lot here,
//! so only ratios mean something), and the cost of the Wasm call alone
//! (fresh pooled instance + call).
//!
//! Usage: `jasper-bench [--messages N] [--noop PATH] [--backends sqlite,postgres,mysql]`
//! (`make bench` builds the plugin and runs it). Server URLs come from
//! `JASPER_BENCH_POSTGRES_URL` / `JASPER_BENCH_MYSQL_URL` (defaults: the local
//! test servers); each run uses a schema of its own and drops it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use jasper_bench::{backend, commit_probe, insert_all, noop_rows, wait_handled};
use jasper_host::Host;
use jasper_host::config::Config;
use jasper_host::envelope::Envelope;
use jasper_host::runtime::Runtime;
use jasper_host::runtime::state_view::{BatchState, StateView};
use jasper_host::store::{self, MessageStore};

struct Args {
    messages: usize,
    noop: PathBuf,
    backends: Vec<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
        backends: vec!["sqlite".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = it.next().context("--messages N")?.parse()?,
            "--noop" => a.noop = it.next().context("--noop PATH")?.into(),
            "--backends" => {
                a.backends = it
                    .next()
                    .context("--backends sqlite,postgres,mysql")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            other => bail!(
                "unknown argument {other}; usage: jasper-bench [--messages N] [--noop PATH] [--backends sqlite,postgres,mysql]"
            ),
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

struct Figures {
    probe: f64,
    enqueue: f64,
    handled: f64,
}

async fn run_backend(a: &Args, name: &str) -> anyhow::Result<(Figures, Config)> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = Config::for_dir(dir.path());
    config.storage.backend = backend(name, dir.path())?;
    config.storage.schema = format!("bench{}", std::process::id());
    config.plugins.dir = plugins;
    config.handling.batch_size = 500;
    config.handling.poll_interval_ms = 10;

    let probe_before = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let store = store::open(&config.storage).await?;
    store.rebuild().await?;
    let rows = noop_rows(a.messages);
    let t = Instant::now();
    insert_all(&*store, &rows).await?;
    let enqueue = a.messages as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let host = Host::start(config.clone()).await?;
    wait_handled(&*store, a.messages, name).await?;
    let handled = a.messages as f64 / t.elapsed().as_secs_f64();
    host.shutdown().await?;
    store.drop_all().await?;
    let probe_after = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    println!(
        "  {name:<9} commit probe {probe_before:>6.0} /s before, {probe_after:>6.0} /s after; enqueue {enqueue:>7.0} msgs/s; handled {handled:>6.0} msgs/s = {:.1}x its commit probe",
        handled / ((probe_before + probe_after) / 2.0)
    );
    Ok((
        Figures {
            probe: (probe_before + probe_after) / 2.0,
            enqueue,
            handled,
        },
        config,
    ))
}

/// The Wasm call alone: fresh pooled instance + call of the no-op handler.
async fn wasm_call_us(config: &Config, store: Arc<dyn MessageStore>) -> anyhow::Result<f64> {
    let runtime = Arc::new(Runtime::new(&config.plugins)?);
    let plugin = runtime
        .load_plugin(&config.plugins.dir.join("noop.wasm"))
        .await?;
    let mut env = Envelope::new("bench.Noop", b"{\"pad\":\"x\"}".to_vec());
    env.destination = Some("local://noop".into());
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
    Ok(t.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    println!(
        "jasper-bench: {} messages of 200 bytes per backend, no-op plugin, batch 500",
        a.messages
    );
    let mut results = Vec::new();
    for name in &a.backends {
        results.push((name.clone(), run_backend(&a, name).await?));
    }
    if let Some((_, (first, _))) = results.first() {
        for (name, (f, _)) in &results[1..] {
            println!(
                "  {name} / {}: {:.2}x the throughput (commit probes {:.2}x, enqueue {:.2}x)",
                a.backends[0],
                f.handled / first.handled,
                f.probe / first.probe,
                f.enqueue / first.enqueue
            );
        }
    }
    // The call cost, against a throwaway SQLite store (the no-op reads no state).
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_dir(dir.path());
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    config.plugins.dir = plugins;
    let store = store::open(&config.storage).await?;
    let us = wasm_call_us(&config, store).await?;
    let best = results
        .iter()
        .map(|(_, (f, _))| f.handled)
        .fold(0.0_f64, f64::max);
    println!(
        "  wasm call alone (fresh instance + call): {us:.1} us/msg = {:.0}% of the per-message time at the best throughput above",
        us / (1e6 / best) * 100.0
    );
    Ok(())
}
