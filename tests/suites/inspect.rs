//! What an operator reads back through the CLI, on every backend: a
//! handler's committed state (`state get`, `state list`) and the message a
//! dead letter holds (`dead-letters list --json`, `dead-letters show`),
//! checked against what was sent and against the store read with SQL; and the
//! errors of a key or a dead letter that is not there, naming it. Every test
//! runs as `name::{sqlite,postgres,mysql}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::{Backend, CmdOut, HostConfig, REMIND_LATER_MS, TestHost, json, place_order};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(120);

jasper_e2e::per_backend!(
    state_get_and_list_read_back_what_a_handler_committed => state_read_back,
    dead_letters_show_the_body_of_a_rejected_message => dead_letter_bodies,
);

#[track_caller]
fn json_of(out: &CmdOut) -> Value {
    out.assert_success();
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}):\n{}", out.cmd, out.stdout))
}

/// orders handles o-1 and o-2 (keys `order/o-1`, `order/o-2`), misbehave
/// writes two keys of raw bytes that are not JSON (`flood/1/0`, `flood/1/1`).
async fn state_read_back(backend: Backend) {
    let host = TestHost::new(&["orders", "misbehave"], HostConfig::on(backend));
    let db = host.db();
    host.spawn();
    host.send_file(
        "PlaceOrder",
        &[
            place_order("o-1", 100, REMIND_LATER_MS),
            place_order("o-2", 200, REMIND_LATER_MS),
        ],
    )
    .assert_sent(2);
    host.send_body("test.Flood", &json!({"n": 1, "keys": 2, "bytes": 5}), None)
        .assert_sent(1);
    host.wait_for(
        "both orders and the flood handled",
        SETTLE,
        || db.progress(),
        |p| p.get("PlaceOrder", "handled") == 2 && p.get("test.Flood", "handled") == 1,
    )
    .await;

    // get: the value as the JSON the handler put, with its version.
    let got = json_of(&host.cli(
        &["state", "get"],
        &["--plugin", "orders", "--key", "order/o-1"],
    ));
    let stored = db.state_get("orders", "order/o-1").await.unwrap().unwrap();
    assert_eq!(got["plugin"], "orders", "{got}");
    assert_eq!(got["key"], "order/o-1", "{got}");
    assert_eq!(got["version"], stored.version, "{got}");
    assert_eq!(got["encoding"], "json", "{got}");
    assert_eq!(got["value"], stored.json().unwrap(), "{got}");
    assert_eq!(got["value"]["order_id"], "o-1", "{got}");
    assert_eq!(got["value"]["amount_cents"], 100, "{got}");

    // list: the keys under the prefix, in key order, each as stored.
    let listed = json_of(&host.cli(
        &["state", "list"],
        &["--plugin", "orders", "--prefix", "order/"],
    ));
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {listed}"))
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["order/o-1", "order/o-2"], "{listed}");
    let all = db.state("orders").await.unwrap();
    for e in listed.as_array().unwrap() {
        let row = &all[e["key"].as_str().unwrap()];
        assert_eq!(e["value"], row.json().unwrap(), "{e}");
        assert_eq!(e["version"], row.version, "{e}");
    }
    let first = json_of(&host.cli(
        &["state", "list"],
        &["--plugin", "orders", "--prefix", "order/", "--limit", "1"],
    ));
    assert_eq!(first.as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first[0]["key"], "order/o-1", "{first}");
    // `_` would match the `/` as a LIKE wildcard; taken literally it matches nothing.
    let literal = json_of(&host.cli(
        &["state", "list"],
        &["--plugin", "orders", "--prefix", "order_"],
    ));
    assert_eq!(literal, json!([]), "a prefix is literal");

    // A value that is not JSON is shown as text, and said so.
    let out = host.cli(
        &["state", "get"],
        &["--plugin", "misbehave", "--key", "flood/1/0"],
    );
    let raw = json_of(&out);
    assert_eq!(
        (raw["encoding"].as_str(), raw["value"].as_str()),
        (Some("text"), Some("fffff")),
        "{raw}"
    );
    out.assert_stderr_contains("not JSON");
    let flood = json_of(&host.cli(
        &["state", "list"],
        &["--plugin", "misbehave", "--prefix", "flood/1/"],
    ));
    assert_eq!(
        flood,
        json!([
            {"key": "flood/1/0", "version": 1, "encoding": "text", "value": "fffff"},
            {"key": "flood/1/1", "version": 1, "encoding": "text", "value": "fffff"},
        ])
    );

    // A key that is not there: a failure naming the plugin and the key.
    host.cli(
        &["state", "get"],
        &["--plugin", "orders", "--key", "order/o-9"],
    )
    .assert_failure()
    .assert_stderr_contains("plugin 'orders' has no state key 'order/o-9'");

    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

/// A PlaceOrder of amount 0 is rejected by orders: its dead letter, listed
/// with --json and shown by id, carries the message sent (body decoded as
/// JSON, content type, correlation id) beside the error.
async fn dead_letter_bodies(backend: Backend) {
    let host = TestHost::new(&["orders"], HostConfig::on(backend));
    let db = host.db();
    host.spawn();
    let order = place_order("o-zero", 0, REMIND_LATER_MS);
    let body = serde_json::to_string(&order).unwrap();
    host.cli(
        &["send"],
        &[
            "--type",
            "PlaceOrder",
            "--correlation-id",
            "corr-7",
            "--body",
            &body,
        ],
    )
    .assert_sent(1);
    host.wait_for(
        "the zero-amount order in dead letters",
        SETTLE,
        || db.progress(),
        |p| p.dead_letters == 1 && p.with_status("incoming") == 0,
    )
    .await;

    let listed = json_of(&host.cli(&["dead-letters", "list"], &["--json"]));
    let entries = listed.as_array().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(entries.len(), 1, "{listed}");
    let d = &entries[0];
    assert_eq!(d["message_type"], "PlaceOrder", "{d}");
    assert_eq!(d["error_kind"], "rejected", "{d}");
    let m = &d["message"];
    assert_eq!(m["body_encoding"], "json", "{d}");
    assert_eq!(m["body"], order, "the body as sent: {d}");
    assert_eq!(m["content_type"], "application/json", "{d}");
    assert_eq!(m["correlation_id"], "corr-7", "{d}");
    assert!(d.get("message_error").is_none(), "{d}");

    // The plain listing previews the body.
    let plain = host.cli(&["dead-letters", "list"], &[]);
    plain.assert_success();
    assert!(
        plain.stdout.contains("body (json): {") && plain.stdout.contains("o-zero"),
        "{}",
        plain.stdout
    );

    // show ID: the same dead letter in full.
    let id = d["id"].as_str().unwrap();
    let shown = json_of(&host.cli(&["dead-letters", "show"], &[id]));
    assert_eq!(&shown, d, "show agrees with list");
    assert!(
        shown["error_message"]
            .as_str()
            .is_some_and(|e| e.contains("amount_cents must be positive")),
        "{shown}"
    );

    // An id that is not a dead letter: a failure naming it.
    let unknown = "0190a5c8-0000-7000-8000-000000000000";
    host.cli(&["dead-letters", "show"], &[unknown])
        .assert_failure()
        .assert_stderr_contains(&format!("no dead letter with id {unknown}"));

    let st = host.stop();
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

/// Long CLI work reports its progress; not on a terminal (as here) it is
/// plain lines on stderr, at the start and end of each phase: a `send` of
/// 10,000 bodies, a `dead-letters replay` of them all (one statement) and a
/// `storage clear`. What stdout says is unchanged. SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_cli_work_reports_progress_in_plain_lines() {
    const N: usize = 10_000;
    let host = TestHost::new(&["orders"], HostConfig::new());
    let db = host.db();
    let zero: Vec<Value> = (0..N)
        .map(|i| place_order(&format!("o-{i}"), 0, REMIND_LATER_MS))
        .collect();
    let sent = host.send_file("PlaceOrder", &zero);
    sent.assert_sent(N);
    for line in [
        "checking bodies: 10000 done",
        "making envelopes: 10000 done",
        "writing messages to the inbox: 10000 done",
    ] {
        sent.assert_stderr_contains(line);
    }
    host.spawn();
    host.wait_for(
        "every zero-amount order in dead letters",
        SETTLE,
        || db.progress(),
        |p| p.dead_letters == N as i64,
    )
    .await;
    let st = host.stop();
    assert!(st.success(), "{st}");

    let replayed = host.cli(&["dead-letters", "replay"], &[]);
    replayed.assert_success();
    assert!(
        replayed
            .stdout
            .contains(&format!("replayed {N} dead letter(s)")),
        "{}",
        replayed.stdout
    );
    replayed.assert_stderr_contains("replaying dead letters: 10000 done");
    let p = db.progress().await.unwrap();
    assert_eq!(
        (p.dead_letters, p.of_type("PlaceOrder")),
        (0, N as i64),
        "{p:?}"
    );

    let cleared = host.cli(&["storage", "clear"], &[]);
    cleared.assert_success();
    cleared.assert_stderr_contains("clearing persisted messages");
    assert_eq!(db.progress().await.unwrap().of_type("PlaceOrder"), 0);
}
