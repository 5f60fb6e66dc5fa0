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
