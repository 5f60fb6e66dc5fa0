//! Messages a handler published (or scheduled) that no loaded plugin
//! subscribes to and no `[[route]]` matches: the runtime keeps them with no
//! destination, and here they are taken out of what the handler sent, made a
//! `no-route` dead letter of the handler's commit when `handling.unrouted =
//! "dead-letter"`, and, once that commit is done, logged (WARN,
//! `event=unrouted`) and counted. Does not decide routing (`runtime::routing`)
//! nor commit anything itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use crate::address::Destination;
use crate::config::Unrouted;
use crate::envelope::Envelope;
use crate::store::{DeadLetter, DeadLetterCause, DeadLetterKind};

/// How many published messages nobody took, since the host started (both
/// settings of `handling.unrouted`); shared by the worker and [`crate::Host`].
#[derive(Debug, Clone, Default)]
pub(crate) struct UnroutedCount(Arc<AtomicU64>);

impl UnroutedCount {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Add one; the new total.
    fn bump(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}

/// Split what a handler sent into the messages that go somewhere and the
/// ones published to nobody.
pub(crate) fn split(sent: Vec<Envelope>) -> (Vec<Envelope>, Vec<Envelope>) {
    sent.into_iter().partition(|e| e.destination.is_some())
}

/// The dead letter of a message published to nobody: replayable (a replay
/// publishes it again, see `handling::Worker::handler_of`), no attempts.
pub(crate) fn dead_letter(env: &Envelope, now: i64) -> DeadLetter {
    DeadLetter::new(
        env.id,
        env.message_type.clone(),
        String::new(),
        env.source.clone(),
        env.encode(),
        DeadLetterCause::unhandled(DeadLetterKind::NoRoute, no_route_message(&env.message_type)),
        now,
    )
}

/// Why a message has nowhere to go.
pub(crate) fn no_route_message(message_type: &str) -> String {
    format!(
        "no loaded plugin subscribes to message type '{message_type}' and no [[route]] matches it"
    )
}

/// After the commit: one WARN per message published to nobody, each counted.
pub(crate) fn report(unrouted: &[Envelope], setting: Unrouted, count: &UnroutedCount) {
    let outcome = match setting {
        Unrouted::Drop => "dropped (handling.unrouted = \"drop\")",
        Unrouted::DeadLetter => "moved to dead letters (handling.unrouted = \"dead-letter\")",
    };
    for env in unrouted {
        let total = count.bump();
        let publisher = env
            .source
            .as_deref()
            .map(|s| Destination::parse(s).local_plugin().unwrap_or(s).to_owned())
            .unwrap_or_default();
        warn!(
            event = %"unrouted",
            message_type = %env.message_type,
            message_id = %env.id,
            plugin = %publisher,
            causation_id = env.causation_id.as_deref().unwrap_or(""),
            unrouted_total = total,
            "a published message has no subscriber and no route: {outcome}"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::address::Endpoint;

    #[test]
    fn only_messages_without_a_destination_are_unrouted() {
        let mut routed = Envelope::new("A", b"{}".to_vec());
        routed.destination = Some(Endpoint::local("p").into());
        let nobody = Envelope::new("B", b"{}".to_vec());
        let (to, unrouted) = split(vec![routed.clone(), nobody.clone()]);
        assert_eq!(to.iter().map(|e| e.id).collect::<Vec<_>>(), [routed.id]);
        assert_eq!(
            unrouted.iter().map(|e| e.id).collect::<Vec<_>>(),
            [nobody.id]
        );

        let dead = dead_letter(&nobody, 5);
        assert_eq!(dead.error_kind, DeadLetterKind::NoRoute);
        assert!(dead.replayable);
        assert_eq!((dead.attempts, dead.failed_at), (0, 5));
        assert!(dead.error_message.contains("'B'"), "{}", dead.error_message);
        assert_eq!(Envelope::decode(&dead.body).unwrap().id, nobody.id);

        let count = UnroutedCount::default();
        report(&[nobody.clone(), nobody], Unrouted::Drop, &count);
        assert_eq!(count.get(), 2);
    }
}
