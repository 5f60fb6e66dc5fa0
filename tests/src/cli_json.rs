//! The JSON the CLI prints (`storage counts --json`, `dead-letters list
//! --json`), as the suites read it.

use serde::Deserialize;
use std::fmt::Debug;

/// `storage counts --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub incoming: u64,
    pub scheduled: u64,
    pub handled: u64,
    pub outgoing: u64,
    pub dead_letters: u64,
}

/// One element of `dead-letters list --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub message_type: String,
    pub error_kind: String,
    #[serde(default)]
    pub error_message: Option<String>,
    pub attempts: u32,
}
