//! The built-in TCP transport: `tcp://` (fire and forget) and `durable://`
//! (store and forward) between jasper-host processes. `conn` is one
//! authenticated connection, `listener` accepts them, `sender` is the
//! [`Connector`](crate::transport::Connector) the shared sending agents use.
//! This module resolves `[tcp]` once: the secret, the TLS configs, the limits.

pub mod conn;
pub(crate) mod listener;
pub(crate) mod sender;
pub(crate) mod tls;

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::config::TcpConfig;
use crate::envelope::Limits;
use crate::transport::wire::{FrameLimits, Secret};
use conn::ConnError;

/// `[tcp]` resolved: what every connection of this host uses.
#[derive(Clone)]
pub struct TcpSettings {
    pub secret: Option<Secret>,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub tls_connector: Option<tokio_rustls::TlsConnector>,
    pub tls_server_name: Option<String>,
    pub limits: FrameLimits,
    /// Received batches of one connection committed together, at most.
    pub batches_per_commit: usize,
    /// `durable://` rows claimed as they are written and handed to the worker.
    pub hand_to_worker: bool,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub frame_timeout: Duration,
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for TcpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSettings")
            .field("secret", &self.secret.is_some())
            .field("tls", &self.tls_acceptor.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why `[tcp]` could not be put to use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {message}", path.display())]
    Invalid {
        what: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl TcpSettings {
    pub fn from_config(cfg: &TcpConfig) -> Result<TcpSettings, SettingsError> {
        let secret = match (&cfg.secret, &cfg.secret_file) {
            (Some(s), _) => Some(Secret::new(s.as_bytes())),
            (None, Some(path)) => {
                let text = std::fs::read(path).map_err(|source| SettingsError::Read {
                    what: "tcp.secret_file",
                    path: path.clone(),
                    source,
                })?;
                let trimmed = text.trim_ascii_end();
                if trimmed.len() < 16 {
                    return Err(SettingsError::Invalid {
                        what: "tcp.secret_file",
                        path: path.clone(),
                        message: format!(
                            "the secret must be at least 16 bytes, got {}",
                            trimmed.len()
                        ),
                    });
                }
                Some(Secret::new(trimmed))
            }
            (None, None) => None,
        };
        let (tls_acceptor, tls_connector) = if cfg.tls {
            let (a, c) = tls::configs(cfg)?;
            (Some(a), Some(c))
        } else {
            (None, None)
        };
        Ok(TcpSettings {
            secret,
            tls_acceptor,
            tls_connector,
            tls_server_name: cfg.tls_server_name.clone(),
            limits: FrameLimits {
                max_frame: cfg.max_frame_bytes,
                envelope: Limits {
                    max_batch: cfg.max_batch,
                    ..Limits::default()
                },
            },
            batches_per_commit: cfg.batches_per_commit.max(1),
            hand_to_worker: cfg.hand_to_worker,
            max_connections: cfg.max_connections,
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
            frame_timeout: Duration::from_millis(cfg.frame_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
        })
    }

    /// Defaults: no secret, no TLS.
    pub fn plain() -> Arc<TcpSettings> {
        #[allow(clippy::expect_used)]
        Arc::new(
            TcpSettings::from_config(&TcpConfig::default())
                .expect("the default [tcp] needs no files"),
        )
    }

    /// The name a server certificate must carry for `addr` (`HOST:PORT`).
    fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, ConnError> {
        let host = match &self.tls_server_name {
            Some(n) => n.as_str(),
            None => addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| ConnError::Tls(format!("{host:?} is not a valid server name: {e}")))
    }
}
