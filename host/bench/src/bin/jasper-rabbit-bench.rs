//! `jasper-rabbit-bench`: durable RabbitMQ throughput of a started host (consume →
//! handle with the no-op plugin's `bench.Relay` → publish one `bench.Relayed`
//! → confirmed, outgoing row deleted) beside raw lapin on the same broker in
//! the same run: publish with confirms (awaited per 500), and consume with
//! one ack per message and with one `multiple` ack per 500; then the same
//! host path over RabbitMQ's AMQP 1.0 plugin (`amqp://…//amq/queue/…`, the
//! fe2o3-amqp transport; skipped with a note when the plugin is off).
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
    jasper_bench::wait_handled(&[host], n, "jasper-host relay").await?;
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

    let host_rate = host_relay(&a, &ch, &conn, &in_q, &out_q, Via::Rabbit).await?;
    let (in10, out10) = (format!("bench-in10-{run}"), format!("bench-out10-{run}"));
    declare(&ch, &in10).await?;
    declare(&ch, &out10).await?;
    let amqp10 = if amqp10_plugin_on(&a.url).await {
        Some(host_relay(&a, &ch, &conn, &in10, &out10, Via::Amqp10).await?)
    } else {
        None
    };
    for q in [&raw_q, &in_q, &out_q, &in10, &out10] {
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
    match amqp10 {
        Some(r) => println!(
            "  jasper-host over AMQP 1.0 (same path, amqp:// listener and route): {r:>7.0} msgs/s \
             = {:.2}x raw consume (ack each), {:.2}x the host over AMQP 0-9-1",
            r / ack_one,
            r / host_rate
        ),
        None => println!(
            "  jasper-host over AMQP 1.0: skipped (enable it: rabbitmq-plugins enable rabbitmq_amqp1_0)"
        ),
    }
    Ok(())
}

/// Publish `n` persistent messages of type `kind` to queue `q` over AMQP
/// 1.0 (fe2o3-amqp, SASL PLAIN), the outcomes awaited per [`BATCH`].
async fn publish10(url: &str, q: &str, n: usize, kind: &str) -> anyhow::Result<f64> {
    use fe2o3_amqp::types::messaging::{
        ApplicationProperties, Body, Data, Header, Message, Properties,
    };
    use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
    let (addr, user, pass) = broker_of(url);
    let mut conn = fe2o3_amqp::Connection::open(
        "jasper-rabbit-bench",
        format!("amqp://{user}:{pass}@{addr}").as_str(),
    )
    .await
    .context("an AMQP 1.0 connection (is rabbitmq_amqp1_0 enabled?)")?;
    let mut session = fe2o3_amqp::Session::begin(&mut conn).await?;
    let mut sender =
        fe2o3_amqp::Sender::attach(&mut session, "bench-sender", format!("/amq/queue/{q}")).await?;
    let body = body();
    let t = Instant::now();
    let mut pending = Vec::with_capacity(BATCH);
    for i in 0..n {
        let mut app = ApplicationProperties::default();
        app.0
            .insert("message-type".into(), SimpleValue::String(kind.into()));
        let m: Message<Body<Value>> = Message {
            header: Some(Header {
                durable: true,
                ..Header::default()
            }),
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(uuid::Uuid::now_v7().to_string().into()),
                subject: Some(kind.into()),
                ..Properties::default()
            }),
            application_properties: Some(app),
            body: Body::from(Data(Binary::from(body.clone()))),
            footer: None,
        };
        pending.push(sender.send_batchable(m).await?);
        if pending.len() == BATCH || i + 1 == n {
            for f in pending.drain(..) {
                f.await?
                    .accepted_or_else(|o| anyhow::anyhow!("not accepted: {o:?}"))?;
            }
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = sender.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    Ok(rate)
}

/// How the host reaches the broker in a run.
#[derive(Clone, Copy)]
enum Via {
    Rabbit,
    Amqp10,
}

/// `HOST:PORT` and the user and password of an `amqp://` URL.
fn broker_of(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (creds, at) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let addr = at.split('/').next().unwrap_or(at).to_string();
    let (user, pass) = creds.split_once(':').unwrap_or((creds, ""));
    (addr, user.to_string(), pass.to_string())
}

/// Whether the broker speaks AMQP 1.0 on its port: the plugin answers the
/// AMQP 1.0 SASL header with one of its own.
async fn amqp10_plugin_on(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, ..) = broker_of(url);
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(b"AMQP\x03\x01\x00\x00").await.ok()?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await.ok()?;
        Some(head == *b"AMQP\x03\x01\x00\x00")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), probe).await,
        Ok(Some(true))
    )
}

/// The host's run: `in_q` filled first, then timed from a started host
/// (plugins compiled, as the raw consumer is timed from a declared queue)
/// to the last confirmed output in `out_q` (outgoing table empty).
async fn host_relay(
    a: &Args,
    ch: &Channel,
    conn: &Connection,
    in_q: &str,
    out_q: &str,
    via: Via,
) -> anyhow::Result<f64> {
    match via {
        Via::Rabbit => publish(ch, in_q, a.messages, "bench.Relay").await?,
        // Over 1.0 too: RabbitMQ 3.x hands a 0-9-1 message to a 1.0
        // consumer with its routing key as the subject and no type.
        Via::Amqp10 => publish10(&a.url, in_q, a.messages, "bench.Relay").await?,
    };
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(&a.noop, plugins.join("noop.wasm"))?;
    let mut config = Config::for_dir(dir.path());
    config.handling.batch_size = 500;
    config.handling.poll_interval_ms = 10;
    config.rabbitmq.url = a.url.clone();
    let (addr, user, pass) = broker_of(&a.url);
    config.amqp.username = user;
    config.amqp.password = pass;
    let uri = |q: &str| match via {
        Via::Rabbit => format!("rabbitmq://queue/{q}"),
        Via::Amqp10 => format!("amqp://{addr}//amq/queue/{q}"),
    };
    config.listen.push(ListenConfig {
        uri: uri(in_q).parse()?,
    });
    config.route.push(RouteConfig {
        message_type: "bench.Relayed".into(),
        to: uri(out_q).parse()?,
    });
    let host = Host::start(config).await?;
    let t = Instant::now();
    relayed(&host, conn, out_q, a.messages).await?;
    let rate = a.messages as f64 / t.elapsed().as_secs_f64();
    host.shutdown().await?;
    Ok(rate)
}
