//! `jasper-rabbit-bench`: durable RabbitMQ throughput of a started host (consume →
//! handle with the no-op plugin's `bench.Relay` → publish one `bench.Relayed`
//! → confirmed, outgoing row deleted) beside raw lapin on the same broker in
//! the same rep: publish with confirms (awaited per 500), consume with one
//! ack per message and with one `multiple` ack per 500, and a raw relay
//! (consume → publish → confirmed → `multiple` ack; no store, no Wasm: the
//! broker's ceiling for a relay). Each rep on fresh queues, medians printed
//! after the reps (the broker's figures swing from run to run). Then the
//! same host path over RabbitMQ's AMQP 1.0 plugin (`amqp://…//amq/queue/…`,
//! the fe2o3-amqp transport; skipped with a note when the plugin is off).
//!
//! Usage: `jasper-rabbit-bench [--messages N] [--reps N] [--queue-type classic|quorum]
//! [--noop PATH] [--url AMQP_URL]`
//! (`make bench` runs it). Queues are named per rep and deleted after.

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
    reps: usize,
    queue_type: String,
    noop: PathBuf,
    url: String,
}

const USAGE: &str = "usage: jasper-rabbit-bench [--messages N] [--reps N] [--queue-type classic|quorum] [--noop PATH] [--url AMQP_URL]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        messages: 20_000,
        reps: 2,
        queue_type: "classic".into(),
        noop: PathBuf::from("target/wasm32-wasip2/plugin/noop.wasm"),
        url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--messages" => a.messages = jasper_bench::value(&mut it, "--messages", "a count")?,
            "--reps" => a.reps = jasper_bench::value(&mut it, "--reps", "a count")?,
            "--queue-type" => {
                a.queue_type = jasper_bench::value(&mut it, "--queue-type", "classic or quorum")?;
                if !matches!(a.queue_type.as_str(), "classic" | "quorum") {
                    return Err(jasper_bench::bad(format!(
                        "--queue-type {:?}: expected classic or quorum",
                        a.queue_type
                    )));
                }
            }
            "--noop" => a.noop = jasper_bench::value::<String>(&mut it, "--noop", "a path")?.into(),
            "--url" => a.url = jasper_bench::value::<String>(&mut it, "--url", "AMQP_URL")?,
            other => return Err(jasper_bench::bad(format!("unknown argument {other}"))),
        }
    }
    if a.messages == 0 || a.reps == 0 {
        return Err(jasper_bench::bad(
            "--messages and --reps must be at least 1",
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

const BATCH: usize = 500;

fn body() -> Vec<u8> {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(188)).into_bytes()
}

/// Declare `q` durable, of `kind` (`classic` or `quorum`), as the host
/// declares its queues with `[rabbitmq] queue_type`.
async fn declare(ch: &Channel, q: &str, kind: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString(kind.into()),
    );
    ch.queue_declare(q.into(), QueueDeclareOptions::durable(), args)
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

/// Publish one persistent message of type `kind` with a fresh id to queue
/// `q`; its confirm, for a channel in confirm mode.
async fn publish_one(
    ch: &Channel,
    q: &str,
    kind: &str,
    body: &[u8],
) -> anyhow::Result<lapin::PublisherConfirm> {
    let props = BasicProperties::default()
        .with_type(kind.into())
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_delivery_mode(2);
    Ok(ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?)
}

/// Publish `n` persistent messages of `type`, confirms awaited per 500.
async fn publish(ch: &Channel, q: &str, n: usize, kind: &str) -> anyhow::Result<f64> {
    let body = body();
    let t = Instant::now();
    for i in 0..n {
        publish_one(ch, q, kind, &body).await?;
        if (i + 1) % BATCH == 0 || i + 1 == n {
            ch.wait_for_confirms().await?;
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// A channel consuming `q` with prefetch 500.
async fn consumer(conn: &Connection, q: &str) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(BATCH as u16, BasicQosOptions::default())
        .await?;
    let consumer = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// Consume `n` with prefetch 500, one ack per message or one `multiple` ack per 500.
async fn consume(conn: &Connection, q: &str, n: usize, multiple: bool) -> anyhow::Result<f64> {
    let (ch, mut consumer) = consumer(conn, q).await?;
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

/// Delete the bench's `queues` (what is left in them with them).
async fn delete(ch: &Channel, queues: &[String]) {
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Raw lapin relay, nothing else (no store, no Wasm): consume `n` from
/// `in_q` (prefetch 500), publish each to `out_q` as a persistent
/// `bench.Relayed` in batches of what arrived (at most 250, as the host's
/// listener gathers), up to 4 batches' confirms awaited at once (as the
/// host's sender window), each batch acknowledged with one `multiple` ack
/// once its confirms are in. The broker's share of the host's relay: its
/// ceiling on this broker.
async fn relay_raw(conn: &Connection, in_q: &str, out_q: &str, n: usize) -> anyhow::Result<f64> {
    const WINDOW: usize = 4;
    let (consume_ch, mut consumer) = consumer(conn, in_q).await?;
    let publish_ch = conn.create_channel().await?;
    publish_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let t = Instant::now();
    let mut unconfirmed = std::collections::VecDeque::new();
    let (mut published, mut acked) = (0, 0);
    while acked < n {
        let room = published < n && unconfirmed.len() < WINDOW;
        let oldest = async {
            match unconfirmed.front_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            confirmed = oldest => {
                unconfirmed.pop_front();
                let (tag, size) = confirmed??;
                consume_ch
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await?;
                acked += size;
            }
            d = tokio::time::timeout(Duration::from_secs(60), consumer.next()),
                if room =>
            {
                let mut gathered = vec![d.context("raw relay stalled")?.context("consumer ended")??];
                // What else has arrived, up to half the prefetch.
                while gathered.len() < BATCH / 2 && published + gathered.len() < n {
                    match futures::FutureExt::now_or_never(consumer.next()) {
                        Some(Some(d)) => gathered.push(d?),
                        _ => break,
                    }
                }
                let mut confirms = Vec::with_capacity(gathered.len());
                for d in &gathered {
                    confirms.push(publish_one(&publish_ch, out_q, "bench.Relayed", &d.data).await?);
                }
                let last = gathered.last().map(|d| d.delivery_tag).unwrap_or_default();
                let size = gathered.len();
                published += size;
                unconfirmed.push_back(tokio::spawn(async move {
                    for c in confirms {
                        c.await?;
                    }
                    Ok::<_, lapin::Error>((last, size))
                }));
            }
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = consume_ch.close(200, "ok".into()).await;
    let _ = publish_ch.close(200, "ok".into()).await;
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
    let conn = Connection::connect(&a.url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", a.url))?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    println!(
        "jasper-rabbit-bench: {} persistent messages of 200 bytes, {} durable queues, SQLite store, {} reps",
        a.messages, a.queue_type, a.reps
    );
    let mut reps = Vec::with_capacity(a.reps);
    for k in 1..=a.reps {
        let r = rep(&a, &conn, &ch).await?;
        println!(
            "  rep {k}: raw publish {:.0}, raw consume (ack each) {:.0}, (multiple ack) {:.0}, \
             raw relay {:.0}, jasper-host relay {:.0} msgs/s: {:.2}x raw consume (ack each), \
             {:.2}x the raw relay",
            r.publish,
            r.ack_one,
            r.ack_multi,
            r.raw_relay,
            r.host,
            r.host / r.ack_one,
            r.host / r.raw_relay
        );
        reps.push(r);
    }
    let med = |f: fn(&Rates) -> f64| jasper_bench::median(reps.iter().map(f).collect());
    let (pub_rate, ack_one, ack_multi, raw_relay, host_rate) = (
        med(|r| r.publish),
        med(|r| r.ack_one),
        med(|r| r.ack_multi),
        med(|r| r.raw_relay),
        med(|r| r.host),
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (in10, out10) = (format!("bench-in10-{run}"), format!("bench-out10-{run}"));
    declare(&ch, &in10, &a.queue_type).await?;
    declare(&ch, &out10, &a.queue_type).await?;
    let amqp10 = if amqp10_plugin_on(&a.url).await {
        Some(host_relay(&a, &ch, &conn, &in10, &out10, Via::Amqp10).await?)
    } else {
        None
    };
    delete(&ch, &[in10, out10]).await;

    println!("medians of {} reps:", a.reps);
    println!("  raw lapin publish with confirms (per {BATCH}): {pub_rate:>7.0} msgs/s");
    println!("  raw lapin consume, one ack per message:      {ack_one:>7.0} msgs/s");
    println!("  raw lapin consume, multiple ack per {BATCH}:     {ack_multi:>7.0} msgs/s");
    println!(
        "  raw lapin relay (consume -> publish -> confirmed -> multiple ack, no store): {raw_relay:>7.0} msgs/s \
         = {:.2}x raw consume (ack each)",
        raw_relay / ack_one
    );
    println!(
        "  jasper-host consume -> inbox -> no-op relay -> publish -> confirmed: {host_rate:>7.0} msgs/s \
         = {:.2}x raw consume (ack each), {:.2}x raw consume (multiple ack), {:.2}x raw publish, \
         {:.2}x the raw lapin relay",
        host_rate / ack_one,
        host_rate / ack_multi,
        host_rate / pub_rate,
        host_rate / raw_relay
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

/// One rep's rates, msgs/s.
struct Rates {
    publish: f64,
    ack_one: f64,
    ack_multi: f64,
    raw_relay: f64,
    host: f64,
}

/// One rep on queues of its own (deleted after): raw publish, raw consume
/// both ways, the raw relay, then the host's relay over AMQP 0-9-1.
async fn rep(a: &Args, conn: &Connection, ch: &Channel) -> anyhow::Result<Rates> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let queues = [
        format!("bench-raw-{run}"),
        format!("bench-raw-out-{run}"),
        format!("bench-in-{run}"),
        format!("bench-out-{run}"),
    ];
    let [raw_q, relay_out, in_q, out_q] = &queues;
    for q in &queues {
        declare(ch, q, &a.queue_type).await?;
    }
    let n = a.messages;
    let publish_rate = publish(ch, raw_q, n, "bench.Noop").await?;
    let ack_one = consume(conn, raw_q, n, false).await?;
    publish(ch, raw_q, n, "bench.Noop").await?;
    let ack_multi = consume(conn, raw_q, n, true).await?;
    publish(ch, raw_q, n, "bench.Noop").await?;
    let raw_relay = relay_raw(conn, raw_q, relay_out, n).await?;
    let host = host_relay(a, ch, conn, in_q, out_q, Via::Rabbit).await?;
    delete(ch, &queues).await;
    Ok(Rates {
        publish: publish_rate,
        ack_one,
        ack_multi,
        raw_relay,
        host,
    })
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
    config.rabbitmq.queue_type = a.queue_type.clone();
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
