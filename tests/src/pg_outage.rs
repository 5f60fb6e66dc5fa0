//! [`PostgresOutage`]: the local PostgreSQL cluster stopped
//! (`pg_ctlcluster --skip-systemctl-redirect VERSION main stop -m fast`)
//! and always started again, even if the test panics. Only for a test
//! binary of its own (`db_outage`): every test running meanwhile loses the
//! server too.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Backend, Db, Store, TOOL_TIMEOUT, block_on_own_runtime, run_tool};

/// How long the server may take to take connections again after `start`.
const BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// The stopped server; [`PostgresOutage::end`] (or dropping it) starts it
/// again and waits until it answers.
#[derive(Debug)]
pub struct PostgresOutage {
    ended: bool,
    pub stopped_at: Instant,
}

/// The cluster's version: the one folder of `/etc/postgresql`.
fn cluster_version() -> String {
    let mut versions: Vec<String> = fs::read_dir("/etc/postgresql")
        .expect("read /etc/postgresql (is PostgreSQL installed here?)")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL cluster under /etc/postgresql")
}

fn pg_ctlcluster(action: &str) -> crate::CmdOut {
    let mut c = Command::new("pg_ctlcluster");
    c.args([
        "--skip-systemctl-redirect",
        &cluster_version(),
        "main",
        action,
    ]);
    if action == "stop" {
        c.args(["-m", "fast"]);
    }
    run_tool(c, None, TOOL_TIMEOUT)
}

/// Whether the test server takes a connection and answers `SELECT 1`.
pub async fn postgres_answers() -> bool {
    let url = Backend::Postgres.server_url().expect("a server URL");
    let db = Db::new(Store::Postgres {
        url,
        schema: "public".to_owned(),
    });
    tokio::time::timeout(Duration::from_secs(5), db.scalar("SELECT 1", &[]))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn start_and_wait() -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = pg_ctlcluster("start");
    // "already running" is fine: the server is what matters.
    let deadline = t + BACK_TIMEOUT;
    while Instant::now() < deadline {
        if postgres_answers().await {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "PostgreSQL does not answer {BACK_TIMEOUT:?} after `pg_ctlcluster start`:\n{}\n{}",
        out.stdout,
        out.stderr
    )
}

impl PostgresOutage {
    /// Stops the server; panics (after starting it again) if that fails.
    #[track_caller]
    pub fn begin() -> PostgresOutage {
        // The guard first: a stop that half-worked is undone too.
        let mut guard = PostgresOutage {
            ended: false,
            stopped_at: Instant::now(),
        };
        let out = pg_ctlcluster("stop");
        assert!(
            out.success(),
            "pg_ctlcluster stop failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        guard.stopped_at = Instant::now();
        guard
    }

    /// Starts the server and waits until it answers. Returns how long it
    /// was down.
    pub async fn end(mut self) -> Duration {
        self.ended = true;
        start_and_wait().await.unwrap_or_else(|e| panic!("{e:#}"));
        self.stopped_at.elapsed()
    }
}

impl Drop for PostgresOutage {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        eprintln!("e2e: starting PostgreSQL again (the outage guard was dropped)");
        if let Err(e) = block_on_own_runtime(start_and_wait()) {
            eprintln!("e2e: {e:#}");
        }
    }
}
