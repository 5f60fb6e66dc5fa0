//! The transport keys of the config file: `[[listen]]`, `[[route]]`,
//! `[sending]` (the mechanics every sender shares) and `[tcp]` (the built-in
//! TCP transport's security and limits). Parsed and checked here; used by
//! `transport`.

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::address::{Endpoint, RabbitEndpoint};

/// `[[listen]]`: an endpoint this host receives on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `tcp://HOST:PORT` or `durable://HOST:PORT` (port 0: any free port),
    /// `rabbitmq://queue/NAME`, `amqp[s]://HOST:PORT/ADDRESS` (an AMQP 1.0
    /// node) or `asb://NAMESPACE/ENTITY` (a Service Bus queue or
    /// `TOPIC/Subscriptions/NAME`).
    pub uri: Endpoint,
}

/// `[[route]]`: where published messages of matching types also go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A message type, or a pattern with `*` standing for any characters
    /// (`billing.*`).
    pub message_type: String,
    /// The destination.
    pub to: Endpoint,
}

/// `[sending]`: batching, retries, breaker and recovery of every sender.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendingConfig {
    /// Most envelopes per batch sent to a peer, default 500.
    pub batch_size: usize,
    /// How long a batch waits for more envelopes once it has one, default 2 ms.
    pub batch_window_ms: u64,
    /// Batches sent to one `tcp://` or `durable://` peer, or published to
    /// one RabbitMQ destination, before the first is acknowledged (or
    /// confirmed), default 4, so the link is busy while the peer commits;
    /// 1 waits for each acknowledgement before the next batch.
    pub batches_in_flight: usize,
    /// Connecting and authenticating, default 5000.
    pub connect_timeout_ms: u64,
    /// Waiting for the peer's acknowledgement of a batch, default 30000.
    pub ack_timeout_ms: u64,
    /// Backoff after a failed send (doubles per failure, at most 5 s), default 100.
    pub retry_delay_ms: u64,
    /// Consecutive failures that open the circuit breaker, default 3.
    pub breaker_failures: u32,
    /// While the breaker is open, a ping this often; the first that succeeds
    /// closes it. Default 1000.
    pub ping_interval_ms: u64,
    /// How often unsent outgoing rows no sender holds (left by a crashed node,
    /// or written by `jasper-host send`) are picked up, default 1000.
    pub recovery_interval_ms: u64,
    /// Envelopes of a `tcp://` destination held in memory while its peer is
    /// unreachable; beyond this the oldest are dropped (fire and forget).
    /// Default 100000.
    pub max_held: usize,
}

impl Default for SendingConfig {
    fn default() -> Self {
        SendingConfig {
            batch_size: 500,
            batch_window_ms: 2,
            batches_in_flight: 4,
            connect_timeout_ms: 5000,
            ack_timeout_ms: 30_000,
            retry_delay_ms: 100,
            breaker_failures: 3,
            ping_interval_ms: 1000,
            recovery_interval_ms: 1000,
            max_held: 100_000,
        }
    }
}

/// `[tcp]`: security and limits of the built-in TCP transport, for listeners
/// and senders alike.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// A shared secret (at least 16 bytes): both sides prove they know it
    /// (HMAC challenge and response) before any frame is read.
    pub secret: Option<String>,
    /// The shared secret read from a file (trailing whitespace trimmed).
    pub secret_file: Option<PathBuf>,
    /// TLS on every listener and sender.
    pub tls: bool,
    /// This node's certificate chain (PEM): listeners present it, and senders
    /// too when `mutual_tls` is on.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that peers' certificates must chain to.
    pub tls_ca: Option<PathBuf>,
    /// Listeners require a client certificate signed by `tls_ca`.
    pub mutual_tls: bool,
    /// Name the peer's certificate must carry; default: the host of the URI.
    pub tls_server_name: Option<String>,
    /// Open connections per listener, default 256; more are closed at once.
    pub max_connections: usize,
    /// Time a new connection has to finish TLS and the handshake, default 5000.
    pub handshake_timeout_ms: u64,
    /// Time a frame has to arrive whole once its first byte came, default 10000.
    pub frame_timeout_ms: u64,
    /// A connection idle this long is closed, default 300000.
    pub idle_timeout_ms: u64,
    /// Largest frame accepted, in bytes, default 64 MiB.
    pub max_frame_bytes: u32,
    /// Most envelopes per received batch, default 10000.
    pub max_batch: usize,
    /// Batches of one connection that arrived together written to the inbox
    /// in one transaction, default 8; 1 commits each batch alone.
    pub batches_per_commit: usize,
    /// A `durable://` listener claims the rows it writes for this node in the
    /// same transaction and hands them to the worker once committed (when
    /// it has room), sparing the worker a claim; default true. `false`: the
    /// worker claims them from the inbox like any other row.
    pub hand_to_worker: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            secret: None,
            secret_file: None,
            tls: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            mutual_tls: false,
            tls_server_name: None,
            max_connections: 256,
            handshake_timeout_ms: 5000,
            frame_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            max_frame_bytes: 64 << 20,
            max_batch: 10_000,
            batches_per_commit: 8,
            hand_to_worker: true,
        }
    }
}

/// `[rabbitmq]`: the broker and the topology the host declares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    /// AMQP URL, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Unacknowledged deliveries per listener, default 500. A listener
    /// writes at most half of it to the inbox in one transaction, so the
    /// next batch arrives while one commits.
    pub prefetch: u16,
    /// How long a listener waits for a batch to fill, default 5 ms.
    pub batch_window_ms: u64,
    /// Declare queues, exchanges and bindings (idempotent) on every connect;
    /// `false`: expect them to exist (a missing one is named in the error).
    pub declare: bool,
    /// `classic` or `quorum`, for queues the host declares.
    pub queue_type: String,
    /// A fanout exchange (and a queue of the same name bound to it) set as
    /// `x-dead-letter-exchange` on declared queues; empty: none.
    pub dead_letter_exchange: String,
    /// `[[rabbitmq.binding]]`: exchange → queue bindings to declare.
    pub binding: Vec<BindingConfig>,
}

/// `[[rabbitmq.binding]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// A topic exchange (declared durable).
    pub exchange: String,
    pub queue: String,
    /// Default `#` (everything).
    #[serde(default = "all_keys")]
    pub routing_key: String,
}

fn all_keys() -> String {
    "#".into()
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 500,
            batch_window_ms: 5,
            declare: true,
            queue_type: "classic".into(),
            dead_letter_exchange: String::new(),
            binding: Vec::new(),
        }
    }
}

/// The key and the reason when a TOML error is a bad `[[listen]] uri` or
/// `[[route]] to`: the URI failed to parse while the file was read, and is
/// reported like any other invalid value (`listen[0].uri: ...`) rather than
/// as bad TOML. `span` is where the TOML error points.
pub(super) fn uri_error_at(text: &str, span: Range<usize>) -> Option<(String, String)> {
    // Only the URIs, with where they are; every other key is ignored.
    #[derive(Deserialize)]
    struct Uris {
        #[serde(default)]
        listen: Vec<Listen>,
        #[serde(default)]
        route: Vec<Route>,
    }
    #[derive(Deserialize)]
    struct Listen {
        uri: Option<Spanned<String>>,
    }
    #[derive(Deserialize)]
    struct Route {
        to: Option<Spanned<String>>,
    }
    let uris: Uris = toml::from_str(text).ok()?;
    let listen =
        (uris.listen.into_iter().enumerate()).map(|(i, l)| (format!("listen[{i}].uri"), l.uri));
    let route = (uris.route.into_iter().enumerate()).map(|(i, r)| (format!("route[{i}].to"), r.to));
    listen.chain(route).find_map(|(key, value)| {
        let value = value.filter(|v| v.span() == span)?;
        let e = Endpoint::parse(value.get_ref()).err()?;
        Some((key, e.to_string()))
    })
}

/// Checks of the transport keys; the error is the dotted key and what is wrong.
pub(super) fn validate(
    listen: &[ListenConfig],
    routes: &[RouteConfig],
    sending: &SendingConfig,
    tcp: &TcpConfig,
    rabbit: &RabbitConfig,
) -> Result<(), (String, String)> {
    for (i, l) in listen.iter().enumerate() {
        let key = format!("listen[{i}].uri");
        let wrong = match &l.uri {
            Endpoint::Tcp(t) if t.queue.is_none() => continue,
            Endpoint::Rabbit(RabbitEndpoint::Queue(_)) => continue,
            Endpoint::Rabbit(_) => "a RabbitMQ listener is rabbitmq://queue/NAME",
            Endpoint::Amqp(_) => continue,
            Endpoint::Tcp(_) => "a listener takes no queue path",
            Endpoint::Local { .. } => "a listener is tcp://HOST:PORT or durable://HOST:PORT",
        };
        return Err((key, format!("{:?}: {wrong}", l.uri.to_string())));
    }
    for (i, r) in routes.iter().enumerate() {
        if r.message_type.is_empty() {
            return Err((
                format!("route[{i}].message_type"),
                "must not be empty".into(),
            ));
        }
    }
    let positive = |key: &str, v: u64| {
        if v == 0 {
            Err((key.to_string(), "must be at least 1, got 0".to_string()))
        } else {
            Ok(())
        }
    };
    positive("sending.batch_size", sending.batch_size as u64)?;
    positive(
        "sending.batches_in_flight",
        sending.batches_in_flight as u64,
    )?;
    positive("sending.connect_timeout_ms", sending.connect_timeout_ms)?;
    positive("sending.ack_timeout_ms", sending.ack_timeout_ms)?;
    positive("sending.retry_delay_ms", sending.retry_delay_ms)?;
    positive(
        "sending.breaker_failures",
        u64::from(sending.breaker_failures),
    )?;
    positive("sending.ping_interval_ms", sending.ping_interval_ms)?;
    positive("sending.recovery_interval_ms", sending.recovery_interval_ms)?;
    positive("tcp.max_connections", tcp.max_connections as u64)?;
    positive("tcp.handshake_timeout_ms", tcp.handshake_timeout_ms)?;
    positive("tcp.frame_timeout_ms", tcp.frame_timeout_ms)?;
    positive("tcp.idle_timeout_ms", tcp.idle_timeout_ms)?;
    positive("tcp.max_batch", tcp.max_batch as u64)?;
    positive("tcp.batches_per_commit", tcp.batches_per_commit as u64)?;
    if tcp.max_frame_bytes < 1024 {
        return Err((
            "tcp.max_frame_bytes".into(),
            format!("must be at least 1024, got {}", tcp.max_frame_bytes),
        ));
    }
    if tcp.secret.is_some() && tcp.secret_file.is_some() {
        return Err((
            "tcp.secret".into(),
            "set tcp.secret or tcp.secret_file, not both".into(),
        ));
    }
    if let Some(s) = &tcp.secret
        && s.len() < 16
    {
        return Err((
            "tcp.secret".into(),
            format!("must be at least 16 bytes, got {}", s.len()),
        ));
    }
    if tcp.tls {
        for (key, v) in [
            ("tcp.tls_ca", &tcp.tls_ca),
            ("tcp.tls_cert", &tcp.tls_cert),
            ("tcp.tls_key", &tcp.tls_key),
        ] {
            if v.is_none() {
                return Err((key.into(), "is required when tcp.tls = true".into()));
            }
        }
    } else if tcp.mutual_tls {
        return Err(("tcp.mutual_tls".into(), "needs tcp.tls = true".into()));
    }
    if !rabbit.url.starts_with("amqp://") {
        return Err((
            "rabbitmq.url".into(),
            format!(
                "{:?} is not an amqp:// URL (amqps:// is not built in: put TLS in front of the broker)",
                rabbit.url
            ),
        ));
    }
    positive("rabbitmq.prefetch", u64::from(rabbit.prefetch))?;
    if !matches!(rabbit.queue_type.as_str(), "classic" | "quorum") {
        return Err((
            "rabbitmq.queue_type".into(),
            format!(
                "must be \"classic\" or \"quorum\", got {:?}",
                rabbit.queue_type
            ),
        ));
    }
    for (i, b) in rabbit.binding.iter().enumerate() {
        if b.exchange.is_empty() || b.queue.is_empty() {
            return Err((
                format!("rabbitmq.binding[{i}]"),
                "exchange and queue must not be empty".into(),
            ));
        }
    }
    Ok(())
}
