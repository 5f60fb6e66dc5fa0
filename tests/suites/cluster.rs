//! Many hosts on one store (README "Many hosts on one store"), with real
//! processes on the real servers, each test on PostgreSQL and on MariaDB:
//!
//! - `kill_loop`: 3 hosts, 50,000 orders sent while they run, one host
//!   SIGKILLed at random moments and restarted, again and again; every
//!   host handles a share; every effect exactly once. The hosts run orders
//!   and audit, so all three contend for audit's one hot key (`count`) the
//!   whole time (`E2E_CLUSTER_AUDIT=0` runs orders alone). Before stale
//!   batches reran whole with backoff (they were split into single messages),
//!   that took 176 s on PostgreSQL and did not finish in 440 s on MariaDB;
//!   now about 60 s and 110 s.
//! - `zombie`: a host frozen (SIGSTOP) while it holds claimed rows, past
//!   its lease; another host takes and handles them; the frozen one,
//!   resumed, must not commit them (its log says `event=rows-lost`).
//! - `same_name_twice`: two live hosts with one `node.name`: neither takes
//!   the other's rows.
//! - `crash_loop`: a message whose handling the host never survives (the
//!   test SIGKILLs the host whenever the message is claimed) goes to dead
//!   letters as `crashed` after `max_attempts` claims; the others, claimed
//!   in the same batch as its first attempt, are handled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jasper_e2e::cluster::{
    Cluster, SHARE_LOG, check_slow_once, event_lines, handled_in_log, held_by, random_below,
    slow_bodies, spawn_node,
};
use jasper_e2e::exactly_once::{check_orders_once, check_orders_only_once, settled, settled_with};
use jasper_e2e::orders::bodies;
use jasper_e2e::{Backend, Db, HostConfig, Progress, TestHost, json};

const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const FINAL_TIMEOUT: Duration = Duration::from_secs(600);
/// A dead node's rows are released this long after its last heartbeat.
const STALE_AFTER_MS: u64 = 2000;
const HEARTBEAT_MS: u64 = 200;

jasper_e2e::per_server_backend!(
    kill_loop => kill_loop,
    zombie => zombie,
    same_name_twice => same_name_twice,
    crash_loop => crash_loop,
);

/// The store's config every host of a test shares (each gets its own name).
fn config(backend: Backend) -> HostConfig {
    HostConfig::on(backend)
        .keep_handled_ms(7 * 24 * 3600 * 1000)
        .stale_after_ms(STALE_AFTER_MS)
        .heartbeat_ms(HEARTBEAT_MS)
}

/// The misbehave tests' config: handlers that sleep need no deadline.
fn slow_config(backend: Backend, batch_size: u64) -> HostConfig {
    config(backend)
        .deadline_ms(600_000)
        .batch_size(batch_size)
        .retry_delay_ms(50)
}

/// (id, status, owner) of the incoming rows of `ids`.
async fn rows_of(db: &Db, ids: &BTreeSet<String>) -> Vec<(String, String, i64)> {
    db.incoming_snapshot()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| ids.contains(&r.id))
        .map(|r| (r.id, r.status, r.owner_id))
        .collect()
}

// ---------------------------------------------------------------------------
// The kill loop
// ---------------------------------------------------------------------------

const ORDERS: usize = 50_000;
/// The orders go in this many `send` commands, one after another, while the
/// hosts run.
const CHUNKS: usize = 10;
const KILLS: usize = 6;

/// Whether the kill loop's hosts run audit beside orders (see the top).
fn with_audit() -> bool {
    std::env::var_os("E2E_CLUSTER_AUDIT").is_none_or(|v| v != "0")
}

async fn kill_loop(backend: Backend) {
    let started = Instant::now();
    let audit = with_audit();
    let plugins: &[&str] = if audit {
        &["orders", "audit"]
    } else {
        &["orders"]
    };
    // Each order is handled once (PlaceOrder), or twice with audit (and its
    // OrderPlaced).
    let total_handled = ORDERS as i64 * if audit { 2 } else { 1 };
    let cluster = Arc::new(Cluster::new(plugins, &config(backend), &["a", "b", "c"]));
    let db = cluster.db();
    for n in &cluster.nodes {
        n.set_env("RUST_LOG", SHARE_LOG);
    }
    let mut ids = Vec::new();
    for n in &cluster.nodes {
        ids.push(spawn_node(n).await);
    }
    println!(
        "[{backend}] 3 hosts with {plugins:?} up after {:.1?}: node ids {ids:?}",
        started.elapsed()
    );

    // The orders arrive while the hosts run (sent through host a's config).
    let sender = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            for k in 0..CHUNKS {
                let range = k * ORDERS / CHUNKS..(k + 1) * ORDERS / CHUNKS;
                let len = range.len();
                cluster.nodes[0]
                    .send_file("PlaceOrder", &bodies(range))
                    .assert_sent(len);
            }
            t.elapsed()
        })
    };

    let victim = &cluster.nodes[2];
    let mut victim_id = ids[2];
    let mut kills_holding = 0;
    for k in 0..KILLS {
        // Kill points spread over 10% .. 85% of the work.
        let pct = 10 + 75 * k as i64 / (KILLS as i64 - 1);
        let threshold = total_handled * pct / 100;
        victim
            .wait_for_every(
                &format!(
                    "handled rows >= {threshold} ({pct}%) before kill #{}",
                    k + 1
                ),
                PHASE_TIMEOUT,
                Duration::from_millis(20),
                || db.incoming_count(Some("handled"), None),
                |h| *h >= threshold,
            )
            .await;
        // A random moment of the victim's cycle (claim, handlers, commit).
        let offset = random_below(500);
        tokio::time::sleep(Duration::from_millis(offset)).await;
        victim.kill9();
        let held = held_by(&db, victim_id).await.unwrap().len();
        let p = db.progress().await.unwrap();
        println!(
            "[{backend}] kill #{} at {:.1?} (past {pct}%, +{offset} ms): the dead node held {held} rows; {} handled, {} incoming",
            k + 1,
            started.elapsed(),
            p.with_status("handled"),
            p.with_status("incoming"),
        );
        assert!(
            !settled(&p) || p.of_type("PlaceOrder") < ORDERS as i64,
            "kill #{} did not happen mid-stream: the work was done ({p:?})",
            k + 1
        );
        if held > 0 {
            kills_holding += 1;
        }
        cluster.nodes[0].assert_alive("the kill loop");
        cluster.nodes[1].assert_alive("the kill loop");
        victim_id = spawn_node(victim).await;
    }
    let send_time = sender.join().expect("the sender thread");
    println!("[{backend}] all {ORDERS} orders sent in {send_time:.1?}");

    let p = victim
        .wait_for(
            "every order (and OrderPlaced) handled after the last restart",
            FINAL_TIMEOUT,
            || db.progress(),
            settled_with(ORDERS),
        )
        .await;
    println!("[{backend}] settled after {:.1?}: {p:?}", started.elapsed());
    cluster.assert_all_alive("after settling");

    let shares: Vec<u64> = cluster.nodes.iter().map(handled_in_log).collect();
    let released: usize = cluster
        .nodes
        .iter()
        .map(|n| event_lines(n, 0, "dead-nodes-released").len())
        .sum();
    let lost: usize = cluster
        .nodes
        .iter()
        .map(|n| event_lines(n, 0, "rows-lost").len())
        .sum();
    println!(
        "[{backend}] handled per host (a, b, c; by their logs): {shares:?}; \
         kills that caught held rows: {kills_holding}/{KILLS}; \
         dead-nodes-released lines: {released}; rows-lost lines: {lost}"
    );
    let title = format!(
        "kill loop ({backend}, {}), 3 hosts with {plugins:?}, {KILLS} kills",
        cluster.nodes[0].store()
    );
    if audit {
        check_orders_once(&title, &db, ORDERS, &p).await;
    } else {
        check_orders_only_once(&title, &db, ORDERS, &p).await;
    }
    for (name, share) in ["a", "b", "c"].iter().zip(&shares) {
        assert!(*share > 0, "host {name} handled nothing: shares {shares:?}");
    }
    assert!(
        kills_holding > 0,
        "no kill caught the victim holding claimed rows: recovery was not exercised"
    );
    assert!(
        released > 0,
        "no host logged event=dead-nodes-released: the killed node's rows were not recovered by a sweep"
    );
    cluster.stop_all();
    println!("[{backend}] kill loop done in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// The zombie
// ---------------------------------------------------------------------------

/// Messages of the zombie and same-name tests.
const SLOW_MESSAGES: u64 = 12;

/// Waits until `host` (node `node_id`) runs a `test.Slow` handler (so its
/// claim has answered: frozen mid-claim, it would give up the claim on
/// waking, never commit and never learn it lost rows) and freezes it with
/// SIGSTOP; returns the rows it holds, frozen (read after the stop, so no
/// commit of its own can take them away any more). A host that committed
/// between the look and the stop is resumed and tried again.
async fn freeze_holding(host: &TestHost, db: &Db, node_id: i64) -> BTreeSet<String> {
    for _ in 0..20 {
        let mark = host.log_mark();
        host.wait_for_log(
            "the host to run a test.Slow handler",
            mark,
            &["test.Slow", "started"],
            PHASE_TIMEOUT,
        )
        .await;
        host.sigstop();
        let held = held_by(db, node_id).await.unwrap();
        if !held.is_empty() {
            return held;
        }
        host.sigcont();
    }
    panic!("the host never held claimed rows when frozen");
}

/// Waits (on `host`, for its log in a failure) until every `test.Slow` is handled.
async fn every_slow_handled(host: &TestHost, db: &Db) -> Progress {
    host.wait_for(
        "every test.Slow handled",
        PHASE_TIMEOUT,
        || db.progress(),
        |p| p.get("test.Slow", "handled") == SLOW_MESSAGES as i64,
    )
    .await
}

async fn zombie(backend: Backend) {
    let started = Instant::now();
    let cluster = Cluster::new(&["misbehave"], &slow_config(backend, 4), &["a", "b"]);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let db = cluster.db();
    let a_id = spawn_node(a).await;
    a.send_file("test.Slow", &slow_bodies(0..SLOW_MESSAGES, 800))
        .assert_sent(SLOW_MESSAGES as usize);

    let held = freeze_holding(a, &db, a_id).await;
    let frozen_at = Instant::now();
    let a_mark = a.log_mark();
    println!(
        "[{backend}] A (node {a_id}) frozen at {:.1?} holding {} rows",
        started.elapsed(),
        held.len()
    );

    // B starts, finds A silent past its lease, releases its rows and
    // handles them.
    let b_mark = b.log_mark();
    let b_id = spawn_node(b).await;
    let release = b
        .wait_for_log(
            "B to release the frozen node's rows",
            b_mark,
            &["event=dead-nodes-released"],
            PHASE_TIMEOUT,
        )
        .await;
    b.wait_for(
        "B to handle every row the frozen A holds",
        PHASE_TIMEOUT,
        || {
            let db = db.clone();
            let held = held.clone();
            async move { Ok(rows_of(&db, &held).await) }
        },
        |rows| rows.len() == held.len() && rows.iter().all(|(_, s, _)| s == "handled"),
    )
    .await;
    let frozen_for = frozen_at.elapsed();
    println!(
        "[{backend}] B (node {b_id}) handled A's {} rows after {frozen_for:.1?} of freeze; B: {release}",
        held.len()
    );
    assert!(
        frozen_for > Duration::from_millis(STALE_AFTER_MS),
        "A was frozen only {frozen_for:?}, not past its lease"
    );
    a.assert_alive("frozen");

    // A wakes with the rows' handlers run (or running) and commits.
    a.sigcont();
    let lost = a
        .wait_for_log(
            "A's log to say its rows were taken",
            a_mark,
            &["event=rows-lost"],
            PHASE_TIMEOUT,
        )
        .await;
    println!("[{backend}] A after SIGCONT: {lost}");
    let p = every_slow_handled(b, &db).await;
    cluster.assert_all_alive("after the zombie woke");
    for l in event_lines(a, a_mark, "lease-lost") {
        println!("[{backend}] A: {l}");
    }
    check_slow_once(&db, SLOW_MESSAGES).await;
    assert_eq!(p.dead_letters, 0, "{p:?}");
    assert_eq!(p.with_status("incoming"), 0, "{p:?}");
    let lost_n: usize = num_field(&lost, "lost");
    assert!(lost_n > 0, "rows-lost with lost={lost_n}: {lost}");
    let first = jasper_e2e::cluster::field(&lost, "first").unwrap_or_default();
    assert!(
        held.contains(&first.to_lowercase()),
        "the rows A lost ({lost}) are not those it held when frozen: {held:?}"
    );
    cluster.stop_all();
    println!("[{backend}] zombie done in {:.1?}", started.elapsed());
}

/// A numeric `key=` field of a log line.
fn num_field(line: &str, key: &str) -> usize {
    jasper_e2e::cluster::field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}

// ---------------------------------------------------------------------------
// One name, two hosts
// ---------------------------------------------------------------------------

async fn same_name_twice(backend: Backend) {
    let started = Instant::now();
    // Batches of 2: with a backlog a host has up to 4 batches in hand
    // (`handling.batches_in_flight`), so A holds at most 8 of the 12 and
    // leaves B a share.
    let cluster = Cluster::new(&["misbehave"], &slow_config(backend, 2), &["same", "same"]);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    for n in &cluster.nodes {
        n.set_env("RUST_LOG", SHARE_LOG);
    }
    let db = cluster.db();
    let a_id = spawn_node(a).await;
    a.send_file("test.Slow", &slow_bodies(0..SLOW_MESSAGES, 2000))
        .assert_sent(SLOW_MESSAGES as usize);
    let held = a
        .wait_for(
            "A to hold claimed rows",
            PHASE_TIMEOUT,
            || held_by(&db, a_id),
            |h| !h.is_empty(),
        )
        .await;

    // B, same name, starts while A holds them.
    let b_id = spawn_node(b).await;
    assert_ne!(a_id, b_id, "two processes got one node id");
    let rows = rows_of(&db, &held).await;
    println!(
        "[{backend}] B (node {b_id}) started while A (node {a_id}) held {} rows; those rows now: {rows:?}",
        held.len()
    );
    let taken: Vec<_> = rows
        .iter()
        .filter(|(_, status, owner)| status != "handled" && *owner != a_id)
        .collect();
    assert!(
        taken.is_empty(),
        "rows of the live host A were taken at B's start: {taken:?}"
    );
    assert!(
        rows.iter().any(|(_, s, o)| s == "incoming" && *o == a_id),
        "A finished its batch before B was up: the test shows nothing ({rows:?}); make test.Slow slower"
    );
    let named = db
        .scalar(
            &format!("SELECT count(*) FROM {} WHERE name = ?", db.table("nodes")),
            &["same"],
        )
        .await
        .unwrap();
    assert_eq!(named, 2, "registered nodes named \"same\"");

    let p = every_slow_handled(b, &db).await;
    cluster.assert_all_alive("after the run");
    let shares = [handled_in_log(a), handled_in_log(b)];
    println!(
        "[{backend}] handled by A, B (their logs): {shares:?} in {:.1?}",
        started.elapsed()
    );
    for (who, h) in [("A", a), ("B", b)] {
        for ev in ["dead-nodes-released", "rows-lost", "lease-lost"] {
            let lines = event_lines(h, 0, ev);
            assert!(
                lines.is_empty(),
                "{who} logged event={ev} with both hosts alive: {lines:?}"
            );
        }
    }
    check_slow_once(&db, SLOW_MESSAGES).await;
    assert_eq!(p.dead_letters, 0, "{p:?}");
    assert!(
        shares.iter().all(|s| *s > 0),
        "each host handles a share: {shares:?}"
    );
    cluster.stop_all();
}

// ---------------------------------------------------------------------------
// A message the host never survives
// ---------------------------------------------------------------------------

const MAX_ATTEMPTS: u64 = 3;
const OK_MESSAGES: u64 = 20;

async fn crash_loop(backend: Backend) {
    let started = Instant::now();
    // One batch holds the crasher and every test.Ok: the messages that
    // shared its first, fatal claim must be handled, not dead-lettered with it.
    let host = TestHost::new(
        &["misbehave"],
        slow_config(backend, 2 * OK_MESSAGES).max_attempts(MAX_ATTEMPTS),
    );
    let db = host.db();
    let ok = |r: std::ops::Range<u64>| r.map(|n| json!({"n": n})).collect::<Vec<_>>();
    host.send_file("test.Ok", &ok(0..OK_MESSAGES / 2))
        .assert_sent(OK_MESSAGES as usize / 2);
    // Ten minutes of sleep: the test kills the host long before.
    host.send_body("test.Slow", &json!({"n": 0, "ms": 600_000}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(OK_MESSAGES / 2..OK_MESSAGES))
        .assert_sent(OK_MESSAGES as usize / 2);
    let crasher = db.incoming_rows("test.Slow").await.unwrap()[0].0.clone();

    let mut node = spawn_node(&host).await;
    for attempt in 1..=MAX_ATTEMPTS as i64 {
        host.wait_for(
            &format!("the crasher claimed by node {node} (attempt {attempt})"),
            PHASE_TIMEOUT,
            || db.incoming_snapshot(),
            |rows| {
                rows.iter().any(|r| {
                    r.id == crasher
                        && r.owner_id == node
                        && r.status == "incoming"
                        && r.attempts == attempt
                })
            },
        )
        .await;
        if attempt == 1 {
            let held = db.incoming_snapshot().await.unwrap();
            let held = held.iter().filter(|r| r.owner_id == node).count();
            assert_eq!(
                held as u64,
                OK_MESSAGES + 1,
                "the first claim took the crasher and every test.Ok"
            );
        }
        host.kill9();
        println!(
            "[{backend}] the crasher was claimed for attempt {attempt}: SIGKILL at {:.1?}",
            started.elapsed()
        );
        node = spawn_node(&host).await;
    }
    let dead = host
        .wait_for(
            "the crasher in dead letters",
            PHASE_TIMEOUT,
            || db.dead_letter_rows(),
            |d| !d.is_empty(),
        )
        .await;
    println!("[{backend}] dead letters: {dead:?}");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id.to_lowercase(), crasher);
    assert_eq!(dead[0].error_kind, "crashed", "{dead:?}");
    let listed = host.dead_letters();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].error_kind, "crashed", "{listed:?}");
    let p = host
        .wait_for(
            "every test.Ok handled",
            PHASE_TIMEOUT,
            || db.progress(),
            |p| p.get("test.Ok", "handled") == OK_MESSAGES as i64,
        )
        .await;
    assert_eq!(
        p.of_type("test.Slow"),
        0,
        "the crasher left its inbox: {p:?}"
    );
    let state = db.state("misbehave").await.unwrap();
    for n in 0..OK_MESSAGES {
        assert!(state.contains_key(&format!("ok/{n}")), "ok/{n} missing");
    }
    assert!(
        !state.contains_key("slow/0"),
        "the crasher's effect committed"
    );
    host.assert_alive("after the crasher was dead-lettered");
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    println!("[{backend}] crash loop done in {:.1?}", started.elapsed());
}
