//! Hot reload under load: 10,000 ticks flow while plugin `a` is replaced
//! twice (v1 -> v2 -> v3, v2 copied in two halves), a garbage replacement
//! fails and leaves v2 running, and plugin `b` is added, removed (its
//! messages wait) and added back. Every tick is handled exactly once, by the
//! version that was live when its handling started: no tick sent after a
//! version went live is handled by an older one. The plugin is
//! `tests/plugins/versioned`, its versions made by patching the marker in its
//! bytes (`make plugins` builds it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::log::{log, log_lines};

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jasper_host::address::Destination;
use jasper_host::envelope::{Envelope, local_row};
use jasper_host::runtime::version_of;
use jasper_host::{BatchEvent, Host};
use serde_json::json;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The plugin's marker as built (tests/plugins/versioned/src/lib.rs): a
/// prefix, then a 16-byte payload (the version, padded with '_').
const MARKER: &[u8] = b"@@jasper-versioned-marker@@v1______________";
const PREFIX_LEN: usize = 27;
const PAYLOAD_LEN: usize = 16;

const TICKS: u64 = 10_000;
const TICK: &str = "versioned.Tick";
/// Messages addressed to `b` while it is removed.
const WAITING: u64 = 20;
const WAITING_FROM: u64 = 1_000_000;
const DEADLINE: Duration = Duration::from_secs(120);

/// The built plugin with its version payload replaced by `version`.
fn patched(base: &[u8], version: &str) -> Vec<u8> {
    assert!(version.len() <= PAYLOAD_LEN && !version.ends_with('_'));
    let hits: Vec<usize> = base
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the marker is in versioned.wasm once");
    let mut out = base.to_vec();
    let payload = format!("{version:_<PAYLOAD_LEN$}");
    let at = hits[0] + PREFIX_LEN;
    out[at..at + PAYLOAD_LEN].copy_from_slice(payload.as_bytes());
    out
}

/// Which plugin versions handled each tick, by seq, from the plugin's state.
async fn handled(host: &Host, plugin: &str) -> BTreeMap<u64, Vec<String>> {
    let rows = host
        .store
        .list_state(plugin, "seq-", 1 << 22)
        .await
        .unwrap();
    rows.into_iter()
        .map(|e| {
            let seq = e.key["seq-".len()..].parse().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
            let by = v["by"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (seq, by)
        })
        .collect()
}

/// The sender: sends ticks 0.. up to `budget` (raised by the test, so
/// messages flow during each reload), one at a time, recording which ticks
/// also went to `b`.
struct Flow {
    sent: AtomicU64,
    budget: AtomicU64,
    to_b: Mutex<Vec<u64>>,
}

impl Flow {
    fn more(&self, n: u64) {
        let b = self.budget.load(Ordering::SeqCst);
        self.budget.store((b + n).min(TICKS), Ordering::SeqCst);
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    async fn run(self: Arc<Self>, host: Arc<Host>) {
        let mut seq = 0;
        while seq < TICKS {
            if seq >= self.budget.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let out = host
                .send(TICK, json!({ "seq": seq }).to_string().into_bytes(), None)
                .await
                .unwrap();
            let to_b = Destination::parse("local://b");
            if out.iter().any(|e| e.destination.as_ref() == Some(&to_b)) {
                self.to_b.lock().unwrap().push(seq);
            }
            seq += 1;
            self.sent.store(seq, Ordering::SeqCst);
            // About a thousand a second: a chunk spans a reload.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What committed batches retried and dead-lettered, gathered as they come.
#[derive(Default)]
struct Seen {
    retried: HashSet<Uuid>,
    dead: usize,
    /// Batch events this test fell behind on (must stay 0).
    missed: u64,
}

fn watch_events(mut rx: broadcast::Receiver<Arc<BatchEvent>>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let mut s = seen.lock().unwrap();
                    s.retried.extend(ev.retried.iter().copied());
                    s.dead += ev.dead_lettered.len();
                }
                Err(broadcast::error::RecvError::Lagged(n)) => seen.lock().unwrap().missed += n,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    out
}

/// The live version of `plugin` (the SHA-256 of its bytes), if loaded.
fn live(host: &Host, plugin: &str) -> Option<String> {
    host.plugins
        .snapshot()
        .get(plugin)
        .map(|p| p.version.clone())
}

async fn wait_live(host: &Host, plugin: &str, bytes: &[u8]) {
    let want = version_of(bytes);
    common::wait_for(&format!("{plugin} {} live", &want[..12]), DEADLINE, || {
        let ok = live(host, plugin).as_deref() == Some(want.as_str());
        async move { ok.then_some(()) }
    })
    .await;
}

/// Waits until the sender has sent its budget and every tick sent, and
/// every copy for `b`, is handled.
async fn drained(host: &Host, flow: &Flow, b_too: bool) {
    common::wait_for("the sender to send its budget", DEADLINE, || {
        let done = flow.sent() >= flow.budget.load(Ordering::SeqCst);
        async move { done.then_some(()) }
    })
    .await;
    let sent = flow.sent();
    let b_want: Vec<u64> = flow.to_b.lock().unwrap().clone();
    common::wait_for(
        &format!("the {sent} ticks sent handled"),
        DEADLINE,
        || async {
            let a = handled(host, "a").await;
            let a_done = (0..sent).all(|s| a.contains_key(&s));
            let b_done = !b_too || {
                let b = handled(host, "b").await;
                b_want.iter().all(|s| b.contains_key(s))
            };
            (a_done && b_done).then_some(())
        },
    )
    .await;
}

fn write_slowly(path: &Path, bytes: &[u8]) {
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(first).unwrap();
    f.flush().unwrap();
    // Well within the settle time: the watcher must not load half a file.
    std::thread::sleep(Duration::from_millis(100));
    f.write_all(rest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_replaced_added_and_removed_while_messages_flow() {
    log();
    let base = std::fs::read(common::wasm("versioned")).unwrap();
    let a = ["a-v1", "a-v2", "a-v3"].map(|v| patched(&base, v));
    let (b1, b2) = (patched(&base, "b-v1"), patched(&base, "b-v2"));

    let dir = tempfile::tempdir().unwrap();
    let config = common::config_with(dir.path(), &[]);
    assert!(config.plugins.watch, "on by default");
    let plugins = config.plugins.dir.clone();
    let a_path = plugins.join("a.wasm");
    let b_path = plugins.join("b.wasm");
    std::fs::write(&a_path, &a[0]).unwrap();
    let host = Arc::new(Host::start(config).await.unwrap());
    host.rebuild_message_schema().await.unwrap();
    let seen = watch_events(host.subscribe());
    assert_eq!(live(&host, "a"), Some(version_of(&a[0])));

    let flow = Arc::new(Flow {
        sent: AtomicU64::new(0),
        budget: AtomicU64::new(0),
        to_b: Mutex::new(Vec::new()),
    });
    let sender = tokio::spawn(flow.clone().run(host.clone()));
    // The tick from which each version of `a` is live (sent after it was).
    let mut live_from = vec![0];

    flow.more(1000);
    drained(&host, &flow, false).await;

    // v2, copied in two halves while ticks flow.
    flow.more(1500);
    write_slowly(&a_path, &a[1]);
    wait_live(&host, "a", &a[1]).await;
    // Tick `sent` may have been in flight when v2 was seen live; every
    // later one was sent after.
    live_from.push(flow.sent() + 1);
    assert!(
        log_lines(&["plugin-load-failed"]).is_empty(),
        "half a file was loaded: {:?}",
        log_lines(&["plugin-load-failed"])
    );
    drained(&host, &flow, false).await;

    // Garbage: reported, and v2 keeps running.
    flow.more(1000);
    std::fs::write(&a_path, b"this is not a wasm component at all").unwrap();
    common::wait_for("the failed load reported", DEADLINE, || async {
        let lines = log_lines(&["event=plugin-load-failed", "a.wasm"]);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(live(&host, "a"), Some(version_of(&a[1])));
    drained(&host, &flow, false).await;

    // v3, moved into place the way deploy tools do (write aside, rename).
    flow.more(1500);
    let aside = plugins.join(".a.wasm.part");
    std::fs::write(&aside, &a[2]).unwrap();
    std::fs::rename(&aside, &a_path).unwrap();
    wait_live(&host, "a", &a[2]).await;
    live_from.push(flow.sent() + 1);

    // b added: ticks from now go to both.
    flow.more(1000);
    std::fs::write(&b_path, &b1).unwrap();
    wait_live(&host, "b", &b1).await;
    drained(&host, &flow, true).await;
    assert!(!flow.to_b.lock().unwrap().is_empty(), "b got ticks");

    // b removed: messages addressed to it wait, no attempt counted, no
    // dead letter.
    flow.more(1000);
    std::fs::remove_file(&b_path).unwrap();
    common::wait_for("b unloaded", DEADLINE, || {
        let gone = host.plugins.snapshot().was_removed("b");
        async move { gone.then_some(()) }
    })
    .await;
    let waiting: Vec<Envelope> = (WAITING_FROM..WAITING_FROM + WAITING)
        .map(|seq| {
            let mut e = Envelope::new(TICK, json!({ "seq": seq }).to_string().into_bytes());
            e.destination = Some(Destination::parse("local://b"));
            e
        })
        .collect();
    let rows: Vec<_> = waiting.iter().map(local_row).collect();
    host.store.insert_incoming(&rows).await.unwrap();
    common::wait_for("b's messages put back to wait", DEADLINE, || {
        let s = seen.lock().unwrap();
        let all = waiting.iter().all(|e| s.retried.contains(&e.id));
        async move { all.then_some(()) }
    })
    .await;
    let b_now = handled(&host, "b").await;
    assert!(
        (WAITING_FROM..WAITING_FROM + WAITING).all(|s| !b_now.contains_key(&s)),
        "handled while b was away"
    );
    assert_eq!(seen.lock().unwrap().dead, 0, "nothing dead-lettered");
    assert!(host.store.dead_letters(10).await.unwrap().is_empty());

    // b back (a new version): what waited is handled, once.
    std::fs::write(&b_path, &b2).unwrap();
    wait_live(&host, "b", &b2).await;

    flow.more(TICKS);
    sender.await.unwrap();
    drained(&host, &flow, true).await;
    common::wait_for("the waiting messages handled", DEADLINE, || async {
        let b = handled(&host, "b").await;
        (WAITING_FROM..WAITING_FROM + WAITING)
            .all(|s| b.contains_key(&s))
            .then_some(())
    })
    .await;

    // Every tick once, by a version live when its handling started.
    let a_by = handled(&host, "a").await;
    assert_eq!(a_by.len() as u64, TICKS);
    let names = ["a-v1", "a-v2", "a-v3"];
    let mut per_version = [0u64; 3];
    for (seq, by) in &a_by {
        assert_eq!(by.len(), 1, "tick {seq} handled {by:?}");
        let v = names
            .iter()
            .position(|n| *n == by[0])
            .unwrap_or_else(|| panic!("tick {seq} handled by unknown version {by:?}"));
        let newest_live_at_send = live_from.iter().rposition(|from| seq >= from).unwrap();
        assert!(
            v >= newest_live_at_send,
            "tick {seq} was sent after {} went live but {} handled it",
            names[newest_live_at_send],
            by[0]
        );
        per_version[v] += 1;
    }
    assert!(per_version.iter().all(|n| *n > 0), "{per_version:?}");

    let b_by = handled(&host, "b").await;
    let to_b = flow.to_b.lock().unwrap().clone();
    for seq in to_b.iter().chain(
        (WAITING_FROM..WAITING_FROM + WAITING)
            .collect::<Vec<_>>()
            .iter(),
    ) {
        let by = b_by
            .get(seq)
            .unwrap_or_else(|| panic!("b tick {seq} not handled"));
        assert_eq!(by.len(), 1, "b tick {seq} handled {by:?}");
    }
    for seq in WAITING_FROM..WAITING_FROM + WAITING {
        assert_eq!(b_by[&seq], ["b-v2"], "waited for b's return");
    }
    assert_eq!(
        b_by.len(),
        to_b.len() + WAITING as usize,
        "b handled nothing else"
    );
    assert!(host.store.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(seen.lock().unwrap().missed, 0, "every batch event seen");

    // The failed load was reported once (the half-written copy never was),
    // and each load said which version it brought.
    assert_eq!(log_lines(&["event=plugin-load-failed"]).len(), 1);
    for v in [&a[1], &a[2], &b1, &b2] {
        let short = &version_of(v)[..12];
        assert_eq!(
            log_lines(&["event=plugin-loaded", &format!("version={short}")]).len(),
            1,
            "{short}"
        );
    }
    eprintln!(
        "ticks per version of a: {per_version:?}; live from ticks {live_from:?}; b: {} ticks",
        to_b.len()
    );

    drop(seen);
    Arc::into_inner(host)
        .expect("the sender is done")
        .shutdown()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_off_the_folder_is_read_once() {
    log();
    let base = std::fs::read(common::wasm("versioned")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_with(dir.path(), &[]);
    config.plugins.watch = false;
    let c_path = config.plugins.dir.join("c.wasm");
    std::fs::write(&c_path, patched(&base, "c-v1")).unwrap();
    let host = Host::start(config).await.unwrap();
    host.rebuild_message_schema().await.unwrap();
    let v1 = version_of(&patched(&base, "c-v1"));
    assert_eq!(live(&host, "c"), Some(v1.clone()));
    std::fs::write(&c_path, patched(&base, "c-v2")).unwrap();
    // Nothing is to happen: no condition to wait on. A watching host would
    // have loaded v2 well within three settle times.
    tokio::time::sleep(jasper_host::runtime::reload::SETTLE * 3).await;
    let out = host
        .tracked()
        .send_json(TICK, &json!({"seq": 1}))
        .await
        .unwrap();
    assert_eq!(out.handled_of(TICK).count(), 1);
    assert_eq!(handled(&host, "c").await[&1], ["c-v1"]);
    assert_eq!(live(&host, "c"), Some(v1), "no reload with watch = false");
    host.shutdown().await.unwrap();
}
