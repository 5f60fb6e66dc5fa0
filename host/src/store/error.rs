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
    /// At start-up the store stayed unreachable for `storage.connect_retry_ms`;
    /// `last` is the last attempt's error.
    #[error(
        "the message store at {target} was not reachable: {attempts} attempt(s) in {waited_ms} ms (storage.connect_retry_ms = {limit_ms})"
    )]
    Unreachable {
        target: String,
        attempts: u32,
        waited_ms: u64,
        limit_ms: u64,
        #[source]
        last: Box<StoreError>,
    },
}

impl StoreError {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { operation, source }
    }

    /// Whether waiting may mend it: the server cannot be reached, is still
    /// starting, has no connection slot free, or did not answer in time. A
    /// wrong password, a missing database or a bad URL is not.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Database { source, .. } => {
                transient(source)
            }
            StoreError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// SQLSTATEs of a server that is up but cannot serve yet: starting up or
/// shutting down (57P03, 57P01), too many connections (53300, MySQL 08004),
/// connection failures (08001, 08006).
const TRANSIENT_SQLSTATES: [&str; 6] = ["57P03", "57P01", "53300", "08004", "08001", "08006"];

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| TRANSIENT_SQLSTATES.contains(&c.as_ref())),
        _ => false,
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_waiting_may_mend_is_transient() {
        let refused = || {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        };
        let open = |source| StoreError::Open {
            target: "postgres://u@h/db".into(),
            source,
        };
        assert!(open(refused()).is_transient());
        assert!(open(sqlx::Error::PoolTimedOut).is_transient());
        assert!(StoreError::db("migrate")(refused()).is_transient());
        assert!(
            StoreError::Timeout {
                operation: "claim",
                after_ms: 1
            }
            .is_transient()
        );
        assert!(!open(sqlx::Error::Configuration("bad url".into())).is_transient());
        assert!(!StoreError::MissingSchema { target: "x".into() }.is_transient());
    }
}
