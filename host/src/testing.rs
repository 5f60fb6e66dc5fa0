//! Test support: a tracked session sends a message into a running in-process
//! [`Host`] and waits, with a deadline, until it and every message it caused
//! (followed by causation id across local queues) are handled or
//! dead-lettered. Messages scheduled for later are recorded, not waited for.
//!
//! ```no_run
//! # async fn demo(host: &jasper_host::Host) -> anyhow::Result<()> {
//! let outcome = host
//!     .tracked()
//!     .send_json("PlaceOrder", &serde_json::json!({"order_id": "o-1", "amount_cents": 100}))
//!     .await?;
//! assert!(outcome.handled_of("OrderPlaced").count() == 1);
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::envelope::{Envelope, now_ms};
use crate::host::Host;
use crate::store::DeadLetter;

/// What a tracked message and its consequences came to.
#[derive(Debug, Default, Clone)]
pub struct Tracked {
    /// Every tracked message that was handled, in commit order.
    pub handled: Vec<Envelope>,
    /// Every message a tracked handler sent, published or scheduled.
    pub sent: Vec<Envelope>,
    /// Tracked messages scheduled for later (not waited for).
    pub scheduled: Vec<Envelope>,
    /// Tracked messages moved to dead letters.
    pub dead_lettered: Vec<DeadLetter>,
    /// Messages tracked handlers published that nobody takes (no
    /// subscriber, no route): not waited for; see `handling.unrouted`.
    pub unrouted: Vec<Envelope>,
}

impl Tracked {
    pub fn handled_of<'a>(&'a self, message_type: &'a str) -> impl Iterator<Item = &'a Envelope> {
        self.handled
            .iter()
            .filter(move |e| e.message_type == message_type)
    }

    pub fn sent_of<'a>(&'a self, message_type: &'a str) -> impl Iterator<Item = &'a Envelope> {
        self.sent
            .iter()
            .filter(move |e| e.message_type == message_type)
    }
}

/// A send-and-wait, built by [`Host::tracked`].
#[derive(Debug)]
pub struct TrackedSession<'a> {
    host: &'a Host,
    timeout: Duration,
}

impl Host {
    /// Start a tracked session (default deadline 30 s).
    pub fn tracked(&self) -> TrackedSession<'_> {
        TrackedSession {
            host: self,
            timeout: Duration::from_secs(30),
        }
    }
}

impl TrackedSession<'_> {
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Send a JSON message and wait for it and everything it causes.
    pub async fn send_json<T: serde::Serialize>(
        self,
        message_type: &str,
        body: &T,
    ) -> anyhow::Result<Tracked> {
        let body = serde_json::to_vec(body).context("encoding the message body")?;
        self.send(message_type, body, None).await
    }

    /// Send raw bytes (optionally with a fixed id) and wait.
    pub(crate) async fn send(
        self,
        message_type: &str,
        body: Vec<u8>,
        id: Option<Uuid>,
    ) -> anyhow::Result<Tracked> {
        // Subscribe before sending so no batch is missed.
        let mut events = self.host.subscribe();
        let first = self.host.send(message_type, body, id).await?;
        let mut known: HashSet<Uuid> = first.iter().map(|e| e.id).collect();
        let mut pending = known.clone();
        let mut out = Tracked::default();
        let deadline = tokio::time::Instant::now() + self.timeout;
        while !pending.is_empty() {
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => bail!(
                    "tracked session timed out after {:?} with {} message(s) not handled: {:?}",
                    self.timeout,
                    pending.len(),
                    pending
                ),
                Ok(Err(RecvError::Lagged(n))) => {
                    bail!("tracked session fell {n} batches behind the host")
                }
                Ok(Err(RecvError::Closed)) => bail!("the host stopped during a tracked session"),
                Ok(Ok(event)) => event,
            };
            for env in &event.handled {
                if pending.remove(&env.id) {
                    out.handled.push(env.clone());
                }
            }
            let now = now_ms();
            for env in &event.sent {
                if !caused_by(env, &known) {
                    continue;
                }
                known.insert(env.id);
                out.sent.push(env.clone());
                if env.scheduled_at.is_some_and(|t| t > now) {
                    out.scheduled.push(env.clone());
                } else {
                    pending.insert(env.id);
                }
            }
            for env in &event.unrouted {
                if caused_by(env, &known) {
                    out.unrouted.push(env.clone());
                }
            }
            for dead in &event.dead_lettered {
                if pending.remove(&dead.id) {
                    out.dead_lettered.push(dead.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Whether `env` was caused by one of the `known` messages.
fn caused_by(env: &Envelope, known: &HashSet<Uuid>) -> bool {
    env.causation_id
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok())
        .is_some_and(|c| known.contains(&c))
}
