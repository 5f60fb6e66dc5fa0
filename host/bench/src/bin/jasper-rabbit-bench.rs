//! `jasper-rabbit-bench`: durable RabbitMQ throughput of a started host (consume →
//! handle with the no-op plugin's `bench.Relay` → publish one `bench.Relayed`
//! → confirmed, outgoing row deleted) beside raw lapin on the same broker in
//! the same run: publish with confirms (awaited per 500), and consume with
//! one ack per message and with one `multiple` ack per 500.
//!
//! Usage: `jasper-rabbit-bench [--messages N] [--noop PATH] [--url AMQP_URL]`
//! (`make bench` runs it). Queues are named per run and deleted after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use jasper_host::Host;
use jasper_host::config::{Config, ListenConfig, RouteConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

struct Args {
    messages: usize,
    noop: PathBuf,
    url: String,
}

const USAGE: &str = "usage: jasper-rabbit-bench [--messages N] [--noop PATH] [--url AMQP_URL]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
        url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = jasper_bench::value(&mut it, "--messages", "a count")?,
            "--noop" => a.noop = jasper_bench::value::<String>(&mut it, "--noop", "a path")?.into(),
            "--url" => a.url = jasper_bench::value::<String>(&mut it, "--url", "AMQP_URL")?,
            other => return Err(jasper_bench::bad(format!("unknown argument {other}"))),
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

const BATCH: usize = 500;

fn body() -> Vec<u8> {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes()
}

async fn declare(ch: &Channel, q: &str) -> anyhow::Result<()> {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

async fn queue_len(conn: &Connection, q: &str) -> anyhow::Result<u32> {
    let ch = conn.create_channel().await?;
    let n = ch
        .queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let _ = ch.close(200, "ok".into()).await;
    Ok(n)
}

/// Publish `n` persistent messages of `type`, confirms awaited per 500.
async fn publish(ch: &Channel, q: &str, n: usize, kind: &str) -> anyhow::Result<f64> {
    let body = body();
    let t = Instant::now();
    for i in 0..n {
        let props = BasicProperties::default()
            .with_type(kind.into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_delivery_mode(2);
        ch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await?;
        if (i + 1) % BATCH == 0 || i + 1 == n {
            ch.wait_for_confirms().await?;
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Consume `n` with prefetch 500, one ack per message or one `multiple` ack per 500.
async fn consume(conn: &Connection, q: &str, n: usize, multiple: bool) -> anyhow::Result<f64> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(BATCH as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let t = Instant::now();
    for i in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("consume stalled")?
            .context("consumer ended")??;
        if !multiple {
            d.ack(BasicAckOptions::default()).await?;
        } else if (i + 1) % BATCH == 0 || i + 1 == n {
            d.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = ch.close(200, "ok".into()).await;
    Ok(rate)
}

/// Wait until the host has relayed `n`: handled (counted from the batches
/// it announces, so no query competes with it), then every output in
/// `out_q` and no outgoing row left (checked every 5 ms from then on: the
/// confirms and deletes trail the last commit by a few milliseconds).
async fn relayed(host: &Host, conn: &Connection, out_q: &str, n: usize) -> anyhow::Result<()> {
    jasper_bench::wait_handled(&*host.store, &[host], n, "jasper-host relay").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = queue_len(conn, out_q).await? as usize;
        if out >= n {
            let c = host.store.counts().await?;
            if c.outgoing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{out} relayed, but {} outgoing rows left after 60 s",
                    c.outgoing
                );
            }
        } else if Instant::now() > deadline {
            bail!("all {n} handled, but only {out} in {out_q} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (raw_q, in_q, out_q) = (
        format!("bench-raw-{run}"),
        format!("bench-in-{run}"),
        format!("bench-out-{run}"),
    );
    let conn = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", a.url))?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for q in [&raw_q, &in_q, &out_q] {
        declare(&ch, q).await?;
    }
    println!(
        "jasper-rabbit-bench: {} persistent messages of 200 bytes, classic durable queues, SQLite store",
        a.messages
    );

    let pub_rate = publish(&ch, &raw_q, a.messages, "bench.Noop").await?;
    let ack_one = consume(&conn, &raw_q, a.messages, false).await?;
    publish(&ch, &raw_q, a.messages, "bench.Noop").await?;
    let ack_multi = consume(&conn, &raw_q, a.messages, true).await?;

    // The host: the input queue filled first, then timed from start to the
    // last confirmed output (outgoing table empty).
    publish(&ch, &in_q, a.messages, "bench.Relay").await?;
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = Config::for_dir(dir.path());
    config.handling.batch_size = 500;
    config.handling.poll_interval_ms = 10;
    config.rabbitmq.url = a.url.clone();
    config.listen.push(ListenConfig {
        uri: format!("rabbitmq://queue/{in_q}").parse()?,
    });
    config.route.push(RouteConfig {
        message_type: "bench.Relayed".into(),
        to: format!("rabbitmq://queue/{out_q}").parse()?,
    });
    // Timed from a started host (plugins compiled), as the raw consumer is
    // timed from a declared queue.
    let host = Host::start(config).await?;
    let t = Instant::now();
    relayed(&host, &conn, &out_q, a.messages).await?;
    let host_rate = a.messages as f64 / t.elapsed().as_secs_f64();
    host.shutdown().await?;
    for q in [&raw_q, &in_q, &out_q] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }

    println!("  raw lapin publish with confirms (per {BATCH}): {pub_rate:>7.0} msgs/s");
    println!("  raw lapin consume, one ack per message:      {ack_one:>7.0} msgs/s");
    println!("  raw lapin consume, multiple ack per {BATCH}:     {ack_multi:>7.0} msgs/s");
    println!(
        "  jasper-host consume -> inbox -> no-op relay -> publish -> confirmed: {host_rate:>7.0} msgs/s \
         = {:.2}x raw consume (ack each), {:.2}x raw consume (multiple ack), {:.2}x raw publish",
        host_rate / ack_one,
        host_rate / ack_multi,
        host_rate / pub_rate
    );
    Ok(())
}
