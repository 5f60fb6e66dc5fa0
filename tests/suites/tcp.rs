//! Durability across hosts over the built-in TCP transport: two real
//! jasper-host processes. Host A runs the `orders` plugin and routes every
//! `OrderPlaced` to host B over `durable://`; B runs `audit` (no `orders`),
//! so each of the 10,000 orders crosses the wire once. Either side is
//! SIGKILLed mid-stream, or B is away for ten seconds, and in the end every
//! effect must exist exactly once: A's `order/o-i` at version 1, B's
//! `seen/o-i` = 1 and `count` = 10,000, nothing left in A's outgoing table,
//! no dead letters on either side.
//!
//! One more test follows an order's trace from A into B (OpenTelemetry).
//!
//! SQLite only: each host has its own db in its own temp dir, and its own
//! port (`free_port`), so the tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jasper_e2e::kill::{Catch, SenderKill, in_inbox, kill_sender_at, kill9_when, sender_counts};
use jasper_e2e::orders::*;
use jasper_e2e::otlp::{OtlpReceiver, SpanSeen};
use jasper_e2e::{HostConfig, TestHost, free_port, wait_until};

/// Both hosts prove they know it before any frame is read.
const SECRET: &str = "e2e-shared-secret-for-the-tcp-suite";

/// What both hosts share: short heartbeats and sender timings, handled rows
/// kept for a week (they are the receiver's dedupe record).
fn common(name: &str) -> HostConfig {
    HostConfig::new()
        .node_name(name)
        .keep_handled_ms(7 * 24 * 3600 * 1000)
        .heartbeat_ms(200)
        .stale_after_ms(2000)
        .sending("ping_interval_ms", 200)
        .sending("retry_delay_ms", 50)
        .sending("recovery_interval_ms", 200)
        .tcp("secret", SECRET)
}

/// A (orders, routes OrderPlaced to B) and B (audit, listens on `uri`).
struct Pair {
    a: TestHost,
    b: TestHost,
    /// `durable://127.0.0.1:PORT`: B's listener and A's route.
    uri: String,
}

impl Pair {
    fn new() -> Pair {
        Pair::with_a(|c| c)
    }

    /// [`Pair::new`] with `tweak` applied to A's config.
    fn with_a(tweak: impl FnOnce(HostConfig) -> HostConfig) -> Pair {
        let uri = format!("durable://127.0.0.1:{}", free_port());
        let a = TestHost::new(&["orders"], tweak(common("a").route("OrderPlaced", &uri)));
        let b = TestHost::new(&["audit"], common("b").listen(&uri));
        Pair { a, b, uri }
    }

    /// Starts B and waits for its listener.
    async fn spawn_b(&self) {
        let mark = self.b.log_mark();
        self.b.spawn();
        self.b
            .wait_for_log(
                "B listening",
                mark,
                &["listening", &format!("listener={}", self.uri)],
                START_TIMEOUT,
            )
            .await;
    }
}

/// Waits for both hosts to settle, then checks every effect on both sides
/// and stops both hosts (SIGTERM, exit 0).
async fn settle_and_check(pair: &Pair, label: &str, started: Instant) {
    let via = format!(
        "tcp checker ({label}): {N} orders from A to B over {}",
        pair.uri
    );
    settle_check_and_stop(&pair.a, &pair.b, label, &via, started).await;
}

// ---------------------------------------------------------------------------

/// Both hosts up the whole time: 10,000 orders cross once, and not a single
/// batch needs sending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_ten_thousand_orders_cross_exactly_once() {
    let pair = Pair::new();
    let started = Instant::now();
    pair.spawn_b().await;
    // Half written while A is down (its worker finds them on start), half
    // while it runs.
    pair.a
        .send_file("PlaceOrder", &bodies(0..N / 2))
        .assert_sent(N / 2);
    pair.a.spawn();
    pair.a
        .send_file("PlaceOrder", &bodies(N / 2..N))
        .assert_sent(N - N / 2);
    settle_and_check(&pair, "both up", started).await;
    let failed = count_lines(&pair.a, 0, &[SEND_FAILED]);
    let opened = count_lines(&pair.a, 0, &[CIRCUIT_OPEN]);
    println!(
        "[both up] {:.1?} in all; A's failed sends {failed}, breaker openings {opened}",
        started.elapsed()
    );
    assert_eq!(
        (failed, opened),
        (0, 0),
        "B was up the whole time, yet A's sends failed; A's log tail:\n{}",
        pair.a.log_tail(40)
    );
}

/// B is SIGKILLed three times while A streams to it, and restarted on the
/// same port each time. At stake: batches B committed but did not
/// acknowledge (A sends them again, B's inbox drops the copies), batches in
/// flight (A sends them again), and rows B received but had not handled yet
/// (B's next run releases and handles them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_sigkilled_mid_stream_loses_and_duplicates_nothing() {
    /// Kill points: OrderPlaced rows in B's inbox (received, any status), as
    /// a share of N.
    const KILL_AT_PERCENT: [i64; 3] = [15, 45, 75];
    /// Delay after crossing each point, to land in other phases of B's
    /// receive / acknowledge / handle cycle.
    const KILL_OFFSET_MS: [u64; 3] = [0, 7, 19];

    let pair = Pair::new();
    let started = Instant::now();
    pair.spawn_b().await;
    pair.a.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    pair.a.spawn();
    let db = pair.b.db();
    let da = pair.a.db();
    for (k, pct) in KILL_AT_PERCENT.iter().enumerate() {
        let threshold = N as i64 * pct / 100;
        let seen = kill9_when(
            &pair.b,
            &format!(
                "OrderPlaced rows in B's inbox >= {threshold} before kill #{}",
                k + 1
            ),
            PHASE_TIMEOUT,
            Duration::from_millis(5),
            || db.incoming_count(None, Some("OrderPlaced")),
            threshold,
            Duration::from_millis(KILL_OFFSET_MS[k]),
        )
        .await;
        // B is dead: its store is as the kill left it.
        let pb = db.progress().await.unwrap();
        let pa = da.progress().await.unwrap();
        let received = pb.of_type("OrderPlaced");
        println!(
            "[receiver kill] #{} at {:.1?}: B had received {seen} when polled (threshold {threshold}), killed {} ms later; \
             after kill: B received {received}, handled {}, received but unhandled {}; \
             A PlaceOrder handled {}, A outgoing {}",
            k + 1,
            started.elapsed(),
            KILL_OFFSET_MS[k],
            pb.get("OrderPlaced", "handled"),
            pb.get("OrderPlaced", "incoming"),
            pa.get("PlaceOrder", "handled"),
            pa.outgoing,
        );
        // Mid-stream: B had not received every order yet, so A was still
        // sending (or about to) when B died.
        assert!(
            received < N as i64,
            "kill #{} did not happen mid-stream: B had already received everything (B {pb:?})",
            k + 1
        );
        pair.spawn_b().await;
    }
    let failed = count_lines(&pair.a, 0, &[SEND_FAILED]);
    println!("[receiver kill] A's failed sends so far: {failed}");
    assert!(
        failed > 0,
        "three receiver kills mid-stream, yet no send of A failed"
    );
    settle_and_check(&pair, "receiver SIGKILLed 3x", started).await;
    println!("[receiver kill] {:.1?} in all", started.elapsed());
}

/// The worst moment for A: its handlers committed (every OrderPlaced is an
/// outgoing row) but nothing was sent. Made deterministic by keeping B down
/// until A has handled everything, then SIGKILLing A. A second run (B still
/// down) releases the rows, relays and holds them, and is SIGKILLed too. A's
/// third run, B up, must release them again and send each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_sigkilled_after_commit_before_send_resends_its_outgoing_rows() {
    let pair = Pair::new();
    let started = Instant::now();
    let da = pair.a.db();
    pair.a.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    pair.a.spawn();
    // B is not running: nothing can be acknowledged, every row stays.
    pair.a
        .wait_for_log(
            "A's breaker opening while B is down",
            0,
            &[CIRCUIT_OPEN, &pair.uri],
            PHASE_TIMEOUT,
        )
        .await;
    let pa = pair
        .a
        .wait_for(
            "A to handle every PlaceOrder, its OrderPlaced all in outgoing",
            PHASE_TIMEOUT,
            || da.progress(),
            |p| p.get("PlaceOrder", "handled") == N as i64 && p.outgoing == N as i64,
        )
        .await;
    let rows = da.outgoing_snapshot().await.unwrap();
    let owners: BTreeSet<i64> = rows.iter().map(|r| r.owner_id).collect();
    println!(
        "[sender kill, B down] at {:.1?}: A {pa:?}; outgoing owners {owners:?}",
        started.elapsed()
    );
    assert_eq!(rows.len(), N, "A's outgoing rows");
    assert!(
        rows.iter()
            .all(|r| r.destination == pair.uri && r.message_type == "OrderPlaced"),
        "every outgoing row is an OrderPlaced for {} (first: {:?})",
        pair.uri,
        rows.first()
    );
    assert!(
        owners.len() == 1 && !owners.contains(&0),
        "every row is held by A's running node: owners {owners:?}"
    );
    pair.a.kill9();
    let after = da.progress().await.unwrap();
    assert_eq!(
        after.outgoing, N as i64,
        "the killed A left all its committed, unsent rows: {after:?}"
    );

    // A second run while B is still down: it releases the rows, its relay
    // claims them all and holds them (breaker open) — and is SIGKILLed too.
    let mark = pair.a.log_mark();
    pair.a.spawn();
    pair.a
        .wait_for(
            "A's second run to relay all the rows of the first",
            PHASE_TIMEOUT,
            || async { Ok(relayed_rows(&pair.a, mark)) },
            |n| *n >= N as i64,
        )
        .await;
    pair.a
        .wait_for_log(
            "the second run's breaker opening while B is down",
            mark,
            &[CIRCUIT_OPEN, &pair.uri],
            PHASE_TIMEOUT,
        )
        .await;
    let rows = da.outgoing_snapshot().await.unwrap();
    let owners2: BTreeSet<i64> = rows.iter().map(|r| r.owner_id).collect();
    assert_eq!(rows.len(), N, "A's outgoing rows in its second run");
    assert!(
        owners2.len() == 1 && !owners2.contains(&0) && owners2 != owners,
        "the second run's relay holds every row: owners {owners2:?} (first run {owners:?})"
    );
    assert_eq!(
        relayed_rows(&pair.a, mark),
        N as i64,
        "the second run relays each row once"
    );
    pair.a.kill9();
    println!(
        "[sender kill, B down] second run relayed and held all {N} rows (owner {owners2:?}), SIGKILLed at {:.1?}",
        started.elapsed()
    );

    pair.spawn_b().await;
    let mark = pair.a.log_mark();
    pair.a.spawn();
    pair.a
        .wait_for_log(
            "A's restart to release the rows of its killed run",
            mark,
            &["event=dead-nodes-released "],
            START_TIMEOUT,
        )
        .await;
    settle_and_check(&pair, "sender SIGKILLed after commit, before send", started).await;
    // The rows went out through the recovery relay, each once.
    let relayed = relayed_rows(&pair.a, mark);
    println!(
        "[sender kill, B down] relayed after restart: {relayed} rows; {:.1?} in all",
        started.elapsed()
    );
    assert_eq!(
        relayed, N as i64,
        "the restarted A relays exactly the {N} rows its killed run left"
    );
}

/// Both up, A SIGKILLed mid-stream twice (or more, see `kill_sender_at`) while
/// it has committed rows in outgoing that were not acknowledged; restarted
/// each time. The first kill is the worst moment for duplicates: B has
/// committed rows that A has not deleted, so A's next run sends them again
/// and B's inbox must drop the copies. The second lands past 55% of the
/// orders (and past the first kill), on rows its own run committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_sigkilled_mid_stream_twice_resends_once() {
    let pair = Pair::new();
    let started = Instant::now();
    let da = pair.a.db();
    pair.spawn_b().await;
    pair.a.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    pair.a.spawn();

    let mut left_by_kills = 0;
    let mut restarts = Vec::new();
    let mut b_had = 0;
    // Rows left by earlier kills, and how far A had got then: each kill
    // must catch rows its own run committed, further on.
    let mut earlier = BTreeSet::new();
    let mut handled_before = 0;
    for (k, (pct, catch)) in [(15, Catch::CommittedByB), (55, Catch::Unsettled)]
        .into_iter()
        .enumerate()
    {
        let min_handled = (N as i64 * pct / 100).max(handled_before + 1);
        let caught = kill_sender_at(
            &pair.a,
            &pair.b.db(),
            SenderKill {
                label: "[sender kill]",
                min_handled,
                catch,
                earlier: &earlier,
                window: Duration::from_millis(300),
                move_on_after_miss: false,
            },
        )
        .await;
        // A is dead, and B cannot touch A's store.
        let pa = da.progress().await.unwrap();
        handled_before = pa.get("PlaceOrder", "handled");
        println!(
            "[sender kill] #{} at {:.1?} ({catch:?}, try {}, {} SIGKILL(s)): A had handled {handled_before} PlaceOrder (>= {min_handled}); \
             left {} rows in outgoing: {} committed by this run, {} of those already in B's inbox",
            k + 1,
            started.elapsed(),
            caught.tries,
            caught.kills,
            pa.outgoing,
            caught.rows.len(),
            caught.in_b.len(),
        );
        assert!(
            !caught.rows.is_empty() && handled_before < N as i64,
            "kill #{} was not mid-stream with unacknowledged rows of its run: {pa:?}",
            k + 1
        );
        if catch == Catch::CommittedByB {
            b_had += caught.in_b.len();
        }
        left_by_kills += pa.outgoing;
        earlier.extend(
            da.outgoing_snapshot()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id),
        );
        restarts.push((pair.a.log_mark(), pa.outgoing));
        pair.a.spawn();
    }

    settle_and_check(&pair, "sender SIGKILLed 2x mid-stream", started).await;
    // The restart after the last kill released the rows that kill left and
    // relayed them (the rows B already had among them; B holds each order
    // once, checked above). A row relayed by one run and killed unsent is
    // left and relayed again.
    let (last_mark, last_left) = *restarts.last().unwrap();
    let relayed = relayed_rows(&pair.a, restarts[0].0);
    let relayed_last = relayed_rows(&pair.a, last_mark);
    println!(
        "[sender kill] rows left by the kills {left_by_kills} (B already had {b_had} of them), \
         relayed after the restarts {relayed}; {:.1?} in all",
        started.elapsed()
    );
    assert!(
        relayed_last >= last_left,
        "the last restart relays the {last_left} rows the last kill left: relayed {relayed_last}"
    );
}

/// B hangs (SIGSTOP: its socket takes bytes, nothing answers) while A waits
/// for an ack; A is stopped with SIGTERM and must exit promptly (long before
/// the ack timeout), leaving the unacknowledged rows in outgoing. B then
/// resumes and commits what it had read, if anything (its ack goes nowhere):
/// A's next run sends the rows again and B's inbox drops any copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_stopped_while_receiver_hangs_exits_and_resends_once() {
    /// Well past how long a stop may take here.
    const ACK_TIMEOUT_MS: u64 = 60_000;
    const PROMPT: Duration = Duration::from_secs(10);

    // An ack timeout no stop could hide behind.
    let pair = Pair::with_a(|c| c.sending("ack_timeout_ms", ACK_TIMEOUT_MS));
    let started = Instant::now();
    let (da, db) = (pair.a.db(), pair.b.db());
    pair.spawn_b().await;
    pair.a.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    pair.a.spawn();
    let threshold = N as i64 * 3 / 10;
    pair.b
        .wait_for_every(
            &format!("OrderPlaced rows in B's inbox >= {threshold} before B hangs"),
            PHASE_TIMEOUT,
            Duration::from_millis(5),
            || db.incoming_count(None, Some("OrderPlaced")),
            |n| *n >= threshold,
        )
        .await;
    pair.b.sigstop();
    // Nothing can be acknowledged now: A's next batch waits for its ack.
    let (handled, outgoing) = pair
        .a
        .wait_for(
            "A to have rows in outgoing while B hangs",
            PHASE_TIMEOUT,
            || sender_counts(&da),
            |&(_, o)| o > 0,
        )
        .await;
    let t = Instant::now();
    let st = pair.a.stop();
    let took = t.elapsed();
    let pa = da.progress().await.unwrap();
    println!(
        "[hanging receiver] at {:.1?}: A stopped in {took:.1?} ({st}) with {} rows in outgoing \
         (handled {handled}, outgoing {outgoing} before the stop); A {pa:?}",
        started.elapsed(),
        pa.outgoing
    );
    assert!(st.success(), "A's exit status after SIGTERM: {st}");
    assert!(
        took < PROMPT,
        "A took {took:?} to stop while its peer hung (ack timeout {ACK_TIMEOUT_MS} ms)"
    );
    assert!(
        pa.outgoing > 0,
        "the unacknowledged rows stay in outgoing: {pa:?}"
    );

    pair.b.sigcont();
    let rows: BTreeSet<String> = da
        .outgoing_snapshot()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let in_b = in_inbox(&db, &rows).await;
    let mark = pair.a.log_mark();
    pair.a.spawn();
    settle_and_check(&pair, "sender stopped while the receiver hangs", started).await;
    let relayed = relayed_rows(&pair.a, mark);
    println!(
        "[hanging receiver] A left {} rows ({} of them in B's inbox when A restarted); \
         relayed after its restart {relayed}; {:.1?} in all",
        rows.len(),
        in_b.len(),
        started.elapsed()
    );
    assert_eq!(
        relayed,
        rows.len() as i64,
        "the restarted A relays the rows the stopped run left"
    );
}

/// B goes away for ten seconds while A streams: A's breaker opens within the
/// outage and holds everything (A keeps handling), closes when B is back, and
/// every order arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_ten_seconds_breaker_opens_holds_and_delivers() {
    /// The outage: the one fixed duration of the suite, it is the spec.
    const OUTAGE: Duration = Duration::from_secs(10);

    let pair = Pair::new();
    let started = Instant::now();
    let (da, db) = (pair.a.db(), pair.b.db());
    pair.spawn_b().await;
    pair.a
        .send_file("PlaceOrder", &bodies(0..N / 2))
        .assert_sent(N / 2);
    pair.a.spawn();
    let threshold = N as i64 / 10;
    pair.b
        .wait_for_every(
            &format!("B's handled OrderPlaced >= {threshold} before the outage"),
            PHASE_TIMEOUT,
            Duration::from_millis(5),
            || db.incoming_count(Some("handled"), Some("OrderPlaced")),
            |h| *h >= threshold,
        )
        .await;

    // ---- the outage ----------------------------------------------------------
    let mark = pair.a.log_mark();
    let st = pair.b.stop();
    let down = Instant::now();
    assert!(st.success(), "B's exit status after SIGTERM: {st}");
    let pb_down = db.progress().await.unwrap();
    let pa_down = da.progress().await.unwrap();
    println!(
        "[outage] B stopped at {:.1?}: B handled {} of {N}; A outgoing {}",
        started.elapsed(),
        pb_down.get("OrderPlaced", "handled"),
        pa_down.outgoing
    );
    assert!(
        pb_down.of_type("OrderPlaced") < N as i64,
        "B had received everything before the outage: {pb_down:?}"
    );
    // The stream goes on: the second half arrives at A during the outage.
    pair.a
        .send_file("PlaceOrder", &bodies(N / 2..N))
        .assert_sent(N - N / 2);
    let open = pair
        .a
        .wait_for_log(
            "A's breaker to open during the outage",
            mark,
            &[CIRCUIT_OPEN, &pair.uri],
            OUTAGE.saturating_sub(down.elapsed()),
        )
        .await;
    let opened_after = down.elapsed();
    println!("[outage] breaker opened {opened_after:.1?} into the outage: {open}");
    assert!(
        open.contains("WARN"),
        "the breaker opening is a warning: {open}"
    );
    assert!(
        opened_after < OUTAGE,
        "the breaker opened only after {opened_after:?}"
    );
    // Hold the outage for its full length; A must stay up and keep working.
    let rest = OUTAGE.saturating_sub(down.elapsed());
    tokio::time::sleep(rest).await;
    pair.a.assert_alive("at the end of B's outage");
    let pa_end = da.progress().await.unwrap();
    let pb_end = db.progress().await.unwrap();
    println!(
        "[outage] end after {:.1?}: A handled {}, outgoing {} (was {}); B unchanged: {}",
        down.elapsed(),
        pa_end.get("PlaceOrder", "handled"),
        pa_end.outgoing,
        pa_down.outgoing,
        pb_end == pb_down
    );
    assert_eq!(pb_end, pb_down, "B's store changed while B was down");
    assert!(
        pa_end.outgoing > pa_down.outgoing
            && pa_end.get("PlaceOrder", "handled") > pa_down.get("PlaceOrder", "handled"),
        "A kept handling during the outage and held the new OrderPlaced in outgoing: \
         before {pa_down:?}, after {pa_end:?}"
    );
    assert_eq!(
        count_lines(&pair.a, mark, &[CIRCUIT_CLOSED]),
        0,
        "the breaker closed while B was down"
    );
    assert_eq!(
        count_lines(&pair.a, mark, &[CIRCUIT_OPEN]),
        1,
        "the breaker opens once per outage and stays open"
    );

    // ---- B is back -------------------------------------------------------------
    let back = pair.a.log_mark();
    let restarted = Instant::now();
    pair.spawn_b().await;
    let closed = pair
        .a
        .wait_for_log(
            "A's breaker to close once B is back",
            back,
            &[CIRCUIT_CLOSED, &pair.uri],
            START_TIMEOUT,
        )
        .await;
    println!(
        "[outage] breaker closed {:.1?} after B's restart: {closed}",
        restarted.elapsed()
    );
    assert!(
        closed.contains("INFO"),
        "the breaker closing is info: {closed}"
    );
    settle_and_check(&pair, "receiver down 10 s", started).await;
    assert_eq!(
        (
            count_lines(&pair.a, back, &[CIRCUIT_OPEN]),
            count_lines(&pair.a, back, &[CIRCUIT_CLOSED])
        ),
        (0, 1),
        "after B came back: no new opening, one closing"
    );
    println!("[outage] {:.1?} in all", started.elapsed());
}

/// With `[telemetry] otlp_endpoint` on both hosts, one trace follows an
/// order: A's `handle` span of the PlaceOrder, its `send` span of the
/// OrderPlaced to `durable://` (the hop; its context travels in the
/// envelope's `traceparent` header), B's `receive` span on the listener and
/// B's `handle` span in audit, each with the OpenTelemetry messaging
/// attributes, all under one trace id, read back from a real OTLP/HTTP
/// receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_order_from_a_over_durable_into_b() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let traced = |c: HostConfig| {
        c.set("telemetry", "otlp_endpoint", otlp.endpoint()).set(
            "telemetry",
            "export_interval_ms",
            200u64,
        )
    };
    let uri = format!("durable://127.0.0.1:{}", free_port());
    let pair = Pair {
        a: TestHost::new(&["orders"], traced(common("a").route("OrderPlaced", &uri))),
        b: TestHost::new(&["audit"], traced(common("b").listen(&uri))),
        uri: uri.clone(),
    };
    pair.spawn_b().await;
    pair.a.spawn();
    let id = "0192f1c4-0000-7000-8000-00000000abcd";
    pair.a
        .send_body("PlaceOrder", &bodies(0..1)[0], Some(id))
        .assert_sent(1);
    let b_handled = |s: &SpanSeen| {
        s.service == "b"
            && s.name == "handle"
            && s.attr("messaging.destination.name") == Some("local://audit")
    };
    let a_handled = |s: &SpanSeen| {
        s.service == "a" && s.name == "handle" && s.attr("messaging.message.id") == Some(id)
    };
    let a_sent = |s: &SpanSeen| {
        s.service == "a"
            && s.name == "send"
            && s.attr("messaging.destination.name") == Some(uri.as_str())
    };
    let b_received = |s: &SpanSeen| s.service == "b" && s.name == "receive";
    // Each host exports on its own clock (every 200 ms): wait for all four.
    let spans = wait_until(
        "A's and B's spans exported",
        START_TIMEOUT,
        || async { otlp.spans() },
        |spans: &Vec<SpanSeen>| {
            [
                &a_handled as &dyn Fn(&SpanSeen) -> bool,
                &a_sent,
                &b_received,
                &b_handled,
            ]
            .iter()
            .all(|f| spans.iter().any(f))
        },
    )
    .await;
    let find = |what: &str, f: &dyn Fn(&SpanSeen) -> bool| {
        spans
            .iter()
            .find(|s| f(s))
            .unwrap_or_else(|| panic!("no span {what} among {spans:#?}"))
            .clone()
    };
    let a_handle = find("of A handling the order", &a_handled);
    let hop = find("of A sending OrderPlaced", &a_sent);
    let b_receive = find("of B receiving it", &b_received);
    let b_handle = find("of B handling it", &b_handled);
    for (what, s) in [
        ("A's send", &hop),
        ("B's receive", &b_receive),
        ("B's handle", &b_handle),
    ] {
        assert_eq!(
            s.trace_id, a_handle.trace_id,
            "{what} is in A's trace: {spans:#?}"
        );
    }
    assert_eq!(
        hop.parent_span_id, a_handle.span_id,
        "the send is the handler's"
    );
    assert_eq!(
        b_handle.parent_span_id, hop.span_id,
        "B's handler follows the send"
    );
    assert_eq!(b_receive.parent_span_id, hop.span_id);
    assert_eq!(
        hop.attr("messaging.message.id"),
        b_handle.attr("messaging.message.id")
    );
    for (s, op) in [
        (&a_handle, "process"),
        (&hop, "publish"),
        (&b_receive, "receive"),
        (&b_handle, "process"),
    ] {
        assert_eq!(s.attr("messaging.system"), Some("jasper"), "{s:?}");
        assert_eq!(s.attr("messaging.operation"), Some(op), "{s:?}");
    }
    for h in [&pair.a, &pair.b] {
        let st = h.stop();
        assert!(st.success(), "{st}");
    }
}
