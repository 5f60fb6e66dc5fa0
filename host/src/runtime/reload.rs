//! Hot reload: the plugin folder watched (`notify`), each changed `.wasm`
//! loaded once its size and modification time have stayed the same for
//! [`SETTLE`] (so a copy in progress is never loaded half-way), and the live
//! set ([`LivePlugins`]) changed only by a load that compiled and linked: a
//! new file adds its plugin, a changed one replaces it, a removed one takes
//! it out (its messages wait for it). A file that fails to load leaves the
//! running version in place and is reported (ERROR, `event=plugin-load-failed`).
//! Dotfiles and other files are ignored; lost or overflowed events rescan the
//! folder. Owns no handling: the worker takes a snapshot of the set per batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::Runtime;
use super::live::LivePlugins;
use super::plugins::{is_plugin_file, version_of};
use crate::admin::Metrics;

/// How long a file's size and modification time must stay the same before
/// it is loaded.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How often files waiting to settle are looked at again.
const POLL: Duration = Duration::from_millis(100);

/// Why the plugin folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error(
        "cannot watch the plugin folder {path} for changes (set plugins.watch = false to run without hot reload)"
    )]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// What the watcher saw.
#[derive(Debug)]
enum Seen {
    /// These files changed (or appeared, or went).
    Paths(Vec<PathBuf>),
    /// Events were lost (queue overflow, a watcher error): look at every file.
    Rescan,
}

/// A watch on the plugin folder, started before the first load so no change
/// made during it is missed; [`FolderWatch::run`] acts on what it sees.
pub struct FolderWatch {
    dir: PathBuf,
    // Dropping it stops the watch.
    _watcher: RecommendedWatcher,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatch")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A file's size and modification time: unchanged for [`SETTLE`], it is
/// taken as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    len: u64,
    modified: Option<SystemTime>,
}

/// A file waiting to settle: how it looked last, and since when.
#[derive(Debug)]
struct Settling {
    stat: Option<Stat>,
    since: Instant,
}

impl FolderWatch {
    /// Watch `dir` (not its subfolders).
    pub fn start(dir: &Path) -> Result<FolderWatch, ReloadError> {
        let (tx, seen) = mpsc::unbounded_channel();
        let watch_err = |source| ReloadError::Watch {
            path: dir.to_path_buf(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Some(s) = seen_of(res) {
                // The receiver is gone only when the host stops.
                let _ = tx.send(s);
            }
        })
        .map_err(watch_err)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        Ok(FolderWatch {
            dir: dir.to_path_buf(),
            _watcher: watcher,
            seen,
        })
    }

    /// Act on the folder's changes until `shutdown` turns true.
    pub async fn run(
        mut self,
        runtime: Arc<Runtime>,
        live: Arc<LivePlugins>,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut reloader = Reloader {
            runtime,
            live,
            metrics,
            failed: HashMap::new(),
        };
        let mut settling: HashMap<PathBuf, Settling> = HashMap::new();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(dir = %self.dir.display(), "watching the plugin folder for changes");
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                seen = self.seen.recv() => match seen {
                    None => {
                        warn!(dir = %self.dir.display(), "the plugin folder watch ended; plugins are no longer reloaded");
                        return;
                    }
                    Some(Seen::Paths(paths)) => {
                        for path in paths.into_iter().filter(|p| is_plugin_file(p)) {
                            changed(&mut settling, path).await;
                        }
                    }
                    Some(Seen::Rescan) => {
                        warn!(dir = %self.dir.display(), "plugin folder events were lost; looking at every file again");
                        for path in self.everything(&reloader.live).await {
                            changed(&mut settling, path).await;
                        }
                    }
                },
                _ = poll.tick(), if !settling.is_empty() => {
                    for (path, stat) in settled(&mut settling).await {
                        reloader.apply(&path, stat).await;
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Every plugin file in the folder and every loaded plugin's file (one
    /// that went is then unloaded).
    async fn everything(&self, live: &LivePlugins) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = live.snapshot().iter().map(|p| p.path.clone()).collect();
        match tokio::fs::read_dir(&self.dir).await {
            Ok(mut entries) => {
                while let Ok(Some(entry)) = entries.next_entry().await {
                    let path = entry.path();
                    if is_plugin_file(&path) && !paths.contains(&path) {
                        paths.push(path);
                    }
                }
            }
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot list the plugin folder");
            }
        }
        paths
    }
}

/// What a watcher event means here; `None`: nothing to act on (reads, the
/// host's own opening of a plugin file).
fn seen_of(res: notify::Result<notify::Event>) -> Option<Seen> {
    let event = match res {
        Ok(event) => event,
        Err(_) => return Some(Seen::Rescan),
    };
    if event.need_rescan() {
        return Some(Seen::Rescan);
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return None,
        _ => {}
    }
    Some(Seen::Paths(event.paths))
}

async fn stat(path: &Path) -> Option<Stat> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    meta.is_file().then(|| Stat {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// `path` changed: it settles again from now.
async fn changed(settling: &mut HashMap<PathBuf, Settling>, path: PathBuf) {
    let stat = stat(&path).await;
    settling.insert(
        path,
        Settling {
            stat,
            since: Instant::now(),
        },
    );
}

/// The files whose size and modification time stayed the same for
/// [`SETTLE`], taken out of `settling` with how they look (`None`: gone).
async fn settled(settling: &mut HashMap<PathBuf, Settling>) -> Vec<(PathBuf, Option<Stat>)> {
    let now = Instant::now();
    let mut done = Vec::new();
    for (path, s) in settling.iter_mut() {
        let stat = stat(path).await;
        if stat != s.stat {
            s.stat = stat;
            s.since = now;
        } else if now.duration_since(s.since) >= SETTLE {
            done.push((path.clone(), stat));
        }
    }
    for (path, _) in &done {
        settling.remove(path);
    }
    done.sort_by(|a, b| a.0.cmp(&b.0));
    done
}

/// Loads settled files into the live set.
struct Reloader {
    runtime: Arc<Runtime>,
    live: Arc<LivePlugins>,
    /// Plugins loaded, loads and failed loads (`/metrics`).
    metrics: Arc<Metrics>,
    /// Per file, the version that last failed to load (reported once).
    failed: HashMap<PathBuf, String>,
}

impl Reloader {
    async fn apply(&mut self, path: &Path, stat: Option<Stat>) {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            return;
        };
        if stat.is_none() {
            self.failed.remove(path);
            let loaded_here = self
                .live
                .snapshot()
                .get(name)
                .is_some_and(|p| p.path == path);
            if loaded_here && let Some(old) = self.live.remove(name) {
                self.metrics.plugins(self.live.snapshot().len(), 0);
                info!(event = %"plugin-unloaded", name = %old.name, version = %old.short_version(), path = %path.display(), "plugin file removed; its messages wait until it is back");
            }
            return;
        }
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            // Gone again: its removal is an event of its own.
            Err(e) => {
                debug!(path = %path.display(), error = %e, "plugin file vanished before it was read");
                return;
            }
        };
        let version = version_of(&bytes);
        if self
            .live
            .snapshot()
            .get(name)
            .is_some_and(|p| p.version == version)
        {
            debug!(path = %path.display(), "plugin file unchanged");
            return;
        }
        if self.failed.get(path) == Some(&version) {
            return;
        }
        match self.runtime.load_bytes(path, bytes).await {
            Ok(plugin) => {
                self.failed.remove(path);
                let plugin = Arc::new(plugin);
                let old = self.live.put(Arc::clone(&plugin));
                self.metrics.plugins(self.live.snapshot().len(), 1);
                info!(
                    event = %"plugin-loaded",
                    name = %plugin.name,
                    version = %plugin.short_version(),
                    replaced = old.as_ref().map(|o| o.short_version()).unwrap_or(""),
                    path = %path.display(),
                    subscriptions = ?plugin.subscriptions,
                    "plugin loaded"
                );
            }
            Err(e) => {
                let running = self
                    .live
                    .snapshot()
                    .get(name)
                    .map(|p| p.short_version().to_string())
                    .unwrap_or_default();
                error!(
                    event = %"plugin-load-failed",
                    file = %path.display(),
                    running = %running,
                    error = %crate::error_chain(&e),
                    "plugin file failed to load; the running version (if any) stays"
                );
                self.failed.insert(path.to_path_buf(), version);
                self.metrics.plugin_load_failed();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_settles_only_once_it_stops_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"half").unwrap();
        let mut settling = HashMap::new();
        changed(&mut settling, path.clone()).await;
        assert!(settled(&mut settling).await.is_empty(), "too soon");
        // Still being written: the clock starts again.
        std::fs::write(&path, b"half and the rest").unwrap();
        settling.get_mut(&path).unwrap().since = Instant::now() - SETTLE * 2;
        assert!(settled(&mut settling).await.is_empty(), "it changed");
        settling.get_mut(&path).unwrap().since = Instant::now() - SETTLE * 2;
        let done = settled(&mut settling).await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.unwrap().len, 17);
        assert!(settling.is_empty());
        // Removed: settles as gone.
        std::fs::remove_file(&path).unwrap();
        changed(&mut settling, path.clone()).await;
        settling.get_mut(&path).unwrap().since = Instant::now() - SETTLE * 2;
        assert_eq!(settled(&mut settling).await, vec![(path, None)]);
    }

    #[test]
    fn reads_are_ignored_and_lost_events_rescan() {
        let read = notify::Event::new(EventKind::Access(AccessKind::Open(AccessMode::Read)));
        assert!(seen_of(Ok(read)).is_none());
        let written = notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)))
            .add_path("/p/a.wasm".into());
        assert!(matches!(seen_of(Ok(written)), Some(Seen::Paths(p)) if p.len() == 1));
        let lost = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matches!(seen_of(Ok(lost)), Some(Seen::Rescan)));
        assert!(matches!(
            seen_of(Err(notify::Error::generic("overflow"))),
            Some(Seen::Rescan)
        ));
    }
}
