//! The RabbitMQ side of the shared sending agent: a [`Connector`] per
//! destination queue or exchange, whose [`Link`] is a channel in confirm
//! mode. A batch is published whole, then its confirms are awaited together
//! under the confirm timeout: an ack settles the envelope, an unroutable
//! return is a refusal (dead letter), and a nack, a lost channel or a
//! confirm that never comes fails the batch so the agent sends it again.
//! Up to `[sending] batches_in_flight` batches are published before the
//! confirms of the first are in (the agent's window): the broker confirms
//! one while the next is on its way.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinHandle;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection};

use super::mapping::to_amqp;
use super::{RabbitSettings, close_quietly};
use crate::address::RabbitEndpoint;
use crate::envelope::Envelope;
use crate::transport::{Connector, Link, LinkError, Outgoing, Verdict};

/// Opens confirm-mode channels to one destination.
#[derive(Debug)]
pub(crate) struct RabbitConnector {
    peer: String,
    target: RabbitEndpoint,
    settings: Arc<RabbitSettings>,
    window: usize,
}

impl RabbitConnector {
    /// `window`: batches published before the first one's confirms are in
    /// (1: one at a time).
    pub(crate) fn new(
        peer: String,
        target: RabbitEndpoint,
        settings: Arc<RabbitSettings>,
        window: usize,
    ) -> Self {
        RabbitConnector {
            peer,
            target,
            settings,
            window: window.max(1),
        }
    }
}

fn lapin_err(what: &str) -> impl FnOnce(lapin::Error) -> LinkError + '_ {
    move |e| LinkError(format!("{what}: {}", crate::error_chain(&e)))
}

#[async_trait]
impl Connector for RabbitConnector {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn window(&self) -> usize {
        self.window
    }

    async fn connect(&self) -> Result<Box<dyn Link>, LinkError> {
        // The whole set-up under the connect timeout: a broker that accepts
        // the connection and then hangs must not hold the agent.
        let setup = async {
            let (conn, ch) = self.settings.open().await?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(lapin_err("enabling publisher confirms"))?;
            self.settings.topology(&ch).await?;
            match &self.target {
                RabbitEndpoint::Queue(q) => self.settings.queue(&ch, q).await?,
                RabbitEndpoint::Exchange { name, .. } => self.settings.exchange(&ch, name).await?,
            }
            Ok::<_, LinkError>((conn, ch))
        };
        let (conn, ch) = tokio::time::timeout(self.settings.connect_timeout, setup)
            .await
            .map_err(|_| {
                LinkError(format!(
                    "{}: setting up the channel took longer than {:?}",
                    self.peer, self.settings.connect_timeout
                ))
            })??;
        Ok(Box::new(RabbitLink {
            conn: Some(conn),
            ch,
            target: self.target.clone(),
            confirm_timeout: self.settings.confirm_timeout,
            unanswered: VecDeque::new(),
        }))
    }
}

/// The verdicts of one published batch, once its confirms are in.
type Verdicts = Pin<Box<dyn Future<Output = Result<Vec<Verdict>, LinkError>> + Send>>;

/// One connection and its confirm-mode channel.
pub(crate) struct RabbitLink {
    conn: Option<Connection>,
    ch: Channel,
    target: RabbitEndpoint,
    confirm_timeout: std::time::Duration,
    /// Batches published whose confirms are awaited (each on a task of
    /// its own), oldest first.
    unanswered: VecDeque<JoinHandle<Result<Vec<Verdict>, LinkError>>>,
}

/// A link dropped while the host runs (it failed; the agent connects
/// again) closes in the background; at shutdown the agent closes it first
/// ([`Link::close`]), since a task spawned then may never run.
impl Drop for RabbitLink {
    fn drop(&mut self) {
        // Their batches are sent again on the next link.
        for waiting in self.unanswered.drain(..) {
            waiting.abort();
        }
        if let Some(conn) = self.conn.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(close_quietly(conn));
        }
    }
}

impl RabbitLink {
    fn route(&self, env: &Envelope) -> (ShortString, ShortString) {
        match &self.target {
            RabbitEndpoint::Queue(q) => (ShortString::from(""), ShortString::from(q.as_str())),
            RabbitEndpoint::Exchange { name, routing_key } => (
                ShortString::from(name.as_str()),
                ShortString::from(routing_key.as_deref().unwrap_or(&env.message_type)),
            ),
        }
    }
}

impl RabbitLink {
    /// Publish `batch` and return the wait for its confirms (under the
    /// confirm timeout, which starts when it is first awaited).
    async fn publish(&mut self, batch: &[Outgoing]) -> Result<Verdicts, LinkError> {
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        let mut confirms = Vec::with_capacity(batch.len());
        for (i, o) in batch.iter().enumerate() {
            let env = match o.envelope() {
                Ok(e) => e,
                Err(refused) => {
                    verdicts.push(Some(refused));
                    continue;
                }
            };
            let (props, body) = to_amqp(&env);
            let (exchange, key) = self.route(&env);
            let confirm = self
                .ch
                .basic_publish(
                    exchange,
                    key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    props,
                )
                .await
                .map_err(lapin_err("publishing"))?;
            verdicts.push(None);
            confirms.push((i, confirm));
        }
        let timeout = self.confirm_timeout;
        Ok(Box::pin(crate::transport::await_answers(
            verdicts,
            confirms,
            timeout,
            "publisher confirm",
            |result| match result.map_err(lapin_err("waiting for a publisher confirm"))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Verdict::Accepted),
                Confirmation::Ack(Some(ret)) => Ok(Verdict::UnknownDestination(format!(
                    "unroutable: the broker returned it ({} {})",
                    ret.reply_code, ret.reply_text
                ))),
                Confirmation::Nack(_) => Err(LinkError(
                    "the broker nacked a message; the batch will be sent again".into(),
                )),
            },
        )))
    }
}

#[async_trait]
impl Link for RabbitLink {
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        self.publish(batch).await?.await
    }

    async fn start(&mut self, batch: &[Outgoing]) -> Result<(), LinkError> {
        let verdicts = self.publish(batch).await?;
        self.unanswered.push_back(tokio::spawn(verdicts));
        Ok(())
    }

    /// Cancel-safe: the oldest batch's wait stays at the front until it
    /// has its verdicts.
    async fn finish(&mut self) -> Result<Vec<Verdict>, LinkError> {
        let Some(oldest) = self.unanswered.front_mut() else {
            return Err(LinkError("no batch is waiting for its confirms".into()));
        };
        let verdicts = oldest.await;
        self.unanswered.pop_front();
        verdicts.map_err(|e| LinkError(format!("waiting for publisher confirms: {e}")))?
    }

    async fn ping(&mut self) -> Result<(), LinkError> {
        if self.ch.status().connected() {
            Ok(())
        } else {
            Err(LinkError("the channel is closed".into()))
        }
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            close_quietly(conn).await;
        }
    }
}
