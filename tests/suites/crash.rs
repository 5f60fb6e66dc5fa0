//! Crash safety: 10,000 orders, the host SIGKILLed three times mid-stream,
//! then every effect must exist exactly once. One test per backend:
//! `sigkill_three_times_loses_and_duplicates_nothing::{sqlite,postgres,mysql}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use jasper_e2e::kill::kill9_when;
use jasper_e2e::{Backend, HostConfig, Progress, REMIND_LATER_MS, TestHost, place_order};

const N: usize = 10_000;
/// Every order is handled twice over: PlaceOrder (orders) and OrderPlaced (audit).
const TOTAL_HANDLED: i64 = 2 * N as i64;
/// Kill points, as a share of TOTAL_HANDLED.
const KILL_AT_PERCENT: [i64; 3] = [15, 45, 75];
/// How long after crossing each kill point the SIGKILL goes out. The handled
/// count moves in steps (one per committed batch), so crossing a point means
/// "a commit just finished"; these offsets land the kills at other phases of
/// the next batch (handlers running, effects being committed). The host is
/// checked to be still mid-stream after each kill either way.
const KILL_OFFSET_MS: [u64; 3] = [0, 23, 57];
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const FINAL_TIMEOUT: Duration = Duration::from_secs(600);

fn amount(i: usize) -> u64 {
    100 + (i as u64 % 9_900)
}

fn config(backend: Backend) -> HostConfig {
    HostConfig::on(backend)
        .keep_handled_ms(7 * 24 * 3600 * 1000)
        .stale_after_ms(2000)
        .heartbeat_ms(200)
}

/// No work is left: nothing in status incoming (rows of a killed node stay
/// `incoming` until released, so they count), no retry waiting (scheduled rows
/// other than the far-off reminders), nothing in outgoing. Dead-lettered rows
/// leave the inbox, so a failure ends the wait too and the checker says what
/// went wrong instead of a timeout.
fn settled(p: &Progress) -> bool {
    let retries_pending = p.with_status("scheduled") - p.get("OrderReminder", "scheduled");
    p.with_status("incoming") == 0 && retries_pending == 0 && p.outgoing == 0
}

jasper_e2e::per_backend!(sigkill_three_times_loses_and_duplicates_nothing => crash);

async fn crash(backend: Backend) {
    let host = TestHost::new(&["orders", "audit"], config(backend));
    let db = host.db();
    let bodies: Vec<_> = (0..N)
        .map(|i| place_order(&format!("o-{i}"), amount(i), REMIND_LATER_MS))
        .collect();

    // Half while the host is down, half while it is up.
    host.send_file("PlaceOrder", &bodies[..N / 2])
        .assert_sent(N / 2);
    host.spawn();
    host.send_file("PlaceOrder", &bodies[N / 2..])
        .assert_sent(N - N / 2);

    let started = Instant::now();
    for (k, pct) in KILL_AT_PERCENT.iter().enumerate() {
        let threshold = TOTAL_HANDLED * pct / 100;
        let handled = kill9_when(
            &host,
            &format!(
                "handled rows >= {threshold} ({pct}%) before kill #{}",
                k + 1
            ),
            PHASE_TIMEOUT,
            Duration::from_millis(5),
            || db.incoming_count(Some("handled"), None),
            threshold,
            Duration::from_millis(KILL_OFFSET_MS[k]),
        )
        .await;
        // Mid-stream means work was left when the host died.
        let p = db.progress().await.unwrap();
        let left = p.with_status("incoming");
        println!(
            "[{backend}] kill #{} at {:.1?}: handled {} when polled (threshold {threshold}), killed {} ms later; after kill: {} handled, {} incoming, {p:?}",
            k + 1,
            started.elapsed(),
            handled,
            KILL_OFFSET_MS[k],
            p.with_status("handled"),
            left
        );
        assert!(
            left > 0 && !settled(&p),
            "kill #{} did not happen mid-stream: the host had already finished ({p:?}); \
             the test cannot show crash safety this way",
            k + 1
        );
        host.spawn();
    }

    let p = host
        .wait_for(
            "all 10,000 orders and their OrderPlaced handled after the last restart",
            FINAL_TIMEOUT,
            || db.progress(),
            settled,
        )
        .await;
    println!("[{backend}] settled after {:.1?}: {p:?}", started.elapsed());
    host.assert_alive("after the last restart settled");

    // ---- checker ------------------------------------------------------------
    let orders = db.state("orders").await.unwrap();
    let audit = db.state("audit").await.unwrap();
    let mut lost = Vec::new(); // (what, key)
    let mut duplicated = Vec::new(); // (what, key, detail)
    let mut corrupt = Vec::new();
    for i in 0..N {
        let key = format!("order/o-{i}");
        match orders.get(&key) {
            None => lost.push(format!("orders {key}")),
            Some(row) => {
                if row.version > 1 {
                    duplicated.push(format!("orders {key} version {}", row.version));
                }
                match row.json() {
                    Ok(v)
                        if v["order_id"] == format!("o-{i}") && v["amount_cents"] == amount(i) => {}
                    other => corrupt.push(format!("orders {key} = {other:?}")),
                }
            }
        }
        let key = format!("seen/o-{i}");
        match audit.get(&key).map(|r| r.as_i64()) {
            None | Some(Ok(0)) => lost.push(format!("audit {key}")),
            Some(Ok(1)) => {}
            Some(Ok(n)) if n > 1 => duplicated.push(format!("audit {key} = {n}")),
            other => corrupt.push(format!("audit {key} = {other:?}")),
        }
    }
    let audit_count = audit.get("count").map(|r| r.as_i64());
    let placed = p.of_type("OrderPlaced");
    let reminders = p.get("OrderReminder", "scheduled");
    let reminder_rows = p.of_type("OrderReminder");
    let dead = db.dead_letter_rows().await.unwrap();

    println!(
        "=== crash checker ({backend}, {}): {N} orders, {} restarts ===",
        host.store(),
        KILL_AT_PERCENT.len()
    );
    println!("lost effects:       {}", lost.len());
    println!("duplicated effects: {}", duplicated.len());
    println!("corrupt values:     {}", corrupt.len());
    println!("audit count:        {audit_count:?} (want Ok({N}))");
    println!("OrderPlaced rows:   {placed} (want {N})");
    println!("OrderReminder rows: {reminder_rows}, scheduled {reminders} (want {N})");
    println!("dead letters:       {}", dead.len());
    for l in lost.iter().take(10) {
        println!("  lost: {l}");
    }
    for d in duplicated.iter().take(10) {
        println!("  duplicated: {d}");
    }
    for c in corrupt.iter().take(10) {
        println!("  corrupt: {c}");
    }
    for d in dead.iter().take(10) {
        println!("  dead letter: {d:?}");
    }

    assert_eq!(lost.len(), 0, "lost effects (first: {:?})", lost.first());
    assert_eq!(
        duplicated.len(),
        0,
        "duplicated effects (first: {:?})",
        duplicated.first()
    );
    assert_eq!(
        corrupt.len(),
        0,
        "corrupt state values (first: {:?})",
        corrupt.first()
    );
    assert!(
        matches!(audit_count, Some(Ok(n)) if n == N as i64),
        "audit count {audit_count:?}, want {N}"
    );
    assert_eq!(
        placed, N as i64,
        "OrderPlaced rows (more = a PlaceOrder committed twice)"
    );
    assert_eq!(
        reminder_rows, N as i64,
        "OrderReminder rows (more = a PlaceOrder committed twice)"
    );
    assert_eq!(
        reminders, N as i64,
        "OrderReminder rows in status scheduled"
    );
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert_eq!(
        p.with_status("incoming"),
        0,
        "rows left in status incoming: {p:?}"
    );
    assert_eq!(p.of_type("PlaceOrder"), N as i64, "PlaceOrder rows: {p:?}");
    assert_eq!(
        p.get("PlaceOrder", "handled"),
        N as i64,
        "PlaceOrder rows handled: {p:?}"
    );
    assert_eq!(
        p.get("OrderPlaced", "handled"),
        N as i64,
        "OrderPlaced rows handled: {p:?}"
    );

    let c = host.counts();
    assert_eq!(c.incoming, 0, "storage counts: {c:?}");
    assert_eq!(c.dead_letters, 0, "storage counts: {c:?}");
    assert_eq!(c.outgoing, 0, "storage counts: {c:?}");
    assert_eq!(c.scheduled, N as u64, "storage counts: {c:?}");
    assert_eq!(c.handled, TOTAL_HANDLED as u64, "storage counts: {c:?}");

    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}
