//! A message a handler publishes that nobody takes (no plugin subscribes to
//! its type, no route matches) is never silent: a WARN naming it, a count on
//! the host, and with `handling.unrouted = "dead-letter"` a `no-route` dead
//! letter of the handler's commit that a replay publishes again once a
//! subscriber is loaded. `orders` alone publishes `OrderPlaced` to nobody
//! (`audit` takes it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::log::{log, log_lines};

use std::time::Duration;

use jasper_host::config::Unrouted;
use jasper_host::store::Selection;
use jasper_host::{Config, Host};
use serde_json::json;

fn config(dir: &tempfile::TempDir, plugins: &[&str], unrouted: Unrouted) -> Config {
    let mut c = common::config_with(dir.path(), plugins);
    c.handling.unrouted = unrouted;
    c
}

fn place_order(id: &str) -> serde_json::Value {
    json!({"order_id": id, "amount_cents": 250, "remind_after_ms": 600000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_nobody_takes_is_warned_counted_and_dropped_by_default() {
    log();
    let dir = tempfile::tempdir().unwrap();
    let c = common::config_with(dir.path(), &["orders"]);
    assert_eq!(c.handling.unrouted, Unrouted::Drop, "the default");
    let host = Host::start(c).await.unwrap();
    host.rebuild_message_schema().await.unwrap();
    assert_eq!(host.unrouted_published(), 0);

    let out = host
        .tracked()
        .send_json("PlaceOrder", &place_order("o-1"))
        .await
        .unwrap();
    assert_eq!(out.handled_of("PlaceOrder").count(), 1);
    assert_eq!(out.sent_of("OrderPlaced").count(), 0, "it went nowhere");
    assert_eq!(out.unrouted.len(), 1);
    let placed = &out.unrouted[0];
    assert_eq!(placed.message_type, "OrderPlaced");
    assert_eq!(placed.destination, None);
    assert_eq!(host.unrouted_published(), 1);

    let line = log_lines(&["event=unrouted", &placed.id.to_string()]);
    assert_eq!(line.len(), 1, "one warning for it: {line:?}");
    let line = &line[0];
    for part in [
        "WARN",
        "message_type=OrderPlaced",
        "plugin=orders",
        "unrouted_total=1",
        "dropped",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    // The rest of the handler's effects committed; nothing was kept of it.
    let counts = host.store.counts().await.unwrap();
    assert_eq!((counts.handled, counts.scheduled), (1, 1), "{counts:?}");
    assert_eq!(counts.dead_letters, 0);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dead_letter_a_publish_nobody_takes_is_a_no_route_dead_letter_a_replay_delivers() {
    log();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(config(&dir, &["orders"], Unrouted::DeadLetter))
        .await
        .unwrap();
    host.rebuild_message_schema().await.unwrap();
    let out = host
        .tracked()
        .send_json("PlaceOrder", &place_order("o-2"))
        .await
        .unwrap();
    assert_eq!(out.handled_of("PlaceOrder").count(), 1);
    let placed = out
        .unrouted
        .first()
        .expect("OrderPlaced published to nobody");
    assert_eq!(host.unrouted_published(), 1);
    let line = log_lines(&["event=unrouted", &placed.id.to_string()]);
    assert_eq!(line.len(), 1, "{line:?}");
    assert!(line[0].contains("moved to dead letters"), "{}", line[0]);

    // In the same commit as the handled mark and the scheduled reminder.
    let counts = host.store.counts().await.unwrap();
    assert_eq!(
        (counts.handled, counts.scheduled, counts.dead_letters),
        (1, 1, 1)
    );
    let dead = host.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, placed.id);
    assert_eq!(d.message_type, "OrderPlaced");
    assert_eq!(d.error_kind, "no-route");
    assert!(
        d.error_message.contains("OrderPlaced"),
        "{}",
        d.error_message
    );
    assert_eq!(d.source.as_deref(), Some("local://orders"));
    assert_eq!(d.attempts, 0);
    assert!(d.replayable);
    host.shutdown().await.unwrap();

    // Audit loaded now: the replay publishes it again, and audit handles it.
    let host = Host::start(config(&dir, &["orders", "audit"], Unrouted::DeadLetter))
        .await
        .unwrap();
    let mut events = host.subscribe();
    let replayed = host
        .store
        .replay_dead_letters(&Selection::All)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let handled = loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("audit handles the replayed OrderPlaced within 30 s")
            .unwrap();
        if let Some(e) = event
            .handled
            .iter()
            .find(|e| e.message_type == "OrderPlaced" && e.id != placed.id)
        {
            break e.clone();
        }
    };
    assert_eq!(
        handled.destination.as_ref().map(ToString::to_string),
        Some("local://audit".to_owned())
    );
    assert_eq!(handled.causation_id, placed.causation_id);
    assert_eq!(common::state_u64(&host, "audit", "count").await, 1);
    assert_eq!(common::state_u64(&host, "audit", "seen/o-2").await, 1);
    assert!(host.store.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(host.unrouted_published(), 0, "a new host counts afresh");
    host.shutdown().await.unwrap();
}
