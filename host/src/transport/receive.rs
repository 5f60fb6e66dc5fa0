//! The receiving side every listener shares: a batch of decoded envelopes is
//! routed to this host's plugins (one copy per subscriber, or the one queue
//! the destination names) and either committed to the inbox in one
//! transaction (`durable://`: the acknowledgement waits for it) or queued
//! in memory for the worker (`tcp://`). Returns a verdict per envelope; a
//! duplicate id is accepted and dropped by the inbox. A listener may have
//! the rows claimed for this node in the same transaction and handed to the
//! worker at once (`handling::handoff`), when the worker has room for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tracing::{debug, info};
use uuid::Uuid;

use super::wire::Verdict;
use crate::address::{Destination, Endpoint};
use crate::admin::Metrics;
use crate::envelope::{CodecError, Envelope, local_row, now_ms};
use crate::handling::handoff::Handoff;
use crate::runtime::{LivePlugins, Plugins};
use crate::store::{ClaimedRow, MessageStore, NewIncoming, StoreError};

/// Capacity of the in-memory queue of `tcp://` messages (batches).
pub(crate) const MEMORY_QUEUE_BATCHES: usize = 64;

/// Why a received batch could not be taken; the sender gets no ack and
/// sends it again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ReceiveError {
    #[error("the inbox could not store the batch")]
    Store(#[from] StoreError),
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// Where received messages go.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    pub store: Arc<dyn MessageStore>,
    /// The plugins now (one snapshot per received batch).
    pub plugins: Arc<LivePlugins>,
    /// Wakes the worker after an inbox commit.
    pub wake: Arc<Notify>,
    /// The worker's in-memory queue (`tcp://` listeners).
    pub memory: mpsc::Sender<Vec<Envelope>>,
    /// Rows claimed as they are written, for the worker ([`Keep::Handed`]).
    pub handoff: Arc<Handoff>,
    /// This node: the owner of rows claimed as they are written.
    pub node_id: i64,
    /// `messages_received`, labelled with `via`.
    pub metrics: Arc<Metrics>,
    /// How messages come in here: `tcp`, `durable`, `rabbitmq`, `amqp`, `asb` or `http`.
    pub via: &'static str,
}

/// Where a listener keeps what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// The worker's in-memory queue (`tcp://`).
    Memory,
    /// The inbox, for the worker to claim (`durable://` with `[tcp]
    /// hand_to_worker = false`).
    Inbox,
    /// The inbox, claimed for this node in the same transaction and handed
    /// to the worker once committed, when it has room; else as `Inbox`.
    Handed,
}

impl Inbox {
    /// This inbox for messages that come `via` a listener kind.
    pub(crate) fn via(&self, via: &'static str) -> Inbox {
        Inbox {
            via,
            ..self.clone()
        }
    }

    /// Route one batch, then store it or queue it as `keep` says; a
    /// verdict per entry, in order.
    pub(crate) async fn receive_as(
        &self,
        entries: Vec<Result<Envelope, CodecError>>,
        keep: Keep,
    ) -> Result<Vec<Verdict>, ReceiveError> {
        let now = now_ms();
        let mut verdicts = Vec::with_capacity(entries.len());
        let mut accepted = Vec::with_capacity(entries.len());
        let plugins = self.plugins.snapshot();
        // Accepted messages per type (a batch holds few types).
        let mut received: Vec<(String, u64)> = Vec::new();
        for entry in entries {
            match entry {
                Err(e) => verdicts.push(Verdict::Rejected(format!(
                    "the envelope cannot be decoded: {}",
                    crate::error_chain(&e)
                ))),
                Ok(env) if env.is_expired(now) => {
                    info!(message_id = %env.id, message_type = %env.message_type, "received after its deliver_by; discarded");
                    verdicts.push(Verdict::Accepted);
                }
                Ok(env) => {
                    if crate::telemetry::enabled() {
                        received_span(&env, self.via);
                    }
                    match route(&plugins, env) {
                        Ok(copies) => {
                            if let Some(t) = copies.first().map(|c| c.message_type.as_str()) {
                                match received.iter_mut().find(|(k, _)| k == t) {
                                    Some((_, n)) => *n += 1,
                                    None => received.push((t.to_owned(), 1)),
                                }
                            }
                            accepted.extend(copies);
                            verdicts.push(Verdict::Accepted);
                        }
                        Err(v) => verdicts.push(v),
                    }
                }
            }
        }
        if accepted.is_empty() {
            return Ok(verdicts);
        }
        if keep != Keep::Memory {
            let room = match keep {
                Keep::Handed => self.handoff.room(),
                _ => None,
            };
            let mut rows: Vec<_> = accepted.iter().map(local_row).collect();
            if room.is_some() {
                // Claimed as the worker's claim would: owned, this attempt
                // counted (the fence of its commit). Scheduled rows wait.
                for r in rows.iter_mut().filter(|r| r.execute_at.is_none()) {
                    r.owner_id = self.node_id;
                    r.attempts = 1;
                }
            }
            let report = self.store.insert_incoming(&rows).await?;
            if !report.duplicates.is_empty() {
                debug!(
                    duplicates = report.duplicates.len(),
                    "received messages already in the inbox; dropped"
                );
            }
            if let Some(room) = room {
                // The rows inserted, once each, as a claim would return
                // them (a second copy of an id in the batch is a duplicate).
                let mut inserted = inserted_ids(&rows, &report.duplicates);
                let claimed = rows
                    .into_iter()
                    .filter(|r| {
                        r.owner_id == self.node_id
                            && inserted.as_mut().is_none_or(|ids| ids.remove(&r.id))
                    })
                    .map(|r| ClaimedRow {
                        id: r.id,
                        attempts: 0,
                        claim: 1,
                        destination: r.destination,
                        body: r.body,
                    })
                    .collect();
                room.hand(claimed);
            }
            self.wake.notify_one();
        } else {
            self.memory
                .send(accepted)
                .await
                .map_err(|_| ReceiveError::ShuttingDown)?;
        }
        for (message_type, n) in received {
            self.metrics.received(&message_type, self.via, n);
        }
        Ok(verdicts)
    }
}

/// The local copies of one envelope, or the verdict refusing it.
/// The `receive` span of a message that came in (traces only): part of
/// its sender's trace.
fn received_span(env: &Envelope, via: &'static str) {
    let span = tracing::info_span!("receive", via);
    crate::telemetry::adopt(&span, &env.headers);
    let to = env.destination.as_ref().map(|d| d.uri()).unwrap_or("");
    crate::telemetry::describe(&span, "receive", to, &env.id.to_string());
}

fn route(plugins: &Plugins, env: Envelope) -> Result<Vec<Envelope>, Verdict> {
    // Only a TCP URI names a queue on this host; anything else (none, a
    // RabbitMQ listener, a URI that does not parse) is routed by type.
    let queue = match env.destination.as_ref().map(Destination::endpoint) {
        Some(Ok(Endpoint::Tcp(t))) => t.queue.clone(),
        _ => None,
    };
    let destinations = match queue {
        Some(plugin) => match plugins.get(&plugin) {
            // Unloaded by a reload: taken, and it waits in the inbox
            // until the plugin is back (see `handling`).
            None if plugins.was_removed(&plugin) => vec![Endpoint::local(plugin)],
            None => {
                return Err(Verdict::UnknownDestination(format!(
                    "no plugin named '{plugin}' is loaded on this host"
                )));
            }
            Some(p) if !p.subscriptions.contains(&env.message_type) => {
                return Err(Verdict::Rejected(format!(
                    "plugin '{plugin}' does not handle message type '{}'",
                    env.message_type
                )));
            }
            Some(_) => vec![Endpoint::local(plugin)],
        },
        None => {
            let subs = plugins.router().local_destinations(&env.message_type);
            if subs.is_empty() {
                return Err(Verdict::Rejected(format!(
                    "no plugin on this host handles message type '{}'",
                    env.message_type
                )));
            }
            subs
        }
    };
    // The last copy is the envelope itself: one destination, no clone.
    let base = env.id;
    let last = destinations.len().saturating_sub(1);
    let mut original = Some(env);
    let mut copies = Vec::with_capacity(destinations.len());
    for (k, dest) in destinations.into_iter().enumerate() {
        let copy = if k == last {
            original.take()
        } else {
            original.clone()
        };
        let Some(mut copy) = copy else { break };
        let dest = Destination::from(dest);
        if k > 0 {
            // Derived, so a resent envelope dedupes in every copy.
            copy.id = Uuid::new_v5(&base, dest.uri().as_bytes());
        }
        copy.attempts = 0;
        copy.destination = Some(dest);
        copies.push(copy);
    }
    Ok(copies)
}

/// The ids of `rows` an insert that reported `duplicates` wrote; `None`:
/// every row (no duplicate, so no id twice either).
fn inserted_ids(rows: &[NewIncoming], duplicates: &[Uuid]) -> Option<HashSet<Uuid>> {
    if duplicates.is_empty() {
        return None;
    }
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for r in rows {
        *copies.entry(r.id).or_default() += 1;
    }
    for d in duplicates {
        if let Some(n) = copies.get_mut(d) {
            *n = n.saturating_sub(1);
        }
    }
    Some(
        copies
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, _)| id)
            .collect(),
    )
}
