//! A plain AMQP client (lapin, nothing of jasper-host) for the RabbitMQ
//! suites: it publishes with publisher confirms, consumes and acknowledges,
//! reads queue lengths, and deletes the queues and exchanges a test made
//! ([`Amqp::cleanup`], or on drop with a connection of its own, pass or fail).
//! [`Proxy`] stands between hosts and the broker and can freeze (a broker
//! that hangs). [`BrokerOutage`] stops the broker's application
//! (`rabbitmqctl stop_app`) and always starts it again, even if the test
//! panics.
//!
//! The broker: `JASPER_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::{CmdOut, block_on_own_runtime, run_tool};

/// The broker the suites use when `JASPER_TEST_AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Publishes in flight before their confirms are awaited.
const PUBLISH_WINDOW: usize = 1000;
/// How long one AMQP operation of the helpers may take.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// `JASPER_TEST_AMQP_URL`, or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    match std::env::var("JASPER_TEST_AMQP_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => DEFAULT_AMQP_URL.to_owned(),
    }
}

/// A queue or exchange name of its own: `prefix-<32 hex digits>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `rabbitmq://queue/NAME`.
pub fn queue_uri(name: &str) -> String {
    format!("rabbitmq://queue/{name}")
}

/// `rabbitmq://exchange/NAME`.
pub fn exchange_uri(name: &str) -> String {
    format!("rabbitmq://exchange/{name}")
}

/// A message as a plain client sends it: the `type` property, a message id,
/// `application/json`, persistent.
pub fn typed_message(message_type: &str, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_type(ShortString::from(message_type))
        .with_message_id(ShortString::from(message_id))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

async fn timed<T>(what: &str, fut: impl Future<Output = lapin::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow::anyhow!("{what}: no answer within {OP_TIMEOUT:?}")),
    }
}

/// Opens a connection to [`amqp_url`].
pub async fn connect() -> anyhow::Result<Connection> {
    timed(
        "connecting to RabbitMQ",
        Connection::connect(&amqp_url(), ConnectionProperties::default()),
    )
    .await
}

/// Whether the broker takes an AMQP connection now (within 2 s).
pub async fn broker_answers() -> bool {
    let attempt = async {
        let c = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let ch = c.create_channel().await?;
        let _ = ch.close(200, ShortString::from("probe")).await;
        let _ = c.close(200, ShortString::from("probe")).await;
        lapin::Result::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(()))
    )
}

/// What a test made and must delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owned {
    Queue(String),
    Exchange(String),
}

/// Deletes `owned` over a connection of its own; retries connecting for up
/// to `patience` (the broker may be coming back from an outage).
async fn delete_owned(owned: Vec<Owned>, patience: Duration) -> anyhow::Result<()> {
    if owned.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let conn = loop {
        match connect().await {
            Ok(c) => break c,
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let mut failed = Vec::new();
    for o in owned {
        // A channel per deletion: a failed one closes its channel.
        let ch = timed("opening a channel", conn.create_channel()).await?;
        let r = match &o {
            Owned::Queue(q) => timed(
                "deleting a queue",
                ch.queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default()),
            )
            .await
            .map(|_| ()),
            Owned::Exchange(x) => {
                timed(
                    "deleting an exchange",
                    ch.exchange_delete(
                        ShortString::from(x.as_str()),
                        ExchangeDeleteOptions::default(),
                    ),
                )
                .await
            }
        };
        if let Err(e) = r {
            failed.push(format!("{o:?}: {e:#}"));
        }
        let _ = ch.close(200, ShortString::from("bye")).await;
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    anyhow::ensure!(failed.is_empty(), "could not delete {failed:?}");
    Ok(())
}

/// A plain AMQP client with a confirm-mode channel. Queues and exchanges
/// registered with [`Amqp::own_queue`] / [`Amqp::own_exchange`] (or made by
/// [`Amqp::declare_queue`]) are deleted by [`Amqp::cleanup`], or on drop.
pub struct Amqp {
    /// The connection of `ch`, reopened (for the other channels: passive
    /// declares, consumers) once it is lost, as in a broker outage.
    conn: tokio::sync::Mutex<Connection>,
    ch: Channel,
    owned: Arc<Mutex<BTreeSet<Owned>>>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

impl Amqp {
    /// Connects to [`amqp_url`]; panics with what to start if it cannot.
    pub async fn connect() -> Amqp {
        let conn = connect().await.unwrap_or_else(|e| {
            panic!(
                "{e:#}\nThe RabbitMQ suites need a broker at {} (set JASPER_TEST_AMQP_URL, or start rabbitmq-server; .ci/run does)",
                crate::amqp::redacted(&amqp_url())
            )
        });
        let ch = timed("opening a channel", conn.create_channel())
            .await
            .expect("a channel");
        timed(
            "enabling publisher confirms",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .expect("confirm mode");
        Amqp {
            conn: tokio::sync::Mutex::new(conn),
            ch,
            owned: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// The confirm-mode channel (it dies with the broker: after an outage,
    /// publish with a new client).
    pub fn channel(&self) -> &Channel {
        &self.ch
    }

    /// A new channel, on a new connection if the client's was lost.
    pub async fn new_channel(&self) -> anyhow::Result<Channel> {
        let mut conn = self.conn.lock().await;
        if conn.status().connected()
            && let Ok(ch) = timed("opening a channel", conn.create_channel()).await
        {
            return Ok(ch);
        }
        let fresh = connect().await?;
        let ch = timed("opening a channel", fresh.create_channel()).await?;
        *conn = fresh;
        Ok(ch)
    }

    /// Deleted at the end: a queue the test (or a host) declares.
    pub fn own_queue(&self, name: &str) {
        self.owned
            .lock()
            .expect("owned lock")
            .insert(Owned::Queue(name.to_owned()));
    }

    /// Deleted at the end: an exchange the test (or a host) declares.
    pub fn own_exchange(&self, name: &str) {
        self.owned
            .lock()
            .expect("owned lock")
            .insert(Owned::Exchange(name.to_owned()));
    }

    /// Declares `name` as the host declares a listener's queue (durable,
    /// `x-queue-type = classic`, so the host's own declare agrees), and owns it.
    pub async fn declare_queue(&self, name: &str) {
        self.own_queue(name);
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("classic")),
        );
        timed(
            &format!("declaring queue {name}"),
            self.ch.queue_declare(
                ShortString::from(name),
                QueueDeclareOptions::durable(),
                args,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Publishes every message to `exchange` with `routing_key` (`""` and the
    /// queue's name for a queue), `mandatory` (so an unroutable one is
    /// returned), up to [`PUBLISH_WINDOW`] in flight, and panics unless the
    /// broker confirmed each (ack, not returned).
    pub async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: impl IntoIterator<Item = (BasicProperties, Vec<u8>)>,
    ) -> usize {
        publish_all_on(&self.ch, exchange, routing_key, messages).await
    }

    /// [`Amqp::publish_all`] into `queue` through the default exchange.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        messages: impl IntoIterator<Item = (BasicProperties, Vec<u8>)>,
    ) -> usize {
        self.publish_all("", queue, messages).await
    }

    /// (ready messages, consumers) of `queue`, None if it does not exist.
    /// Unacknowledged deliveries are not in the first number. A passive
    /// declare of a missing queue closes its channel, so each uses a new one.
    pub async fn queue_info(&self, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
        let ch = self.new_channel().await?;
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            ch.queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        match r {
            Ok(Ok(q)) => {
                let _ = ch.close(200, ShortString::from("ok")).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            // 404 NOT_FOUND: the broker closed the channel.
            Ok(Err(e)) if e.to_string().contains("NOT_FOUND") => Ok(None),
            Ok(Err(e)) => Err(anyhow::anyhow!("passive declare of {queue}: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "passive declare of {queue}: no answer within {OP_TIMEOUT:?}"
            )),
        }
    }

    /// Ready messages in `queue`, None if it does not exist.
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.queue_info(queue).await?.map(|(n, _)| n))
    }

    /// Consumes `queue` (acknowledging each delivery) until `done(&all so
    /// far)` holds, then for `quiet` more with nothing arriving (copies that
    /// come late are returned too). Panics if nothing arrives for `idle`
    /// before `done`, with how many came.
    pub async fn consume_until(
        &self,
        queue: &str,
        idle: Duration,
        quiet: Duration,
        mut done: impl FnMut(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let ch = self
            .new_channel()
            .await
            .unwrap_or_else(|e| panic!("a consumer channel: {e:#}"));
        timed("prefetch", ch.basic_qos(500, BasicQosOptions::default()))
            .await
            .expect("prefetch");
        let tag = unique_name("e2e-consumer");
        let mut consumer = timed(
            &format!("consuming {queue}"),
            ch.basic_consume(
                ShortString::from(queue),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut got: Vec<Delivery> = Vec::new();
        let mut finished = false;
        loop {
            let wait = if finished { quiet } else { idle };
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    timed("acknowledging", d.ack(BasicAckOptions::default()))
                        .await
                        .unwrap_or_else(|e| panic!("{e:#}"));
                    got.push(d);
                    if !finished && done(&got) {
                        finished = true;
                    }
                }
                Ok(Some(Err(e))) => {
                    panic!("consuming {queue}: {e} (after {} deliveries)", got.len())
                }
                Ok(None) => panic!(
                    "the consumer of {queue} was cancelled after {} deliveries",
                    got.len()
                ),
                Err(_) if finished => break,
                Err(_) => panic!(
                    "nothing arrived in {queue} for {idle:?}; {} deliveries so far",
                    got.len()
                ),
            }
        }
        let _ = ch
            .basic_cancel(
                ShortString::from(tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await;
        let _ = ch.close(200, ShortString::from("done")).await;
        got
    }

    /// Deletes what this client owns, over a connection of its own (this
    /// one may have died with the broker); waits up to 60 s for the broker.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let owned: Vec<Owned> = std::mem::take(&mut *self.owned.lock().expect("owned lock"))
            .into_iter()
            .collect();
        delete_owned(owned, Duration::from_secs(60)).await
    }
}

impl Drop for Amqp {
    fn drop(&mut self) {
        let owned: Vec<Owned> = match self.owned.lock() {
            Ok(mut o) => std::mem::take(&mut *o).into_iter().collect(),
            Err(_) => return,
        };
        if owned.is_empty() {
            return;
        }
        if std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("e2e: keeping the RabbitMQ queues/exchanges {owned:?}");
            return;
        }
        let r = block_on_own_runtime(delete_owned(owned, Duration::from_secs(60)));
        if let Err(e) = r {
            eprintln!("e2e: RabbitMQ cleanup: {e:#}");
        }
    }
}

/// Publishes on `ch` (in confirm mode); see [`Amqp::publish_all`].
pub async fn publish_all_on(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: impl IntoIterator<Item = (BasicProperties, Vec<u8>)>,
) -> usize {
    let mut in_flight = Vec::with_capacity(PUBLISH_WINDOW);
    let mut n = 0;
    for (props, body) in messages {
        let confirm = timed(
            "publishing",
            ch.basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                props,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#} (after {n} messages)"));
        in_flight.push(confirm);
        n += 1;
        if in_flight.len() >= PUBLISH_WINDOW {
            settle(std::mem::take(&mut in_flight), exchange, routing_key).await;
        }
    }
    settle(in_flight, exchange, routing_key).await;
    n
}

async fn settle(confirms: Vec<lapin::PublisherConfirm>, exchange: &str, routing_key: &str) {
    for c in confirms {
        match timed("waiting for a publisher confirm", c).await {
            Ok(Confirmation::Ack(None)) => {}
            Ok(Confirmation::Ack(Some(ret))) => panic!(
                "the broker returned a message published to exchange {exchange:?} with key {routing_key:?}: {} {}",
                ret.reply_code, ret.reply_text
            ),
            Ok(other) => panic!("the broker did not confirm a message: {other:?}"),
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// The URL without its password.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Broker outage
// ---------------------------------------------------------------------------

/// How long `rabbitmqctl` may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the broker may take to take connections again after `start_app`.
const BACK_TIMEOUT: Duration = Duration::from_secs(120);

fn rabbitmqctl(action: &str) -> CmdOut {
    let mut cmd = Command::new("rabbitmqctl");
    cmd.arg(action);
    run_tool(cmd, None, CTL_TIMEOUT)
}

/// The broker's application stopped (`rabbitmqctl stop_app`: connections
/// closed, port shut, the node itself running). [`BrokerOutage::end`] starts
/// it again and waits until it takes AMQP connections; so does dropping the
/// guard, pass or fail, so no later test finds the broker down.
/// Only for a test binary of its own: every test running meanwhile loses
/// the broker too.
#[derive(Debug)]
pub struct BrokerOutage {
    ended: bool,
    pub stopped_at: Instant,
}

impl BrokerOutage {
    /// `rabbitmqctl stop_app`; panics (after starting it again) if it fails.
    #[track_caller]
    pub fn begin() -> BrokerOutage {
        // The guard first: a stop that half-worked is undone too.
        let mut guard = BrokerOutage {
            ended: false,
            stopped_at: Instant::now(),
        };
        let out = rabbitmqctl("stop_app");
        assert!(
            out.success(),
            "rabbitmqctl stop_app failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        guard.stopped_at = Instant::now();
        guard
    }

    /// `rabbitmqctl start_app`, then waits until an AMQP connection works.
    /// Returns how long the broker was down.
    #[track_caller]
    pub fn end(mut self) -> Duration {
        self.ended = true;
        restart().unwrap_or_else(|e| panic!("{e:#}"));
        self.stopped_at.elapsed()
    }
}

fn restart() -> anyhow::Result<()> {
    let out = rabbitmqctl("start_app");
    anyhow::ensure!(
        out.success(),
        "rabbitmqctl start_app failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let start = Instant::now();
    let back = block_on_own_runtime(async move {
        while start.elapsed() < BACK_TIMEOUT {
            if broker_answers().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    anyhow::ensure!(
        back,
        "the broker took no AMQP connection within {BACK_TIMEOUT:?} of start_app"
    );
    Ok(())
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        eprintln!("e2e: starting the broker again (the test ended during its outage)");
        // No panic may leave a Drop that runs while unwinding (abort).
        let r = std::panic::catch_unwind(restart)
            .unwrap_or_else(|_| Err(anyhow::anyhow!("restarting the broker panicked")));
        if let Err(e) = r {
            let msg = format!("e2e: {e:#}");
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A broker that hangs
// ---------------------------------------------------------------------------

/// [`amqp_url`] with its `host:port` replaced by `127.0.0.1:port`.
pub fn url_via(port: u16) -> String {
    let url = amqp_url();
    let start = match (url.find("://"), url.rfind('@')) {
        (Some(_), Some(at)) => at + 1,
        (Some(s), None) => s + 3,
        _ => 0,
    };
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..])
}

/// A TCP proxy in front of the broker (its `host:port` of [`amqp_url`]), in
/// the test's runtime, whose connections can be frozen: nothing is read or
/// forwarded either way while the sockets stay open, as with a broker that
/// hangs or a network that drops everything. [`Proxy::cut`] closes them.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to the broker.
    pub async fn start() -> Proxy {
        let url = amqp_url();
        let authority = {
            let after = url
                .rfind('@')
                .map(|i| i + 1)
                .or_else(|| url.find("://").map(|i| i + 3))
                .unwrap_or(0);
            let rest = &url[after..];
            rest[..rest.find('/').unwrap_or(rest.len())].to_owned()
        };
        let target = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:5672")
        };
        let port = crate::free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("proxy bind 127.0.0.1:{port}: {e}"));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (frozen, conns) = (frozen.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let mut c = conns.lock().expect("conns lock");
                    c.push(tokio::spawn(pipe(cr, sw, frozen.clone())));
                    c.push(tokio::spawn(pipe(sr, cw, frozen.clone())));
                }
            })
        };
        Proxy {
            port,
            frozen,
            accept,
            conns,
        }
    }

    /// The AMQP URL through this proxy.
    pub fn url(&self) -> String {
        url_via(self.port)
    }

    /// Stop forwarding (the connections stay open, nothing moves).
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forward again.
    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Close every connection made so far (both sides see them end).
    pub fn cut(&self) {
        for t in self.conns.lock().expect("conns lock").drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` while not frozen; ends when either side does.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read before a freeze, forwarded after it: a frozen proxy holds
        // what it has, too.
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
