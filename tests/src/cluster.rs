//! Many hosts on one store ([`Cluster`]): a [`TestHost`] per node (each its
//! own temp dir, config and log), all on one schema / table prefix of the
//! test server; which node holds which rows ([`held_by`]), a node's id from
//! its log ([`spawn_node`]), its share of the work ([`handled_in_log`]),
//! `event=` lines ([`event_lines`]), and bodies of the misbehave plugin's
//! `test.Slow` ([`slow_bodies`]) with their checker ([`check_slow_once`]).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::{Col, Db, HostConfig, TestHost, json};

/// How long a host may take from spawn to its `host started` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The hosts' RUST_LOG when their share of the work is counted: the
/// worker's `batch committed` lines are debug lines.
pub const SHARE_LOG: &str = "info,jasper_host::handling=debug";

/// Hosts on one store. Dropping it SIGKILLs every host first, then drops
/// the TestHosts (the first drops the store), so no host still runs while
/// its store goes.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<TestHost>,
}

impl Cluster {
    /// One host per name in `names` (its `node.name`; names may repeat), each
    /// with `plugins`, all on the store of `config`.
    pub fn new(plugins: &[&str], config: &HostConfig, names: &[&str]) -> Cluster {
        Self::with_url(plugins, config, names, None)
    }

    /// Like [`Cluster::new`], but the hosts' config files name `host_url` as
    /// the storage URL (a proxy in front of the server) while the harness
    /// (its checks, its clean-up) uses the config's own URL.
    pub fn with_url(
        plugins: &[&str],
        config: &HostConfig,
        names: &[&str],
        host_url: Option<&str>,
    ) -> Cluster {
        let nodes = names
            .iter()
            .map(|name| {
                let c = config.clone().node_name(name);
                match host_url {
                    None => TestHost::new(plugins, c),
                    Some(url) => {
                        let text = c.clone().set("storage", "url", url).render();
                        TestHost::with_config_text(plugins, &text, &c)
                    }
                }
            })
            .collect();
        Cluster { nodes }
    }

    /// Direct SQL on the shared store.
    pub fn db(&self) -> Db {
        self.nodes[0].db()
    }

    /// Panics (with that host's log) unless every host runs.
    #[track_caller]
    pub fn assert_all_alive(&self, when: &str) {
        for (i, n) in self.nodes.iter().enumerate() {
            n.assert_alive(&format!("{when} (host #{i})"));
        }
    }

    /// SIGTERM to every host; panics unless each exits 0.
    #[track_caller]
    pub fn stop_all(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let st = n.stop();
            assert!(st.success(), "host #{i}'s exit status after SIGTERM: {st}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.kill_if_running();
        }
    }
}

/// The value of `key=` in a log line (fields are logged unquoted).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let want = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(want.as_str()))
}

/// Spawns `host` and waits for its `host started` line; returns the node
/// id it logged (random per process).
pub async fn spawn_node(host: &TestHost) -> i64 {
    let mark = host.log_mark();
    host.spawn();
    let line = host
        .wait_for_log(
            "the host to start",
            mark,
            &["host started", "node_id="],
            START_TIMEOUT,
        )
        .await;
    field(&line, "node_id")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric node_id in {line:?}"))
}

/// Ids of the rows in status incoming that node `node_id` holds (claimed
/// and not committed yet).
pub async fn held_by(db: &Db, node_id: i64) -> anyhow::Result<BTreeSet<String>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE owner_id = ? AND status = 'incoming'",
        db.as_text("id"),
        db.table("incoming")
    );
    let rows = db.query(&sql, &[node_id.into()], &[Col::Text]).await?;
    rows.iter()
        .map(|r| r[0].text().map(|s| s.to_lowercase()))
        .collect()
}

/// Messages `host` handled by its log, every run (the sum of the `handled`
/// counts of its `batch committed` lines; needs [`SHARE_LOG`]). A batch
/// committed just before a SIGKILL may be missing: a lower bound.
pub fn handled_in_log(host: &TestHost) -> u64 {
    host.log_lines(0, &["batch committed", "report=BatchReport"])
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("handled: ")? + "handled: ".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// The lines of `host`'s log after `mark` with `event=NAME` (`NAME` as in
/// `rows-lost`).
pub fn event_lines(host: &TestHost, mark: usize, name: &str) -> Vec<String> {
    let needle = format!("event={name}");
    host.log_since(mark)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == needle))
        .map(str::to_owned)
        .collect()
}

/// `test.Slow` bodies `{n, ms}` for `n` in `range`.
pub fn slow_bodies(range: std::ops::Range<u64>, ms: u64) -> Vec<Value> {
    range.map(|n| json!({"n": n, "ms": ms})).collect()
}

/// Every `test.Slow` of `0..m` handled once: `slow/{n}` = 1 at version 1,
/// no other `slow/` key; prints what it found first.
pub async fn check_slow_once(db: &Db, m: u64) {
    let state = db.state("misbehave").await.unwrap();
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    for n in 0..m {
        let key = format!("slow/{n}");
        match state.get(&key) {
            None => lost.push(key),
            Some(row) => match row.as_i64() {
                Ok(1) if row.version == 1 => {}
                other => duplicated.push(format!("{key} = {other:?} version {}", row.version)),
            },
        }
    }
    let extra: Vec<&String> = state
        .keys()
        .filter(|k| {
            k.strip_prefix("slow/")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= m)
        })
        .collect();
    println!(
        "test.Slow checker: {m} messages, lost {}, duplicated {}, unknown {}",
        lost.len(),
        duplicated.len(),
        extra.len()
    );
    assert!(lost.is_empty(), "lost effects: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated effects: {duplicated:?}");
    assert!(
        extra.is_empty(),
        "effects of messages nobody sent: {extra:?}"
    );
}

/// A number in `0..n` (uniform enough for picking moments), `n > 0`.
pub fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}
