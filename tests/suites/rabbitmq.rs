//! The RabbitMQ transport end to end: real jasper-host processes, the real
//! broker (127.0.0.1:5672, or `JASPER_TEST_AMQP_URL`), and a plain AMQP
//! client (lapin, nothing of jasper-host) on the other side.
//!
//! - 10,000 OrderPlaced from a plain client, handled exactly once by `audit`;
//!   and the other way: `orders`' OrderPlaced published to an exchange reach
//!   a plain client through a bound queue, with their type and JSON body.
//! - The consuming host SIGKILLed mid-stream three times: nothing lost,
//!   nothing handled twice (redeliveries are dropped by the inbox).
//! - The publishing host SIGKILLed twice with unconfirmed rows in its
//!   outgoing table: every OrderPlaced arrives, the receiver handles each once.
//! - A poison message: dead-lettered after `max_attempts`, the rest handled.
//! - A message with no type: dead-lettered at receipt, not replayable (a
//!   replay could only fail again), its body shown by `dead-letters list`.
//! - A broker that hangs (both hosts behind a proxy that freezes): SIGTERM
//!   stops them at once, and their next runs deliver every order once.
//! - A clean SIGTERM with a listener and a route: exit 0, no ERROR logged.
//!
//! Each test has queues and exchanges of its own (a UUID in the name), deleted
//! at the end pass or fail; each host its own SQLite db, so they run in
//! parallel. The broker outage is in `rabbitmq_outage.rs`, a binary of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rabbit_common.rs"]
mod rabbit_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jasper_e2e::amqp::{Amqp, Proxy, exchange_uri, queue_uri, typed_message, unique_name};
use jasper_e2e::{TestHost, json};
use rabbit_common::*;

// ---------------------------------------------------------------------------
// 1. A plain client's messages, handled exactly once
// ---------------------------------------------------------------------------

/// A plain client publishes 10,000 OrderPlaced (the `type` property, a
/// message id, a JSON body) into the queue B listens on: half before B runs
/// (a backlog), half while it consumes, every hundredth twice (same message
/// id). B's audit counts each order once; the queue ends empty; no dead
/// letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_from_a_plain_client_handled_exactly_once() {
    plain_client_exactly_once(Via::Rabbit).await;
}

/// The other way: A (orders) routes OrderPlaced to an exchange, a binding
/// in A's config (`[[rabbitmq.binding]]`, key `OrderPlaced`) puts them in a
/// queue, and a plain client reads back exactly those orders: the `type`
/// property, routing key = message type (the route names no key), a JSON
/// body with the order and its amount, one distinct message id per order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_routed_to_an_exchange_reach_a_plain_client_through_a_binding() {
    const M: usize = 2_000;
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let exchange = unique_name("e2e-events");
    let bound = unique_name("e2e-bound");
    amqp.own_exchange(&exchange);
    amqp.own_queue(&bound);
    let host = TestHost::new(
        &["orders"],
        common("a")
            .route("OrderPlaced", exchange_uri(&exchange))
            .rabbit_binding(&exchange, &bound, "OrderPlaced"),
    );
    let db = host.db();
    host.send_file("PlaceOrder", &bodies(0..M)).assert_sent(M);
    host.spawn();
    let p = host
        .wait_for(
            "every PlaceOrder handled and every OrderPlaced confirmed",
            FINAL_TIMEOUT,
            || db.progress(),
            |p| {
                p.dead_letters > 0
                    || (p.get("PlaceOrder", "handled") == M as i64
                        && p.with_status("incoming") == 0
                        && p.outgoing == 0)
            },
        )
        .await;
    println!(
        "[exchange] A settled after {:.1?}: {p:?}",
        started.elapsed()
    );
    assert_eq!(p.dead_letters, 0, "{:?}", db.dead_letter_rows().await);

    let want: BTreeMap<String, u64> = (0..M).map(|i| (format!("o-{i}"), amount(i))).collect();
    let got = amqp
        .consume_until(
            &bound,
            Duration::from_secs(30),
            Duration::from_millis(500),
            |ds| {
                ds.iter()
                    .filter_map(|d| serde_json::from_slice::<serde_json::Value>(&d.data).ok())
                    .filter_map(|v| v["order_id"].as_str().map(str::to_owned))
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= M
            },
        )
        .await;
    let mut orders = BTreeSet::new();
    let mut message_ids = BTreeSet::new();
    let mut bad = Vec::new();
    for d in &got {
        let kind = d.properties.kind().as_ref().map(|k| k.to_string());
        let ct = d.properties.content_type().as_ref().map(|k| k.to_string());
        let v: serde_json::Value = match serde_json::from_slice(&d.data) {
            Ok(v) => v,
            Err(e) => {
                bad.push(format!("body is not JSON ({e}): {:?}", d.data));
                continue;
            }
        };
        let order = v["order_id"].as_str().unwrap_or("").to_owned();
        if kind.as_deref() != Some("OrderPlaced")
            || d.routing_key.as_str() != "OrderPlaced"
            || d.exchange.as_str() != exchange
            || ct.as_deref() != Some("application/json")
            || want.get(&order).copied() != v["amount_cents"].as_u64()
        {
            bad.push(format!(
                "type {kind:?}, exchange {}, key {}, content type {ct:?}, body {v}",
                d.exchange, d.routing_key
            ));
        }
        match d.properties.message_id() {
            Some(m) if uuid::Uuid::parse_str(m.as_str()).is_ok() => {
                message_ids.insert(m.to_string());
            }
            other => bad.push(format!("message id {other:?} of {order}")),
        }
        orders.insert(order);
    }
    let unexpected: Vec<_> = orders.iter().filter(|o| !want.contains_key(*o)).collect();
    println!(
        "=== rabbitmq checker (orders -> exchange {exchange} -> {bound} -> plain client) ===\n\
         deliveries {}, distinct orders {} (want {M}), distinct message ids {}, malformed {}, unexpected {}",
        got.len(),
        orders.len(),
        message_ids.len(),
        bad.len(),
        unexpected.len()
    );
    for b in bad.iter().take(10) {
        println!("  malformed: {b}");
    }
    assert!(
        bad.is_empty(),
        "malformed deliveries (first: {:?})",
        bad.first()
    );
    assert!(
        unexpected.is_empty(),
        "orders nobody placed: {unexpected:?}"
    );
    assert_eq!(orders.len(), M, "distinct orders read back");
    assert_eq!(
        message_ids.len(),
        M,
        "one message id per order (copies share theirs)"
    );
    assert!(got.len() >= M);
    assert_eq!(amqp.queue_len(&bound).await.unwrap(), Some(0));
    assert_no_error_lines(&host, "A");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    amqp.cleanup().await.unwrap();
    println!("[exchange] {:.1?} in all", started.elapsed());
}

// ---------------------------------------------------------------------------
// 2. The consumer SIGKILLed
// ---------------------------------------------------------------------------

/// 10,000 OrderPlaced from a plain client, queued before B (audit) starts;
/// B SIGKILLed three times mid-stream and restarted
/// ([`consumer_sigkills`]): every order counted once, the queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_consuming_loses_and_duplicates_nothing() {
    consumer_sigkills(Via::Rabbit).await;
}

// ---------------------------------------------------------------------------
// 3. The publisher SIGKILLed with unconfirmed rows
// ---------------------------------------------------------------------------

/// A (orders) routes OrderPlaced to `rabbitmq://queue/Q`, B (audit) consumes
/// Q; A SIGKILLed twice with unconfirmed outgoing rows
/// ([`publisher_sigkills`]): every OrderPlaced reaches B, handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_unconfirmed_outgoing_every_message_arrives() {
    publisher_sigkills(Via::Rabbit).await;
}

// ---------------------------------------------------------------------------
// 5. A poison message
// ---------------------------------------------------------------------------

/// `misbehave` with max_attempts 3: a test.Panic among 200 test.Ok from a
/// plain client is tried three times and dead-lettered (kind panic, attempts
/// 3, its id derived from its AMQP message id); every test.Ok is handled;
/// the queue ends empty (the poison was acknowledged at receipt, never
/// redelivered by the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_dead_letters_after_the_configured_attempts() {
    const OKS: u64 = 200;
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-poison");
    amqp.own_queue(&queue);
    let host = TestHost::new(
        &["misbehave"],
        common("m")
            .max_attempts(3)
            .retry_delay_ms(10)
            .listen(queue_uri(&queue)),
    );
    let db = host.db();
    spawn_consuming(&host, &queue).await;
    let msg = |ty: &str, n: u64| {
        (
            typed_message(ty, &format!("{ty}-{n}")),
            serde_json::to_vec(&json!({ "n": n })).unwrap(),
        )
    };
    let messages = (0..OKS / 2)
        .map(|n| msg("test.Ok", n))
        .chain([msg("test.Panic", 0)])
        .chain((OKS / 2..OKS).map(|n| msg("test.Ok", n)));
    assert_eq!(
        amqp.publish_to_queue(&queue, messages).await,
        OKS as usize + 1
    );

    let p = host
        .wait_for(
            "every test.Ok handled and the poison out of the inbox",
            Duration::from_secs(120),
            || db.progress(),
            |p| {
                p.get("test.Ok", "handled") == OKS as i64
                    && p.with_status("incoming") == 0
                    && p.with_status("scheduled") == 0
                    && p.dead_letters > 0
            },
        )
        .await;
    println!("[poison] settled after {:.1?}: {p:?}", started.elapsed());
    let state = db.state("misbehave").await.unwrap();
    let missing: Vec<u64> = (0..OKS)
        .filter(|n| state.get(&format!("ok/{n}")).map(|r| r.json().ok()) != Some(Some(json!(true))))
        .collect();
    let dead = db.dead_letter_rows().await.unwrap();
    println!("=== rabbitmq checker (poison among {OKS} test.Ok) ===");
    println!("ok/* missing: {}", missing.len());
    println!("dead letters: {dead:?}");
    assert!(missing.is_empty(), "ok/* missing: {missing:?}");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.message_type, "test.Panic", "{d:?}");
    assert_eq!(d.error_kind, "panic", "{d:?}");
    assert_eq!(d.attempts, 3, "max_attempts = 3: {d:?}");
    assert!(
        d.error_message
            .as_deref()
            .is_some_and(|m| m.contains("test.Panic 0")),
        "the panic's message is kept: {d:?}"
    );
    let want_id = jasper_host::transport::rabbitmq::mapping::id_of("test.Panic-0");
    assert_eq!(
        uuid::Uuid::parse_str(&d.id).ok(),
        Some(want_id),
        "the dead letter's id is the one derived from the AMQP message id: {d:?}"
    );
    assert_eq!(
        p.of_type("test.Panic"),
        0,
        "the poison left the inbox: {p:?}"
    );
    // The CLI agrees.
    let listed = host.dead_letters();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].error_kind.as_str(), listed[0].attempts),
        ("panic", 3),
        "{listed:?}"
    );
    assert_eq!(amqp.queue_info(&queue).await.unwrap(), Some((0, 1)));
    host.assert_alive("after the poison");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));
    amqp.cleanup().await.unwrap();
}

/// A plain client's message with no type (no `type` property, no
/// `message-type` header) can never be handled: it is dead-lettered at
/// receipt as `bad-message` and not replayable, since a replay would only
/// send the same typeless message round again; `dead-letters replay` leaves
/// it where it is and says it replayed nothing. Its body is kept, and
/// `dead-letters list --json` shows it (as text: it is not JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typeless_message_is_dead_lettered_as_not_replayable() {
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-typeless");
    amqp.own_queue(&queue);
    let host = TestHost::new(&["misbehave"], common("t").listen(queue_uri(&queue)));
    let db = host.db();
    spawn_consuming(&host, &queue).await;
    let typeless = lapin::BasicProperties::default()
        .with_message_id("typeless-1".into())
        .with_delivery_mode(2);
    assert_eq!(
        amqp.publish_to_queue(&queue, [(typeless, b"plain words".to_vec())])
            .await,
        1
    );
    host.wait_for(
        "the typeless message in dead letters",
        Duration::from_secs(60),
        || db.progress(),
        |p| p.dead_letters == 1,
    )
    .await;

    let listed = |host: &TestHost| {
        let out = host.cli(&["dead-letters", "list"], &["--json"]);
        out.assert_success();
        serde_json::from_str::<serde_json::Value>(out.stdout.trim()).unwrap()
    };
    let before = listed(&host);
    let d = &before[0];
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    assert_eq!(d["error_kind"], "bad-message", "{d}");
    assert_eq!(d["message_type"], "", "{d}");
    assert_eq!(d["replayable"], false, "{d}");
    assert!(
        d["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("no type")),
        "{d}"
    );
    assert_eq!(d["message"]["body_encoding"], "text", "{d}");
    assert_eq!(d["message"]["body"], "plain words", "{d}");

    let id = d["id"].as_str().unwrap();
    for selection in [&[][..], &["--id", id][..]] {
        let out = host.cli(&["dead-letters", "replay"], selection);
        out.assert_success();
        assert!(
            out.stdout.contains("replayed 0 dead letter(s)"),
            "{selection:?}: {}",
            out.stdout
        );
        assert_eq!(listed(&host), before, "still in dead letters, unchanged");
    }
    let p = db.progress().await.unwrap();
    assert_eq!(
        (p.dead_letters, p.incoming.values().sum::<i64>()),
        (1, 0),
        "nothing went back into the inbox: {p:?}"
    );
    host.assert_alive("after the typeless message");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));
    amqp.cleanup().await.unwrap();
}

// ---------------------------------------------------------------------------
// 6. A broker that hangs
// ---------------------------------------------------------------------------

/// Both hosts reach the broker through a proxy that then freezes (sockets
/// open, nothing moves: a hung broker or a black-holed network) while A has
/// publishes waiting for confirms. SIGTERM must still stop both at once
/// (nothing waits on the broker), and after the broker is reachable again
/// the next runs deliver every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_stop_promptly_while_the_broker_hangs() {
    const M: usize = 3_000;
    /// What "at once" means: well under the harness's STOP_TIMEOUT.
    const PROMPT: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let proxy = Proxy::start().await;
    let queue = unique_name("e2e-hung-broker");
    amqp.own_queue(&queue);
    let a = TestHost::new(
        &["orders"],
        common("a")
            .rabbitmq("url", proxy.url())
            .route("OrderPlaced", queue_uri(&queue)),
    );
    let b = TestHost::new(
        &["audit"],
        common("b")
            .rabbitmq("url", proxy.url())
            .listen(queue_uri(&queue)),
    );
    let (da, db) = (a.db(), b.db());
    spawn_consuming(&b, &queue).await;
    a.send_file("PlaceOrder", &bodies(0..M)).assert_sent(M);
    a.spawn();
    b.wait_for_every(
        "B to receive some OrderPlaced",
        PHASE_TIMEOUT,
        Duration::from_millis(2),
        || db.incoming_count(None, Some("OrderPlaced")),
        |n| *n >= (M / 10) as i64,
    )
    .await;
    proxy.freeze();
    // A still streams into a broker that answers nothing.
    let pa = a
        .wait_for(
            "A to hold unconfirmed rows with the broker hung",
            PHASE_TIMEOUT,
            || da.progress(),
            |p| p.outgoing > 0,
        )
        .await;
    let pb = db.progress().await.unwrap();
    println!(
        "[hung broker] frozen at {:.1?}: A handled {}, outgoing {}; B received {}",
        started.elapsed(),
        pa.get("PlaceOrder", "handled"),
        pa.outgoing,
        pb.of_type("OrderPlaced")
    );
    assert!(
        pb.of_type("OrderPlaced") < M as i64,
        "B had everything before the freeze: {pb:?}"
    );
    let t = Instant::now();
    let sa = a.stop();
    let took_a = t.elapsed();
    let t = Instant::now();
    let sb = b.stop();
    let took_b = t.elapsed();
    println!("[hung broker] SIGTERM: A exited in {took_a:.1?} ({sa}), B in {took_b:.1?} ({sb})");
    assert!(
        sa.success() && sb.success(),
        "exit statuses: A {sa}, B {sb}"
    );
    assert!(
        took_a < PROMPT && took_b < PROMPT,
        "a hung broker held up shutdown: A {took_a:?}, B {took_b:?}"
    );

    // The broker is reachable again: the next runs finish the job.
    proxy.cut();
    proxy.thaw();
    spawn_consuming(&b, &queue).await;
    a.spawn();
    let ids: Vec<String> = (0..M).map(|i| format!("o-{i}")).collect();
    let (pa, pb) = a
        .wait_for(
            "every order handled on A, confirmed, and handled on B",
            FINAL_TIMEOUT,
            || {
                let (da, db) = (&da, &db);
                async move { Ok((da.progress().await?, db.progress().await?)) }
            },
            |(pa, pb)| {
                pa.dead_letters > 0
                    || pb.dead_letters > 0
                    || (pa.get("PlaceOrder", "handled") == M as i64
                        && pa.outgoing == 0
                        && pb.get("OrderPlaced", "handled") >= M as i64
                        && pb.with_status("incoming") == 0)
            },
        )
        .await;
    let c = audit_check(&db, &ids).await;
    println!("=== rabbitmq checker (hung broker, hosts stopped and restarted): {M} orders ===");
    c.print("B");
    c.assert_exactly_once(M);
    assert_eq!((pa.dead_letters, pb.dead_letters), (0, 0));
    assert_eq!(pb.of_type("OrderPlaced"), M as i64, "{pb:?}");
    let (sa, sb) = (a.stop(), b.stop());
    assert!(
        sa.success() && sb.success(),
        "exit statuses: A {sa}, B {sb}"
    );
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));
    amqp.cleanup().await.unwrap();
    println!("[hung broker] {:.1?} in all", started.elapsed());
}

// ---------------------------------------------------------------------------
// 6. A clean SIGTERM closes the broker connections quietly
// ---------------------------------------------------------------------------

/// A host with a RabbitMQ listener and a RabbitMQ route, both connected
/// (a PlaceOrder received, its OrderPlaced confirmed by the broker), stopped
/// with SIGTERM: it exits 0 and logs no ERROR (it closes its connections on
/// purpose; lapin used to log `Connection error` for the dropped ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_rabbitmq_listener_and_route_exits_cleanly_without_errors() {
    let amqp = Amqp::connect().await;
    let inbound = unique_name("e2e-quiet-in");
    let outbound = unique_name("e2e-quiet-out");
    amqp.declare_queue(&inbound).await;
    amqp.own_queue(&outbound);
    let host = TestHost::new(
        &["orders"],
        common("quiet")
            .listen(queue_uri(&inbound))
            .route("OrderPlaced", queue_uri(&outbound)),
    );
    let db = host.db();
    let mark = host.log_mark();
    spawn_consuming(&host, &inbound).await;
    let body = serde_json::to_vec(&json!({"order_id": "q-1", "amount_cents": 100})).unwrap();
    let sent = amqp
        .publish_to_queue(&inbound, [(typed_message("PlaceOrder", "msg-q-1"), body)])
        .await;
    assert_eq!(sent, 1);
    host.wait_for(
        "the PlaceOrder handled and its OrderPlaced confirmed by the broker",
        START_TIMEOUT,
        || db.progress(),
        |p| p.dead_letters > 0 || (p.get("PlaceOrder", "handled") == 1 && p.outgoing == 0),
    )
    .await;
    assert_eq!(amqp.queue_len(&outbound).await.unwrap(), Some(1));

    let status = host.stop();
    let log = host.log_since(mark);
    assert!(
        status.success(),
        "exit status {status}; log tail:\n{}",
        host.log_tail(30)
    );
    assert!(log.contains("host stopped"), "{}", host.log_tail(30));
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a clean stop:\n{}",
        errors.join("\n")
    );
    assert_eq!(db.progress().await.unwrap().dead_letters, 0);
    amqp.cleanup().await.unwrap();
}
