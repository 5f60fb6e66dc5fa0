//! `jasper-cluster-bench`: durable local-queue throughput of 1, 2 and 3 hosts
//! sharing one PostgreSQL schema (or MariaDB database), no-op plugin, in one
//! run, beside commit-rate probes of the same server taken before and after.
//! Each host claims its own batches and commits them under its fence, so the
//! figures show what sharing a store costs and gains.
//!
//! Usage: `jasper-cluster-bench [--messages N] [--noop PATH] [--hosts 1,2,3]
//! [--backend postgres|mysql]` (`make bench` runs it). The hosts run in this
//! process, each with its own store pool, Wasm engine and worker, on the
//! same tokio runtime (so on every core of the machine).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use jasper_bench::{backend, commit_probe, insert_all, noop_rows, wait_handled};
use jasper_host::Host;
use jasper_host::config::Config;
use jasper_host::store;

struct Args {
    messages: usize,
    noop: PathBuf,
    hosts: Vec<usize>,
    backend: String,
}

const USAGE: &str = "usage: jasper-cluster-bench [--messages N] [--noop PATH] [--hosts 1,2,3] [--backend postgres|mysql]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 30_000,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
        hosts: vec![1, 2, 3],
        backend: "postgres".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = jasper_bench::value(&mut it, "--messages", "a count")?,
            "--noop" => a.noop = jasper_bench::value::<String>(&mut it, "--noop", "a path")?.into(),
            "--backend" => {
                a.backend = jasper_bench::value::<String>(&mut it, "--backend", "postgres|mysql")?
            }
            "--hosts" => {
                let raw: String = jasper_bench::value(&mut it, "--hosts", "counts like 1,2,3")?;
                a.hosts = raw
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        jasper_bench::bad(format!("--hosts {raw:?}: expected counts like 1,2,3"))
                    })?
            }
            other => return Err(jasper_bench::bad(format!("unknown argument {other}"))),
        }
    }
    if a.hosts.contains(&0) {
        return Err(jasper_bench::bad("--hosts: a run needs at least one host"));
    }
    if !a.noop.exists() {
        bail!(
            "{} not found; build it with `make plugins`",
            a.noop.display()
        );
    }
    Ok(a)
}

/// Messages handled per second by `hosts` hosts on one fresh schema.
async fn run(a: &Args, config: &Config, hosts: usize) -> anyhow::Result<f64> {
    let store = store::open(&config.storage).await?;
    store.rebuild().await?;
    let rows = noop_rows(a.messages);
    insert_all(&*store, &rows).await?;
    let t = Instant::now();
    let mut running = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let mut c = config.clone();
        c.node.name = format!("bench-{i}");
        running.push(Host::start(c).await?);
    }
    let all: Vec<&Host> = running.iter().collect();
    wait_handled(&all, a.messages, &format!("{hosts} host(s)")).await?;
    let rate = a.messages as f64 / t.elapsed().as_secs_f64();
    for h in running {
        h.shutdown().await?;
    }
    store.drop_all().await?;
    Ok(rate)
}

fn main() -> std::process::ExitCode {
    jasper_bench::run(USAGE, bench)
}

async fn bench() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = Config::for_dir(dir.path());
    config.storage.backend = backend(&a.backend, dir.path())?;
    config.storage.schema = format!("cbench{}", std::process::id());
    config.plugins.dir = plugins;
    config.handling.batch_size = 500;
    config.handling.poll_interval_ms = 10;
    println!(
        "jasper-cluster-bench: {} messages of 200 bytes on one {} store, no-op plugin, batch 500, hosts in one process",
        a.messages, a.backend
    );
    let probe_before = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let mut figures = Vec::new();
    for &n in &a.hosts {
        let rate = run(&a, &config, n).await?;
        println!("  {n} host(s): {rate:>7.0} msgs/s");
        figures.push((n, rate));
    }
    let probe_after = commit_probe(&config.storage.backend, &config.storage.schema, 2.0).await?;
    let probe = (probe_before + probe_after) / 2.0;
    println!("  commit probe {probe_before:.0} /s before, {probe_after:.0} /s after");
    if let Some(&(n1, first)) = figures.first() {
        for &(n, rate) in &figures {
            println!(
                "  {n} host(s) = {:.2}x {n1} host(s), {:.1}x the commit probe",
                rate / first,
                rate / probe
            );
        }
    }
    Ok(())
}
