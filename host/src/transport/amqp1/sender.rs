//! The AMQP 1.0 side of the shared sending agent: a [`Connector`] per
//! destination node or Service Bus entity, whose [`Link`] is one
//! connection, one session and one sending link. A batch is transferred
//! whole (unsettled), then the broker's outcomes are awaited together under
//! the confirm timeout: Accepted settles the envelope (its outgoing row is
//! deleted), Rejected is a refusal (a dead letter naming the broker's
//! error), and Released, Modified, a lost link or an outcome that never
//! comes fail the batch so the agent sends it again. On Service Bus the
//! token is put again in the background before it expires (an idle link
//! keeps its authorization), and a scheduled envelope carries
//! `x-opt-scheduled-enqueue-time` so the broker holds it.

use std::sync::Arc;

use async_trait::async_trait;
use fe2o3_amqp::Sender;
use fe2o3_amqp::types::definitions::ErrorCondition;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::types::primitives::Symbol;
use uuid::Uuid;

use super::mapping::to_message;
use super::{AmqpSettings, Opened};
use crate::address::AmqpEndpoint;
use crate::transport::{Connector, Link, LinkError, Outgoing, Verdict};

/// Opens sending links to one node or entity.
#[derive(Debug)]
pub(crate) struct AmqpConnector {
    peer: String,
    target: AmqpEndpoint,
    settings: Arc<AmqpSettings>,
}

impl AmqpConnector {
    pub(crate) fn new(peer: String, target: AmqpEndpoint, settings: Arc<AmqpSettings>) -> Self {
        AmqpConnector {
            peer,
            target,
            settings,
        }
    }
}

#[async_trait]
impl Connector for AmqpConnector {
    fn peer(&self) -> &str {
        &self.peer
    }

    async fn connect(&self) -> Result<Box<dyn Link>, LinkError> {
        let name = format!("send-{}", Uuid::new_v4().simple());
        let mut opened = self.settings.open(&self.target, &name).await?;
        let attach = Sender::builder()
            .name(format!("{name}-sender"))
            .target(self.target.address.as_str())
            .attach(&mut opened.session);
        let sender = match tokio::time::timeout(self.settings.connect_timeout, attach).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                opened.close().await;
                return Err(LinkError(format!(
                    "{}: attaching a sender to {:?}: {e}",
                    self.peer, self.target.address
                )));
            }
            Err(_) => {
                opened.close().await;
                return Err(LinkError(format!(
                    "{}: attaching the sender took longer than {:?}",
                    self.peer, self.settings.connect_timeout
                )));
            }
        };
        Ok(Box::new(AmqpLink {
            opened: Some(opened),
            sender: Some(sender),
            schedule: self.target.is_service_bus(),
            confirm_timeout: self.settings.confirm_timeout,
        }))
    }
}

/// One connection and its sending link.
pub(crate) struct AmqpLink {
    opened: Option<Opened>,
    sender: Option<Sender>,
    /// Service Bus: scheduled envelopes are held by the broker.
    schedule: bool,
    confirm_timeout: std::time::Duration,
}

/// A link dropped while the host runs (it failed; the agent connects
/// again) closes in the background; at shutdown the agent closes it first
/// ([`Link::close`]), since a task spawned then may never run.
impl Drop for AmqpLink {
    fn drop(&mut self) {
        if let (Some(opened), Ok(rt)) = (self.opened.take(), tokio::runtime::Handle::try_current())
        {
            let sender = self.sender.take();
            rt.spawn(async move {
                drop(sender);
                opened.close().await;
            });
        }
    }
}

/// An error condition as the broker spelled it (`amqp:not-found`).
fn condition(c: &ErrorCondition) -> String {
    match c {
        ErrorCondition::AmqpError(e) => Symbol::from(e).0,
        ErrorCondition::ConnectionError(e) => Symbol::from(e).0,
        ErrorCondition::SessionError(e) => Symbol::from(e).0,
        ErrorCondition::LinkError(e) => Symbol::from(e).0,
        ErrorCondition::Custom(s) => s.0.clone(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

fn verdict(outcome: Outcome) -> Result<Verdict, LinkError> {
    match outcome {
        Outcome::Accepted(_) => Ok(Verdict::Accepted),
        Outcome::Rejected(r) => Ok(Verdict::Rejected(match r.error {
            Some(e) => format!(
                "the broker rejected it: {}{}",
                condition(&e.condition),
                e.description.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
            None => "the broker rejected it".into(),
        })),
        Outcome::Released(_) => Err(LinkError(
            "the broker released a message; the batch will be sent again".into(),
        )),
        Outcome::Modified(_) => Err(LinkError(
            "the broker returned a message modified; the batch will be sent again".into(),
        )),
        #[allow(unreachable_patterns)]
        _ => Err(LinkError(
            "an unknown outcome; the batch will be sent again".into(),
        )),
    }
}

#[async_trait]
impl Link for AmqpLink {
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
        let schedule = self.schedule;
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| LinkError("the link is closed".into()))?;
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        for (i, o) in batch.iter().enumerate() {
            let env = match o.envelope() {
                Ok(e) => e,
                Err(refused) => {
                    verdicts.push(Some(refused));
                    continue;
                }
            };
            let fut = sender
                .send_batchable(to_message(&env, schedule))
                .await
                .map_err(|e| LinkError(format!("sending: {e}")))?;
            verdicts.push(None);
            pending.push((i, fut));
        }
        crate::transport::await_answers(
            verdicts,
            pending,
            self.confirm_timeout,
            "outcome",
            |outcome| {
                verdict(outcome.map_err(|e| LinkError(format!("waiting for an outcome: {e}")))?)
            },
        )
        .await
    }

    async fn ping(&mut self) -> Result<(), LinkError> {
        match &self.opened {
            Some(o) if !o.conn.is_closed() && !o.session.is_ended() => Ok(()),
            _ => Err(LinkError("the connection is closed".into())),
        }
    }

    async fn close(&mut self) {
        if let Some(s) = self.sender.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), s.close()).await;
        }
        if let Some(o) = self.opened.take() {
            o.close().await;
        }
    }
}
