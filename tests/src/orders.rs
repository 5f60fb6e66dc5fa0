//! What the suites with two hosts share (orders on A, audit on B, whatever
//! carries OrderPlaced between them: `tcp.rs`, `rabbitmq.rs`,
//! `rabbitmq_outage.rs`): the order bodies, the log-line needles, waiting on
//! both stores, when the pair has settled, and the audit checker.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use crate::{Db, Progress, REMIND_LATER_MS, TestHost, place_order};

/// Orders per test.
pub const N: usize = 10_000;
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
pub const FINAL_TIMEOUT: Duration = Duration::from_secs(600);
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const CIRCUIT_OPEN: &str = "circuit open: sending to this peer paused until a ping succeeds";
pub const CIRCUIT_CLOSED: &str = "circuit closed: the peer answered a ping; sending resumes";
pub const SEND_FAILED: &str = "sending a batch failed; it will be sent again";
pub const RELAYED: &str = "sending outgoing messages left unsent";

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
