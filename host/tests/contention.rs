//! Two hosts on one PostgreSQL schema, every message writing one hot state
//! key (the `audit` plugin's `count`): both make progress, and every message
//! counts exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PgSchema, config_with, state_u64, wait_for};
use jasper_host::Host;
use jasper_host::envelope::{Envelope, local_row};
use tokio::sync::broadcast;

const N: usize = 3_000;

async fn host_on(schema: &PgSchema, dir: &tempfile::TempDir) -> Host {
    let mut config = config_with(dir.path(), &["audit"]);
    config.storage = schema.0.clone();
    config.handling.batch_size = 200;
    Host::start(config).await.unwrap()
}

/// Counts the messages each host's committed batches handled.
fn count_handled(host: &Host) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let mut events = host.subscribe();
    let counter = n.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => counter.fetch_add(ev.handled.len(), Ordering::Relaxed),
                Err(broadcast::error::RecvError::Closed) => break,
                // The sum no longer adds up: the test says so.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    counter.fetch_add(usize::MAX / 2, Ordering::Relaxed);
                    eprintln!("missed {missed} batch events");
                    break;
                }
            };
        }
    });
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_hot_key_both_make_progress_and_count_once() {
    let schema = PgSchema::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&schema, &dir_a).await;
    let b = host_on(&schema, &dir_b).await;
    let (handled_a, handled_b) = (count_handled(&a), count_handled(&b));

    let rows: Vec<_> = (0..N)
        .map(|i| {
            let body = format!(r#"{{"order_id":"o-{i}","amount_cents":1}}"#);
            let mut env = Envelope::new("OrderPlaced", body.into_bytes());
            env.destination = Some("local://audit".into());
            local_row(&env)
        })
        .collect();
    let started = Instant::now();
    assert_eq!(a.store.insert_incoming(&rows).await.unwrap().inserted, N);

    let total = wait_for(
        "every message counted",
        Duration::from_secs(180),
        || async {
            let c = a.store.counts().await.unwrap();
            (c.incoming == 0 && c.scheduled == 0 && c.handled + c.dead_letters == N as i64)
                .then_some(c)
        },
    )
    .await;
    let elapsed = started.elapsed();
    let (by_a, by_b) = (
        handled_a.load(Ordering::Relaxed),
        handled_b.load(Ordering::Relaxed),
    );
    println!(
        "{N} messages on one hot key, two hosts: {:.1} s ({by_a} by A, {by_b} by B)",
        elapsed.as_secs_f64()
    );
    assert_eq!(total.dead_letters, 0, "nothing dead-lettered");
    assert_eq!(state_u64(&a, "audit", "count").await, N as u64);
    assert_eq!(by_a + by_b, N, "each message handled by one host, once");
    assert!(
        by_a > 0 && by_b > 0,
        "both hosts made progress: {by_a} by A, {by_b} by B"
    );
    assert_eq!(state_u64(&b, "audit", "seen/o-0").await, 1);
    assert_eq!(
        state_u64(&b, "audit", &format!("seen/o-{}", N - 1)).await,
        1
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
