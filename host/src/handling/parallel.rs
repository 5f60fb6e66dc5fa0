//! The handler calls of one batch on every core, with the batch's order kept
//! where state is shared. State is per plugin, so the calls of different
//! plugins never touch the same key and run at once. The calls of one plugin
//! run at once too (each on a fork of the batch's state: its committed
//! reads, none of its writes), and are then taken in batch order: a call
//! that read a key an earlier message of the batch wrote is run again, after
//! those, on the batch's state so far. The outcome is the one the calls
//! would have had one after another. A plugin whose calls keep colliding
//! (one hot key) runs one after another for a while, so it does not pay for
//! each call twice. At most `plugins.max_in_flight` calls run at a time, and
//! at most a plugin's own `max_in_flight` of that plugin.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;
use tracing::{Instrument, Span, warn};

use crate::admin::Metrics;
use crate::envelope::Envelope;
use crate::runtime::routing::Router;
use crate::runtime::state_view::{BatchState, StateView};
use crate::runtime::{CallError, CallOutcome, Plugin, Runtime};
use crate::store::StateReader;

/// A plugin whose calls collided this often (1 in this many) runs one call
/// after another for the next [`SERIAL_BATCHES`] batches.
const COLLISIONS_ONE_IN: usize = 8;
const SERIAL_BATCHES: u32 = 32;

/// One handler call of a batch: the row's place in the batch, its plugin,
/// its envelope and the message's span.
pub(super) struct Call {
    pub index: usize,
    pub plugin: Arc<Plugin>,
    pub envelope: Arc<Envelope>,
    pub span: Span,
}

/// What a call came to: the row's place and what the handler sent, or why it
/// failed.
pub(super) type Done = (usize, Result<Vec<Envelope>, CallError>);

/// What every batch's calls share: the runtime, a bound on calls at once,
/// and which plugins run one call after another for now.
#[derive(Debug)]
pub(crate) struct Calls {
    runtime: Arc<Runtime>,
    store: Arc<dyn StateReader>,
    permits: Arc<Semaphore>,
    /// Per plugin, batches left to run one call after another.
    serial: Mutex<HashMap<Arc<str>, u32>>,
    /// Handler call times (`/metrics`).
    metrics: Arc<Metrics>,
}

impl Calls {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        store: Arc<dyn StateReader>,
        at_once: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Calls {
            runtime,
            store,
            permits: Arc::new(Semaphore::new(at_once.max(1))),
            serial: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Run `calls` (in batch order) and return their outcomes in that order
    /// with the batch's state.
    pub(super) async fn run(
        &self,
        calls: Vec<Call>,
        router: &Arc<Router>,
    ) -> (Vec<Done>, BatchState) {
        let mut batch = BatchState::default();
        let mut groups: BTreeMap<Arc<str>, Vec<Call>> = BTreeMap::new();
        for call in calls {
            groups
                .entry(call.plugin.name.clone())
                .or_default()
                .push(call);
        }
        let runs = groups
            .into_values()
            .map(|group| self.run_plugin(group, &batch, router));
        let mut done = Vec::new();
        for (d, state) in futures::future::join_all(runs).await {
            batch.absorb(state);
            done.extend(d);
        }
        done.sort_by_key(|d| d.0);
        (done, batch)
    }

    /// One plugin's calls of a batch, as if one after another.
    async fn run_plugin(
        &self,
        group: Vec<Call>,
        batch: &BatchState,
        router: &Arc<Router>,
    ) -> (Vec<Done>, BatchState) {
        let Some(first) = group.first() else {
            return (Vec::new(), batch.fork());
        };
        let name = first.plugin.name.clone();
        let mut state = batch.fork();
        let mut done = Vec::with_capacity(group.len());
        if group.len() == 1 || self.serial_now(&name) {
            for call in &group {
                match self.after(call, state, router).await {
                    Ok((d, next)) => {
                        state = next;
                        done.push(d);
                    }
                    Err(fault) => return all_failed(&group, batch, &fault),
                }
            }
            return (done, state);
        }
        // All at once, each on a fork; spawned now, awaited in order.
        let runs: Vec<_> = group
            .iter()
            .map(|call| self.spawn(call, batch.fork(), router))
            .collect();
        let mut collided = 0;
        for (call, run) in group.iter().zip(runs) {
            let out = match run.await {
                Ok(out) => out,
                Err(e) => return all_failed(&group, batch, &task_fault(&e)),
            };
            if state.wrote_any(&name, &out.read) {
                // It read what an earlier message of the batch wrote: run it
                // again on the batch's state so far.
                collided += 1;
                match self.after(call, state, router).await {
                    Ok((d, next)) => {
                        state = next;
                        done.push(d);
                    }
                    Err(fault) => return all_failed(&group, batch, &fault),
                }
            } else {
                state.absorb(out.state);
                done.push((call.index, out.result.map(|()| out.sent)));
            }
        }
        if collided * COLLISIONS_ONE_IN > group.len() {
            self.serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, SERIAL_BATCHES);
        }
        (done, state)
    }

    /// Whether `plugin`'s calls run one after another in this batch.
    fn serial_now(&self, plugin: &Arc<str>) -> bool {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        match serial.get_mut(plugin) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Run `call` on `state` (the batch's so far) and return its outcome
    /// with the state it leaves; `Err` when its task ended without one.
    async fn after(
        &self,
        call: &Call,
        state: BatchState,
        router: &Arc<Router>,
    ) -> Result<(Done, BatchState), String> {
        let out = self
            .spawn(call, state, router)
            .await
            .map_err(|e| task_fault(&e))?;
        Ok(((call.index, out.result.map(|()| out.sent)), out.state))
    }

    /// Start `call` on its own task (any core), once a permit is free.
    fn spawn(
        &self,
        call: &Call,
        state: BatchState,
        router: &Arc<Router>,
    ) -> tokio::task::JoinHandle<CallOutcome> {
        let runtime = Arc::clone(&self.runtime);
        let permits = Arc::clone(&self.permits);
        let plugin = Arc::clone(&call.plugin);
        let envelope = Arc::clone(&call.envelope);
        let router = Arc::clone(router);
        let view = StateView::new(Arc::clone(&self.store), plugin.name.clone(), state);
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(
            async move {
                // Never closed, so a permit always comes: the plugin's own
                // first (`[plugins.NAME] max_in_flight`), then the host's.
                let _own = match &plugin.calls {
                    Some(calls) => Some(Arc::clone(calls).acquire_owned().await),
                    None => None,
                };
                let _permit = permits.acquire_owned().await;
                let started = std::time::Instant::now();
                let out = runtime.handle(&plugin, &envelope, router, view).await;
                metrics.handler_call(&plugin.name, started.elapsed());
                out
            }
            .instrument(call.span.clone()),
        )
    }
}

/// Every call of `group` failed with a host fault (retried without an
/// attempt counted): a call's task ended without an outcome, and the
/// group's state went with it.
fn all_failed(group: &[Call], batch: &BatchState, fault: &str) -> (Vec<Done>, BatchState) {
    warn!(error = %fault, calls = group.len(), "a handler call ended without an outcome; its plugin's messages of this batch run again");
    let done = group
        .iter()
        .map(|c| (c.index, Err(CallError::HostFault(fault.to_string()))))
        .collect();
    (done, batch.fork())
}

fn task_fault(e: &tokio::task::JoinError) -> String {
    format!("the handler call's task failed: {e}")
}
