//! Background durability work, each a small verb on its own timer: the node's
//! heartbeat, the release of rows owned by dead nodes (so a live node claims
//! them), and the deletion of handled rows whose keep window ended. Start-up
//! recovery releases every row an earlier run of this node left behind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{error, info};

use crate::config::DurabilityConfig;
use crate::envelope::now_ms;
use crate::store::{MessageStore, Nodes, StoreResult};

/// Rows deleted per statement by the cleanup (keeps each transaction short).
const CLEANUP_BATCH: usize = 1000;

/// Register the node and take back what earlier runs of it (same name) or
/// dead nodes left owned. Returns the rows released.
pub(crate) async fn recover_on_start(
    store: &dyn Nodes,
    node_id: i64,
    name: &str,
    cfg: &DurabilityConfig,
) -> StoreResult<u64> {
    let now = now_ms();
    store.register_node(node_id, name, now).await?;
    let stale_before = now.saturating_sub(i64::try_from(cfg.stale_after_ms).unwrap_or(i64::MAX));
    let released = store
        .release_dead_nodes(node_id, Some(name), stale_before)
        .await?;
    if released > 0 {
        info!(
            released,
            "recovered messages left by an earlier run or a dead node"
        );
    }
    Ok(released)
}

/// Run heartbeat, dead-node release and cleanup until `shutdown`.
pub(crate) async fn run_agent(
    store: Arc<dyn MessageStore>,
    node_id: i64,
    cfg: DurabilityConfig,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heartbeat = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms.max(10)));
    let mut release =
        tokio::time::interval(Duration::from_millis((cfg.stale_after_ms / 2).max(10)));
    let mut cleanup = tokio::time::interval(Duration::from_millis(cfg.cleanup_interval_ms.max(10)));
    for t in [&mut heartbeat, &mut release, &mut cleanup] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = heartbeat.tick() => {
                if let Err(e) = store.heartbeat(node_id, now_ms()).await {
                    error!(error = %crate::error_chain(&e), "heartbeat failed");
                }
            }
            _ = release.tick() => {
                let stale_before = now_ms().saturating_sub(i64::try_from(cfg.stale_after_ms).unwrap_or(i64::MAX));
                match store.release_dead_nodes(node_id, None, stale_before).await {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(released = n, "released messages of dead nodes");
                        wake.notify_one();
                    }
                    Err(e) => error!(error = %crate::error_chain(&e), "releasing dead nodes' messages failed"),
                }
            }
            _ = cleanup.tick() => {
                loop {
                    match store.delete_expired_handled(now_ms(), CLEANUP_BATCH).await {
                        Ok(n) if n as usize == CLEANUP_BATCH => continue,
                        Ok(_) => break,
                        Err(e) => {
                            error!(error = %crate::error_chain(&e), "deleting expired handled messages failed");
                            break;
                        }
                    }
                }
            }
        }
    }
}
