//! The limits every plugin instance runs under: a memory cap that remembers it
//! was hit (so the failure is reported as `memory`, not as the panic the guest's
//! allocator turns it into), and the epoch ticker behind wall-clock deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter};

/// How often the engine's epoch advances; deadlines are counted in these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What one plugin's calls run under: its memory cap, deadline and fuel
/// (`[plugins]`, or its `[plugins.NAME]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    pub max_memory: usize,
    pub deadline: Duration,
    /// Fuel per call; 0 = not metered for this plugin.
    pub fuel: u64,
}

/// Per-instance resource limiter.
#[derive(Debug)]
pub(crate) struct Limiter {
    max_memory: usize,
    max_table_elements: usize,
    /// Set when the guest asked for more memory than the cap.
    pub memory_hit: bool,
}

impl Limiter {
    pub(crate) fn new(max_memory: usize) -> Self {
        Limiter {
            max_memory,
            max_table_elements: 100_000,
            memory_hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("jasper-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
