//! The AMQP 1.0 transport end to end against a real AMQP 1.0 peer: RabbitMQ's
//! `rabbitmq_amqp1_0` plugin (127.0.0.1:5672, or `JASPER_TEST_AMQP_URL`),
//! real jasper-host processes on `amqp://HOST:PORT//amq/queue/NAME`, and a
//! plain AMQP 1.0 client on the other side (qpid-proton,
//! `tests/asb/amqp_client.py`, nothing of jasper-host).
//!
//! The checks are the RabbitMQ suite's (`rabbit_common.rs`, run there over
//! RabbitMQ's own protocol):
//! - 10,000 OrderPlaced from a plain AMQP 1.0 client, handled exactly once;
//! - what the host sends read back by a plain client, every field mapped;
//! - the consuming host SIGKILLed three times mid-stream: 0 lost, 0 twice;
//! - the sending host SIGKILLed twice with unsettled outgoing rows: every
//!   order arrives, each handled once.
//!
//! Each test has queues of its own (a UUID in the name), declared and
//! deleted through lapin (the AMQP 1.0 plugin cannot declare), and each host
//! its own SQLite db, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rabbit_common.rs"]
mod rabbit_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use jasper_e2e::TestHost;
use jasper_e2e::amqp::{Amqp, unique_name};
use jasper_e2e::asb_double::amqp_client;
use rabbit_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_from_a_plain_amqp_1_0_client_handled_exactly_once() {
    plain_client_exactly_once(Via::Amqp10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_consuming_over_amqp_1_0_loses_and_duplicates_nothing() {
    consumer_sigkills(Via::Amqp10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_unsettled_outgoing_over_amqp_1_0_every_message_arrives() {
    publisher_sigkills(Via::Amqp10).await;
}

/// A (orders) routes OrderPlaced to an AMQP 1.0 node; a plain qpid-proton
/// client reads back exactly those orders: subject and `message-type` =
/// OrderPlaced, content type JSON, the order and its amount in a data
/// section, one distinct UUID message id per order, and the `jasper-*`
/// properties naming the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_host_sends_a_plain_amqp_1_0_client_reads() {
    const M: usize = 2_000;
    let started = Instant::now();
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-amqp10-out");
    amqp.declare_queue(&queue).await;
    let host = TestHost::new(
        &["orders"],
        Via::Amqp10
            .common("a")
            .route("OrderPlaced", Via::Amqp10.queue_uri(&queue)),
    );
    let db = host.db();
    host.send_file("PlaceOrder", &bodies(0..M)).assert_sent(M);
    host.spawn();
    let p = host
        .wait_for(
            "every PlaceOrder handled and every OrderPlaced accepted by the broker",
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
    assert_eq!(p.dead_letters, 0, "{:?}", db.dead_letter_rows().await);

    let (user, password) = broker_user();
    let url = format!("amqp://{user}:{password}@{}", broker_addr());
    let out = amqp_client(&[
        "receive",
        "--url",
        &url,
        "--address",
        &format!("/amq/queue/{queue}"),
        "--count",
        &M.to_string(),
        "--timeout-s",
        "60",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the plain client read fewer than {M} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let want: BTreeMap<String, u64> = (0..M).map(|i| (format!("o-{i}"), amount(i))).collect();
    let mut orders = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut bad = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let m: serde_json::Value = serde_json::from_str(line).expect("a JSON line per message");
        let body: serde_json::Value = match serde_json::from_str(m["body"].as_str().unwrap_or("")) {
            Ok(b) => b,
            Err(e) => {
                bad.push(format!("body is not JSON ({e}): {m}"));
                continue;
            }
        };
        let order = body["order_id"].as_str().unwrap_or("").to_owned();
        let props = &m["application_properties"];
        if m["subject"] != "OrderPlaced"
            || props["message-type"] != "OrderPlaced"
            || props["jasper-source"] != "local://orders"
            || m["content_type"] != "application/json"
            || want.get(&order).copied() != body["amount_cents"].as_u64()
        {
            bad.push(format!("unexpected message: {m}"));
        }
        match m["message_id"].as_str() {
            Some(id) if uuid::Uuid::parse_str(id).is_ok() => {
                ids.insert(id.to_owned());
            }
            other => bad.push(format!("message id {other:?} of {order}")),
        }
        orders.insert(order);
    }
    println!(
        "=== AMQP 1.0 checker (orders -> {queue} -> plain client): read {}, distinct orders {} (want {M}), \
         distinct ids {}, malformed {} ===",
        stdout.lines().filter(|l| l.starts_with('{')).count(),
        orders.len(),
        ids.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "malformed (first: {:?})", bad.first());
    assert_eq!(orders.len(), M, "distinct orders read back");
    assert!(orders.iter().all(|o| want.contains_key(o)));
    assert_eq!(ids.len(), M, "one message id per order");
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));
    assert_no_error_lines(&host, "A");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    amqp.cleanup().await.unwrap();
    println!("[amqp 1.0 out] {:.1?} in all", started.elapsed());
}

/// A plain client's message with no type and one of a type no plugin here
/// handles: a plain AMQP 1.0 broker has no dead-letter queue the host could
/// use, so both are written to the store's dead letters (`bad-message`,
/// `no-handler`, with the reason) and accepted: the queue ends empty, and
/// the orders sent with them are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_from_a_plain_amqp_1_0_client_are_dead_lettered_in_the_store() {
    let amqp = Amqp::connect().await;
    let queue = unique_name("e2e-amqp10-strangers");
    amqp.declare_queue(&queue).await;
    let host = TestHost::new(
        &["audit"],
        Via::Amqp10
            .common("b")
            .listen(Via::Amqp10.queue_uri(&queue)),
    );
    let db = host.db();
    spawn_consuming_via(&host, Via::Amqp10, &queue).await;
    let (user, password) = broker_user();
    let url = format!("amqp://{user}:{password}@{}", broker_addr());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "{\"what\":\"stranger\"}\n").unwrap();
    let path = file.path().display().to_string();
    for (message_type, prefix) in [("", "typeless"), ("Nobody.Handles.This", "stranger")] {
        let out = amqp_client(&[
            "send",
            "--url",
            &url,
            "--address",
            &format!("/amq/queue/{queue}"),
            "--type",
            message_type,
            "--bodies",
            &path,
            "--id-prefix",
            prefix,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Via::Amqp10.publish(&amqp, &queue, "s", 0..20, None).await;
    let p = host
        .wait_for(
            "the orders handled and two dead letters",
            FINAL_TIMEOUT,
            || db.progress(),
            |p| p.get("OrderPlaced", "handled") >= 20 && p.dead_letters >= 2,
        )
        .await;
    let mut dead = db.dead_letter_rows().await.unwrap();
    dead.sort_by(|a, b| a.error_kind.cmp(&b.error_kind));
    println!("[strangers] {p:?}; {dead:?}");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].error_kind, "bad-message");
    assert!(
        dead[0]
            .error_message
            .as_deref()
            .unwrap_or("")
            .contains("no type")
    );
    assert_eq!(dead[1].error_kind, "no-handler");
    assert!(
        dead[1]
            .error_message
            .as_deref()
            .unwrap_or("")
            .contains("Nobody.Handles.This")
    );
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), Some(0));
    assert!(host.stop().success());
    amqp.cleanup().await.unwrap();
}
