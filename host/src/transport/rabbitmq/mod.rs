//! The RabbitMQ transport (lapin): listeners on queues (`rabbitmq://queue/NAME`)
//! and senders to queues and exchanges. It plugs into the shared mechanics:
//! the sending [`agent`](crate::transport::agent) drives its
//! [`Connector`](crate::transport::Connector) (publisher confirms settle the
//! outgoing rows), and its listener hands batches to the shared
//! [`Inbox`](crate::transport::receive::Inbox) and acknowledges to the broker
//! only after the inbox commit. This module owns the connection and the
//! topology the host declares.

pub(crate) mod listener;
pub mod mapping;
pub(crate) mod sender;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::RabbitConfig;
use crate::transport::LinkError;

/// `[rabbitmq]` resolved, with the shared timeouts.
#[derive(Debug, Clone)]
pub(crate) struct RabbitSettings {
    pub config: RabbitConfig,
    pub connect_timeout: Duration,
    pub confirm_timeout: Duration,
}

/// The URL without its password, for logs and errors.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// How long closing a connection waits for the broker's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close `conn` on purpose (200, "shutting down"), waiting at most
/// [`CLOSE_TIMEOUT`] for the broker: a broker that hangs never answers, and
/// the connection then ends with the process. A connection already lost has
/// nothing to close.
pub(crate) async fn close_quietly(conn: Connection) {
    if !conn.status().connected() {
        return;
    }
    let close = conn.close(200, ShortString::from("shutting down"));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

impl RabbitSettings {
    /// Open a connection and a channel.
    pub(crate) async fn open(&self) -> Result<(Connection, Channel), LinkError> {
        let url = &self.config.url;
        let connect = async {
            let conn = Connection::connect(url, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            Ok::<_, lapin::Error>((conn, ch))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(LinkError(format!(
                "RabbitMQ at {}: {}",
                redacted(url),
                crate::error_chain(&e)
            ))),
            Err(_) => Err(LinkError(format!(
                "RabbitMQ at {}: no connection within {:?}",
                redacted(url),
                self.connect_timeout
            ))),
        }
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        args.insert(
            ShortString::from("x-queue-type"),
            s(&self.config.queue_type),
        );
        if !self.config.dead_letter_exchange.is_empty() {
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                s(&self.config.dead_letter_exchange),
            );
        }
        args
    }

    /// Declare a queue (durable, with the configured type and dead-letter
    /// exchange), or check that it exists when the host declares nothing.
    pub(crate) async fn queue(&self, ch: &Channel, name: &str) -> Result<(), LinkError> {
        let (options, args) = if self.config.declare {
            (QueueDeclareOptions::durable(), self.queue_args())
        } else {
            (
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        ch.queue_declare(ShortString::from(name), options, args)
            .await
            .map(|_| ())
            .map_err(|e| LinkError(format!("queue {name:?}: {}", crate::error_chain(&e))))
    }

    /// Declare a topic exchange (durable), or check that it exists.
    pub(crate) async fn exchange(&self, ch: &Channel, name: &str) -> Result<(), LinkError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            passive: !self.config.declare,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            ShortString::from(name),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| LinkError(format!("exchange {name:?}: {}", crate::error_chain(&e))))
    }

    /// The configured bindings and dead-letter exchange (when declaring).
    pub(crate) async fn topology(&self, ch: &Channel) -> Result<(), LinkError> {
        if !self.config.declare {
            return Ok(());
        }
        let dlx = &self.config.dead_letter_exchange;
        if !dlx.is_empty() {
            ch.exchange_declare(
                ShortString::from(dlx.as_str()),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| LinkError(format!("exchange {dlx:?}: {}", crate::error_chain(&e))))?;
            let mut args = FieldTable::default();
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from(self.config.queue_type.as_str())),
            );
            ch.queue_declare(
                ShortString::from(dlx.as_str()),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(|e| LinkError(format!("queue {dlx:?}: {}", crate::error_chain(&e))))?;
            bind(ch, dlx, dlx, "").await?;
        }
        for b in &self.config.binding {
            self.exchange(ch, &b.exchange).await?;
            self.queue(ch, &b.queue).await?;
            bind(ch, &b.queue, &b.exchange, &b.routing_key).await?;
        }
        Ok(())
    }
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), LinkError> {
    ch.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| {
        LinkError(format!(
            "binding queue {queue:?} to exchange {exchange:?} ({key:?}): {}",
            crate::error_chain(&e)
        ))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_the_password() {
        assert_eq!(
            super::redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redacted("amqp://h:5672"), "amqp://h:5672");
    }
}
