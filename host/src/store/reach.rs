//! Reaching the store at start-up: open it and create its tables, trying
//! again with the host's backoff while the database is not reachable yet (a
//! server still starting, a container not up) for `storage.connect_retry_ms`,
//! each try logged. An error that waiting will not mend (a wrong password, a
//! bad URL, a SQLite file that cannot be opened) fails at once. Once the host
//! runs, its own loops retry store calls; this is only the first contact.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::error::{StoreError, StoreResult};
use super::faces::MessageStore;
use super::shared::redact;
use crate::backoff::Backoff;
use crate::config::{Backend, StorageConfig};

/// The first wait between tries; it doubles up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// [`super::open_timed`] and `migrate`, tried again while the error is
/// transient and `config.connect_retry_ms` has not passed; then
/// [`StoreError::Unreachable`] with the last error.
pub(crate) async fn open_and_migrate(
    config: &StorageConfig,
    timeout: Duration,
) -> StoreResult<Arc<dyn MessageStore>> {
    let limit = Duration::from_millis(config.connect_retry_ms);
    let started = Instant::now();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut attempt: u32 = 1;
    loop {
        let error = match try_once(config, timeout).await {
            Ok(store) => {
                if attempt > 1 {
                    info!(event = %"store-reachable", target = %target(config), attempt, "the message store answered");
                }
                return Ok(store);
            }
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let waited = started.elapsed();
        let Some(left) = limit.checked_sub(waited).filter(|l| !l.is_zero()) else {
            return Err(StoreError::Unreachable {
                target: target(config),
                attempts: attempt,
                waited_ms: millis(waited),
                limit_ms: config.connect_retry_ms,
                last: Box::new(error),
            });
        };
        let delay = backoff.next_delay().min(left);
        warn!(
            event = %"store-unreachable",
            target = %target(config),
            attempt,
            error = %crate::error_chain(&error),
            retry_in = ?delay,
            "the message store is not reachable yet; trying again (storage.connect_retry_ms = {})",
            config.connect_retry_ms
        );
        tokio::time::sleep(delay).await;
        attempt = attempt.saturating_add(1);
    }
}

async fn try_once(config: &StorageConfig, timeout: Duration) -> StoreResult<Arc<dyn MessageStore>> {
    let store = super::open_timed(config, timeout).await?;
    store.migrate().await?;
    Ok(store)
}

/// Where the store is, without a password: the URL or the SQLite file.
fn target(config: &StorageConfig) -> String {
    match &config.backend {
        Backend::Sqlite { path } => path.display().to_string(),
        Backend::Postgres { url } | Backend::Mysql { url } => redact(url),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn unreachable_pg(retry_ms: u64) -> StorageConfig {
        // Port 1 on loopback: refused at once.
        let url = "postgres://app:s3cret@127.0.0.1:1/app".to_owned();
        StorageConfig {
            url: url.clone(),
            connect_retry_ms: retry_ms,
            backend: Backend::Postgres { url },
            ..StorageConfig::default()
        }
    }

    // Real time: a paused clock would jump over the connect timeout while the
    // refusal is on its way.
    #[tokio::test]
    async fn a_refused_server_is_tried_until_the_time_is_up_then_named_without_its_password() {
        let started = Instant::now();
        let err = match open_and_migrate(&unreachable_pg(1000), Duration::from_secs(1)).await {
            Err(e) => e,
            Ok(_) => panic!("port 1 answered"),
        };
        let StoreError::Unreachable {
            target,
            attempts,
            limit_ms,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(target, "postgres://app@127.0.0.1:1/app");
        assert_eq!(*limit_ms, 1000);
        // Waits of 200, 400 and what is left of the second.
        assert!((2..=4).contains(attempts), "{err:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let shown = crate::error_chain(&err);
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
        assert!(shown.contains("unreachable"), "the last error: {shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn zero_fails_after_one_try() {
        let err = match open_and_migrate(&unreachable_pg(0), Duration::from_secs(1)).await {
            Err(e) => e,
            Ok(_) => panic!("port 1 answered"),
        };
        assert!(
            matches!(err, StoreError::Unreachable { attempts: 1, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_error_waiting_will_not_mend_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            backend: Backend::Sqlite {
                path: dir.path().join("missing-folder/jasper.db"),
            },
            ..StorageConfig::default()
        };
        let started = std::time::Instant::now();
        let err = match open_and_migrate(&config, Duration::from_secs(1)).await {
            Err(e) => e,
            Ok(_) => panic!("opened a file in a missing folder"),
        };
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
