//! The duplicate storm: 1,000 message ids, each delivered three times at
//! once over `durable://` through two hosts that share one PostgreSQL
//! schema (two copies to A, one to B, from three senders): every message is
//! handled once (the `audit` plugin counts each order in `seen/{id}` and in
//! the hot `count`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PgSchema, config_with, state_u64, wait_for};
use jasper_host::Host;
use jasper_host::config::{ListenConfig, RouteConfig};
use uuid::Uuid;

const IDS: usize = 1_000;

/// A receiving host on the shared schema, listening on `durable://`.
async fn receiver(schema: &PgSchema, dir: &tempfile::TempDir) -> Host {
    let mut config = config_with(dir.path(), &["audit"]);
    config.storage = schema.0.clone();
    config.listen.push(ListenConfig {
        uri: "durable://127.0.0.1:0".parse().unwrap(),
    });
    Host::start(config).await.unwrap()
}

/// A sending host (its own SQLite store) routing OrderPlaced to `to`.
async fn sender(to: &Host, dir: &tempfile::TempDir) -> Host {
    let mut config = config_with(dir.path(), &[]);
    config.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: to.listeners[0].parse().unwrap(),
    });
    Host::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_a_thousand_ids_sent_three_times_through_two_hosts_is_handled_once() {
    let schema = PgSchema::new();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = receiver(&schema, &dirs[0]).await;
    let b = receiver(&schema, &dirs[1]).await;
    let senders = vec![
        Arc::new(sender(&a, &dirs[2]).await),
        Arc::new(sender(&b, &dirs[3]).await),
        Arc::new(sender(&a, &dirs[4]).await),
    ];
    let ids: Arc<Vec<Uuid>> = Arc::new((0..IDS).map(|_| Uuid::now_v7()).collect());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in &senders {
        let (s, ids) = (s.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for (i, id) in ids.iter().enumerate() {
                let body = format!(r#"{{"order_id":"o-{i}","amount_cents":1}}"#);
                let sent = s
                    .send("OrderPlaced", body.into_bytes(), Some(*id))
                    .await
                    .unwrap();
                assert_eq!(sent.len(), 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let counts = wait_for(
        "every id handled and every sender's outbox empty",
        Duration::from_secs(180),
        || async {
            let c = a.store.counts().await.unwrap();
            for s in &senders {
                if s.store.counts().await.unwrap().outgoing > 0 {
                    return None;
                }
            }
            (c.incoming == 0 && c.scheduled == 0 && c.handled + c.dead_letters >= IDS as i64)
                .then_some(c)
        },
    )
    .await;
    println!(
        "{IDS} ids x 3 deliveries through two hosts: settled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        counts.handled, IDS as i64,
        "one inbox row per id: {counts:?}"
    );
    assert_eq!(counts.dead_letters, 0, "{counts:?}");
    assert_eq!(state_u64(&a, "audit", "count").await, IDS as u64);
    for i in 0..IDS {
        assert_eq!(
            state_u64(&b, "audit", &format!("seen/o-{i}")).await,
            1,
            "order o-{i} counted once"
        );
    }
    for s in senders {
        Arc::into_inner(s).unwrap().shutdown().await.unwrap();
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
