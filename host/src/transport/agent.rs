//! The sending agent of one peer, shared by every transport: batches by
//! count and by a short window, drops what expired (`deliver_by`) before each
//! send, retries a failed batch with backoff, opens the circuit breaker after
//! repeated failures (holding what it has and pinging until the peer answers),
//! and settles each envelope by the peer's verdict: an accepted durable
//! envelope's outgoing row is deleted, a rejected one is dead-lettered.
//!
//! A link whose connector has a window over 1 (`[sending] batches_in_flight`
//! for TCP peers) has several batches unanswered at once: the next batch
//! leaves while the peer commits the ones before, and the rows of accepted
//! envelopes are deleted off the send path, the rows of every answer that
//! came meanwhile in one statement. A row is still deleted only after the
//! peer's answer accepted it; a failure sends every unanswered batch again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};
use uuid::Uuid;

use super::{Connector, Link, LinkError, Outgoing, Verdict, dead_letter_outgoing};
use crate::admin::Metrics;
use crate::backoff::{Backoff, Wake, pause};
use crate::config::SendingConfig;
#[cfg(not(test))]
use crate::envelope::now_ms;
#[cfg(test)]
use crate::paused::now_ms;
use crate::store::{DeadLetterKind, MessageStore};

/// Longest wait between retries of a failing peer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a stopping agent waits for the deletes of confirmed rows still
/// queued; a row not deleted by then is sent again after a restart and
/// dropped by the peer's inbox as a duplicate.
const DELETE_DRAIN: Duration = Duration::from_secs(5);

/// One peer's agent; see the module docs.
pub(crate) struct Agent {
    connector: Arc<dyn Connector>,
    store: Arc<dyn MessageStore>,
    cfg: SendingConfig,
    link: Option<Box<dyn Link>>,
    pending: VecDeque<Outgoing>,
    failures: u32,
    /// `circuit_open{peer}`, when the host keeps metrics.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("peer", &self.connector.peer())
            .field("pending", &self.pending.len())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub(crate) fn new(
        connector: Arc<dyn Connector>,
        store: Arc<dyn MessageStore>,
        cfg: SendingConfig,
    ) -> Agent {
        Agent {
            connector,
            store,
            cfg,
            link: None,
            pending: VecDeque::new(),
            failures: 0,
            metrics: None,
        }
    }

    /// Report the circuit's state to `metrics` (closed now).
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Agent {
        metrics.circuit(self.connector.peer(), false);
        self.metrics = Some(metrics);
        self
    }

    /// Send what arrives on `rx` until shutdown, then close the link. Durable
    /// envelopes not sent by then stay in the outgoing table for the next run.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Vec<Outgoing>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.serve(&mut rx, &mut shutdown).await;
        // Closed on purpose, not dropped: the peer (and the client library)
        // see a clean close rather than a lost connection.
        if let Some(mut link) = self.link.take() {
            link.close().await;
        }
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let window = self.connector.window();
        if window > 1 {
            return self.serve_windowed(rx, shutdown, window).await;
        }
        let peer = self.connector.peer().to_string();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !self.gather(rx, shutdown).await {
                return;
            }
            let batch = self.take_batch().await;
            if batch.is_empty() {
                continue;
            }
            let span =
                info_span!("send_batch", peer = %peer, size = batch.len(), ack = field::Empty);
            // Shutdown does not wait for a peer that hangs: the batch's rows
            // stay in outgoing for the next run.
            let result = tokio::select! {
                r = self.send(&batch).instrument(span.clone()) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(verdicts) => {
                    self.failures = 0;
                    self.settle(batch, verdicts, None).instrument(span).await;
                }
                Err(e) => {
                    span.record("ack", "failed");
                    if let Wake::Shutdown = self.failed(&peer, &e, batch, rx, shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// [`Agent::serve`] with up to `window` batches unanswered on the link
    /// (see the module docs).
    async fn serve_windowed(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
        window: usize,
    ) {
        let peer = self.connector.peer().to_string();
        let deletes = Deletes::start(self.store.clone());
        // Sent and not answered yet, oldest first.
        let mut in_flight: VecDeque<(Vec<Outgoing>, Span)> = VecDeque::new();
        'serve: loop {
            if *shutdown.borrow() {
                break;
            }
            if in_flight.is_empty() {
                if !self.gather(rx, shutdown).await {
                    break;
                }
            } else {
                while let Ok(items) = rx.try_recv() {
                    self.pending.extend(items);
                }
                self.trim_held();
            }
            // The first batch leaves whatever its size; behind unanswered
            // ones only full batches (a short one may still fill meanwhile).
            let mut failure = None;
            while in_flight.len() < window
                && !self.pending.is_empty()
                && (in_flight.is_empty() || self.pending.len() >= self.cfg.batch_size)
            {
                let batch = self.take_batch().await;
                if batch.is_empty() {
                    continue;
                }
                let span =
                    info_span!("send_batch", peer = %peer, size = batch.len(), ack = field::Empty);
                // Shutdown does not wait for a peer that hangs; see `serve`.
                let started = tokio::select! {
                    r = self.start(&batch).instrument(span.clone()) => r,
                    _ = shutdown.changed() => break 'serve,
                };
                match started {
                    Ok(()) => in_flight.push_back((batch, span)),
                    Err(e) => {
                        span.record("ack", "failed");
                        failure = Some((e, batch));
                        break;
                    }
                }
            }
            if failure.is_none()
                && let Some(expected) = in_flight.front().map(|(b, _)| b.len())
            {
                // While the window has room, what arrives meanwhile may
                // make a full batch to send before this answer comes.
                let answer = tokio::select! {
                    r = self.finish(expected) => Some(r),
                    got = rx.recv(), if in_flight.len() < window => match got {
                        Some(items) => {
                            self.pending.extend(items);
                            None
                        }
                        None => break 'serve,
                    },
                    _ = shutdown.changed() => break 'serve,
                };
                let Some(answer) = answer else {
                    continue 'serve;
                };
                match answer {
                    Ok(verdicts) => {
                        self.failures = 0;
                        if let Some((batch, span)) = in_flight.pop_front() {
                            self.settle(batch, verdicts, Some(&deletes))
                                .instrument(span)
                                .await;
                        }
                    }
                    Err(e) => failure = Some((e, Vec::new())),
                }
            }
            let Some((e, unsent)) = failure else {
                continue;
            };
            // Every batch not answered goes again, in the order it had.
            let mut again = Vec::new();
            for (batch, span) in in_flight.drain(..) {
                span.record("ack", "failed");
                again.extend(batch);
            }
            again.extend(unsent);
            if let Wake::Shutdown = self.failed(&peer, &e, again, rx, shutdown).await {
                break;
            }
        }
        deletes.finish().await;
    }

    /// Send a batch without waiting for its answer, connecting first if
    /// need be.
    async fn start(&mut self, batch: &[Outgoing]) -> Result<(), LinkError> {
        if self.link.is_none() {
            self.link = Some(self.connector.connect().await?);
            debug!(peer = %self.connector.peer(), "connected");
        }
        let Some(link) = self.link.as_mut() else {
            return Err(LinkError("no link".into()));
        };
        link.start(batch).await
    }

    /// The verdicts on the oldest unanswered batch, of `expected` envelopes.
    /// Cancel-safe: the answer not read yet is read by the next call.
    async fn finish(&mut self, expected: usize) -> Result<Vec<Verdict>, LinkError> {
        let Some(link) = self.link.as_mut() else {
            return Err(LinkError("no link".into()));
        };
        let verdicts = link.finish().await?;
        if verdicts.len() != expected {
            return Err(LinkError(format!(
                "the peer answered {} verdicts for a batch of {expected}",
                verdicts.len()
            )));
        }
        Ok(verdicts)
    }

    /// Take what else is queued; wait up to the batch window for more while
    /// the batch is not full.
    async fn fill(&mut self, rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>) {
        while let Ok(items) = rx.try_recv() {
            self.pending.extend(items);
        }
        if self.pending.len() < self.cfg.batch_size && self.cfg.batch_window_ms > 0 {
            let window = tokio::time::sleep(Duration::from_millis(self.cfg.batch_window_ms));
            tokio::pin!(window);
            while self.pending.len() < self.cfg.batch_size {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(items) => self.pending.extend(items),
                        None => break,
                    },
                    _ = &mut window => break,
                }
            }
        }
        self.trim_held();
    }

    /// Keep at most `max_held` fire-and-forget envelopes in memory; durable
    /// ones are never dropped (their rows hold them anyway).
    fn trim_held(&mut self) {
        let volatile = self.pending.iter().filter(|o| !o.durable).count();
        let mut excess = volatile.saturating_sub(self.cfg.max_held);
        if excess == 0 {
            return;
        }
        warn!(peer = %self.connector.peer(), dropped = excess, "too many tcp:// messages held for an unreachable peer; dropping the oldest");
        self.pending.retain(|o| {
            if excess > 0 && !o.durable {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// The wait after the current run of failures: `retry_delay_ms` doubled
    /// per failure in a row, at most [`MAX_BACKOFF`].
    /// With nothing pending, wait for envelopes; then take what else came
    /// ([`Agent::fill`]). False when the queue closed or shutdown began.
    async fn gather(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if self.pending.is_empty() {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(items) => self.pending.extend(items),
                    None => return false,
                },
                _ = shutdown.changed() => return false,
            }
        }
        self.fill(rx).await;
        true
    }

    /// The next batch off the queue (at most `batch_size`), what expired
    /// discarded; empty when all of it had.
    async fn take_batch(&mut self) -> Vec<Outgoing> {
        let n = self.pending.len().min(self.cfg.batch_size);
        let batch: Vec<Outgoing> = self.pending.drain(..n).collect();
        self.drop_expired(batch).await
    }

    /// After a failed send: drop the link, put `again` back at the front
    /// of the queue in its order, then wait (the breaker, or a backoff).
    async fn failed(
        &mut self,
        peer: &str,
        e: &LinkError,
        again: Vec<Outgoing>,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Wake {
        self.link = None;
        self.failures += 1;
        warn!(event = %"send-failed", peer = %peer, error = %e, size = again.len(), failures = self.failures, "sending a batch failed; it will be sent again");
        for o in again.into_iter().rev() {
            self.pending.push_front(o);
        }
        if self.failures >= self.cfg.breaker_failures {
            self.breaker(rx, shutdown).await
        } else {
            let backoff = self.backoff();
            pause(shutdown, backoff).await
        }
    }

    fn backoff(&self) -> Duration {
        Backoff::nth(
            Duration::from_millis(self.cfg.retry_delay_ms),
            MAX_BACKOFF,
            self.failures,
        )
    }

    /// Envelopes past their `deliver_by` are not sent; durable ones lose their row.
    async fn drop_expired(&self, batch: Vec<Outgoing>) -> Vec<Outgoing> {
        let now = now_ms();
        let (expired, live): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|o| o.deliver_by.is_some_and(|t| t < now));
        if !expired.is_empty() {
            info!(peer = %self.connector.peer(), expired = expired.len(), "discarding messages whose deliver_by passed before they were sent");
            let ids: Vec<Uuid> = expired.iter().filter(|o| o.durable).map(|o| o.id).collect();
            delete_rows(&*self.store, &ids).await;
        }
        live
    }

    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        if self.link.is_none() {
            self.link = Some(self.connector.connect().await?);
            debug!(peer = %self.connector.peer(), "connected");
        }
        let Some(link) = self.link.as_mut() else {
            return Err(LinkError("no link".into()));
        };
        let verdicts = link.send(batch).await?;
        if verdicts.len() != batch.len() {
            return Err(LinkError(format!(
                "the peer answered {} verdicts for a batch of {}",
                verdicts.len(),
                batch.len()
            )));
        }
        Ok(verdicts)
    }

    /// Delete accepted durable rows (now, or through `deletes`);
    /// dead-letter what the peer refused.
    async fn settle(
        &self,
        batch: Vec<Outgoing>,
        verdicts: Vec<Verdict>,
        deletes: Option<&Deletes>,
    ) {
        let mut accepted = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (o, v) in batch.iter().zip(verdicts) {
            match v {
                Verdict::Accepted => {
                    if o.durable {
                        accepted.push(o.id);
                    }
                }
                Verdict::Rejected(why) => refused.push((o, DeadLetterKind::Rejected, why)),
                Verdict::UnknownDestination(why) => {
                    refused.push((o, DeadLetterKind::UnknownDestination, why))
                }
            }
        }
        let span = tracing::Span::current();
        span.record(
            "ack",
            if refused.is_empty() {
                "received".to_string()
            } else {
                format!("received, {} refused", refused.len())
            },
        );
        for (o, kind, why) in &refused {
            warn!(message_id = %o.id, message_type = %o.message_type, destination = %o.destination, kind = %kind, reason = %why, "the peer refused a message; moved to dead letters");
        }
        match deletes {
            Some(d) => d.queue(accepted),
            None => delete_rows(&*self.store, &accepted).await,
        }
        if let Err(e) = dead_letter_outgoing(&*self.store, &refused).await {
            error!(error = %crate::error_chain(&e), "dead-lettering refused messages failed; they stay in outgoing and are sent again after a restart");
        }
    }

    /// The circuit is open: hold the envelopes, ping every interval, and
    /// return once a ping succeeds (the link kept for the next batch).
    async fn breaker(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Wake {
        let peer = self.connector.peer().to_string();
        warn!(event = %"circuit-open", peer = %peer, failures = self.failures, held = self.pending.len(), "circuit open: sending to this peer paused until a ping succeeds");
        if let Some(m) = &self.metrics {
            m.circuit(&peer, true);
        }
        let interval = Duration::from_millis(self.cfg.ping_interval_ms);
        loop {
            if let Wake::Shutdown = pause(shutdown, interval).await {
                return Wake::Shutdown;
            }
            while let Ok(items) = rx.try_recv() {
                self.pending.extend(items);
            }
            self.trim_held();
            let probe = async {
                let mut link = self.connector.connect().await?;
                link.ping().await?;
                Ok::<_, LinkError>(link)
            };
            match probe.await {
                Ok(link) => {
                    self.link = Some(link);
                    self.failures = 0;
                    info!(event = %"circuit-closed", peer = %peer, held = self.pending.len(), "circuit closed: the peer answered a ping; sending resumes");
                    if let Some(m) = &self.metrics {
                        m.circuit(&peer, false);
                    }
                    return Wake::Go;
                }
                Err(e) => debug!(peer = %peer, error = %e, "ping failed; circuit stays open"),
            }
        }
    }
}

/// Delete confirmed rows. A failure leaves them owned by this node: they
/// are sent again after a restart, and the peer's inbox drops the copies.
async fn delete_rows(store: &dyn MessageStore, ids: &[Uuid]) {
    if ids.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), MAX_BACKOFF);
    for attempt in 1..=5 {
        match store.delete_outgoing(ids).await {
            Ok(_) => return,
            Err(e) if attempt == 5 => {
                error!(error = %crate::error_chain(&e), rows = ids.len(), "deleting confirmed outgoing rows failed; they will be sent again after a restart (the receiver drops duplicates)");
            }
            Err(e) => {
                debug!(error = %crate::error_chain(&e), "deleting confirmed outgoing rows failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The deletes of confirmed rows, off the send path: the ids of every
/// answer queued while one delete runs go in the next one, together.
struct Deletes {
    tx: mpsc::UnboundedSender<Vec<Uuid>>,
    task: JoinHandle<()>,
}

impl Deletes {
    fn start(store: Arc<dyn MessageStore>) -> Deletes {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Uuid>>();
        let task = tokio::spawn(async move {
            while let Some(mut ids) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    ids.extend(more);
                }
                delete_rows(&*store, &ids).await;
            }
        });
        Deletes { tx, task }
    }

    fn queue(&self, ids: Vec<Uuid>) {
        if !ids.is_empty() {
            // The task ends only after `finish` dropped the sender.
            let _ = self.tx.send(ids);
        }
    }

    /// Let the queued deletes run, for at most [`DELETE_DRAIN`].
    async fn finish(self) {
        let Deletes { tx, mut task } = self;
        drop(tx);
        if tokio::time::timeout(DELETE_DRAIN, &mut task).await.is_err() {
            task.abort();
            warn!(
                "deleting confirmed outgoing rows did not finish in time; they will be sent again after a restart (the receiver drops duplicates)"
            );
        }
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
