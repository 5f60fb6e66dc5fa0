//! The sequences of the node sweep, `storage release` and `storage clear`
//! (and with them the [`Nodes`] face), written once: which tables, in which order, in one transaction. Backends
//! supply the statements as [`MaintenanceSteps`], each returning the rows it
//! affected.

use std::fmt::Debug;

use async_trait::async_trait;

use super::commit::{CommitSteps, Transactional, run_again};
use super::error::StoreResult;
use super::faces::Nodes;

/// A table of the store that holds messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Incoming,
    Outgoing,
    DeadLetters,
}

impl Table {
    /// The name of this table among a backend's three.
    pub(crate) fn pick<'a>(
        self,
        incoming: &'a str,
        outgoing: &'a str,
        dead_letters: &'a str,
    ) -> &'a str {
        match self {
            Table::Incoming => incoming,
            Table::Outgoing => outgoing,
            Table::DeadLetters => dead_letters,
        }
    }
}

/// Tables whose rows have an owner node.
pub(crate) const OWNED: [Table; 2] = [Table::Incoming, Table::Outgoing];

/// Who is dead in a node sweep: every node but `self_id` whose heartbeat is
/// older than `stale_before`. Never by name: a node of the same name may be
/// a second live host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeSweep {
    pub self_id: i64,
    pub stale_before: i64,
}

/// The statements of the maintenance sequences on one open transaction.
#[async_trait]
pub(crate) trait MaintenanceSteps: CommitSteps {
    /// Hand rows owned by no live node (dead, never registered, or removed)
    /// back to any node, in both owned tables. Returns rows released.
    async fn release_orphans(&mut self, sweep: &NodeSweep) -> StoreResult<u64>;
    /// Forget the dead nodes. Returns nodes removed.
    async fn forget_dead_nodes(&mut self, sweep: &NodeSweep) -> StoreResult<u64>;
    /// Hand every owned row of `table` back to any node. Returns rows released.
    async fn release_owned(&mut self, table: Table) -> StoreResult<u64>;
    /// Delete every row of `table`. Returns rows deleted.
    async fn delete_all(&mut self, table: Table) -> StoreResult<u64>;
}

/// The node registry of a backend: the statements the [`Nodes`] face adds to
/// the shared sweeps.
#[async_trait]
pub(crate) trait NodeRows: Send + Sync + Debug {
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()>;
    /// Returns false when the node's registry row is gone.
    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool>;
    async fn remove_node(&self, node_id: i64) -> StoreResult<()>;
}

#[async_trait]
impl<B> Nodes for B
where
    B: NodeRows + Transactional,
    B::Tx: MaintenanceSteps,
{
    async fn register_node(&self, node_id: i64, name: &str, now: i64) -> StoreResult<()> {
        NodeRows::register_node(self, node_id, name, now).await
    }

    async fn heartbeat(&self, node_id: i64, now: i64) -> StoreResult<bool> {
        NodeRows::heartbeat(self, node_id, now).await
    }

    async fn remove_node(&self, node_id: i64) -> StoreResult<()> {
        NodeRows::remove_node(self, node_id).await
    }

    /// One transaction: release the rows of dead nodes, then forget them.
    async fn release_dead_nodes(&self, self_id: i64, stale_before: i64) -> StoreResult<u64> {
        let sweep = NodeSweep {
            self_id,
            stale_before,
        };
        run_again(self, || async {
            let mut tx = self.begin_steps().await?;
            let released = tx.release_orphans(&sweep).await?;
            tx.forget_dead_nodes(&sweep).await?;
            tx.finish().await?;
            Ok(released)
        })
        .await
    }

    async fn release_all(&self) -> StoreResult<u64> {
        run_again(self, || async {
            let mut tx = self.begin_steps().await?;
            let mut released = 0;
            for table in OWNED {
                released += tx.release_owned(table).await?;
            }
            tx.finish().await?;
            Ok(released)
        })
        .await
    }
}

/// Delete every message of every kind in one transaction; keep schema,
/// nodes and state.
pub(crate) async fn clear<B>(backend: &B) -> StoreResult<()>
where
    B: Transactional,
    B::Tx: MaintenanceSteps,
{
    run_again(backend, || async {
        let mut tx = backend.begin_steps().await?;
        for table in [Table::Incoming, Table::Outgoing, Table::DeadLetters] {
            tx.delete_all(table).await?;
        }
        tx.finish().await
    })
    .await
}
