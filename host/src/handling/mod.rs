//! One batch of messages through their handlers and into one commit. The
//! worker claims due rows, runs each handler on a fresh instance with no
//! transaction open, buffers what it did, and commits the handled marks,
//! state writes, new local messages, retries and dead letters of the whole
//! batch together (group commit). A batch whose state reads went stale is run
//! again from fresh reads, never committed.
//!
//! Messages for remote peers leave through the transports after the commit:
//! a `durable://` one is an outgoing row of the same commit, a `tcp://` one
//! only an envelope in memory. Messages received on a `tcp://` listener come
//! in through an in-memory queue and have no inbox row: their effects commit
//! the same way, and only a failure makes them durable (as a retry row).
//!
//! A batch of claimed rows commits under a fence (see `store/commit.rs`): if
//! another node took some of its rows meanwhile (this node was paused or cut
//! off past its lease), nothing of the batch commits, the rows taken are
//! dropped from it (logged as `event=rows-lost`) and the rest run again. A
//! batch whose state went stale runs again whole after a short jittered
//! backoff (the backoff, not smaller commits, is what lets nodes contending
//! for one key take turns: each commit of a hot key costs the same whatever
//! the batch size). After [`STALE_RERUNS_PER_BATCH`] reruns in a row it is
//! halved, so a message whose key stays contended ends up on its own, and a
//! single message stale [`STALE_RERUNS_PER_MESSAGE`] times in a row is put
//! back for a little later (not counted as an attempt): every node makes
//! progress.
//!
//! Rows claimed again after a claim that never came to an outcome (their
//! node died holding them: the message may be what kills it) run after the
//! rest of their batch has committed, so a crash while running them costs
//! the others no attempt; the claim takes at most one such row at a time.

pub(crate) mod handoff;
pub(crate) mod parallel;
mod pipeline;
pub(crate) mod policy;
pub(crate) mod replies;
#[cfg(test)]
mod tests;
pub(crate) mod unrouted;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::address::{Destination, Endpoint};
use crate::admin::Metrics;
use crate::admin::metrics::{FailureLabels, MessageLabels, Tally};
use crate::backoff::{Backoff, Wake, jitter, pause};
use crate::config::{HandlingConfig, Unrouted};
#[cfg(not(test))]
use crate::envelope::now_ms;
use crate::envelope::{Envelope, local_row};
#[cfg(test)]
use crate::paused::now_ms;
use crate::runtime::{CallError, LivePlugins, Plugin, Plugins};
use crate::store::{
    ClaimedRow, CommitBatch, DeadLetter, Fence, MessageStore, NewIncoming, RetryMark, StoreError,
};
use crate::transport::{Outgoing, Senders};
use parallel::{Call, Calls};
use pipeline::Pipeline;
use policy::{Disposition, Failure, decide};
use replies::{Answer, Replies};
use unrouted::UnroutedCount;

/// What handling one row came to: what its handler sent, or why it failed.
type Outcome = Result<Vec<Envelope>, Failure>;

/// A batch made ready to commit: the commit, what it counts, what observers
/// are told, what leaves after it, and the messages published to nobody
/// (reported once it is done).
struct Prepared {
    commit: CommitBatch,
    report: BatchReport,
    /// The batch's outcomes for the metrics, counted once it commits.
    tally: Tally,
    event: Option<BatchEvent>,
    outgoing: Vec<Outgoing>,
    unrouted: Vec<Envelope>,
    /// What HTTP callers waiting on messages of the batch are told after it.
    answers: Vec<(Uuid, Answer)>,
}

/// The worker's wait after a failed claim or commit: doubling from 50 ms to 5 s.
const DB_BACKOFF_BASE: Duration = Duration::from_millis(50);
const DB_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Stale-state reruns in a row of a batch before it is halved.
pub(crate) const STALE_RERUNS_PER_BATCH: usize = 4;
/// Stale-state reruns of a single message before it is put back for later.
pub(crate) const STALE_RERUNS_PER_MESSAGE: usize = 8;
/// The wait before a stale rerun: doubling from 1 ms to 100 ms, jittered.
const STALE_BACKOFF_BASE: Duration = Duration::from_millis(1);
const STALE_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// How much later a message put back after contention runs again (jittered).
const CONTENDED_DELAY: Duration = Duration::from_millis(500);

/// What one batch came to (for logs, tests and benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchReport {
    pub handled: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    pub sent: usize,
    /// Times the batch was run again because its state reads went stale.
    pub reruns: usize,
    /// Claimed rows another node took before this batch committed.
    pub lost: usize,
    /// Messages put back for later after contention on their state.
    pub deferred: usize,
}

impl BatchReport {
    fn add(&mut self, other: BatchReport) {
        self.handled += other.handled;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.sent += other.sent;
        self.reruns += other.reruns;
        self.lost += other.lost;
        self.deferred += other.deferred;
    }
}

/// How a commit loop ended.
enum CommitEnd {
    Done,
    Stale {
        plugin: String,
        key: String,
    },
    Lost(Vec<Uuid>),
    /// Shutdown came while the commit kept failing.
    Abandoned,
}

/// What a committed batch did, for observers such as tracked sessions.
#[derive(Debug, Clone, Default)]
pub struct BatchEvent {
    /// Messages handled successfully.
    pub handled: Vec<Envelope>,
    /// Messages their handlers sent, published or scheduled.
    pub sent: Vec<Envelope>,
    /// Messages that failed and will be tried again.
    pub retried: Vec<Uuid>,
    /// Messages moved to dead letters.
    pub dead_lettered: Vec<DeadLetter>,
    /// Messages their handlers published that no plugin subscribes to and
    /// no route matches (no destination): dropped or, with `handling.unrouted
    /// = "dead-letter"`, also in `dead_lettered`.
    pub unrouted: Vec<Envelope>,
}

/// The message loop of one node.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub store: Arc<dyn MessageStore>,
    /// The plugins now; a batch runs on one snapshot of them.
    pub plugins: Arc<LivePlugins>,
    pub config: HandlingConfig,
    pub node_id: i64,
    /// Woken when new local messages may be waiting.
    pub wake: Arc<Notify>,
    /// Committed batches are announced here when anyone listens.
    pub events: broadcast::Sender<Arc<BatchEvent>>,
    /// Where messages for remote destinations go after the commit.
    pub senders: Arc<Senders>,
    /// How the handler calls of a batch run (at once, bounded).
    pub calls: Arc<Calls>,
    /// Published messages nobody took (see `unrouted`).
    pub unrouted: UnroutedCount,
    /// Rows listeners claimed for this node as they wrote them (see `handoff`).
    pub handoff: Arc<handoff::Handoff>,
    /// Outcomes, batch sizes and commit times (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// HTTP callers waiting for what becomes of their commands (`/invoke`).
    pub replies: Arc<Replies>,
}

/// Where a message a handler sent goes.
enum Route {
    /// Into the inbox: a local queue, or anything scheduled (a scheduled
    /// remote message waits in the inbox and is forwarded when due; but
    /// for Service Bus, which holds it itself).
    Inbox,
    /// To a peer; `durable` ones get an outgoing row in the same commit.
    Remote { durable: bool },
}

fn route_of(env: &Envelope) -> Route {
    let endpoint = env.destination.as_ref().map(Destination::endpoint);
    // Service Bus holds a scheduled message itself
    // (`x-opt-scheduled-enqueue-time`): it leaves at once.
    if env.scheduled_at.is_some()
        && !matches!(endpoint, Some(Ok(Endpoint::Amqp(a))) if a.is_service_bus())
    {
        return Route::Inbox;
    }
    match endpoint {
        Some(Ok(e)) if e.is_remote() => Route::Remote {
            durable: e.is_durable(),
        },
        _ => Route::Inbox,
    }
}

/// Rows for messages that came in through the in-memory queue (`tcp://`).
fn memory_rows(batch: Vec<Envelope>) -> Vec<ClaimedRow> {
    batch
        .into_iter()
        .map(|env| ClaimedRow {
            id: env.id,
            attempts: env.attempts,
            claim: env.attempts.saturating_add(1),
            destination: env
                .destination
                .as_ref()
                .map(|d| d.uri().to_string())
                .unwrap_or_default(),
            body: env.encode(),
        })
        .collect()
}

impl Worker {
    /// Claim, handle and commit until `shutdown` turns true. The batches in
    /// hand are finished first.
    ///
    /// Up to `handling.batches_in_flight` batches are in hand at once, so one is
    /// handled while the one before commits; they commit in the order they
    /// were claimed (a later batch that read what an earlier one wrote goes
    /// stale and runs again after it, so state sees them in order). A batch
    /// holding a row whose earlier claim ended without an outcome runs alone.
    /// When batches keep going stale on each other (one hot key), they run
    /// one at a time for a while.
    pub(crate) async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        mut memory: mpsc::Receiver<Vec<Envelope>>,
    ) {
        let mut db_backoff = Backoff::new(DB_BACKOFF_BASE, DB_BACKOFF_MAX);
        let pipeline = Arc::new(Pipeline::new(self.config.batches_in_flight));
        // A claim that failed may still have taken rows (its answer was
        // lost): they are handed back before the next claim.
        let mut claim_unknown = false;
        // Handed rows first, but a claim at least every other batch, so the
        // rows waiting in the inbox (retries, scheduled ones, what found no
        // room in the hand-off) keep moving.
        let mut claim_turn = false;
        // Whether the last claim was full: a backlog waits, and more
        // batches may be in hand (see `pipeline`).
        let mut backlog = false;
        loop {
            if *shutdown.borrow() {
                pipeline.drain().await;
                // What was handed over is in hand: run before stopping.
                self.handoff.close().await;
                while let Some(rows) = self.handoff.take(self.config.batch_size) {
                    self.handle_batch(&rows, true, &mut shutdown, None).await;
                }
                return;
            }
            if let Ok(batch) = memory.try_recv() {
                self.handle_memory(batch, &mut shutdown).await;
                continue;
            }
            if claim_unknown {
                // Not the rows of batches in hand.
                let _all = pipeline.drain().await;
                match self.store.release_claimed(self.node_id).await {
                    Ok(n) => {
                        if n > 0 {
                            info!(
                                released = n,
                                "handed back rows of a claim whose answer was lost"
                            );
                        }
                        claim_unknown = false;
                    }
                    // Tried again after the next claim; that claim backs off
                    // if the database is still away.
                    Err(e) => {
                        debug!(error = %crate::error_chain(&e), "handing back rows of a failed claim failed");
                    }
                }
            }
            // A slot for the next batch before claiming it.
            let slot = pipeline.slot(backlog).await;
            let now = now_ms();
            let handed = if claim_turn {
                None
            } else {
                self.handoff.take(self.config.batch_size)
            };
            claim_turn = handed.is_some();
            let rows = match handed {
                Some(rows) => rows,
                None => match self
                    .store
                    .claim_incoming(self.node_id, now, self.config.batch_size)
                    .await
                {
                    Ok(rows) => {
                        db_backoff.reset();
                        rows
                    }
                    Err(e) => {
                        error!(error = %crate::error_chain(&e), "claiming messages failed; retrying");
                        claim_unknown = true;
                        drop(slot);
                        pause(&mut shutdown, db_backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            backlog = rows.len() >= self.config.batch_size;
            if rows.is_empty() {
                drop(slot);
                if !self.handoff.is_empty() {
                    continue;
                }
                let wait = self.idle_wait(now).await;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                    Some(batch) = memory.recv() => self.handle_memory(batch, &mut shutdown).await,
                }
                continue;
            }
            let n = rows.len();
            // Rows tried before last, each part its own commit: a crash
            // while running them leaves the others committed.
            let (fresh, earlier): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|r| r.attempts == 0);
            if !earlier.is_empty() || !pipeline.on() {
                drop(slot);
                let _all = pipeline.drain().await;
                let mut report = self.handle_batch(&fresh, true, &mut shutdown, None).await;
                report.add(self.handle_batch(&earlier, true, &mut shutdown, None).await);
                pipeline.saw(&report);
                debug!(claimed = n, ?report, "batch committed");
                continue;
            }
            let (turn, after) = pipeline.next_turn();
            let worker = self.clone();
            let mut shutdown = shutdown.clone();
            let pipeline = Arc::clone(&pipeline);
            tokio::spawn(async move {
                let report = worker
                    .handle_batch(&fresh, true, &mut shutdown, Some(after))
                    .await;
                pipeline.saw(&report);
                debug!(claimed = n, ?report, "batch committed");
                drop(turn);
                drop(slot);
            });
        }
    }

    async fn handle_memory(&self, batch: Vec<Envelope>, shutdown: &mut watch::Receiver<bool>) {
        let rows = memory_rows(batch);
        let report = self.handle_batch(&rows, false, shutdown, None).await;
        debug!(received = rows.len(), ?report, "in-memory batch committed");
    }

    /// How long to sleep with nothing to do: the poll interval, or less when
    /// a scheduled message falls due sooner.
    async fn idle_wait(&self, now: i64) -> Duration {
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(1));
        match self.store.next_scheduled().await {
            Ok(Some(at)) if at > now => poll.min(Duration::from_millis((at - now) as u64)),
            Ok(Some(_)) => Duration::from_millis(1),
            _ => poll,
        }
    }

    /// Run and commit one batch: claimed inbox rows (`persisted`) or
    /// messages from the in-memory queue. Commit failures other than stale
    /// state and lost rows are retried with backoff until they succeed or
    /// shutdown; claimed rows stay owned by this node, so a crash leaves
    /// them to recovery.
    /// `after` resolves when the batch claimed before this one has
    /// committed: this one's commit waits for it.
    pub(crate) async fn handle_batch(
        &self,
        rows: &[ClaimedRow],
        persisted: bool,
        shutdown: &mut watch::Receiver<bool>,
        mut after: Option<oneshot::Receiver<()>>,
    ) -> BatchReport {
        let mut rows: Cow<'_, [ClaimedRow]> = Cow::Borrowed(rows);
        let mut done = BatchReport::default();
        let mut reruns = 0;
        let mut stale_backoff = Backoff::new(STALE_BACKOFF_BASE, STALE_BACKOFF_MAX);
        loop {
            if rows.is_empty() {
                return done;
            }
            if reruns >= STALE_RERUNS_PER_BATCH && rows.len() > 1 {
                done.reruns += reruns;
                let (first, second) = rows.split_at(rows.len() / 2);
                for half in [first, second] {
                    done.add(Box::pin(self.handle_batch(half, persisted, shutdown, None)).await);
                }
                return done;
            }
            let contended = reruns >= STALE_RERUNS_PER_MESSAGE;
            let Prepared {
                commit,
                mut report,
                tally,
                event,
                outgoing,
                unrouted,
                answers,
            } = if contended {
                self.put_back(&rows, persisted)
            } else {
                self.run_rows(&rows, persisted).await
            };
            report.reruns = reruns;
            if let Some(before) = after.take() {
                // Dropped or sent: either way the batch before is done.
                let _ = before.await;
            }
            let committing = std::time::Instant::now();
            match self.commit(&commit, rows.len(), shutdown).await {
                CommitEnd::Done => {
                    self.metrics
                        .committed(&tally, rows.len(), committing.elapsed());
                    if report.sent > 0 || report.retried > 0 || report.deferred > 0 {
                        self.wake.notify_one();
                    }
                    unrouted::report(&unrouted, self.config.unrouted, &self.unrouted);
                    if !outgoing.is_empty() {
                        self.senders.dispatch(outgoing).await;
                    }
                    for (id, answer) in answers {
                        self.replies.answer(id, answer);
                    }
                    if let Some(event) = event {
                        // Nobody listening is fine.
                        let _ = self.events.send(Arc::new(event));
                    }
                    done.add(report);
                    return done;
                }
                CommitEnd::Stale { plugin, key } => {
                    debug!(%plugin, %key, reruns, "state went stale; running the batch again");
                    reruns += 1;
                    if pause(shutdown, jitter(stale_backoff.next_delay())).await == Wake::Shutdown {
                        return done;
                    }
                }
                CommitEnd::Lost(ids) => {
                    let lost: HashSet<Uuid> = ids.into_iter().collect();
                    warn!(
                        event = %"rows-lost",
                        lost = lost.len(),
                        of = rows.len(),
                        node_id = self.node_id,
                        first = %lost.iter().min().map(ToString::to_string).unwrap_or_default(),
                        "claimed messages were taken by another node before this batch committed (this node was presumed dead: paused, cut off or slow past durability.stale_after_ms); their effects are dropped here, the node that holds them now commits them"
                    );
                    done.lost += lost.len();
                    rows = Cow::Owned(
                        rows.iter()
                            .filter(|r| !lost.contains(&r.id))
                            .cloned()
                            .collect(),
                    );
                }
                // Nothing of this part committed: not counted.
                CommitEnd::Abandoned => return done,
            }
        }
    }

    /// Commit `batch`, trying again with backoff while the database fails
    /// (a commit whose outcome was unknown is resolved by the fence).
    async fn commit(
        &self,
        batch: &CommitBatch,
        rows: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> CommitEnd {
        let mut backoff = Backoff::new(DB_BACKOFF_BASE, DB_BACKOFF_MAX);
        loop {
            match self.store.commit(batch).await {
                Ok(()) => return CommitEnd::Done,
                Err(StoreError::StaleState { plugin, key, .. }) => {
                    return CommitEnd::Stale { plugin, key };
                }
                Err(StoreError::Lost { ids }) => return CommitEnd::Lost(ids),
                Err(e) => {
                    error!(error = %crate::error_chain(&e), rows, "commit failed; retrying");
                    if *shutdown.borrow() {
                        warn!(
                            "shutting down with an uncommitted batch; it will be recovered on restart"
                        );
                        return CommitEnd::Abandoned;
                    }
                    pause(shutdown, backoff.next_delay()).await;
                }
            }
        }
    }

    /// The commit that puts `rows` back for a little later without running
    /// them (their state stayed contended): not counted as an attempt.
    fn put_back(&self, rows: &[ClaimedRow], persisted: bool) -> Prepared {
        let delay = i64::try_from(jitter(CONTENDED_DELAY).as_millis()).unwrap_or(500);
        let execute_at = Some(now_ms().saturating_add(delay));
        let mut commit = CommitBatch {
            fence: self.fence(rows, persisted),
            ..CommitBatch::default()
        };
        for row in rows {
            warn!(event = %"contended", message_id = %row.id, reruns = STALE_RERUNS_PER_MESSAGE, "state stayed contended; the message runs again a little later");
            if persisted {
                commit.retries.push(RetryMark {
                    id: row.id,
                    attempts: row.attempts,
                    execute_at,
                });
            } else {
                commit.new_incoming.push(NewIncoming {
                    id: row.id,
                    message_type: Envelope::decode(&row.body)
                        .map(|e| e.message_type)
                        .unwrap_or_default(),
                    destination: row.destination.clone(),
                    owner_id: 0,
                    execute_at,
                    attempts: row.attempts,
                    body: row.body.clone(),
                });
            }
        }
        let report = BatchReport {
            deferred: rows.len(),
            ..BatchReport::default()
        };
        Prepared {
            commit,
            report,
            tally: Tally::default(),
            event: None,
            outgoing: Vec::new(),
            unrouted: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// The fence a batch of claimed rows commits under; none for messages
    /// from the in-memory queue.
    fn fence(&self, rows: &[ClaimedRow], persisted: bool) -> Option<Fence> {
        persisted.then(|| Fence {
            node_id: self.node_id,
            rows: rows.iter().map(ClaimedRow::held).collect(),
        })
    }

    /// Run every row's handler (at once where they can, see `parallel`) and
    /// gather the batch's commit.
    async fn run_rows(&self, rows: &[ClaimedRow], persisted: bool) -> Prepared {
        let now = now_ms();
        // One set for the whole batch: a reload during it takes effect
        // with the next batch, and calls under way finish on the version
        // they started on.
        let plugins = self.plugins.snapshot();
        let mut envelopes: Vec<Option<Arc<Envelope>>> = Vec::with_capacity(rows.len());
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(rows.len());
        let mut calls = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            // Every earlier claim of a row this far along ended without an
            // outcome (a committed failure this late is dead-lettered): the
            // message brings the host down, so it does not run again.
            let crashed = persisted && row.attempts >= self.config.max_attempts;
            match Envelope::decode(&row.body) {
                Ok(env) if crashed => {
                    outcomes.push(Some(Err(Failure::Crashed {
                        attempts: row.attempts,
                    })));
                    envelopes.push(Some(Arc::new(env)));
                }
                Ok(mut env) => {
                    env.attempts = row.attempts;
                    let span = info_span!(
                        "handle",
                        message_id = %env.id,
                        message_type = %env.message_type,
                        correlation_id = env.correlation_id.as_deref().unwrap_or(""),
                        destination = %row.destination,
                        attempt = row.attempts + 1,
                    );
                    if crate::telemetry::enabled() {
                        crate::telemetry::adopt(&span, &env.headers);
                        let id = env.id.to_string();
                        crate::telemetry::describe(&span, "process", &row.destination, &id);
                    }
                    let env = Arc::new(env);
                    match span.in_scope(|| self.handler_of(&plugins, row, &env, now)) {
                        Ok(plugin) => {
                            calls.push(Call {
                                index,
                                plugin,
                                envelope: Arc::clone(&env),
                                span,
                            });
                            outcomes.push(None);
                        }
                        Err(outcome) => outcomes.push(Some(outcome)),
                    }
                    envelopes.push(Some(env));
                }
                Err(e) => {
                    outcomes.push(Some(Err(Failure::BadMessage(format!(
                        "stored envelope cannot be decoded: {e}"
                    )))));
                    envelopes.push(None);
                }
            }
        }
        let (done, state) = self.calls.run(calls, plugins.router()).await;
        for (index, result) in done {
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = Some(result.map_err(Failure::Call));
            }
        }

        let mut outgoing = Vec::new();
        let mut event = (self.events.receiver_count() > 0).then(BatchEvent::default);
        let keep_until =
            now.saturating_add(i64::try_from(self.config.keep_handled_ms).unwrap_or(i64::MAX));
        let mut commit = CommitBatch {
            fence: self.fence(rows, persisted),
            ..CommitBatch::default()
        };
        let mut report = BatchReport::default();
        let mut tally = Tally::default();
        let mut unrouted_all = Vec::new();
        let waiting = self.replies.any();
        let mut answers = Vec::new();
        for ((row, outcome), envelope) in rows.iter().zip(outcomes).zip(envelopes) {
            let envelope = envelope.map(Arc::unwrap_or_clone);
            let result = outcome.unwrap_or_else(|| {
                Err(Failure::Call(CallError::HostFault(
                    "the handler call came to no outcome".into(),
                )))
            });
            match result {
                Ok(sent) => {
                    let (sent, reply) = replies::split(sent);
                    if waiting {
                        answers.push((row.id, Answer::Handled(reply)));
                    }
                    let (sent, unrouted) = unrouted::split(sent);
                    report.handled += 1;
                    tally.handled.push(message_labels(row, envelope.as_ref()));
                    report.sent += sent.len();
                    if persisted {
                        commit.handled.push((row.id, keep_until));
                    }
                    for env in &sent {
                        match route_of(env) {
                            Route::Inbox => commit.new_incoming.push(local_row(env)),
                            Route::Remote { durable } => {
                                let o = Outgoing::from_envelope(env, durable);
                                if durable {
                                    commit.outgoing.push(o.row(self.node_id));
                                }
                                outgoing.push(o);
                            }
                        }
                    }
                    if self.config.unrouted == Unrouted::DeadLetter {
                        for env in &unrouted {
                            let dead = unrouted::dead_letter(env, now);
                            if let Some(ev) = event.as_mut() {
                                ev.dead_lettered.push(dead.clone());
                            }
                            commit.dead_letters.push(dead);
                        }
                    }
                    if let Some(ev) = event.as_mut() {
                        ev.handled.extend(envelope);
                        ev.sent.extend(sent);
                        ev.unrouted.extend(unrouted.iter().cloned());
                    }
                    unrouted_all.extend(unrouted);
                }
                Err(failure) => match decide(&failure, row.attempts, &self.config, now) {
                    Disposition::Retry {
                        attempts,
                        execute_at,
                    } => {
                        let (kind, message) = failure.describe();
                        if matches!(failure, Failure::Waiting(_)) {
                            debug!(message_id = %row.id, %message, "waiting for its plugin to be back");
                        } else {
                            warn!(message_id = %row.id, kind = %kind, %message, attempts, "handling failed; will retry");
                        }
                        report.retried += 1;
                        tally
                            .failed
                            .push(failure_labels(row, envelope.as_ref(), kind.as_str()));
                        if persisted {
                            commit.retries.push(RetryMark {
                                id: row.id,
                                attempts,
                                execute_at: Some(execute_at),
                            });
                        } else {
                            // The first failure makes a tcp:// message durable.
                            commit.new_incoming.push(NewIncoming {
                                id: row.id,
                                message_type: envelope
                                    .as_ref()
                                    .map(|e| e.message_type.clone())
                                    .unwrap_or_default(),
                                destination: row.destination.clone(),
                                owner_id: 0,
                                execute_at: Some(execute_at),
                                attempts,
                                body: row.body.clone(),
                            });
                        }
                        if let Some(ev) = event.as_mut() {
                            ev.retried.push(row.id);
                        }
                    }
                    Disposition::DeadLetter(cause) => {
                        warn!(message_id = %row.id, kind = %cause.kind, message = %cause.message, attempts = cause.attempts, "moved to dead letters");
                        report.dead_lettered += 1;
                        tally.dead_lettered.push(failure_labels(
                            row,
                            envelope.as_ref(),
                            cause.kind.as_str(),
                        ));
                        let dead = DeadLetter::new(
                            row.id,
                            envelope
                                .as_ref()
                                .map(|e| e.message_type.clone())
                                .unwrap_or_default(),
                            row.destination.clone(),
                            envelope.as_ref().and_then(|e| e.source.clone()),
                            row.body.clone(),
                            cause,
                            now,
                        );
                        if waiting {
                            answers.push((
                                row.id,
                                Answer::DeadLettered {
                                    kind: dead.error_kind.to_string(),
                                    message: dead.error_message.clone(),
                                },
                            ));
                        }
                        if let Some(ev) = event.as_mut() {
                            ev.dead_lettered.push(dead.clone());
                        }
                        commit.dead_letters.push(dead);
                    }
                },
            }
        }
        let (writes, checks) = state.into_commit();
        commit.state_writes = writes;
        commit.state_checks = checks;
        Prepared {
            commit,
            report,
            tally,
            event,
            outgoing,
            unrouted: unrouted_all,
            answers,
        }
    }

    /// The plugin that handles `env`, or what the row comes to without a
    /// handler call.
    fn handler_of(
        &self,
        plugins: &Plugins,
        row: &ClaimedRow,
        env: &Envelope,
        now: i64,
    ) -> Result<Arc<Plugin>, Outcome> {
        if env.is_expired(now) {
            info!("expired before it was handled (deliver_by passed); discarded");
            return Err(Ok(Vec::new()));
        }
        // The envelope's destination is the row's (both written from the
        // envelope), parsed when the body was decoded.
        let name = match env.destination.as_ref().map(Destination::endpoint) {
            Some(Ok(Endpoint::Local { plugin })) => plugin,
            Some(Ok(_)) => {
                // A scheduled (or replayed) message for a peer or broker: forward it now.
                let mut forward = env.clone();
                forward.scheduled_at = None;
                forward.attempts = 0;
                return Err(Ok(vec![forward]));
            }
            // Published to nobody and replayed from dead letters.
            None => return Err(publish_again(plugins, env)),
            Some(Err(_)) => {
                let msg = format!("destination {} is not a local queue", row.destination);
                return Err(Err(Failure::NoHandler(msg)));
            }
        };
        let Some(plugin) = plugins.get(name) else {
            // A plugin unloaded by a reload may come back (a file being
            // replaced by delete-then-copy, an operator's fix): its
            // messages wait. A name never loaded since start is a
            // misaddressed message, as before.
            if plugins.was_removed(name) {
                let msg = format!(
                    "plugin '{name}' was unloaded (its file was removed); the message waits until it is back"
                );
                return Err(Err(Failure::Waiting(msg)));
            }
            let msg = format!("no plugin named '{name}' is loaded");
            return Err(Err(Failure::NoHandler(msg)));
        };
        if !plugin.subscriptions.contains(&env.message_type) {
            let msg = format!(
                "plugin '{name}' does not handle message type '{}'",
                env.message_type
            );
            return Err(Err(Failure::NoHandler(msg)));
        }
        Ok(Arc::clone(plugin))
    }
}

/// A message once published to nobody (no destination), put back by
/// `dead-letters replay`: published now to whoever takes its type, each
/// copy with an id derived from its own (a rerun makes the same copies,
/// which the inbox dedupes). Still nobody: a `no-route` failure.
fn publish_again(plugins: &Plugins, env: &Envelope) -> Outcome {
    let destinations = plugins.router().publish_destinations(&env.message_type);
    if destinations.is_empty() {
        return Err(Failure::NoRoute(unrouted::no_route_message(
            &env.message_type,
        )));
    }
    info!(
        copies = destinations.len(),
        "a message published to nobody is published again"
    );
    Ok(destinations
        .into_iter()
        .map(|dest| {
            let dest = Destination::from(dest);
            let mut copy = env.clone();
            copy.id = Uuid::new_v5(&env.id, dest.uri().as_bytes());
            copy.destination = Some(dest);
            copy.scheduled_at = None;
            copy.attempts = 0;
            copy
        })
        .collect())
}

/// A message's metric labels: its type, and the plugin of its local queue
/// (empty when it was not for one).
fn message_labels(row: &ClaimedRow, env: Option<&Envelope>) -> MessageLabels {
    let plugin = row
        .destination
        .strip_prefix("local://")
        .unwrap_or_default()
        .to_owned();
    MessageLabels {
        message_type: env.map(|e| e.message_type.clone()).unwrap_or_default(),
        plugin,
    }
}

fn failure_labels(row: &ClaimedRow, env: Option<&Envelope>, kind: &str) -> FailureLabels {
    let MessageLabels {
        message_type,
        plugin,
    } = message_labels(row, env);
    FailureLabels {
        message_type,
        plugin,
        kind: kind.to_owned(),
    }
}
