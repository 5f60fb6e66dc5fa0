//! The group commit, written once for every backend: the order of its parts,
//! the state version checks that fail it with [`StoreError::StaleState`], and
//! how repeated ids and keys inside one batch resolve, and the fence that
//! makes a batch of claimed rows commit only while this node still holds
//! them. Each backend supplies the statements as [`CommitSteps`] on one open
//! transaction, and every step that writes returns the rows it affected, so
//! a condition on the writes is checked in this one place.
//!
//! The fence is the commit's first step: it locks the batch's inbox rows and
//! reads them. Every row still owned by the node with the attempt count its
//! claim left: the batch commits. Otherwise nothing is written, and either
//! the rows show that this very batch committed already (a handled mark
//! carrying this claim's attempt count, which only this claim's holder can
//! write: a commit whose outcome was unknown, tried again) and the commit is
//! a success, or the rows another node took fail it with
//! [`StoreError::Lost`].
//!
//! A batch whose every message was handled (the common case) needs no read:
//! its fence and its handled marks are one statement that marks each row only
//! where it is still held at its claim ([`CommitSteps::mark_held`]). All
//! marked: the batch goes on. Fewer: the transaction is rolled back and the
//! fence above runs to say why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::error::{StoreError, StoreResult};
use super::faces::GroupCommit;
use super::rows::{
    CommitBatch, DeadLetter, Fence, FencedRow, Held, InsertReport, NewIncoming, NewOutgoing,
    RetryMark, STATUS_HANDLED, STATUS_INCOMING, StateCheck, StateWrite,
};
use crate::backoff::Backoff;

/// A state key: plugin and key.
pub(crate) type StateKey<'a> = (&'a str, &'a str);

/// The versions of the state keys that exist.
pub(crate) type Versions = HashMap<(String, String), i64>;

/// A dead letter as one row, however often its id is in a batch: the columns
/// an upsert keeps (type, received at, source, replayable) from its first
/// copy, the ones it overwrites (error, time, attempts, body) from its last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadLetterRow<'a> {
    pub first: &'a DeadLetter,
    pub last: &'a DeadLetter,
}

/// A backend that opens transactions the commit runs in.
#[async_trait]
pub(crate) trait Transactional: Send + Sync {
    type Tx: CommitSteps;
    /// Begin a write transaction.
    async fn begin_steps(&self) -> StoreResult<Self::Tx>;
    /// Whether a transaction that failed with `error` was rolled back whole
    /// and may simply run again (MySQL's deadlock victims).
    fn may_run_again(&self, _error: &StoreError) -> bool {
        false
    }
}

/// How often a transaction runs at most when [`Transactional::may_run_again`] allows.
const RUNS: u32 = 6;
/// The wait before running a rolled-back transaction again: at random within
/// 4 ms doubling to 100 ms ([`Backoff`]), so two transactions that deadlocked
/// on the same rows (duplicate inserts of one id arriving from two peers) do
/// not meet again.
const RUN_AGAIN_BASE: Duration = Duration::from_millis(4);
const RUN_AGAIN_MAX: Duration = Duration::from_millis(100);

/// Run `once` (one whole transaction) again while the backend says the
/// failure rolled it back whole, at most [`RUNS`] times.
pub(crate) async fn run_again<B, T, F, Fut>(backend: &B, mut once: F) -> StoreResult<T>
where
    B: Transactional + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut runs = 1;
    let mut backoff = Backoff::new(RUN_AGAIN_BASE, RUN_AGAIN_MAX);
    loop {
        match once().await {
            Err(e) if runs < RUNS && backend.may_run_again(&e) => {
                let ceiling = backoff.next_delay();
                let wait = rand::Rng::random_range(&mut rand::rng(), ceiling / 4..=ceiling);
                tokio::time::sleep(wait).await;
                runs += 1;
            }
            result => return result,
        }
    }
}

#[async_trait]
impl<B> GroupCommit for B
where
    B: Transactional + Debug,
{
    async fn commit(&self, batch: &CommitBatch) -> StoreResult<()> {
        commit_batch(self, batch).await
    }
}

/// The statements of a group commit on one open transaction, in a backend's
/// dialect. Dropping the transaction without [`CommitSteps::finish`] rolls it
/// back.
#[async_trait]
pub(crate) trait CommitSteps: Send + Sized {
    /// Lock the inbox rows `ids` until the end of the transaction and read
    /// their owner, attempts and status (absent rows are left out).
    async fn lock_claimed(&mut self, ids: &[Uuid]) -> StoreResult<Vec<FencedRow>>;
    /// The versions of `keys` (sorted, distinct) that exist, locked until the
    /// end of the transaction where the backend locks rows.
    async fn lock_versions(&mut self, keys: &[StateKey<'_>]) -> StoreResult<Versions>;
    /// Write values whatever their version (new keys at version 1, others
    /// bumped). Returns the keys written.
    async fn upsert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64>;
    /// Insert keys read as absent, at version 1; a key present by now is not
    /// inserted. Returns rows inserted.
    async fn insert_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64>;
    /// Update keys whose version is still the one expected (bumping it).
    /// Returns rows updated.
    async fn update_states(&mut self, writes: &[&StateWrite]) -> StoreResult<u64>;
    /// Delete keys (`checked`: only where the version is still the one
    /// expected). Returns rows deleted.
    async fn delete_states(&mut self, writes: &[&StateWrite], checked: bool) -> StoreResult<u64>;
    /// Insert incoming rows; an id already present (or earlier in `rows`) is
    /// skipped and reported as a duplicate.
    async fn insert_incoming(&mut self, rows: &[NewIncoming]) -> StoreResult<InsertReport>;
    /// Mark inbox rows handled, kept until `keep_until`. Returns rows marked.
    async fn mark_handled(&mut self, keep_until: i64, ids: &[Uuid]) -> StoreResult<u64>;
    /// The fence and the handled marks in one statement: mark handled (kept
    /// until `keep_until`) each of `rows` that `node_id` still holds at its
    /// claim (owner, status incoming, attempts = claim), locking them, and
    /// return how many it marked.
    async fn mark_held(&mut self, node_id: i64, keep_until: i64, rows: &[Held])
    -> StoreResult<u64>;
    /// Insert outgoing rows; an existing id is kept as it is.
    async fn insert_outgoing(&mut self, rows: &[NewOutgoing]) -> StoreResult<u64>;
    /// Hand inbox rows back for another attempt (distinct ids). Returns rows updated.
    async fn retry(&mut self, marks: &[&RetryMark]) -> StoreResult<u64>;
    /// Delete inbox rows (distinct ids). Returns rows deleted.
    async fn delete_incoming(&mut self, ids: &[Uuid]) -> StoreResult<u64>;
    /// Upsert dead letters (distinct ids): a dead letter already there takes
    /// the new failure. Returns the rows written.
    async fn upsert_dead_letters(&mut self, rows: &[DeadLetterRow<'_>]) -> StoreResult<u64>;
    /// Commit the transaction.
    async fn finish(self) -> StoreResult<()>;
}

/// Make `batch` durable in one transaction of `backend`: state checks and
/// writes, new incoming rows, handled marks, outgoing rows, retries, dead
/// letters. An empty batch opens no transaction.
async fn commit_batch<B: Transactional>(backend: &B, batch: &CommitBatch) -> StoreResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let marks_only_fenced = batch.fence.as_ref().and_then(|f| fenced_marks(f, batch));
    run_again(backend, || async {
        let mut tx = backend.begin_steps().await?;
        let mut marked = false;
        if let (Some(fence), Some(keep_until)) = (&batch.fence, marks_only_fenced) {
            let n = tx.mark_held(fence.node_id, keep_until, &fence.rows).await?;
            if n == len_u64(&fence.rows) {
                marked = true;
            } else {
                // Not every row is held at its claim: roll the marks back
                // (dropping the transaction) and let the fence say why.
                drop(tx);
                tx = backend.begin_steps().await?;
            }
        }
        if let (Some(fence), false) = (&batch.fence, marked) {
            match check_fence(&mut tx, fence, batch).await? {
                FenceCheck::Held => {}
                // Dropping the transaction rolls it back: it wrote nothing.
                FenceCheck::Committed => return Ok(()),
                FenceCheck::Lost(ids) => return Err(StoreError::Lost { ids }),
            }
        }
        apply(&mut tx, batch, marked).await?;
        tx.finish().await
    })
    .await
}

/// When the fence's rows are exactly the batch's handled marks (distinct
/// ids, one keep time: a batch whose every message was handled), the keep
/// time: the fence and the marks can then be one statement
/// ([`CommitSteps::mark_held`]).
fn fenced_marks(fence: &Fence, batch: &CommitBatch) -> Option<i64> {
    let (_, keep_until) = *batch.handled.first()?;
    if fence.rows.len() != batch.handled.len()
        || batch.handled.iter().any(|(_, k)| *k != keep_until)
    {
        return None;
    }
    let fenced: HashSet<Uuid> = fence.rows.iter().map(|h| h.id).collect();
    let handled: HashSet<Uuid> = batch.handled.iter().map(|(id, _)| *id).collect();
    (fenced.len() == fence.rows.len() && fenced == handled).then_some(keep_until)
}

/// What the fence found.
#[derive(Debug, PartialEq, Eq)]
enum FenceCheck {
    /// Every row is still this claim's: commit.
    Held,
    /// This batch committed already (an earlier try whose outcome was unknown).
    Committed,
    /// These rows are not this claim's any more.
    Lost(Vec<Uuid>),
}

async fn check_fence<S: CommitSteps>(
    tx: &mut S,
    fence: &Fence,
    batch: &CommitBatch,
) -> StoreResult<FenceCheck> {
    if fence.rows.is_empty() {
        return Ok(FenceCheck::Held);
    }
    let mut ids: Vec<Uuid> = fence.rows.iter().map(|h| h.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let found = tx.lock_claimed(&ids).await?;
    Ok(judge(fence, &found, batch))
}

/// The fence's verdict on the rows it found (see the module doc).
fn judge(fence: &Fence, found: &[FencedRow], batch: &CommitBatch) -> FenceCheck {
    let now: HashMap<Uuid, &FencedRow> = found.iter().map(|r| (r.id, r)).collect();
    let at_claim = |id: &Uuid, status: &str| -> bool {
        fence.rows.iter().any(|h| {
            h.id == *id
                && now.get(id).is_some_and(|r| {
                    r.attempts == i64::from(h.claim)
                        && r.status == status
                        && (status != STATUS_INCOMING || r.owner_id == fence.node_id)
                })
        })
    };
    let lost: Vec<Uuid> = fence
        .rows
        .iter()
        .filter(|h| !at_claim(&h.id, STATUS_INCOMING))
        .map(|h| h.id)
        .collect();
    if lost.is_empty() {
        return FenceCheck::Held;
    }
    let none_held = lost.len() == fence.rows.len();
    if none_held
        && !batch.handled.is_empty()
        && batch
            .handled
            .iter()
            .all(|(id, _)| at_claim(id, STATUS_HANDLED))
    {
        return FenceCheck::Committed;
    }
    FenceCheck::Lost(lost)
}

/// Write `batch` on `tx` (its handled marks too unless `marked`: written
/// with the fence already).
async fn apply<S: CommitSteps>(tx: &mut S, batch: &CommitBatch, marked: bool) -> StoreResult<()> {
    for (i, round) in rounds(&batch.state_writes).iter().enumerate() {
        let checks: &[StateCheck] = if i == 0 { &batch.state_checks } else { &[] };
        state_round(tx, checks, round).await?;
    }
    if batch.state_writes.is_empty() && !batch.state_checks.is_empty() {
        state_round(tx, &batch.state_checks, &[]).await?;
    }
    if !batch.new_incoming.is_empty() {
        tx.insert_incoming(&batch.new_incoming).await?;
    }
    if !marked {
        for (keep_until, ids) in by_keep(&batch.handled) {
            tx.mark_handled(keep_until, &ids).await?;
        }
    }
    if !batch.outgoing.is_empty() {
        tx.insert_outgoing(&batch.outgoing).await?;
    }
    let marks = last_mark_per_id(&batch.retries);
    if !marks.is_empty() {
        tx.retry(&marks).await?;
    }
    let dead = one_row_per_id(&batch.dead_letters);
    if !dead.is_empty() {
        let ids: Vec<Uuid> = dead.iter().map(|d| d.first.id).collect();
        tx.delete_incoming(&ids).await?;
        tx.upsert_dead_letters(&dead).await?;
    }
    Ok(())
}

/// State writes in rounds of distinct keys (the n-th write of a key goes
/// into round n), which gives the outcome of applying them one by one; a
/// batch from the host has one round.
fn rounds(writes: &[StateWrite]) -> Vec<Vec<&StateWrite>> {
    let mut rounds: Vec<Vec<&StateWrite>> = Vec::new();
    let mut seen: HashMap<StateKey<'_>, usize> = HashMap::new();
    for w in writes {
        let n = seen.entry((&w.plugin, &w.key)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        if let Some(round) = rounds.get_mut(*n) {
            round.push(w);
        }
        *n += 1;
    }
    rounds
}

/// Held rows by the attempt count their claim left, ids sorted (normally one
/// group: a batch's rows come from one claim): one fenced statement each.
pub(crate) fn by_claim(rows: &[Held]) -> BTreeMap<u32, Vec<Uuid>> {
    let mut by_claim: BTreeMap<u32, Vec<Uuid>> = BTreeMap::new();
    for h in rows {
        by_claim.entry(h.claim).or_default().push(h.id);
    }
    for ids in by_claim.values_mut() {
        ids.sort_unstable();
    }
    by_claim
}

/// Handled ids by keep time: one statement per distinct keep window (normally one).
fn by_keep(handled: &[(Uuid, i64)]) -> BTreeMap<i64, Vec<Uuid>> {
    let mut by_keep: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for (id, keep) in handled {
        by_keep.entry(*keep).or_default().push(*id);
    }
    by_keep
}

/// One retry mark per id; a repeated id keeps its last mark, as marks applied
/// one by one would.
fn last_mark_per_id(retries: &[RetryMark]) -> Vec<&RetryMark> {
    let mut at: HashMap<Uuid, usize> = HashMap::with_capacity(retries.len());
    let mut marks: Vec<&RetryMark> = Vec::with_capacity(retries.len());
    for r in retries {
        if let Some(slot) = at.get(&r.id).and_then(|&i| marks.get_mut(i)) {
            *slot = r;
        } else {
            at.insert(r.id, marks.len());
            marks.push(r);
        }
    }
    marks
}

/// One dead-letter row per id (see [`DeadLetterRow`]).
fn one_row_per_id(dead: &[DeadLetter]) -> Vec<DeadLetterRow<'_>> {
    let mut at: HashMap<Uuid, usize> = HashMap::with_capacity(dead.len());
    let mut rows: Vec<DeadLetterRow<'_>> = Vec::with_capacity(dead.len());
    for d in dead {
        if let Some(slot) = at.get(&d.id).and_then(|&i| rows.get_mut(i)) {
            slot.last = d;
        } else {
            at.insert(d.id, rows.len());
            rows.push(DeadLetterRow { first: d, last: d });
        }
    }
    rows
}

fn stale(plugin: &str, key: &str, expected: i64) -> StoreError {
    StoreError::StaleState {
        plugin: plugin.to_owned(),
        key: key.to_owned(),
        expected,
    }
}

fn version_of(versions: &Versions, plugin: &str, key: &str) -> i64 {
    versions
        .get(&(plugin.to_owned(), key.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// One round: lock the versions of every key involved (in one global
/// order), compare them with what the batch read, then apply each kind of
/// write in key order (so concurrent commits inserting the same new keys
/// take their locks in the same order). A write that affects fewer rows than
/// asked lost a race the lock could not prevent: the commit fails as stale.
async fn state_round<S: CommitSteps>(
    tx: &mut S,
    checks: &[StateCheck],
    writes: &[&StateWrite],
) -> StoreResult<()> {
    let mut keys: Vec<StateKey<'_>> = checks
        .iter()
        .map(|c| (c.plugin.as_str(), c.key.as_str()))
        .chain(writes.iter().map(|w| (w.plugin.as_str(), w.key.as_str())))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let versions = tx.lock_versions(&keys).await?;
    for c in checks {
        if version_of(&versions, &c.plugin, &c.key) != c.expected_version {
            return Err(stale(&c.plugin, &c.key, c.expected_version));
        }
    }
    for w in writes {
        if let Some(e) = w.expected_version
            && version_of(&versions, &w.plugin, &w.key) != e
        {
            return Err(stale(&w.plugin, &w.key, e));
        }
    }

    let kind = |value: bool, expected: fn(Option<i64>) -> bool| -> Vec<&StateWrite> {
        let mut ws: Vec<&StateWrite> = writes
            .iter()
            .copied()
            .filter(|w| w.value.is_some() == value && expected(w.expected_version))
            .collect();
        ws.sort_by(|a, b| (&a.plugin, &a.key).cmp(&(&b.plugin, &b.key)));
        ws
    };
    let upserts = kind(true, |e| e.is_none());
    let inserts = kind(true, |e| e == Some(0));
    let updates = kind(true, |e| matches!(e, Some(v) if v != 0));
    let deletes = kind(false, |e| e.is_none());
    let checked_deletes = kind(false, |e| matches!(e, Some(v) if v != 0));
    // A delete of a key read as absent was checked above: nothing to do.

    if !upserts.is_empty() {
        tx.upsert_states(&upserts).await?;
    }
    if !inserts.is_empty() {
        // Absent keys take no lock: a concurrent commit may insert one meanwhile.
        let n = tx.insert_states(&inserts).await?;
        if n < len_u64(&inserts) {
            return Err(first_stale(tx, &inserts).await);
        }
    }
    if !updates.is_empty() {
        let n = tx.update_states(&updates).await?;
        if n < len_u64(&updates) {
            return Err(first_stale(tx, &updates).await);
        }
    }
    if !checked_deletes.is_empty() {
        let n = tx.delete_states(&checked_deletes, true).await?;
        if n < len_u64(&checked_deletes) {
            return Err(first_stale(tx, &checked_deletes).await);
        }
    }
    if !deletes.is_empty() {
        tx.delete_states(&deletes, false).await?;
    }
    Ok(())
}

fn len_u64<T>(items: &[T]) -> u64 {
    u64::try_from(items.len()).unwrap_or(u64::MAX)
}

/// The stale error for a version-checked kind of write that fell short: the
/// first write whose key is not (any more) at the version it expected, read
/// again; the first write when the read fails or finds none.
async fn first_stale<S: CommitSteps>(tx: &mut S, writes: &[&StateWrite]) -> StoreError {
    let mut keys: Vec<StateKey<'_>> = writes
        .iter()
        .map(|w| (w.plugin.as_str(), w.key.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let now = match tx.lock_versions(&keys).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    let expected = |w: &StateWrite| w.expected_version.unwrap_or(0);
    let culprit = writes
        .iter()
        .find(|w| version_of(&now, &w.plugin, &w.key) != expected(w))
        .or(writes.first());
    match culprit {
        Some(w) => stale(&w.plugin, &w.key, expected(w)),
        None => stale("", "", 0),
    }
}

/// Every row of `rows` not returned by an insert is a duplicate (including a
/// second copy of an id inside the very statement), in order.
pub(crate) fn report_of(rows: &[NewIncoming], inserted: HashSet<Uuid>) -> InsertReport {
    let mut report = InsertReport {
        inserted: inserted.len(),
        duplicates: Vec::new(),
    };
    if inserted.len() < rows.len() {
        let mut fresh = inserted;
        report.duplicates = rows
            .iter()
            .map(|r| r.id)
            .filter(|id| !fresh.remove(id))
            .collect();
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, n: u8) -> StateWrite {
        StateWrite {
            plugin: "p".into(),
            key: key.into(),
            value: Some(vec![n]),
            expected_version: None,
        }
    }

    fn fenced(id: Uuid, owner_id: i64, attempts: i64, status: &str) -> FencedRow {
        FencedRow {
            id,
            owner_id,
            attempts,
            status: status.into(),
        }
    }

    fn fence_of(rows: &[(Uuid, u32)]) -> Fence {
        Fence {
            node_id: 7,
            rows: rows
                .iter()
                .map(|&(id, claim)| super::super::rows::Held { id, claim })
                .collect(),
        }
    }

    #[test]
    fn the_fence_holds_rows_owned_at_their_claim() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let fence = fence_of(&[(a, 1), (b, 3)]);
        let found = [fenced(a, 7, 1, "incoming"), fenced(b, 7, 3, "incoming")];
        assert_eq!(
            judge(&fence, &found, &CommitBatch::default()),
            FenceCheck::Held
        );
    }

    #[test]
    fn the_fence_names_rows_another_claim_took() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let fence = fence_of(&[(a, 1), (b, 1), (c, 1)]);
        // b: released and claimed again by node 9; c: released, not yet claimed.
        let found = [
            fenced(a, 7, 1, "incoming"),
            fenced(b, 9, 2, "incoming"),
            fenced(c, 0, 1, "incoming"),
        ];
        let batch = CommitBatch {
            handled: vec![(a, 0), (b, 0), (c, 0)],
            ..CommitBatch::default()
        };
        assert_eq!(judge(&fence, &found, &batch), FenceCheck::Lost(vec![b, c]));
    }

    #[test]
    fn a_row_handled_by_a_later_claim_is_lost_not_committed() {
        let a = Uuid::now_v7();
        let fence = fence_of(&[(a, 1)]);
        let found = [fenced(a, 0, 2, "handled")];
        let batch = CommitBatch {
            handled: vec![(a, 0)],
            ..CommitBatch::default()
        };
        assert_eq!(judge(&fence, &found, &batch), FenceCheck::Lost(vec![a]));
    }

    #[test]
    fn handled_marks_at_this_claim_mean_the_batch_committed() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let fence = fence_of(&[(a, 2), (b, 1)]);
        // a was handled by this batch; b was retried by it (back at owner 0).
        let found = [fenced(a, 0, 2, "handled"), fenced(b, 0, 1, "scheduled")];
        let batch = CommitBatch {
            handled: vec![(a, 0)],
            ..CommitBatch::default()
        };
        assert_eq!(judge(&fence, &found, &batch), FenceCheck::Committed);
        // With no handled mark to prove it, a batch of failures is lost.
        assert_eq!(
            judge(&fence, &found, &CommitBatch::default()),
            FenceCheck::Lost(vec![a, b])
        );
    }

    #[test]
    fn a_key_written_twice_goes_to_a_second_round() {
        let writes = [write("a", 1), write("b", 1), write("a", 2)];
        let r = rounds(&writes);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].len(), 2);
        assert_eq!(r[1][0].value, Some(vec![2]));
    }

    #[test]
    fn a_repeated_retry_keeps_its_last_mark() {
        let id = Uuid::now_v7();
        let mark = |attempts| RetryMark {
            id,
            attempts,
            execute_at: None,
        };
        let marks = [mark(1), mark(2)];
        let got = last_mark_per_id(&marks);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempts, 2);
    }

    #[test]
    fn a_second_copy_in_one_insert_is_a_duplicate() {
        let row = |id| NewIncoming {
            id,
            message_type: "t".into(),
            destination: "local://a".into(),
            owner_id: 0,
            execute_at: None,
            attempts: 0,
            body: Vec::new(),
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let report = report_of(&[row(a), row(a), row(b)], [a].into_iter().collect());
        assert_eq!(report.inserted, 1);
        assert_eq!(report.duplicates, vec![a, b]);
    }
}
