//! The error policy: what a failed attempt becomes. A rejection, an
//! unreadable message or a handler past a per-message bound (`limit`: the
//! same handler would pass it again) goes to dead letters at once; other
//! failures are tried again with exponential backoff until `max_attempts`,
//! then dead-lettered
//! with the kind of their last failure. A host fault does not count as an
//! attempt. A message claimed `max_attempts` times before without any
//! outcome committing (the host died each time) is dead-lettered as
//! `crashed` before it runs again.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::config::HandlingConfig;
use crate::runtime::{CallError, HandleError, TrapKind};
use crate::store::{DeadLetterCause, DeadLetterKind};

/// Why a message could not be handled.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Call(CallError),
    /// No loaded plugin takes this message.
    NoHandler(String),
    /// Its plugin was loaded and its file removed: the message waits for
    /// it (put back, no attempt counted) until a plugin of that name is back.
    Waiting(String),
    /// A message published to nobody, replayed, and still nobody takes it.
    NoRoute(String),
    /// The stored envelope cannot be decoded.
    BadMessage(String),
    /// Earlier attempts (this many) all ended without an outcome committing.
    Crashed {
        attempts: u32,
    },
}

impl Failure {
    /// `(error_kind, message)` as recorded in dead letters.
    pub(crate) fn describe(&self) -> (DeadLetterKind, String) {
        match self {
            Failure::Call(CallError::Handler(HandleError::Reject(m))) => {
                (DeadLetterKind::Rejected, m.clone())
            }
            Failure::Call(CallError::Handler(HandleError::Retry(m))) => {
                (DeadLetterKind::Retry, m.clone())
            }
            Failure::Call(CallError::Handler(HandleError::Failed(m))) => {
                (DeadLetterKind::Failed, m.clone())
            }
            Failure::Call(CallError::Trap { kind, message }) => (trap_kind(*kind), message.clone()),
            Failure::Call(CallError::HostFault(m)) => (DeadLetterKind::Host, m.clone()),
            Failure::NoHandler(m) | Failure::Waiting(m) => (DeadLetterKind::NoHandler, m.clone()),
            Failure::NoRoute(m) => (DeadLetterKind::NoRoute, m.clone()),
            Failure::BadMessage(m) => (DeadLetterKind::BadMessage, m.clone()),
            Failure::Crashed { attempts } => (
                DeadLetterKind::Crashed,
                format!(
                    "claimed {attempts} time(s) without an outcome committing (the host crashed, was stopped or lost the message while handling it); not run again (handling.max_attempts)"
                ),
            ),
        }
    }
}

fn trap_kind(kind: TrapKind) -> DeadLetterKind {
    match kind {
        TrapKind::Panic => DeadLetterKind::Panic,
        TrapKind::Deadline => DeadLetterKind::Deadline,
        TrapKind::Memory => DeadLetterKind::Memory,
        TrapKind::Fuel => DeadLetterKind::Fuel,
        TrapKind::Limit => DeadLetterKind::Limit,
        TrapKind::Other => DeadLetterKind::Trap,
    }
}

/// What happens to the message after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Try again at `execute_at` (`now` when at once).
    Retry {
        attempts: u32,
        execute_at: i64,
    },
    DeadLetter(DeadLetterCause),
}

/// How much later a message whose plugin was removed is looked at again.
pub(crate) const WAIT_FOR_PLUGIN_MS: i64 = 1000;

/// Decide after a failure; `attempts_before` is the count of earlier failed attempts.
pub(crate) fn decide(
    failure: &Failure,
    attempts_before: u32,
    cfg: &HandlingConfig,
    now: i64,
) -> Disposition {
    let attempts = attempts_before.saturating_add(1);
    let (kind, message) = failure.describe();
    let dead = |replayable| {
        Disposition::DeadLetter(DeadLetterCause {
            kind: kind.clone(),
            message: message.clone(),
            attempts,
            replayable,
        })
    };
    match failure {
        // Due at once, as a scheduled row: a ready row with attempts is one
        // whose claim ended without an outcome (see `store::ClaimedRow`).
        Failure::Call(CallError::HostFault(_)) => Disposition::Retry {
            attempts: attempts_before,
            execute_at: now,
        },
        Failure::Waiting(_) => Disposition::Retry {
            attempts: attempts_before,
            execute_at: now.saturating_add(WAIT_FOR_PLUGIN_MS),
        },
        Failure::BadMessage(_) => dead(false),
        Failure::Crashed { .. } => Disposition::DeadLetter(DeadLetterCause {
            kind,
            message,
            attempts: attempts_before,
            replayable: true,
        }),
        Failure::Call(CallError::Handler(HandleError::Reject(_))) => dead(true),
        Failure::Call(CallError::Trap {
            kind: TrapKind::Limit,
            ..
        }) => dead(true),
        _ if attempts >= cfg.max_attempts => dead(true),
        _ => Disposition::Retry {
            attempts,
            execute_at: now.saturating_add(backoff(cfg.retry_delay_ms, attempts)),
        },
    }
}

/// Delay in ms before attempt `attempts + 1`: base * 2^(attempts-1), at
/// most one hour; 0 (at once) when the base is 0.
fn backoff(base_ms: u64, attempts: u32) -> i64 {
    const MAX: Duration = Duration::from_secs(3600);
    let delay = Backoff::nth(Duration::from_millis(base_ms), MAX, attempts);
    i64::try_from(delay.as_millis()).unwrap_or(3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_attempts: u32) -> HandlingConfig {
        HandlingConfig {
            max_attempts,
            retry_delay_ms: 100,
            ..HandlingConfig::default()
        }
    }

    #[test]
    fn a_message_of_a_removed_plugin_waits_without_counting_an_attempt() {
        let f = Failure::Waiting("plugin 'b' was removed".into());
        for before in [0, 2, 9] {
            assert_eq!(
                decide(&f, before, &cfg(3), 1000),
                Disposition::Retry {
                    attempts: before,
                    execute_at: 1000 + WAIT_FOR_PLUGIN_MS
                }
            );
        }
    }

    #[test]
    fn failures_retry_with_backoff_until_max_attempts_then_dead_letter_with_their_kind() {
        let f = Failure::Call(CallError::Trap {
            kind: TrapKind::Panic,
            message: "boom".into(),
        });
        assert_eq!(
            decide(&f, 0, &cfg(3), 1000),
            Disposition::Retry {
                attempts: 1,
                execute_at: 1100
            }
        );
        assert_eq!(
            decide(&f, 1, &cfg(3), 1000),
            Disposition::Retry {
                attempts: 2,
                execute_at: 1200
            }
        );
        assert_eq!(
            decide(&f, 2, &cfg(3), 1000),
            Disposition::DeadLetter(DeadLetterCause {
                attempts: 3,
                kind: DeadLetterKind::Panic,
                message: "boom".into(),
                replayable: true
            })
        );
    }

    #[test]
    fn reject_bad_messages_and_limits_skip_retries_and_host_faults_do_not_count() {
        let reject = Failure::Call(CallError::Handler(HandleError::Reject("no".into())));
        assert!(matches!(
            decide(&reject, 0, &cfg(5), 0),
            Disposition::DeadLetter(DeadLetterCause {
                attempts: 1,
                kind: DeadLetterKind::Rejected,
                ..
            })
        ));
        let bad = Failure::BadMessage("truncated".into());
        assert!(matches!(
            decide(&bad, 0, &cfg(5), 0),
            Disposition::DeadLetter(DeadLetterCause {
                kind: DeadLetterKind::BadMessage,
                replayable: false,
                ..
            })
        ));
        let limit = Failure::Call(CallError::Trap {
            kind: TrapKind::Limit,
            message: "sends exceeded plugins.max_sends = 1 (sent 2 messages)".into(),
        });
        assert_eq!(
            decide(&limit, 0, &cfg(5), 0),
            Disposition::DeadLetter(DeadLetterCause {
                attempts: 1,
                kind: DeadLetterKind::Limit,
                message: "sends exceeded plugins.max_sends = 1 (sent 2 messages)".into(),
                replayable: true
            })
        );
        let host = Failure::Call(CallError::HostFault("db".into()));
        assert_eq!(
            decide(&host, 2, &cfg(3), 0),
            Disposition::Retry {
                attempts: 2,
                execute_at: 0
            }
        );
    }
}
