//! Background durability work, each a small verb on its own timer with
//! jitter: the node's heartbeat (its lease), the release of rows owned by
//! dead nodes (so a live node claims them), and the deletion of handled rows
//! whose keep window ended. The three run side by side, so a long cleanup
//! never delays a heartbeat.
//!
//! A node is dead when its heartbeat is older than `stale_after_ms`; never
//! because of its name (two live hosts may share one). A node judges others
//! only after its own heartbeats have succeeded for a whole `stale_after_ms`
//! (since start, or since the database came back or the process woke from a
//! pause): after an outage every node's heartbeat is old, and the ones that
//! reconnect first must not take the rows of the ones that reconnect later.
//! A node that finds its registry row gone (it was judged dead: paused,
//! partitioned) re-registers; the rows it had were released, and its
//! uncommitted work on them is fenced off at commit (`store/commit.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::backoff::jitter;
use crate::config::DurabilityConfig;
use crate::envelope::now_ms;
use crate::store::{Inbox, MessageStore, Nodes, StoreResult};

/// Rows deleted per statement by the cleanup (keeps each transaction short).
const CLEANUP_BATCH: usize = 1000;

fn stale_before(cfg: &DurabilityConfig) -> i64 {
    now_ms().saturating_sub(i64::try_from(cfg.stale_after_ms).unwrap_or(i64::MAX))
}

/// Register the node and take back what dead nodes left owned (nodes whose
/// heartbeat is stale, and owners that are no registered node). Returns the
/// rows released.
pub(crate) async fn recover_on_start(
    store: &dyn Nodes,
    node_id: i64,
    name: &str,
    cfg: &DurabilityConfig,
) -> StoreResult<u64> {
    store.register_node(node_id, name, now_ms()).await?;
    let released = store.release_dead_nodes(node_id, stale_before(cfg)).await?;
    if released > 0 {
        info!(
            event = %"dead-nodes-released",
            released,
            "released messages of dead nodes at start"
        );
    }
    Ok(released)
}

/// Since when this node's heartbeats have succeeded without a gap longer
/// than a lease; `None` while they fail.
#[derive(Debug)]
struct Lease {
    connected_since: Mutex<Option<Instant>>,
}

impl Lease {
    fn set(&self, since: Option<Instant>) {
        if let Ok(mut s) = self.connected_since.lock() {
            *s = since;
        }
    }

    /// Whether this node has been connected for at least `lease`.
    fn judges(&self, lease: Duration) -> bool {
        self.connected_since
            .lock()
            .ok()
            .and_then(|s| *s)
            .is_some_and(|t| t.elapsed() >= lease)
    }
}

/// Run heartbeat, dead-node release and cleanup until `shutdown`.
pub(crate) async fn run_agent(
    store: Arc<dyn MessageStore>,
    node_id: i64,
    name: String,
    cfg: DurabilityConfig,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    let lease = Lease {
        connected_since: Mutex::new(Some(Instant::now())),
    };
    tokio::join!(
        heartbeats(&*store, node_id, &name, &cfg, &lease, shutdown.clone()),
        sweeps(&*store, node_id, &cfg, &lease, &wake, shutdown.clone()),
        cleanups(&*store, &cfg, shutdown),
    );
}

/// Sleep for `period` (jittered); false when shutdown came first.
async fn tick(period: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(jitter(period)) => true,
        _ = shutdown.changed() => false,
    }
}

async fn heartbeats(
    store: &dyn Nodes,
    node_id: i64,
    name: &str,
    cfg: &DurabilityConfig,
    lease: &Lease,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = Duration::from_millis(cfg.heartbeat_ms.max(10));
    let lease_len = Duration::from_millis(cfg.stale_after_ms);
    let mut last_ok = Instant::now();
    let mut failing = false;
    while tick(period, &mut shutdown).await {
        match store.heartbeat(node_id, now_ms()).await {
            Ok(true) => {
                let gap = last_ok.elapsed();
                if failing || gap > lease_len {
                    // Others may have judged this node dead meanwhile.
                    warn!(
                        event = %"lease-renewed",
                        gap_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX),
                        "heartbeat back after a gap; rows other nodes took meanwhile are fenced off at commit"
                    );
                    lease.set(Some(Instant::now()));
                }
                failing = false;
                last_ok = Instant::now();
            }
            Ok(false) => {
                warn!(
                    event = %"lease-lost",
                    node_id,
                    "this node's registry row is gone: other nodes judged it dead and released its messages; work in hand on them will not commit; registering again"
                );
                match store.register_node(node_id, name, now_ms()).await {
                    Ok(()) => {
                        last_ok = Instant::now();
                        failing = false;
                        lease.set(Some(last_ok));
                    }
                    Err(e) => {
                        error!(error = %crate::error_chain(&e), "registering the node again failed");
                        failing = true;
                        lease.set(None);
                    }
                }
            }
            Err(e) => {
                error!(error = %crate::error_chain(&e), "heartbeat failed");
                failing = true;
                lease.set(None);
            }
        }
    }
}

async fn sweeps(
    store: &dyn Nodes,
    node_id: i64,
    cfg: &DurabilityConfig,
    lease: &Lease,
    wake: &Notify,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = Duration::from_millis((cfg.stale_after_ms / 2).max(10));
    let lease_len = Duration::from_millis(cfg.stale_after_ms);
    while tick(period, &mut shutdown).await {
        if !lease.judges(lease_len) {
            continue;
        }
        match store.release_dead_nodes(node_id, stale_before(cfg)).await {
            Ok(0) => {}
            Ok(n) => {
                info!(event = %"dead-nodes-released", released = n, "released messages of dead nodes");
                wake.notify_one();
            }
            Err(e) => {
                error!(error = %crate::error_chain(&e), "releasing dead nodes' messages failed")
            }
        }
    }
}

async fn cleanups(store: &dyn Inbox, cfg: &DurabilityConfig, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(cfg.cleanup_interval_ms.max(10));
    while tick(period, &mut shutdown).await {
        loop {
            match store.delete_expired_handled(now_ms(), CLEANUP_BATCH).await {
                Ok(n) if n as usize == CLEANUP_BATCH && !*shutdown.borrow() => continue,
                Ok(_) => break,
                Err(e) => {
                    error!(error = %crate::error_chain(&e), "deleting expired handled messages failed");
                    break;
                }
            }
        }
    }
}
