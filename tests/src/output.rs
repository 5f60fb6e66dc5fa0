//! What a short CLI command left ([`CmdOut`]), and reading a process's
//! threads (to tell a stopped host from a running one).

use std::fmt::Debug;
use std::fmt::Write as _;
use std::fs;
use std::process::Child;
use std::process::ExitStatus;
use std::time::Duration;
use std::time::Instant;

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
pub(crate) fn threads_not_stopped(pid: u32) -> std::io::Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "[... 1 earlier lines ...]\nb\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
