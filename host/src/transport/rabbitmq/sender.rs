//! The RabbitMQ side of the shared sending agent: a [`Connector`] per
//! destination queue or exchange, whose [`Link`] is a channel in confirm
//! mode. A batch is published whole, then its confirms are awaited together
//! under the confirm timeout: an ack settles the envelope, an unroutable
//! return is a refusal (dead letter), and a nack, a lost channel or a
//! confirm that never comes fails the batch so the agent sends it again.

use std::sync::Arc;

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
}

impl RabbitConnector {
    pub(crate) fn new(peer: String, target: RabbitEndpoint, settings: Arc<RabbitSettings>) -> Self {
        RabbitConnector {
            peer,
            target,
            settings,
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
        }))
    }
}

/// One connection and its confirm-mode channel.
pub(crate) struct RabbitLink {
    conn: Option<Connection>,
    ch: Channel,
    target: RabbitEndpoint,
    confirm_timeout: std::time::Duration,
}

/// A link dropped while the host runs (it failed; the agent connects
/// again) closes in the background; at shutdown the agent closes it first
/// ([`Link::close`]), since a task spawned then may never run.
impl Drop for RabbitLink {
    fn drop(&mut self) {
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

#[async_trait]
impl Link for RabbitLink {
    async fn send(&mut self, batch: &[Outgoing]) -> Result<Vec<Verdict>, LinkError> {
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
        crate::transport::await_answers(
            verdicts,
            confirms,
            self.confirm_timeout,
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
        )
        .await
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
