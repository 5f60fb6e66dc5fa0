//! `jasper-bench`: durable local-queue throughput with a no-op plugin on each
//! backend asked for, in one run, each beside a commit-rate probe of the same
//! database taken in the same run (the disk's fsync rate swings a lot here,
//! so only ratios mean something), each backend run twice: one handler call
//! and one batch at a time (`plugins.max_in_flight = 1`,
//! `handling.batches_in_flight = 1`: the path before issue 11, the baseline)
//! and with the defaults (calls on every core, the next batch handled while
//! one commits), with their ratio; then the cost of the Wasm call alone
//! (fresh pooled instance + call), one at a time and many at once; and the
//! latency from `Host::send` to handled at an offered rate (`--rate`,
//! default 1,000/s, for `--seconds`, default 5) on each backend, p99 beside
//! the time of one commit of the probe.
//!
//! Usage: `jasper-bench [--messages N] [--noop PATH] [--backends sqlite,postgres,mysql] [--rate R] [--seconds S]
//! [--batch-size N] [--batches-in-flight N] [--max-in-flight N]` (`make bench` builds the plugin and runs
//! it). The last three change the defaults run (`handling.batch_size`, default 500 here;
//! `handling.batches_in_flight`; `plugins.max_in_flight`), to try other settings. Server URLs come from
//! `JASPER_BENCH_POSTGRES_URL` / `JASPER_BENCH_MYSQL_URL` (defaults: the local
//! test servers); each run uses a schema of its own and drops it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use jasper_bench::latency::{Latency, offered_load, watch};
use jasper_bench::{backend, commit_probe, insert_all, noop_rows, wait_handled};
use jasper_host::Host;
use jasper_host::config::Config;
use jasper_host::envelope::Envelope;
use jasper_host::runtime::state_view::{BatchState, StateView};
use jasper_host::runtime::{Plugin, Runtime};
use jasper_host::store::{self, MessageStore};

struct Args {
    messages: usize,
    noop: PathBuf,
    backends: Vec<String>,
    rate: u64,
    seconds: u64,
    /// Overrides of the defaults mode, to try other settings.
    batch_size: usize,
    batches_in_flight: Option<u32>,
    max_in_flight: Option<usize>,
    /// The compiled-plugin cache every host of the run shares, as a
    /// restarted host has its own (`plugins.cache`, on by default): the
    /// plugin is compiled into it before the first run.
    cache: tempfile::TempDir,
}

const USAGE: &str = "usage: jasper-bench [--messages N] [--noop PATH] [--backends sqlite,postgres,mysql] [--rate R] [--seconds S] [--batch-size N] [--batches-in-flight N] [--max-in-flight N]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
        backends: vec!["sqlite".into()],
        rate: 1000,
        seconds: 5,
        batch_size: 500,
        batches_in_flight: None,
        max_in_flight: None,
        cache: tempfile::tempdir()?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = jasper_bench::value(&mut it, "--messages", "a count")?,
            "--noop" => a.noop = jasper_bench::value::<String>(&mut it, "--noop", "a path")?.into(),
            "--backends" => {
                a.backends = jasper_bench::value::<String>(
                    &mut it,
                    "--backends",
                    "a list like sqlite,postgres,mysql",
                )?
                .split(',')
                .map(str::to_string)
                .collect()
            }
            "--rate" => a.rate = jasper_bench::value(&mut it, "--rate", "a rate per second")?,
            "--seconds" => a.seconds = jasper_bench::value(&mut it, "--seconds", "seconds")?,
            "--batch-size" => {
                a.batch_size = jasper_bench::value(&mut it, "--batch-size", "a count")?
            }
            "--batches-in-flight" => {
                a.batches_in_flight = Some(jasper_bench::value(
                    &mut it,
                    "--batches-in-flight",
                    "a count",
                )?)
            }
            "--max-in-flight" => {
                a.max_in_flight = Some(jasper_bench::value(&mut it, "--max-in-flight", "a count")?)
            }
            other => return Err(jasper_bench::bad(format!("unknown argument {other}"))),
        }
    }
    if a.rate == 0 || a.seconds == 0 {
        return Err(jasper_bench::bad("--rate and --seconds must be at least 1"));
    }
    // The bounds the host's config loader checks (`handling.*`, `plugins.*`).
    if !(1..=10_000).contains(&a.batch_size) {
        return Err(jasper_bench::bad(
            "--batch-size must be between 1 and 10000",
        ));
    }
    if a.batches_in_flight.is_some_and(|n| !(1..=8).contains(&n)) {
        return Err(jasper_bench::bad(
            "--batches-in-flight must be between 1 and 8",
        ));
    }
    if a.max_in_flight == Some(0) {
        return Err(jasper_bench::bad("--max-in-flight must be at least 1"));
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

/// How a host runs its handlers: one call and one batch at a time (the
/// path before issue 11, kept as the baseline), or the defaults.
#[derive(Clone, Copy)]
enum Mode {
    OneAtATime,
    EveryCore,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::OneAtATime => "one call, one batch at a time",
            Mode::EveryCore => "every core (defaults)",
        }
    }

    fn apply(self, config: &mut Config, a: &Args) {
        match self {
            Mode::OneAtATime => {
                config.plugins.max_in_flight = 1;
                config.handling.batches_in_flight = 1;
            }
            Mode::EveryCore => {
                if let Some(n) = a.batches_in_flight {
                    config.handling.batches_in_flight = n;
                }
                if let Some(n) = a.max_in_flight {
                    config.plugins.max_in_flight = n;
                }
            }
        }
    }
}

/// `config` with the run's shared compile cache (see [`Args::cache`]).
fn cached(mut config: Config, a: &Args) -> Config {
    config.plugins.cache_dir = Some(a.cache.path().to_path_buf());
    config
}

/// A host's config on backend `name` with the no-op plugin, in `dir`.
fn bench_config(a: &Args, name: &str, dir: &Path, mode: Mode) -> anyhow::Result<Config> {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = cached(Config::for_dir(dir), a);
    config.storage.backend = backend(name, dir)?;
    config.storage.schema = format!("bench{}", std::process::id());
    config.plugins.dir = plugins;
    config.handling.batch_size = a.batch_size;
    config.handling.poll_interval_ms = 10;
    mode.apply(&mut config, a);
    Ok(config)
}

async fn run_backend(a: &Args, name: &str, mode: Mode) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let config = bench_config(a, name, dir.path(), mode)?;

    let probe_before = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let store = store::open(&config.storage).await?;
    store.rebuild().await?;
    let rows = noop_rows(a.messages);
    let t = Instant::now();
    insert_all(&*store, &rows).await?;
    let enqueue = a.messages as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let host = Host::start(config.clone()).await?;
    let started_ms = t.elapsed().as_secs_f64() * 1e3;
    wait_handled(&[&host], a.messages, name).await?;
    let handled = a.messages as f64 / t.elapsed().as_secs_f64();
    host.shutdown().await?;
    store.drop_all().await?;
    let probe_after = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let probe = (probe_before + probe_after) / 2.0;
    println!(
        "  {name:<9} {:<30} handled {handled:>7.0} msgs/s = {:>5.1}x its commit probe ({probe_before:.0} /s before, {probe_after:.0} /s after); enqueue {enqueue:.0} msgs/s; host start {started_ms:.0} ms of it (plugin from the compile cache)",
        mode.label(),
        handled / probe
    );
    Ok(Figures {
        probe,
        enqueue,
        handled,
    })
}

/// Send → handled on backend `name` with the defaults, `Host::send` (one
/// commit each) at `a.rate`/s for `a.seconds`, beside the time of one commit
/// of the probe taken right before.
async fn latency_backend(a: &Args, name: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = bench_config(a, name, dir.path(), Mode::EveryCore)?;
    let probe = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let store = store::open(&config.storage).await?;
    store.rebuild().await?;
    let host = Host::start(config).await?;
    let w = watch(&host);
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes();
    let figures = offered_load(&host, &w, "bench.Noop", &body, a.rate, a.seconds, name).await;
    drop(w);
    host.shutdown().await?;
    store.drop_all().await?;
    let Latency {
        offered,
        p50,
        p99,
        max,
    } = figures?;
    let commit_ms = 1e3 / probe;
    println!(
        "  {name:<9} latency at {offered:.0} msgs/s offered (Host::send to handled, defaults): p50 {p50:.2} ms, p99 {p99:.2} ms = {:.1}x one commit of the probe ({commit_ms:.2} ms), max {max:.2} ms",
        p99 / commit_ms
    );
    Ok(())
}

/// The Wasm call alone: fresh pooled instance + call of the no-op handler,
/// `calls` in all, `at_once` of them running at a time (each on its own
/// task, so on every core). Returns the wall time per call in us.
async fn wasm_call_us(
    runtime: &Arc<Runtime>,
    plugin: &Arc<Plugin>,
    store: &Arc<dyn MessageStore>,
    calls: usize,
    at_once: usize,
) -> anyhow::Result<f64> {
    let mut env = Envelope::new("bench.Noop", b"{\"pad\":\"x\"}".to_vec());
    env.destination = Some("local://noop".into());
    let env = Arc::new(env);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..at_once {
        let (runtime, plugin, store, env) = (
            Arc::clone(runtime),
            Arc::clone(plugin),
            Arc::clone(store),
            Arc::clone(&env),
        );
        let router = Arc::new(Default::default());
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / at_once {
                let view =
                    StateView::new(store.clone(), plugin.name.clone(), BatchState::default());
                let out = runtime
                    .handle(&plugin, &env, Arc::clone(&router), view)
                    .await;
                if let Err(e) = out.result {
                    bail!("noop handler failed: {e:?}");
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / (calls / at_once * at_once) as f64)
}

fn main() -> std::process::ExitCode {
    jasper_bench::run(USAGE, bench)
}

async fn bench() -> anyhow::Result<()> {
    let a = args()?;
    println!(
        "jasper-bench: {} messages of 200 bytes per backend and mode, no-op plugin, batch {}",
        a.messages, a.batch_size
    );
    // Compiled once into the shared cache: every host of the run then starts
    // as a restarted host does, its plugin loaded from the cache.
    let warm = cached(Config::for_dir(a.cache.path()), &a);
    Runtime::new(&warm.plugins)?.load_plugin(&a.noop).await?;
    let mut results = Vec::new();
    for name in &a.backends {
        let base = run_backend(&a, name, Mode::OneAtATime).await?;
        let every = run_backend(&a, name, Mode::EveryCore).await?;
        println!(
            "  {name:<9} every core / one at a time: {:.2}x the throughput ({:.2}x per commit of the probe)",
            every.handled / base.handled,
            (every.handled / every.probe) / (base.handled / base.probe),
        );
        results.push((name.clone(), every));
    }
    for name in &a.backends {
        latency_backend(&a, name).await?;
    }
    if let Some((_, first)) = results.first() {
        for (name, f) in &results[1..] {
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
    let config = cached(Config::for_dir(dir.path()), &a);
    let store = store::open(&config.storage).await?;
    let runtime = Arc::new(Runtime::new(&config.plugins)?);
    let plugin = Arc::new(runtime.load_plugin(&a.noop).await?);
    let calls = 20_000;
    let one = wasm_call_us(&runtime, &plugin, &store, calls, 1).await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many = wasm_call_us(
        &runtime,
        &plugin,
        &store,
        calls,
        config.plugins.max_in_flight,
    )
    .await?;
    let best = results
        .iter()
        .map(|(_, f)| f.handled)
        .fold(0.0_f64, f64::max);
    println!(
        "  wasm call alone (fresh instance + call): {one:.1} us/msg one at a time; {many:.1} us/msg wall with {} at once on {cores} cores = {:.2}x the calls per second; one call is {:.0}% of the per-message time at the best throughput above",
        config.plugins.max_in_flight,
        one / many,
        one / (1e6 / best) * 100.0
    );
    Ok(())
}
