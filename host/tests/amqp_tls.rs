//! The AMQP 1.0 transport over TLS (`amqps://`), against RabbitMQ's AMQP 1.0
//! plugin behind a TLS-terminating proxy whose certificate a private CA
//! signed: with `[amqp] ca_file` naming that CA the listener receives over
//! TLS and every message is handled once; without it the handshake is
//! refused (an unknown issuer), the host keeps trying, and nothing is taken
//! from the queue. The same rustls path serves Service Bus (TLS by default).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{config_with, state_u64, wait_for};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use jasper_host::Host;
use jasper_host::config::ListenConfig;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

const BROKER: &str = "127.0.0.1:5672";

/// TLS on a free port of 127.0.0.1, plain to the broker behind. Counts the
/// handshakes that failed.
struct TlsProxy {
    port: u16,
    refused: Arc<AtomicUsize>,
}

impl TlsProxy {
    async fn start(acceptor: tokio_rustls::TlsAcceptor) -> TlsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        count.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    if let Ok(mut up) = tokio::net::TcpStream::connect(BROKER).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        TlsProxy { port, refused }
    }
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ must run at 127.0.0.1:5672 (see .ci/run)");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn declare(ch: &Channel, q: &str) {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn ready(ch: &Channel, q: &str) -> u32 {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// OrderPlaced `{prefix}-{i}` for `i < n`, sent over plain AMQP 1.0.
async fn send_orders(q: &str, prefix: &str, n: usize) {
    let mut conn = fe2o3_amqp::Connection::open("tls-test", "amqp://guest:guest@127.0.0.1:5672")
        .await
        .expect("AMQP 1.0 on RabbitMQ (make amqp10 enables the plugin)");
    let mut session = fe2o3_amqp::Session::begin(&mut conn).await.unwrap();
    let mut sender =
        fe2o3_amqp::Sender::attach(&mut session, "tls-test-sender", format!("/amq/queue/{q}"))
            .await
            .unwrap();
    for i in 0..n {
        let mut app = ApplicationProperties::default();
        app.0.insert(
            "message-type".into(),
            SimpleValue::String("OrderPlaced".into()),
        );
        let body = serde_json::json!({"order_id": format!("{prefix}-{i}"), "amount_cents": 100});
        let m: Message<Body<Value>> = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(format!("{prefix}-{i}").into()),
                ..Properties::default()
            }),
            application_properties: Some(app),
            body: Body::from(Data(Binary::from(body.to_string().into_bytes()))),
            footer: None,
        };
        sender
            .send(m)
            .await
            .unwrap()
            .accepted_or_else(|o| o)
            .unwrap();
    }
    let _ = sender.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_over_amqps_trusts_the_configured_ca_and_only_it() {
    const N: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let (ca, acceptor) = common::private_ca(dir.path(), "localhost");
    let proxy = TlsProxy::start(acceptor).await;
    let (_conn, ch) = channel().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (trusted_q, untrusted_q) = (format!("tls-ok-{run}"), format!("tls-bad-{run}"));
    declare(&ch, &trusted_q).await;
    declare(&ch, &untrusted_q).await;
    send_orders(&trusted_q, "t", N as usize).await;
    send_orders(&untrusted_q, "u", 5).await;
    let uri = |q: &str| format!("amqps://localhost:{}//amq/queue/{q}", proxy.port);

    // No CA configured: the public roots only, which do not know ours.
    let other = tempfile::tempdir().unwrap();
    let mut c = config_with(other.path(), &["audit"]);
    c.amqp.username = "guest".into();
    c.amqp.password = "guest".into();
    c.listen.push(ListenConfig {
        uri: uri(&untrusted_q).parse().unwrap(),
    });
    let untrusting = Host::start(c).await.unwrap();
    wait_for(
        "two refused handshakes (the listener tries again)",
        Duration::from_secs(30),
        || async { (proxy.refused.load(Ordering::SeqCst) >= 2).then_some(()) },
    )
    .await;
    assert_eq!(state_u64(&untrusting, "audit", "count").await, 0);
    assert_eq!(
        ready(&ch, &untrusted_q).await,
        5,
        "nothing taken without TLS trust"
    );
    untrusting.shutdown().await.unwrap();

    let mut c = config_with(dir.path(), &["audit"]);
    c.amqp.username = "guest".into();
    c.amqp.password = "guest".into();
    c.amqp.ca_file = Some(ca);
    c.listen.push(ListenConfig {
        uri: uri(&trusted_q).parse().unwrap(),
    });
    let refused_before = proxy.refused.load(Ordering::SeqCst);
    let host = Host::start(c).await.unwrap();
    wait_for(
        "every order handled over TLS",
        Duration::from_secs(60),
        || async { (state_u64(&host, "audit", "count").await == N).then_some(()) },
    )
    .await;
    for i in 0..N {
        assert_eq!(
            state_u64(&host, "audit", &format!("seen/t-{i}")).await,
            1,
            "t-{i}"
        );
    }
    wait_for("the queue drained", Duration::from_secs(10), || async {
        (ready(&ch, &trusted_q).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        refused_before,
        "the trusting host's handshakes all succeeded"
    );
    host.shutdown().await.unwrap();
    for q in [&trusted_q, &untrusted_q] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}
