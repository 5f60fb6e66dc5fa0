//! The plugin set a running host handles with, swapped whole when the plugin
//! folder changes (`reload`). Readers take a snapshot ([`LivePlugins::snapshot`])
//! and keep it for as long as they need one consistent set (the worker: one
//! batch); a swap never waits for them, and a plugin replaced while a
//! snapshot holds it finishes its calls on the old version. Owns no loading
//! and no watching.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::plugins::{Plugin, Plugins};

/// The current plugin set, replaced atomically.
#[derive(Debug)]
pub struct LivePlugins {
    current: ArcSwap<Plugins>,
    /// Serialises writers, so two changes never build on the same old set.
    write: Mutex<()>,
}

impl LivePlugins {
    pub fn new(plugins: Plugins) -> LivePlugins {
        LivePlugins {
            current: ArcSwap::from_pointee(plugins),
            write: Mutex::new(()),
        }
    }

    /// The set as it is now; later swaps do not change it.
    pub fn snapshot(&self) -> Arc<Plugins> {
        self.current.load_full()
    }

    /// Put `plugin` in (added, or in place of the plugin of its name); the
    /// plugin it replaced, if any.
    pub(crate) fn put(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        self.change(|set| {
            let old = set.get(&plugin.name).cloned();
            (Some(set.with(plugin)), old)
        })
    }

    /// Take the plugin `name` out (its messages then wait for it); the
    /// plugin removed, if one was loaded.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Plugin>> {
        self.change(|set| {
            let old = set.get(name).cloned();
            (set.without(name), old)
        })
    }

    /// Build the next set from the current one and swap it in (when `f`
    /// makes one).
    fn change<T>(&self, f: impl FnOnce(&Plugins) -> (Option<Plugins>, T)) -> T {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let (next, out) = f(&current);
        if let Some(next) = next {
            self.current.store(Arc::new(next));
        }
        out
    }
}
