//! Graceful drain on SIGTERM (`handling.drain_timeout_ms`):
//! - mid-way through 10,000 orders, SIGTERM: the host takes no new work,
//!   finishes the batch in hand, hands back (owner 0) what it still held and
//!   exits 0; the next run handles the rest: 0 lost, 0 duplicated. One test
//!   per backend (the hand-back is SQL of each backend's own).
//! - a second signal while draining exits at once (status 130);
//! - a batch that runs past the bound ends the drain there (status 124).
//!
//! - outgoing messages to a peer that is down are handed back (owner 0) on
//!   the way out, so another host sends them at once, not after
//!   `stale_after_ms`.
//!
//! In the second and third the message in hand is not lost: it stays in the inbox.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use jasper_e2e::cluster::slow_bodies;
use jasper_e2e::exactly_once::{check_orders_once, settled, settled_with};
use jasper_e2e::orders::bodies;
use jasper_e2e::{Backend, Db, HostConfig, TestHost, free_port, wait_until};
use nix::sys::signal::Signal;

const N: usize = 10_000;
const DRAIN_MS: u64 = 20_000;
const TIMEOUT: Duration = Duration::from_secs(300);

jasper_e2e::per_backend!(sigterm_mid_run_drains_and_the_next_run_handles_the_rest => drain);

async fn drain(backend: Backend) {
    let host = TestHost::new(
        &["orders", "audit"],
        HostConfig::on(backend)
            .keep_handled_ms(7 * 24 * 3600 * 1000)
            .set("handling", "drain_timeout_ms", DRAIN_MS),
    );
    let db = host.db();
    host.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    host.spawn();

    // A fifth of the way: the host is mid-stream with batches in hand.
    let threshold = (2 * N / 5) as i64;
    host.wait_for(
        &format!("handled rows >= {threshold}"),
        TIMEOUT,
        || db.incoming_count(Some("handled"), None),
        |h| *h >= threshold,
    )
    .await;
    let mark = host.log_mark();
    let asked = Instant::now();
    let st = host.stop();
    let took = asked.elapsed();
    let p = db.progress().await.unwrap();
    println!("[{backend}] drained in {took:.1?} ({st}); then {p:?}");
    assert!(
        st.success(),
        "exit status after one SIGTERM: {st} (124 = the drain ran past {DRAIN_MS} ms); log tail:\n{}",
        host.log_tail(30)
    );
    assert!(
        p.with_status("incoming") > 0 && !settled(&p),
        "the host finished everything before SIGTERM: the test shows no drain ({p:?}); send more orders"
    );
    let stopped = host.log_lines(mark, &["event=host-stopped"]);
    assert_eq!(
        stopped.len(),
        1,
        "one host-stopped line after SIGTERM; log tail:\n{}",
        host.log_tail(30)
    );
    assert!(
        !host.log_lines(mark, &["event=draining"]).is_empty(),
        "no draining line after SIGTERM"
    );
    assert_eq!(
        owned(&db).await,
        (0, 0),
        "(incoming, outgoing) rows still owned after a clean stop: they should be handed back at once"
    );
    let nodes = db
        .scalar(&format!("SELECT count(*) FROM {}", db.table("nodes")), &[])
        .await
        .unwrap();
    assert_eq!(nodes, 0, "registered nodes after the only host stopped");

    host.spawn();
    let p = host
        .wait_for(
            "every order handled after the restart",
            TIMEOUT,
            || db.progress(),
            settled_with(N),
        )
        .await;
    check_orders_once(&format!("drain checker ({backend})"), &db, N, &p).await;
    let st = host.stop();
    assert!(st.success(), "exit status of the second run: {st}");
}

/// Rows with an owner: (incoming, outgoing).
async fn owned(db: &Db) -> (i64, i64) {
    let mut n = [0; 2];
    for (i, table) in ["incoming", "outgoing"].iter().enumerate() {
        n[i] = db
            .scalar(
                &format!(
                    "SELECT count(*) FROM {} WHERE owner_id <> 0",
                    db.table(table)
                ),
                &[],
            )
            .await
            .unwrap();
    }
    (n[0], n[1])
}

/// A host running one `test.Slow` of `ms`, drain bound `drain_ms`; returns
/// once the handler has started.
async fn slow_host(ms: u64, drain_ms: u64) -> TestHost {
    let host = TestHost::new(
        &["misbehave"],
        HostConfig::new()
            .deadline_ms(ms + 60_000)
            .set("handling", "drain_timeout_ms", drain_ms),
    );
    host.send_file("test.Slow", &slow_bodies(0..1, ms))
        .assert_sent(1);
    let mark = host.log_mark();
    host.spawn();
    host.wait_for_log(
        "the slow handler started",
        mark,
        &["test.Slow 0 started"],
        TIMEOUT,
    )
    .await;
    host
}

/// Waits (bounded) for the host to exit; returns its status and how long it took.
async fn exit_of(host: &TestHost, within: Duration) -> (ExitStatus, Duration) {
    let from = Instant::now();
    let st = wait_until(
        "the host's exit",
        within,
        || async { Ok(host.exit_status()) },
        Option::is_some,
    )
    .await
    .unwrap();
    (st, from.elapsed())
}

/// The one `test.Slow` is still in the inbox, not handled and not lost.
async fn slow_row_kept(host: &TestHost) {
    let db = host.db();
    let p = db.progress().await.unwrap();
    assert_eq!(p.get("test.Slow", "incoming"), 1, "{p:?}");
    assert_eq!(p.get("test.Slow", "handled"), 0, "{p:?}");
    assert_eq!(p.dead_letters, 0, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // The handler would take 60 s and the drain may take 120 s: only the
    // second signal can end this quickly.
    let host = slow_host(60_000, 120_000).await;
    let mark = host.log_mark();
    host.signal(Signal::SIGTERM);
    host.wait_for_log("draining", mark, &["event=draining"], TIMEOUT)
        .await;
    host.signal(Signal::SIGINT);
    let (st, took) = exit_of(&host, Duration::from_secs(30)).await;
    println!("exit {st} {took:.1?} after the second signal");
    assert_eq!(
        st.code(),
        Some(130),
        "exit status after a second signal: {st}"
    );
    assert!(
        !host.log_lines(mark, &["event=drain-abandoned"]).is_empty(),
        "no drain-abandoned line; log tail:\n{}",
        host.log_tail(20)
    );
    slow_row_kept(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_drain_bound_ends_the_drain_there() {
    let host = slow_host(60_000, 1_000).await;
    let mark = host.log_mark();
    host.signal(Signal::SIGTERM);
    let (st, took) = exit_of(&host, Duration::from_secs(30)).await;
    println!("exit {st} {took:.1?} after SIGTERM with a 1 s bound");
    assert_eq!(
        st.code(),
        Some(124),
        "exit status when the drain runs past its bound: {st} (signal {:?})",
        st.signal()
    );
    assert!(
        !host.log_lines(mark, &["event=drain-timed-out"]).is_empty(),
        "no drain-timed-out line; log tail:\n{}",
        host.log_tail(20)
    );
    slow_row_kept(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_rows_for_a_peer_that_is_down_are_handed_back_on_the_way_out() {
    const M: usize = 100;
    let peer = format!("durable://127.0.0.1:{}", free_port());
    let host = TestHost::new(
        &["orders"],
        HostConfig::new().route("OrderPlaced", peer.as_str()).set(
            "handling",
            "drain_timeout_ms",
            DRAIN_MS,
        ),
    );
    let db = host.db();
    host.send_file("PlaceOrder", &bodies(0..M)).assert_sent(M);
    host.spawn();
    let p = host
        .wait_for(
            "every PlaceOrder handled, its OrderPlaced waiting for the peer",
            TIMEOUT,
            || db.progress(),
            |p| p.get("PlaceOrder", "handled") == M as i64 && p.outgoing == M as i64,
        )
        .await;
    println!("before SIGTERM: {p:?}, owned {:?}", owned(&db).await);
    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
    let p = db.progress().await.unwrap();
    assert_eq!(
        p.outgoing, M as i64,
        "outgoing rows kept for the peer: {p:?}"
    );
    assert_eq!(
        owned(&db).await,
        (0, 0),
        "(incoming, outgoing) rows still owned after a clean stop"
    );
}
