//! TLS for the TCP transport with rustls (ring provider): the listener's
//! server config (optionally requiring client certificates) and the
//! sender's client config (presenting this node's certificate for mutual
//! TLS), both trusting only `[tcp] tls_ca`.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::SettingsError;
use crate::config::TcpConfig;

pub(crate) fn certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| SettingsError::Invalid {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| SettingsError::Invalid {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SettingsError::Invalid {
            what,
            path: path.to_owned(),
            message: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's and the sender's TLS configs from `[tcp]`.
pub(super) fn configs(
    cfg: &TcpConfig,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector), SettingsError> {
    let missing = |k: &str| SettingsError::Tls(format!("{k} is required when tcp.tls = true"));
    let cert_path = cfg
        .tls_cert
        .as_deref()
        .ok_or_else(|| missing("tcp.tls_cert"))?;
    let key_path = cfg
        .tls_key
        .as_deref()
        .ok_or_else(|| missing("tcp.tls_key"))?;
    let ca_path = cfg.tls_ca.as_deref().ok_or_else(|| missing("tcp.tls_ca"))?;
    let chain = certs("tcp.tls_cert", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| SettingsError::Invalid {
        what: "tcp.tls_key",
        path: key_path.to_owned(),
        message: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs("tcp.tls_ca", ca_path)? {
        roots.add(c).map_err(|e| SettingsError::Invalid {
            what: "tcp.tls_ca",
            path: ca_path.to_owned(),
            message: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let tls_err = |e: rustls::Error| SettingsError::Tls(e.to_string());

    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let server = if cfg.mutual_tls {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| SettingsError::Tls(e.to_string()))?;
        server.with_client_cert_verifier(verifier)
    } else {
        server.with_no_client_auth()
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(tls_err)?;

    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let client = if cfg.mutual_tls {
        client.with_client_auth_cert(chain, key).map_err(tls_err)?
    } else {
        client.with_no_client_auth()
    };
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    ))
}
