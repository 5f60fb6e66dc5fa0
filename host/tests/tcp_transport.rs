//! Two hosts in one process talking over `durable://` and `tcp://`: a
//! published message crosses by route, a handler's explicit send names a
//! plugin queue on the peer, refused messages are dead-lettered on the sender,
//! and the shared secret and TLS (mutual) let the right peers in only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{config_with as config, state_u64, wait_for};
use jasper_host::Host;
use jasper_host::config::{ListenConfig, RouteConfig};
use jasper_host::transport::tcp::TcpSettings;
use jasper_host::transport::tcp::conn::Conn;
use jasper_host::transport::wire::{self, Frame, Verdict};
use serde_json::json;

/// Host B (audit) listening on `scheme://127.0.0.1:0`, host A (orders)
/// routing OrderPlaced there.
async fn pair(scheme: &str, a_dir: &std::path::Path, b_dir: &std::path::Path) -> (Host, Host) {
    let mut b = config(b_dir, &["audit"]);
    b.listen.push(ListenConfig {
        uri: format!("{scheme}://127.0.0.1:0").parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    let mut a = config(a_dir, &["orders"]);
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: b.listeners[0].parse().unwrap(),
    });
    let a = Host::start(a).await.unwrap();
    (a, b)
}

async fn orders_cross(scheme: &str) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(scheme, da.path(), db.path()).await;
    const N: u64 = 300;
    for i in 0..N {
        let body = json!({"order_id": format!("o-{i}"), "amount_cents": 100 + i, "remind_after_ms": 3_600_000});
        a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    wait_for(
        "every OrderPlaced handled on B",
        Duration::from_secs(60),
        || async { (state_u64(&b, "audit", "count").await == N).then_some(()) },
    )
    .await;
    for i in 0..N {
        assert_eq!(
            state_u64(&b, "audit", &format!("seen/o-{i}")).await,
            1,
            "o-{i}"
        );
    }
    // Nothing left to send on A.
    let c = wait_for(
        "A's outgoing rows deleted",
        Duration::from_secs(10),
        || async {
            let c = a.store.counts().await.unwrap();
            (c.outgoing == 0).then_some(c)
        },
    )
    .await;
    assert_eq!(c.dead_letters, 0);
    let cb = b.store.counts().await.unwrap();
    if scheme == "durable" {
        assert_eq!(
            cb.handled, N as i64,
            "B's inbox holds each message once: {cb:?}"
        );
    } else {
        assert_eq!(cb.handled, 0, "tcp:// messages have no inbox row: {cb:?}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_cross_over_durable() {
    orders_cross("durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_cross_over_tcp() {
    orders_cross("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_secret_on_both_sides_orders_cross() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = "correct horse battery staple";
    let mut b = config(db.path(), &["audit"]);
    b.tcp.secret = Some(secret.into());
    b.listen.push(ListenConfig {
        uri: "durable://127.0.0.1:0".parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    let mut a = config(da.path(), &["orders"]);
    a.tcp.secret = Some(secret.into());
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: b.listeners[0].parse().unwrap(),
    });
    let a = Host::start(a).await.unwrap();
    let body = json!({"order_id": "s-1", "amount_cents": 5, "remind_after_ms": 3_600_000});
    a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
        .await
        .unwrap();
    wait_for(
        "OrderPlaced handled on B",
        Duration::from_secs(30),
        || async { (state_u64(&b, "audit", "seen/s-1").await == 1).then_some(()) },
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A peer that cannot take a message says why; the sender dead-letters it
/// with that reason instead of sending it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_dead_lettered_on_the_sender_with_the_reason() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = config(db.path(), &["audit"]);
    b.listen.push(ListenConfig {
        uri: "durable://127.0.0.1:0".parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    let peer = b.listeners[0].clone();
    let mut a = config(da.path(), &["orders"]);
    // OrderPlaced to a queue B does not have; PlaceOrder (which B's plugin
    // does not handle) by type.
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: format!("{peer}/billing").parse().unwrap(),
    });
    a.route.push(RouteConfig {
        message_type: "Refund".into(),
        to: peer.parse().unwrap(),
    });
    let a = Host::start(a).await.unwrap();
    let body = json!({"order_id": "r-1", "amount_cents": 5, "remind_after_ms": 3_600_000});
    a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
        .await
        .unwrap();
    a.send("Refund", b"{}".to_vec(), None).await.unwrap();
    let dead = wait_for("two dead letters on A", Duration::from_secs(30), || async {
        let d = a.store.dead_letters(10).await.unwrap();
        (d.len() == 2).then_some(d)
    })
    .await;
    let placed = dead
        .iter()
        .find(|d| d.message_type == "OrderPlaced")
        .unwrap();
    assert_eq!(placed.error_kind, "unknown-destination");
    assert!(placed.error_message.contains("billing"), "{placed:?}");
    assert_eq!(placed.received_at, format!("{peer}/billing"));
    let refund = dead.iter().find(|d| d.message_type == "Refund").unwrap();
    assert_eq!(refund.error_kind, "rejected");
    assert!(refund.error_message.contains("Refund"), "{refund:?}");
    // Settled rows are deleted off the send path: wait for it.
    wait_for(
        "A's outgoing rows deleted",
        Duration::from_secs(30),
        || async {
            let c = a.store.counts().await.unwrap();
            (c.outgoing == 0).then_some(c)
        },
    )
    .await;
    let cb = b.store.counts().await.unwrap();
    assert_eq!(
        (cb.incoming, cb.handled),
        (0, 0),
        "nothing reached B's inbox: {cb:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Messages sent while the peer is not there yet wait (outgoing rows, the
/// breaker open) and arrive once it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_a_peer_that_comes_later() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = format!("durable://127.0.0.1:{port}");
    let mut a = config(da.path(), &["orders"]);
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: peer.parse().unwrap(),
    });
    let a = Host::start(a).await.unwrap();
    for i in 0..20 {
        let body =
            json!({"order_id": format!("w-{i}"), "amount_cents": 5, "remind_after_ms": 3_600_000});
        a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    wait_for("20 outgoing rows on A", Duration::from_secs(30), || async {
        (a.store.counts().await.unwrap().outgoing == 20).then_some(())
    })
    .await;
    let mut b = config(db.path(), &["audit"]);
    b.listen.push(ListenConfig {
        uri: peer.parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    wait_for("all 20 handled on B", Duration::from_secs(30), || async {
        (state_u64(&b, "audit", "count").await == 20).then_some(())
    })
    .await;
    wait_for("A's outgoing empty", Duration::from_secs(10), || async {
        (a.store.counts().await.unwrap().outgoing == 0).then_some(())
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A's sender has several batches unanswered when the receiver is lost: it
/// answered the first, read two more and died without answering them. The
/// answered batch is not sent again; every other message reaches the real
/// B, which comes up on the same port later, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_lost_with_batches_in_flight_loses_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = format!("durable://{}", fake.local_addr().unwrap());
    let mut a = config(da.path(), &["orders"]);
    a.sending.batch_size = 10;
    a.sending.batches_in_flight = 4;
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: peer.parse().unwrap(),
    });
    let a = Host::start(a).await.unwrap();
    const N: u64 = 200;
    for i in 0..N {
        let body = json!({"order_id": format!("o-{i}"), "amount_cents": 100 + i, "remind_after_ms": 3_600_000});
        a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    let (stream, _) = tokio::time::timeout(Duration::from_secs(30), fake.accept())
        .await
        .expect("A connected")
        .unwrap();
    let mut conn = Conn::accept(stream, TcpSettings::plain()).await.unwrap();
    let mut batches = Vec::new();
    // Three batches arrive although the first is not answered yet.
    while batches.len() < 3 {
        match conn.recv(Duration::from_secs(30)).await.unwrap() {
            Some(Frame::Batch { seq, entries }) => batches.push((seq, entries)),
            other => panic!("expected a batch, got {other:?}"),
        }
    }
    let (seq, first) = &batches[0];
    conn.send(&wire::encode_ack(
        *seq,
        &vec![Verdict::Accepted; first.len()],
    ))
    .await
    .unwrap();
    let answered: Vec<String> = first
        .iter()
        .map(|e| {
            let body: serde_json::Value =
                serde_json::from_slice(&e.as_ref().unwrap().body).unwrap();
            body["order_id"].as_str().unwrap().to_string()
        })
        .collect();
    // Lost, two batches or more unanswered.
    drop(conn);
    drop(fake);
    let mut b = config(db.path(), &["audit"]);
    b.listen.push(ListenConfig {
        uri: peer.parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    let expected = N - answered.len() as u64;
    wait_for(
        "every unanswered OrderPlaced handled on B",
        Duration::from_secs(60),
        || async { (state_u64(&b, "audit", "count").await >= expected).then_some(()) },
    )
    .await;
    wait_for("A's outgoing empty", Duration::from_secs(10), || async {
        (a.store.counts().await.unwrap().outgoing == 0).then_some(())
    })
    .await;
    for i in 0..N {
        let id = format!("o-{i}");
        let want = u64::from(!answered.contains(&id));
        assert_eq!(
            state_u64(&b, "audit", &format!("seen/{id}")).await,
            want,
            "{id} (answered by the lost receiver: {answered:?})"
        );
    }
    assert_eq!(state_u64(&b, "audit", "count").await, expected);
    let cb = b.store.counts().await.unwrap();
    assert_eq!(cb.handled, expected as i64, "{cb:?}");
    assert_eq!(a.store.counts().await.unwrap().dead_letters, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A handler's `ctx.send` to `SCHEME://peer/PLUGIN` reaches that plugin; over
/// `tcp://` a message whose first attempt fails becomes durable (a retry row
/// on the receiver) and is handled on the next attempt.
async fn explicit_sends(scheme: &str) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = config(db.path(), &["misbehave"]);
    b.handling.retry_delay_ms = 10;
    b.listen.push(ListenConfig {
        uri: format!("{scheme}://127.0.0.1:0").parse().unwrap(),
    });
    let b = Host::start(b).await.unwrap();
    let to = format!("{}/misbehave", b.listeners[0]);
    let mut a = config(da.path(), &["misbehave"]);
    // The peer is no route of A's: its plugin may send there by name.
    a.plugins.each.insert(
        "misbehave".into(),
        jasper_host::config::PluginSettings {
            allow_send: vec![b.listeners[0].clone()],
            ..Default::default()
        },
    );
    let a = Host::start(a).await.unwrap();
    for n in 0..10u64 {
        let body = json!({"n": n, "to": to, "flaky": if n % 2 == 1 { 1 } else { 0 }});
        a.send("test.Forward", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    wait_for(
        "every forwarded message handled on B",
        Duration::from_secs(30),
        || async {
            let mut done = 0;
            for n in 0..10u64 {
                let key = if n % 2 == 1 {
                    format!("flaky/{n}")
                } else {
                    format!("ok/{n}")
                };
                if b.store
                    .read_state("misbehave", &key)
                    .await
                    .unwrap()
                    .is_some()
                {
                    done += 1;
                }
            }
            (done == 10).then_some(())
        },
    )
    .await;
    for n in (1..10u64).step_by(2) {
        let v = b
            .store
            .read_state("misbehave", &format!("flaky/{n}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.value, b"1", "flaky/{n} handled on its second attempt");
    }
    // Nothing handled on A but the forwards; no dead letters anywhere.
    assert!(
        a.store
            .read_state("misbehave", "ok/0")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(a.store.counts().await.unwrap().dead_letters, 0);
    assert_eq!(b.store.counts().await.unwrap().dead_letters, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_sends_over_durable() {
    explicit_sends("durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_sends_over_tcp_and_a_failed_attempt_becomes_durable() {
    explicit_sends("tcp").await;
}
