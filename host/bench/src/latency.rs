//! Latency under an offered load: when a host handled each message (from its
//! batch events, no query), and the percentiles of send → handled for
//! messages sent one by one at a fixed rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jasper_host::Host;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// When each message a host announced as handled was first seen handled.
pub struct Watch {
    handled: Arc<Mutex<HashMap<Uuid, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Start watching what `host` handles.
pub fn watch(host: &Host) -> Watch {
    let mut rx = host.subscribe();
    let handled = Arc::new(Mutex::new(HashMap::new()));
    let h = Arc::clone(&handled);
    let task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let now = Instant::now();
                    let mut map = h.lock().unwrap_or_else(PoisonError::into_inner);
                    for e in &ev.handled {
                        map.entry(e.id).or_insert(now);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    eprintln!("watcher lagged by {n} events; figures would be wrong");
                    std::process::exit(2);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Watch { handled, task }
}

impl Watch {
    /// Messages seen handled so far.
    pub fn count(&self) -> usize {
        self.handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Wait (up to 600 s) until `n` are handled; the error names `what`.
    pub async fn until(&self, n: usize, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.count() < n {
            if Instant::now() > deadline {
                bail!("{what}: only {} of {n} handled after 600 s", self.count());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    fn handled_at(&self, id: &Uuid) -> Option<Instant> {
        self.handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Send → handled under an offered load, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// The rate the sends actually went out at, per second.
    pub offered: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// `Host::send` of `message_type` on `sender`, one message every
/// 1/`rate` s for `seconds` (sends overlap when one takes longer), each timed from just before its send to the
/// moment `at` saw it handled.
pub async fn offered_load(
    sender: &Host,
    at: &Watch,
    message_type: &str,
    body: &[u8],
    rate: u64,
    seconds: u64,
    what: &str,
) -> anyhow::Result<Latency> {
    let n = usize::try_from(rate.saturating_mul(seconds))?;
    if n == 0 {
        bail!("{what}: no messages to send at {rate}/s for {seconds} s");
    }
    // Each send at its due time, whether or not the ones before it are done
    // (a send is a commit: one that waits must not lower the offered rate).
    let mut sent_at = Vec::with_capacity(n);
    let mut sending = FuturesUnordered::new();
    let start = Instant::now();
    let mut next = 0;
    let mut last_issued = start;
    while next < n || !sending.is_empty() {
        let due = start + Duration::from_secs_f64(next as f64 / rate as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()), if next < n => {
                next += 1;
                last_issued = Instant::now();
                sending.push(async {
                    let t = Instant::now();
                    (t, sender.send(message_type, body.to_vec(), None).await)
                });
            }
            Some((t, sent)) = sending.next(), if !sending.is_empty() => {
                for e in sent? {
                    sent_at.push((e.id, t));
                }
            }
        }
    }
    // Sends issued per second, from the first to the last.
    let offered = (n - 1).max(1) as f64 / last_issued.duration_since(start).as_secs_f64().max(1e-9);
    at.until(sent_at.len(), what).await?;
    let mut ms: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, t)| {
            at.handled_at(id)
                .map(|h| h.duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    if ms.len() != sent_at.len() {
        bail!(
            "{what}: {} of {} sends were seen handled",
            ms.len(),
            sent_at.len()
        );
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    Ok(Latency {
        offered,
        p50: pct(0.5),
        p99: pct(0.99),
        max: pct(1.0),
    })
}
