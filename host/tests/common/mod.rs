//! Shared by the host's integration tests: where the built plugins are.

#![allow(dead_code, clippy::panic, clippy::unwrap_used)]

use std::path::PathBuf;

pub mod log;

/// The e2e harness's HTTP server (std and tokio only), shared by path.
#[path = "../../../tests/src/http_server.rs"]
pub mod http_server;

/// A plugin built by `make plugins`; fails loudly (with the command) if missing.
pub fn wasm(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

/// A config in `dir` with `plugins` copied into its plugin folder, polling
/// fast and retrying senders quickly (tests wait on conditions, not time).
pub fn config_with(dir: &std::path::Path, plugins: &[&str]) -> jasper_host::Config {
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", plugin_dir.display()));
    for p in plugins {
        let to = plugin_dir.join(format!("{p}.wasm"));
        std::fs::copy(wasm(p), &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    }
    let mut c = jasper_host::Config::for_dir(dir);
    c.handling.poll_interval_ms = 20;
    c.sending.ping_interval_ms = 100;
    c.sending.retry_delay_ms = 20;
    c
}

/// Waits until `f` returns Some, polling; panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A plugin's JSON number state at `key` (0 when absent).
pub async fn state_u64(host: &jasper_host::Host, plugin: &str, key: &str) -> u64 {
    match host.store.read_state(plugin, key).await {
        Ok(Some(v)) => serde_json::from_slice(&v.value)
            .unwrap_or_else(|e| panic!("{plugin}/{key} is not a number: {e}")),
        Ok(None) => 0,
        Err(e) => panic!("reading {plugin}/{key}: {e}"),
    }
}

/// The PostgreSQL server the tests use (`JASPER_TEST_POSTGRES_URL` overrides).
pub fn postgres_url() -> String {
    std::env::var("JASPER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL schema of the test's own, dropped when the test ends, pass or fail.
pub struct PgSchema(pub jasper_host::config::StorageConfig);

impl PgSchema {
    pub fn new() -> PgSchema {
        let url = postgres_url();
        PgSchema(jasper_host::config::StorageConfig {
            url: url.clone(),
            schema: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            backend: jasper_host::config::Backend::Postgres { url },
            ..Default::default()
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // On a runtime of its own: the test's runtime may be unwinding.
        let config = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(s) = jasper_host::store::open(&config).await {
                    let _ = s.drop_all().await;
                }
            });
        })
        .join();
    }
}

/// A fresh SQLite store in `dir`, its tables created.
pub async fn temp_store(
    dir: &tempfile::TempDir,
) -> std::sync::Arc<dyn jasper_host::store::MessageStore> {
    let cfg = jasper_host::config::StorageConfig {
        url: "sqlite://s.db".into(),
        schema: "jasper".into(),
        backend: jasper_host::config::Backend::Sqlite {
            path: dir.path().join("s.db"),
        },
        ..Default::default()
    };
    let s = jasper_host::store::open(&cfg).await.unwrap();
    s.migrate().await.unwrap();
    s
}

/// A private CA (its PEM written to `dir/ca.pem`) and a TLS acceptor with a
/// certificate it signed for `name` (a host name or an IP address).
pub fn private_ca(dir: &std::path::Path, name: &str) -> (PathBuf, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, issuer.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &*issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (
        ca,
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)),
    )
}
