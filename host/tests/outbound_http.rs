//! Outbound HTTP against a real local server: the policy itself
//! (`HttpPolicy::send`: allowed host, unlisted host, loopback only when
//! listed, link-local never, timeouts, the body cap) and the same through
//! a plugin (`probe`, built by `make plugins`) calling `wasi:http`,
//! including a redirect off the list; plus the stack-overflow and
//! memory-cap kinds of a trap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::temp_store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http_server::{HttpServer, Reply};
use common::wasm;
use http_body_util::{BodyExt, Empty};
use jasper_host::config::{PluginSettings, PluginsConfig};
use jasper_host::envelope::Envelope;
use jasper_host::runtime::state_view::StateView;
use jasper_host::runtime::{CallError, HttpPolicy, Runtime, TrapKind};
use jasper_host::store::MessageStore;
use wasmtime_wasi_http::Error as HttpError;

fn policy(allow: &[String], timeout_ms: u64, max_bytes: u64) -> HttpPolicy {
    HttpPolicy::new(allow, Duration::from_millis(timeout_ms), max_bytes).unwrap()
}

/// GET `url` under `p`; the status and the whole body.
async fn get(p: &HttpPolicy, url: &str) -> Result<(u16, Vec<u8>), HttpError> {
    let req = http::Request::get(url)
        .body(Empty::<Bytes>::new().map_err(|never| match never {}))
        .unwrap();
    let res = p.send("test", req, None).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

fn base(server: &HttpServer) -> String {
    format!("http://127.0.0.1:{}", server.port())
}

#[tokio::test]
async fn a_listed_host_is_reached_and_an_unlisted_one_is_refused_without_a_connection() {
    let server = HttpServer::start(|r| Reply::Status(200, format!("hello {}", r.path).into()))
        .await
        .unwrap();
    let p = policy(&[base(&server)], 5_000, 1 << 20);
    let (status, body) = get(&p, &server.url("/a?b=1")).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"hello /a?b=1"[..]));
    assert_eq!(server.connections(), 1);

    // Another port of the same host, another scheme, a name for it: not listed.
    let other = HttpServer::status(200).await.unwrap();
    for url in [
        other.url("/"),
        format!("https://127.0.0.1:{}/", server.port()),
        format!("http://localhost:{}/", server.port()),
    ] {
        let err = get(&p, &url).await.unwrap_err();
        assert!(
            matches!(err, HttpError::HttpRequestDenied),
            "{url}: {err:?}"
        );
    }
    assert_eq!(
        server.connections(),
        1,
        "no connection for a refused request"
    );
    assert_eq!(other.connections(), 0);
    assert!(matches!(
        get(&HttpPolicy::deny_all(), &server.url("/")).await,
        Err(HttpError::HttpRequestDenied)
    ));
}

#[tokio::test]
async fn loopback_only_when_listed_literally_and_link_local_never() {
    let server = HttpServer::status(204).await.unwrap();
    let port = server.port();
    // `localhost` resolves to loopback: allowed because it is listed as such.
    let p = policy(&[format!("http://localhost:{port}")], 5_000, 1 << 20);
    let (status, _) = get(&p, &format!("http://localhost:{port}/")).await.unwrap();
    assert_eq!(status, 204);
    // Through a wildcard, a name that resolves to loopback is refused.
    let p = policy(&[format!("http://*.localhost:{port}")], 5_000, 1 << 20);
    let err = get(&p, &format!("http://api.localhost:{port}/"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::HttpRequestDenied | HttpError::DnsError { .. }
        ),
        "{err:?}"
    );
    // Link-local (cloud metadata) is refused even when listed.
    let p = policy(
        &[
            "http://169.254.169.254".to_string(),
            "http://[fe80::1]:80".to_string(),
        ],
        5_000,
        1 << 20,
    );
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
    ] {
        let start = Instant::now();
        let err = get(&p, url).await.unwrap_err();
        assert!(
            matches!(err, HttpError::HttpRequestDenied),
            "{url}: {err:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "refused before connecting"
        );
    }
}

#[tokio::test]
async fn a_slow_server_times_out_and_a_large_body_is_cut_off() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/slow" => Reply::Late(
            Duration::from_secs(3),
            Box::new(Reply::Status(200, b"late".to_vec())),
        ),
        "/big" => Reply::Status(200, vec![b'b'; 5000]),
        "/chunked" => Reply::Chunked {
            chunks: 10,
            size: 1000,
        },
        _ => Reply::Status(200, vec![b's'; 100]),
    })
    .await
    .unwrap();
    let p = policy(&[base(&server)], 300, 1000);
    let start = Instant::now();
    let err = get(&p, &server.url("/slow")).await.unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::ConnectionReadTimeout | HttpError::HttpResponseTimeout
        ),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "timed out after {:?}",
        start.elapsed()
    );

    let err = get(&p, &server.url("/big")).await.unwrap_err();
    assert!(matches!(err, HttpError::HttpResponseBodySize(_)), "{err:?}");
    let err = get(&p, &server.url("/chunked")).await.unwrap_err();
    assert!(matches!(err, HttpError::HttpResponseBodySize(_)), "{err:?}");
    let (status, body) = get(&p, &server.url("/small")).await.unwrap();
    assert_eq!((status, body.len()), (200, 100));
}

/// The probe plugin under `allow_http`, and a way to run one message.
struct Probe {
    rt: Runtime,
    plugin: jasper_host::runtime::Plugin,
    store: Arc<dyn MessageStore>,
    _dir: tempfile::TempDir,
}

impl Probe {
    async fn new(allow_http: Vec<String>) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let store = temp_store(&dir).await;
        let mut cfg = PluginsConfig {
            memory_mb: 32,
            deadline_ms: 5_000,
            ..PluginsConfig::default()
        };
        cfg.each.insert(
            "probe".into(),
            PluginSettings {
                allow_http,
                http_timeout_ms: Some(2_000),
                ..PluginSettings::default()
            },
        );
        let rt = Runtime::new(&cfg).unwrap();
        let plugin = rt.load_plugin(&wasm("probe")).await.unwrap();
        Probe {
            rt,
            plugin,
            store,
            _dir: dir,
        }
    }

    /// Runs one message; its outcome, and the `probe/{name}` it recorded.
    async fn run(
        &self,
        t: &str,
        body: serde_json::Value,
    ) -> (Result<(), CallError>, Option<String>) {
        let mut env = Envelope::new(t, serde_json::to_vec(&body).unwrap());
        env.destination = Some("local://probe".into());
        let view = StateView::new(
            self.store.clone(),
            self.plugin.name.clone(),
            Default::default(),
        );
        let out = self
            .rt
            .handle(&self.plugin, &env, Arc::new(Default::default()), view)
            .await;
        let name = body.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let key = format!("probe/{name}");
        let (writes, _) = out.state.into_commit();
        let recorded = writes
            .into_iter()
            .find(|w| w.key == key)
            .and_then(|w| w.value)
            .map(|v| serde_json::from_slice::<String>(&v).unwrap());
        (out.result, recorded)
    }
}

#[tokio::test]
async fn a_plugin_reaches_its_listed_host_through_wasi_http_and_nothing_else() {
    let target = HttpServer::status(200).await.unwrap();
    let elsewhere = HttpServer::status(200).await.unwrap();
    let redirector = {
        let to = elsewhere.url("/landed");
        HttpServer::start(move |_| Reply::Redirect(to.clone()))
            .await
            .unwrap()
    };
    let probe = Probe::new(vec![base(&target), base(&redirector)]).await;

    let (res, got) = probe
        .run(
            "probe.Http",
            serde_json::json!({"name": "ok", "url": target.url("/hi")}),
        )
        .await;
    res.unwrap();
    let got = got.unwrap();
    assert!(
        got.starts_with("ALLOWED") && got.ends_with("answered 200"),
        "{got}"
    );
    assert_eq!(target.requests()[0].path, "/hi");

    for (name, url, follow) in [
        ("unlisted", elsewhere.url("/"), 0),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
            0,
        ),
        (
            "loopback-name",
            format!("http://localhost:{}/", target.port()),
            0,
        ),
        ("redirect", redirector.url("/go"), 3),
    ] {
        let (res, got) = probe
            .run(
                "probe.Http",
                serde_json::json!({"name": name, "url": url, "follow": follow}),
            )
            .await;
        res.unwrap();
        let got = got.unwrap();
        assert!(got.starts_with("refused: "), "{name}: {got}");
        assert!(got.contains("HttpRequestDenied"), "{name}: {got}");
    }
    assert_eq!(
        redirector.requests().len(),
        1,
        "the redirect itself was fetched"
    );
    assert_eq!(
        elsewhere.connections(),
        0,
        "nothing reached the unlisted server"
    );
}

#[tokio::test]
async fn recursion_is_a_stack_overflow_and_the_whole_cap_at_once_is_memory() {
    let probe = Probe::new(Vec::new()).await;
    let kind = |r: &Result<(), CallError>| match r {
        Err(CallError::Trap { kind, .. }) => Some(*kind),
        _ => None,
    };
    let (res, _) = probe
        .run("probe.Recurse", serde_json::json!({"n": 1}))
        .await;
    assert_eq!(kind(&res), Some(TrapKind::StackOverflow), "{res:?}");
    let (res, _) = probe
        .run("probe.Alloc", serde_json::json!({"mb": 32}))
        .await;
    assert_eq!(kind(&res), Some(TrapKind::Memory), "{res:?}");
    let (res, _) = probe.run("probe.Ping", serde_json::json!({"n": 1})).await;
    res.unwrap();
}

#[tokio::test]
async fn https_to_a_private_ca_needs_its_ca_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (ca, acceptor) = common::private_ca(dir.path(), "127.0.0.1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let allow = [format!("https://127.0.0.1:{port}")];
    let url = format!("https://127.0.0.1:{port}/secure");
    // The web PKI roots alone do not trust the private CA.
    let err = get(&policy(&allow, 5_000, 1 << 20), &url)
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Tls(_)), "{err:?}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    let trusting = policy(&allow, 5_000, 1 << 20).with_ca_file(&ca).unwrap();
    let (status, body) = get(&trusting, &url).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A file with no certificate is an error naming the file.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = policy(&allow, 5_000, 1 << 20)
        .with_ca_file(&empty)
        .unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
}
