//! The plugins of a plugin folder: each `.wasm` compiled and pre-linked once,
//! asked for its subscriptions, and kept by name (the file stem) with its
//! version (the SHA-256 of its bytes). A plugin that fails to load is
//! reported with its file and reason; the rest load. A set is never changed
//! in place: a reload makes a new one (`with`, `without`) and `live` swaps it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::PluginPre;
use super::host_state::{HostState, Origin};
use super::limits::CallLimits;
use super::routing::{Egress, Router};
use super::state_view::StateView;
use crate::config::EffectiveSettings;

/// Why a plugin did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    #[error("plugin folder {path}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin {path}: the file name must be NAME.wasm with NAME made of letters, digits, '-' or '_'"
    )]
    BadName { path: PathBuf },
    #[error("plugin {path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin {path}: not a WebAssembly component: the file does not begin with the Wasm magic bytes \\0asm"
    )]
    NotWasm { path: PathBuf },
    #[error(
        "plugin {path}: a core WebAssembly module, not a component: build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: PathBuf },
    #[error("plugin {path}: not a valid component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("plugin {path}: does not fit the jasper:messaging/plugin world: {message}")]
    Link { path: PathBuf, message: String },
    #[error("plugin {path}: subscriptions() failed: {message}")]
    Subscriptions { path: PathBuf, message: String },
    #[error("plugin {path}: a plugin named '{name}' is already loaded")]
    Duplicate { path: PathBuf, name: String },
}

/// One loaded plugin.
pub struct Plugin {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// SHA-256 of the `.wasm` bytes, lowercase hex (see [`Plugin::short_version`]).
    pub version: String,
    pub subscriptions: Vec<String>,
    /// What it runs under: `[plugins.NAME]` over the shared `[plugins]` keys.
    pub settings: EffectiveSettings,
    pub(crate) pre: PluginPre<HostState>,
    pub(crate) limits: CallLimits,
    pub(crate) egress: Arc<Egress>,
    /// Its own bound on calls at once, when below `plugins.max_in_flight`.
    pub(crate) calls: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("version", &self.short_version())
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

/// Hex digits of a version as logs and `plugins list` show it.
const SHORT_VERSION: usize = 12;

impl Plugin {
    /// The first hex digits of [`Plugin::version`].
    pub fn short_version(&self) -> &str {
        self.version.get(..SHORT_VERSION).unwrap_or(&self.version)
    }
}

/// The version of a plugin's bytes: SHA-256, lowercase hex.
pub fn version_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The loaded plugins and the routes they make.
#[derive(Debug, Default, Clone)]
pub struct Plugins {
    by_name: BTreeMap<String, Arc<Plugin>>,
    router: Arc<Router>,
    /// Plugins that were loaded and whose file was then removed: their
    /// messages wait for them (see `handling::Worker::handler_of`).
    removed: BTreeSet<String>,
}

impl Plugins {
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.by_name.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Add the config's `[[route]]` rules to the router.
    pub(crate) fn add_routes(&mut self, routes: &[crate::config::RouteConfig]) {
        Arc::make_mut(&mut self.router).add_routes(routes);
    }

    /// Whether a plugin of this name was loaded and then removed (and has
    /// not come back).
    pub fn was_removed(&self, name: &str) -> bool {
        self.removed.contains(name)
    }

    /// This set with `plugin` added, or in place of the plugin of its name.
    pub(crate) fn with(&self, plugin: Arc<Plugin>) -> Plugins {
        let mut next = self.clone();
        next.removed.remove(&*plugin.name);
        next.by_name.insert(plugin.name.to_string(), plugin);
        next.reroute();
        next
    }

    /// This set without the plugin `name`, remembered as removed; `None`
    /// when no such plugin is loaded.
    pub(crate) fn without(&self, name: &str) -> Option<Plugins> {
        let mut next = self.clone();
        next.by_name.remove(name)?;
        next.removed.insert(name.to_string());
        next.reroute();
        Some(next)
    }

    /// The router made again from the plugins (the `[[route]]` rules kept).
    fn reroute(&mut self) {
        let mut router = self.router.routes_only();
        for (name, p) in &self.by_name {
            router.add(name, &p.subscriptions);
        }
        self.router = Arc::new(router);
    }

    fn insert(&mut self, plugin: Plugin) -> Result<(), PluginError> {
        let name = plugin.name.to_string();
        if self.by_name.contains_key(&name) {
            return Err(PluginError::Duplicate {
                path: plugin.path,
                name,
            });
        }
        Arc::make_mut(&mut self.router).add(&name, &plugin.subscriptions);
        self.by_name.insert(name, Arc::new(plugin));
        Ok(())
    }
}

/// What a file's first 8 bytes say it is. Checked before compiling because
/// wasmtime reads bytes without the Wasm magic as WAT text and would report a
/// garbage file as "input bytes aren't valid utf-8".
#[derive(Debug, PartialEq, Eq)]
enum Header {
    NotWasm,
    CoreModule,
    /// A component, or a layer wasmtime may know better: it decides.
    Other,
}

fn header(bytes: &[u8]) -> Header {
    match bytes {
        // The preamble is the magic, a u16 version and a u16 layer (both
        // little-endian): layer 0 is a core module, layer 1 a component.
        [b'\0', b'a', b's', b'm', _, _, 0, 0, ..] => Header::CoreModule,
        [b'\0', b'a', b's', b'm', ..] => Header::Other,
        _ => Header::NotWasm,
    }
}

/// Whether the folder entry `path` is a plugin file: `*.wasm`, not a
/// dotfile (an editor's or a copy tool's temporary file).
pub(crate) fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

fn plugin_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    crate::config::valid_plugin_name(stem).then(|| stem.to_string())
}

impl Runtime {
    /// Compile, pre-link and inspect one plugin file.
    pub async fn load_plugin(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| PluginError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        self.load_bytes(path, bytes).await
    }

    /// Compile, pre-link and inspect the bytes read from the plugin file
    /// `path` (named by its stem, versioned by these bytes).
    pub async fn load_bytes(&self, path: &Path, bytes: Vec<u8>) -> Result<Plugin, PluginError> {
        let name = plugin_name(path).ok_or_else(|| PluginError::BadName {
            path: path.to_path_buf(),
        })?;
        let version = version_of(&bytes);
        match header(&bytes) {
            Header::NotWasm => {
                return Err(PluginError::NotWasm {
                    path: path.to_path_buf(),
                });
            }
            Header::CoreModule => {
                return Err(PluginError::CoreModule {
                    path: path.to_path_buf(),
                });
            }
            Header::Other => {}
        }
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| PluginError::Compile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .map_err(|e| PluginError::Compile {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        let link_err = |e: wasmtime::Error| PluginError::Link {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let pre = PluginPre::new(self.linker.instantiate_pre(&component).map_err(link_err)?)
            .map_err(link_err)?;
        let name: Arc<str> = name.into();
        let settings = self.settings(&name);
        let limits = self.limits_of(&settings);
        let subscriptions =
            self.subscriptions_of(&name, &pre, &limits)
                .await
                .map_err(|message| PluginError::Subscriptions {
                    path: path.to_path_buf(),
                    message,
                })?;
        let egress = Arc::new(Egress::from_entries(&settings.allow_send));
        let calls = (settings.max_in_flight < self.config.max_in_flight)
            .then(|| Arc::new(Semaphore::new(settings.max_in_flight.max(1))));
        Ok(Plugin {
            name,
            path: path.to_path_buf(),
            version,
            subscriptions,
            settings,
            pre,
            limits,
            egress,
            calls,
        })
    }

    async fn subscriptions_of(
        &self,
        name: &Arc<str>,
        pre: &PluginPre<HostState>,
        limits: &CallLimits,
    ) -> Result<Vec<String>, String> {
        let data = HostState::new(
            name.clone(),
            Origin::default(),
            Arc::new(Router::default()),
            Arc::new(Egress::default()),
            StateView::detached(name.clone()),
            limits.max_memory,
            self.bounds,
        );
        let mut store = self.new_store(data, limits);
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .jasper_messaging_handler()
                .call_subscriptions(&mut store)
                .await
        };
        let mut subs =
            tokio::time::timeout(limits.deadline + std::time::Duration::from_secs(1), call)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("{e:#}"))?;
        subs.sort();
        subs.dedup();
        if let Some(bad) = subs.iter().find(|s| s.is_empty() || s.len() > 256) {
            return Err(format!("invalid message type {bad:?} (1 to 256 bytes)"));
        }
        Ok(subs)
    }

    /// Load every `*.wasm` in `dir` (sorted by name). Plugins that fail are
    /// returned beside the ones that loaded.
    pub async fn load_dir(&self, dir: &Path) -> Result<(Plugins, Vec<PluginError>), PluginError> {
        let folder_err = |source| PluginError::Folder {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        let mut entries = tokio::fs::read_dir(dir).await.map_err(folder_err)?;
        while let Some(entry) = entries.next_entry().await.map_err(folder_err)? {
            let path = entry.path();
            if is_plugin_file(&path) {
                paths.push(path);
            }
        }
        paths.sort();
        let mut plugins = Plugins::default();
        let mut errors = Vec::new();
        for path in paths {
            match self.load_plugin(&path).await {
                Ok(p) => {
                    if let Err(e) = plugins.insert(p) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Ok((plugins, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::{Header, header, is_plugin_file, version_of};

    #[test]
    fn the_version_is_the_sha256_of_the_bytes_and_dotfiles_are_no_plugins() {
        assert_eq!(
            version_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_plugin_file(std::path::Path::new("/p/orders.wasm")));
        assert!(!is_plugin_file(std::path::Path::new("/p/.orders.wasm")));
        assert!(!is_plugin_file(std::path::Path::new("/p/orders.wasm.part")));
        assert!(!is_plugin_file(std::path::Path::new("/p/notes.txt")));
    }

    #[test]
    fn the_preamble_tells_garbage_a_core_module_and_a_component_apart() {
        assert_eq!(header(b"not wasm at all"), Header::NotWasm);
        assert_eq!(header(b""), Header::NotWasm);
        assert_eq!(header(b"\0as"), Header::NotWasm);
        assert_eq!(header(b"\0asm\x01\0\0\0"), Header::CoreModule);
        assert_eq!(header(b"\0asm\x0d\0\x01\0"), Header::Other);
        // Truncated after the magic: wasmtime says what is wrong.
        assert_eq!(header(b"\0asm"), Header::Other);
    }
}
