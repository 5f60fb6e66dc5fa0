//! Plugins that panic, spin, eat memory, reject or fail: the host survives,
//! the good messages are handled and the bad ones end in dead letters with the
//! right kind.
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
