//! What the RabbitMQ suites (`rabbitmq.rs`, `rabbitmq_outage.rs`) share:
//! host configs, a pair of hosts A (orders, routes OrderPlaced to a queue)
//! and B (audit, listens on that queue), the waits and the checkers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use jasper_e2e::amqp::{Amqp, amqp_url, queue_uri, typed_message, unique_name};
pub use jasper_e2e::orders::*;
use jasper_e2e::{HostConfig, Progress, TestHost, json};
use lapin::BasicProperties;

pub const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

pub const CONSUMING: &str = "consuming";
pub const LISTENER_LOST: &str = "RabbitMQ listener lost its connection; reconnecting";

/// An OrderPlaced as a plain client publishes it: order `{prefix}-{i}`,
/// message id `msg-{prefix}-{i}` (not a UUID: the host derives one).
pub fn plain_order_placed(prefix: &str, i: usize) -> (BasicProperties, Vec<u8>) {
    let order = format!("{prefix}-{i}");
    let body = json!({"order_id": order, "amount_cents": amount(i)});
    (
        typed_message("OrderPlaced", &format!("msg-{order}")),
        serde_json::to_vec(&body).expect("json"),
    )
}

/// Every host: short heartbeats and sender timings, handled rows kept for a
/// week (they are the receiver's dedupe record), the test broker.
pub fn common(name: &str) -> HostConfig {
    HostConfig::new()
        .node_name(name)
        .keep_handled_ms(WEEK_MS)
        .heartbeat_ms(200)
        .stale_after_ms(2000)
        .sending("ping_interval_ms", 200)
        .sending("retry_delay_ms", 50)
        .sending("recovery_interval_ms", 200)
        .rabbitmq("url", amqp_url())
}

/// Spawns `host` and waits until its listener on `queue` consumes.
pub async fn spawn_consuming(host: &TestHost, queue: &str) {
    let mark = host.log_mark();
    host.spawn();
    wait_consuming(host, queue, mark).await;
}

/// Waits for a `consuming` line of the listener on `queue` after `mark`.
pub async fn wait_consuming(host: &TestHost, queue: &str, mark: usize) -> String {
    host.wait_for_log(
        "the RabbitMQ listener consuming",
        mark,
        &[CONSUMING, &format!("listener={}", queue_uri(queue))],
        START_TIMEOUT,
    )
    .await
}

// ---------------------------------------------------------------------------
// A → queue → B
// ---------------------------------------------------------------------------

/// A runs `orders` and routes every OrderPlaced to `rabbitmq://queue/Q`; B
/// runs `audit` and listens on Q. Each of the N orders crosses the broker
/// once (or more: B's inbox drops the copies).
pub struct Pair {
    pub a: TestHost,
    pub b: TestHost,
    pub queue: String,
}

impl Pair {
    /// The queue is owned by `amqp` (deleted at its cleanup or drop).
    pub fn new(amqp: &Amqp) -> Pair {
        let queue = unique_name("e2e-orders-placed");
        amqp.own_queue(&queue);
        let a = TestHost::new(
            &["orders"],
            common("a").route("OrderPlaced", queue_uri(&queue)),
        );
        let b = TestHost::new(&["audit"], common("b").listen(queue_uri(&queue)));
        Pair { a, b, queue }
    }

    pub async fn spawn_b(&self) {
        spawn_consuming(&self.b, &self.queue).await;
    }

    /// Polls both stores until `done` (see [`wait_both`]).
    pub async fn wait_both(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&(Progress, Progress)) -> bool,
    ) -> (Progress, Progress) {
        wait_both(&self.a, &self.b, what, timeout, done).await
    }
}

/// Waits for both hosts to settle, checks every effect on both sides, stops
/// both (SIGTERM, exit 0 within the harness's timeout) and checks the queue
/// is empty then (nothing unacknowledged went back to it).
pub async fn settle_and_check(pair: &Pair, amqp: &Amqp, label: &str, started: Instant) {
    let via = format!(
        "rabbitmq checker ({label}): {N} orders from A to B through queue {}",
        pair.queue
    );
    settle_check_and_stop(&pair.a, &pair.b, label, &via, started).await;
    let left = amqp.queue_len(&pair.queue).await.expect("queue length");
    assert_eq!(
        left,
        Some(0),
        "messages left in {} after both hosts stopped",
        pair.queue
    );
}
