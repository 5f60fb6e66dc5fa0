//! The runtime against real plugins (built by `make plugins`): loading a
//! folder with broken files, how each kind of misbehaviour ends a call, the
//! per-message bounds on what a handler makes the host hold, that nothing
//! of one call's instance shows in the next, and that handlers run at once
//! (calls of a batch, batches overlapping) end as if run one after another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::temp_store;

use common::wasm;

use std::sync::Arc;
use std::time::Duration;

use jasper_host::Host;
use jasper_host::config::{PluginSettings, PluginsConfig};
use jasper_host::envelope::{Envelope, local_row};
use jasper_host::runtime::state_view::StateView;
use jasper_host::runtime::{CallError, HandleError, PluginError, Runtime, TrapKind};
use jasper_host::store::{self, Counts, Selection};
use serde_json::json;

#[tokio::test]
async fn a_broken_plugin_is_reported_by_file_and_the_others_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("orders"), dir.path().join("orders.wasm")).unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"not wasm at all").unwrap();
    // A valid core module, but not a component of the plugin world.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("bad name.wasm"), b"").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let rt = Runtime::new(&PluginsConfig::default()).unwrap();
    let (plugins, errors) = rt.load_dir(dir.path()).await.unwrap();
    let names: Vec<_> = plugins.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, vec!["orders"]);
    assert_eq!(
        plugins.get("orders").unwrap().subscriptions,
        vec!["OrderReminder", "PlaceOrder"]
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("garbage.wasm") && t.contains("not a WebAssembly component")),
        "{text:?}"
    );
    // Not wasmtime's reading of the bytes as WAT text.
    assert!(!text.iter().any(|t| t.contains("utf-8")), "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.contains("core.wasm") && t.contains("a core WebAssembly module")),
        "{text:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, PluginError::BadName { .. })),
        "{text:?}"
    );
    let missing = rt.load_dir(&dir.path().join("nope")).await.unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[tokio::test]
async fn a_host_whose_every_plugin_fails_does_not_start_and_names_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).unwrap();
    std::fs::write(plugin_dir.join("garbage.wasm"), b"not wasm at all").unwrap();
    std::fs::write(plugin_dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let mut config = jasper_host::Config::for_dir(dir.path());
    config.plugins.dir = plugin_dir.clone();
    let err = Host::start(config).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("no plugin in"), "{text}");
    assert!(text.contains(&plugin_dir.display().to_string()), "{text}");
    assert!(
        text.contains("garbage.wasm: not a WebAssembly component"),
        "{text}"
    );
    assert!(
        text.contains("core.wasm: a core WebAssembly module"),
        "{text}"
    );
}

#[tokio::test]
async fn a_host_whose_plugin_folder_holds_no_wasm_starts_as_a_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).unwrap();
    std::fs::write(plugin_dir.join("notes.txt"), b"not a plugin").unwrap();
    let mut config = jasper_host::Config::for_dir(dir.path());
    config.plugins.dir = plugin_dir;
    let host = Host::start(config).await.unwrap();
    assert_eq!(host.plugins.snapshot().iter().count(), 0);
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_misbehaviour_ends_as_its_own_kind_and_the_next_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let cfg = PluginsConfig {
        memory_mb: 32,
        deadline_ms: 300,
        ..PluginsConfig::default()
    };
    let rt = Runtime::new(&cfg).unwrap();
    let plugin = rt.load_plugin(&wasm("misbehave")).await.unwrap();
    let router = Arc::new(Default::default());
    let call = |t: &str, body: &str| {
        let mut env = Envelope::new(t, body.as_bytes().to_vec());
        env.destination = Some("local://misbehave".into());
        let view = StateView::new(store.clone(), plugin.name.clone(), Default::default());
        let rt = &rt;
        let plugin = &plugin;
        let router = Arc::clone(&router);
        async move { rt.handle(plugin, &env, router, view).await }
    };
    let kind = |r: &Result<(), CallError>| match r {
        Err(CallError::Trap { kind, .. }) => Some(*kind),
        _ => None,
    };
    let panic = call("test.Panic", r#"{"n":1}"#).await;
    assert_eq!(
        kind(&panic.result),
        Some(TrapKind::Panic),
        "{:?}",
        panic.result
    );
    let Err(CallError::Trap { message, .. }) = &panic.result else {
        unreachable!()
    };
    assert!(
        message.contains("panicked"),
        "the guest's panic message is kept: {message}"
    );

    let start = std::time::Instant::now();
    let spin = call("test.Spin", r#"{"n":1}"#).await;
    assert_eq!(
        kind(&spin.result),
        Some(TrapKind::Deadline),
        "{:?}",
        spin.result
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));

    let bomb = call("test.MemBomb", r#"{"n":1}"#).await;
    assert_eq!(
        kind(&bomb.result),
        Some(TrapKind::Memory),
        "{:?}",
        bomb.result
    );

    let reject = call("test.Reject", r#"{"n":4}"#).await;
    assert!(
        matches!(&reject.result, Err(CallError::Handler(HandleError::Reject(m))) if m.contains('4'))
    );
    assert!(reject.sent.is_empty());

    // A fresh instance after all that: works, and its write is in the batch.
    let ok = call("test.Ok", r#"{"n":7}"#).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);
    let (writes, _) = ok.state.into_commit();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].key, "ok/7");
}

/// Small per-message bounds, so tests go past them with small messages.
fn bounded(cfg: &mut PluginsConfig) {
    cfg.max_state_keys = 5;
    cfg.max_state_bytes = 1000;
    cfg.max_sends = 4;
    cfg.max_send_bytes = 1000;
}

#[tokio::test]
async fn a_handler_past_a_per_message_bound_ends_as_limit_naming_it_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let mut cfg = PluginsConfig::default();
    bounded(&mut cfg);
    // The remote destination below is one it may send to.
    cfg.each.insert(
        "misbehave".into(),
        PluginSettings {
            allow_send: vec!["durable://127.0.0.1:9".into()],
            ..Default::default()
        },
    );
    let rt = Runtime::new(&cfg).unwrap();
    let plugin = rt.load_plugin(&wasm("misbehave")).await.unwrap();
    let router = Arc::new(Default::default());
    let call = |t: &str, body: serde_json::Value| {
        let mut env = Envelope::new(t, serde_json::to_vec(&body).unwrap());
        env.destination = Some("local://misbehave".into());
        let view = StateView::new(store.clone(), plugin.name.clone(), Default::default());
        let rt = &rt;
        let plugin = &plugin;
        let router = Arc::clone(&router);
        async move { rt.handle(plugin, &env, router, view).await }
    };
    // With an empty router a publish reaches nobody; an explicit remote
    // destination only has to be well formed.
    let to = "durable://127.0.0.1:9/misbehave";
    let over = [
        (
            "test.Flood",
            json!({"n": 1, "keys": 6, "bytes": 1}),
            "state writes exceeded plugins.max_state_keys = 5 (wrote 6 keys)",
        ),
        // Two keys `flood/2/i` (9 bytes) of 600 bytes: 1218 > 1000.
        (
            "test.Flood",
            json!({"n": 2, "keys": 2, "bytes": 600}),
            "state writes exceeded plugins.max_state_bytes = 1000 (wrote 1218 bytes",
        ),
        (
            "test.Sink",
            json!({"n": 3, "sends": 5, "bytes": 1, "to": to}),
            "sends exceeded plugins.max_sends = 4 (sent 5 messages",
        ),
        (
            "test.Sink",
            json!({"n": 4, "sends": 2, "bytes": 600, "to": to}),
            "sends exceeded plugins.max_send_bytes = 1000 (sent ",
        ),
    ];
    for (t, body, want) in over {
        let out = call(t, body.clone()).await;
        match &out.result {
            Err(CallError::Trap {
                kind: TrapKind::Limit,
                message,
            }) => assert!(message.contains(want), "{t} {body}: {message}"),
            other => panic!("{t} {body}: want a limit trap, got {other:?}"),
        }
        assert!(out.sent.is_empty(), "{t} {body}: nothing sent is kept");
        let (writes, _) = out.state.into_commit();
        assert!(writes.is_empty(), "{t} {body}: nothing written is kept");
    }

    // At the bounds exactly: handled, and everything is kept.
    let flood = call("test.Flood", json!({"n": 5, "keys": 5, "bytes": 100})).await;
    assert!(flood.result.is_ok(), "{:?}", flood.result);
    let (writes, _) = flood.state.into_commit();
    let keys: Vec<_> = writes.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "flood/5/0",
            "flood/5/1",
            "flood/5/2",
            "flood/5/3",
            "flood/5/4"
        ]
    );
    let sink = call(
        "test.Sink",
        json!({"n": 6, "sends": 4, "bytes": 10, "to": to}),
    )
    .await;
    assert!(sink.result.is_ok(), "{:?}", sink.result);
    assert_eq!(sink.sent.len(), 4);
    assert!(sink.sent.iter().all(|e| e.message_type == "test.Blob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_a_bound_are_dead_lettered_at_once_and_the_rest_of_their_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_with(dir.path(), &["misbehave"]);
    bounded(&mut config.plugins);
    config.handling.max_attempts = 3;
    // Every message is in the inbox before the host starts, so its first
    // claim takes them all into one batch.
    let store = store::open(&config.storage).await.unwrap();
    store.migrate().await.unwrap();
    let bodies = [
        ("test.Ok", json!({"n": 1})),
        ("test.Flood", json!({"n": 2, "keys": 6, "bytes": 1})),
        ("test.Ok", json!({"n": 3})),
        // Published: one copy each, to misbehave (it handles test.Blob).
        ("test.Sink", json!({"n": 4, "sends": 5, "bytes": 1})),
        ("test.Flood", json!({"n": 5, "keys": 5, "bytes": 1})),
        ("test.Sink", json!({"n": 6, "sends": 4, "bytes": 1})),
        ("test.Ok", json!({"n": 7})),
    ];
    let envelopes: Vec<Envelope> = bodies
        .iter()
        .map(|(t, b)| {
            let mut env = Envelope::new(*t, serde_json::to_vec(b).unwrap());
            env.destination = Some("local://misbehave".into());
            env
        })
        .collect();
    let rows: Vec<_> = envelopes.iter().map(local_row).collect();
    store.insert_incoming(&rows).await.unwrap();
    let host = Host::start(config).await.unwrap();

    // 5 handled of the 7, and the 4 blobs of the sink under its bound.
    let done = |c: &Counts| c.incoming == 0 && c.scheduled == 0 && c.handled == 9;
    let counts = common::wait_for("the batch and its blobs", Duration::from_secs(30), || {
        let store = host.store.clone();
        async move { store.counts().await.ok().filter(done) }
    })
    .await;
    assert_eq!(counts.dead_letters, 2, "{counts:?}");

    let dead = host.store.dead_letters(100).await.unwrap();
    let of = |id| {
        dead.iter()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no dead letter {id}: {dead:#?}"))
    };
    for (env, key) in [
        (&envelopes[1], "plugins.max_state_keys = 5"),
        (&envelopes[3], "plugins.max_sends = 4"),
    ] {
        let d = of(env.id);
        assert_eq!(d.error_kind, "limit", "{d:?}");
        assert_eq!(d.attempts, 1, "not retried (max_attempts = 3): {d:?}");
        assert!(d.replayable, "{d:?}");
        assert!(d.error_message.contains(key), "{d:?}");
    }

    let state = |key: &str| {
        let store = host.store.clone();
        let key = key.to_owned();
        async move { store.read_state("misbehave", &key).await.unwrap() }
    };
    for key in ["ok/1", "ok/3", "ok/7", "flood/5/0", "flood/5/4"] {
        assert!(state(key).await.is_some(), "{key} committed");
    }
    for key in ["flood/2/0", "flood/2/4"] {
        assert!(state(key).await.is_none(), "{key} of the failed flood");
    }

    // Replayed, the flood passes its bound again: back in dead letters, as `limit`.
    let n = host
        .store
        .replay_dead_letters(&Selection::Ids(vec![envelopes[1].id]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let again = common::wait_for(
        "the replayed flood dead again",
        Duration::from_secs(30),
        || {
            let store = host.store.clone();
            let id = envelopes[1].id;
            async move {
                let c = store.counts().await.ok()?;
                let dead = store.dead_letters(100).await.ok()?;
                (c.incoming == 0 && c.dead_letters == 2)
                    .then(|| dead.into_iter().find(|d| d.id == id))
                    .flatten()
            }
        },
    )
    .await;
    assert_eq!(again.error_kind, "limit", "{again:?}");
    assert!(state("flood/2/0").await.is_none());
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_nothing_of_an_earlier_instance_even_with_calls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let rt = Arc::new(Runtime::new(&PluginsConfig::default()).unwrap());
    let plugin = Arc::new(rt.load_plugin(&wasm("misbehave")).await.unwrap());
    // test.Leak fails if its static counter is not 0 or a fresh allocation
    // holds what an earlier call wrote; each call leaves both behind. Four
    // at a time, so pool slots are reused by calls on other threads.
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (rt, plugin, store) = (rt.clone(), plugin.clone(), store.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    let body = serde_json::to_vec(&json!({"n": t * 100 + i})).unwrap();
                    let mut env = Envelope::new("test.Leak", body);
                    env.destination = Some("local://misbehave".into());
                    let view =
                        StateView::new(store.clone(), plugin.name.clone(), Default::default());
                    let out = rt
                        .handle(&plugin, &env, Arc::new(Default::default()), view)
                        .await;
                    assert!(out.result.is_ok(), "call {t}/{i}: {:?}", out.result);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// `count` messages `test.Slow` (no sleep) per tag, interleaved, in the
/// inbox before a host with `config` starts; returns the host once all are
/// handled.
async fn slow_counts_handled(config: jasper_host::Config, tags: &[(u64, usize)]) -> Host {
    let store = store::open(&config.storage).await.unwrap();
    store.migrate().await.unwrap();
    let longest = tags.iter().map(|t| t.1).max().unwrap_or(0);
    let mut rows = Vec::new();
    for i in 0..longest {
        for (n, count) in tags {
            if i < *count {
                let body = serde_json::to_vec(&json!({"n": n, "ms": 0})).unwrap();
                let mut env = Envelope::new("test.Slow", body);
                env.destination = Some("local://misbehave".into());
                rows.push(local_row(&env));
            }
        }
    }
    store.insert_incoming(&rows).await.unwrap();
    let total = rows.len() as i64;
    let host = Host::start(config).await.unwrap();
    common::wait_for("every test.Slow handled", Duration::from_secs(60), || {
        let store = host.store.clone();
        async move {
            store
                .counts()
                .await
                .ok()
                .filter(|c| c.handled == total && c.incoming == 0)
        }
    })
    .await;
    host
}

async fn slow_count(host: &Host, n: u64) -> u64 {
    let v = host
        .store
        .read_state("misbehave", &format!("slow/{n}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("slow/{n} never written"));
    serde_json::from_slice(&v.value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_batch_run_at_once_and_a_shared_key_counts_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_with(dir.path(), &["misbehave"]);
    config.handling.batch_size = 500;
    // One batch: 80 messages adding one to slow/1, between 80 with keys of
    // their own. Run at once, the slow/1 ones read what earlier ones of the
    // batch wrote and are run again in batch order; the others are not.
    let mut tags = vec![(1, 80)];
    tags.extend((100..180).map(|n| (n, 1)));
    let host = slow_counts_handled(config, &tags).await;
    assert_eq!(slow_count(&host, 1).await, 80);
    for n in 100..180 {
        assert_eq!(slow_count(&host, n).await, 1, "slow/{n}");
    }
    let dead = host.store.dead_letters(10).await.unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_on_one_hot_key_count_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_with(dir.path(), &["misbehave"]);
    // 30 batches of 20 on one key, two in hand at a time: a batch handled
    // while the one before commits reads a stale count, goes stale at its
    // turn and runs again.
    config.handling.batch_size = 20;
    config.handling.batches_in_flight = 2;
    let host = slow_counts_handled(config, &[(7, 600)]).await;
    assert_eq!(slow_count(&host, 7).await, 600);
    host.shutdown().await.unwrap();
}

/// `[plugins.NAME]` bounds that plugin and no other: two copies of
/// `misbehave`, `strict` (fuel, no sends out) and `loose` (a short
/// deadline, 8 MiB, one remote destination allowed).
#[tokio::test]
async fn a_plugins_own_table_bounds_it_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let folder = dir.path().join("plugins");
    std::fs::create_dir(&folder).unwrap();
    for name in ["strict", "loose"] {
        std::fs::copy(wasm("misbehave"), folder.join(format!("{name}.wasm"))).unwrap();
    }
    let mut cfg = PluginsConfig::default();
    cfg.each.insert(
        "strict".into(),
        PluginSettings {
            fuel: Some(1_000_000),
            ..Default::default()
        },
    );
    cfg.each.insert(
        "loose".into(),
        PluginSettings {
            deadline_ms: Some(200),
            memory_mb: Some(8),
            allow_send: vec!["tcp://127.0.0.1:9".into()],
            ..Default::default()
        },
    );
    let rt = Runtime::new(&cfg).unwrap();
    let (plugins, errors) = rt.load_dir(&folder).await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let strict = plugins.get("strict").unwrap();
    let loose = plugins.get("loose").unwrap();
    assert_eq!(strict.settings.memory_mb, 64);
    assert_eq!(loose.settings.memory_mb, 8);
    let call = |plugin: &Arc<jasper_host::runtime::Plugin>, t: &str, body: serde_json::Value| {
        let mut env = Envelope::new(t, serde_json::to_vec(&body).unwrap());
        env.destination = Some(format!("local://{}", plugin.name).as_str().into());
        let view = StateView::new(store.clone(), plugin.name.clone(), Default::default());
        let plugin = Arc::clone(plugin);
        let rt = &rt;
        async move {
            rt.handle(&plugin, &env, Arc::new(Default::default()), view)
                .await
        }
    };
    let kind = |out: &jasper_host::runtime::CallOutcome| match &out.result {
        Err(CallError::Trap { kind, .. }) => Some(*kind),
        _ => None,
    };
    // A spin ends by fuel in `strict`, by its own 200 ms deadline in `loose`.
    let out = call(strict, "test.Spin", json!({"n": 1})).await;
    assert_eq!(kind(&out), Some(TrapKind::Fuel), "{:?}", out.result);
    let out = call(loose, "test.Spin", json!({"n": 2})).await;
    assert_eq!(kind(&out), Some(TrapKind::Deadline), "{:?}", out.result);
    // A wait past 200 ms is fine in `strict` (the shared 5 s deadline).
    let out = call(strict, "test.Slow", json!({"n": 3, "ms": 300})).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let out = call(loose, "test.MemBomb", json!({"n": 4})).await;
    assert_eq!(kind(&out), Some(TrapKind::Memory), "{:?}", out.result);
    // A remote send: refused for `strict`, allowed for `loose`.
    let forward = json!({"n": 5, "to": "tcp://127.0.0.1:9/misbehave"});
    let out = call(strict, "test.Forward", forward.clone()).await;
    let shown = format!("{:?}", out.result);
    assert!(
        shown.contains("may not send to tcp://127.0.0.1:9/misbehave")
            && shown.contains("allow_send"),
        "{shown}"
    );
    assert!(out.sent.is_empty());
    let out = call(loose, "test.Forward", forward).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(out.sent.len(), 1);
}

/// Compiled plugins are kept in `plugins.cache_dir`: a second runtime on
/// the same folder loads the plugin from the cache, not by compiling it.
#[tokio::test]
async fn a_second_start_takes_the_compiled_plugin_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PluginsConfig::default();
    let cache = dir.path().join("cache");
    cfg.cache_dir = Some(cache.clone());
    let first = Runtime::new(&cfg).unwrap();
    first.load_plugin(&wasm("misbehave")).await.unwrap();
    assert_eq!(
        first.cache_counts(),
        (0, 1),
        "hits, misses of the first load"
    );
    // Written before the load returns.
    assert!(
        walk(&cache).iter().any(|p| p.is_file()),
        "nothing cached in {}",
        cache.display()
    );
    let second = Runtime::new(&cfg).unwrap();
    second.load_plugin(&wasm("misbehave")).await.unwrap();
    assert_eq!(
        second.cache_counts(),
        (1, 0),
        "hits, misses of the second load"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// `[plugins.NAME] max_in_flight = 1` runs that plugin's calls one at a time
/// even where the host would run 16 at once: eight 150 ms calls of one
/// batch take at least 8 x 150 ms from the moment they are in the inbox (at
/// once they would take about one call's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_own_max_in_flight_bounds_its_calls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_with(dir.path(), &["misbehave"]);
    config.plugins.each.insert(
        "misbehave".into(),
        PluginSettings {
            max_in_flight: Some(1),
            ..Default::default()
        },
    );
    let host = Host::start(config).await.unwrap();
    let rows: Vec<_> = (0..8u64)
        .map(|n| {
            let body = serde_json::to_vec(&json!({"n": n, "ms": 150})).unwrap();
            let mut env = Envelope::new("test.Slow", body);
            env.destination = Some("local://misbehave".into());
            local_row(&env)
        })
        .collect();
    let start = std::time::Instant::now();
    host.store.insert_incoming(&rows).await.unwrap();
    common::wait_for("every test.Slow handled", Duration::from_secs(60), || {
        let store = host.store.clone();
        async move { store.counts().await.ok().filter(|c| c.handled == 8) }
    })
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(8 * 150),
        "8 calls of 150 ms, one at a time, took {took:?}"
    );
    for n in 0..8 {
        assert_eq!(slow_count(&host, n).await, 1, "slow/{n}");
    }
    host.shutdown().await.unwrap();
}
