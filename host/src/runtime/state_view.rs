//! What a handler's `state` imports see: committed state (read once per batch
//! and cached with its version, shared by every call of the batch, also those
//! running at the same time, so a batch sees one version of each key), plus
//! the writes of earlier messages in the same batch, plus the current
//! message's own writes. The current message's writes join the batch only if
//! it succeeds; at commit the batch becomes version-checked writes and checks
//! (optimistic concurrency). Each call also reports the keys it read past its
//! own writes, so a call run beside earlier messages of its batch can be
//! checked against what those wrote (see `handling::parallel`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::{StateCheck, StateReader, StateValue, StateWrite, StoreError};

type Key = (String, String);

/// The committed state one batch read, each key once.
#[derive(Debug, Default)]
struct Reads(Mutex<HashMap<Key, Option<StateValue>>>);

impl Reads {
    fn get(&self, k: &Key) -> Option<Option<StateValue>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(k)
            .cloned()
    }

    /// Keep `read` unless another call of the batch read the key first; the
    /// value the batch goes on with is returned.
    fn keep(&self, k: Key, read: Option<StateValue>) -> Option<StateValue> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(k)
            .or_insert(read)
            .clone()
    }
}

/// State seen and written by one batch of messages.
#[derive(Debug, Default)]
pub struct BatchState {
    reads: Arc<Reads>,
    writes: HashMap<Key, Option<Vec<u8>>>,
}

impl BatchState {
    /// A state for a call run beside the batch's others: the batch's
    /// committed reads, none of its writes.
    pub(crate) fn fork(&self) -> BatchState {
        BatchState {
            reads: Arc::clone(&self.reads),
            writes: HashMap::new(),
        }
    }

    /// Add the writes of `other` (a fork's), as if made after this batch's.
    pub(crate) fn absorb(&mut self, other: BatchState) {
        self.writes.extend(other.writes);
    }

    /// Whether this batch wrote any of `plugin`'s `keys`.
    pub(crate) fn wrote_any(&self, plugin: &str, keys: &HashSet<String>) -> bool {
        keys.iter()
            .any(|k| self.writes.contains_key(&(plugin.to_string(), k.clone())))
    }

    /// Turn the batch into the writes and version checks of its commit.
    pub fn into_commit(self) -> (Vec<StateWrite>, Vec<StateCheck>) {
        let reads = match Arc::try_unwrap(self.reads) {
            Ok(r) => r.0.into_inner().unwrap_or_else(PoisonError::into_inner),
            Err(shared) => shared
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        let version_read = |k: &Key| reads.get(k).map(|v| v.as_ref().map_or(0, |s| s.version));
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
        let mut checks: Vec<StateCheck> = reads
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
    /// Keys read past the call's own writes.
    read: HashSet<String>,
}

impl StateView {
    /// A view without a database: reads see nothing committed (plugin inspection).
    pub(crate) fn detached(plugin: Arc<str>) -> Self {
        StateView {
            store: None,
            plugin,
            batch: BatchState::default(),
            own: HashMap::new(),
            read: HashSet::new(),
        }
    }

    pub fn new(store: Arc<dyn StateReader>, plugin: Arc<str>, batch: BatchState) -> Self {
        StateView {
            store: Some(store),
            plugin,
            batch,
            own: HashMap::new(),
            read: HashSet::new(),
        }
    }

    pub(crate) async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.own.get(key) {
            return Ok(v.clone());
        }
        if !self.read.contains(key) {
            self.read.insert(key.to_string());
        }
        let k = (self.plugin.to_string(), key.to_string());
        if let Some(v) = self.batch.writes.get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = self.batch.reads.get(&k) {
            return Ok(v.map(|s| s.value));
        }
        let read = match &self.store {
            Some(store) => store.read_state(&self.plugin, key).await?,
            None => None,
        };
        Ok(self.batch.reads.keep(k, read).map(|s| s.value))
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
    /// and hand the batch back with the keys the call read.
    pub(crate) fn finish(self, keep_writes: bool) -> (BatchState, HashSet<String>) {
        let mut batch = self.batch;
        if keep_writes {
            for (key, v) in self.own {
                batch.writes.insert((self.plugin.to_string(), key), v);
            }
        }
        (batch, self.read)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::{BatchState, StateView};
    use crate::store::{StateReader, StateValue, StoreResult};

    /// Committed state that changes between reads: version `n` on the nth.
    #[derive(Debug, Default)]
    struct Moving(std::sync::atomic::AtomicI64);

    #[async_trait::async_trait]
    impl StateReader for Moving {
        async fn read_state(&self, _plugin: &str, _key: &str) -> StoreResult<Option<StateValue>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok(Some(StateValue {
                value: n.to_string().into_bytes(),
                version: n,
            }))
        }
    }

    #[tokio::test]
    async fn forks_of_a_batch_share_one_version_of_a_key_and_report_what_they_read() {
        let store: Arc<dyn StateReader> = Arc::new(Moving::default());
        let batch = BatchState::default();
        let mut a = StateView::new(store.clone(), "p".into(), batch.fork());
        let mut b = StateView::new(store, "p".into(), batch.fork());
        assert_eq!(a.get("k").await.unwrap(), Some(b"1".to_vec()));
        // The store has moved on; the batch keeps the version it read first.
        assert_eq!(b.get("k").await.unwrap(), Some(b"1".to_vec()));
        b.put("own".into(), b"x".to_vec());
        assert_eq!(b.get("own").await.unwrap(), Some(b"x".to_vec()));
        let (fa, read_a) = a.finish(true);
        let (fb, read_b) = b.finish(true);
        assert_eq!(read_a, ["k".to_string()].into());
        assert_eq!(
            read_b,
            ["k".to_string()].into(),
            "its own write is not a read"
        );
        let mut batch = batch;
        batch.absorb(fa);
        assert!(!batch.wrote_any("p", &read_b));
        batch.absorb(fb);
        assert!(batch.wrote_any("p", &["own".to_string()].into()));
        let (writes, checks) = batch.into_commit();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].key, "own");
        assert_eq!(checks.len(), 1);
        assert_eq!(
            (checks[0].key.as_str(), checks[0].expected_version),
            ("k", 1)
        );
    }
}
