//! The quickstart path: orders + audit, 1,000 orders through `send --file`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::{HostConfig, REMIND_LATER_MS, TestHost, host_bin, place_order, wait_until};

const N: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_orders_are_handled_once_each() {
    let host = TestHost::new(&["orders", "audit"], HostConfig::new());
    let bodies: Vec<_> = (0..N)
        .map(|i| place_order(&format!("o-{i}"), 100 + i as u64, REMIND_LATER_MS))
        .collect();
    host.send_file("PlaceOrder", &bodies).assert_sent(N);

    // Written durably with no host running: all N rows wait as `incoming`.
    let db = host.db();
    let waiting = db
        .incoming_count(Some("incoming"), Some("PlaceOrder"))
        .await
        .unwrap();
    assert_eq!(
        waiting, N as i64,
        "rows of PlaceOrder in status incoming right after send"
    );

    host.spawn();
    let n = N as i64;
    let p = host
        .wait_for(
            "no work left (nothing incoming, no retry scheduled, outgoing empty)",
            Duration::from_secs(180),
            || db.progress(),
            |p| {
                p.with_status("incoming") == 0
                    && p.with_status("scheduled") == p.get("OrderReminder", "scheduled")
                    && p.outgoing == 0
            },
        )
        .await;
    assert_eq!(
        p.get("PlaceOrder", "handled"),
        n,
        "PlaceOrder handled: {p:?}"
    );
    assert_eq!(
        p.get("OrderPlaced", "handled"),
        n,
        "OrderPlaced handled: {p:?}"
    );
    assert_eq!(
        p.dead_letters,
        0,
        "dead letters: {:?}",
        db.dead_letter_rows().await
    );
    assert_eq!(
        p.get("OrderReminder", "scheduled"),
        n,
        "scheduled reminders: {p:?}"
    );

    // audit: count == N, N distinct seen/* keys each == 1
    let audit = db.state("audit").await.unwrap();
    let count = audit.get("count").expect("audit state has no `count` key");
    assert_eq!(count.as_i64().unwrap(), n, "audit count");
    let seen: Vec<_> = audit
        .iter()
        .filter(|(k, _)| k.starts_with("seen/"))
        .collect();
    assert_eq!(seen.len(), N, "distinct seen/* keys in audit state");
    for i in 0..N {
        let key = format!("seen/o-{i}");
        let row = audit
            .get(&key)
            .unwrap_or_else(|| panic!("audit state lacks {key}"));
        assert_eq!(row.as_i64().unwrap(), 1, "audit {key}");
    }

    // orders: N order/* keys, each the order that was sent
    let orders = db.state("orders").await.unwrap();
    let order_keys = orders.keys().filter(|k| k.starts_with("order/")).count();
    assert_eq!(order_keys, N, "order/* keys in orders state");
    for i in [0, 1, N / 2, N - 1] {
        let key = format!("order/o-{i}");
        let v = orders[&key].json().unwrap();
        assert_eq!(v["order_id"], format!("o-{i}"), "{key} = {v}");
        assert_eq!(v["amount_cents"], 100 + i as u64, "{key} = {v}");
        assert_eq!(orders[&key].version, 1, "{key} version");
    }

    let c = host.counts();
    assert_eq!(c.incoming, 0, "storage counts: {c:?}");
    assert_eq!(c.dead_letters, 0, "storage counts: {c:?}");
    assert_eq!(
        c.scheduled, N as u64,
        "storage counts (the reminders): {c:?}"
    );
    assert_eq!(
        c.handled,
        2 * N as u64,
        "storage counts (PlaceOrder + OrderPlaced): {c:?}"
    );
    assert_eq!(c.outgoing, 0, "storage counts: {c:?}");

    host.assert_alive("after handling 1000 orders");
    let st = host.stop();
    assert!(
        st.success(),
        "host exit status after SIGTERM: {st}\n{}",
        host.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_amount_order_is_rejected_to_dead_letters() {
    let host = TestHost::new(&["orders", "audit"], HostConfig::new());
    host.spawn();
    host.send_stdin("PlaceOrder", &[place_order("o-zero", 0, REMIND_LATER_MS)])
        .assert_sent(1);

    let db = host.db();
    let p = host
        .wait_for(
            "the zero-amount PlaceOrder to leave the inbox",
            Duration::from_secs(60),
            || db.progress(),
            |p| p.dead_letters >= 1 && p.with_status("incoming") == 0,
        )
        .await;
    assert_eq!(p.dead_letters, 1, "{p:?}");

    let dls = host.dead_letters();
    assert_eq!(dls.len(), 1, "dead-letters list: {dls:?}");
    assert_eq!(dls[0].message_type, "PlaceOrder", "{dls:?}");
    assert_eq!(dls[0].error_kind, "rejected", "{dls:?}");
    let msg = dls[0].error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("amount_cents must be positive"),
        "error_message: {msg:?}"
    );

    // The rejected attempt's effects were rolled back: no order, nothing published
    // or scheduled.
    assert_eq!(db.state_get("orders", "order/o-zero").await.unwrap(), None);
    assert_eq!(p.of_type("OrderPlaced"), 0, "{p:?}");
    assert_eq!(p.of_type("OrderReminder"), 0, "{p:?}");
    assert_eq!(
        p.of_type("PlaceOrder"),
        0,
        "the dead-lettered row stays in incoming: {p:?}"
    );

    host.assert_alive("after the rejected order");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let host = TestHost::new(&["orders"], HostConfig::new());
    // The harness sets NO_COLOR=1; an empty NO_COLOR means "colour allowed",
    // so only the output not being a terminal can keep the colours out.
    host.set_env("NO_COLOR", "");
    let mark = host.log_mark();
    host.spawn();
    host.wait_for_log(
        "the host to start",
        mark,
        &["host started"],
        Duration::from_secs(60),
    )
    .await;
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
    let raw = std::fs::read(host.log_path()).unwrap();
    assert!(
        !raw.windows(2).any(|w| w == b"\x1b["),
        "ANSI escape codes in the log file:\n{}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_naming_each_plugin_when_none_loads() {
    let host = TestHost::new(&[], HostConfig::new());
    let plugins = host.root().join("plugins");
    std::fs::write(plugins.join("garbage.wasm"), b"not wasm at all").unwrap();
    std::fs::write(plugins.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    host.spawn();
    let st = wait_until(
        "the host to exit at start",
        Duration::from_secs(60),
        || async { Ok(host.exit_status()) },
        Option::is_some,
    )
    .await
    .unwrap();
    let log = host.log_text();
    assert!(!st.success(), "exit status {st}\n{log}");
    assert!(log.contains("no plugin in"), "{log}");
    assert!(
        log.contains("garbage.wasm: not a WebAssembly component"),
        "{log}"
    );
    assert!(
        log.contains("core.wasm: a core WebAssembly module"),
        "{log}"
    );
    assert!(!log.contains("utf-8"), "{log}");
}

#[test]
fn send_help_says_only_json_is_checked() {
    let out = std::process::Command::new(host_bin())
        .args(["send", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("send checks that each body is JSON, not that the handler can decode it."),
        "{text}"
    );
}
