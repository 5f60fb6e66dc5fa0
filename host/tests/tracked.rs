//! The test helpers, used the way a test author would: start a host
//! in-process from a config value, rebuild its message schema, send a
//! message in a tracked session and look at everything it caused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::wasm;

use std::time::Duration;

use jasper_host::{Config, Host};
use serde_json::json;

async fn host_with(plugins: &[&str], dir: &tempfile::TempDir) -> Host {
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for p in plugins {
        std::fs::copy(wasm(p), plugin_dir.join(format!("{p}.wasm"))).unwrap();
    }
    let mut config = Config::for_dir(dir.path());
    config.handling.poll_interval_ms = 20;
    config.handling.retry_delay_ms = 10;
    config.handling.max_attempts = 2;
    config.plugins.deadline_ms = 1000;
    let host = Host::start(config).await.unwrap();
    host.rebuild_message_schema().await.unwrap();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_send_waits_for_every_message_it_causes() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(&["orders", "audit"], &dir).await;
    let out = host
        .tracked()
        .timeout(Duration::from_secs(30))
        .send_json(
            "PlaceOrder",
            &json!({"order_id": "o-1", "amount_cents": 250, "remind_after_ms": 600000}),
        )
        .await
        .unwrap();
    let place = out
        .handled_of("PlaceOrder")
        .next()
        .expect("PlaceOrder handled");
    let placed = out
        .handled_of("OrderPlaced")
        .next()
        .expect("OrderPlaced handled");
    // Followed by causation id, with the correlation carried along.
    assert_eq!(placed.causation_id, Some(place.id.to_string()));
    assert_eq!(placed.correlation_id, place.correlation_id);
    assert_eq!(out.sent_of("OrderPlaced").count(), 1);
    assert_eq!(
        out.scheduled.len(),
        1,
        "the reminder is recorded, not waited for"
    );
    assert_eq!(out.scheduled[0].message_type, "OrderReminder");
    assert!(out.dead_lettered.is_empty());
    let c = host.store.counts().await.unwrap();
    assert_eq!((c.handled, c.scheduled, c.incoming), (2, 1, 0));

    // A rejected message ends the session as a dead letter.
    let out = host
        .tracked()
        .send_json("PlaceOrder", &json!({"order_id": "o-2", "amount_cents": 0}))
        .await
        .unwrap();
    assert!(out.handled.is_empty());
    assert_eq!(out.dead_lettered.len(), 1);
    assert_eq!(out.dead_lettered[0].error_kind, "rejected");

    host.clear_all_persisted_messages().await.unwrap();
    assert_eq!(host.store.counts().await.unwrap(), Default::default());
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_session_sees_retries_through_to_success_and_names_what_never_finished() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(&["misbehave"], &dir).await;
    let out = host
        .tracked()
        .send_json("test.Flaky", &json!({"n": 1, "fail_times": 1}))
        .await
        .unwrap();
    assert_eq!(out.handled.len(), 1);
    assert_eq!(out.handled[0].attempts, 1, "handled on the second try");

    // Unknown type: refused before anything is written.
    let err = host
        .tracked()
        .send_json("Nope", &json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Nope"), "{err}");

    // A handler that cannot finish before the session's deadline (it spins
    // until the 1 s wall-clock limit): the session names what is pending.
    let err = host
        .tracked()
        .timeout(Duration::from_millis(200))
        .send_json("test.Spin", &json!({"n": 2}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not handled"), "{err}");
    host.shutdown().await.unwrap();
}
