//! The host's Prometheus metrics: one registry per host (several hosts may
//! run in one process), counted where the facts are final: message outcomes
//! when their batch has committed, handler durations as calls end, queue
//! depths read from the store at scrape time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Counts;

/// A message's type and the plugin (local queue) it was for; `plugin` is
/// empty for a message that was not for a local plugin.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub message_type: String,
    pub plugin: String,
}

/// A failure's labels: the message's and the error kind (`panic`,
/// `deadline`, `handler`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub message_type: String,
    pub plugin: String,
    pub kind: String,
}

/// A received message's type and how it came (`tcp`, `durable`,
/// `rabbitmq`, `http`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    message_type: String,
    via: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn size_histogram() -> Histogram {
    // 1 .. 8192 messages
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// What one committed batch came to, message by message.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub handled: Vec<MessageLabels>,
    pub failed: Vec<FailureLabels>,
    pub dead_lettered: Vec<FailureLabels>,
}

/// Every metric of one host.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<ReceivedLabels, Counter>,
    handled: Family<MessageLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    dead_lettered: Family<FailureLabels, Counter>,
    handler_seconds: HistogramFamily<PluginLabel>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    queue_depth: Family<QueueLabel, Gauge>,
    plugins_loaded: Gauge,
    plugin_loads: Counter,
    plugin_load_failures: Counter,
    circuit_open: Family<PeerLabel, Gauge>,
    outgoing_depth: Family<DestinationLabel, Gauge>,
    /// Every message handled, whatever its labels (`handled_total`).
    handled_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("jasper");
        let received = Family::<ReceivedLabels, Counter>::default();
        let handled = Family::<MessageLabels, Counter>::default();
        let failed = Family::<FailureLabels, Counter>::default();
        let dead_lettered = Family::<FailureLabels, Counter>::default();
        let handler_seconds: HistogramFamily<PluginLabel> =
            Family::new_with_constructor(seconds_histogram);
        let batch_size = size_histogram();
        let commit_seconds = seconds_histogram();
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        let plugins_loaded = Gauge::default();
        let plugin_loads = Counter::default();
        let plugin_load_failures = Counter::default();
        let circuit_open = Family::<PeerLabel, Gauge>::default();
        let outgoing_depth = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "outgoing_depth",
            "Outgoing rows (durable messages not yet confirmed by their peer) per destination, read at scrape",
            outgoing_depth.clone(),
        );
        registry.register(
            "messages_received",
            "Messages taken in by a listener or the HTTP ingress (once committed to the inbox, or queued in memory for tcp://)",
            received.clone(),
        );
        registry.register(
            "messages_handled",
            "Messages handled successfully (counted once their batch committed)",
            handled.clone(),
        );
        registry.register(
            "messages_failed",
            "Failed attempts that will be tried again",
            failed.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages moved to dead letters",
            dead_lettered.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Handler call time, per plugin",
            handler_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Messages per committed batch",
            batch_size.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time to commit a batch (with its retries)",
            commit_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Persisted messages by queue (incoming, scheduled, outgoing, dead_letters), read at scrape",
            queue_depth.clone(),
        );
        registry.register(
            "plugins_loaded",
            "Plugins loaded now",
            plugins_loaded.clone(),
        );
        registry.register(
            "plugin_loads",
            "Plugin loads since start (at start and by hot reload)",
            plugin_loads.clone(),
        );
        registry.register(
            "plugin_load_failures",
            "Plugin files that failed to load on a hot reload",
            plugin_load_failures.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while sending to the peer is paused by its circuit breaker, else 0 (peers sent to since start)",
            circuit_open.clone(),
        );
        Metrics {
            circuit_open,
            outgoing_depth,
            registry,
            received,
            handled,
            failed,
            dead_lettered,
            handler_seconds,
            batch_size,
            commit_seconds,
            queue_depth,
            plugins_loaded,
            plugin_loads,
            plugin_load_failures,
            handled_total: AtomicU64::new(0),
        }
    }

    /// Messages handled successfully since the host started, counted once
    /// their batch committed (the sum of `messages_handled` over its labels).
    pub fn handled_total(&self) -> u64 {
        self.handled_total.load(Ordering::Relaxed)
    }

    /// A committed batch of `rows` messages, its commit taking `took`.
    pub(crate) fn committed(&self, tally: &Tally, rows: usize, took: Duration) {
        for l in &tally.handled {
            self.handled.get_or_create(l).inc();
        }
        self.handled_total
            .fetch_add(tally.handled.len() as u64, Ordering::Relaxed);
        for l in &tally.failed {
            self.failed.get_or_create(l).inc();
        }
        for l in &tally.dead_lettered {
            self.dead_lettered.get_or_create(l).inc();
        }
        self.batch_size.observe(rows as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// `n` messages of `message_type` came in `via` a listener or the ingress.
    pub(crate) fn received(&self, message_type: &str, via: &'static str, n: u64) {
        self.received
            .get_or_create(&ReceivedLabels {
                message_type: message_type.to_owned(),
                via,
            })
            .inc_by(n);
    }

    /// The circuit breaker of `peer` opened (`true`) or closed.
    pub(crate) fn circuit(&self, peer: &str, open: bool) {
        self.circuit_open
            .get_or_create(&PeerLabel {
                peer: peer.to_owned(),
            })
            .set(i64::from(open));
    }

    /// One handler call of `plugin` took `took`.
    pub(crate) fn handler_call(&self, plugin: &str, took: Duration) {
        self.handler_seconds
            .get_or_create(&PluginLabel {
                plugin: plugin.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// `n` plugins are loaded now (after a start or a reload); `loads` more
    /// loads happened.
    pub fn plugins(&self, n: usize, loads: u64) {
        self.plugins_loaded
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        self.plugin_loads.inc_by(loads);
    }

    /// A plugin file failed to load on a reload.
    pub(crate) fn plugin_load_failed(&self) {
        self.plugin_load_failures.inc();
    }

    /// The outgoing rows per destination as the store counts them now (a
    /// destination with none left is dropped from the family).
    pub fn outgoing(&self, by_destination: &[(String, i64)]) {
        self.outgoing_depth.clear();
        for (destination, n) in by_destination {
            self.outgoing_depth
                .get_or_create(&DestinationLabel {
                    destination: destination.clone(),
                })
                .set(*n);
        }
    }

    /// The text exposition, with queue depths from `counts` (when the store
    /// answered).
    pub fn render(&self, counts: Option<&Counts>) -> String {
        if let Some(c) = counts {
            for (queue, n) in [
                ("incoming", c.incoming),
                ("scheduled", c.scheduled),
                ("outgoing", c.outgoing),
                ("dead_letters", c.dead_letters),
            ] {
                self.queue_depth.get_or_create(&QueueLabel { queue }).set(n);
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; say so if it ever does.
            let _ = writeln!(out, "# encoding the metrics failed");
        }
        out
    }
}

/// Shared by the host's tasks.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &str, p: &str) -> MessageLabels {
        MessageLabels {
            message_type: t.into(),
            plugin: p.into(),
        }
    }

    #[test]
    fn a_committed_batch_counts_each_outcome_by_type_and_plugin() {
        let m = Metrics::new();
        let tally = Tally {
            handled: vec![
                labels("PlaceOrder", "orders"),
                labels("PlaceOrder", "orders"),
            ],
            failed: vec![FailureLabels {
                message_type: "PlaceOrder".into(),
                plugin: "orders".into(),
                kind: "panic".into(),
            }],
            dead_lettered: vec![],
        };
        m.committed(&tally, 3, Duration::from_millis(2));
        let text = m.render(None);
        assert!(
            text.contains(
                r#"jasper_messages_handled_total{message_type="PlaceOrder",plugin="orders"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"jasper_messages_failed_total{message_type="PlaceOrder",plugin="orders",kind="panic"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("jasper_batch_size_count 1"), "{text}");
    }

    #[test]
    fn outgoing_depth_follows_the_last_reading() {
        let m = Metrics::new();
        m.outgoing(&[("durable://b:1".into(), 7), ("tcp://c:2".into(), 1)]);
        let text = m.render(None);
        assert!(
            text.contains(r#"jasper_outgoing_depth{destination="durable://b:1"} 7"#),
            "{text}"
        );
        m.outgoing(&[("durable://b:1".into(), 2)]);
        let text = m.render(None);
        assert!(
            text.contains(r#"jasper_outgoing_depth{destination="durable://b:1"} 2"#),
            "{text}"
        );
        assert!(
            !text.contains("tcp://c:2"),
            "a drained destination is dropped: {text}"
        );
    }
}
