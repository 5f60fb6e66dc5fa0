//! An AMQP 1.0 listener (`amqp[s]://HOST:PORT/ADDRESS`,
//! `asb://NAMESPACE/ENTITY`): a receiving link in peek-lock mode (the
//! broker keeps each delivery until it is settled) with the configured
//! credit. Deliveries are gathered into batches (at most half the credit,
//! waiting a short window only for the first), stored through the shared
//! inbox in one transaction, and only then settled:
//! - stored (or a duplicate): Accepted, which completes it;
//! - refused (no type, an unreadable body, no plugin here takes it): on
//!   Service Bus Rejected with `com.microsoft:dead-letter` and the reason,
//!   which moves it to the entity's dead-letter queue; on a plain broker
//!   written to the store's dead letters, then Accepted;
//! - the inbox failed: on Service Bus Modified (delivery failed: abandoned,
//!   its delivery count raised), on a plain broker Released; the connection
//!   then ends and is opened again with backoff.
//!
//! While a batch is stored, Service Bus locks are renewed halfway to their
//! end; the connection's token is put again before it expires (in the
//! background, `servicebus::KeepToken`). A lost
//! connection returns every unsettled delivery to the broker; the inbox
//! drops the copies it already holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::Receiver;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::definitions::{ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Modified};
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, field, info, info_span, warn};
use uuid::Uuid;

use super::mapping::from_message;
use super::servicebus::{self, LockRenewer};
use super::{AmqpSettings, Opened};
use crate::address::AmqpEndpoint;
use crate::envelope::{Limits, now_ms};
use crate::transport::LinkError;
use crate::transport::broker::{self, Taken};
use crate::transport::receive::Inbox;

/// Start receiving from `endpoint` until shutdown.
pub(crate) fn start(
    endpoint: AmqpEndpoint,
    settings: Arc<AmqpSettings>,
    inbox: Inbox,
    shutdown: watch::Receiver<bool>,
) -> (String, JoinHandle<()>) {
    let uri = crate::address::Endpoint::Amqp(endpoint.clone()).to_string();
    let task = tokio::spawn(run(endpoint, uri.clone(), settings, inbox, shutdown));
    (uri, task)
}

async fn run(
    endpoint: AmqpEndpoint,
    uri: String,
    settings: Arc<AmqpSettings>,
    inbox: Inbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnect = broker::Reconnect::new("AMQP 1.0 listener lost its link; reconnecting");
    loop {
        let mut consumed = false;
        let result = consume(
            &endpoint,
            &uri,
            &settings,
            &inbox,
            &mut shutdown,
            &mut consumed,
        )
        .await;
        if !reconnect.again(&uri, result, consumed, &mut shutdown).await {
            return;
        }
    }
}

/// The receiving link and what keeps it going on Service Bus.
struct Link {
    opened: Opened,
    receiver: Receiver,
    renewer: Option<LockRenewer>,
}

async fn attach(
    endpoint: &AmqpEndpoint,
    settings: &AmqpSettings,
    name: &str,
) -> Result<Link, LinkError> {
    let mut opened = settings.open(endpoint, name).await?;
    let setup = async {
        let renewer = if endpoint.is_service_bus() {
            Some(LockRenewer::attach(&mut opened.session, &endpoint.address, name).await?)
        } else {
            None
        };
        let receiver = Receiver::builder()
            .name(format!("{name}-receiver"))
            .source(endpoint.address.as_str())
            .sender_settle_mode(SenderSettleMode::Unsettled)
            .receiver_settle_mode(ReceiverSettleMode::First)
            .credit_mode(CreditMode::Auto(settings.prefetch(endpoint)))
            .auto_accept(false)
            .attach(&mut opened.session)
            .await
            .map_err(|e| {
                LinkError(format!(
                    "attaching a receiver to {:?}: {e}",
                    endpoint.address
                ))
            })?;
        Ok::<_, LinkError>((renewer, receiver))
    };
    match tokio::time::timeout(settings.connect_timeout, setup).await {
        Ok(Ok((renewer, receiver))) => Ok(Link {
            opened,
            receiver,
            renewer,
        }),
        Ok(Err(e)) => {
            opened.close().await;
            Err(e)
        }
        Err(_) => {
            opened.close().await;
            Err(LinkError(format!(
                "attaching the receiver took longer than {:?}",
                settings.connect_timeout
            )))
        }
    }
}

/// One connection's life. `Ok(())`: shutdown.
async fn consume(
    endpoint: &AmqpEndpoint,
    uri: &str,
    settings: &AmqpSettings,
    inbox: &Inbox,
    shutdown: &mut watch::Receiver<bool>,
    consumed: &mut bool,
) -> Result<(), LinkError> {
    let name = format!("{}-{}", inbox.node_id, Uuid::new_v4().simple());
    let mut link = tokio::select! {
        l = attach(endpoint, settings, &name) => l?,
        _ = shutdown.changed() => return Ok(()),
    };
    *consumed = true;
    let window = settings.batch_window(endpoint);
    let max = usize::try_from(settings.prefetch(endpoint) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    info!(listener = %uri, credit = settings.prefetch(endpoint), batch = max, "consuming");
    let limits = Limits::default();
    let result = loop {
        let first = tokio::select! {
            d = link.receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(e) => break Err(LinkError(format!("receiving: {e}"))),
            },
            _ = shutdown.changed() => break Ok(()),
        };
        let mut batch = vec![first];
        let full_at = tokio::time::Instant::now() + window;
        while batch.len() < max {
            tokio::select! {
                d = link.receiver.recv::<Body<Value>>() => match d {
                    Ok(d) => batch.push(d),
                    Err(e) => {
                        // What was gathered returns to the broker with the link.
                        return finish(link, Err(LinkError(format!("receiving: {e}")))).await;
                    }
                },
                _ = tokio::time::sleep_until(full_at) => break,
            }
        }
        if let Err(e) = store_batch(batch, &mut link, endpoint, uri, inbox, &limits).await {
            break Err(e);
        }
    };
    finish(link, result).await
}

/// Close the link and the connection (at shutdown or after a failure).
async fn finish(link: Link, result: Result<(), LinkError>) -> Result<(), LinkError> {
    let Link {
        opened, receiver, ..
    } = link;
    let _ = tokio::time::timeout(Duration::from_secs(1), receiver.close()).await;
    opened.close().await;
    result
}

/// Keep a stored batch's locks alive until the store ends (every half
/// lock, from the earliest lock's end); a failed renewal is logged, and the
/// batch goes on (a lock lost means a redelivery, which the inbox drops as
/// a duplicate).
async fn keep_locks(
    renewer: &mut Option<LockRenewer>,
    locks: &[Uuid],
    locked_until: Option<i64>,
    uri: &str,
) -> Infallible {
    let (Some(renewer), Some(until)) = (renewer.as_mut(), locked_until) else {
        return std::future::pending().await;
    };
    if locks.is_empty() {
        return std::future::pending().await;
    }
    // Renewed, a lock runs as long again: renew every half lock.
    let every = servicebus::renew_after(until, now_ms());
    loop {
        tokio::time::sleep(every).await;
        match renewer.renew(locks).await {
            Ok(()) => {
                info!(listener = %uri, locks = locks.len(), "renewed the locks of a batch being stored");
            }
            Err(e) => {
                warn!(listener = %uri, error = %e, "renewing locks failed; the batch may be delivered again");
                return std::future::pending().await;
            }
        }
    }
}

/// Store one batch through the inbox, then settle each delivery.
async fn store_batch(
    batch: Vec<Delivery<Body<Value>>>,
    link: &mut Link,
    endpoint: &AmqpEndpoint,
    uri: &str,
    inbox: &Inbox,
    limits: &Limits,
) -> Result<(), LinkError> {
    let service_bus = endpoint.is_service_bus();
    let span =
        info_span!("receive_batch", listener = %uri, size = batch.len(), settle = field::Empty);
    let decoded = batch
        .iter()
        .map(|d| {
            let read = from_message(d.message(), uri, limits);
            broker::Decoded::of(read, || super::mapping::raw_body(d.message()), uri)
        })
        .collect();
    let (locks, until) = if service_bus {
        let locks: Vec<Uuid> = batch
            .iter()
            .filter_map(|d| servicebus::lock_token(d.message(), d.delivery_tag()))
            .collect();
        let until = batch
            .iter()
            .filter_map(|d| servicebus::locked_until(d.message()))
            .min();
        (locks, until)
    } else {
        (Vec::new(), None)
    };
    let taken = {
        let store = broker::take(inbox, decoded, uri, !service_bus).instrument(span.clone());
        let keep = keep_locks(&mut link.renewer, &locks, until, uri);
        tokio::select! {
            t = store => t,
            never = keep => match never {},
        }
    };
    let receiver = &link.receiver;
    let settle_err =
        |e: fe2o3_amqp::link::DispositionError| LinkError(format!("settling a batch: {e}"));
    match taken {
        Ok(taken) => {
            let mut accepted = Vec::with_capacity(batch.len());
            let mut refused = 0usize;
            for (d, t) in batch.iter().zip(taken) {
                match t {
                    Taken::Stored => accepted.push(d),
                    Taken::Refused(_, _) if !service_bus => accepted.push(d),
                    Taken::Refused(kind, why) => {
                        refused += 1;
                        receiver
                            .reject(d, servicebus::dead_letter_error(&kind.to_string(), &why))
                            .await
                            .map_err(settle_err)?;
                    }
                }
            }
            span.record(
                "settle",
                if refused == 0 {
                    "accepted".to_string()
                } else {
                    format!("accepted, {refused} dead-lettered by the broker")
                },
            );
            receiver.accept_all(accepted).await.map_err(settle_err)
        }
        Err(e) => {
            span.record("settle", "abandoned");
            error!(listener = %uri, error = %e, size = batch.len(), "a received batch could not be stored; returned to the broker");
            let _ = if service_bus {
                let failed = Modified {
                    delivery_failed: Some(true),
                    undeliverable_here: None,
                    message_annotations: None,
                };
                receiver.modify_all(&batch, failed).await
            } else {
                receiver.release_all(&batch).await
            };
            Err(LinkError(format!("the inbox could not store a batch: {e}")))
        }
    }
}
