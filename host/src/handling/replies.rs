//! Who waits, in memory, for what became of a message: a `POST /invoke`
//! registers its command's id here before the command goes into the inbox,
//! and the worker answers it once the batch that handled (or dead-lettered)
//! the command has committed. The command's `reply_uri` is
//! [`INVOKE_SCHEME`]`ID`: a handler's `outbox.reply` to it is kept out of
//! the commit and handed to the waiter instead.
//!
//! Nothing here is durable: the command is (an inbox row), its answer is
//! not. A waiter gone (its deadline passed, the caller hung up) or a reply
//! for a message nobody waits for any more is dropped; the command's effects
//! stand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::envelope::Envelope;

/// The reply address of an invoked command: `jasper-invoke:ID`.
pub(crate) const INVOKE_SCHEME: &str = "jasper-invoke:";

/// Whether a reply address is an HTTP caller waiting on this host.
pub(crate) fn is_invoke(reply_uri: &str) -> bool {
    reply_uri.starts_with(INVOKE_SCHEME)
}

/// The reply address for command `id`.
pub(crate) fn invoke_uri(id: Uuid) -> String {
    format!("{INVOKE_SCHEME}{id}")
}

/// What became of a command, told once its batch committed.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Handled; the handler's reply, if it gave one (the last, if several).
    Handled(Option<Box<Envelope>>),
    /// Moved to dead letters.
    DeadLettered { kind: String, message: String },
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Answer>>>,
    /// `waiting.len()`, read without the lock on every batch.
    count: AtomicUsize,
}

/// A registered wait; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Waiter {
    replies: Arc<Replies>,
    id: Uuid,
    rx: Option<oneshot::Receiver<Answer>>,
}

impl Waiter {
    /// The answer, or `None` if none comes (the host stopped).
    pub(crate) async fn answer(&mut self) -> Option<Answer> {
        match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.replies.remove(self.id);
    }
}

impl Replies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Answer>>> {
        // A map of senders stays consistent across a panic elsewhere.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait for what becomes of message `id` (register before it is stored).
    pub(crate) fn wait(self: &Arc<Self>, id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        waiting.insert(id, tx);
        self.count.store(waiting.len(), Ordering::Release);
        Waiter {
            replies: Arc::clone(self),
            id,
            rx: Some(rx),
        }
    }

    fn remove(&self, id: Uuid) -> Option<oneshot::Sender<Answer>> {
        let mut waiting = self.lock();
        let tx = waiting.remove(&id);
        self.count.store(waiting.len(), Ordering::Release);
        tx
    }

    /// Whether anyone waits at all (the worker skips the rest if not).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Tell the waiter of `id`, if there is one.
    pub(crate) fn answer(&self, id: Uuid, answer: Answer) {
        if let Some(tx) = self.remove(id) {
            // The caller may have gone: fine.
            let _ = tx.send(answer);
        }
    }
}

/// Split the replies to waiting HTTP callers off what a handler sent.
pub(crate) fn split(sent: Vec<Envelope>) -> (Vec<Envelope>, Option<Box<Envelope>>) {
    if !sent.iter().any(is_reply) {
        return (sent, None);
    }
    let (replies, rest): (Vec<_>, Vec<_>) = sent.into_iter().partition(is_reply);
    (rest, replies.into_iter().last().map(Box::new))
}

fn is_reply(env: &Envelope) -> bool {
    env.destination.as_ref().is_some_and(|d| is_invoke(d.uri()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::address::Destination;

    #[tokio::test]
    async fn a_waiter_gets_its_answer_once_and_unregisters() {
        let replies = Arc::new(Replies::default());
        let id = Uuid::now_v7();
        assert!(!replies.any());
        let mut waiter = replies.wait(id);
        assert!(replies.any());
        replies.answer(Uuid::now_v7(), Answer::Handled(None));
        assert!(replies.any(), "an answer for another id leaves the waiter");
        let mut reply = Envelope::new("Pong", b"{}".to_vec());
        reply.destination = Some(Destination::parse(invoke_uri(id)));
        replies.answer(id, Answer::Handled(Some(Box::new(reply))));
        assert!(!replies.any());
        match waiter.answer().await {
            Some(Answer::Handled(Some(env))) => assert_eq!(env.message_type, "Pong"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dropping_a_waiter_unregisters_it() {
        let replies = Arc::new(Replies::default());
        let waiter = replies.wait(Uuid::now_v7());
        assert!(replies.any());
        drop(waiter);
        assert!(!replies.any());
    }

    #[test]
    fn split_keeps_other_sends_and_takes_the_last_reply() {
        let id = Uuid::now_v7();
        let mut a = Envelope::new("A", Vec::new());
        a.destination = Some(Destination::parse("local://audit"));
        let mut r1 = Envelope::new("R1", Vec::new());
        r1.destination = Some(Destination::parse(invoke_uri(id)));
        let mut r2 = r1.clone();
        r2.message_type = "R2".into();
        let published_to_nobody = Envelope::new("B", Vec::new());
        let (rest, reply) = split(vec![a, r1, published_to_nobody, r2]);
        assert_eq!(
            rest.iter()
                .map(|e| e.message_type.as_str())
                .collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(reply.unwrap().message_type, "R2");
    }
}
