//! Errors: how a handler fails ([`HandleError`]) and what the host's imports can refuse.

use std::fmt;

/// How a handler says it failed; the host's error policy decides what happens next.
///
/// A panic in a handler is not one of these: it traps the instance and counts as
/// `Failed` on the host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleError {
    /// A transient fault: try again later, up to the configured attempts.
    Retry(String),
    /// The message can never succeed: move it to dead letters now.
    Reject(String),
    /// It failed; the error policy (retry, then dead letters) applies.
    Failed(String),
}

impl HandleError {
    /// A transient fault: try again later.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(reason.into())
    }

    /// The message can never succeed: dead-letter it now.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }

    /// It failed; the host's error policy applies.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed(reason.into())
    }

    /// The reason text, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::Reject(m) | Self::Failed(m) => m,
        }
    }
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(m) => write!(f, "retry: {m}"),
            Self::Reject(m) => write!(f, "rejected: {m}"),
            Self::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for HandleError {}

/// Why `send`, `publish` or `schedule` refused a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The destination URI names no queue, route or transport the host knows.
    UnknownDestination(String),
    /// The arguments are malformed (empty type, bad URI, time in the past...).
    Invalid(String),
    /// The message could not be serialized to JSON (never reached the host).
    Encode(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownDestination(m) => write!(f, "unknown destination: {m}"),
            Self::Invalid(m) => write!(f, "invalid send: {m}"),
            Self::Encode(m) => write!(f, "cannot encode message: {m}"),
        }
    }
}

impl std::error::Error for SendError {}

/// A send error inside a handler is a plain failure: the host's retry policy
/// applies (a later attempt may see a fixed route table). Return
/// [`HandleError::Reject`] yourself when you know better.
impl From<SendError> for HandleError {
    fn from(e: SendError) -> Self {
        Self::Failed(format!("send failed: {e}"))
    }
}

/// A typed state value could not be encoded or decoded as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateError {
    /// The state key involved.
    pub key: String,
    /// serde_json's description of the problem.
    pub message: String,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for StateError {}

/// A state value that does not decode is a failure the retry policy handles
/// (the value may be rewritten by a newer plugin version).
impl From<StateError> for HandleError {
    fn from(e: StateError) -> Self {
        Self::Failed(e.to_string())
    }
}
