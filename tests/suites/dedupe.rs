//! The inbox deduplicates by message id; bad input is refused whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::{HostConfig, REMIND_LATER_MS, TestHost, place_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_twice_is_handled_once() {
    let host = TestHost::new(&["orders", "audit"], HostConfig::new());
    let db = host.db();
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let body = place_order("o-dup", 4200, REMIND_LATER_MS);

    // First send: the host is down.
    host.send_body("PlaceOrder", &body, Some(&id))
        .assert_sent(1);
    host.spawn();
    host.wait_for(
        "the first PlaceOrder and its OrderPlaced handled",
        Duration::from_secs(60),
        || db.progress(),
        |p| {
            p.get("PlaceOrder", "handled") == 1
                && p.get("OrderPlaced", "handled") == 1
                && p.with_status("incoming") == 0
        },
    )
    .await;

    // Second send, same id, after it was handled.
    let out = host.send_body("PlaceOrder", &body, Some(&id));
    out.assert_success();
    assert!(
        out.all_output().to_lowercase().contains("duplicate"),
        "send of an already-received id should report the duplicate; stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );

    // The duplicate wrote nothing: one PlaceOrder row (ours, handled), nothing to do.
    let rows = db.incoming_rows("PlaceOrder").await.unwrap();
    assert_eq!(rows.len(), 1, "PlaceOrder rows: {rows:?}");
    assert_eq!(
        rows[0].0.to_lowercase(),
        id,
        "the row's id is the id given to send: {rows:?}"
    );
    assert_eq!(rows[0].1, "handled", "{rows:?}");
    let p = db.progress().await.unwrap();
    assert_eq!(p.with_status("incoming"), 0, "{p:?}");
    assert_eq!(p.of_type("OrderPlaced"), 1, "{p:?}");

    let count = db
        .state_get("audit", "count")
        .await
        .unwrap()
        .expect("audit count");
    assert_eq!(count.as_i64().unwrap(), 1, "audit count");
    let order = db
        .state_get("orders", "order/o-dup")
        .await
        .unwrap()
        .expect("order/o-dup");
    assert_eq!(order.version, 1, "order/o-dup written once");

    host.assert_alive("after the duplicate send");
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}

#[test]
fn unknown_message_type_is_refused_and_writes_nothing() {
    let host = TestHost::new(&["orders", "audit"], HostConfig::new());
    host.send_body(
        "PlaceOrder",
        &place_order("o-1", 100, REMIND_LATER_MS),
        None,
    )
    .assert_sent(1);
    let before = host.counts();

    let out = host.send_body("NoSuchMessageType", &serde_json::json!({"x": 1}), None);
    out.assert_failure()
        .assert_stderr_contains("NoSuchMessageType");

    let out = host.send_file("NoSuchMessageType", &[serde_json::json!({"x": 1})]);
    out.assert_failure()
        .assert_stderr_contains("NoSuchMessageType");

    assert_eq!(host.counts(), before, "counts changed after refused sends");
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let cfg = HostConfig::new().set("handling", "max_attemps", 3);
    let host = TestHost::new(&["orders", "audit"], cfg);

    // `run` must refuse to start (bounded: a host that starts anyway is killed
    // and the test fails).
    let out = host.cli_timeout(&["run"], &[], None, Duration::from_secs(30));
    out.assert_failure().assert_stderr_contains("max_attemps");

    let out = host.cli(&["storage", "counts"], &["--json"]);
    out.assert_failure().assert_stderr_contains("max_attemps");

    let out = host.send_body(
        "PlaceOrder",
        &place_order("o-1", 100, REMIND_LATER_MS),
        None,
    );
    out.assert_failure().assert_stderr_contains("max_attemps");
    // Refused before touching the store.
    assert!(
        !host.db_path().exists(),
        "a database was created at {} from a refused config",
        host.db_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_line_refuses_the_whole_file() {
    let host = TestHost::new(&["orders", "audit"], HostConfig::new());
    host.send_body(
        "PlaceOrder",
        &place_order("o-first", 100, REMIND_LATER_MS),
        None,
    )
    .assert_sent(1);
    let before = host.counts();

    let good = |i: u32| {
        serde_json::to_string(&place_order(&format!("o-{i}"), 100, REMIND_LATER_MS)).unwrap()
    };
    let text = format!(
        "{}\n{}\n{{\"order_id\": \"o-3\", \"amount_cents\": \n{}\n{}\n",
        good(1),
        good(2),
        good(4),
        good(5)
    );
    let out = host.send_file_text("PlaceOrder", &text);
    out.assert_failure();
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("line 3"),
        "stderr should name line 3 of the file:\n{}",
        out.stderr
    );

    assert_eq!(host.counts(), before, "counts changed after a refused file");
    let rows = host.db().incoming_rows("PlaceOrder").await.unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the first PlaceOrder may exist: {rows:?}"
    );
}
