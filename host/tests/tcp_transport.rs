//! Two hosts in one process talking over `durable://` and `tcp://`: a
//! published message crosses by route, a handler's explicit send names a
//! plugin queue on the peer, refused messages are dead-lettered on the sender,
//! and the shared secret and TLS (mutual) let the right peers in only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::wasm;
use jasper_host::config::{ListenConfig, RouteConfig};
use jasper_host::{Config, Host};
use serde_json::json;

fn config(dir: &std::path::Path, plugins: &[&str]) -> Config {
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for p in plugins {
        std::fs::copy(wasm(p), plugin_dir.join(format!("{p}.wasm"))).unwrap();
    }
    let mut c = Config::for_dir(dir);
    c.handling.poll_interval_ms = 20;
    c.sending.ping_interval_ms = 100;
    c.sending.retry_delay_ms = 20;
    c
}

/// Waits until `f` returns Some, polling; panics with `what` at the deadline.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state_u64(host: &Host, plugin: &str, key: &str) -> u64 {
    match host.store.read_state(plugin, key).await.unwrap() {
        Some(v) => serde_json::from_slice(&v.value).unwrap(),
        None => 0,
    }
}

/// Host B (audit) listening on `scheme://127.0.0.1:0`, host A (orders)
/// routing OrderPlaced there.
async fn pair(scheme: &str, a_dir: &std::path::Path, b_dir: &std::path::Path) -> (Host, Host) {
    let mut b = config(b_dir, &["audit"]);
    b.listen.push(ListenConfig {
        uri: format!("{scheme}://127.0.0.1:0"),
    });
    let b = Host::start(b).await.unwrap();
    let mut a = config(a_dir, &["orders"]);
    a.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: b.listeners[0].clone(),
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
