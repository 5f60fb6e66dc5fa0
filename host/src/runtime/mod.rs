//! The Wasm runtime: one wasmtime engine (pooling allocator, epoch deadlines,
//! optional fuel), the plugins loaded from the plugin folder (each pre-linked
//! once), and one handler call on a fresh instance with its limits (and the
//! per-message bounds on what it makes the host hold, `bounds`). Owns no
//! policy and no writes: a call returns what the handler did and how it
//! ended, and `handling` decides what that means and commits it. Its only
//! database work is the handler's state reads (`state_view`), which read
//! committed state through the store. A running host's plugin set is live
//! (`live`): the folder watcher (`reload`) swaps it as files change.

mod bindings;
mod bounds;
mod host_state;
pub mod http;
mod limits;
mod live;
mod plugins;
pub mod reload;
pub(crate) mod routing;
pub mod state_view;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

pub use self::http::HttpPolicy;
use crate::config::{EffectiveSettings, PluginsConfig};
use crate::envelope::Envelope;
use bindings::{Plugin as PluginBindings, WitEnvelope};
use bounds::Bounds;
use host_state::{HostState, Origin};
use limits::{CallLimits, EPOCH_TICK, EpochTicker};
pub use live::LivePlugins;
pub use plugins::{Plugin, PluginError, Plugins, version_of};
use routing::Router;
use state_view::{BatchState, StateView};

/// Linear memory kept resident per pool slot between instances.
const KEEP_RESIDENT: usize = 4 << 20;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
}

/// How a trap ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest panicked (or aborted).
    Panic,
    /// The wall-clock deadline passed.
    Deadline,
    /// The guest asked for more memory than the cap.
    Memory,
    /// The fuel budget ran out.
    Fuel,
    /// The handler went past a per-message bound (`plugins.max_state_keys`,
    /// `max_state_bytes`, `max_sends`, `max_send_bytes`) on what it makes the
    /// host hold; the message names the bound and the numbers.
    Limit,
    /// The guest overflowed its stack (deep or endless recursion).
    StackOverflow,
    /// Any other trap (bad instantiation, ...).
    Other,
}

/// Handler errors as the host sees them.
pub use bindings::HandleError;

/// How a handler call ended, when it did not succeed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The handler returned an error.
    Handler(HandleError),
    /// The instance trapped; it is discarded.
    Trap { kind: TrapKind, message: String },
    /// The host failed during the call (e.g. a state read); not the plugin's fault.
    HostFault(String),
}

/// What one handler call did.
#[derive(Debug)]
pub struct CallOutcome {
    pub result: Result<(), CallError>,
    /// Messages it sent (empty unless it succeeded).
    pub sent: Vec<Envelope>,
    /// The batch's state, with this call's writes if it succeeded.
    pub state: BatchState,
    /// The state keys the call read (past its own writes).
    pub read: HashSet<String>,
}

/// The engine, the linker and the limits every call runs under.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// `[plugins]`: the shared limits and each plugin's own.
    config: PluginsConfig,
    /// Whether the engine meters fuel (some plugin has a budget).
    metered: bool,
    /// The compiled-code cache the engine uses, if on (`plugins.cache_dir`).
    cache: Option<wasmtime::Cache>,
    bounds: Bounds,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(cfg: &PluginsConfig) -> Result<Self, RuntimeError> {
        // A pool slot holds the largest memory any plugin may have.
        let max_memory = usize::try_from(cfg.largest_memory_mb().saturating_mul(1 << 20))
            .map_err(|_| RuntimeError::Engine("plugins.memory_mb is too large".into()))?;
        let slots = u32::try_from(cfg.max_in_flight.saturating_mul(2).saturating_add(8))
            .unwrap_or(u32::MAX)
            .min(1000);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            // Keep what an instance touched resident in its slot (up to
            // this much): the next instance of the slot then costs a reset
            // of the dirty pages, not an madvise and page faults. With more
            // than one thread an madvise is a TLB shootdown on every core;
            // at 256 KiB (the no-op plugin dirties between 1 and 2 MiB), 16
            // calls at once on 2 cores ran slower than one at a time
            // (0.75-0.87x); at 4 MiB they run 1.6-2.2x faster (jasper-bench).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the
            // pages an instance dirtied instead of memset-ing all
            // KEEP_RESIDENT bytes of every slot after every call (a memset
            // of the no-op plugin's memory was ~15% of a call's CPU).
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 << 10)
            // The limiter refuses growth past the cap first, so it can say why.
            .max_memory_size(max_memory.saturating_add(1 << 20));
        let metered = cfg.any_fuel();
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(metered)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let cache = cfg.cache_dir.as_deref().map(artifact_cache).transpose()?;
        config.cache(cache.clone());
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // Wasmtime makes an error on every store's drop, and with
        // RUST_BACKTRACE set each one captures a native backtrace: about
        // 30 us a message. The host prints these errors' messages, never
        // their backtraces (a guest's own wasm backtrace is kept).
        wasmtime::error::disable_backtrace();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
        // Only the wasi:http interfaces (WASI itself is linked above); every
        // request goes through the plugin's HttpPolicy, which refuses all
        // unless `allow_http` lists the host.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking wasi:http: {e:#}")))?;
        PluginBindings::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("linking jasper imports: {e:#}")))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Runtime {
            engine,
            linker,
            config: cfg.clone(),
            metered,
            cache,
            bounds: Bounds::from_config(cfg),
            _ticker: ticker,
        })
    }

    /// The settings plugin `name` runs under (its `[plugins.NAME]` table
    /// over the shared `[plugins]` keys).
    pub fn settings(&self, name: &str) -> EffectiveSettings {
        self.config.settings(name)
    }

    /// Plugins this runtime took from the compiled-code cache, and plugins
    /// it compiled and cached: (hits, misses); (0, 0) with no cache.
    pub fn cache_counts(&self) -> (usize, usize) {
        self.cache
            .as_ref()
            .map_or((0, 0), |c| (c.cache_hits(), c.cache_misses()))
    }

    /// The limits of one plugin's calls.
    fn limits_of(&self, settings: &EffectiveSettings) -> CallLimits {
        CallLimits {
            max_memory: usize::try_from(settings.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            deadline: Duration::from_millis(settings.deadline_ms.max(1)),
            fuel: settings.fuel,
        }
    }

    fn new_store(&self, data: HostState, limits: &CallLimits) -> Store<HostState> {
        let mut store = Store::new(&self.engine, data);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.deadline.as_millis() / EPOCH_TICK.as_millis() + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        if self.metered {
            // Fuel is metered on the engine when some plugin has a budget,
            // so this cannot fail; a plugin without one runs unmetered.
            let fuel = if limits.fuel > 0 {
                limits.fuel
            } else {
                u64::MAX
            };
            let _ = store.set_fuel(fuel);
        }
        store
    }

    /// Run `plugin`'s handler on `envelope` in a fresh instance.
    pub async fn handle(
        &self,
        plugin: &Plugin,
        envelope: &Envelope,
        router: Arc<Router>,
        state: StateView,
    ) -> CallOutcome {
        let origin = Origin {
            id: Some(envelope.id.to_string()),
            correlation_id: envelope.correlation_id.clone(),
            conversation_id: envelope.conversation_id.clone(),
            reply_uri: envelope.reply_uri.clone(),
        };
        let limits = &plugin.limits;
        let data = HostState::new(
            plugin.name.clone(),
            origin,
            router,
            Arc::clone(&plugin.egress),
            state,
            limits.max_memory,
            self.bounds,
        )
        .with_http(Arc::clone(&plugin.http));
        let mut store = self.new_store(data, limits);
        let wit = to_wit(envelope);
        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance
                .jasper_messaging_handler()
                .call_handle(&mut store, &wit)
                .await
        };
        // The epoch deadline stops guest code; the outer timeout also stops a
        // call stuck in a host import.
        let outer = limits.deadline + Duration::from_secs(1);
        let raw = tokio::time::timeout(outer, call).await;
        let data = store.into_data();
        let result = match raw {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(handler_error))) => Err(CallError::Handler(handler_error)),
            Ok(Err(e)) => Err(classify(&data, &e)),
            Err(_elapsed) => Err(CallError::Trap {
                kind: TrapKind::Deadline,
                message: format!(
                    "handler ran past the deadline of {} ms (stuck in a host call)",
                    limits.deadline.as_millis()
                ),
            }),
        };
        let ok = result.is_ok();
        let (state, read) = data.state.finish(ok);
        CallOutcome {
            result,
            sent: if ok { data.sent } else { Vec::new() },
            state,
            read,
        }
    }
}

/// wasmtime's cache of compiled code in `dir` (keyed by the engine's
/// settings and the plugin's bytes), so an unchanged plugin is not compiled
/// again by the next start, `send` or `plugins list`.
fn artifact_cache(dir: &std::path::Path) -> Result<wasmtime::Cache, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        RuntimeError::Engine(format!(
            "plugins.cache_dir {}: cannot create it: {e}",
            dir.display()
        ))
    })?;
    let mut cache = wasmtime::CacheConfig::new();
    cache.with_directory(dir);
    wasmtime::Cache::new(cache)
        .map_err(|e| RuntimeError::Engine(format!("plugins.cache_dir {}: {e:#}", dir.display())))
}

fn classify(data: &HostState, e: &wasmtime::Error) -> CallError {
    if let Some(fault) = &data.host_fault {
        return CallError::HostFault(fault.clone());
    }
    // The guest only saw a trap from a host import; say which bound it was.
    if let Some(exceeded) = &data.limit_hit {
        return CallError::Trap {
            kind: TrapKind::Limit,
            message: exceeded.to_string(),
        };
    }
    let kind = if data.limiter.memory_hit {
        TrapKind::Memory
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapKind::Deadline,
            Some(Trap::OutOfFuel) => TrapKind::Fuel,
            Some(Trap::UnreachableCodeReached) => TrapKind::Panic,
            Some(Trap::StackOverflow) => TrapKind::StackOverflow,
            _ => TrapKind::Other,
        }
    };
    let mut message = format!("{e}");
    let stderr = data.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            let start = chars.len().saturating_sub(2000);
            chars[start..].iter().collect()
        };
        message.push_str(": ");
        message.push_str(&tail);
    }
    CallError::Trap { kind, message }
}

fn to_wit(e: &Envelope) -> WitEnvelope {
    WitEnvelope {
        id: e.id.to_string(),
        message_type: e.message_type.clone(),
        content_type: e.content_type.clone(),
        body: e.body.clone(),
        destination: e.destination.as_ref().map(|d| d.uri().to_string()),
        source: e.source.clone(),
        reply_uri: e.reply_uri.clone(),
        correlation_id: e.correlation_id.clone(),
        conversation_id: e.conversation_id.clone(),
        causation_id: e.causation_id.clone(),
        headers: e
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        attempts: e.attempts,
        scheduled_at: e.scheduled_at,
        deliver_by: e.deliver_by,
        sent_at: e.sent_at,
    }
}
