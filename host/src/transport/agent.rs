//! The sending agent of one peer, shared by every transport: batches by
//! count and by a short window, drops what expired (`deliver_by`) before each
//! send, retries a failed batch with backoff, opens the circuit breaker after
//! repeated failures (holding what it has and pinging until the peer answers),
//! and settles each envelope by the peer's verdict: an accepted durable
//! envelope's outgoing row is deleted, a rejected one is dead-lettered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, field, info, info_span, warn};
use uuid::Uuid;

use super::{Connector, Link, LinkError, Outgoing, Verdict, dead_letter_outgoing};
use crate::backoff::{Backoff, Wake, pause};
use crate::config::SendingConfig;
#[cfg(not(test))]
use crate::envelope::now_ms;
#[cfg(test)]
use crate::paused::now_ms;
use crate::store::{DeadLetterKind, MessageStore};

/// Longest wait between retries of a failing peer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One peer's agent; see the module docs.
pub(crate) struct Agent {
    connector: Arc<dyn Connector>,
    store: Arc<dyn MessageStore>,
    cfg: SendingConfig,
    link: Option<Box<dyn Link>>,
    pending: VecDeque<Outgoing>,
    failures: u32,
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
        }
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
        let peer = self.connector.peer().to_string();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if self.pending.is_empty() {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(items) => self.pending.extend(items),
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            self.fill(rx).await;
            let n = self.pending.len().min(self.cfg.batch_size);
            let batch: Vec<Outgoing> = self.pending.drain(..n).collect();
            let batch = self.drop_expired(batch).await;
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
                    self.settle(batch, verdicts).instrument(span).await;
                }
                Err(e) => {
                    span.record("ack", "failed");
                    self.link = None;
                    self.failures += 1;
                    warn!(event = %"send-failed", peer = %peer, error = %e, size = batch.len(), failures = self.failures, "sending a batch failed; it will be sent again");
                    for o in batch.into_iter().rev() {
                        self.pending.push_front(o);
                    }
                    let wake = if self.failures >= self.cfg.breaker_failures {
                        self.breaker(rx, shutdown).await
                    } else {
                        let backoff = self.backoff();
                        pause(shutdown, backoff).await
                    };
                    if let Wake::Shutdown = wake {
                        return;
                    }
                }
            }
        }
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
            self.delete_rows(&ids).await;
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

    /// Delete accepted durable rows; dead-letter what the peer refused.
    async fn settle(&self, batch: Vec<Outgoing>, verdicts: Vec<Verdict>) {
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
        self.delete_rows(&accepted).await;
        if let Err(e) = dead_letter_outgoing(&*self.store, &refused).await {
            error!(error = %crate::error_chain(&e), "dead-lettering refused messages failed; they stay in outgoing and are sent again after a restart");
        }
    }

    /// Delete confirmed rows. A failure leaves them owned by this node: they
    /// are sent again after a restart, and the peer's inbox drops the copies.
    async fn delete_rows(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), MAX_BACKOFF);
        for attempt in 1..=5 {
            match self.store.delete_outgoing(ids).await {
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

    /// The circuit is open: hold the envelopes, ping every interval, and
    /// return once a ping succeeds (the link kept for the next batch).
    async fn breaker(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Vec<Outgoing>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Wake {
        let peer = self.connector.peer().to_string();
        warn!(event = %"circuit-open", peer = %peer, failures = self.failures, held = self.pending.len(), "circuit open: sending to this peer paused until a ping succeeds");
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
                    return Wake::Go;
                }
                Err(e) => debug!(peer = %peer, error = %e, "ping failed; circuit stays open"),
            }
        }
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
