//! Why a message ended in dead letters: one kind per cause, stored as its
//! kebab-case name in `dead_letters.error_kind` (the names are the stored
//! format: never rename one), and the cause a dead letter is made with.

use std::fmt;

use serde::{Serialize, Serializer};

/// The `error_kind` of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterKind {
    /// The handler rejected the message, or a peer refused it.
    Rejected,
    /// The handler asked for a retry on its last allowed attempt.
    Retry,
    /// The handler failed on its last allowed attempt.
    Failed,
    /// The guest panicked (or aborted).
    Panic,
    /// The wall-clock deadline passed.
    Deadline,
    /// The guest asked for more memory than its cap.
    Memory,
    /// The fuel budget ran out.
    Fuel,
    /// The handler went past a per-message bound on what it makes the host
    /// hold (state keys or bytes written, messages or bytes sent; the
    /// `[plugins] max_*` keys). Not retried: it would pass it again.
    Limit,
    /// The guest overflowed its stack (deep or endless recursion).
    StackOverflow,
    /// Any other trap.
    Trap,
    /// The host could not run the handler.
    Host,
    /// No loaded plugin handles the message (or the named queue).
    NoHandler,
    /// The message cannot be read: undecodable envelope, or no type. Never
    /// replayable: a replay would meet the same bytes.
    BadMessage,
    /// The peer has no such destination.
    UnknownDestination,
    /// No transport of this host serves the destination.
    NoRoute,
    /// Claimed `max_attempts` times without an outcome ever committing: the
    /// host died (or was stopped, or lost the message to another node) while
    /// handling it each time.
    Crashed,
    /// A kind this version does not know (a row written by another version).
    Other(String),
}

impl DeadLetterKind {
    /// The stored name.
    pub fn as_str(&self) -> &str {
        match self {
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Retry => "retry",
            DeadLetterKind::Failed => "failed",
            DeadLetterKind::Panic => "panic",
            DeadLetterKind::Deadline => "deadline",
            DeadLetterKind::Memory => "memory",
            DeadLetterKind::Fuel => "fuel",
            DeadLetterKind::Limit => "limit",
            DeadLetterKind::StackOverflow => "stack-overflow",
            DeadLetterKind::Trap => "trap",
            DeadLetterKind::Host => "host",
            DeadLetterKind::NoHandler => "no-handler",
            DeadLetterKind::BadMessage => "bad-message",
            DeadLetterKind::UnknownDestination => "unknown-destination",
            DeadLetterKind::NoRoute => "no-route",
            DeadLetterKind::Crashed => "crashed",
            DeadLetterKind::Other(s) => s,
        }
    }

    /// The kind a stored name stands for.
    pub(crate) fn from_stored(name: &str) -> DeadLetterKind {
        const KNOWN: [DeadLetterKind; 16] = [
            DeadLetterKind::Rejected,
            DeadLetterKind::Retry,
            DeadLetterKind::Failed,
            DeadLetterKind::Panic,
            DeadLetterKind::Deadline,
            DeadLetterKind::Memory,
            DeadLetterKind::Fuel,
            DeadLetterKind::Limit,
            DeadLetterKind::StackOverflow,
            DeadLetterKind::Trap,
            DeadLetterKind::Host,
            DeadLetterKind::NoHandler,
            DeadLetterKind::BadMessage,
            DeadLetterKind::UnknownDestination,
            DeadLetterKind::NoRoute,
            DeadLetterKind::Crashed,
        ];
        KNOWN
            .into_iter()
            .find(|k| k.as_str() == name)
            .unwrap_or_else(|| DeadLetterKind::Other(name.to_string()))
    }
}

/// Why a message is dead-lettered, and after how many attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetterCause {
    pub kind: DeadLetterKind,
    pub message: String,
    /// Handler attempts made, this one included; 0 for a message no handler
    /// ran (refused on receipt, or refused or unroutable on the way out).
    pub attempts: u32,
    /// Whether `dead-letters replay` may put it back in the inbox.
    pub replayable: bool,
}

impl DeadLetterCause {
    /// A message no handler ran: refused on receipt, or on its way out.
    /// Replayable unless it cannot be read ([`DeadLetterKind::BadMessage`]):
    /// a replay would put the same unreadable bytes back (an AMQP message
    /// with no type is kept as an envelope of no type, which a replay
    /// forwards to the broker again) and could only fail again. Other
    /// refusals (no handler yet, a peer that refused) may pass once the
    /// operator fixed the cause.
    pub(crate) fn unhandled(kind: DeadLetterKind, message: String) -> DeadLetterCause {
        let replayable = kind != DeadLetterKind::BadMessage;
        DeadLetterCause {
            kind,
            message,
            attempts: 0,
            replayable,
        }
    }
}

impl fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeadLetterKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<&str> for DeadLetterKind {
    fn from(name: &str) -> DeadLetterKind {
        DeadLetterKind::from_stored(name)
    }
}

impl PartialEq<str> for DeadLetterKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeadLetterKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::{DeadLetterCause, DeadLetterKind};

    #[test]
    fn an_unreadable_message_refused_on_receipt_is_not_replayable() {
        let bad = DeadLetterCause::unhandled(DeadLetterKind::BadMessage, "no type".into());
        assert!(!bad.replayable, "{bad:?}");
        assert_eq!(bad.attempts, 0);
        for kind in [
            DeadLetterKind::NoHandler,
            DeadLetterKind::Rejected,
            DeadLetterKind::UnknownDestination,
            DeadLetterKind::NoRoute,
        ] {
            let cause = DeadLetterCause::unhandled(kind, "why".into());
            assert!(cause.replayable, "{cause:?}");
        }
    }

    #[test]
    fn every_kind_reads_back_from_its_stored_name() {
        for name in [
            "rejected",
            "retry",
            "failed",
            "panic",
            "deadline",
            "memory",
            "fuel",
            "limit",
            "stack-overflow",
            "trap",
            "host",
            "no-handler",
            "bad-message",
            "unknown-destination",
            "no-route",
            "crashed",
        ] {
            let kind = DeadLetterKind::from_stored(name);
            assert!(!matches!(kind, DeadLetterKind::Other(_)), "{name}");
            assert_eq!(kind.as_str(), name);
        }
        assert_eq!(
            DeadLetterKind::from_stored("crashed-twice"),
            DeadLetterKind::Other("crashed-twice".into())
        );
    }
}
