//! What the RabbitMQ suites (`rabbitmq.rs`, `rabbitmq_outage.rs`) share:
//! host configs, a pair of hosts A (orders, routes OrderPlaced to a queue)
//! and B (audit, listens on that queue), the waits and the checkers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jasper_e2e::amqp::{Amqp, amqp_url, queue_uri, typed_message, unique_name};
use jasper_e2e::kill::{Catch, SenderKill, kill_sender_at, kill9_when};
pub use jasper_e2e::orders::*;
use jasper_e2e::{HostConfig, Progress, TestHost, json, wait_until};
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

/// How a suite reaches the broker: RabbitMQ's own protocol (lapin in the
/// host and in the test, `rabbitmq://` URIs) or its AMQP 1.0 plugin (the
/// host's fe2o3-amqp transport, `amqp://` URIs, and a qpid-proton client in
/// the test). Queues are declared, measured and deleted through lapin
/// either way: they are the same queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Rabbit,
    Amqp10,
}

impl Via {
    /// The host's URI of queue `name`.
    pub fn queue_uri(self, name: &str) -> String {
        match self {
            Via::Rabbit => queue_uri(name),
            Via::Amqp10 => format!("amqp://{}//amq/queue/{name}", broker_addr()),
        }
    }

    /// [`common`], with the AMQP 1.0 credentials.
    pub fn common(self, name: &str) -> HostConfig {
        let (user, password) = broker_user();
        match self {
            Via::Rabbit => common(name),
            Via::Amqp10 => common(name)
                .set("amqp", "username", user)
                .set("amqp", "password", password),
        }
    }

    /// Publish OrderPlaced `{prefix}-{i}` for each `i` of `range` to
    /// `queue` as a plain client ([`plain_order_placed`]); with
    /// `twice_every`, every such `i` is published twice (same message id).
    /// Returns how many were published.
    pub async fn publish(
        self,
        amqp: &Amqp,
        queue: &str,
        prefix: &str,
        range: std::ops::Range<usize>,
        twice_every: Option<usize>,
    ) -> usize {
        let times = |i: usize| match twice_every {
            Some(k) if i.is_multiple_of(k) => 2,
            _ => 1,
        };
        match self {
            Via::Rabbit => {
                let all = range
                    .flat_map(|i| std::iter::repeat_n(plain_order_placed(prefix, i), times(i)));
                amqp.publish_to_queue(queue, all).await
            }
            Via::Amqp10 => {
                let mut lines = String::new();
                for i in range {
                    let order = format!("{prefix}-{i}");
                    let body = json!({"order_id": order, "amount_cents": amount(i)});
                    for _ in 0..times(i) {
                        lines.push_str(&format!("msg-{order}\t{body}\n"));
                    }
                }
                let file = tempfile::NamedTempFile::new().expect("a temp file of bodies");
                std::fs::write(file.path(), lines).expect("write the bodies");
                let (user, password) = broker_user();
                let url = format!("amqp://{user}:{password}@{}", broker_addr());
                let path = file.path().display().to_string();
                let out = jasper_e2e::asb_double::amqp_client(&[
                    "send",
                    "--url",
                    &url,
                    "--address",
                    &format!("/amq/queue/{queue}"),
                    "--type",
                    "OrderPlaced",
                    "--bodies",
                    &path,
                    "--tab-ids",
                ]);
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "the AMQP 1.0 client failed ({}): {stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("sent ")?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no `sent N` from the AMQP 1.0 client: {stdout}"))
            }
        }
    }
}

/// The test broker's `HOST:PORT` (from [`amqp_url`]).
pub fn broker_addr() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The test broker's user and password (from [`amqp_url`]).
pub fn broker_user() -> (String, String) {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let creds = rest.rsplit_once('@').map_or("guest:guest", |(c, _)| c);
    let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
    (u.to_string(), p.to_string())
}

/// Spawns `host` and waits until its listener on `queue` consumes.
pub async fn spawn_consuming(host: &TestHost, queue: &str) {
    spawn_consuming_via(host, Via::Rabbit, queue).await;
}

/// [`spawn_consuming`] on a queue reached `via`.
pub async fn spawn_consuming_via(host: &TestHost, via: Via, queue: &str) {
    let mark = host.log_mark();
    host.spawn();
    wait_consuming_via(host, via, queue, mark).await;
}

/// Waits for a `consuming` line of the listener on `queue` after `mark`.
pub async fn wait_consuming(host: &TestHost, queue: &str, mark: usize) -> String {
    wait_consuming_via(host, Via::Rabbit, queue, mark).await
}

/// [`wait_consuming`] on a queue reached `via`.
pub async fn wait_consuming_via(host: &TestHost, via: Via, queue: &str, mark: usize) -> String {
    host.wait_for_log(
        "the listener consuming",
        mark,
        &[CONSUMING, &format!("listener={}", via.queue_uri(queue))],
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
    pub via: Via,
}

impl Pair {
    /// The queue is owned by `amqp` (deleted at its cleanup or drop).
    pub fn new(amqp: &Amqp) -> Pair {
        Pair::new_via(amqp, Via::Rabbit)
    }

    /// [`Pair::new`] with the hosts reaching the queue `via`. On AMQP 1.0
    /// the queue is declared here (the plugin does not declare it).
    pub async fn declared_via(amqp: &Amqp, via: Via) -> Pair {
        let pair = Pair::new_via(amqp, via);
        amqp.declare_queue(&pair.queue).await;
        pair
    }

    fn new_via(amqp: &Amqp, via: Via) -> Pair {
        let queue = unique_name("e2e-orders-placed");
        amqp.own_queue(&queue);
        let a = TestHost::new(
            &["orders"],
            via.common("a").route("OrderPlaced", via.queue_uri(&queue)),
        );
        let b = TestHost::new(&["audit"], via.common("b").listen(via.queue_uri(&queue)));
        Pair { a, b, queue, via }
    }

    pub async fn spawn_b(&self) {
        spawn_consuming_via(&self.b, self.via, &self.queue).await;
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
        "{:?} checker ({label}): {N} orders from A to B through queue {}",
        pair.via, pair.queue
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

// ---------------------------------------------------------------------------
// The suites run on RabbitMQ's own protocol and on its AMQP 1.0 plugin
// ---------------------------------------------------------------------------

/// A plain client publishes 10,000 OrderPlaced (the `type` property, a
/// message id, a JSON body) into the queue B listens on: half before B runs
/// (a backlog), half while it consumes, every hundredth twice (same message
/// id). B's audit counts each order once; the queue ends empty; no dead
/// letters.
pub async fn plain_client_exactly_once(via: Via) {
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-plain-in");
    amqp.declare_queue(&queue).await;
    let host = TestHost::new(&["audit"], via.common("b").listen(via.queue_uri(&queue)));
    let db = host.db();

    let backlog = via.publish(&amqp, &queue, "p", 0..N / 2, None).await;
    assert_eq!(backlog, N / 2);
    assert_eq!(
        amqp.queue_len(&queue).await.unwrap(),
        Some((N / 2) as u32),
        "the backlog waits in the queue"
    );
    spawn_consuming_via(&host, via, &queue).await;
    let published = via.publish(&amqp, &queue, "p", N / 2..N, Some(100)).await;
    let copies = (N / 2..N).filter(|i| i % 100 == 0).count();
    assert_eq!(published, N / 2 + copies);
    println!(
        "[plain] published {} ({} copies) in {:.1?}",
        backlog + published,
        copies,
        started.elapsed()
    );

    let p = host
        .wait_for(
            "10,000 OrderPlaced handled and the queue empty",
            FINAL_TIMEOUT,
            || {
                let (db, amqp, queue) = (&db, &amqp, &queue);
                async move {
                    let p = db.progress().await?;
                    let q = amqp.queue_info(queue).await?;
                    Ok((p, q))
                }
            },
            |(p, q)| {
                p.dead_letters > 0
                    || (p.get("OrderPlaced", "handled") >= N as i64
                        && p.with_status("incoming") == 0
                        && *q == Some((0, 1)))
            },
        )
        .await
        .0;
    println!("[plain] settled after {:.1?}: {p:?}", started.elapsed());
    host.assert_alive("after settling");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    // Every delivery was acknowledged: none went back to the queue when the
    // host's connection closed.
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));

    let ids: Vec<String> = (0..N).map(|i| format!("p-{i}")).collect();
    let c = audit_check(&db, &ids).await;
    let dead = db.dead_letter_rows().await.unwrap();
    println!(
        "=== {via:?} checker (plain client -> audit): {N} orders, {copies} published twice ==="
    );
    c.print("B");
    println!(
        "B OrderPlaced rows:   {} (want {N})",
        p.of_type("OrderPlaced")
    );
    println!("dead letters:         {}", dead.len());
    c.assert_exactly_once(N);
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert_eq!(p.of_type("OrderPlaced"), N as i64, "{p:?}");
    assert_eq!(p.get("OrderPlaced", "handled"), N as i64, "{p:?}");
    assert_no_error_lines(&host, "B");
    amqp.cleanup().await.unwrap();
    println!("[plain] {:.1?} in all", started.elapsed());
}

/// What a kill point counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Rows the listener put in the inbox (any status): the kill lands
    /// while it receives, between a batch's commit and its ack, or with
    /// deliveries unacknowledged.
    Received,
    /// Rows the worker handled.
    Handled,
}

/// Kill points: what is counted, its share of N, and how long after
/// crossing it the SIGKILL goes out (counts move by whole batches; the
/// offsets land the kills at other phases of the next one).
pub const CONSUMER_KILLS: [(Phase, i64, u64); 3] = [
    (Phase::Received, 15, 0),
    (Phase::Received, 45, 3),
    (Phase::Handled, 75, 11),
];

/// 10,000 OrderPlaced from a plain client, queued before B (audit) starts;
/// B SIGKILLed three times mid-stream, twice while its listener receives and
/// once while its worker handles, and restarted. A batch committed but not yet acknowledged is delivered again
/// and dropped by the inbox; unacknowledged deliveries go back to the queue.
/// In the end: every order counted once, the queue empty.
pub async fn consumer_sigkills(via: Via) {
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-killed-consumer");
    amqp.declare_queue(&queue).await;
    let host = TestHost::new(&["audit"], via.common("b").listen(via.queue_uri(&queue)));
    let db = host.db();

    // All of them first: then after each kill, what the inbox holds plus
    // what the queue holds again must be at least N (less: deliveries
    // acknowledged but never committed, lost), and what is over N was
    // committed but not acknowledged (it comes again; the inbox drops it).
    let published = via.publish(&amqp, &queue, "k", 0..N, None).await;
    assert_eq!(published, N);
    spawn_consuming_via(&host, via, &queue).await;
    let mut copies_due = 0;

    for (k, (phase, pct, offset_ms)) in CONSUMER_KILLS.into_iter().enumerate() {
        let threshold = N as i64 * pct / 100;
        let status = match phase {
            Phase::Received => None,
            Phase::Handled => Some("handled"),
        };
        let seen = kill9_when(
            &host,
            &format!(
                "{phase:?} OrderPlaced >= {threshold} ({pct}%) before kill #{}",
                k + 1
            ),
            PHASE_TIMEOUT,
            Duration::from_millis(2),
            || db.incoming_count(status, Some("OrderPlaced")),
            threshold,
            Duration::from_millis(offset_ms),
        )
        .await;
        let p = db.progress().await.unwrap();
        let received = p.of_type("OrderPlaced");
        // The broker takes back what the dead connection had unacknowledged
        // once it notices the connection closed (nothing consumes meanwhile).
        let q = i64::from(
            wait_until(
                &format!(
                    "the queue to hold again all the inbox lacks ({received} of {N} received)"
                ),
                Duration::from_secs(10),
                || amqp.queue_len(&queue),
                |q| received + i64::from(q.unwrap_or(0)) >= N as i64,
            )
            .await
            .unwrap_or(0),
        );
        let overlap = received + q - N as i64;
        copies_due += overlap;
        let in_inbox = p.with_status("incoming");
        println!(
            "[consumer kill] #{} at {:.1?}: {phase:?} {seen} when polled (threshold {threshold}), killed {offset_ms} ms later; \
             after the kill: {received} received, {} handled, {in_inbox} incoming in the inbox, {q} ready in the queue, \
             {overlap} committed but unacknowledged (to come again)",
            k + 1,
            started.elapsed(),
            p.get("OrderPlaced", "handled"),
        );
        assert!(
            p.get("OrderPlaced", "handled") < N as i64 && (q > 0 || in_inbox > 0),
            "kill #{} was not mid-stream: no work left ({p:?}, queue {q})",
            k + 1
        );
        if phase == Phase::Received {
            // The listener had more to receive: it died receiving.
            assert!(
                p.of_type("OrderPlaced") < N as i64 && q > 0,
                "kill #{} did not land while the listener received ({p:?}, queue {q})",
                k + 1
            );
        }
        let mark = host.log_mark();
        host.spawn();
        wait_consuming_via(&host, via, &queue, mark).await;
    }
    let p = host
        .wait_for(
            "all 10,000 handled after the last restart, the queue empty",
            FINAL_TIMEOUT,
            || {
                let (db, amqp, queue) = (&db, &amqp, &queue);
                async move { Ok((db.progress().await?, amqp.queue_info(queue).await?)) }
            },
            |(p, q)| {
                p.dead_letters > 0
                    || (p.get("OrderPlaced", "handled") >= N as i64
                        && p.with_status("incoming") == 0
                        && *q == Some((0, 1)))
            },
        )
        .await
        .0;
    println!(
        "[consumer kill] settled after {:.1?}: {p:?}",
        started.elapsed()
    );
    host.assert_alive("after the last restart settled");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));

    let ids: Vec<String> = (0..N).map(|i| format!("k-{i}")).collect();
    let c = audit_check(&db, &ids).await;
    let dead = db.dead_letter_rows().await.unwrap();
    println!(
        "=== {via:?} checker (consumer SIGKILLed {}x): {N} orders from a plain client ===",
        CONSUMER_KILLS.len()
    );
    c.print("B");
    println!(
        "B OrderPlaced rows:   {} (want {N})",
        p.of_type("OrderPlaced")
    );
    println!("redelivered copies:   {copies_due} (committed, unacknowledged at a kill; dropped)");
    println!("dead letters:         {}", dead.len());
    c.assert_exactly_once(N);
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert_eq!(p.of_type("OrderPlaced"), N as i64, "{p:?}");
    assert_eq!(p.get("OrderPlaced", "handled"), N as i64, "{p:?}");
    let counts = host.counts();
    assert_eq!(
        (
            counts.incoming,
            counts.handled,
            counts.dead_letters,
            counts.outgoing
        ),
        (0, N as u64, 0, 0),
        "storage counts: {counts:?}"
    );
    assert_no_error_lines(&host, "B");
    amqp.cleanup().await.unwrap();
    println!("[consumer kill] {:.1?} in all", started.elapsed());
}

/// A (orders) routes OrderPlaced to `rabbitmq://queue/Q`, B (audit) consumes
/// Q. A is SIGKILLed twice mid-stream while rows in its outgoing table are
/// unconfirmed (the first time: rows B already committed, so they are
/// published twice), and restarted; its next run publishes what it left.
/// Every OrderPlaced reaches B, which handles each once.
pub async fn publisher_sigkills(via: Via) {
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let pair = Pair::declared_via(&amqp, via).await;
    let da = pair.a.db();
    pair.spawn_b().await;
    pair.a.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    pair.a.spawn();

    let mut restarts = Vec::new();
    let mut b_had = 0;
    let mut left_by_kills = 0;
    for (k, (pct, catch)) in [(15, Catch::CommittedByB), (55, Catch::Unsettled)]
        .into_iter()
        .enumerate()
    {
        let min_handled = N as i64 * pct / 100;
        let caught = kill_sender_at(
            &pair.a,
            &pair.b.db(),
            SenderKill {
                label: "[publisher kill]",
                min_handled,
                catch,
                earlier: &BTreeSet::new(),
                window: Duration::from_millis(500),
                move_on_after_miss: true,
            },
        )
        .await;
        let pa = da.progress().await.unwrap();
        println!(
            "[publisher kill] #{} at {:.1?} ({catch:?}, try {}, {} SIGKILL(s)): A had handled {} PlaceOrder (>= {min_handled}); \
             left {} rows in outgoing, {} of them already in B's inbox",
            k + 1,
            started.elapsed(),
            caught.tries,
            caught.kills,
            pa.get("PlaceOrder", "handled"),
            caught.rows.len(),
            caught.in_b.len(),
        );
        assert!(
            pa.outgoing > 0 && pa.get("PlaceOrder", "handled") < N as i64,
            "kill #{} was not mid-stream with unconfirmed rows: {pa:?}",
            k + 1
        );
        b_had += caught.in_b.len();
        left_by_kills += pa.outgoing;
        restarts.push((pair.a.log_mark(), pa.outgoing));
        pair.a.spawn();
    }

    settle_and_check(&pair, &amqp, "publisher SIGKILLed 2x mid-stream", started).await;
    // The restart after the last kill relayed the rows that kill left.
    let (last_mark, last_left) = *restarts.last().unwrap();
    let relayed = relayed_rows(&pair.a, restarts[0].0);
    let relayed_last = relayed_rows(&pair.a, last_mark);
    println!(
        "[publisher kill] rows left by the kills {left_by_kills} (B already had {b_had} of them), \
         relayed after the restarts {relayed}; {:.1?} in all",
        started.elapsed()
    );
    assert!(b_had > 0, "no kill left rows B already had");
    assert!(
        relayed_last >= last_left,
        "the last restart relays the {last_left} rows the last kill left: relayed {relayed_last}"
    );
    amqp.cleanup().await.unwrap();
}
