//! The checker of one store that runs the example plugins (orders and
//! audit on every host: `crash.rs`, `db_outage.rs`; or orders alone:
//! `cluster.rs`): when the store has settled ([`settled`]), every order's
//! effect exists exactly once ([`check_orders_once`],
//! [`check_orders_only_once`]), however many hosts handled them and however
//! often they were killed, frozen or cut off.

use crate::orders::amount;
use crate::{Db, Progress};

/// No work is left: nothing in status incoming (rows of a killed node stay
/// `incoming` until released, so they count), no retry waiting (scheduled
/// rows other than the far-off reminders), nothing in outgoing. Dead-lettered
/// rows leave the inbox, so a failure ends the wait too and the checker says
/// what went wrong instead of a timeout.
pub fn settled(p: &Progress) -> bool {
    let retries_pending = p.with_status("scheduled") - p.get("OrderReminder", "scheduled");
    p.with_status("incoming") == 0 && retries_pending == 0 && p.outgoing == 0
}

/// Like [`settled`], and every one of the `n` orders arrived (`send` of the
/// last ones may still be running when the wait starts).
pub fn settled_with(n: usize) -> impl FnMut(&Progress) -> bool {
    move |p| p.of_type("PlaceOrder") >= n as i64 && settled(p)
}

/// Checks the store after orders `o-0` .. `o-{n-1}` were sent and the store
/// settled with `p`: each order's state (`order/o-i`, version 1, its body)
/// and audit count (`seen/o-i` = 1, `count` = n) exactly once, one
/// OrderPlaced and one scheduled OrderReminder per order, every PlaceOrder
/// and OrderPlaced handled, no dead letters. Prints the numbers (headed
/// `title`) and the first findings, then asserts.
pub async fn check_orders_once(title: &str, db: &Db, n: usize, p: &Progress) {
    check(title, db, n, p, true).await;
}

/// [`check_orders_once`] for hosts that run orders without audit: its
/// OrderPlaced goes nowhere, so what shows a PlaceOrder committed twice is
/// its state's version and a second OrderReminder (a new id each run).
pub async fn check_orders_only_once(title: &str, db: &Db, n: usize, p: &Progress) {
    check(title, db, n, p, false).await;
}

async fn check(title: &str, db: &Db, n: usize, p: &Progress, with_audit: bool) {
    let orders = db.state("orders").await.unwrap();
    let audit = db.state("audit").await.unwrap();
    let audit_key = |i: usize| with_audit.then(|| format!("seen/o-{i}"));
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut corrupt = Vec::new();
    for i in 0..n {
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
        let Some(key) = audit_key(i) else { continue };
        match audit.get(&key).map(|r| r.as_i64()) {
            None | Some(Ok(0)) => lost.push(format!("audit {key}")),
            Some(Ok(1)) => {}
            Some(Ok(k)) if k > 1 => duplicated.push(format!("audit {key} = {k}")),
            other => corrupt.push(format!("audit {key} = {other:?}")),
        }
    }
    let audit_count = audit.get("count").map(|r| r.as_i64());
    let (want_count, want_placed) = if with_audit {
        (Some(n as i64), n as i64)
    } else {
        (None, 0)
    };
    let placed = p.of_type("OrderPlaced");
    let reminders = p.get("OrderReminder", "scheduled");
    let reminder_rows = p.of_type("OrderReminder");
    let dead = db.dead_letter_rows().await.unwrap();

    println!("=== {title}: {n} orders ===");
    println!("lost effects:       {}", lost.len());
    println!("duplicated effects: {}", duplicated.len());
    println!("corrupt values:     {}", corrupt.len());
    println!("audit count:        {audit_count:?} (want {want_count:?})");
    println!("OrderPlaced rows:   {placed} (want {want_placed})");
    println!("OrderReminder rows: {reminder_rows}, scheduled {reminders} (want {n})");
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
    assert_eq!(
        audit_count.map(|r| r.ok()),
        want_count.map(Some),
        "audit count, want {want_count:?}"
    );
    assert_eq!(
        placed, want_placed,
        "OrderPlaced rows (more = a PlaceOrder committed twice)"
    );
    assert_eq!(
        reminder_rows, n as i64,
        "OrderReminder rows (more = a PlaceOrder committed twice)"
    );
    assert_eq!(
        reminders, n as i64,
        "OrderReminder rows in status scheduled"
    );
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert_eq!(
        p.with_status("incoming"),
        0,
        "rows left in status incoming: {p:?}"
    );
    assert_eq!(p.of_type("PlaceOrder"), n as i64, "PlaceOrder rows: {p:?}");
    assert_eq!(
        p.get("PlaceOrder", "handled"),
        n as i64,
        "PlaceOrder rows handled: {p:?}"
    );
    assert_eq!(
        p.get("OrderPlaced", "handled"),
        want_placed,
        "OrderPlaced rows handled: {p:?}"
    );
}
