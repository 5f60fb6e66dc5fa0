//! The errors of the message store: one typed error for every backend.

/// Errors of the message store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the message store at {target}")]
    Open {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the message store has no tables yet in {target}; run `jasper-host storage rebuild --config FILE` or start the host once"
    )]
    MissingSchema { target: String },
    #[error("the {backend} backend is not available yet (storage.url = {url})")]
    Unsupported { backend: &'static str, url: String },
    #[error("state {plugin}/{key} changed since it was read (expected version {expected})")]
    StaleState {
        plugin: String,
        key: String,
        expected: i64,
    },
    /// The batch's fence failed: these claimed rows are no longer this
    /// node's (another node took them after its lease was presumed expired).
    /// Nothing of the batch was written.
    #[error("{} claimed message(s) were taken by another node before the commit (first: {})", ids.len(), ids.first().map(ToString::to_string).unwrap_or_default())]
    Lost { ids: Vec<uuid::Uuid> },
    /// The database did not answer within `storage` timeout; the outcome of a
    /// commit that timed out is unknown (the fence resolves it on the next try).
    #[error("{operation} did not finish within {after_ms} ms (durability.store_timeout_ms)")]
    Timeout {
        operation: &'static str,
        after_ms: u64,
    },
    #[error("database error during {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { operation, source }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
