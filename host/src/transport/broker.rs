//! What the broker listeners (RabbitMQ, AMQP 1.0, Service Bus) share: one
//! received batch, decoded, is stored through the shared [`Inbox`] in one
//! transaction (its rows claimed for this node and handed to the worker
//! when it has room, as `durable://` does), and each message's fate comes
//! back in order: stored, or refused (no type, a bad body, no plugin here
//! takes it) with the dead-letter kind and reason. A broker with no
//! dead-letter queue of its own has the refused ones written to the
//! store's dead letters here. And [`Reconnect`]: when a listener whose
//! connection was lost tries again.

use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::backoff::{Backoff, Wake, pause};
use crate::envelope::{Envelope, now_ms};
use crate::store::{CommitBatch, DeadLetter, DeadLetterCause, DeadLetterKind, GroupCommit};
use crate::transport::receive::{Inbox, Keep};
use crate::transport::{LinkError, Verdict};

/// A listener's reconnection: after each connection's life, whether to
/// start another and when (backoff from 100 ms doubling to 5 s, from the
/// bottom again once a connection consumed), each loss a WARN `lost`.
pub(crate) struct Reconnect {
    backoff: Backoff,
    lost: &'static str,
}

impl Reconnect {
    pub(crate) fn new(lost: &'static str) -> Reconnect {
        Reconnect {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            lost,
        }
    }

    /// After a connection ended with `result` (`Ok`: at shutdown): wait
    /// for the next one; false when the listener should stop.
    pub(crate) async fn again(
        &mut self,
        uri: &str,
        result: Result<(), LinkError>,
        consumed: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let Err(e) = result else {
            return false;
        };
        if consumed {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        warn!(listener = %uri, error = %e, retry_in = ?delay, "{}", self.lost);
        matches!(pause(shutdown, delay).await, Wake::Go)
    }
}

/// A received message as the listener decoded it.
pub(crate) enum Decoded {
    Read(Envelope),
    /// Why it cannot be an envelope, with the raw body kept in an envelope
    /// of no type ([`unreadable`]), so it can be looked at.
    Unreadable(Envelope, String),
}

impl Decoded {
    /// `decoded`, or the body kept with why it is not a message.
    pub(crate) fn of(
        decoded: Result<Envelope, String>,
        body: impl FnOnce() -> Vec<u8>,
        listener: &str,
    ) -> Decoded {
        match decoded {
            Ok(env) => Decoded::Read(env),
            Err(why) => Decoded::Unreadable(unreadable(body(), listener), why),
        }
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Taken {
    /// In the inbox (or a duplicate of what is there, or expired).
    Stored,
    /// Not for this host (written to the store's dead letters when
    /// [`take`] was asked to).
    Refused(DeadLetterKind, String),
}

/// An envelope of no type holding a body that could not be read.
fn unreadable(body: Vec<u8>, listener: &str) -> Envelope {
    let mut env = Envelope::new("", body);
    env.destination = Some(listener.into());
    env
}

/// Store one batch. With `dead_letter_here`, refused messages are written
/// to the store's dead letters (after the inbox commit) before this
/// returns; else the caller hands them to the broker's dead-letter queue.
/// An error: nothing can be settled; the broker should deliver the batch
/// again.
pub(crate) async fn take(
    inbox: &Inbox,
    batch: Vec<Decoded>,
    listener: &str,
    dead_letter_here: bool,
) -> Result<Vec<Taken>, String> {
    let mut taken = Vec::with_capacity(batch.len());
    let mut typed = Vec::with_capacity(batch.len());
    let mut refused: Vec<(Envelope, DeadLetterKind, String)> = Vec::new();
    let mut at = Vec::with_capacity(batch.len());
    for d in batch {
        match d {
            Decoded::Read(env) => {
                at.push(taken.len());
                taken.push(Taken::Stored);
                typed.push(env);
            }
            Decoded::Unreadable(env, why) => {
                taken.push(Taken::Refused(DeadLetterKind::BadMessage, why.clone()));
                refused.push((env, DeadLetterKind::BadMessage, why));
            }
        }
    }
    let entries = typed.iter().cloned().map(Ok).collect();
    // Claimed for this node as they are written, and handed to the worker
    // when it has room (as `durable://` does): no claim to run after.
    let verdicts = inbox
        .receive_as(entries, Keep::Handed)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    for ((env, v), i) in typed.into_iter().zip(verdicts).zip(at) {
        match v {
            Verdict::Accepted => {}
            Verdict::Rejected(why) | Verdict::UnknownDestination(why) => {
                taken[i] = Taken::Refused(DeadLetterKind::NoHandler, why.clone());
                refused.push((env, DeadLetterKind::NoHandler, why));
            }
        }
    }
    let to = if dead_letter_here {
        "received message moved to dead letters"
    } else {
        "received message refused: to the broker's dead-letter queue"
    };
    for (env, kind, why) in &refused {
        warn!(listener = %listener, message_id = %env.id, message_type = %env.message_type, kind = %kind, reason = %why, "{to}");
    }
    if dead_letter_here && !refused.is_empty() {
        dead_letter(&*inbox.store, listener, refused).await?;
    }
    Ok(taken)
}

async fn dead_letter(
    store: &dyn GroupCommit,
    listener: &str,
    refused: Vec<(Envelope, DeadLetterKind, String)>,
) -> Result<(), String> {
    let now = now_ms();
    let mut commit = CommitBatch::default();
    for (env, kind, why) in refused {
        commit.dead_letters.push(DeadLetter::new(
            env.id,
            env.message_type.clone(),
            listener.to_string(),
            env.source.clone(),
            env.encode(),
            DeadLetterCause::unhandled(kind, why),
            now,
        ));
    }
    store
        .commit(&commit)
        .await
        .map_err(|e| crate::error_chain(&e))
}
