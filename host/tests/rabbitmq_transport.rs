//! The RabbitMQ transport against the real broker (127.0.0.1:5672, or
//! `JASPER_TEST_AMQP_URL`), with a plain lapin client on the other side: a
//! message sent by the client is handled once (redeliveries and duplicates
//! dropped), a handler's messages published to an exchange arrive in a bound
//! queue with their type and JSON body, and a message without a type or of a
//! type nobody handles is dead-lettered with the reason, not redelivered.
//! Each test uses queues and exchanges of its own and deletes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{config_with, state_u64, wait_for};
use futures::StreamExt;
use jasper_host::config::{BindingConfig, ListenConfig, RouteConfig};
use jasper_host::store::Selection;
use jasper_host::{Config, Host};

fn config(dir: &std::path::Path, plugins: &[&str]) -> Config {
    let mut c = config_with(dir, plugins);
    c.rabbitmq.url = amqp_url();
    c
}
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

fn amqp_url() -> String {
    std::env::var("JASPER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A plain AMQP client (not jasper-host).
struct Client {
    conn: Connection,
    ch: Channel,
    cleanup: Vec<(bool, String)>,
}

impl Client {
    async fn new() -> Client {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run at 127.0.0.1:5672 (see .ci/run)");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Client {
            conn,
            ch,
            cleanup: Vec::new(),
        }
    }

    fn queue(&mut self, name: &str) {
        self.cleanup.push((true, name.to_string()));
    }

    fn exchange(&mut self, name: &str) {
        self.cleanup.push((false, name.to_string()));
    }

    async fn publish(&self, queue: &str, props: BasicProperties, body: &[u8]) {
        let confirm = self
            .ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }

    /// Messages ready in `queue`, None if it does not exist. A passive
    /// declare of a missing queue closes its channel, so each uses a new one.
    async fn queue_len(&self, queue: &str) -> Option<u32> {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "ok".into()).await;
        Some(q.message_count())
    }

    async fn drop_all(self) {
        for (is_queue, name) in &self.cleanup {
            if *is_queue {
                let _ = self
                    .ch
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            } else {
                let _ = self
                    .ch
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_message_is_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("jasper-in");
    let mut client = Client::new().await;
    client.queue(&queue);
    let mut c = config(dir.path(), &["audit"]);
    c.listen.push(ListenConfig {
        uri: format!("rabbitmq://queue/{queue}").parse().unwrap(),
    });
    let host = Host::start(c).await.unwrap();
    assert_eq!(host.listeners, vec![format!("rabbitmq://queue/{queue}")]);
    // The listener declares its queue on connect.
    wait_for("the listener's queue", Duration::from_secs(20), || async {
        client.queue_len(&queue).await
    })
    .await;
    const N: u64 = 300;
    for i in 0..N {
        let props = BasicProperties::default()
            .with_type("OrderPlaced".into())
            .with_message_id(format!("order-{i}").into())
            .with_content_type("application/json".into());
        let body =
            serde_json::to_vec(&json!({"order_id": format!("r-{i}"), "amount_cents": i})).unwrap();
        client.publish(&queue, props.clone(), &body).await;
        if i % 10 == 0 {
            // The same message id again: a duplicate, dropped by the inbox.
            client.publish(&queue, props, &body).await;
        }
    }
    wait_for("all handled", Duration::from_secs(60), || async {
        (state_u64(&host, "audit", "count").await == N).then_some(())
    })
    .await;
    for i in 0..N {
        assert_eq!(
            state_u64(&host, "audit", &format!("seen/r-{i}")).await,
            1,
            "r-{i}"
        );
    }
    // Everything acknowledged (nothing left to redeliver), no duplicate handled.
    wait_for("the queue drained", Duration::from_secs(10), || async {
        (client.queue_len(&queue).await == Some(0)).then_some(())
    })
    .await;
    assert_eq!(state_u64(&host, "audit", "count").await, N);
    let counts = host.store.counts().await.unwrap();
    assert_eq!(counts.handled, N as i64, "{counts:?}");
    assert_eq!(counts.dead_letters, 0, "{counts:?}");
    host.shutdown().await.unwrap();
    client.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_arrive_in_a_bound_queue_for_a_plain_client() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("jasper-events");
    let bound = unique("jasper-bound");
    let mut client = Client::new().await;
    client.queue(&bound);
    client.exchange(&exchange);
    let mut c = config(dir.path(), &["orders"]);
    c.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: format!("rabbitmq://exchange/{exchange}").parse().unwrap(),
    });
    c.rabbitmq.binding.push(BindingConfig {
        exchange: exchange.clone(),
        queue: bound.clone(),
        routing_key: "#".into(),
    });
    let host = Host::start(c).await.unwrap();
    const N: usize = 100;
    for i in 0..N {
        let body =
            json!({"order_id": format!("x-{i}"), "amount_cents": 7, "remind_after_ms": 3_600_000});
        host.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    wait_for(
        "outgoing confirmed and deleted",
        Duration::from_secs(60),
        || async {
            let c = host.store.counts().await.unwrap();
            (c.outgoing == 0 && c.incoming == 0).then_some(())
        },
    )
    .await;
    let mut consumer = client
        .ch
        .basic_consume(
            bound.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a message in the bound queue")
            .unwrap()
            .unwrap();
        assert_eq!(
            d.properties.kind().as_ref().unwrap().as_str(),
            "OrderPlaced"
        );
        assert_eq!(
            d.routing_key.as_str(),
            "OrderPlaced",
            "routing key = message type"
        );
        assert!(d.properties.message_id().is_some());
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(v["amount_cents"], 7);
        seen.insert(v["order_id"].as_str().unwrap().to_string());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(seen.len(), N);
    host.shutdown().await.unwrap();
    client.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untyped_and_unknown_messages_are_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("jasper-in");
    let mut client = Client::new().await;
    client.queue(&queue);
    let mut c = config(dir.path(), &["audit"]);
    c.listen.push(ListenConfig {
        uri: format!("rabbitmq://queue/{queue}").parse().unwrap(),
    });
    let host = Host::start(c).await.unwrap();
    wait_for("the listener's queue", Duration::from_secs(20), || async {
        client.queue_len(&queue).await
    })
    .await;
    client
        .publish(&queue, BasicProperties::default(), b"{}")
        .await;
    client
        .publish(
            &queue,
            BasicProperties::default().with_type("Nobody".into()),
            b"{}",
        )
        .await;
    let dead = wait_for("two dead letters", Duration::from_secs(30), || async {
        let d = host.store.dead_letters(10).await.unwrap();
        (d.len() == 2).then_some(d)
    })
    .await;
    let untyped = dead.iter().find(|d| d.message_type.is_empty()).unwrap();
    assert!(untyped.error_message.contains("no type"), "{untyped:?}");
    let unknown = dead.iter().find(|d| d.message_type == "Nobody").unwrap();
    assert!(unknown.error_message.contains("Nobody"), "{unknown:?}");
    assert_eq!(unknown.received_at, format!("rabbitmq://queue/{queue}"));
    // A replay of a message without a type could only fail again; one no
    // plugin handled may pass once a plugin is loaded.
    assert!(!untyped.replayable, "{untyped:?}");
    assert!(unknown.replayable, "{unknown:?}");
    // Acknowledged, so not redelivered: the queue is empty.
    wait_for("the queue drained", Duration::from_secs(10), || async {
        (client.queue_len(&queue).await == Some(0)).then_some(())
    })
    .await;
    assert_eq!(host.store.dead_letters(10).await.unwrap().len(), 2);
    let replay_untyped = Selection::Ids(vec![untyped.id]);
    assert_eq!(
        host.store
            .replay_dead_letters(&replay_untyped)
            .await
            .unwrap(),
        0
    );
    assert!(host.store.dead_letter(untyped.id).await.unwrap().is_some());
    host.shutdown().await.unwrap();
    client.drop_all().await;
}
