//! Azure Service Bus (`asb://`) end to end against the test double
//! (`tests/asb/asb_double.py`, on qpid-proton): real jasper-host processes
//! speaking AMQP 1.0 to a peer that behaves as Service Bus does (SASL
//! ANONYMOUS, `$cbs` tokens, peek-lock with lock tokens and lock expiry,
//! complete / abandon / dead-letter outcomes, `$management` lock renewal,
//! scheduled enqueue, topics and subscriptions). Azure itself cannot be
//! reached from here; `real_azure_service_bus` runs against it when
//! `JASPER_ASB_CONNECTION` is set.
//!
//! - orders from Service Bus are handled and completed; a type nobody here
//!   handles and a typeless message go to the entity's dead-letter queue
//!   with their reason and description;
//! - a wrong key: the token is refused (401), the error names the audience
//!   and the key name, nothing is taken;
//! - the inbox failing (a frozen PostgreSQL past the store timeout): the
//!   batch is abandoned (delivery count + 1), and handled once later;
//! - a slow commit (a frozen PostgreSQL within the store timeout): the locks
//!   of the batch are renewed, none expires, nothing is delivered twice;
//! - scheduled messages leave at once with `x-opt-scheduled-enqueue-time`
//!   and the broker holds them; routed ones reach a topic's subscription;
//! - short-lived tokens are put again before they expire, on the listener's
//!   and the sender's connection, and both keep working past the first
//!   token's expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use jasper_e2e::asb_double::{AsbDouble, AsbOptions, entity_of, events_of};
use jasper_e2e::orders::{amount, assert_no_error_lines, audit_check};
use jasper_e2e::proxy::FreezingProxy;
use jasper_e2e::{Backend, HostConfig, Progress, TestHost, json, place_order, wait_until};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(120);

/// A host configured for the double's namespace, with its key.
fn asb_config(d: &AsbDouble, config: HostConfig) -> HostConfig {
    config
        .set("azure_service_bus", "namespace", d.namespace.as_str())
        .set(
            "azure_service_bus",
            "endpoint",
            format!("127.0.0.1:{}", d.port),
        )
        .set("azure_service_bus", "tls", false)
        .set("azure_service_bus", "sas_key_name", d.key_name.as_str())
        .set("azure_service_bus", "sas_key", d.key.as_str())
        .set("sending", "retry_delay_ms", 50u64)
        .set("sending", "ping_interval_ms", 200u64)
}

fn uri(d: &AsbDouble, entity: &str) -> String {
    format!("asb://{}/{entity}", d.namespace)
}

/// OrderPlaced `{prefix}-{i}` as a plain Service Bus client sends them:
/// the type as the subject, a string message id, a JSON data section.
fn orders_placed(prefix: &str, range: std::ops::Range<usize>) -> Value {
    Value::Array(
        range
            .map(|i| {
                let order = format!("{prefix}-{i}");
                json!({
                    "body": json!({"order_id": order, "amount_cents": amount(i)}).to_string(),
                    "properties": {
                        "message_id": format!("msg-{order}"),
                        "subject": "OrderPlaced",
                        "content_type": "application/json",
                    },
                })
            })
            .collect(),
    )
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Spawn `host` and wait until its listener on `entity` consumes.
async fn spawn_consuming(host: &TestHost, d: &AsbDouble, entity: &str) {
    let mark = host.log_mark();
    host.spawn();
    host.wait_for_log(
        "the Service Bus listener consuming",
        mark,
        &["consuming", &format!("listener={}", uri(d, entity))],
        Duration::from_secs(60),
    )
    .await;
}

/// Wait until the double's state satisfies `done`; that state.
async fn wait_state(
    d: &AsbDouble,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(
        what,
        timeout,
        || async { Ok::<_, anyhow::Error>(d.state().await) },
        |s| done(s),
    )
    .await
}

/// Wait until the double's `entity` satisfies `done`.
async fn wait_entity(
    d: &AsbDouble,
    what: &str,
    entity: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_state(d, what, SETTLE, |s| done(entity_of(s, entity))).await
}

/// Wait until `host` handled `m` OrderPlaced, then check that audit
/// counted each order `{prefix}-{i}` exactly once; the host's progress.
async fn handled_once(host: &TestHost, prefix: &str, m: usize) -> Progress {
    let db = host.db();
    let p = host
        .wait_for(
            "every order handled",
            SETTLE,
            || db.progress(),
            |p| p.get("OrderPlaced", "handled") >= m as i64,
        )
        .await;
    let c = audit_check(&db, &ids(prefix, m)).await;
    c.print("host");
    c.assert_exactly_once(m);
    p
}

fn n(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or(0)
}

/// 300 OrderPlaced from a plain client, a message of a type nobody here
/// handles and one with no type: audit counts each order once, the broker
/// completes all 300 (nothing left active or locked), and the two strangers
/// sit in `orders/$DeadLetterQueue` with the kind as `DeadLetterReason` and
/// the host's reason as `DeadLetterErrorDescription`. The host's own dead
/// letters stay empty: the broker has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_completed_and_strangers_dead_lettered_with_their_reason() {
    const M: usize = 300;
    let d = AsbDouble::start(AsbOptions::default());
    let host = TestHost::new(
        &["audit"],
        asb_config(&d, HostConfig::new()).listen(uri(&d, "orders")),
    );
    let db = host.db();
    spawn_consuming(&host, &d, "orders").await;
    d.send("orders", orders_placed("c", 0..M)).await;
    d.send(
        "orders",
        json!([
            {"body": "{}", "properties": {"message_id": "stranger", "subject": "Nobody.Handles.This"}},
            {"body": "no type at all", "properties": {"message_id": "typeless"}},
        ]),
    )
    .await;
    let s = wait_entity(&d, "every message settled", "orders", |e| {
        n(e, "completed") >= M as i64 && e["dead_letters"].as_array().is_some_and(|a| a.len() >= 2)
    })
    .await;
    let e = entity_of(&s, "orders");
    println!("[complete] orders entity: {e}");
    assert_eq!((n(e, "active"), n(e, "locked")), (0, 0), "{e}");
    assert_eq!(n(e, "completed"), M as i64, "{e}");
    let dlq = d.messages("orders/$DeadLetterQueue").await;
    let reason = |id: &str| {
        let m = dlq
            .iter()
            .find(|m| m["message_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the dead-letter queue: {dlq:?}"));
        let p = &m["application_properties"];
        (
            p["DeadLetterReason"].as_str().unwrap_or("").to_owned(),
            p["DeadLetterErrorDescription"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    };
    let (kind, why) = reason("stranger");
    assert_eq!(kind, "no-handler");
    assert!(why.contains("Nobody.Handles.This"), "{why}");
    let (kind, why) = reason("typeless");
    assert_eq!(kind, "bad-message");
    assert!(why.contains("no type"), "{why}");
    handled_once(&host, "c", M).await;
    assert!(db.dead_letter_rows().await.unwrap().is_empty());
    let tokens = events_of(&s, "put-token");
    assert!(
        tokens.iter().any(|t| t["status"] == 202
            && t["audience"]
                .as_str()
                .is_some_and(|a| a.ends_with("/orders"))),
        "no accepted token for orders: {tokens:?}"
    );
    assert_no_error_lines(&host, "host");
    assert!(host.stop().success());
}

/// A wrong key: every put-token is refused (401), the host says which
/// audience and key name were refused, retries with backoff, and takes
/// nothing (the messages stay active in the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_named_and_nothing_is_taken() {
    let d = AsbDouble::start(AsbOptions::default());
    d.send("orders", orders_placed("w", 0..5)).await;
    let config = asb_config(&d, HostConfig::new())
        .set("azure_service_bus", "sas_key", "not-the-key")
        .listen(uri(&d, "orders"));
    let host = TestHost::new(&["audit"], config);
    host.spawn();
    let line = host
        .wait_for_log(
            "the refused token in the log",
            0,
            &["Service Bus refused the token", "/orders", &d.key_name],
            Duration::from_secs(30),
        )
        .await;
    println!("[bad key] {line}");
    let s = wait_state(
        &d,
        "two refused put-tokens (the host tries again)",
        Duration::from_secs(30),
        |s| {
            events_of(s, "put-token")
                .iter()
                .filter(|t| t["status"] == 401)
                .count()
                >= 2
        },
    )
    .await;
    let tokens = events_of(&s, "put-token");
    assert!(tokens.iter().all(|t| t["status"] == 401), "{tokens:?}");
    let e = entity_of(&s, "orders");
    assert_eq!(
        (n(e, "active"), n(e, "completed"), n(e, "delivered")),
        (5, 0, 0),
        "{e}"
    );
    host.assert_alive("with a refused key");
    assert!(host.stop().success());
}

/// A host on PostgreSQL through a proxy, with a 1 s store timeout.
fn on_frozen_postgres(d: &AsbDouble, via_proxy: &str, store_timeout_ms: u64) -> TestHost {
    let config = asb_config(d, HostConfig::on(Backend::Postgres))
        .set("durability", "store_timeout_ms", store_timeout_ms)
        .set("azure_service_bus", "batch_window_ms", 200u64)
        .listen(uri(d, "orders"));
    let text = config.clone().set("storage", "url", via_proxy).render();
    TestHost::with_config_text(&["audit"], &text, &config)
}

/// The inbox cannot be written (PostgreSQL frozen past the store timeout)
/// while a batch arrives: the batch is abandoned (Modified,
/// delivery-failed: the delivery count rises), the listener reconnects,
/// and once the database answers again every order is handled once and
/// completed; none reaches the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inbox_abandons_the_batch_and_the_redelivery_is_handled_once() {
    const M: usize = 200;
    let d = AsbDouble::start(AsbOptions::default());
    let (proxy, via_proxy) = FreezingProxy::before_postgres().await;
    let host = on_frozen_postgres(&d, &via_proxy, 1000);
    spawn_consuming(&host, &d, "orders").await;
    proxy.freeze();
    d.send("orders", orders_placed("a", 0..M)).await;
    let s = wait_state(&d, "an abandoned batch", Duration::from_secs(60), |s| {
        !events_of(s, "abandon").is_empty()
    })
    .await;
    let abandoned = events_of(&s, "abandon").len();
    proxy.thaw();
    let s = wait_entity(&d, "every order completed after the thaw", "orders", |e| {
        n(e, "completed") >= M as i64
    })
    .await;
    let e = entity_of(&s, "orders");
    println!(
        "[abandon] {abandoned} abandoned while frozen; then: {e}; abandons in all {}",
        events_of(&s, "abandon").len()
    );
    assert_eq!(
        (n(e, "active"), n(e, "locked"), n(e, "completed")),
        (0, 0, M as i64),
        "{e}"
    );
    assert!(
        e["dead_letters"].as_array().is_none_or(|a| a.is_empty()),
        "{e}"
    );
    let mut delivered_again = 0;
    for ev in events_of(&s, "abandon") {
        assert_eq!(ev["entity"], "orders", "{ev}");
        delivered_again += 1;
    }
    assert!(delivered_again > 0);
    let p = handled_once(&host, "a", M).await;
    println!("[abandon] host: {p:?}");
    assert!(host.stop().success());
}

/// A batch whose commit takes three lock durations (PostgreSQL frozen 3 s
/// within the store timeout, locks of 1 s): its locks are renewed through
/// `orders/$management` while it waits, none expires, every message is
/// delivered once and completed, each order handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_renewed_while_a_slow_batch_commits() {
    const M: usize = 50;
    let d = AsbDouble::start(AsbOptions {
        lock_ms: 1000,
        ..AsbOptions::default()
    });
    let (proxy, via_proxy) = FreezingProxy::before_postgres().await;
    let host = on_frozen_postgres(&d, &via_proxy, 20_000);
    spawn_consuming(&host, &d, "orders").await;
    proxy.freeze();
    let frozen = Instant::now();
    d.send("orders", orders_placed("r", 0..M)).await;
    let s = wait_state(
        &d,
        "two lock renewals while the commit hangs",
        Duration::from_secs(30),
        |s| events_of(s, "renew-lock").len() >= 2,
    )
    .await;
    let renewals = events_of(&s, "renew-lock").len();
    let wait = Duration::from_secs(3).saturating_sub(frozen.elapsed());
    tokio::time::sleep(wait).await; // the freeze itself: three lock durations, on purpose
    proxy.thaw();
    let s = wait_entity(&d, "every message completed", "orders", |e| {
        n(e, "completed") >= M as i64
    })
    .await;
    let e = entity_of(&s, "orders");
    let renew = events_of(&s, "renew-lock");
    println!(
        "[renew] {renewals} renewals by the 2nd, {} in all, {frozen:?} frozen; entity {e}",
        renew.len(),
        frozen = frozen.elapsed()
    );
    assert!(renew.iter().all(|r| r["status"] == 200), "{renew:?}");
    assert!(
        events_of(&s, "lock-expired").is_empty(),
        "{:?}",
        events_of(&s, "lock-expired")
    );
    assert!(
        events_of(&s, "lock-lost").is_empty(),
        "{:?}",
        events_of(&s, "lock-lost")
    );
    assert_eq!(n(e, "delivered"), M as i64, "each delivered once: {e}");
    assert_eq!(
        (n(e, "active"), n(e, "locked"), n(e, "completed")),
        (0, 0, M as i64),
        "{e}"
    );
    handled_once(&host, "r", M).await;
    assert!(host.stop().success());
}

/// `orders` routes OrderPlaced to a topic and OrderReminder (scheduled by
/// the handler 4 s ahead) to a queue. The reminders leave the host at once
/// (no scheduled row waits in its inbox) carrying
/// `x-opt-scheduled-enqueue-time`; the broker holds them until then and
/// makes them active after. Each OrderPlaced is in the topic's
/// subscription, with its type and order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_wait_in_service_bus_and_routed_ones_reach_a_subscription() {
    const M: usize = 40;
    let d = AsbDouble::start(AsbOptions {
        topics: vec![("events".into(), vec!["billing".into()])],
        ..AsbOptions::default()
    });
    let config = asb_config(&d, HostConfig::new())
        .route("OrderPlaced", uri(&d, "events"))
        .route("OrderReminder", uri(&d, "reminders"));
    let host = TestHost::new(&["orders"], config);
    let db = host.db();
    let bodies: Vec<Value> = (0..M)
        .map(|i| place_order(&format!("s-{i}"), amount(i), 4000))
        .collect();
    let sent_at = jasper_now_ms();
    host.send_file("PlaceOrder", &bodies).assert_sent(M);
    host.spawn();
    let s = wait_entity(&d, "every reminder held by the broker", "reminders", |e| {
        n(e, "scheduled") + n(e, "active") >= M as i64
    })
    .await;
    let held = n(entity_of(&s, "reminders"), "scheduled");
    let msgs = d.messages("reminders").await;
    let p = db.progress().await.unwrap();
    println!(
        "[scheduled] reminders held {held} of {M} at {} ms; host {p:?}",
        jasper_now_ms() - sent_at
    );
    assert_eq!(
        held, M as i64,
        "the broker holds them until their time: {s}"
    );
    assert_eq!(
        p.get("OrderReminder", "scheduled"),
        M as i64,
        "the local copies for orders itself"
    );
    for m in &msgs {
        let at = &m["message_annotations"]["x-opt-scheduled-enqueue-time"];
        let at = at
            .as_i64()
            .or_else(|| at.as_f64().map(|f| f as i64))
            .unwrap_or_else(|| panic!("no enqueue time: {m}"));
        assert!(
            at >= sent_at + 4000 && at <= jasper_now_ms() + 4000,
            "enqueue time {at}, sent {sent_at}: {m}"
        );
        assert_eq!(m["properties"]["subject"], "OrderReminder", "{m}");
    }
    let s = wait_entity(&d, "every reminder active at its time", "reminders", |e| {
        n(e, "active") >= M as i64
    })
    .await;
    assert!(jasper_now_ms() >= sent_at + 4000);
    assert_eq!(n(entity_of(&s, "reminders"), "scheduled"), 0);
    let billing = d.messages("events/Subscriptions/billing").await;
    let mut orders: Vec<String> = billing
        .iter()
        .filter(|m| m["properties"]["subject"] == "OrderPlaced")
        .filter_map(|m| serde_json::from_str::<Value>(m["body"].as_str()?).ok())
        .filter_map(|b| b["order_id"].as_str().map(str::to_owned))
        .collect();
    orders.sort();
    orders.dedup();
    assert_eq!(
        orders.len(),
        M,
        "OrderPlaced in the subscription: {billing:?}"
    );
    assert_eq!(db.progress().await.unwrap().outgoing, 0);
    assert_no_error_lines(&host, "host");
    assert!(host.stop().success());
}

fn jasper_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Tokens of 10 s: the listener's and the sender's connections each put a
/// new one before the first expires (at 8 s), the double never detaches a
/// link for an expired token, and orders sent after the first token's
/// expiry are still taken and their OrderPlaced still sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_put_again_before_they_expire() {
    let d = AsbDouble::start(AsbOptions::default());
    let config = asb_config(&d, HostConfig::new())
        .set("azure_service_bus", "token_ttl_s", 10u64)
        .listen(uri(&d, "orders"))
        .route("OrderPlaced", uri(&d, "placed"));
    let host = TestHost::new(&["orders"], config);
    spawn_consuming(&host, &d, "orders").await;
    let place = |prefix: &str| {
        Value::Array(
            (0..10)
                .map(|i| {
                    json!({
                        "body": place_order(&format!("{prefix}-{i}"), amount(i), 864_000_000).to_string(),
                        "properties": {"message_id": format!("{prefix}-{i}"), "subject": "PlaceOrder"},
                    })
                })
                .collect(),
        )
    };
    let started = Instant::now();
    d.send("orders", place("t1")).await;
    wait_entity(&d, "the first 10 OrderPlaced sent", "placed", |e| {
        n(e, "active") >= 10
    })
    .await;
    // Past the first tokens' expiry (10 s), on purpose.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(started.elapsed())).await;
    d.send("orders", place("t2")).await;
    let s = wait_entity(&d, "all 20 OrderPlaced sent", "placed", |e| {
        n(e, "active") >= 20
    })
    .await;
    let tokens = events_of(&s, "put-token");
    let per = |entity: &str| {
        tokens
            .iter()
            .filter(|t| {
                t["status"] == 202 && t["audience"].as_str().is_some_and(|a| a.ends_with(entity))
            })
            .count()
    };
    println!(
        "[tokens] after {:.1?}: {} put for orders, {} for placed",
        started.elapsed(),
        per("/orders"),
        per("/placed")
    );
    assert!(
        per("/orders") >= 2,
        "the listener put a second token: {tokens:?}"
    );
    assert!(
        per("/placed") >= 2,
        "the sender put a second token: {tokens:?}"
    );
    assert!(
        events_of(&s, "detach-expired-token").is_empty(),
        "{:?}",
        events_of(&s, "detach-expired-token")
    );
    assert_no_error_lines(&host, "host");
    assert!(host.stop().success());
}

/// Against a real namespace: `JASPER_ASB_CONNECTION` is a connection string
/// (`Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=..;
/// SharedAccessKey=..`) and `JASPER_ASB_QUEUE` an existing queue (default
/// `jasper-e2e`). Host A (orders) sends OrderPlaced to it over TLS, host B
/// (audit) receives them: each order handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an Azure namespace: set JASPER_ASB_CONNECTION"]
async fn real_azure_service_bus() {
    const M: usize = 100;
    let conn = std::env::var("JASPER_ASB_CONNECTION").expect("JASPER_ASB_CONNECTION");
    let queue = std::env::var("JASPER_ASB_QUEUE").unwrap_or_else(|_| "jasper-e2e".into());
    let part = |key: &str| {
        conn.split(';')
            .find_map(|p| p.strip_prefix(key))
            .unwrap_or_else(|| panic!("JASPER_ASB_CONNECTION has no {key}"))
            .to_owned()
    };
    let namespace = part("Endpoint=")
        .trim_start_matches("sb://")
        .trim_end_matches('/')
        .to_owned();
    let asb = |c: HostConfig| {
        c.set("azure_service_bus", "namespace", namespace.as_str())
            .set(
                "azure_service_bus",
                "sas_key_name",
                part("SharedAccessKeyName=").as_str(),
            )
            .set(
                "azure_service_bus",
                "sas_key",
                part("SharedAccessKey=").as_str(),
            )
    };
    let to = format!("asb://{namespace}/{queue}");
    let a = TestHost::new(
        &["orders"],
        asb(HostConfig::new()).route("OrderPlaced", to.as_str()),
    );
    let b = TestHost::new(&["audit"], asb(HostConfig::new()).listen(to.as_str()));
    b.spawn();
    let bodies: Vec<Value> = (0..M)
        .map(|i| place_order(&format!("z-{i}"), amount(i), 864_000_000))
        .collect();
    a.send_file("PlaceOrder", &bodies).assert_sent(M);
    a.spawn();
    handled_once(&b, "z", M).await;
    assert!(a.stop().success() && b.stop().success());
}

/// Service Bus rejects three of the OrderPlaced the host sends (a
/// `com.microsoft:...` condition with a description): the host moves those
/// three to its dead letters (kind `rejected`, naming the condition and the
/// description) and deletes their outgoing rows; the rest are in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_service_bus_rejects_is_dead_lettered_with_the_broker_s_reason() {
    const M: usize = 10;
    let d = AsbDouble::start(AsbOptions::default());
    d.reject_sends(
        "placed",
        3,
        "com.microsoft:message-size-exceeded",
        "too big for this tier",
    )
    .await;
    let config = asb_config(&d, HostConfig::new()).route("OrderPlaced", uri(&d, "placed"));
    let host = TestHost::new(&["orders"], config);
    let db = host.db();
    let bodies: Vec<Value> = (0..M)
        .map(|i| place_order(&format!("x-{i}"), amount(i), 864_000_000))
        .collect();
    host.send_file("PlaceOrder", &bodies).assert_sent(M);
    host.spawn();
    let p = host
        .wait_for(
            "every OrderPlaced accepted or dead-lettered",
            SETTLE,
            || db.progress(),
            |p| {
                p.get("PlaceOrder", "handled") == M as i64 && p.outgoing == 0 && p.dead_letters >= 3
            },
        )
        .await;
    let dead = db.dead_letter_rows().await.unwrap();
    println!("[rejected] {p:?}; dead letters {dead:?}");
    assert_eq!(dead.len(), 3, "{dead:?}");
    for row in &dead {
        assert_eq!(row.error_kind, "rejected", "{row:?}");
        let why = row.error_message.clone().unwrap_or_default();
        assert!(
            why.contains("com.microsoft:message-size-exceeded")
                && why.contains("too big for this tier"),
            "{why}"
        );
    }
    let s = d.state().await;
    assert_eq!(n(entity_of(&s, "placed"), "active"), (M - 3) as i64, "{s}");
    assert!(host.stop().success());
}
