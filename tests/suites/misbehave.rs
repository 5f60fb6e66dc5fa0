//! Plugins that panic, spin, eat memory, reject, fail or go past the
//! per-message bounds: the host survives, the good messages are handled and
//! the bad ones end in dead letters with the right kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::{HostConfig, TestHost, json};

fn config() -> HostConfig {
    HostConfig::new()
        .memory_mb(32)
        .deadline_ms(500)
        .max_attempts(2)
        .retry_delay_ms(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_spin_membomb_are_dead_lettered_and_ok_messages_pass() {
    let host = TestHost::new(&["misbehave"], config());
    host.spawn();

    let ok = |range: std::ops::Range<u32>| -> Vec<_> { range.map(|n| json!({ "n": n })).collect() };
    host.send_file("test.Ok", &ok(0..10)).assert_sent(10);
    host.send_body("test.Panic", &json!({"n": 1001}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(10..25)).assert_sent(15);
    host.send_body("test.Spin", &json!({"n": 1002}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(25..40)).assert_sent(15);
    host.send_body("test.MemBomb", &json!({"n": 1003}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(40..50)).assert_sent(10);

    let db = host.db();
    let p = host
        .wait_for(
            "no work left (nothing incoming, no retry scheduled)",
            Duration::from_secs(120),
            || db.progress(),
            |p| p.with_status("incoming") == 0 && p.with_status("scheduled") == 0,
        )
        .await;
    assert_eq!(p.get("test.Ok", "handled"), 50, "{p:?}");
    assert_eq!(p.dead_letters, 3, "{p:?}");

    let state = db.state("misbehave").await.unwrap();
    for n in 0..50 {
        let key = format!("ok/{n}");
        let row = state
            .get(&key)
            .unwrap_or_else(|| panic!("misbehave state lacks {key}"));
        assert_eq!(row.json().unwrap(), json!(true), "{key}");
    }

    let dls = host.dead_letters();
    assert_eq!(dls.len(), 3, "dead-letters list: {dls:#?}");
    for (ty, kind) in [
        ("test.Panic", "panic"),
        ("test.Spin", "deadline"),
        ("test.MemBomb", "memory"),
    ] {
        let d = dls
            .iter()
            .find(|d| d.message_type == ty)
            .unwrap_or_else(|| panic!("no dead letter of {ty}: {dls:#?}"));
        assert_eq!(d.error_kind, kind, "error_kind of {ty}: {d:?}");
        assert_eq!(d.attempts, 2, "attempts of {ty} (max_attempts = 2): {d:?}");
    }
    // The table agrees with the CLI.
    let rows = db.dead_letter_rows().await.unwrap();
    let mut kinds: Vec<_> = rows
        .iter()
        .map(|r| (r.message_type.as_str(), r.error_kind.as_str(), r.attempts))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("test.MemBomb", "memory", 2),
            ("test.Panic", "panic", 2),
            ("test.Spin", "deadline", 2)
        ],
        "jasper_dead_letters rows"
    );

    host.assert_alive("after the misbehaving plugins ran");
    // And it still handles messages.
    host.send_body("test.Ok", &json!({"n": 50}), None)
        .assert_sent(1);
    host.wait_for(
        "test.Ok 50 handled after the bad messages",
        Duration::from_secs(60),
        || db.state_get("misbehave", "ok/50"),
        |r| r.is_some(),
    )
    .await;
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_goes_to_dead_letters_at_once_and_flaky_succeeds_on_retry() {
    let host = TestHost::new(&["misbehave"], config());
    host.spawn();
    host.send_body("test.Reject", &json!({"n": 7}), None)
        .assert_sent(1);
    host.send_body("test.Flaky", &json!({"n": 8, "fail_times": 1}), None)
        .assert_sent(1);
    // Fails on both of its max_attempts = 2 tries: dead letters, kind `failed`.
    host.send_body("test.Flaky", &json!({"n": 9, "fail_times": 2}), None)
        .assert_sent(1);

    let db = host.db();
    let p = host
        .wait_for(
            "no work left (nothing incoming, no retry scheduled)",
            Duration::from_secs(60),
            || db.progress(),
            |p| p.with_status("incoming") == 0 && p.with_status("scheduled") == 0,
        )
        .await;
    assert_eq!(p.get("test.Flaky", "handled"), 1, "{p:?}");
    assert_eq!(p.dead_letters, 2, "{p:?}");

    let dls = host.dead_letters();
    assert_eq!(dls.len(), 2, "{dls:#?}");
    let reject = dls
        .iter()
        .find(|d| d.message_type == "test.Reject")
        .unwrap_or_else(|| panic!("no dead letter of test.Reject: {dls:#?}"));
    assert_eq!(reject.error_kind, "rejected", "{reject:?}");
    assert_eq!(reject.attempts, 1, "a rejection is not retried: {reject:?}");
    let msg = reject.error_message.clone().unwrap_or_default();
    assert!(msg.contains("rejected 7"), "error_message {msg:?}");
    let failed = dls
        .iter()
        .find(|d| d.message_type == "test.Flaky")
        .unwrap_or_else(|| panic!("no dead letter of test.Flaky n=9: {dls:#?}"));
    assert_eq!(failed.error_kind, "failed", "{failed:?}");
    assert_eq!(failed.attempts, 2, "max_attempts = 2: {failed:?}");
    assert_eq!(
        db.state_get("misbehave", "flaky/9").await.unwrap(),
        None,
        "flaky/9 never succeeded"
    );

    let flaky = db
        .state_get("misbehave", "flaky/8")
        .await
        .unwrap()
        .expect("state flaky/8");
    assert_eq!(
        flaky.as_i64().unwrap(),
        1,
        "flaky/8 (the attempts it succeeded at)"
    );

    host.assert_alive("after reject and flaky");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

/// `[plugins]` bounds small enough for small messages: `keys` state keys and
/// `sends` messages per handling, 10,000 bytes of each.
fn bounded(keys: u64, sends: u64) -> HostConfig {
    config()
        .set("plugins", "max_state_keys", keys)
        .set("plugins", "max_state_bytes", 10_000u64)
        .set("plugins", "max_sends", sends)
        .set("plugins", "max_send_bytes", 10_000u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_past_a_bound_are_dead_lettered_as_limit_and_replay_once_it_is_raised() {
    let host = TestHost::new(&["misbehave"], bounded(5, 5));
    host.spawn();

    let ok = |range: std::ops::Range<u32>| -> Vec<_> { range.map(|n| json!({ "n": n })).collect() };
    host.send_file("test.Ok", &ok(0..10)).assert_sent(10);
    host.send_body("test.Flood", &json!({"n": 1, "keys": 6, "bytes": 8}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(10..20)).assert_sent(10);
    // Published: one copy each, to misbehave (it handles test.Blob).
    host.send_body("test.Sink", &json!({"n": 2, "sends": 6, "bytes": 8}), None)
        .assert_sent(1);
    host.send_body(
        "test.Sink",
        &json!({"n": 3, "sends": 2, "bytes": 6000}),
        None,
    )
    .assert_sent(1);
    // At the bounds: handled.
    host.send_body("test.Flood", &json!({"n": 4, "keys": 5, "bytes": 8}), None)
        .assert_sent(1);
    host.send_body("test.Sink", &json!({"n": 5, "sends": 5, "bytes": 8}), None)
        .assert_sent(1);
    host.send_file("test.Ok", &ok(20..30)).assert_sent(10);

    let db = host.db();
    let p = host
        .wait_for(
            "no work left (nothing incoming, no retry scheduled)",
            Duration::from_secs(120),
            || db.progress(),
            |p| p.with_status("incoming") == 0 && p.with_status("scheduled") == 0,
        )
        .await;
    assert_eq!(p.get("test.Ok", "handled"), 30, "{p:?}");
    assert_eq!(p.get("test.Flood", "handled"), 1, "{p:?}");
    assert_eq!(p.get("test.Sink", "handled"), 1, "{p:?}");
    assert_eq!(
        p.get("test.Blob", "handled"),
        5,
        "only the sink under its bound sent: {p:?}"
    );
    assert_eq!(p.dead_letters, 3, "{p:?}");

    let dls = host.dead_letters();
    assert_eq!(dls.len(), 3, "dead-letters list: {dls:#?}");
    for d in &dls {
        assert_eq!(d.error_kind, "limit", "{d:?}");
        assert_eq!(d.attempts, 1, "a limit is not retried: {d:?}");
    }
    let flood = dls
        .iter()
        .find(|d| d.message_type == "test.Flood")
        .unwrap_or_else(|| panic!("no dead letter of test.Flood: {dls:#?}"));
    let msg = flood.error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("state writes exceeded plugins.max_state_keys = 5 (wrote 6 keys)"),
        "{msg:?}"
    );
    let mut sinks: Vec<String> = dls
        .iter()
        .filter(|d| d.message_type == "test.Sink")
        .map(|d| d.error_message.clone().unwrap_or_default())
        .collect();
    sinks.sort();
    assert_eq!(sinks.len(), 2, "{dls:#?}");
    assert!(
        sinks[0].contains("plugins.max_send_bytes = 10000"),
        "{sinks:?}"
    );
    assert!(
        sinks[1].contains("plugins.max_sends = 5 (sent 6 messages"),
        "{sinks:?}"
    );

    let state = db.state("misbehave").await.unwrap();
    for n in 0..30 {
        assert!(state.contains_key(&format!("ok/{n}")), "ok/{n}");
    }
    for i in 0..5 {
        assert!(state.contains_key(&format!("flood/4/{i}")), "flood/4/{i}");
    }
    assert!(
        !state.keys().any(|k| k.starts_with("flood/1/")),
        "nothing of the failed flood is committed: {:?}",
        state.keys().collect::<Vec<_>>()
    );
    host.assert_alive("after the handlers past their bounds");

    // The operator raises the bound and replays the flood.
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
    std::fs::write(host.config_path(), bounded(10, 5).render()).unwrap();
    let out = host.cli(&["dead-letters", "replay"], &["--id", &flood.id]);
    out.assert_success();
    assert!(
        out.stdout.contains("replayed 1 dead letter(s)"),
        "{}",
        out.stdout
    );
    host.spawn();
    host.wait_for(
        "the replayed flood handled under the raised bound",
        Duration::from_secs(60),
        || db.progress(),
        |p| p.get("test.Flood", "handled") == 2 && p.with_status("incoming") == 0,
    )
    .await;
    let state = db.state("misbehave").await.unwrap();
    for i in 0..6 {
        assert!(state.contains_key(&format!("flood/1/{i}")), "flood/1/{i}");
    }
    let dls = host.dead_letters();
    assert_eq!(dls.len(), 2, "the sinks are left: {dls:#?}");
    assert!(
        dls.iter().all(|d| d.message_type == "test.Sink"),
        "{dls:#?}"
    );
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}
