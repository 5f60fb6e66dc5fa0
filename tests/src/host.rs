//! [`TestHost`]: one isolated host (temp dir, config, plugins, store, log)
//! and its child process: run, stop, kill, freeze, short CLI commands.

use serde_json::Value;
use std::fmt;
use std::fmt::Debug;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::{
    Backend, CLI_TIMEOUT, CmdOut, Counts, Db, DeadLetter, HostConfig, POLL, STOP_TIMEOUT, Store,
    Val, block_on_own_runtime, check_server, drop_store, host_bin, leftovers, plugin_wasm,
    poll_until, rust_log, tail, threads_not_stopped, wait_child,
};

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
    /// Extra environment of the long-running host (`RUST_LOG` among them
    /// overrides the harness's), see [`TestHost::set_env`].
    env: Mutex<Vec<(String, String)>>,
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
            env: Mutex::new(Vec::new()),
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

    /// Sets `key=value` in the environment of every later [`TestHost::spawn`]
    /// (not of the short commands); `RUST_LOG` overrides `E2E_RUST_LOG`.
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.lock().expect("env lock");
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

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
        let env = self.env.lock().expect("env lock").clone();
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.cwd)
            .env("RUST_LOG", rust_log())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .envs(env)
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

    /// SIGKILL and reap if the host runs (frozen or not); nothing otherwise.
    /// Never panics: for clean-up code.
    pub fn kill_if_running(&self) {
        if let Ok(mut slot) = self.child.lock()
            && let Some(mut c) = slot.take()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
            self.log_line("SIGKILL sent (clean-up)");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_ansi_removes_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m circuit open"),
            " WARN circuit open"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
