//! `jasper-tcp-bench`: host-to-host throughput and latency over `tcp://` and
//! `durable://`, two hosts in one process on loopback, each with its own
//! SQLite store and the no-op plugin on the receiving side.
//!
//! - Throughput: N envelopes (200-byte body) handed to host A's sender at
//!   once (for `durable://` their outgoing rows are committed first, as a
//!   handler's commit would), timed until host B has handled all of them
//!   (and, durable, A has deleted every confirmed row). Beside it, in the
//!   same run: B's durable local queue alone (the same N inserted straight
//!   into B's inbox), the baseline the transport is measured against.
//! - Latency: `Host::send` on A at a fixed offered rate (one commit each for
//!   `durable://`), from just before the send to B's commit of the handled
//!   mark; p50 / p99 / max.
//! - `durable://` is measured twice per rep, in the same run: as configured
//!   by default (several batches unanswered per connection, the receiver
//!   committing the batches that arrived together at once and handing the
//!   rows to its worker, confirmed rows deleted off the send path) and the
//!   previous way (`[sending] batches_in_flight = 1`, `[tcp]
//!   batches_per_commit = 1`, `hand_to_worker = false`: one batch at a
//!   time, claimed by B's worker from its inbox), and the figure is the
//!   ratio of the two.
//!
//! While a throughput run is timed nothing queries the stores: B's handled
//! messages are counted from its batch events, and A's outgoing table is
//! checked for rows left only once B has handled everything.
//!
//! Usage: `jasper-tcp-bench [--messages N] [--rate R] [--seconds S] [--reps N] [--noop PATH]`
//! (`make bench` runs it after `jasper-bench`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use jasper_bench::latency::{Latency, offered_load, watch};
use jasper_host::Host;
use jasper_host::address::Destination;
use jasper_host::config::{Config, ListenConfig, RouteConfig};
use jasper_host::envelope::{Envelope, local_row};
use jasper_host::store::CommitBatch;
use jasper_host::transport::Outgoing;

struct Args {
    messages: usize,
    rate: u64,
    seconds: u64,
    reps: usize,
    noop: PathBuf,
}

const USAGE: &str =
    "usage: jasper-tcp-bench [--messages N] [--rate R] [--seconds S] [--reps N] [--noop PATH]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        rate: 1000,
        seconds: 5,
        reps: 2,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = jasper_bench::value(&mut it, "--messages", "a count")?,
            "--rate" => a.rate = jasper_bench::value(&mut it, "--rate", "a rate per second")?,
            "--seconds" => a.seconds = jasper_bench::value(&mut it, "--seconds", "seconds")?,
            "--reps" => a.reps = jasper_bench::value(&mut it, "--reps", "a count")?,
            "--noop" => a.noop = jasper_bench::value::<String>(&mut it, "--noop", "a path")?.into(),
            other => return Err(jasper_bench::bad(format!("unknown argument {other}"))),
        }
    }
    if a.messages == 0 || a.reps == 0 || a.rate == 0 || a.seconds == 0 {
        return Err(jasper_bench::bad(
            "--messages, --reps, --rate and --seconds must be at least 1",
        ));
    }
    if !a.noop.exists() {
        bail!(
            "{} not found; build it with `make plugins`",
            a.noop.display()
        );
    }
    Ok(a)
}

fn host_config(dir: &Path, noop: Option<&Path>) -> anyhow::Result<Config> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    if let Some(noop) = noop {
        std::fs::copy(noop, plugins.join("noop.wasm"))?;
    }
    let mut c = Config::for_dir(dir);
    c.handling.batch_size = 500;
    c.handling.poll_interval_ms = 10;
    Ok(c)
}

fn body() -> Vec<u8> {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes()
}

/// How the link between the hosts works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The default configuration.
    Default,
    /// The previous behaviour: one batch unanswered at a time, each batch
    /// its own inbox commit.
    Previous,
}

/// Host B listening on `scheme`, host A routing bench.Noop to it.
async fn pair(
    a: &Args,
    scheme: &str,
    mode: Mode,
) -> anyhow::Result<(Host, Host, tempfile::TempDir, tempfile::TempDir)> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut cb = host_config(db.path(), Some(&a.noop))?;
    cb.listen.push(ListenConfig {
        uri: format!("{scheme}://127.0.0.1:0").parse()?,
    });
    if mode == Mode::Previous {
        cb.tcp.batches_per_commit = 1;
        cb.tcp.hand_to_worker = false;
    }
    let b = Host::start(cb).await?;
    let mut ca = host_config(da.path(), None)?;
    if mode == Mode::Previous {
        ca.sending.batches_in_flight = 1;
    }
    ca.route.push(RouteConfig {
        message_type: "bench.Noop".into(),
        to: b.listeners[0].parse()?,
    });
    let a = Host::start(ca).await?;
    Ok((a, b, da, db))
}

/// N envelopes A → B; messages per second.
async fn throughput(args: &Args, scheme: &str, mode: Mode) -> anyhow::Result<f64> {
    let (a, b, _da, _db) = pair(args, scheme, mode).await?;
    let w = watch(&b);
    let durable = scheme == "durable";
    let dest = Destination::parse(b.listeners[0].clone());
    let items: Vec<Outgoing> = (0..args.messages)
        .map(|_| {
            let mut env = Envelope::new("bench.Noop", body());
            env.destination = Some(dest.clone());
            Outgoing::from_envelope(&env, durable)
        })
        .collect();
    if durable {
        for chunk in items.chunks(1000) {
            let commit = CommitBatch {
                outgoing: chunk.iter().map(|o| o.row(a.node_id)).collect(),
                ..CommitBatch::default()
            };
            a.store.commit(&commit).await?;
        }
    }
    let t = Instant::now();
    a.senders().dispatch(items).await;
    w.until(args.messages, scheme).await?;
    if durable {
        // Only now: a count scans the table. B acknowledged every batch
        // before handling it, so few deletes (if any) are left.
        while a.store.counts().await?.outgoing > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let rate = args.messages as f64 / t.elapsed().as_secs_f64();
    drop(w);
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(rate)
}

/// B's durable local queue alone: the same N inserted into its inbox.
async fn local_baseline(args: &Args) -> anyhow::Result<f64> {
    let db = tempfile::tempdir()?;
    let b = Host::start(host_config(db.path(), Some(&args.noop))?).await?;
    let w = watch(&b);
    let rows: Vec<_> = (0..args.messages)
        .map(|_| {
            let mut env = Envelope::new("bench.Noop", body());
            env.destination = Some("local://noop".into());
            local_row(&env)
        })
        .collect();
    let t = Instant::now();
    for chunk in rows.chunks(500) {
        b.store.insert_incoming(chunk).await?;
    }
    w.until(args.messages, "local").await?;
    let rate = args.messages as f64 / t.elapsed().as_secs_f64();
    drop(w);
    b.shutdown().await?;
    Ok(rate)
}

/// `Host::send` on A at `rate`/s for `seconds`; latencies to B's commit.
async fn latency(args: &Args, scheme: &str, mode: Mode) -> anyhow::Result<Latency> {
    let (a, b, _da, _db) = pair(args, scheme, mode).await?;
    let w = watch(&b);
    let figures = offered_load(
        &a,
        &w,
        "bench.Noop",
        &body(),
        args.rate,
        args.seconds,
        scheme,
    )
    .await;
    drop(w);
    a.shutdown().await?;
    b.shutdown().await?;
    figures
}

fn main() -> std::process::ExitCode {
    jasper_bench::run(USAGE, bench)
}

async fn bench() -> anyhow::Result<()> {
    let a = args()?;
    // Logs to stderr, `RUST_LOG` (default warn), to see what a slow run did.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    println!(
        "jasper-tcp-bench: host A -> host B on loopback, SQLite on both, no-op plugin on B, {} messages of 200 bytes",
        a.messages
    );
    let local = local_baseline(&a).await?;
    let tcp = throughput(&a, "tcp", Mode::Default).await?;
    // Alternated, so neither way always runs on a warmer (or busier) machine.
    let mut runs = Vec::with_capacity(a.reps);
    for rep in 0..a.reps {
        let (new, old) = if rep % 2 == 0 {
            let old = throughput(&a, "durable", Mode::Previous).await?;
            (throughput(&a, "durable", Mode::Default).await?, old)
        } else {
            let new = throughput(&a, "durable", Mode::Default).await?;
            (new, throughput(&a, "durable", Mode::Previous).await?)
        };
        runs.push((new, old));
    }
    let local_after = local_baseline(&a).await?;
    let base = (local + local_after) / 2.0;
    println!(
        "  baseline: B's durable local queue alone {local:.0} msgs/s before, {local_after:.0} after"
    );
    println!(
        "  tcp://     {tcp:>7.0} msgs/s = {:.2}x the local-queue baseline",
        tcp / base
    );
    for (rep, (new, old)) in runs.iter().enumerate() {
        println!(
            "  durable:// rep {}: {new:>7.0} msgs/s, the previous way {old:>7.0} msgs/s: {:.2}x",
            rep + 1,
            new / old
        );
    }
    let median =
        |pick: fn(&(f64, f64)) -> f64| jasper_bench::median(runs.iter().map(pick).collect());
    let (durable, previous) = (median(|r| r.0), median(|r| r.1));
    println!(
        "  durable:// {durable:>7.0} msgs/s = {:.2}x the previous durable:// ({previous:.0} msgs/s: \
         batches_in_flight = 1, batches_per_commit = 1, hand_to_worker = false), {:.2}x the local-queue baseline, {:.2}x tcp:// \
         (medians of {} reps)",
        durable / previous,
        durable / base,
        durable / tcp,
        a.reps
    );
    for (scheme, mode, label) in [
        ("tcp", Mode::Default, "tcp"),
        ("durable", Mode::Default, "durable"),
        ("durable", Mode::Previous, "durable, the previous way"),
    ] {
        let Latency {
            offered,
            p50,
            p99,
            max,
        } = latency(&a, scheme, mode).await?;
        println!(
            "  {label:<8} latency at {offered:.0} msgs/s offered (Host::send on A to handled on B): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
        );
    }
    Ok(())
}
