//! SIGKILLs at chosen moments, shared by the suites that kill hosts
//! mid-stream: [`kill9_when`] (once a count crosses a threshold; crash, tcp,
//! rabbitmq) and [`kill_sender_at`] (the sending host of a pair, frozen
//! first so the kill lands while it holds rows in outgoing; tcp, rabbitmq).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::orders::{N, PHASE_TIMEOUT};
use crate::{Col, Db, TestHost};

/// Waits (polling every `poll`, up to `timeout`) until `count` is at least
/// `threshold`, then `offset` more, and SIGKILLs `host`; gives back the
/// count seen. The offset lands kills in other phases of the host's cycle.
pub async fn kill9_when<F, Fut>(
    host: &TestHost,
    what: &str,
    timeout: Duration,
    poll: Duration,
    count: F,
    threshold: i64,
    offset: Duration,
) -> i64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<i64>>,
{
    let seen = host
        .wait_for_every(what, timeout, poll, count, |n| *n >= threshold)
        .await;
    if !offset.is_zero() {
        tokio::time::sleep(offset).await;
    }
    host.kill9();
    seen
}

/// What a kill of the sender must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catch {
    /// Rows the sender committed to outgoing and has not deleted (not
    /// acknowledged by the receiver, or not confirmed by the broker).
    Unsettled,
    /// Such rows that the receiver already committed: the moment between
    /// its inbox commit and the sender's deleting them, so the sender's next
    /// run sends them again and the receiver's inbox must drop the copies.
    CommittedByB,
}

/// How [`kill_sender_at`] goes about it.
#[derive(Debug)]
pub struct SenderKill<'a> {
    /// `[sender kill]`, `[publisher kill]`: the prefix of its printouts.
    pub label: &'a str,
    /// Kill only once the sender handled this many PlaceOrder.
    pub min_handled: i64,
    pub catch: Catch,
    /// Rows left by earlier kills: only rows not among them count.
    pub earlier: &'a BTreeSet<String>,
    /// How long a frozen sender waits for the receiver to commit what it
    /// sent (for [`Catch::CommittedByB`]).
    pub window: Duration,
    /// After a freeze that missed a `CommittedByB` with rows held, try
    /// again only past what the sender had handled then.
    pub move_on_after_miss: bool,
}

/// A kill of the sender that caught what it was after.
#[derive(Debug)]
pub struct Caught {
    /// The sender's outgoing rows after the kill (not in `earlier`).
    pub rows: BTreeSet<String>,
    /// Those of them that the receiver had committed.
    pub in_b: BTreeSet<String>,
    /// Freezes it took.
    pub tries: u32,
    /// SIGKILLs it took (a kill whose result did not show the catch is
    /// followed by a restart and another try).
    pub kills: u32,
}

/// The sender's (handled rows, outgoing rows), by one light query (it
/// handles only PlaceOrder; its reminders stay scheduled).
pub async fn sender_counts(db: &Db) -> anyhow::Result<(i64, i64)> {
    let rows = db
        .query(
            &format!(
                "SELECT (SELECT count(*) FROM {} WHERE status = 'handled'), (SELECT count(*) FROM {})",
                db.table("incoming"),
                db.table("outgoing")
            ),
            &[],
            &[Col::Int, Col::Int],
        )
        .await?;
    Ok((rows[0][0].int()?, rows[0][1].int()?))
}

/// The ids of `rows` that are in `db`'s inbox.
pub async fn in_inbox(db: &Db, rows: &BTreeSet<String>) -> BTreeSet<String> {
    if rows.is_empty() {
        return BTreeSet::new();
    }
    db.incoming_snapshot()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .filter(|id| rows.contains(id))
        .collect()
}

/// SIGKILLs the sender `a` once it handled at least `plan.min_handled`
/// PlaceOrder, at a moment `plan.catch` describes, and leaves it dead. To
/// find the moment, `a` is frozen (SIGSTOP, every thread stopped) as soon
/// as it has rows in outgoing, so it cannot settle them while the test
/// looks (the receiver `b` goes on); for `CommittedByB` the test then waits
/// up to `plan.window` for `b` to commit some of them. If the frozen sender
/// does not show the catch, it is resumed and tried again (the rows it held
/// were not sent yet, say). If it does, it is SIGKILLed, and what counts is
/// the store after the kill: a commit it had written but not yet published
/// to readers when it froze becomes visible then (SQLite's WAL), so a kill
/// whose result shows no catch after all is followed by a restart and
/// another try.
pub async fn kill_sender_at(a: &TestHost, b: &Db, plan: SenderKill<'_>) -> Caught {
    const TRIES: u32 = 200;
    let SenderKill {
        label,
        min_handled,
        catch,
        earlier,
        window,
        move_on_after_miss,
    } = plan;
    let da = a.db();
    // Only rows this run committed count: not those an earlier kill left.
    let outgoing_ids = || async {
        da.outgoing_snapshot()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .filter(|id| !earlier.contains(id))
            .collect::<BTreeSet<String>>()
    };
    let shows = |rows: &BTreeSet<String>, in_b: &BTreeSet<String>| match catch {
        Catch::Unsettled => !rows.is_empty(),
        Catch::CommittedByB => !in_b.is_empty(),
    };
    let mut at_least = min_handled;
    let mut kills = 0;
    for attempt in 1..=TRIES {
        let (handled, outgoing) = a
            .wait_for_every(
                &format!(
                    "A to handle {at_least} PlaceOrder or more with rows in outgoing (or to finish)"
                ),
                PHASE_TIMEOUT,
                Duration::from_millis(2),
                || sender_counts(&da),
                |&(h, o)| (h >= at_least && o > 0) || (h >= N as i64 && o == 0),
            )
            .await;
        assert!(
            outgoing > 0,
            "A finished streaming after {attempt} tries, none of which caught {catch:?} rows (handled {handled})"
        );
        a.sigstop();
        let rows = outgoing_ids().await;
        let deadline = Instant::now() + window;
        let mut seen = false;
        while !rows.is_empty() {
            if shows(&rows, &in_inbox(b, &rows).await) {
                seen = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !seen {
            a.sigcont();
            if move_on_after_miss && catch == Catch::CommittedByB && !rows.is_empty() {
                at_least = handled + 1;
            }
            continue;
        }
        a.kill9();
        kills += 1;
        let rows = outgoing_ids().await;
        let in_b = in_inbox(b, &rows).await;
        if shows(&rows, &in_b) {
            return Caught {
                rows,
                in_b,
                tries: attempt,
                kills,
            };
        }
        println!(
            "{label} a frozen A showed {catch:?} rows, the store after its SIGKILL does not \
             ({} outgoing, {} of them in B): a commit in flight; restarting A and trying again",
            rows.len(),
            in_b.len()
        );
        a.spawn();
    }
    panic!("{TRIES} tries, none caught {catch:?} rows");
}
