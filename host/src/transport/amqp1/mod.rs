//! The AMQP 1.0 transport (fe2o3-amqp): nodes of plain brokers
//! (`amqp://HOST:PORT/ADDRESS`, `amqps://` with TLS: RabbitMQ's AMQP 1.0
//! plugin, ActiveMQ Artemis, Qpid) and Azure Service Bus entities
//! (`asb://NAMESPACE/ENTITY`). It plugs into the shared mechanics: the
//! sending [`agent`](crate::transport::agent) drives its
//! [`Connector`](crate::transport::Connector) (a row is deleted once the
//! broker settled its transfer as Accepted), and its listener hands batches
//! to the shared [`Inbox`](crate::transport::receive::Inbox) and accepts
//! (completes) deliveries only after the inbox commit. This module owns the
//! settings and how a connection is opened: TCP, TLS, SASL, one session,
//! and on Service Bus the `$cbs` token.

pub(crate) mod listener;
pub(crate) mod mapping;
pub(crate) mod sender;
pub(crate) mod servicebus;

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use tokio::net::TcpStream;

use crate::address::{AmqpBroker, AmqpEndpoint};
use crate::config::{AmqpConfig, ServiceBusConfig};
use crate::transport::LinkError;
use servicebus::{Authorizer, Credentials, KeepToken};

/// Service Bus's AMQP-over-TLS port.
const SERVICE_BUS_PORT: u16 = 5671;
/// How long closing a connection waits for the broker's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// `[amqp]` and `[azure_service_bus]` resolved, with the shared timeouts.
#[derive(Debug)]
pub(crate) struct AmqpSettings {
    pub amqp: AmqpConfig,
    pub asb: ServiceBusConfig,
    /// The Service Bus key, read once (`sas_key` or `sas_key_file`).
    credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    pub confirm_timeout: Duration,
    /// TLS for `amqps://` and for Service Bus.
    tls_plain: Arc<rustls::ClientConfig>,
    tls_asb: Arc<rustls::ClientConfig>,
}

/// A settings file that cannot be used (a key file, a CA file).
#[derive(Debug, thiserror::Error)]
pub enum AmqpSettingsError {
    #[error("cannot read azure_service_bus.sas_key_file {}: {source}", path.display())]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] crate::transport::tcp::SettingsError),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn tls_config(
    what: &'static str,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, AmqpSettingsError> {
    let mut roots = crate::runtime::http::web_roots();
    if let Some(path) = ca_file {
        for c in crate::transport::tcp::tls::certs(what, path)? {
            roots
                .add(c)
                .map_err(|e| AmqpSettingsError::Tls(format!("{what}: {e}")))?;
        }
    }
    crate::runtime::http::client_config(roots).map_err(|e| AmqpSettingsError::Tls(e.to_string()))
}

/// An open connection and its session; on Service Bus with the entity's
/// token put, and put again in the background before it expires.
pub(crate) struct Opened {
    pub conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    pub token: Option<KeepToken>,
}

impl Opened {
    /// End the session and close the connection, waiting at most
    /// [`CLOSE_TIMEOUT`]: a broker that hangs never answers.
    pub(crate) async fn close(mut self) {
        drop(self.token.take());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.session.end().await;
            let _ = self.conn.close().await;
        })
        .await;
    }
}

impl AmqpSettings {
    pub(crate) fn new(
        amqp: AmqpConfig,
        asb: ServiceBusConfig,
        connect_timeout: Duration,
        confirm_timeout: Duration,
    ) -> Result<AmqpSettings, AmqpSettingsError> {
        let key = match (&asb.sas_key, &asb.sas_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| AmqpSettingsError::KeyFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let credentials = key.map(|key| Credentials {
            namespace: asb.full_namespace(),
            key_name: asb.sas_key_name.clone(),
            key,
            token_ttl: Duration::from_secs(asb.token_ttl_s),
        });
        Ok(AmqpSettings {
            tls_plain: tls_config("amqp.ca_file", amqp.ca_file.as_deref())?,
            tls_asb: tls_config("azure_service_bus.ca_file", asb.ca_file.as_deref())?,
            amqp,
            asb,
            credentials,
            connect_timeout,
            confirm_timeout,
        })
    }

    /// Link credit of a listener on `e`.
    pub(crate) fn prefetch(&self, e: &AmqpEndpoint) -> u32 {
        if e.is_service_bus() {
            self.asb.prefetch
        } else {
            self.amqp.prefetch
        }
    }

    /// How long a listener on `e` waits for a batch to fill.
    pub(crate) fn batch_window(&self, e: &AmqpEndpoint) -> Duration {
        Duration::from_millis(if e.is_service_bus() {
            self.asb.batch_window_ms
        } else {
            self.amqp.batch_window_ms
        })
    }

    /// Connect to `e`'s broker, open a connection and a session, and on
    /// Service Bus put a token for the entity; all within the connect
    /// timeout (a broker that accepts and then hangs must not hold us).
    pub(crate) async fn open(
        &self,
        e: &AmqpEndpoint,
        link_name: &str,
    ) -> Result<Opened, LinkError> {
        let peer = e.peer();
        tokio::time::timeout(self.connect_timeout, self.open_now(e, link_name))
            .await
            .map_err(|_| {
                LinkError(format!(
                    "{peer}: no connection within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|LinkError(m)| LinkError(format!("{peer}: {m}")))
    }

    async fn open_now(&self, e: &AmqpEndpoint, link_name: &str) -> Result<Opened, LinkError> {
        let (addr, host, tls, profile, credentials) = match &e.broker {
            AmqpBroker::Plain { addr, tls } => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let profile = if self.amqp.username.is_empty() {
                    SaslProfile::Anonymous
                } else {
                    SaslProfile::Plain {
                        username: self.amqp.username.clone(),
                        password: self.amqp.password.clone(),
                    }
                };
                let config = tls.then(|| self.tls_plain.clone());
                (addr.clone(), host.to_string(), config, profile, None)
            }
            AmqpBroker::ServiceBus { namespace } => {
                let addr = self
                    .asb
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("{namespace}:{SERVICE_BUS_PORT}"));
                let credentials = self
                    .credentials
                    .as_ref()
                    .ok_or_else(|| LinkError("no [azure_service_bus] key is configured".into()))?;
                let config = self.asb.tls.then(|| self.tls_asb.clone());
                (
                    addr,
                    namespace.clone(),
                    config,
                    SaslProfile::Anonymous,
                    Some(credentials),
                )
            }
        };
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|err| LinkError(format!("connecting to {addr}: {err}")))?;
        let _ = tcp.set_nodelay(true);
        let builder = Connection::builder()
            .container_id(format!("jasper-{link_name}"))
            .hostname(host.as_str())
            .sasl_profile(profile);
        let opened = match tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| LinkError(format!("{host:?} is not a TLS server name")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|err| LinkError(format!("TLS with {host}: {err}")))?;
                builder.open_with_stream(stream).await
            }
            None => builder.open_with_stream(tcp).await,
        };
        let mut conn = opened.map_err(|err| LinkError(format!("opening the connection: {err}")))?;
        let mut session = match Session::begin(&mut conn).await {
            Ok(s) => s,
            Err(err) => {
                let _ = conn.close().await;
                return Err(LinkError(format!("beginning a session: {err}")));
            }
        };
        let token = match credentials {
            Some(c) => match Authorizer::attach(&mut session, c, &e.address, link_name).await {
                Ok(a) => Some(a.keep()),
                Err(err) => {
                    Opened {
                        conn,
                        session,
                        token: None,
                    }
                    .close()
                    .await;
                    return Err(err);
                }
            },
            None => None,
        };
        Ok(Opened {
            conn,
            session,
            token,
        })
    }
}
