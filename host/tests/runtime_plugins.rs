//! The runtime against real plugins (built by `make plugins`): loading a
//! folder with broken files, and how each kind of misbehaviour ends a call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::wasm;

use std::sync::Arc;

use jasper_host::config::PluginsConfig;
use jasper_host::envelope::Envelope;
use jasper_host::runtime::state_view::StateView;
use jasper_host::runtime::{CallError, HandleError, PluginError, Runtime, TrapKind};
use jasper_host::store::{self, MessageStore};

async fn temp_store(dir: &tempfile::TempDir) -> Arc<dyn MessageStore> {
    let cfg = jasper_host::config::StorageConfig {
        url: "sqlite://s.db".into(),
        schema: "jasper".into(),
        backend: jasper_host::config::Backend::Sqlite {
            path: dir.path().join("s.db"),
        },
    };
    let s = store::open(&cfg).await.unwrap();
    s.migrate().await.unwrap();
    s
}

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
            .any(|t| t.contains("garbage.wasm") && t.contains("not a valid component")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("core.wasm")), "{text:?}");
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
