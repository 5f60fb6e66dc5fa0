//! What a handler's `state` imports see: committed state (read once per batch
//! and cached with its version), plus the writes of earlier messages in the
//! same batch, plus the current message's own writes. The current message's
//! writes join the batch only if it succeeds; at commit the batch becomes
//! version-checked writes and checks (optimistic concurrency).

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{StateCheck, StateReader, StateValue, StateWrite, StoreError};

type Key = (String, String);

/// State seen and written by one batch of messages.
#[derive(Debug, Default)]
pub struct BatchState {
    reads: HashMap<Key, Option<StateValue>>,
    writes: HashMap<Key, Option<Vec<u8>>>,
}

impl BatchState {
    /// Turn the batch into the writes and version checks of its commit.
    pub fn into_commit(self) -> (Vec<StateWrite>, Vec<StateCheck>) {
        let version_read = |k: &Key| {
            self.reads
                .get(k)
                .map(|v| v.as_ref().map_or(0, |s| s.version))
        };
        let mut writes: Vec<StateWrite> = self
            .writes
            .iter()
            .map(|(k, v)| StateWrite {
                plugin: k.0.clone(),
                key: k.1.clone(),
                value: v.clone(),
                expected_version: version_read(k),
            })
            .collect();
        let mut checks: Vec<StateCheck> = self
            .reads
            .iter()
            .filter(|(k, _)| !self.writes.contains_key(*k))
            .map(|(k, v)| StateCheck {
                plugin: k.0.clone(),
                key: k.1.clone(),
                expected_version: v.as_ref().map_or(0, |s| s.version),
            })
            .collect();
        // A stable order keeps lock order the same across nodes.
        writes.sort_by(|a, b| (&a.plugin, &a.key).cmp(&(&b.plugin, &b.key)));
        checks.sort_by(|a, b| (&a.plugin, &a.key).cmp(&(&b.plugin, &b.key)));
        (writes, checks)
    }
}

/// The state view of one handler call.
#[derive(Debug)]
pub struct StateView {
    store: Option<Arc<dyn StateReader>>,
    plugin: Arc<str>,
    pub(crate) batch: BatchState,
    own: HashMap<String, Option<Vec<u8>>>,
}

impl StateView {
    /// A view without a database: reads see nothing committed (plugin inspection).
    pub(crate) fn detached(plugin: Arc<str>) -> Self {
        StateView {
            store: None,
            plugin,
            batch: BatchState::default(),
            own: HashMap::new(),
        }
    }

    pub fn new(store: Arc<dyn StateReader>, plugin: Arc<str>, batch: BatchState) -> Self {
        StateView {
            store: Some(store),
            plugin,
            batch,
            own: HashMap::new(),
        }
    }

    pub(crate) async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.own.get(key) {
            return Ok(v.clone());
        }
        let k = (self.plugin.to_string(), key.to_string());
        if let Some(v) = self.batch.writes.get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = self.batch.reads.get(&k) {
            return Ok(v.as_ref().map(|s| s.value.clone()));
        }
        let read = match &self.store {
            Some(store) => store.read_state(&self.plugin, key).await?,
            None => None,
        };
        let value = read.as_ref().map(|s| s.value.clone());
        self.batch.reads.insert(k, read);
        Ok(value)
    }

    /// Bytes (key and value) this call's own write of `key` holds; `None`
    /// when the call has not written it.
    pub(crate) fn held(&self, key: &str) -> Option<usize> {
        self.own
            .get(key)
            .map(|v| key.len().saturating_add(v.as_ref().map_or(0, Vec::len)))
    }

    pub(crate) fn put(&mut self, key: String, value: Vec<u8>) {
        self.own.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: String) {
        self.own.insert(key, None);
    }

    /// End of the call: keep the message's writes (on success) or drop them,
    /// and hand the batch back.
    pub(crate) fn finish(self, keep_writes: bool) -> BatchState {
        let mut batch = self.batch;
        if keep_writes {
            for (key, v) in self.own {
                batch.writes.insert((self.plugin.to_string(), key), v);
            }
        }
        batch
    }
}
