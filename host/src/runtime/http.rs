//! Outbound HTTP for plugins (`wasi:http`): the per-plugin allow-list
//! ([`HttpPolicy`], deny by default), the address checks made on the
//! resolved host (no loopback or private address unless listed literally,
//! never link-local), and the one send path every request takes: connect to
//! the checked address, timeouts on connect, first byte and between bytes,
//! and a cap on the response body.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// An `allow_http` entry that is not `http(s)://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?}: {why}; expected http://HOST[:PORT] or https://HOST[:PORT] (HOST may start with '*.')"
)]
pub struct AllowEntryError {
    pub entry: String,
    pub why: &'static str,
}

/// The host part of an allow entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This name or address exactly (lower case, IPv6 without brackets).
    Exact(String),
    /// Any name ending in `.SUFFIX` (the entry `*.SUFFIX`).
    Subdomains(String),
}

/// One `allow_http` entry: a scheme, a host and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowEntry {
    https: bool,
    host: HostPattern,
    port: u16,
}

/// How a request's host matched the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// The host is an entry's host, written out: it may be loopback or private.
    Literally,
    /// Through a `*.` entry: public addresses only.
    ByWildcard,
}

/// What one plugin may reach over HTTP and how long and how much it may
/// read. Empty (the default) refuses every request.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    entries: Vec<AllowEntry>,
    timeout: Duration,
    max_bytes: u64,
    /// TLS with the web PKI roots and extra CAs (`plugins.http_ca_file`);
    /// `None`: the web PKI roots only.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// `plugins.http_ca_file` could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugins.http_ca_file {path}: {message}")]
pub struct CaFileError {
    pub path: String,
    pub message: String,
}

/// Why the policy refused a request (before any connection was made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("{0} is not in the plugin's allow_http list")]
    NotListed(String),
    #[error("{host} resolves to {addr}, a {class} address, which plugins may not reach")]
    Forbidden {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error(
        "{host} resolves to {addr}, a {class} address: allowed only when the host is listed literally (not through '*.')"
    )]
    Internal {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("the request has no scheme or host, or a scheme other than http or https")]
    BadUri,
}

impl HttpPolicy {
    /// A policy from the plugin's `allow_http` entries, its per-request
    /// timeout and its response-body cap.
    pub fn new(
        allow: &[String],
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<HttpPolicy, AllowEntryError> {
        let entries = allow
            .iter()
            .map(|e| parse_entry(e))
            .collect::<Result<_, _>>()?;
        Ok(HttpPolicy {
            entries,
            timeout,
            max_bytes,
            tls: None,
        })
    }

    /// Also trust the CA certificates of the PEM file `path` for `https`.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<HttpPolicy, CaFileError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let err = |message: String| CaFileError {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        let mut roots = web_roots();
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
        self.tls = Some(client_config(roots).map_err(|e| err(e.to_string()))?);
        Ok(self)
    }

    /// No HTTP at all.
    pub fn deny_all() -> HttpPolicy {
        HttpPolicy {
            entries: Vec::new(),
            timeout: Duration::from_secs(10),
            max_bytes: 0,
            tls: None,
        }
    }

    /// Whether the list has any entry.
    pub fn allows_any(&self) -> bool {
        !self.entries.is_empty()
    }

    fn lookup(&self, https: bool, host: &str, port: u16) -> Option<Listed> {
        let mut found = None;
        for e in self
            .entries
            .iter()
            .filter(|e| e.https == https && e.port == port)
        {
            match &e.host {
                HostPattern::Exact(h) if h == host => return Some(Listed::Literally),
                HostPattern::Subdomains(s)
                    if host.len() > s.len() + 1
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.' =>
                {
                    found = Some(Listed::ByWildcard);
                }
                _ => {}
            }
        }
        found
    }

    /// Check `req` against the list, resolve its host once, check every
    /// address, connect to a checked one and send the request. The
    /// connection is driven by a task of its own; the response body errors
    /// past the cap or when no byte comes within the timeout.
    pub async fn send<B>(
        &self,
        plugin: &str,
        mut req: Request<B>,
        options: Option<RequestOptions>,
    ) -> Result<Response<WasiBody>, HttpError>
    where
        B: Body<Data = Bytes, Error = HttpError> + Send + 'static,
    {
        let url = req.uri().to_string();
        let target = match self.check(req.uri()).await {
            Ok(t) => t,
            Err(refusal) => {
                tracing::warn!(plugin, url = %url, event = "http-refused", reason = %refusal, "a plugin's HTTP request was refused");
                return Err(HttpError::HttpRequestDenied);
            }
        };
        let limit = |guest: Option<Duration>| guest.map_or(self.timeout, |g| g.min(self.timeout));
        let connect_timeout = limit(options.and_then(|o| o.connect_timeout));
        let first_byte_timeout = limit(options.and_then(|o| o.first_byte_timeout));
        let between_bytes_timeout = limit(options.and_then(|o| o.between_bytes_timeout));

        let tcp = connect(&target.addrs, connect_timeout).await?;
        let stream: Box<dyn Stream> = if target.https {
            let config = match &self.tls {
                Some(c) => Arc::clone(c),
                None => client_config(web_roots()).map_err(|_| HttpError::TlsProtocolError)?,
            };
            Box::new(tls_connect(tcp, &target.host, connect_timeout, config).await?)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "outbound HTTP connection ended with an error");
            }
        });
        // Only the path goes on the request line (no proxy in between).
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)??;
        let max = self.max_bytes;
        if let Some(len) = res
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|len| *len > max)
        {
            tracing::warn!(plugin, url = %url, event = "http-refused", reason = %format!("response body of {len} bytes exceeds http_max_response_bytes = {max}"), "a plugin's HTTP response was refused");
            return Err(HttpError::HttpResponseBodySize(Some(len)));
        }
        Ok(res.map(|incoming| {
            CappedBody {
                inner: incoming,
                read: 0,
                max,
                idle: between_bytes_timeout,
                sleep: Box::pin(tokio::time::sleep(between_bytes_timeout)),
            }
            .boxed_unsync()
        }))
    }

    /// The list and address checks, done before any connection.
    async fn check(&self, uri: &http::Uri) -> Result<Target, Refusal> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(Refusal::BadUri),
        };
        let authority = uri.authority().ok_or(Refusal::BadUri)?;
        let host = normalize_host(authority.host());
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let shown = format!(
            "{}://{}:{port}",
            if https { "https" } else { "http" },
            authority.host()
        );
        let listed = self
            .lookup(https, &host, port)
            .ok_or(Refusal::NotListed(shown))?;
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                match tokio::time::timeout(
                    self.timeout,
                    tokio::net::lookup_host((host.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(addrs)) => addrs.collect(),
                    // Nothing resolved: nothing to connect to (the connect
                    // below reports it as a DNS failure).
                    _ => Vec::new(),
                }
            }
        };
        for a in &addrs {
            check_addr(&host, a.ip(), listed)?;
        }
        Ok(Target { https, host, addrs })
    }
}

/// Where a checked request goes: the addresses its host resolved to, once.
#[derive(Debug)]
struct Target {
    https: bool,
    host: String,
    addrs: Vec<SocketAddr>,
}

/// A host as compared with the list: lower case, IPv6 without brackets,
/// no trailing dot.
fn normalize_host(host: &str) -> String {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_entry(entry: &str) -> Result<AllowEntry, AllowEntryError> {
    let bad = |why| AllowEntryError {
        entry: entry.to_string(),
        why,
    };
    let (scheme, rest) = entry.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let https = match scheme {
        "http" => false,
        "https" => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("only a scheme, a host and a port"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside the brackets.
        Some((host, port)) if !port.contains(']') => match port.parse::<u16>() {
            Ok(p) if p > 0 => (host, p),
            _ => return Err(bad("the port must be 1 to 65535")),
        },
        _ => (authority, if https { 443 } else { 80 }),
    };
    let (wild, host) = match host.strip_prefix("*.") {
        Some(h) => (true, h),
        None => (false, host),
    };
    if host.is_empty() || host.contains('*') {
        return Err(bad(
            "a '*' may only stand for the first labels ('*.example.com')",
        ));
    }
    let host = normalize_host(host);
    Ok(AllowEntry {
        https,
        host: if wild {
            HostPattern::Subdomains(host)
        } else {
            HostPattern::Exact(host)
        },
        port,
    })
}

/// Refuse an address a plugin must not reach: link-local (cloud metadata
/// among them), unspecified, multicast and broadcast always; loopback and
/// private (RFC 1918, CGNAT, ULA) unless the host was listed literally.
fn check_addr(host: &str, addr: IpAddr, listed: Listed) -> Result<(), Refusal> {
    let ip = addr.to_canonical();
    let forbidden = |class| Refusal::Forbidden {
        host: host.to_string(),
        addr: ip,
        class,
    };
    let internal = |class| {
        if listed == Listed::Literally {
            Ok(())
        } else {
            Err(Refusal::Internal {
                host: host.to_string(),
                addr: ip,
                class,
            })
        }
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local() {
                Err(forbidden("link-local"))
            } else if v4.is_unspecified() || o[0] == 0 {
                Err(forbidden("unspecified"))
            } else if v4.is_multicast() || v4.is_broadcast() {
                Err(forbidden("multicast or broadcast"))
            } else if v4.is_loopback() {
                internal("loopback")
            } else if v4.is_private() {
                internal("private (RFC 1918)")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                internal("shared (CGNAT, 100.64.0.0/10)")
            } else {
                Ok(())
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if (s[0] & 0xffc0) == 0xfe80 {
                Err(forbidden("link-local"))
            } else if v6.is_unspecified() {
                Err(forbidden("unspecified"))
            } else if v6.is_multicast() {
                Err(forbidden("multicast"))
            } else if v6.is_loopback() {
                internal("loopback")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                internal("unique local (fc00::/7)")
            } else {
                Ok(())
            }
        }
    }
}

/// Connect to the first of `addrs` that answers (the checked addresses,
/// never a new lookup).
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, HttpError> {
    if addrs.is_empty() {
        return Err(HttpError::DnsError {
            rcode: Some("no address".into()),
            info_code: None,
        });
    }
    let attempt = async {
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                HttpError::ConnectionRefused
            }
            Some(e) => HttpError::Connect(e),
            None => HttpError::ConnectionRefused,
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
}

/// The public web PKI roots (webpki-roots).
pub(crate) fn web_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    }
}

/// A TLS client config (ring, safe protocol versions) trusting `roots`.
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// TLS to `host` over `tcp`, verified against `config`'s roots.
async fn tls_connect(
    tcp: TcpStream,
    host: &str,
    timeout: Duration,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HttpError> {
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => rustls_pki_types::ServerName::from(ip),
        Err(_) => rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Tls)
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

/// A response body that errors past `max` bytes or after `idle` without a byte.
struct CappedBody {
    inner: hyper::body::Incoming,
    read: u64,
    max: u64,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.read = self.read.saturating_add(data.len() as u64);
                    if self.read > self.max {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            self.read,
                        )))));
                    }
                }
                let deadline = tokio::time::Instant::now() + self.idle;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `wasi:http` hooks of one call: every request goes through the
/// plugin's policy.
pub(crate) struct PolicyHooks {
    pub(crate) plugin: Arc<str>,
    pub(crate) policy: Arc<HttpPolicy>,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for PolicyHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(Response<WasiBody>, IoFuture), HttpError>> + Send> {
        let policy = Arc::clone(&self.policy);
        let plugin = Arc::clone(&self.plugin);
        Box::new(async move {
            let res = policy.send(&plugin, request, options).await?;
            Ok((res, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(entries: &[&str]) -> HttpPolicy {
        let e: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        HttpPolicy::new(&e, Duration::from_secs(1), 100).unwrap()
    }

    #[test]
    fn entries_parse_or_name_what_is_wrong() {
        for ok in [
            "https://api.example.com",
            "https://api.example.com/",
            "http://127.0.0.1:8080",
            "https://*.example.com",
            "http://[::1]:8080",
            "http://localhost:1",
        ] {
            assert!(parse_entry(ok).is_ok(), "{ok}");
        }
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://user@x",
            "https://x:0",
            "https://x:99999",
            "https://*",
            "https://a.*.com",
        ] {
            let e = parse_entry(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn scheme_host_and_port_must_all_match() {
        let p = policy(&[
            "https://api.example.com",
            "http://127.0.0.1:8080",
            "https://*.corp.io",
        ]);
        assert_eq!(
            p.lookup(true, "api.example.com", 443),
            Some(Listed::Literally)
        );
        assert_eq!(p.lookup(false, "api.example.com", 443), None);
        assert_eq!(p.lookup(true, "api.example.com", 8443), None);
        assert_eq!(p.lookup(false, "127.0.0.1", 8080), Some(Listed::Literally));
        assert_eq!(p.lookup(false, "127.0.0.1", 8081), None);
        assert_eq!(p.lookup(true, "a.corp.io", 443), Some(Listed::ByWildcard));
        assert_eq!(p.lookup(true, "corp.io", 443), None);
        assert_eq!(p.lookup(true, "evilcorp.io", 443), None);
        assert!(!HttpPolicy::deny_all().allows_any());
    }

    #[test]
    fn address_classes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lit = Listed::Literally;
        let wild = Listed::ByWildcard;
        assert!(check_addr("h", ip("169.254.169.254"), lit).is_err());
        assert!(check_addr("h", ip("fe80::1"), lit).is_err());
        assert!(check_addr("h", ip("::ffff:169.254.169.254"), lit).is_err());
        assert!(check_addr("h", ip("0.0.0.0"), lit).is_err());
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(check_addr("h", ip(internal), lit).is_ok(), "{internal}");
            assert!(
                matches!(
                    check_addr("h", ip(internal), wild),
                    Err(Refusal::Internal { .. })
                ),
                "{internal}"
            );
        }
        assert!(check_addr("h", ip("93.184.216.34"), wild).is_ok());
        assert!(check_addr("h", ip("2606:2800:220:1::1"), wild).is_ok());
    }
}
