//! Waiting on a condition with a deadline ([`wait_until`]), never sleeping.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use crate::{POLL, TestHost};

/// Polls `probe` every [`POLL`] until `done(&value)` holds and returns that
/// value. Panics after `timeout` with `what` and the last observed value (or
/// the last probe error). Bounded by count and time.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    probe: F,
    done: impl FnMut(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    poll_until(what, timeout, POLL, probe, done, None).await
}

pub(crate) async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
    mut done: impl FnMut(&T) -> bool,
    host: Option<&TestHost>,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let every = every.max(Duration::from_millis(1));
    let max_polls = timeout.as_millis() / every.as_millis() + 2;
    let mut last: Option<anyhow::Result<T>> = None;
    let watch_host = host.filter(|h| h.is_running());
    for _ in 0..max_polls {
        match probe().await {
            Ok(v) if done(&v) => return v,
            other => last = Some(other),
        }
        if let Some(h) = watch_host
            && let Some(st) = h.exit_status()
        {
            panic!(
                "the host exited ({st}) after {:.1?} while waiting for {what}; last observed: {}\nhost log tail:\n{}",
                start.elapsed(),
                show_last(&last),
                h.log_tail(60)
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    panic!(
        "timed out after {:.1?} waiting for {what}; last observed: {}",
        start.elapsed(),
        show_last(&last)
    );
}

fn show_last<T: Debug>(last: &Option<anyhow::Result<T>>) -> String {
    match last {
        None => "(nothing: no probe ran)".to_owned(),
        Some(Ok(v)) => format!("{v:#?}"),
        Some(Err(e)) => format!("error: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_value_or_panics_with_the_last_one() {
        let mut n = 0;
        let v = wait_until(
            "n to reach 3",
            Duration::from_secs(5),
            || {
                n += 1;
                let v = n;
                async move { Ok(v) }
            },
            |v| *v >= 3,
        )
        .await;
        assert_eq!(v, 3);

        let r = tokio::spawn(async {
            wait_until(
                "never",
                Duration::from_millis(100),
                || async { Ok(41) },
                |v| *v == 42,
            )
            .await
        })
        .await;
        let msg = match r {
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                p.downcast_ref::<String>().cloned().unwrap_or_default()
            }
            other => panic!("wait_until should have panicked: {other:?}"),
        };
        assert!(
            msg.contains("timed out") && msg.contains("never") && msg.contains("41"),
            "{msg}"
        );
    }
}
