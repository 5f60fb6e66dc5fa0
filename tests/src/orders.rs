//! What the suites with two hosts share (orders on A, audit on B, whatever
//! carries OrderPlaced between them: `tcp.rs`, `rabbitmq.rs`,
//! `rabbitmq_outage.rs`): the order bodies, the log-line needles, waiting on
//! both stores, when the pair has settled, and the checkers.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::{Db, Progress, REMIND_LATER_MS, TestHost, place_order};

/// Orders per test.
pub const N: usize = 10_000;
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
pub const FINAL_TIMEOUT: Duration = Duration::from_secs(600);
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `event` fields of the host's log lines the suites count (structured
/// fields, not the wording of the message).
pub const CIRCUIT_OPEN: &str = "event=circuit-open ";
pub const CIRCUIT_CLOSED: &str = "event=circuit-closed ";
pub const SEND_FAILED: &str = "event=send-failed ";
pub const RELAYED: &str = "event=relayed ";

pub fn amount(i: usize) -> u64 {
    100 + (i as u64 % 9_900)
}

/// PlaceOrder bodies `o-i` for `range`, reminders far off.
pub fn bodies(range: Range<usize>) -> Vec<serde_json::Value> {
    range
        .map(|i| place_order(&format!("o-{i}"), amount(i), REMIND_LATER_MS))
        .collect()
}

/// Lines of `host`'s log after `mark` with every needle.
pub fn count_lines(host: &TestHost, mark: usize, needles: &[&str]) -> usize {
    host.log_lines(mark, needles).len()
}

/// The sum of `rows=K` over the relay's log lines after `mark`.
pub fn relayed_rows(host: &TestHost, mark: usize) -> i64 {
    host.log_lines(mark, &[RELAYED])
        .iter()
        .map(|l| {
            let k = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rows="))
                .unwrap_or_else(|| panic!("relay line without rows=: {l}"));
            k.parse::<i64>()
                .unwrap_or_else(|e| panic!("rows={k} in {l}: {e}"))
        })
        .sum()
}

/// What the audit checker found on one host.
#[derive(Debug, Default)]
pub struct AuditCheck {
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub corrupt: Vec<String>,
    pub count: Option<i64>,
}

/// Every `seen/{id}` of `ids` must be exactly 1 in `db`'s audit state, and
/// `count` the number of ids.
pub async fn audit_check(db: &Db, ids: &[String]) -> AuditCheck {
    let audit = db.state("audit").await.expect("audit state");
    let mut c = AuditCheck::default();
    for id in ids {
        let key = format!("seen/{id}");
        match audit.get(&key).map(|r| r.as_i64()) {
            None | Some(Ok(0)) => c.lost.push(format!("audit {key}")),
            Some(Ok(1)) => {}
            Some(Ok(n)) if n > 1 => c.duplicated.push(format!("audit {key} = {n}")),
            other => c.corrupt.push(format!("audit {key} = {other:?}")),
        }
    }
    let known: BTreeSet<String> = ids.iter().map(|i| format!("seen/{i}")).collect();
    for key in audit.keys() {
        if key.starts_with("seen/") && !known.contains(key) {
            c.corrupt.push(format!("audit {key}: an order nobody sent"));
        }
    }
    c.count = audit.get("count").and_then(|r| r.as_i64().ok());
    c
}

impl AuditCheck {
    /// Prints the numbers and the first findings.
    pub fn print(&self, who: &str) {
        println!("{who} lost effects:       {}", self.lost.len());
        println!("{who} duplicated effects: {}", self.duplicated.len());
        println!("{who} corrupt values:     {}", self.corrupt.len());
        println!("{who} audit count:        {:?}", self.count);
        for l in self.lost.iter().take(10) {
            println!("  lost: {l}");
        }
        for d in self.duplicated.iter().take(10) {
            println!("  duplicated: {d}");
        }
        for c in self.corrupt.iter().take(10) {
            println!("  corrupt: {c}");
        }
    }

    /// 0 lost, 0 duplicated, 0 corrupt, count == n.
    #[track_caller]
    pub fn assert_exactly_once(&self, n: usize) {
        assert_eq!(
            self.lost.len(),
            0,
            "lost effects (first: {:?})",
            self.lost.first()
        );
        assert_eq!(
            self.duplicated.len(),
            0,
            "duplicated effects (first: {:?})",
            self.duplicated.first()
        );
        assert_eq!(
            self.corrupt.len(),
            0,
            "corrupt values (first: {:?})",
            self.corrupt.first()
        );
        assert_eq!(self.count, Some(n as i64), "audit count, want {n}");
    }
}

/// `audit/count` of `db` (0 before the first).
pub async fn audit_count(db: &Db) -> anyhow::Result<i64> {
    match db.state_get("audit", "count").await? {
        Some(r) => r.as_i64(),
        None => Ok(0),
    }
}

/// A handled every PlaceOrder and sent every OrderPlaced (outgoing empty);
/// B handled them all. Rows of a killed node stay `incoming` until released,
/// so they count as work left; a dead letter ends the wait too, and the
/// checker says what went wrong instead of a timeout.
pub fn settled((a, b): &(Progress, Progress)) -> bool {
    let a_retries = a.with_status("scheduled") - a.get("OrderReminder", "scheduled");
    let stuck = a.dead_letters > 0 || b.dead_letters > 0;
    stuck
        || (a.get("PlaceOrder", "handled") == N as i64
            && a.with_status("incoming") == 0
            && a_retries == 0
            && a.outgoing == 0
            && b.get("OrderPlaced", "handled") >= N as i64
            && b.with_status("incoming") == 0
            && b.with_status("scheduled") == 0)
}

/// Polls both hosts' stores until `done`; panics with B's log if B, running
/// when the wait began, exits meanwhile, or after `timeout`.
pub async fn wait_both(
    a: &TestHost,
    b: &TestHost,
    what: &str,
    timeout: Duration,
    done: impl FnMut(&(Progress, Progress)) -> bool,
) -> (Progress, Progress) {
    let (da, db) = (a.db(), b.db());
    let b_watched = b.is_running();
    a.wait_for(
        what,
        timeout,
        || {
            if b_watched && let Some(st) = b.exit_status() {
                panic!(
                    "host B exited ({st}) while waiting for {what}; log tail:\n{}",
                    b.log_tail(60)
                );
            }
            let (da, db) = (da.clone(), db.clone());
            async move { Ok((da.progress().await?, db.progress().await?)) }
        },
        done,
    )
    .await
}

/// Panics with the lines if `host`'s log has ERROR lines of jasper-host
/// itself (lapin logs a connection the broker closed as an ERROR of its own).
pub fn assert_no_error_lines(host: &TestHost, who: &str) {
    let errors = host.log_lines(0, &[" ERROR ", "jasper_host"]);
    for l in errors.iter().take(10) {
        println!("  {who} ERROR: {l}");
    }
    assert!(
        errors.is_empty(),
        "ERROR lines in {who}'s log (first: {:?})",
        errors.first()
    );
}

/// The checker of a pair that crossed N orders: every order's effect on A
/// once (`order/o-i` at version 1 with its body), its OrderPlaced on B once
/// (`seen/o-i` = 1, `count` = N), nothing left in A's outgoing, no dead
/// letters, no ERROR lines of jasper-host, and the storage counts of both.
/// `via` heads the printed report.
pub async fn check_crossed(a: &TestHost, b: &TestHost, via: &str, (pa, pb): &(Progress, Progress)) {
    let (da, db) = (a.db(), b.db());
    let orders = da.state("orders").await.unwrap();
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut corrupt = Vec::new();
    for i in 0..N {
        let key = format!("order/o-{i}");
        match orders.get(&key) {
            None => lost.push(format!("A orders {key}")),
            Some(row) => {
                if row.version > 1 {
                    duplicated.push(format!("A orders {key} version {}", row.version));
                }
                match row.json() {
                    Ok(v)
                        if v["order_id"] == format!("o-{i}") && v["amount_cents"] == amount(i) => {}
                    other => corrupt.push(format!("A orders {key} = {other:?}")),
                }
            }
        }
    }
    let ids: Vec<String> = (0..N).map(|i| format!("o-{i}")).collect();
    let audit = audit_check(&db, &ids).await;
    let a_outgoing = da.outgoing_snapshot().await.unwrap();
    let a_dead = da.dead_letter_rows().await.unwrap();
    let b_dead = db.dead_letter_rows().await.unwrap();
    let b_placed = pb.of_type("OrderPlaced");

    println!("=== {via} ===");
    println!("A lost effects:       {}", lost.len());
    println!("A duplicated effects: {}", duplicated.len());
    println!("A corrupt values:     {}", corrupt.len());
    audit.print("B");
    println!("B OrderPlaced rows:   {b_placed} (want {N})");
    println!("A outgoing rows left: {}", a_outgoing.len());
    println!(
        "dead letters:         A {}, B {}",
        a_dead.len(),
        b_dead.len()
    );
    for l in lost.iter().chain(&duplicated).chain(&corrupt).take(10) {
        println!("  A: {l}");
    }
    for d in a_dead.iter().chain(&b_dead).take(10) {
        println!("  dead letter: {d:?}");
    }
    for o in a_outgoing.iter().take(10) {
        println!("  outgoing left: {o:?}");
    }

    assert_eq!(lost.len(), 0, "A lost effects (first: {:?})", lost.first());
    assert_eq!(
        duplicated.len(),
        0,
        "A duplicated effects (first: {:?})",
        duplicated.first()
    );
    assert_eq!(
        corrupt.len(),
        0,
        "A corrupt values (first: {:?})",
        corrupt.first()
    );
    audit.assert_exactly_once(N);
    assert!(a_dead.is_empty(), "A's dead letters: {a_dead:?}");
    assert!(b_dead.is_empty(), "B's dead letters: {b_dead:?}");
    assert!(
        a_outgoing.is_empty(),
        "A's outgoing rows left: {}",
        a_outgoing.len()
    );
    assert_eq!(
        pa.of_type("OrderPlaced"),
        0,
        "A has no audit plugin: {pa:?}"
    );
    // A's inbox: each PlaceOrder once, handled; each reminder once, waiting.
    assert_eq!(pa.of_type("PlaceOrder"), N as i64, "A: {pa:?}");
    assert_eq!(pa.get("PlaceOrder", "handled"), N as i64, "A: {pa:?}");
    assert_eq!(
        pa.of_type("OrderReminder"),
        N as i64,
        "A's OrderReminder rows (more = a PlaceOrder committed twice): {pa:?}"
    );
    assert_eq!(pa.get("OrderReminder", "scheduled"), N as i64, "A: {pa:?}");
    // B's inbox: each OrderPlaced once (more = one order published under two
    // ids, which B's dedupe could not catch), every one handled.
    assert_eq!(b_placed, N as i64, "B's OrderPlaced rows: {pb:?}");
    assert_eq!(pb.get("OrderPlaced", "handled"), N as i64, "B: {pb:?}");
    assert_eq!(pb.outgoing, 0, "B: {pb:?}");

    assert_no_error_lines(a, "A");
    assert_no_error_lines(b, "B");

    let (ca, cb) = (a.counts(), b.counts());
    assert_eq!(
        (
            ca.incoming,
            ca.outgoing,
            ca.dead_letters,
            ca.handled,
            ca.scheduled
        ),
        (0, 0, 0, N as u64, N as u64),
        "A's storage counts: {ca:?}"
    );
    assert_eq!(
        (
            cb.incoming,
            cb.outgoing,
            cb.dead_letters,
            cb.handled,
            cb.scheduled
        ),
        (0, 0, 0, N as u64, 0),
        "B's storage counts: {cb:?}"
    );
}

/// Waits for both hosts to settle (the wait names `what`), checks every
/// effect on both sides with [`check_crossed`] (its report headed `via`),
/// then stops both hosts: SIGTERM, exit 0 within the harness's timeout.
pub async fn settle_check_and_stop(
    a: &TestHost,
    b: &TestHost,
    label: &str,
    via: &str,
    started: Instant,
) {
    let p = wait_both(
        a,
        b,
        "all 10,000 orders handled on A and their OrderPlaced handled on B",
        FINAL_TIMEOUT,
        settled,
    )
    .await;
    println!(
        "[{label}] settled after {:.1?}: A {:?}; B {:?}",
        started.elapsed(),
        p.0,
        p.1
    );
    a.assert_alive("after settling");
    b.assert_alive("after settling");
    check_crossed(a, b, via, &p).await;
    let t = Instant::now();
    let (sa, sb) = (a.stop(), b.stop());
    println!(
        "[{label}] both hosts stopped after SIGTERM in {:.1?}",
        t.elapsed()
    );
    assert!(sa.success(), "A's exit status after SIGTERM: {sa}");
    assert!(sb.success(), "B's exit status after SIGTERM: {sb}");
}
