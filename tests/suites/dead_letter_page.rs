//! The dead-letter page on the admin endpoint, in a real headless Chromium
//! (Debian's, over WebDriver): an operator signs in with the admin token (a
//! wrong one is refused), sees both dead letters, filters them by kind,
//! inspects one (its body and error), clicks Replay, and the message is
//! handled; the list then holds only the other one.
//!
//! The dead letter to replay is an `OrderPlaced` for `audit`, written while
//! audit was in the plugin folder and taken away before the host started
//! (no handler: dead letter); audit comes back by hot reload before the
//! click. The other is a `PlaceOrder` the orders handler rejects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::browser::Browser;
use jasper_e2e::{HostConfig, TestHost, free_port, json, wait_until};

const TOKEN: &str = "page-token-for-the-browser-test";
const ID: &str = "0192f1c4-0000-7000-8000-0000000dead1";
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_filters_inspects_and_replays_in_a_browser() {
    let port = free_port();
    let host = TestHost::new(
        &["orders", "audit"],
        HostConfig::new()
            .set("admin", "listen", format!("127.0.0.1:{port}"))
            .set("admin", "token", TOKEN)
            .max_attempts(1),
    );
    let db = host.db();
    host.send_body(
        "OrderPlaced",
        &json!({"order_id": "o-dl", "amount_cents": 42}),
        Some(ID),
    )
    .assert_sent(1);
    host.send_body(
        "PlaceOrder",
        &json!({"order_id": "o-bad", "amount_cents": 0}),
        None,
    )
    .assert_sent(1);
    let audit = host.root().join("plugins").join("audit.wasm");
    let kept = host.root().join("audit.wasm.kept");
    std::fs::rename(&audit, &kept).unwrap();
    host.spawn();
    wait_until(
        "both messages in dead letters",
        TIMEOUT,
        || async { Ok(host.dead_letters()) },
        |d| d.len() == 2,
    )
    .await;
    let mark = host.log_mark();
    std::fs::rename(&kept, &audit).unwrap();
    host.wait_for_log(
        "audit loaded again",
        mark,
        &["event=plugin-loaded", "name=audit"],
        TIMEOUT,
    )
    .await;

    let browser = Browser::start().await;
    let base = format!("http://127.0.0.1:{port}");
    browser.open(&format!("{base}/dead-letters")).await;
    browser
        .type_into("input[name=token]", "not-the-token")
        .await;
    browser.click("#sign-in").await;
    // A wrong token is refused: the form again, saying so.
    browser
        .wait_for_text("body", "not the one configured")
        .await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("#sign-in").await;
    // Signed in: the list.
    browser.wait_for_url("/dead-letters").await;
    browser.wait_for_text("#count", "2 of 2").await;
    assert_eq!(browser.count("tr[data-id]").await, 2, "both listed");

    browser
        .open(&format!("{base}/dead-letters?kind=no-handler"))
        .await;
    assert_eq!(browser.count("tr[data-id]").await, 1, "filtered by kind");
    let row = format!("tr[data-id=\"{ID}\"]");
    assert!(browser.text(&row).await.contains("OrderPlaced"));
    browser
        .open(&format!("{base}/dead-letters?type=NoSuchType"))
        .await;
    assert_eq!(browser.count("tr[data-id]").await, 0, "filtered by type");

    browser.open(&format!("{base}/dead-letters")).await;
    browser.click(&format!("{row} a")).await;
    let message = browser.wait_for_text("#message", "o-dl").await;
    assert!(message.contains("o-dl"), "the body is shown: {message}");
    let error = browser.text("#error").await;
    assert!(error.contains("audit"), "the error is shown: {error}");
    assert_eq!(browser.text("#kind").await, "no-handler");

    browser.click("button.replay").await;
    browser.wait_for_text("#done", "Replayed").await;
    let seen = wait_until(
        "the replayed OrderPlaced handled by audit",
        TIMEOUT,
        || db.state_get("audit", "seen/o-dl"),
        Option::is_some,
    )
    .await;
    assert_eq!(seen.unwrap().json().unwrap(), json!(1));
    browser.open(&format!("{base}/dead-letters")).await;
    assert_eq!(
        browser.count("tr[data-id]").await,
        1,
        "only the rejected one left"
    );
    assert_eq!(browser.count(&row).await, 0);
    assert_eq!(host.dead_letters().len(), 1);
    drop(browser);
    let st = host.stop();
    assert!(st.success(), "{st}");
}
