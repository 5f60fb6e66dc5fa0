//! The host's one backoff: delays that double from a base up to a cap, and a
//! pause that a shutdown cuts short. Every retry loop (the worker's database
//! retries, the sending agents, the RabbitMQ listener) and the retry schedule
//! of failed messages use it; none writes its own doubling. [`jitter`]
//! spreads a timer's period.

use std::time::Duration;

use tokio::sync::watch;

/// Doubling delays: `base`, `2 * base`, `4 * base`, … at most `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            next: base.min(max),
        }
    }

    /// The delay to wait now; the one after it is twice as long (capped).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Start again from the base (the operation succeeded).
    pub(crate) fn reset(&mut self) {
        self.next = self.base.min(self.max);
    }

    /// The delay before retry number `n` (1 for the first): `base * 2^(n-1)`,
    /// at most `max`. The same sequence [`Backoff::next_delay`] walks.
    pub(crate) fn nth(base: Duration, max: Duration, n: u32) -> Duration {
        // 2^20 times any base this host uses is past every cap it uses.
        let factor = 1u32 << n.saturating_sub(1).min(20);
        base.saturating_mul(factor).min(max)
    }
}

/// `d` spread by up to a tenth either way, so timers of many nodes (and
/// retries of many messages) do not fire in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let spread = d / 10;
    if spread.is_zero() {
        return d;
    }
    let offset = rand::rng().random_range(Duration::ZERO..=spread.saturating_mul(2));
    d.saturating_sub(spread).saturating_add(offset)
}

/// How a [`pause`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The delay passed.
    Go,
    /// Shutdown was signalled (or its sender is gone) first.
    Shutdown,
}

/// Sleep for `d` unless `shutdown` changes first.
pub(crate) async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> Wake {
    tokio::select! {
        _ = tokio::time::sleep(d) => Wake::Go,
        _ = shutdown.changed() => Wake::Shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(50 * MS, 5000 * MS);
        let walked: Vec<_> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(walked, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), 50 * MS);
    }

    #[test]
    fn nth_is_the_walked_sequence() {
        let mut b = Backoff::new(100 * MS, 3_600_000 * MS);
        for n in 1..40 {
            assert_eq!(
                Backoff::nth(100 * MS, 3_600_000 * MS, n),
                b.next_delay(),
                "n = {n}"
            );
        }
        assert_eq!(Backoff::nth(100 * MS, 3_600_000 * MS, 0), 100 * MS);
        assert_eq!(
            Backoff::nth(Duration::MAX, Duration::MAX, 30),
            Duration::MAX,
            "saturates"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_waits_the_delay_or_ends_on_shutdown() {
        let (tx, mut rx) = watch::channel(false);
        let start = tokio::time::Instant::now();
        assert_eq!(pause(&mut rx, 250 * MS).await, Wake::Go);
        assert_eq!(start.elapsed(), 250 * MS);

        let stopper = tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            let _ = tx.send(true);
        });
        let start = tokio::time::Instant::now();
        assert_eq!(
            pause(&mut rx, Duration::from_secs(3600)).await,
            Wake::Shutdown
        );
        assert_eq!(start.elapsed(), 10 * MS);
        stopper.await.unwrap();
    }
}
