//! A RabbitMQ listener (`rabbitmq://queue/NAME`): consumes with a prefetch
//! window, gathers deliveries into batches (at most half the prefetch; the
//! next batch gathers while one is stored, and waits a short window only
//! when none is), hands each batch to the shared inbox in one transaction,
//! dead-letters in the store what no plugin here can take (no type, unknown
//! type), and only then acknowledges the batch to the broker with one
//! `multiple` ack. If the inbox cannot be written the batch is nacked back
//! to the queue. A lost connection or channel is re-opened with backoff;
//! unacknowledged deliveries return to the queue, and the inbox drops the
//! copies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, field, info, info_span};

use super::mapping::from_amqp;
use super::{RabbitSettings, close_quietly};
use crate::envelope::Limits;
use crate::transport::receive::Inbox;
use crate::transport::{LinkError, broker};

/// Start consuming `queue` until shutdown.
pub(crate) fn start(
    queue: String,
    settings: Arc<RabbitSettings>,
    inbox: Inbox,
    shutdown: watch::Receiver<bool>,
) -> (String, JoinHandle<()>) {
    let uri = format!("rabbitmq://queue/{queue}");
    let task = tokio::spawn(run(queue, uri.clone(), settings, inbox, shutdown));
    (uri, task)
}

async fn run(
    queue: String,
    uri: String,
    settings: Arc<RabbitSettings>,
    inbox: Inbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnect =
        broker::Reconnect::new("RabbitMQ listener lost its connection; reconnecting");
    loop {
        let mut consumed = false;
        let result = consume(
            &queue,
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

/// One connection's life. `Ok(())`: shutdown.
async fn consume(
    queue: &str,
    uri: &str,
    settings: &RabbitSettings,
    inbox: &Inbox,
    shutdown: &mut watch::Receiver<bool>,
    consumed: &mut bool,
) -> Result<(), LinkError> {
    let err = |what: &'static str| {
        move |e: lapin::Error| LinkError(format!("{what}: {}", crate::error_chain(&e)))
    };
    // The whole set-up under the connect timeout: a broker that accepts the
    // connection and then hangs must not hold the listener (or shutdown).
    let setup = async {
        let (conn, ch) = settings.open().await?;
        ch.basic_qos(settings.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(err("setting the prefetch"))?;
        settings.topology(&ch).await?;
        settings.queue(&ch, queue).await?;
        let consumer = ch
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("starting the consumer"))?;
        Ok::<_, LinkError>((conn, ch, consumer))
    };
    let (conn, ch, mut consumer) = tokio::select! {
        r = tokio::time::timeout(settings.connect_timeout, setup) => r.map_err(|_| {
            LinkError(format!("setting up the consumer took longer than {:?}", settings.connect_timeout))
        })??,
        _ = shutdown.changed() => return Ok(()),
    };
    // Consuming again: the next loss starts the backoff from the bottom.
    *consumed = true;
    let window = Duration::from_millis(settings.config.batch_window_ms);
    let max = batch_limit(settings.config.prefetch);
    info!(listener = %uri, prefetch = settings.config.prefetch, batch = max, "consuming");
    let limits = Limits::default();
    // The next batch gathers while one is stored (the prefetch holds two),
    // and is stored as soon as that one is acknowledged: under load each
    // batch is what arrived meanwhile, so no time goes to the window.
    let mut gathered: Vec<Delivery> = Vec::with_capacity(max);
    let mut full_at = tokio::time::Instant::now();
    let mut storing = None;
    loop {
        if storing.is_none()
            && !gathered.is_empty()
            && (gathered.len() >= max || tokio::time::Instant::now() >= full_at)
        {
            let batch = std::mem::replace(&mut gathered, Vec::with_capacity(max));
            storing = Some(Box::pin(store_batch(batch, &ch, uri, inbox, &limits)));
        }
        tokio::select! {
            d = consumer.next(), if gathered.len() < max => {
                if gathered.is_empty() {
                    full_at = tokio::time::Instant::now() + window;
                }
                gathered.push(next_delivery(d)?);
            }
            stored = in_progress(&mut storing) => {
                storing = None;
                stored?;
            }
            _ = tokio::time::sleep_until(full_at), if storing.is_none() && !gathered.is_empty() => {}
            _ = shutdown.changed() => {
                // The batch being stored is acknowledged first; what was
                // gathered since goes back to the queue with the connection.
                if let Some(s) = storing.take() {
                    s.await?;
                }
                close_quietly(conn).await;
                return Ok(());
            }
        }
    }
}

/// Most deliveries in one inbox transaction: half the prefetch, so the
/// next batch arrives while one is stored.
fn batch_limit(prefetch: u16) -> usize {
    usize::from(prefetch / 2).max(1)
}

/// The outcome of the batch being stored; never, while there is none.
async fn in_progress<F: Future + Unpin>(storing: &mut Option<F>) -> F::Output {
    match storing {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Store one batch in the inbox, then acknowledge it with one `multiple`
/// ack; a batch that cannot be stored is nacked back to the queue and ends
/// the connection.
async fn store_batch(
    batch: Vec<Delivery>,
    ch: &Channel,
    uri: &str,
    inbox: &Inbox,
    limits: &Limits,
) -> Result<(), LinkError> {
    let Some(last) = batch.last().map(|d| d.delivery_tag) else {
        return Ok(());
    };
    let span = info_span!("receive_batch", listener = %uri, size = batch.len(), ack = field::Empty);
    let outcome = take_batch(&batch, uri, inbox, limits)
        .instrument(span.clone())
        .await;
    match outcome {
        Ok(refused) => {
            span.record(
                "ack",
                if refused == 0 {
                    "ack".to_string()
                } else {
                    format!("ack, {refused} dead-lettered")
                },
            );
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| {
                    LinkError(format!("acknowledging a batch: {}", crate::error_chain(&e)))
                })
        }
        Err(e) => {
            span.record("ack", "nack (requeued)");
            error!(listener = %uri, error = %e, size = batch.len(), "a received batch could not be stored; returned to the queue");
            let _ = ch
                .basic_nack(
                    last,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
            Err(LinkError(format!("the inbox could not store a batch: {e}")))
        }
    }
}

fn next_delivery(d: Option<lapin::Result<Delivery>>) -> Result<Delivery, LinkError> {
    match d {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(LinkError(format!("consuming: {}", crate::error_chain(&e)))),
        None => Err(LinkError("the broker cancelled the consumer".into())),
    }
}

/// Store one batch: accepted messages into the inbox, refused ones into
/// dead letters. Returns how many were refused.
async fn take_batch(
    batch: &[Delivery],
    uri: &str,
    inbox: &Inbox,
    limits: &Limits,
) -> Result<usize, String> {
    let decoded = batch
        .iter()
        .map(|d| {
            let read = from_amqp(&d.properties, &d.data, uri, limits);
            broker::Decoded::of(read, || d.data.clone(), uri)
        })
        .collect();
    let taken = broker::take(inbox, decoded, uri, true).await?;
    Ok(taken
        .iter()
        .filter(|t| **t != broker::Taken::Stored)
        .count())
}
