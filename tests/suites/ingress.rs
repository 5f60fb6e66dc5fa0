//! Command ingress on the admin endpoint: 1,000 orders `POST`ed to
//! `/messages/PlaceOrder` are handled exactly once each (and posting 100 of
//! them again with the same `Idempotency-Key` writes nothing twice);
//! `POST /invoke/PlaceOrder` answers with the handler's `OrderAccepted`, a
//! handler that gives no reply answers 204, a rejected command 422 with its
//! kind and error; a missing or wrong token is 401, an unknown type 404, a
//! body over `admin.max_body_bytes` 413, and none of those writes anything.
//! `/metrics` counts every POST taken as `messages_received{via="http"}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use jasper_e2e::exactly_once::{check_orders_once, settled_with};
use jasper_e2e::http_client::{Answer, get, request};
use jasper_e2e::orders::bodies;
use jasper_e2e::{HostConfig, TestHost, free_port, json, wait_until};

const N: usize = 1000;
const AGAIN: usize = 100;
const TOKEN: &str = "s3cret-token";
const TIMEOUT: Duration = Duration::from_secs(180);

fn host(plugins: &[&str], port: u16) -> TestHost {
    TestHost::new(
        plugins,
        HostConfig::new()
            .set("admin", "listen", format!("127.0.0.1:{port}"))
            .set("admin", "token", TOKEN)
            .set("admin", "max_body_bytes", 4096u64),
    )
}

async fn ready(port: u16) {
    wait_until(
        "the admin endpoint is ready",
        TIMEOUT,
        || get(port, "/health/ready"),
        |(s, _)| *s == 200,
    )
    .await;
}

/// `POST path` with the token and a JSON body.
async fn post(port: u16, path: &str, body: &serde_json::Value, extra: &[(&str, &str)]) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request(port, "POST", path, &headers, body.to_string().as_bytes())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_posted_orders_are_handled_once_each() {
    let port = free_port();
    let host = host(&["orders", "audit"], port);
    let db = host.db();
    host.spawn();
    ready(port).await;
    let post_all = |range: std::ops::Range<usize>| {
        futures::stream::iter(range.zip(bodies(0..N)))
            .map(|(i, body)| async move {
                let key = format!("order-{i}");
                let a = post(
                    port,
                    "/messages/PlaceOrder",
                    &body,
                    &[("Idempotency-Key", &key)],
                )
                .await;
                assert_eq!(a.status, 202, "order {i}: {}", a.text());
                a.json().unwrap()["id"].as_str().unwrap().to_owned()
            })
            .buffered(8)
            .collect::<Vec<String>>()
    };
    let ids = post_all(0..N).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), N, "one id per order");
    // A client that lost its answers posts again with the same keys: the
    // same ids, and the inbox takes none of them twice.
    let again = post_all(0..AGAIN).await;
    assert_eq!(again, ids[..AGAIN], "the same key gives the same id");
    let p = host
        .wait_for(
            "every order handled",
            TIMEOUT,
            || db.progress(),
            settled_with(N),
        )
        .await;
    check_orders_once("orders posted over HTTP", &db, N, &p).await;
    assert_eq!(p.of_type("PlaceOrder"), N as i64, "{p:?}");
    // Every POST taken counts as received, the repeats too.
    let (status, text) = get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let series = r#"jasper_messages_received_total{message_type="PlaceOrder",via="http"} "#;
    let received = text.lines().find_map(|l| l.strip_prefix(series));
    assert_eq!(received, Some(&*(N + AGAIN).to_string()), "{text}");
    let st = host.stop();
    assert!(st.success(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_answers_with_the_reply_and_refusals_name_what_is_wrong() {
    let port = free_port();
    let host = host(&["orders", "audit"], port);
    let db = host.db();
    host.spawn();
    ready(port).await;

    let order = json!({"order_id": "o-7", "amount_cents": 1250, "remind_after_ms": 3_600_000});
    let a = post(port, "/invoke/PlaceOrder", &order, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("jasper-message-type"), Some("OrderAccepted"));
    assert!(a.header("jasper-message-id").is_some(), "{:?}", a.headers);
    assert_eq!(
        a.json().unwrap(),
        json!({"order_id": "o-7", "amount_cents": 1250})
    );
    // Its effects committed with it.
    let stored = db.state_get("orders", "order/o-7").await.unwrap();
    assert_eq!(stored.map(|r| r.version), Some(1));

    // A handler that gives no reply (audit): 204.
    let placed = json!({"order_id": "o-8", "amount_cents": 5});
    let a = post(port, "/invoke/OrderPlaced", &placed, &[]).await;
    assert_eq!(a.status, 204, "{}", a.text());

    // A command the handler rejects: 422 with the kind and the error.
    let bad = json!({"order_id": "o-9", "amount_cents": 0});
    let a = post(port, "/invoke/PlaceOrder", &bad, &[]).await;
    assert_eq!(a.status, 422, "{}", a.text());
    let v = a.json().unwrap();
    assert_eq!(v["kind"], "rejected", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("amount_cents must be positive"),
        "{v}"
    );
    assert_eq!(host.dead_letters().len(), 1);

    // Refusals, each naming the fault, none writing anything.
    let before = db.progress().await.unwrap();
    let body = order.to_string();
    for (path, headers, what) in [
        ("/messages/PlaceOrder", vec![], "no token"),
        (
            "/messages/PlaceOrder",
            vec![("Authorization", "Bearer wrong")],
            "a wrong token",
        ),
        (
            "/invoke/PlaceOrder",
            vec![("Authorization", "Basic czNjcmV0LXRva2Vu")],
            "another scheme",
        ),
    ] {
        let a = request(port, "POST", path, &headers, body.as_bytes())
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{what}: {}", a.text());
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what}");
        assert!(a.text().contains("bearer token"), "{what}: {}", a.text());
    }
    for path in ["/messages/NoSuchType", "/invoke/NoSuchType"] {
        let a = post(port, path, &order, &[]).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        assert!(a.text().contains("'NoSuchType'"), "{path}: {}", a.text());
    }
    let big = json!({"order_id": "o-big", "amount_cents": 1, "customer": "x".repeat(5000)});
    for path in ["/messages/PlaceOrder", "/invoke/PlaceOrder"] {
        let a = post(port, path, &big, &[]).await;
        assert_eq!(a.status, 413, "{path}: {}", a.text());
        assert!(
            a.text().contains("admin.max_body_bytes = 4096"),
            "{path}: {}",
            a.text()
        );
    }
    let after = db.progress().await.unwrap();
    assert_eq!(
        after.of_type("PlaceOrder"),
        before.of_type("PlaceOrder"),
        "a refused request wrote nothing"
    );
    assert_eq!(after.of_type("NoSuchType"), 0);
    host.assert_alive("after the refusals");
    let st = host.stop();
    assert!(st.success(), "{st}");
}
