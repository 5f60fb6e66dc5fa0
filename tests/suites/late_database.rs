//! A host started before its database: `run` tries again with backoff for
//! `storage.connect_retry_ms`, logging each try, and starts once the
//! database answers; past that time it exits non-zero naming the store URL
//! (without its password) and the last error. The "database" is the test
//! PostgreSQL behind a proxy started late on a port chosen up front; the real
//! server is never stopped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::proxy::FreezingProxy;
use jasper_e2e::{
    Backend, HostConfig, REMIND_LATER_MS, ServerUrl, TestHost, free_port, place_order,
};

/// The test server's URL with its host and port replaced by 127.0.0.1:`port`.
fn url_on_port(port: u16) -> (ServerUrl, String) {
    let server = ServerUrl::parse(&Backend::Postgres.server_url().unwrap()).unwrap();
    let via = ServerUrl {
        host: "127.0.0.1".to_owned(),
        port,
        ..server.clone()
    }
    .with_database(&server.database);
    (server, via)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_a_database_that_comes_up_late_then_handles_what_is_sent() {
    let port = free_port();
    let (server, via) = url_on_port(port);
    // The store (for the checks and the clean-up) is the test server; the
    // host's config points at the port where nothing listens yet.
    let config = HostConfig::on(Backend::Postgres).set("storage", "connect_retry_ms", 60_000u64);
    let text = config.clone().set("storage", "url", via.as_str()).render();
    let host = TestHost::with_config_text(&["orders", "audit"], &text, &config);
    let mark = host.log_mark();
    host.spawn();

    // Two tries logged, each with its attempt, the error and the next delay.
    for attempt in ["attempt=1", "attempt=2"] {
        let line = host
            .wait_for_log(
                "a retry of the unreachable store",
                mark,
                &["event=store-unreachable", attempt],
                Duration::from_secs(30),
            )
            .await;
        for part in ["WARN", &format!("127.0.0.1:{port}"), "retry_in="] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
    }
    assert!(
        host.log_lines(mark, &["host started"]).is_empty(),
        "started without a database:\n{}",
        host.log_tail(20)
    );

    // The database comes up where the host looks for it.
    let _proxy = FreezingProxy::start_on(port, &format!("{}:{}", server.host, server.port))
        .await
        .unwrap();
    host.wait_for_log(
        "the host starts once the store answers",
        mark,
        &["host started"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        host.log_lines(mark, &["event=store-reachable"]).len(),
        1,
        "{}",
        host.log_tail(20)
    );

    host.send_body(
        "PlaceOrder",
        &place_order("late-1", 500, REMIND_LATER_MS),
        None,
    )
    .assert_success();
    let db = host.db();
    host.wait_for(
        "PlaceOrder and OrderPlaced handled",
        Duration::from_secs(60),
        || db.progress(),
        |p| p.get("PlaceOrder", "handled") == 1 && p.get("OrderPlaced", "handled") == 1,
    )
    .await;
    assert!(host.stop().success(), "{}", host.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_up_after_connect_retry_ms_naming_the_url_without_its_password() {
    const SECRET: &str = "N0tThePassw0rd";
    let port = free_port();
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{port}/app");
    let host = TestHost::new(
        &["orders"],
        HostConfig::new()
            .storage(&url, "jasper")
            .set("storage", "connect_retry_ms", 1500u64),
    );
    let started = std::time::Instant::now();
    let out = host.cli_timeout(&["run"], &[], None, Duration::from_secs(60));
    let took = started.elapsed();
    out.assert_failure();
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    let retries = out
        .stderr
        .lines()
        .filter(|l| l.contains("event=store-unreachable"))
        .count();
    assert!(retries >= 2, "tries logged: {retries}\n{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    for part in [
        "error: starting the host",
        &format!("postgres://app@127.0.0.1:{port}/app"),
        "storage.connect_retry_ms = 1500",
        "unreachable",
    ] {
        assert!(last.contains(part), "{part:?} missing in {last}");
    }
    assert!(
        !out.all_output().contains(SECRET),
        "the password was printed:\n{}",
        out.all_output()
    );
}
