//! The rows the message store takes and gives back, the batch a group commit
//! makes durable, and the selection of dead letters an operator acts on. Plain
//! data: no SQL, no backend.

use serde::Serialize;
use uuid::Uuid;

use super::dead_letter::{DeadLetterCause, DeadLetterKind};

/// Status of a row in the incoming table.
pub const STATUS_INCOMING: &str = "incoming";
pub const STATUS_SCHEDULED: &str = "scheduled";
pub const STATUS_HANDLED: &str = "handled";

/// A new row for the incoming table.
#[derive(Debug, Clone)]
pub struct NewIncoming {
    pub id: Uuid,
    pub message_type: String,
    /// Where it is to be handled, e.g. `local://audit`.
    pub destination: String,
    /// Owner node; 0 lets any node claim it.
    pub owner_id: i64,
    /// `Some(t)`: scheduled, to run at `t` (ms).
    pub execute_at: Option<i64>,
    pub attempts: u32,
    /// The encoded envelope.
    pub body: Vec<u8>,
}

impl NewIncoming {
    /// The status the row starts in: scheduled when it has a time to run at.
    pub(crate) fn status(&self) -> &'static str {
        if self.execute_at.is_some() {
            STATUS_SCHEDULED
        } else {
            STATUS_INCOMING
        }
    }
}

/// A new row for the outgoing table: a message for a remote destination,
/// written in the handler's transaction and deleted once the peer confirms.
#[derive(Debug, Clone)]
pub struct NewOutgoing {
    pub id: Uuid,
    pub destination: String,
    pub deliver_by: Option<i64>,
    pub attempts: u32,
    pub message_type: String,
    /// The node that will send it; 0 lets any node take it.
    pub owner_id: i64,
    /// The encoded envelope.
    pub body: Vec<u8>,
}

/// An outgoing row taken for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRow {
    pub id: Uuid,
    pub destination: String,
    pub deliver_by: Option<i64>,
    pub attempts: u32,
    pub body: Vec<u8>,
}

/// What `insert_incoming` did.
#[derive(Debug, Default, Clone)]
pub struct InsertReport {
    pub inserted: usize,
    /// Ids already present (the inbox dedupes by id).
    pub duplicates: Vec<Uuid>,
}

/// A row claimed by this node for handling.
///
/// A ready row with attempts made before (not a due retry: a row whose
/// claim never came to an outcome) may be a message that kills the host; a
/// claim takes at most one such row, and the worker runs it after the rest
/// of the batch committed, so each crash counts an attempt against it alone
/// and not against the messages claimed with it.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: Uuid,
    /// Attempts made before this one (committed failures and claims that
    /// ended without an outcome: crashes, lost leases).
    pub attempts: u32,
    /// The row's attempt count as this claim left it (`attempts + 1`): with
    /// the owner, the claim's fencing token (see [`Fence`]).
    pub claim: u32,
    pub destination: String,
    pub body: Vec<u8>,
}

impl ClaimedRow {
    /// A row as a claim returned it: `stored` is its attempt count after
    /// the claim counted this attempt.
    pub(crate) fn claimed(id: Uuid, stored: u32, destination: String, body: Vec<u8>) -> Self {
        ClaimedRow {
            id,
            attempts: stored.saturating_sub(1),
            claim: stored.max(1),
            destination,
            body,
        }
    }

    /// What this claim fences (see [`Fence`]).
    pub(crate) fn held(&self) -> Held {
        Held {
            id: self.id,
            claim: self.claim,
        }
    }
}

/// An inbox row a batch holds: its id and the attempt count its claim left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub id: Uuid,
    pub claim: u32,
}

/// What a batch of claimed rows commits under: the claiming node and the
/// rows it claimed. The commit applies only if every row is still owned by
/// `node_id` with the attempt count its claim left; a row another node took
/// meanwhile (released by a sweep while this node was paused, partitioned
/// or slow, and claimed again) fails the commit with
/// [`super::StoreError::Lost`], and none of the batch's effects are written.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    pub node_id: i64,
    pub rows: Vec<Held>,
}

/// An inbox row as the fence found it (absent rows are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedRow {
    pub id: Uuid,
    pub owner_id: i64,
    pub attempts: i64,
    pub status: String,
}

/// A committed state value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateValue {
    pub value: Vec<u8>,
    pub version: i64,
}

/// One committed state key of a plugin, as `state list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub version: i64,
}

/// A state change in a group commit.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub plugin: String,
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// The version the batch read (0: absent); `None`: a blind write.
    pub expected_version: Option<i64>,
}

/// A state key read but not written by a batch: its version is checked at commit.
#[derive(Debug, Clone)]
pub struct StateCheck {
    pub plugin: String,
    pub key: String,
    pub expected_version: i64,
}

/// A failed attempt that will be tried again.
#[derive(Debug, Clone)]
pub struct RetryMark {
    pub id: Uuid,
    pub attempts: u32,
    /// `None`: right away; `Some(t)`: scheduled for `t`.
    pub execute_at: Option<i64>,
}

/// A message moved to dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub message_type: String,
    pub received_at: String,
    pub source: Option<String>,
    pub error_kind: DeadLetterKind,
    pub error_message: String,
    pub failed_at: i64,
    pub attempts: u32,
    pub replayable: bool,
    #[serde(skip)]
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// The one way the host makes a dead letter: the message (`id`, its type,
    /// where it was received or was going, its source, the encoded envelope)
    /// and why it failed, at `failed_at` (ms).
    pub(crate) fn new(
        id: Uuid,
        message_type: String,
        received_at: String,
        source: Option<String>,
        body: Vec<u8>,
        cause: DeadLetterCause,
        failed_at: i64,
    ) -> DeadLetter {
        DeadLetter {
            id,
            message_type,
            received_at,
            source,
            error_kind: cause.kind,
            error_message: cause.message,
            failed_at,
            attempts: cause.attempts,
            replayable: cause.replayable,
            body,
        }
    }
}

/// Everything one batch of handled messages makes durable, in one transaction.
#[derive(Debug, Default, Clone)]
pub struct CommitBatch {
    /// The claimed rows the batch's handled marks, retries and dead letters
    /// act on, checked first; `None` for messages with no inbox row (`tcp://`).
    pub fence: Option<Fence>,
    /// Incoming ids to mark handled, kept until the given time (ms).
    pub handled: Vec<(Uuid, i64)>,
    pub new_incoming: Vec<NewIncoming>,
    /// Messages for remote destinations (inserted; an existing id is kept).
    pub outgoing: Vec<NewOutgoing>,
    pub state_writes: Vec<StateWrite>,
    pub state_checks: Vec<StateCheck>,
    pub retries: Vec<RetryMark>,
    pub dead_letters: Vec<DeadLetter>,
}

impl CommitBatch {
    /// Nothing to make durable and nothing to check: a commit of it is a no-op.
    /// A batch with only state checks is not empty (its reads must still be current).
    pub(crate) fn is_empty(&self) -> bool {
        self.handled.is_empty()
            && self.new_incoming.is_empty()
            && self.outgoing.is_empty()
            && self.state_writes.is_empty()
            && self.state_checks.is_empty()
            && self.retries.is_empty()
            && self.dead_letters.is_empty()
    }
}

/// Row counts per kind, for `storage counts`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub incoming: i64,
    pub scheduled: i64,
    pub handled: i64,
    pub outgoing: i64,
    pub dead_letters: i64,
}

/// Which dead letters `replay`/`purge` act on: all of them, or the ones named.
/// `Ids` with no ids selects none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<Uuid>),
}

impl Selection {
    /// `All` when no id is given (the CLI without `--id`), else those ids.
    pub(crate) fn all_or(ids: Vec<Uuid>) -> Self {
        if ids.is_empty() {
            Selection::All
        } else {
            Selection::Ids(ids)
        }
    }

    /// True when nothing can match (an empty id list).
    pub(crate) fn is_none(&self) -> bool {
        matches!(self, Selection::Ids(ids) if ids.is_empty())
    }
}
