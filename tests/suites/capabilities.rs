//! The `probe` plugin tries what a plugin must not do: read a file, read
//! the environment, open a raw TCP socket, call HTTP hosts off its list
//! (an unlisted name, 127.0.0.1, a name resolving to loopback, the cloud
//! metadata address, a redirect to an unlisted host), send where it may
//! not, overflow its stack and allocate its whole memory cap. Each attempt
//! is refused and the plugin records the refusal; the two traps end in
//! dead letters of their own kinds; the host keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jasper_e2e::http_server::{HttpServer, Reply};
use jasper_e2e::{HostConfig, TestHost, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_attempt_is_refused_and_reported_and_the_host_stays_up() {
    // Nothing may reach this one: the probe's targets point here.
    let unlisted = HttpServer::status(200).await.unwrap();
    // Listed; it redirects to the unlisted server.
    let listed = {
        let to = unlisted.url("/landed");
        HttpServer::start(move |_| Reply::Redirect(to.clone()))
            .await
            .unwrap()
    };
    let config = HostConfig::new()
        .memory_mb(32)
        .deadline_ms(3_000)
        .max_attempts(2)
        .retry_delay_ms(10)
        .set(
            "plugins.probe",
            "allow_http",
            &[format!("http://127.0.0.1:{}", listed.port()).as_str()][..],
        );
    let host = TestHost::new(&["probe"], config);
    host.spawn();
    let mark = host.log_mark();

    let attempts = [
        ("probe.File", json!({"name": "file", "path": "/etc/passwd"})),
        ("probe.Env", json!({"name": "env"})),
        (
            "probe.Tcp",
            json!({"name": "tcp", "addr": unlisted.addr().to_string()}),
        ),
        (
            "probe.Http",
            json!({"name": "http-unlisted", "url": "http://example.com/"}),
        ),
        (
            "probe.Http",
            json!({"name": "http-127", "url": unlisted.url("/")}),
        ),
        (
            "probe.Http",
            json!({"name": "http-metadata", "url": "http://169.254.169.254/latest/meta-data/"}),
        ),
        (
            "probe.Http",
            json!({"name": "http-localhost", "url": format!("http://localhost:{}/", listed.port())}),
        ),
        (
            "probe.Http",
            json!({"name": "http-redirect", "url": listed.url("/go"), "follow": 3}),
        ),
        (
            "probe.Send",
            json!({"name": "send", "to": "durable://127.0.0.1:9/elsewhere"}),
        ),
    ];
    for (ty, body) in &attempts {
        host.send_body(ty, body, None).assert_sent(1);
    }
    host.send_body("probe.Recurse", &json!({"n": 1}), None)
        .assert_sent(1);
    host.send_body("probe.Alloc", &json!({"mb": 32}), None)
        .assert_sent(1);

    let db = host.db();
    let p = host
        .wait_for(
            "no work left (nothing incoming, no retry scheduled)",
            Duration::from_secs(120),
            || db.progress(),
            |p| {
                p.with_status("incoming") == 0
                    && p.with_status("scheduled") == 0
                    && p.dead_letters == 2
            },
        )
        .await;
    assert_eq!(p.with_status("handled"), attempts.len() as i64, "{p:?}");

    let state = db.state("probe").await.unwrap();
    for (_, body) in &attempts {
        let name = body["name"].as_str().unwrap();
        let key = format!("probe/{name}");
        let row = state
            .get(&key)
            .unwrap_or_else(|| panic!("the probe recorded nothing at {key}: {state:?}"));
        let outcome: String = serde_json::from_value(row.json().unwrap()).unwrap();
        assert!(
            outcome.starts_with("refused: "),
            "{name} was not refused: {outcome}"
        );
        if name.starts_with("http-") {
            assert!(outcome.contains("HttpRequestDenied"), "{name}: {outcome}");
        }
    }
    assert_eq!(
        unlisted.connections(),
        0,
        "nothing reached the unlisted server"
    );
    assert_eq!(listed.requests().len(), 1, "only the redirect was fetched");

    // Each HTTP refusal is logged with the plugin and the URL.
    let log = host.log_since(mark);
    for url in [
        "http://example.com/".to_string(),
        unlisted.url("/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://localhost:{}/", listed.port()),
        unlisted.url("/landed"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("http-refused") && l.contains("probe") && l.contains(&url)),
            "no http-refused line for {url}:\n{log}"
        );
    }
    assert!(log.contains("send-refused"), "{log}");

    let dls = host.dead_letters();
    assert_eq!(dls.len(), 2, "{dls:#?}");
    for (ty, kind) in [
        ("probe.Recurse", "stack-overflow"),
        ("probe.Alloc", "memory"),
    ] {
        let d = dls
            .iter()
            .find(|d| d.message_type == ty)
            .unwrap_or_else(|| panic!("no dead letter of {ty}: {dls:#?}"));
        assert_eq!(d.error_kind, kind, "{d:?}");
        assert_eq!(d.attempts, 2, "max_attempts = 2: {d:?}");
    }

    host.assert_alive("after the probes");
    host.send_body("probe.Ping", &json!({"n": 1}), None)
        .assert_sent(1);
    host.wait_for(
        "probe.Ping handled after the probes",
        Duration::from_secs(60),
        || db.state_get("probe", "ping/1"),
        |r| r.is_some(),
    )
    .await;
    let st = host.stop();
    assert!(st.success(), "host exit status after SIGTERM: {st}");
}
