//! The admin endpoint (`[admin] listen`, off unless configured): Prometheus
//! metrics at `/metrics`, liveness at `/health/live` and readiness at
//! `/health/ready` (the store answers; the plugins are loaded and the
//! listeners bound, which is so once the host has started), and the command
//! ingress (`POST /messages/{type}`, `POST /invoke/{type}`, see `ingress`)
//! and the dead-letter page (`/dead-letters`, see `dead_letters`).

pub mod dead_letters;
pub mod ingress;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use metrics::Metrics;

use crate::store::MessageStore;

/// How long readiness and a scrape wait for the store.
const STORE_PROBE: Duration = Duration::from_secs(2);

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<dyn MessageStore>,
    pub metrics: Arc<Metrics>,
    pub ingress: Arc<ingress::Ingress>,
    pub dead_letters: Arc<dead_letters::DeadLetterPage>,
}

/// The endpoint, bound.
#[derive(Debug)]
pub struct Bound {
    /// The address as bound (a configured port 0 shows the real one).
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Why the endpoint did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on admin.listen = {addr:?}: {source}")]
pub struct AdminError {
    addr: String,
    source: std::io::Error,
}

/// Bind `listen` and serve until `shutdown` turns true.
pub async fn start(
    listen: &str,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Bound, AdminError> {
    let err = |source| AdminError {
        addr: listen.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let commands = Router::new()
        .route("/messages/{message_type}", post(ingress::post_message))
        .route("/invoke/{message_type}", post(ingress::invoke))
        .with_state(state.ingress.clone());
    let page = Router::new()
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{id}", get(dead_letters::show))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/dead-letters/{id}/purge", post(dead_letters::purge))
        .route("/login", post(dead_letters::login))
        .with_state(state.dead_letters.clone());
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(state)
        .merge(commands)
        .merge(page);
    info!(%addr, event = %"admin-listening", "admin endpoint: /metrics, /health/live, /health/ready, POST /messages/{{type}}, POST /invoke/{{type}}, /dead-letters");
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            warn!(error = %e, "the admin endpoint stopped");
        }
    });
    Ok(Bound { addr, task })
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let counts = match tokio::time::timeout(STORE_PROBE, s.store.counts()).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    };
    if let Ok(Ok(by)) = tokio::time::timeout(STORE_PROBE, s.store.outgoing_by_destination()).await {
        s.metrics.outgoing(&by);
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(counts.as_ref()),
    )
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(s): State<AdminState>) -> (StatusCode, String) {
    match tokio::time::timeout(STORE_PROBE, s.store.check_schema()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store fails: {}\n", crate::error_chain(&e)),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not answer within {} ms\n",
                STORE_PROBE.as_millis()
            ),
        ),
    }
}
