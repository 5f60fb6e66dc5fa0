//! The `webhook` example plugin against a real HTTP server that fails: 300
//! orders where the server answers 500 to some requests and answers others
//! only after the plugin's HTTP timeout (having applied them). Every order
//! reaches the server, each idempotency key's effect is applied once, and
//! nothing is dead-lettered; a server that always fails ends each order in
//! dead letters after exactly `handling.max_attempts` attempts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jasper_e2e::http_server::{HttpServer, Received, Reply};
use jasper_e2e::{HostConfig, TestHost, json};

/// The plugin's HTTP timeout; the server's late answers come after it.
const HTTP_TIMEOUT_MS: u64 = 400;

fn config(server: &HttpServer, max_attempts: u64) -> HostConfig {
    HostConfig::new()
        .deadline_ms(5_000)
        .max_attempts(max_attempts)
        .retry_delay_ms(20)
        .set(
            "plugins.webhook",
            "allow_http",
            &[format!("http://127.0.0.1:{}", server.port()).as_str()][..],
        )
        .set("plugins.webhook", "http_timeout_ms", HTTP_TIMEOUT_MS)
}

/// What the server did per idempotency key.
#[derive(Default, Debug)]
struct Ledger {
    /// Requests per key.
    requests: BTreeMap<String, u32>,
    /// The effect (the order applied) per key: applied once, whatever the retries.
    applied: BTreeMap<String, String>,
    /// Requests that found their key already applied.
    repeats: u32,
    failed: u32,
    late: u32,
}

/// A reproducible roll in 0..100 for the `n`th request with `key`.
fn roll(key: &str, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 100) as u32
}

fn answer(ledger: &Mutex<Ledger>, r: &Received) -> Reply {
    let key = r.header("idempotency-key").unwrap_or("").to_string();
    let order: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let order_id = order["order_id"].as_str().unwrap_or("").to_string();
    let mut l = ledger.lock().unwrap();
    let n = {
        let n = l.requests.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    // The first three requests of a key may fail; later ones succeed, so
    // with max_attempts = 6 no order runs out of attempts.
    let roll = if n <= 3 { roll(&key, n) } else { 100 };
    if roll < 30 {
        l.failed += 1;
        return Reply::Status(500, b"try again".to_vec());
    }
    let l = &mut *l;
    match l.applied.entry(key) {
        std::collections::btree_map::Entry::Occupied(_) => l.repeats += 1,
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(order_id);
        }
    }
    if roll < 37 {
        // Applied, but answered after the plugin gave up: it retries, and
        // the retry carries the same key.
        l.late += 1;
        return Reply::Late(
            Duration::from_millis(HTTP_TIMEOUT_MS * 3),
            Box::new(Reply::Status(200, Vec::new())),
        );
    }
    Reply::Status(200, Vec::new())
}

async fn configure(host: &TestHost, server: &HttpServer) {
    host.send_body(
        "ConfigureWebhook",
        &json!({ "url": server.url("/orders") }),
        None,
    )
    .assert_sent(1);
    let db = host.db();
    host.wait_for(
        "the webhook URL in state",
        Duration::from_secs(60),
        || db.state_get("webhook", "webhook/url"),
        |r| r.is_some(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_reaches_a_failing_server_and_each_key_is_applied_once() {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let server = {
        let ledger = Arc::clone(&ledger);
        HttpServer::start(move |r| answer(&ledger, r))
            .await
            .unwrap()
    };
    let host = TestHost::new(&["webhook"], config(&server, 6));
    host.spawn();
    configure(&host, &server).await;

    let orders: Vec<_> = (0..300)
        .map(|i| json!({ "order_id": format!("o-{i}"), "amount_cents": 100 + i }))
        .collect();
    host.send_file("OrderPlaced", &orders).assert_sent(300);

    let db = host.db();
    let p = host
        .wait_for(
            "all 300 orders handled (nothing incoming, no retry scheduled)",
            Duration::from_secs(240),
            || db.progress(),
            |p| {
                p.get("OrderPlaced", "handled") == 300
                    || (p.with_status("incoming") == 0
                        && p.with_status("scheduled") == 0
                        && p.dead_letters > 0)
            },
        )
        .await;
    assert_eq!(p.get("OrderPlaced", "handled"), 300, "{p:?}");
    assert_eq!(p.dead_letters, 0, "{p:?}: {:#?}", host.dead_letters());

    // A copy of the ledger: no lock held across the awaits below.
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    let requests: Vec<Received> = server.requests();
    // Every order reached the server, under one key (the message id) for
    // all of its attempts.
    let mut keys_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        let order: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        keys_of
            .entry(order["order_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.header("idempotency-key").unwrap().to_string());
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/orders");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(keys_of.len(), 300, "orders that reached the server");
    for (order, keys) in &keys_of {
        assert_eq!(keys.len(), 1, "order {order} was sent under keys {keys:?}");
    }
    // Each key's effect applied once: 300 distinct keys applied, one per order.
    assert_eq!(l.applied.len(), 300, "keys applied");
    let applied_orders: BTreeSet<&String> = l.applied.values().collect();
    assert_eq!(applied_orders.len(), 300, "distinct orders applied");
    // The failures really happened, and retried.
    assert!(l.failed > 30, "500s answered: {}", l.failed);
    assert!(l.late > 0, "late answers: {}", l.late);
    assert!(
        l.repeats > 0,
        "a retry after a late answer found its key applied: {l:?}"
    );
    assert!(
        requests.len() > 300 + l.failed as usize / 2,
        "{}",
        requests.len()
    );
    eprintln!(
        "webhook: {} requests for 300 orders: {} answered 500, {} answered late, {} repeats of an applied key",
        requests.len(),
        l.failed,
        l.late,
        l.repeats
    );

    let state = db.state("webhook").await.unwrap();
    let delivered = state.keys().filter(|k| k.starts_with("delivered/")).count();
    assert_eq!(delivered, 300);
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_always_fails_ends_in_dead_letters_after_max_attempts() {
    let server = HttpServer::status(503).await.unwrap();
    let host = TestHost::new(&["webhook"], config(&server, 3));
    host.spawn();
    configure(&host, &server).await;
    let orders: Vec<_> = (0..2)
        .map(|i| json!({ "order_id": format!("d-{i}"), "amount_cents": 5 }))
        .collect();
    host.send_file("OrderPlaced", &orders).assert_sent(2);

    let db = host.db();
    let p = host
        .wait_for(
            "both orders dead-lettered",
            Duration::from_secs(60),
            || db.progress(),
            |p| p.dead_letters == 2,
        )
        .await;
    assert_eq!(p.get("OrderPlaced", "handled"), 0, "{p:?}");
    let dls = host.dead_letters();
    assert_eq!(dls.len(), 2, "{dls:#?}");
    for d in &dls {
        assert_eq!(d.message_type, "OrderPlaced");
        assert_eq!(d.attempts, 3, "attempts = handling.max_attempts: {d:?}");
        assert_eq!(d.error_kind, "retry", "{d:?}");
        let msg = d.error_message.clone().unwrap_or_default();
        assert!(msg.contains("answered 503"), "{msg}");
    }
    // Three requests per order, each under its message id.
    let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
    for r in server.requests() {
        *per_key
            .entry(r.header("idempotency-key").unwrap().to_string())
            .or_default() += 1;
    }
    let ids: BTreeSet<String> = dls.iter().map(|d| d.id.clone()).collect();
    assert_eq!(per_key.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(per_key.values().all(|n| *n == 3), "{per_key:?}");
    host.assert_alive("after the dead letters");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}
