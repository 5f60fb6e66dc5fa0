//! End-to-end harness for jasper-host: real processes, real databases.
//!
//! Every test builds a [`TestHost`]: its own temp dir holding a config file, a
//! plugin dir (the needed `.wasm` files copied from
//! `target/wasm32-wasip2/plugin/`), the host's log and, on SQLite, the db. On
//! PostgreSQL and MySQL/MariaDB ([`HostConfig::on`]) the store is a schema /
//! table prefix of its own on the test server, dropped when the `TestHost` is
//! dropped, pass or fail (see `store.rs`). The host
//! binary (`target/release/jasper-host`) is run as a child process: `run` for
//! the long-lived host, `send`, `storage counts`, `dead-letters list` as short
//! commands. Conditions are awaited by polling the database with a deadline
//! ([`wait_until`], [`TestHost::wait_for`]), never by sleeping.
//!
//! Nothing here passes quietly: a missing or stale binary or plugin panics with
//! the command that builds it (`make build`, `make plugins`).
//!
//! Environment knobs: `E2E_RUST_LOG` (the host's RUST_LOG, default `info`),
//! `E2E_KEEP=1` (keep the temp dirs and the server schemas), `JASPER_HOST_BIN`
//! (another host binary), `JASPER_TEST_POSTGRES_URL`, `JASPER_TEST_MYSQL_URL`
//! (the test servers; defaults `postgres://postgres@127.0.0.1:5432/test`,
//! `mysql://root@127.0.0.1:3306/test`).

// A test harness fails by panicking; these lints guard library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::{self, Debug, Write as _};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;

pub use serde_json::json;

pub mod amqp;
pub mod orders;
mod store;
pub use store::{
    Backend, Bind, Cell, Col, Db, DeadLetterRow, FreshDatabase, IncomingRow, OutgoingRow, Progress,
    ServerUrl, StateRow, Store, TABLES, TOOL_TIMEOUT, block_on_own_runtime, check_server,
    drop_store, leftovers, run_tool, unique_schema,
};

/// How long one short CLI command (`send`, `storage counts`, ...) may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `stop()` waits for the host to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default polling interval of the wait helpers.
pub const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// The workspace root (the folder holding the root Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target dir: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Newest modification time of the files under `paths` (files or folders).
/// `skip` folders are not looked into.
fn newest_mtime(paths: &[PathBuf], skip: &[PathBuf]) -> Option<(SystemTime, PathBuf)> {
    fn walk(
        p: &Path,
        skip: &[PathBuf],
        best: &mut Option<(SystemTime, PathBuf)>,
        budget: &mut u32,
    ) {
        if *budget == 0 || skip.iter().any(|s| s == p) {
            return;
        }
        *budget -= 1;
        let Ok(md) = fs::metadata(p) else { return };
        if md.is_dir() {
            let Ok(rd) = fs::read_dir(p) else { return };
            for e in rd.flatten() {
                walk(&e.path(), skip, best, budget);
            }
        } else if let Ok(m) = md.modified()
            && best.as_ref().is_none_or(|(b, _)| m > *b)
        {
            *best = Some((m, p.to_path_buf()));
        }
    }
    let mut best = None;
    let mut budget = 10_000;
    for p in paths {
        walk(p, skip, &mut best, &mut budget);
    }
    best
}

/// Panics unless `artifact` exists and is newer than every file of `sources`.
fn check_artifact(artifact: &Path, what: &str, sources: &[PathBuf], skip: &[PathBuf], build: &str) {
    let md = fs::metadata(artifact).unwrap_or_else(|e| {
        panic!(
            "{what} not found at {} ({e}).\nBuild it first, from {}:\n    {build}",
            artifact.display(),
            workspace_root().display()
        )
    });
    if std::env::var_os("E2E_ALLOW_STALE").is_some() {
        return;
    }
    if let (Ok(built), Some((src_time, src))) = (md.modified(), newest_mtime(sources, skip))
        && src_time > built
    {
        panic!(
            "{what} at {} is older than {} (edited after the last build).\nRebuild it, from {}:\n    {build}\n(or set E2E_ALLOW_STALE=1 to test the old build anyway)",
            artifact.display(),
            src.display(),
            workspace_root().display()
        );
    }
}

/// The host binary, checked to exist and to be newer than host/ and wit/.
pub fn host_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("JASPER_HOST_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "JASPER_HOST_BIN={} is not a file", p.display());
        return p;
    }
    let root = workspace_root();
    let bin = target_dir().join("release").join("jasper-host");
    check_artifact(
        &bin,
        "the jasper-host binary",
        &[
            root.join("host/src"),
            root.join("host/Cargo.toml"),
            root.join("wit"),
        ],
        // other binaries (jasper-bench) do not go into jasper-host
        &[root.join("host/src/bin")],
        "make build      # = cargo build --release -p jasper-host",
    );
    bin
}

/// Where `make plugins` puts the plugin `name` (the .wasm file stem).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let root = workspace_root();
    let wasm = target_dir()
        .join("wasm32-wasip2")
        .join("plugin")
        .join(format!("{name}.wasm"));
    let src = match name {
        "orders" | "audit" => root.join("plugins-example").join(name),
        other => root.join("tests/plugins").join(other),
    };
    check_artifact(
        &wasm,
        &format!("the plugin {name}.wasm"),
        &[src, root.join("guest-sdk/src"), root.join("wit")],
        &[],
        "make plugins",
    );
    wasm
}

fn rust_log() -> String {
    std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A TOML scalar for [`HostConfig::set`].
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Int(i64),
    Str(String),
    Bool(bool),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Self {
        Val::Int(i64::from(v))
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Val::Int(i64::from(v))
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::Int(i64::try_from(v).expect("config value fits i64"))
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Str(v.to_owned())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Str(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::Bool(v)
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(i) => write!(f, "{i}"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Str(s) => {
                f.write_char('"')?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        c => f.write_char(c)?,
                    }
                }
                f.write_char('"')
            }
        }
    }
}

/// Builder for the host's TOML config (keys of CONTRACT.md). Only keys that were
/// set are written; the host's defaults apply to the rest.
#[derive(Clone, Debug)]
pub struct HostConfig {
    sections: BTreeMap<String, BTreeMap<String, Val>>,
    /// `[[listen]]` URIs, in order.
    listen: Vec<String>,
    /// `[[route]]` (message_type pattern, to), in order.
    routes: Vec<(String, String)>,
    /// `[[rabbitmq.binding]]` (exchange, queue, routing_key), in order.
    rabbit_bindings: Vec<(String, String, String)>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HostConfig {
    /// node.name = "e2e", storage.url = "sqlite://jasper.db", plugins.dir = "plugins"
    /// (both relative to the config file's folder, as the contract says).
    pub fn new() -> Self {
        HostConfig {
            sections: BTreeMap::new(),
            listen: Vec::new(),
            routes: Vec::new(),
            rabbit_bindings: Vec::new(),
        }
        .set("node", "name", "e2e")
        .set("storage", "url", "sqlite://jasper.db")
        .set("plugins", "dir", "plugins")
    }

    /// [`HostConfig::new`] on `backend`: SQLite as `new()`; PostgreSQL and
    /// MySQL on the test server (env `JASPER_TEST_POSTGRES_URL` /
    /// `JASPER_TEST_MYSQL_URL`) with a schema / table prefix of its own
    /// (`t` + 12 hex digits), so tests run in parallel.
    pub fn on(backend: Backend) -> Self {
        match backend.server_url() {
            None => Self::new(),
            Some(url) => Self::new().storage(&url, &unique_schema()),
        }
    }

    /// `[storage] url` and `schema`.
    pub fn storage(self, url: &str, schema: &str) -> Self {
        self.set("storage", "url", url)
            .set("storage", "schema", schema)
    }

    /// The backend `[storage] url` names (SQLite when unset or unknown).
    pub fn backend(&self) -> Backend {
        match self.get("storage", "url") {
            Some(Val::Str(url)) => Backend::of_url(url).unwrap_or(Backend::Sqlite),
            _ => Backend::Sqlite,
        }
    }

    /// `[storage] schema`, or the host's default `jasper`.
    pub fn schema(&self) -> String {
        match self.get("storage", "schema") {
            Some(Val::Str(s)) => s.clone(),
            _ => "jasper".to_owned(),
        }
    }

    /// Where the store of this config is, with relative SQLite paths resolved
    /// against `dir` (the config file's folder).
    pub fn store(&self, dir: &Path) -> Store {
        let schema = self.schema();
        let url = match self.get("storage", "url") {
            Some(Val::Str(u)) => u.clone(),
            _ => String::new(),
        };
        match self.backend() {
            Backend::Sqlite => Store::Sqlite {
                path: self
                    .sqlite_path(dir)
                    .unwrap_or_else(|| dir.join("jasper.db")),
                schema,
            },
            Backend::Postgres => Store::Postgres { url, schema },
            Backend::Mysql => Store::Mysql { url, schema },
        }
    }

    /// Sets `[section] key = value` (any key: tests of unknown keys use this too).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Val>) -> Self {
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.into());
        self
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&Val> {
        self.sections.get(section).and_then(|s| s.get(key))
    }

    pub fn memory_mb(self, v: u64) -> Self {
        self.set("plugins", "memory_mb", v)
    }
    pub fn deadline_ms(self, v: u64) -> Self {
        self.set("plugins", "deadline_ms", v)
    }
    pub fn max_in_flight(self, v: u64) -> Self {
        self.set("plugins", "max_in_flight", v)
    }
    pub fn batch_size(self, v: u64) -> Self {
        self.set("handling", "batch_size", v)
    }
    pub fn max_attempts(self, v: u64) -> Self {
        self.set("handling", "max_attempts", v)
    }
    pub fn retry_delay_ms(self, v: u64) -> Self {
        self.set("handling", "retry_delay_ms", v)
    }
    pub fn keep_handled_ms(self, v: u64) -> Self {
        self.set("handling", "keep_handled_ms", v)
    }
    pub fn poll_interval_ms(self, v: u64) -> Self {
        self.set("handling", "poll_interval_ms", v)
    }
    pub fn heartbeat_ms(self, v: u64) -> Self {
        self.set("durability", "heartbeat_ms", v)
    }
    pub fn stale_after_ms(self, v: u64) -> Self {
        self.set("durability", "stale_after_ms", v)
    }
    pub fn cleanup_interval_ms(self, v: u64) -> Self {
        self.set("durability", "cleanup_interval_ms", v)
    }
    /// `[node] name`.
    pub fn node_name(self, name: &str) -> Self {
        self.set("node", "name", name)
    }
    /// `[sending] key = value`.
    pub fn sending(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("sending", key, value)
    }
    /// `[tcp] key = value`.
    pub fn tcp(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("tcp", key, value)
    }

    /// Adds a `[[listen]]` table: `uri = "durable://127.0.0.1:PORT"`.
    pub fn listen(mut self, uri: impl Into<String>) -> Self {
        self.listen.push(uri.into());
        self
    }

    /// Adds a `[[route]]` table: `message_type = pattern`, `to = uri`.
    pub fn route(mut self, message_type: impl Into<String>, to: impl Into<String>) -> Self {
        self.routes.push((message_type.into(), to.into()));
        self
    }

    /// `[rabbitmq] key = value`.
    pub fn rabbitmq(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("rabbitmq", key, value)
    }

    /// Adds a `[[rabbitmq.binding]]` table: `exchange`, `queue`, `routing_key`.
    pub fn rabbit_binding(
        mut self,
        exchange: impl Into<String>,
        queue: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.rabbit_bindings
            .push((exchange.into(), queue.into(), routing_key.into()));
        self
    }

    /// The `[[listen]]` URIs, in order.
    pub fn listen_uris(&self) -> &[String] {
        &self.listen
    }

    /// The `[[route]]` tables, in order: (message_type, to).
    pub fn routes(&self) -> &[(String, String)] {
        &self.routes
    }

    /// The TOML text: known sections in the contract's order, then the others,
    /// then the `[[listen]]` and `[[route]]` tables in the order they were added.
    pub fn render(&self) -> String {
        const ORDER: [&str; 5] = ["node", "storage", "plugins", "handling", "durability"];
        let mut names: Vec<&str> = ORDER
            .iter()
            .copied()
            .filter(|s| self.sections.contains_key(*s))
            .collect();
        names.extend(
            self.sections
                .keys()
                .map(String::as_str)
                .filter(|s| !ORDER.contains(s)),
        );
        let mut out = String::from("# written by the jasper-e2e harness\n");
        for name in names {
            let _ = writeln!(out, "\n[{name}]");
            for (k, v) in &self.sections[name] {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        // Arrays of tables last: a `[section]` after them would be fine TOML
        // too, but this way no key can end up in the wrong table.
        for uri in &self.listen {
            let _ = writeln!(out, "\n[[listen]]\nuri = {}", Val::from(uri.as_str()));
        }
        for (pattern, to) in &self.routes {
            let _ = writeln!(
                out,
                "\n[[route]]\nmessage_type = {}\nto = {}",
                Val::from(pattern.as_str()),
                Val::from(to.as_str())
            );
        }
        for (exchange, queue, key) in &self.rabbit_bindings {
            let _ = writeln!(
                out,
                "\n[[rabbitmq.binding]]\nexchange = {}\nqueue = {}\nrouting_key = {}",
                Val::from(exchange.as_str()),
                Val::from(queue.as_str()),
                Val::from(key.as_str())
            );
        }
        out
    }

    /// The SQLite file the config points at, resolved against `dir`.
    fn sqlite_path(&self, dir: &Path) -> Option<PathBuf> {
        let Some(Val::Str(url)) = self.get("storage", "url") else {
            return Some(dir.join("jasper.db"));
        };
        let rest = url.strip_prefix("sqlite://")?;
        let rest = rest.split('?').next().unwrap_or(rest);
        let p = Path::new(rest);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        })
    }
}

// ---------------------------------------------------------------------------
// Command output
// ---------------------------------------------------------------------------

/// What a finished CLI command left.
#[derive(Debug)]
pub struct CmdOut {
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOut {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr together (for "does the output mention X").
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.status,
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }

    /// Panics with the command, exit status and output unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "command failed\n{}", self.describe());
        self
    }

    /// Panics unless it exited non-zero.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "command was expected to fail but exited 0\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless `send` exited 0 and printed `sent N message(s)`.
    #[track_caller]
    pub fn assert_sent(&self, n: usize) -> &Self {
        self.assert_success();
        let want = format!("sent {n} message");
        assert!(
            self.stdout.contains(&want),
            "send did not print {want:?}\n{}",
            self.describe()
        );
        self
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "[... {start} earlier lines ...]");
    }
    out.push_str(&lines[start..].join("\n"));
    out
}

/// The threads of process `pid` that are not stopped (state other than `T`,
/// `t`, or exiting), from `/proc/PID/task/*/stat`.
fn threads_not_stopped(pid: u32) -> std::io::Result<Vec<String>> {
    let mut running = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        // A thread that ended meanwhile is not running.
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "TID (comm) S ...": the state follows the last ')'.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?");
        if !matches!(state, "T" | "t" | "Z" | "X") {
            running.push(format!("{} ({state})", e.file_name().to_string_lossy()));
        }
    }
    Ok(running)
}

/// Waits for `child` to exit, at most `timeout`; None if still running then.
pub(crate) fn wait_child(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() / 5 + 2;
    for _ in 0..max_polls {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.try_wait()
}

// ---------------------------------------------------------------------------
// CLI JSON outputs
// ---------------------------------------------------------------------------

/// `storage counts --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub incoming: u64,
    pub scheduled: u64,
    pub handled: u64,
    pub outgoing: u64,
    pub dead_letters: u64,
}

/// One element of `dead-letters list --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub message_type: String,
    pub error_kind: String,
    #[serde(default)]
    pub error_message: Option<String>,
    pub attempts: u32,
}

// ---------------------------------------------------------------------------
// TestHost
// ---------------------------------------------------------------------------

/// One isolated host: temp dir, config, plugins, db, and maybe a running child.
pub struct TestHost {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    config_path: PathBuf,
    store: Store,
    /// Drop the store's schema / tables when the TestHost is dropped.
    drop_store: bool,
    log_path: PathBuf,
    cwd: PathBuf,
    bin: PathBuf,
    child: Mutex<Option<Child>>,
    spawns: AtomicU32,
    cmds: AtomicU32,
}

impl Debug for TestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHost")
            .field("root", &self.root)
            .finish()
    }
}

impl TestHost {
    /// A temp dir with `plugins/` holding copies of the named plugins and
    /// `jasper.toml` rendered from `config`. Panics (with the build command)
    /// if the host binary or a plugin is missing.
    pub fn new(plugins: &[&str], config: HostConfig) -> TestHost {
        Self::with_config_text(plugins, &config.render(), &config)
    }

    /// Like [`TestHost::new`] but with the config file's text given verbatim
    /// (`paths_from` tells where the db and plugin dir are).
    pub fn with_config_text(plugins: &[&str], text: &str, paths_from: &HostConfig) -> TestHost {
        let bin = host_bin();
        let wasm: Vec<PathBuf> = plugins.iter().map(|p| plugin_wasm(p)).collect();
        let dir = tempfile::Builder::new()
            .prefix("jasper-e2e-")
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_path_buf();
        let plugin_dir = match paths_from.get("plugins", "dir") {
            Some(Val::Str(d)) => root.join(d),
            _ => root.join("plugins"),
        };
        fs::create_dir_all(&plugin_dir).expect("create plugin dir");
        for w in &wasm {
            let name = w.file_name().expect("wasm file name");
            fs::copy(w, plugin_dir.join(name)).unwrap_or_else(|e| {
                panic!("copy {} into {}: {e}", w.display(), plugin_dir.display())
            });
        }
        let config_path = root.join("jasper.toml");
        fs::write(&config_path, text).expect("write config");
        // The commands run from a sub-folder, so a host that resolved the
        // config's relative paths against its cwd (not the config's folder)
        // would put the db where the tests do not look.
        let cwd = root.join("cwd");
        fs::create_dir_all(&cwd).expect("create cwd");
        let store = paths_from.store(&root);
        // A store on the test server is this test's own (a fresh schema /
        // prefix): check the server answers, and drop the store at the end.
        // Other URLs (unreachable servers, fresh databases) are the test's
        // business.
        let drop_store =
            store.url().is_some() && store.url().map(str::to_owned) == store.backend().server_url();
        if drop_store {
            check_server(&store);
        }
        let keep = std::env::var_os("E2E_KEEP").is_some();
        let (dir, root) = if keep {
            let p = dir.keep();
            eprintln!("e2e: keeping {}", p.display());
            (None, p)
        } else {
            (Some(dir), root)
        };
        TestHost {
            dir,
            log_path: root.join("host.log"),
            root,
            config_path,
            store,
            drop_store,
            cwd,
            bin,
            child: Mutex::new(None),
            spawns: AtomicU32::new(0),
            cmds: AtomicU32::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// The SQLite file (panics on the server backends).
    pub fn db_path(&self) -> &Path {
        match &self.store {
            Store::Sqlite { path, .. } => path,
            other => panic!("db_path(): the store is not a SQLite file but {other}"),
        }
    }
    /// Where the store is.
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// Whether the temp dir is removed on drop (false with E2E_KEEP).
    pub fn is_temporary(&self) -> bool {
        self.dir.is_some()
    }

    fn log_line(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "\n===== e2e: {line} =====");
        }
    }

    /// The last `n` lines of the host's log (all runs).
    pub fn log_tail(&self, n: usize) -> String {
        match fs::read(&self.log_path) {
            Ok(b) => tail(&String::from_utf8_lossy(&b), n),
            Err(e) => format!("(no host log at {}: {e})", self.log_path.display()),
        }
    }

    /// The host's whole log so far (every run, with the harness's `===== e2e:`
    /// markers), colour codes removed.
    pub fn log_text(&self) -> String {
        self.log_since(0)
    }

    /// The log's length now: give it to [`TestHost::log_since`] or
    /// [`TestHost::wait_for_log`] to look only at what is written after.
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.log_path).map_or(0, |m| m.len() as usize)
    }

    /// The log written after `mark` (see [`TestHost::log_mark`]), colour codes
    /// removed; empty if there is no log yet.
    pub fn log_since(&self, mark: usize) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        let from = mark.min(bytes.len());
        strip_ansi(&String::from_utf8_lossy(&bytes[from..]))
    }

    /// The lines of the log after `mark` that contain every one of `needles`.
    pub fn log_lines(&self, mark: usize, needles: &[&str]) -> Vec<String> {
        self.log_since(mark)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Polls the log until a line after `mark` contains every one of
    /// `needles`, and returns the first such line. Panics after `timeout`
    /// (with the log's tail), or at once if the spawned host exits meanwhile.
    pub async fn wait_for_log(
        &self,
        what: &str,
        mark: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> String {
        poll_until(
            &format!("{what} (a log line with {needles:?})"),
            timeout,
            POLL,
            || {
                let lines = self.log_lines(mark, needles);
                async move {
                    match lines.into_iter().next() {
                        Some(l) => Ok(l),
                        None => anyhow::bail!("no such line yet; log tail:\n{}", self.log_tail(20)),
                    }
                }
            },
            |_| true,
            Some(self),
        )
        .await
    }

    // -- the long-running host ------------------------------------------------

    /// Starts `jasper-host run --config F`, stdout and stderr appended to host.log.
    pub fn spawn(&self) {
        let mut slot = self.child.lock().expect("child lock");
        if let Some(c) = slot.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            panic!("spawn(): the host is already running (pid {})", c.id());
        }
        let n = self.spawns.fetch_add(1, Ordering::SeqCst) + 1;
        self.log_line(&format!("spawn #{n}"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open host log");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.cwd)
            .env("RUST_LOG", rust_log())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} run: {e}", self.bin.display()));
        *slot = Some(child);
    }

    /// How many times `spawn()` was called.
    pub fn spawn_count(&self) -> u32 {
        self.spawns.load(Ordering::SeqCst)
    }

    /// Some(status) if the spawned host has exited, None if it runs (or was never spawned).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut slot = self.child.lock().expect("child lock");
        slot.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&self) -> bool {
        let mut slot = self.child.lock().expect("child lock");
        match slot.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics (with the log tail) unless the spawned host is still running.
    #[track_caller]
    pub fn assert_alive(&self, when: &str) {
        let mut slot = self.child.lock().expect("child lock");
        match slot.as_mut() {
            None => panic!("{when}: the host was never spawned"),
            Some(c) => match c.try_wait() {
                Ok(None) => {}
                Ok(Some(st)) => panic!(
                    "{when}: the host process exited ({st}); log tail:\n{}",
                    self.log_tail(60)
                ),
                Err(e) => panic!("{when}: try_wait: {e}"),
            },
        }
    }

    /// SIGKILL (Child::kill is SIGKILL on unix) and reap. Panics if it was not running.
    #[track_caller]
    pub fn kill9(&self) {
        let mut slot = self.child.lock().expect("child lock");
        let mut c = slot.take().expect("kill9(): the host was never spawned");
        if let Ok(Some(st)) = c.try_wait() {
            panic!(
                "kill9(): the host had already exited ({st}) before it could be killed; log tail:\n{}",
                self.log_tail(60)
            );
        }
        c.kill().expect("SIGKILL the host");
        let st = c.wait().expect("reap the killed host");
        self.log_line(&format!("SIGKILL sent ({st})"));
    }

    /// Sends `sig` to the running host. Panics if it was never spawned or
    /// has exited.
    #[track_caller]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let mut slot = self.child.lock().expect("child lock");
        let c = slot
            .as_mut()
            .unwrap_or_else(|| panic!("signal({sig}): the host was never spawned"));
        if let Ok(Some(st)) = c.try_wait() {
            panic!(
                "signal({sig}): the host had already exited ({st}); log tail:\n{}",
                self.log_tail(60)
            );
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("send {sig} to the host: {e}"));
        drop(slot);
        self.log_line(&format!("{sig} sent"));
    }

    /// SIGSTOP: the host freezes where it is (its sockets and files stay
    /// open; what peers already sent waits in the kernel). [`TestHost::kill9`]
    /// works on a frozen host; [`TestHost::sigcont`] resumes it.
    /// Returns once every thread of the host is stopped (kill(2) only queues
    /// the signal: a thread running on another core goes on for a moment, and
    /// could finish a commit after `sigstop` returned otherwise).
    #[track_caller]
    pub fn sigstop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let pid = {
            let slot = self.child.lock().expect("child lock");
            slot.as_ref().expect("spawned").id()
        };
        let start = Instant::now();
        loop {
            match threads_not_stopped(pid) {
                Ok(running) if running.is_empty() => return,
                Ok(running) if start.elapsed() > STOP_TIMEOUT => panic!(
                    "threads {running:?} of the host (pid {pid}) still run {STOP_TIMEOUT:?} after SIGSTOP"
                ),
                Err(e) => panic!("reading /proc/{pid}/task after SIGSTOP: {e}"),
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// SIGCONT: a frozen host goes on.
    #[track_caller]
    pub fn sigcont(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGTERM, then wait up to `STOP_TIMEOUT` for the exit. Returns its status;
    /// panics (after a SIGKILL) if it did not exit in time.
    #[track_caller]
    pub fn stop(&self) -> ExitStatus {
        let mut slot = self.child.lock().expect("child lock");
        let mut c = slot.take().expect("stop(): the host was never spawned");
        if let Ok(Some(st)) = c.try_wait() {
            return st;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the host");
        self.log_line("SIGTERM sent");
        match wait_child(&mut c, STOP_TIMEOUT) {
            Ok(Some(st)) => st,
            other => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the host did not exit within {STOP_TIMEOUT:?} of SIGTERM ({other:?}); log tail:\n{}",
                    self.log_tail(60)
                );
            }
        }
    }

    // -- short commands ---------------------------------------------------------

    /// Runs `jasper-host <words...> --config F <rest...>` from the cwd sub-folder,
    /// stdin from `stdin` (or /dev/null), at most `timeout`.
    pub fn cli_timeout(
        &self,
        words: &[&str],
        rest: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> CmdOut {
        let n = self.cmds.fetch_add(1, Ordering::SeqCst) + 1;
        let out_path = self.root.join(format!("cmd-{n}.out"));
        let err_path = self.root.join(format!("cmd-{n}.err"));
        let mut cmd = Command::new(&self.bin);
        cmd.args(words)
            .arg("--config")
            .arg(&self.config_path)
            .args(rest)
            .current_dir(&self.cwd)
            .env("RUST_LOG", rust_log())
            .env("NO_COLOR", "1")
            .stdout(File::create(&out_path).expect("create stdout file"))
            .stderr(File::create(&err_path).expect("create stderr file"));
        match stdin {
            Some(bytes) => {
                let in_path = self.root.join(format!("cmd-{n}.in"));
                fs::write(&in_path, bytes).expect("write stdin file");
                cmd.stdin(File::open(&in_path).expect("open stdin file"));
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        let shown = format!(
            "jasper-host {} --config {} {}",
            words.join(" "),
            self.config_path.display(),
            rest.iter()
                .map(|a| if a.len() > 120 {
                    format!("{}...", &a[..a.floor_char_boundary(120)])
                } else {
                    (*a).to_owned()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{shown}`: {e}"));
        let status = match wait_child(&mut child, timeout) {
            Ok(Some(st)) => st,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{shown}` did not finish within {timeout:?} ({other:?}); stderr tail:\n{}",
                    tail(&fs::read_to_string(&err_path).unwrap_or_default(), 40)
                );
            }
        };
        CmdOut {
            cmd: shown,
            status,
            stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
        }
    }

    /// [`TestHost::cli_timeout`] with [`CLI_TIMEOUT`] and no stdin.
    pub fn cli(&self, words: &[&str], rest: &[&str]) -> CmdOut {
        self.cli_timeout(words, rest, None, CLI_TIMEOUT)
    }

    fn jsonl(bodies: &[Value]) -> String {
        let mut s = String::new();
        for b in bodies {
            s.push_str(&serde_json::to_string(b).expect("serialize body"));
            s.push('\n');
        }
        s
    }

    /// `send --type T --file PATH` with one JSON body per line.
    pub fn send_file(&self, message_type: &str, bodies: &[Value]) -> CmdOut {
        self.send_file_text(message_type, &Self::jsonl(bodies))
    }

    /// `send --type T --file PATH` with the file's text given verbatim.
    pub fn send_file_text(&self, message_type: &str, text: &str) -> CmdOut {
        let n = self.cmds.load(Ordering::SeqCst) + 1;
        let path = self.root.join(format!("send-{n}.jsonl"));
        fs::write(&path, text).expect("write send file");
        let p = path.to_str().expect("utf-8 temp path").to_owned();
        self.cli(&["send"], &["--type", message_type, "--file", &p])
    }

    /// `send --type T --file -` with the bodies on stdin.
    pub fn send_stdin(&self, message_type: &str, bodies: &[Value]) -> CmdOut {
        let text = Self::jsonl(bodies);
        self.cli_timeout(
            &["send"],
            &["--type", message_type, "--file", "-"],
            Some(text.as_bytes()),
            CLI_TIMEOUT,
        )
    }

    /// `send --type T [--id ID] --body JSON`.
    pub fn send_body(&self, message_type: &str, body: &Value, id: Option<&str>) -> CmdOut {
        let body = serde_json::to_string(body).expect("serialize body");
        let mut rest = vec!["--type", message_type];
        if let Some(id) = id {
            rest.extend(["--id", id]);
        }
        rest.extend(["--body", &body]);
        self.cli(&["send"], &rest)
    }

    /// `storage counts --json`, parsed.
    #[track_caller]
    pub fn counts(&self) -> Counts {
        let out = self.cli(&["storage", "counts"], &["--json"]);
        out.assert_success();
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`storage counts --json` printed no Counts object ({e}):\n{}",
                out.stdout
            )
        })
    }

    /// `dead-letters list --json`, parsed.
    #[track_caller]
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let out = self.cli(&["dead-letters", "list"], &["--json"]);
        out.assert_success();
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`dead-letters list --json` printed no array of dead letters ({e}):\n{}",
                out.stdout
            )
        })
    }

    // -- the database -------------------------------------------------------------

    /// Direct SQL on the store.
    pub fn db(&self) -> Db {
        Db::new(self.store.clone())
    }

    /// Polls `probe` every [`POLL`] until `done` holds; panics after `timeout`
    /// with the last observed value, or at once (with the host log) if the
    /// spawned host exits meanwhile.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        probe: F,
        done: impl FnMut(&T) -> bool,
    ) -> T
    where
        T: Debug,
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        poll_until(what, timeout, POLL, probe, done, Some(self)).await
    }

    /// [`TestHost::wait_for`] with a chosen polling interval.
    pub async fn wait_for_every<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        every: Duration,
        probe: F,
        done: impl FnMut(&T) -> bool,
    ) -> T
    where
        T: Debug,
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        poll_until(what, timeout, every, probe, done, Some(self)).await
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.child.lock()
            && let Some(mut c) = slot.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "\n===== e2e: test failed; host dir {} ; store {} ; tail of {} =====\n{}\n===== end of host log =====",
                self.root.display(),
                self.store,
                self.log_path.display(),
                self.log_tail(80)
            );
        }
        // The host is gone (killed above); now its store, pass or fail.
        if self.drop_store {
            if std::env::var_os("E2E_KEEP").is_some() {
                eprintln!("e2e: keeping the store {}", self.store);
                return;
            }
            let store = self.store.clone();
            let r = block_on_own_runtime(async move {
                drop_store(&store).await?;
                let left = leftovers(&store).await?;
                anyhow::ensure!(left.is_empty(), "left behind after the drop: {left:?}");
                anyhow::Ok(())
            });
            if let Err(e) = r {
                let msg = format!("e2e: could not drop the store {}: {e:#}", self.store);
                if panicking {
                    eprintln!("{msg}");
                } else {
                    panic!("{msg}");
                }
            }
        }
    }
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`), in case the host
/// colours its log despite NO_COLOR.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports [`free_port`] handed out in this process.
static PORTS_GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A TCP port of 127.0.0.1 nothing listens on, for a host's `[[listen]]`.
/// It is taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so no outgoing connection
/// (of any process) is given it meanwhile and a connect to it while nobody
/// listens cannot end up connected to itself; never twice in one process;
/// checked free by binding it (the socket is closed again: the host binds it).
/// Falls back to a port the kernel picks when there is no room below the range.
pub fn free_port() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let mut given = PORTS_GIVEN.lock().expect("ports lock");
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let first = 10_000u16;
    if low > first + 1000 {
        let span = u32::from(low - first);
        // A random start, so test processes running side by side try different ports.
        let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
        for k in 0..span {
            let p = first + ((start + k) % span) as u16;
            if !given.contains(&p) && bindable(p) {
                given.push(p);
                return p;
            }
        }
    }
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().expect("local addr").port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
    panic!("free_port(): no free port found");
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `probe` every [`POLL`] until `done(&value)` holds and returns that
/// value. Panics after `timeout` with `what` and the last observed value (or
/// the last probe error). Bounded by count and time.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    probe: F,
    done: impl FnMut(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    poll_until(what, timeout, POLL, probe, done, None).await
}

async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
    mut done: impl FnMut(&T) -> bool,
    host: Option<&TestHost>,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let every = every.max(Duration::from_millis(1));
    let max_polls = timeout.as_millis() / every.as_millis() + 2;
    let mut last: Option<anyhow::Result<T>> = None;
    let watch_host = host.filter(|h| h.is_running());
    for _ in 0..max_polls {
        match probe().await {
            Ok(v) if done(&v) => return v,
            other => last = Some(other),
        }
        if let Some(h) = watch_host
            && let Some(st) = h.exit_status()
        {
            panic!(
                "the host exited ({st}) after {:.1?} while waiting for {what}; last observed: {}\nhost log tail:\n{}",
                start.elapsed(),
                show_last(&last),
                h.log_tail(60)
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    panic!(
        "timed out after {:.1?} waiting for {what}; last observed: {}",
        start.elapsed(),
        show_last(&last)
    );
}

fn show_last<T: Debug>(last: &Option<anyhow::Result<T>>) -> String {
    match last {
        None => "(nothing: no probe ran)".to_owned(),
        Some(Ok(v)) => format!("{v:#?}"),
        Some(Err(e)) => format!("error: {e:#}"),
    }
}

// ---------------------------------------------------------------------------
// One test per backend
// ---------------------------------------------------------------------------

/// `per_backend!(name => func, ...)`: a module `name` with three tests,
/// `name::sqlite`, `name::postgres`, `name::mysql`, each running
/// `func(Backend::X).await` on a 2-thread tokio runtime. Filter with the
/// backend's name: `cargo test --release --test storage -- postgres`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident => $func:ident),* $(,)?) => {
        $(
            mod $name {
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$func($crate::Backend::Sqlite).await
                }
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$func($crate::Backend::Postgres).await
                }
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$func($crate::Backend::Mysql).await
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Message bodies of the example plugins
// ---------------------------------------------------------------------------

/// A `PlaceOrder` body.
pub fn place_order(order_id: &str, amount_cents: u64, remind_after_ms: u64) -> Value {
    json!({
        "order_id": order_id,
        "customer": "e2e",
        "amount_cents": amount_cents,
        "remind_after_ms": remind_after_ms,
    })
}

/// Ten days: reminders that stay `scheduled` for the whole test.
pub const REMIND_LATER_MS: u64 = 10 * 24 * 3600 * 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    #[test]
    fn config_renders_sections_in_contract_order_with_escaping() {
        let c = HostConfig::new()
            .max_attempts(2)
            .heartbeat_ms(200)
            .memory_mb(32)
            .set("node", "name", "a \"quoted\" \\ name");
        let text = c.render();
        let pos = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing in\n{text}"))
        };
        assert!(pos("[node]") < pos("[storage]"));
        assert!(pos("[storage]") < pos("[plugins]"));
        assert!(pos("[plugins]") < pos("[handling]"));
        assert!(pos("[handling]") < pos("[durability]"));
        assert!(text.contains("max_attempts = 2\n"), "{text}");
        assert!(text.contains("memory_mb = 32\n"), "{text}");
        assert!(text.contains(r#"name = "a \"quoted\" \\ name""#), "{text}");
        assert!(text.contains(r#"url = "sqlite://jasper.db""#), "{text}");
        let dir = Path::new("/x");
        assert_eq!(c.sqlite_path(dir), Some(PathBuf::from("/x/jasper.db")));
        let abs = HostConfig::new().set("storage", "url", "sqlite:///data/j.db?mode=rwc");
        assert_eq!(abs.sqlite_path(dir), Some(PathBuf::from("/data/j.db")));
    }

    #[test]
    fn config_renders_listen_and_route_tables_after_the_sections() {
        let c = HostConfig::new()
            .listen("durable://127.0.0.1:4100")
            .route("OrderPlaced", "durable://127.0.0.1:4200")
            .route("billing.*", "tcp://10.0.0.1:1/queue")
            .sending("ping_interval_ms", 200)
            .node_name("a");
        let text = c.render();
        let pos = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing in\n{text}"))
        };
        assert!(pos("[sending]") < pos("[[listen]]"), "{text}");
        assert!(pos("[[listen]]") < pos("[[route]]"), "{text}");
        assert!(
            text.contains("[[listen]]\nuri = \"durable://127.0.0.1:4100\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "[[route]]\nmessage_type = \"OrderPlaced\"\nto = \"durable://127.0.0.1:4200\"\n"
            ),
            "{text}"
        );
        assert!(
            pos("message_type = \"OrderPlaced\"") < pos("billing.*"),
            "{text}"
        );
        assert!(text.contains("ping_interval_ms = 200\n"), "{text}");
        assert_eq!(c.listen_uris().len(), 1);
        assert_eq!(c.routes().len(), 2);
    }

    #[test]
    fn config_renders_rabbit_bindings_as_an_array_of_tables() {
        let c = HostConfig::new()
            .rabbitmq("prefetch", 100)
            .rabbit_binding("events", "audit-in", "Order.*")
            .rabbit_binding("events", "all", "#")
            .route("OrderPlaced", "rabbitmq://exchange/events");
        let text = c.render();
        // The host reads it as two bindings.
        let parsed = jasper_host::Config::from_toml_str(&text, Path::new("/x"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let b = &parsed.rabbitmq.binding;
        assert_eq!(b.len(), 2, "{text}");
        assert_eq!(
            (
                b[0].exchange.as_str(),
                b[0].queue.as_str(),
                b[0].routing_key.as_str()
            ),
            ("events", "audit-in", "Order.*")
        );
        assert_eq!(parsed.rabbitmq.prefetch, 100);
        assert!(
            text.contains(
                "[[rabbitmq.binding]]\nexchange = \"events\"\nqueue = \"audit-in\"\nrouting_key = \"Order.*\"\n"
            ),
            "{text}"
        );
        assert!(
            text.find("[rabbitmq]") < text.find("[[rabbitmq.binding]]"),
            "{text}"
        );
    }

    #[test]
    fn strip_ansi_removes_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m circuit open"),
            " WARN circuit open"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        for p in [a, b] {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .unwrap_or_else(|e| panic!("port {p} is not free: {e}"));
        }
        if let Ok(r) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let low: u16 = r.split_whitespace().next().unwrap().parse().unwrap();
            if low > 11_000 {
                assert!(a < low && b < low, "{a} {b} vs {low}");
            }
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "[... 1 earlier lines ...]\nb\nc");
        assert_eq!(tail("a", 5), "a");
    }

    /// The read-only helpers work on a WAL-mode file another connection writes,
    /// and report a missing file as an error (not as zero rows).
    #[tokio::test]
    async fn db_reads_a_wal_database_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jasper.db");
        let db = Db::sqlite(path.clone(), "jasper");
        let err = db.progress().await.unwrap_err();
        assert!(format!("{err:#}").contains("no database file"), "{err:#}");

        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut w = SqliteConnection::connect_with(&opts).await.unwrap();
        for sql in [
            "CREATE TABLE jasper_incoming (id TEXT PRIMARY KEY, status TEXT, owner_id INTEGER, execute_at INTEGER, attempts INTEGER, message_type TEXT, destination TEXT, received_at TEXT, keep_until INTEGER, body BLOB)",
            "CREATE TABLE jasper_outgoing (id TEXT PRIMARY KEY, owner_id INTEGER, destination TEXT, deliver_by INTEGER, attempts INTEGER, message_type TEXT, body BLOB)",
            "CREATE TABLE jasper_dead_letters (id TEXT PRIMARY KEY, message_type TEXT, received_at TEXT, source TEXT, error_kind TEXT, error_message TEXT, failed_at INTEGER, attempts INTEGER, replayable INTEGER, body BLOB)",
            "CREATE TABLE jasper_state (plugin TEXT, key TEXT, value BLOB, version INTEGER, PRIMARY KEY (plugin, key))",
            "INSERT INTO jasper_incoming (id, status, owner_id, attempts, message_type) VALUES ('1', 'handled', 0, 0, 'A'), ('2', 'incoming', 7, 0, 'A'), ('3', 'scheduled', 0, 0, 'B')",
            "INSERT INTO jasper_dead_letters (id, message_type, error_kind, error_message, failed_at, attempts) VALUES ('9', 'C', 'panic', 'boom', 1, 2)",
            "INSERT INTO jasper_state VALUES ('audit', 'count', CAST('12' AS BLOB), 3), ('audit', 'seen/x', CAST('1' AS BLOB), 1)",
        ] {
            sqlx::query(sql).execute(&mut w).await.unwrap();
        }
        // Read while the writer's connection is open (WAL + shm exist) ...
        let p = db.progress().await.unwrap();
        assert_eq!(p.get("A", "handled"), 1);
        assert_eq!(p.of_type("A"), 2);
        assert_eq!(p.with_status("scheduled"), 1);
        assert_eq!((p.outgoing, p.dead_letters), (0, 1));
        assert_eq!(
            db.incoming_count(Some("incoming"), Some("A"))
                .await
                .unwrap(),
            1
        );
        let st = db.state("audit").await.unwrap();
        assert_eq!(st["count"].as_i64().unwrap(), 12);
        assert_eq!(st["count"].version, 3);
        assert_eq!(
            db.state_get("audit", "seen/x")
                .await
                .unwrap()
                .unwrap()
                .as_i64()
                .unwrap(),
            1
        );
        assert_eq!(db.state_get("audit", "nope").await.unwrap(), None);
        let dl = db.dead_letter_rows().await.unwrap();
        assert_eq!(dl[0].error_kind, "panic");
        assert_eq!(dl[0].attempts, 2);
        // ... and after it closed (the WAL checkpointed and removed).
        w.close().await.unwrap();
        assert_eq!(db.incoming_rows("A").await.unwrap().len(), 2);
        assert_eq!(db.owned_rows().await.unwrap(), (1, 0));
        assert_eq!(db.row_count("state").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn wait_until_returns_the_value_or_panics_with_the_last_one() {
        let mut n = 0;
        let v = wait_until(
            "n to reach 3",
            Duration::from_secs(5),
            || {
                n += 1;
                let v = n;
                async move { Ok(v) }
            },
            |v| *v >= 3,
        )
        .await;
        assert_eq!(v, 3);

        let r = tokio::spawn(async {
            wait_until(
                "never",
                Duration::from_millis(100),
                || async { Ok(41) },
                |v| *v == 42,
            )
            .await
        })
        .await;
        let msg = match r {
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                p.downcast_ref::<String>().cloned().unwrap_or_default()
            }
            other => panic!("wait_until should have panicked: {other:?}"),
        };
        assert!(
            msg.contains("timed out") && msg.contains("never") && msg.contains("41"),
            "{msg}"
        );
    }
}
