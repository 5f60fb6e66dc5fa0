//! The database goes away under two hosts on one PostgreSQL schema, each
//! running orders and audit, in the middle of 20,000 orders:
//!
//! - `postgres_stopped_ten_seconds`: the server stopped
//!   (`pg_ctlcluster ... stop -m fast`) for ten seconds, then started;
//! - `postgres_hung_ten_seconds`: the server made to hang: the hosts reach
//!   it through a TCP proxy that stops forwarding (connections stay open,
//!   nothing comes back) for ten seconds, with `store_timeout_ms = 2000`.
//!
//! Either way both hosts must ride it out on their own (still running, no
//! restart), finish the work, and every effect must exist exactly once.
//!
//! A test binary of its own: cargo runs test binaries one after another, so
//! no other suite sees the server down; the two tests here take turns (a
//! lock), and the server is started again by a guard even if a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use jasper_e2e::cluster::{Cluster, spawn_node};
use jasper_e2e::exactly_once::{check_orders_once, settled_with};
use jasper_e2e::orders::bodies;
use jasper_e2e::pg_outage::{PostgresOutage, postgres_answers};
use jasper_e2e::proxy::FreezingProxy;
use jasper_e2e::{Backend, HostConfig};

const ORDERS: usize = 20_000;
/// The outage: the one fixed duration of the suite, it is the spec.
const OUTAGE: Duration = Duration::from_secs(10);
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const FINAL_TIMEOUT: Duration = Duration::from_secs(600);
/// The store timeout of the hung-database test.
const STORE_TIMEOUT_MS: u64 = 2000;

/// The tests of this binary take turns: one stops the server the other uses.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config() -> HostConfig {
    HostConfig::on(Backend::Postgres)
        .keep_handled_ms(7 * 24 * 3600 * 1000)
        .stale_after_ms(2000)
        .heartbeat_ms(200)
}

/// Half the orders before the hosts start, the rest while they run; waits
/// until a quarter of the work is done (the outage comes mid-stream).
async fn start_and_load(cluster: &Cluster, label: &str, started: Instant) {
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    a.send_file("PlaceOrder", &bodies(0..ORDERS / 2))
        .assert_sent(ORDERS / 2);
    spawn_node(a).await;
    spawn_node(b).await;
    a.send_file("PlaceOrder", &bodies(ORDERS / 2..ORDERS))
        .assert_sent(ORDERS - ORDERS / 2);
    let db = cluster.db();
    let threshold = ORDERS as i64 / 2;
    a.wait_for_every(
        &format!("{threshold} messages handled before the outage"),
        PHASE_TIMEOUT,
        Duration::from_millis(20),
        || db.incoming_count(Some("handled"), None),
        |h| *h >= threshold,
    )
    .await;
    println!(
        "[{label}] {threshold} of {} handled at {:.1?}",
        2 * ORDERS,
        started.elapsed()
    );
}

/// Waits until every order is handled, checks both hosts ran throughout and
/// every effect is there once, prints the ERROR lines the outage caused,
/// stops both hosts (exit 0).
async fn settle_and_check(cluster: &Cluster, label: &str, started: Instant, marks: &[usize]) {
    let db = cluster.db();
    let p = cluster.nodes[0]
        .wait_for(
            "every order and its OrderPlaced handled after the outage",
            FINAL_TIMEOUT,
            || db.progress(),
            settled_with(ORDERS),
        )
        .await;
    println!("[{label}] settled after {:.1?}: {p:?}", started.elapsed());
    cluster.assert_all_alive("after settling");
    for (i, (n, mark)) in cluster.nodes.iter().zip(marks).enumerate() {
        let errors = n.log_lines(*mark, &[" ERROR "]);
        println!(
            "[{label}] host #{i}: {} ERROR lines since the outage began (spawned {} time(s)); first: {:?}",
            errors.len(),
            n.spawn_count(),
            errors.first()
        );
        assert_eq!(n.spawn_count(), 1, "host #{i} was restarted");
    }
    check_orders_once(
        &format!("{label}: 2 hosts, {}", cluster.nodes[0].store()),
        &db,
        ORDERS,
        &p,
    )
    .await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_ten_seconds() {
    let _turn = SERIAL.lock().await;
    let label = "postgres stopped";
    let started = Instant::now();
    let cluster = Cluster::new(&["orders", "audit"], &config(), &["a", "b"]);
    start_and_load(&cluster, label, started).await;

    let marks: Vec<usize> = cluster.nodes.iter().map(|n| n.log_mark()).collect();
    let outage = PostgresOutage::begin();
    assert!(!postgres_answers().await, "PostgreSQL still answers");
    println!("[{label}] PostgreSQL stopped at {:.1?}", started.elapsed());
    tokio::time::sleep(OUTAGE).await;
    cluster.assert_all_alive("with PostgreSQL down");
    let down = outage.end().await;
    println!(
        "[{label}] PostgreSQL back after {down:.1?} at {:.1?}",
        started.elapsed()
    );
    // The hosts noticed: each failed at least one store call.
    for (i, (n, mark)) in cluster.nodes.iter().zip(&marks).enumerate() {
        assert!(
            !n.log_lines(*mark, &[" ERROR "]).is_empty(),
            "host #{i} logged no failure while PostgreSQL was down: was it idle?"
        );
    }
    settle_and_check(&cluster, label, started, &marks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung_ten_seconds() {
    let _turn = SERIAL.lock().await;
    let label = "postgres hung";
    let started = Instant::now();
    let config = config().set("durability", "store_timeout_ms", STORE_TIMEOUT_MS);
    let (proxy, via_proxy) = FreezingProxy::before_postgres().await;
    let cluster = Cluster::with_url(&["orders", "audit"], &config, &["a", "b"], Some(&via_proxy));
    start_and_load(&cluster, label, started).await;

    let marks: Vec<usize> = cluster.nodes.iter().map(|n| n.log_mark()).collect();
    let accepted = proxy.accepted();
    proxy.freeze();
    let frozen_at = Instant::now();
    println!(
        "[{label}] proxy frozen at {:.1?} ({accepted} connections so far)",
        started.elapsed()
    );
    tokio::time::sleep(OUTAGE).await;
    cluster.assert_all_alive("with the database hung");
    // The hosts' store calls ran into store_timeout_ms (nothing came back).
    for (i, (n, mark)) in cluster.nodes.iter().zip(&marks).enumerate() {
        let timeouts = n.log_lines(*mark, &["durability.store_timeout_ms"]);
        println!(
            "[{label}] host #{i}: {} store timeouts while hung; first: {:?}",
            timeouts.len(),
            timeouts.first()
        );
        assert!(
            !timeouts.is_empty(),
            "host #{i} logged no store timeout while the database hung"
        );
    }
    proxy.thaw();
    println!(
        "[{label}] proxy thawed after {:.1?} ({} connections accepted by then)",
        frozen_at.elapsed(),
        proxy.accepted()
    );
    settle_and_check(&cluster, label, started, &marks).await;
}
