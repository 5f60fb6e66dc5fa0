//! The admin endpoint (`[admin] listen`): a scrape of `/metrics` after 1,000
//! orders shows the exact counts, and `/health/ready` flips to 503 while the
//! database hangs (behind a freezing proxy) and back to 200 after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::exactly_once::settled_with;
use jasper_e2e::http_client::get;
use jasper_e2e::orders::bodies;
use jasper_e2e::proxy::FreezingProxy;
use jasper_e2e::{Backend, HostConfig, TestHost, free_port, wait_until};

const N: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(180);

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_thousand_orders_shows_the_exact_counts() {
    let port = free_port();
    let host = TestHost::new(
        &["orders", "audit"],
        HostConfig::new().set("admin", "listen", format!("127.0.0.1:{port}")),
    );
    let db = host.db();
    host.send_file("PlaceOrder", &bodies(0..N)).assert_sent(N);
    host.spawn();
    host.wait_for(
        "every order handled",
        TIMEOUT,
        || db.progress(),
        settled_with(N),
    )
    .await;
    let (status, live) = get(port, "/health/live").await.unwrap();
    assert_eq!((status, live.as_str()), (200, "live\n"));
    let (status, text) = get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let n = N as f64;
    for (series, want) in [
        (
            r#"jasper_messages_handled_total{message_type="PlaceOrder",plugin="orders"}"#,
            n,
        ),
        (
            r#"jasper_messages_handled_total{message_type="OrderPlaced",plugin="audit"}"#,
            n,
        ),
        (r#"jasper_queue_depth{queue="incoming"}"#, 0.0),
        (r#"jasper_queue_depth{queue="scheduled"}"#, n),
        (r#"jasper_queue_depth{queue="outgoing"}"#, 0.0),
        (r#"jasper_queue_depth{queue="dead_letters"}"#, 0.0),
        ("jasper_plugins_loaded", 2.0),
        ("jasper_plugin_loads_total", 2.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    // Handler calls, not messages: a batch whose state went stale (audit's
    // shared `count`) runs again, and each run's calls are timed.
    for plugin in ["orders", "audit"] {
        let series = format!(r#"jasper_handler_duration_seconds_count{{plugin="{plugin}"}}"#);
        let calls = sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(calls >= n, "{series} = {calls}, fewer calls than messages");
    }
    assert!(
        !text.contains("jasper_messages_dead_lettered_total{"),
        "dead letters counted:\n{text}"
    );
    let batches = sample(&text, "jasper_batch_size_count").unwrap();
    let messages = sample(&text, "jasper_batch_size_sum").unwrap();
    assert_eq!(messages, 2.0 * n, "messages over all committed batches");
    assert!(batches >= 1.0 && batches <= 2.0 * n, "batches {batches}");
    assert_eq!(
        sample(&text, "jasper_commit_duration_seconds_count"),
        Some(batches)
    );
    let st = host.stop();
    assert!(st.success(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let (proxy, via_proxy) = FreezingProxy::before_postgres().await;
    let port = free_port();
    let config = HostConfig::on(Backend::Postgres)
        .set("admin", "listen", format!("127.0.0.1:{port}"))
        .set("durability", "store_timeout_ms", 1000u64);
    let text = config
        .clone()
        .set("storage", "url", via_proxy.as_str())
        .render();
    let host = TestHost::with_config_text(&["orders"], &text, &config);
    host.spawn();
    let ready = |want: u16| {
        let what = format!("/health/ready answers {want}");
        async move {
            wait_until(
                &what,
                TIMEOUT,
                || get(port, "/health/ready"),
                |(s, _)| *s == want,
            )
            .await
        }
    };
    ready(200).await;
    proxy.freeze();
    let (_, why) = ready(503).await;
    assert!(why.contains("store"), "503 body names the store: {why}");
    assert_eq!(
        get(port, "/health/live").await.unwrap().0,
        200,
        "live while the database hangs"
    );
    proxy.thaw();
    ready(200).await;
    host.assert_alive("after the database came back");
    let st = host.stop();
    assert!(st.success(), "{st}");
}
