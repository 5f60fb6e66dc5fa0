//! Transports: how messages leave this host and how they arrive from others.
//!
//! Every transport plugs into the same two mechanics, so batching, retries,
//! the circuit breaker, expiry and inbox writes exist once:
//! - sending: a [`Connector`] opens a [`Link`] to one peer; the [`agent`]
//!   of each peer batches envelopes, sends them over the link, retries with
//!   backoff, opens the breaker after repeated failures, and deletes a
//!   durable envelope's outgoing row only when the peer confirmed it;
//!   [`Senders`] starts one agent per peer and hands each its envelopes.
//! - receiving: a listener gives each batch it decoded to the [`receive`]
//!   inbox, which routes it to local plugins, commits it (durable) or queues
//!   it in memory (`tcp://`), and returns a verdict per envelope for the
//!   acknowledgement.
//!
//! `wire` is the TCP protocol; `tcp` the TCP transport; `rabbitmq` the
//! RabbitMQ transport; `amqp1` the AMQP 1.0 transport (plain brokers and
//! Azure Service Bus); `broker` what the broker listeners share. What URIs mean is [`crate::address`]'s.

pub(crate) mod agent;
pub(crate) mod amqp1;
pub(crate) mod broker;
pub mod rabbitmq;
pub(crate) mod receive;
pub mod tcp;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::error;
use uuid::Uuid;

use crate::address::{Destination, Endpoint};
use crate::config::SendingConfig;
use crate::envelope::{Envelope, now_ms};
use crate::store::{
    CommitBatch, DeadLetter, DeadLetterCause, DeadLetterKind, MessageStore, NewOutgoing,
    OutgoingRow,
};
pub use wire::Verdict;

/// An envelope on its way to a remote destination.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: Uuid,
    pub message_type: String,
    /// The full destination (peer and optional queue); one that does not
    /// parse (an old row) is dead-lettered by [`Senders::dispatch`].
    pub destination: Destination,
    pub deliver_by: Option<i64>,
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// It has an outgoing row (`durable://`), deleted once the peer confirms.
    pub durable: bool,
}

impl Outgoing {
    pub fn from_envelope(env: &Envelope, durable: bool) -> Outgoing {
        Outgoing {
            id: env.id,
            message_type: env.message_type.clone(),
            destination: env
                .destination
                .clone()
                .unwrap_or_else(|| Destination::parse("")),
            deliver_by: env.deliver_by,
            body: env.encode(),
            durable,
        }
    }

    /// The outgoing row of a durable envelope, owned by `node_id`.
    pub fn row(&self, node_id: i64) -> NewOutgoing {
        NewOutgoing {
            id: self.id,
            destination: self.destination.uri().to_string(),
            deliver_by: self.deliver_by,
            attempts: 0,
            message_type: self.message_type.clone(),
            owner_id: node_id,
            body: self.body.clone(),
        }
    }

    /// The envelope a link sends; a stored body that does not decode is a
    /// refusal (the agent dead-letters it), not a reason to retry.
    pub(crate) fn envelope(&self) -> Result<Envelope, Verdict> {
        Envelope::decode(&self.body)
            .map_err(|e| Verdict::Rejected(format!("the stored envelope cannot be decoded: {e}")))
    }

    /// An outgoing row taken back from the store (recovery).
    pub(crate) fn from_row(row: OutgoingRow, message_type: String) -> Outgoing {
        Outgoing {
            id: row.id,
            message_type,
            destination: Destination::parse(row.destination),
            deliver_by: row.deliver_by,
            body: row.body,
            durable: true,
        }
    }
}

/// Why a link failed; the agent retries, so this is a report, not a verdict.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LinkError(pub String);

impl LinkError {
    pub(crate) fn from_error(e: &(dyn std::error::Error + 'static)) -> LinkError {
        LinkError(crate::error_chain(e))
    }
}

/// Opens links to one peer.
#[async_trait]
pub(crate) trait Connector: Send + Sync + std::fmt::Debug {
    /// The peer, for logs (`durable://10.0.0.2:2222`).
    fn peer(&self) -> &str;
    /// Connect and authenticate.
    async fn connect(&self) -> Result<Box<dyn Link>, LinkError>;
    /// Batches its links may have unanswered at once ([`Link::start`] and
    /// [`Link::finish`]); 1: [`Link::send`] only, one at a time.
    fn window(&self) -> usize {
        1
    }
}

/// One open connection to a peer.
#[async_trait]
pub(crate) trait Link: Send + Sync {
    /// Send a batch; the peer's verdict per envelope, in order.
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError>;
    /// Send a batch without waiting for its answer (links of a connector
    /// with a [`Connector::window`] over 1).
    async fn start(&mut self, _batch: &[Outgoing]) -> Result<(), LinkError> {
        Err(LinkError("this link sends one batch at a time".into()))
    }
    /// The verdicts on the oldest batch [`Link::start`] sent and not
    /// answered yet. Cancel-safe: the agent stops waiting when more
    /// envelopes arrive, and calls it again.
    async fn finish(&mut self) -> Result<Vec<Verdict>, LinkError> {
        Err(LinkError("this link sends one batch at a time".into()))
    }
    /// Check that the peer answers.
    async fn ping(&mut self) -> Result<(), LinkError>;
    /// End the connection on purpose (at shutdown), within a short bound;
    /// a link with nothing to say on closing just drops.
    async fn close(&mut self) {}
}

/// The verdicts of a batch a broker link sent: `verdicts` holds one entry
/// per envelope, `None` for those `pending` answers (its index and the
/// broker's answer to come), which are awaited together within `timeout`
/// and turned into verdicts by `judge` (an error fails the whole batch:
/// the agent sends it again).
pub(crate) async fn await_answers<F, T, E>(
    mut verdicts: Vec<Option<Verdict>>,
    pending: Vec<(usize, F)>,
    timeout: std::time::Duration,
    what: &str,
    judge: impl Fn(Result<T, E>) -> Result<Verdict, LinkError>,
) -> Result<Vec<Verdict>, LinkError>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let answers = tokio::time::timeout(
        timeout,
        futures::future::join_all(
            pending
                .into_iter()
                .map(|(i, f)| async move { (i, f.await) }),
        ),
    )
    .await
    .map_err(|_| {
        LinkError(format!(
            "no {what} within {timeout:?}; the batch will be sent again"
        ))
    })?;
    for (i, answer) in answers {
        if let Some(v) = verdicts.get_mut(i) {
            *v = Some(judge(answer)?);
        }
    }
    verdicts
        .into_iter()
        .map(|v| v.ok_or_else(|| LinkError(format!("a {what} is missing"))))
        .collect()
}

/// Move outgoing envelopes that can never be delivered to dead letters, then
/// delete their rows: two commits, dead letters first. A crash between them
/// leaves the row to be sent again; the peer refuses it again and the dead
/// letter is written over with the same id (nothing is lost or doubled).
pub(crate) async fn dead_letter_outgoing(
    store: &dyn MessageStore,
    items: &[(&Outgoing, DeadLetterKind, String)],
) -> crate::store::StoreResult<()> {
    if items.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut commit = CommitBatch::default();
    for (o, kind, message) in items {
        let source = Envelope::decode(&o.body).ok().and_then(|e| e.source);
        commit.dead_letters.push(DeadLetter::new(
            o.id,
            o.message_type.clone(),
            o.destination.uri().to_string(),
            source,
            o.body.clone(),
            DeadLetterCause::unhandled(kind.clone(), message.clone()),
            now,
        ));
    }
    store.commit(&commit).await?;
    let durable: Vec<Uuid> = items
        .iter()
        .filter(|(o, ..)| o.durable)
        .map(|(o, ..)| o.id)
        .collect();
    if !durable.is_empty() {
        store.delete_outgoing(&durable).await?;
    }
    Ok(())
}

/// The sending agents of this host, one per peer, started on first use.
#[derive(Debug)]
pub struct Senders {
    store: Arc<dyn MessageStore>,
    config: SendingConfig,
    tcp: Arc<tcp::TcpSettings>,
    rabbit: Arc<rabbitmq::RabbitSettings>,
    amqp: Arc<amqp1::AmqpSettings>,
    agents: Mutex<HashMap<String, mpsc::UnboundedSender<Vec<Outgoing>>>>,
    shutdown: watch::Receiver<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Where agents report their circuit (`with_metrics`).
    metrics: Option<Arc<crate::admin::Metrics>>,
}

impl Senders {
    pub(crate) fn new(
        store: Arc<dyn MessageStore>,
        config: SendingConfig,
        tcp: Arc<tcp::TcpSettings>,
        rabbit: Arc<rabbitmq::RabbitSettings>,
        amqp: Arc<amqp1::AmqpSettings>,
        shutdown: watch::Receiver<bool>,
    ) -> Senders {
        Senders {
            store,
            config,
            tcp,
            rabbit,
            amqp,
            agents: Mutex::new(HashMap::new()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            metrics: None,
        }
    }

    /// Agents report their circuit state to `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::admin::Metrics>) -> Senders {
        self.metrics = Some(metrics);
        self
    }

    /// Hand envelopes to their peers' agents. An envelope whose destination
    /// no transport serves is dead-lettered (its row deleted).
    pub async fn dispatch(&self, items: Vec<Outgoing>) {
        let mut by_peer: HashMap<String, (Endpoint, Vec<Outgoing>)> = HashMap::new();
        let mut unroutable = Vec::new();
        for o in items {
            let (key, endpoint) = match o.destination.endpoint() {
                // One agent per TCP peer, whatever queue on it.
                Ok(Endpoint::Tcp(t)) => (t.peer_uri(), Endpoint::Tcp(t.clone())),
                // One agent per queue, exchange or AMQP 1.0 node.
                Ok(e @ (Endpoint::Rabbit(_) | Endpoint::Amqp(_))) => (e.to_string(), e.clone()),
                Ok(other) => {
                    let why = format!("{other} is not a remote destination");
                    unroutable.push((o, why));
                    continue;
                }
                Err(e) => {
                    let why = e.to_string();
                    unroutable.push((o, why));
                    continue;
                }
            };
            by_peer
                .entry(key)
                .or_insert_with(|| (endpoint, Vec::new()))
                .1
                .push(o);
        }
        if !unroutable.is_empty() {
            let items: Vec<_> = unroutable
                .iter()
                .map(|(o, why)| (o, DeadLetterKind::NoRoute, why.clone()))
                .collect();
            if let Err(e) = dead_letter_outgoing(&*self.store, &items).await {
                error!(error = %crate::error_chain(&e), "dead-lettering unroutable outgoing messages failed; they stay in outgoing");
            }
        }
        #[allow(clippy::unwrap_used)] // a poisoned lock means a panic elsewhere already
        let mut agents = self.agents.lock().unwrap();
        for (peer, (endpoint, batch)) in by_peer {
            let tx = agents.entry(peer.clone()).or_insert_with(|| {
                let connector: Arc<dyn Connector> = match endpoint {
                    Endpoint::Tcp(t) => Arc::new(tcp::sender::TcpConnector::new(
                        t,
                        self.tcp.clone(),
                        std::time::Duration::from_millis(self.config.connect_timeout_ms),
                        std::time::Duration::from_millis(self.config.ack_timeout_ms),
                        self.config.batches_in_flight,
                    )),
                    Endpoint::Rabbit(r) => Arc::new(rabbitmq::sender::RabbitConnector::new(
                        peer.clone(),
                        r,
                        self.rabbit.clone(),
                        self.config.batches_in_flight,
                    )),
                    Endpoint::Amqp(a) => Arc::new(amqp1::sender::AmqpConnector::new(
                        peer.clone(),
                        a,
                        self.amqp.clone(),
                    )),
                    Endpoint::Local { .. } => unreachable!("grouped above"),
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let mut agent =
                    agent::Agent::new(connector, self.store.clone(), self.config.clone());
                if let Some(m) = &self.metrics {
                    agent = agent.with_metrics(m.clone());
                }
                #[allow(clippy::unwrap_used)]
                self.tasks
                    .lock()
                    .unwrap()
                    .push(tokio::spawn(agent.run(rx, self.shutdown.clone())));
                tx
            });
            // The agent ends only at shutdown; what it did not send then
            // stays in outgoing (durable) or is dropped (tcp://).
            let _ = tx.send(batch);
        }
    }

    /// Wait for every agent to stop (after shutdown was signalled).
    pub(crate) async fn join(&self) {
        #[allow(clippy::unwrap_used)]
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Rows fetched per recovery query.
const RELAY_PAGE: usize = 500;

/// Pick up outgoing rows no sender holds (owner 0: left by a crashed or
/// stopped node and released by recovery or `storage release`) and hand them
/// to their agents, every `interval` until shutdown. `jasper-host send` writes
/// no outgoing row: a routed type becomes an inbox row addressed to the peer,
/// which the worker forwards.
pub(crate) async fn run_relay(
    store: Arc<dyn MessageStore>,
    senders: Arc<Senders>,
    node_id: i64,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        loop {
            match store.claim_outgoing(node_id, RELAY_PAGE).await {
                Ok(rows) => {
                    let n = rows.len();
                    if n > 0 {
                        tracing::info!(event = %"relayed", rows = n, "sending outgoing messages left unsent");
                        let items = rows
                            .into_iter()
                            .map(|row| {
                                let message_type = Envelope::decode(&row.body)
                                    .map(|e| e.message_type)
                                    .unwrap_or_default();
                                Outgoing::from_row(row, message_type)
                            })
                            .collect();
                        senders.dispatch(items).await;
                    }
                    if n < RELAY_PAGE {
                        break;
                    }
                }
                Err(e) => {
                    error!(error = %crate::error_chain(&e), "claiming unsent outgoing messages failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
