//! Outbound HTTP from a handler: [`Http`] (from [`Context::http`](crate::Context::http)),
//! a request builder, [`Response`] and [`HttpError`].
//!
//! On `wasm32` a request goes out through `wasi:http`; the host lets it
//! through only to the hosts the plugin's `allow_http` lists (a refusal is
//! [`HttpError::Denied`]). Natively, [`TestContext`](crate::testing::TestContext)
//! answers from its stubs and records every request.
//!
//! ```
//! use jasper_guest::testing::TestContext;
//! use jasper_guest::http::Response;
//!
//! let mut ctx = TestContext::new();
//! ctx.stub_http("http://example.test/hook", Response::new(204));
//! let res = ctx
//!     .http()
//!     .post("http://example.test/hook")
//!     .header("Idempotency-Key", "k-1")
//!     .json(&serde_json::json!({"a": 1}))
//!     .unwrap()
//!     .send()
//!     .unwrap();
//! assert_eq!(res.status, 204);
//! assert_eq!(ctx.http_requests()[0].header("idempotency-key"), Some("k-1"));
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Backend;
use crate::error::HandleError;

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

/// One request as it is sent (each redirect hop is a request of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Request {
    pub method: Method,
    /// The absolute URL: `http(s)://HOST[:PORT]/PATH?QUERY`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Connect, first byte and between bytes, in ms (the host caps it at
    /// the plugin's `http_timeout_ms`).
    pub timeout_ms: Option<u64>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A response, its body read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and no body (for stubs).
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// With a header added.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// With `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode(e.to_string()))
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Why a request got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The host refused it: the host is not in `allow_http`, or resolves
    /// to an address plugins may not reach. No connection was made.
    Denied(String),
    /// No connection, no first byte, or a pause between bytes past the timeout.
    Timeout(String),
    /// The connection was refused or broke, or the name did not resolve.
    Connect(String),
    /// The response body is larger than `http_max_response_bytes`.
    TooLarge(String),
    /// The request is malformed (URL, header).
    Invalid(String),
    /// The body could not be encoded or the response decoded.
    Decode(String),
    /// Any other protocol failure.
    Protocol(String),
}

impl HttpError {
    /// Whether trying again later may succeed (timeouts, broken or refused
    /// connections).
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Timeout(_) | HttpError::Connect(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(m) => write!(f, "HTTP request denied: {m}"),
            Self::Timeout(m) => write!(f, "HTTP timeout: {m}"),
            Self::Connect(m) => write!(f, "HTTP connection failed: {m}"),
            Self::TooLarge(m) => write!(f, "HTTP response too large: {m}"),
            Self::Invalid(m) => write!(f, "invalid HTTP request: {m}"),
            Self::Decode(m) => write!(f, "HTTP body: {m}"),
            Self::Protocol(m) => write!(f, "HTTP error: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A transient HTTP failure asks for a retry (the host's backoff applies);
/// any other fails the attempt.
impl From<HttpError> for HandleError {
    fn from(e: HttpError) -> Self {
        if e.is_transient() {
            HandleError::Retry(e.to_string())
        } else {
            HandleError::Failed(e.to_string())
        }
    }
}

/// Outbound HTTP for one handler call.
pub struct Http<'a> {
    pub(crate) backend: &'a mut dyn Backend,
}

impl fmt::Debug for Http<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

impl<'a> Http<'a> {
    /// A request with `method` to `url`.
    pub fn request(self, method: Method, url: &str) -> RequestBuilder<'a> {
        RequestBuilder {
            backend: self.backend,
            request: Request {
                method,
                url: url.to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
                timeout_ms: None,
            },
            redirects: 0,
        }
    }

    /// A GET to `url`.
    pub fn get(self, url: &str) -> RequestBuilder<'a> {
        self.request(Method::Get, url)
    }

    /// A POST to `url`.
    pub fn post(self, url: &str) -> RequestBuilder<'a> {
        self.request(Method::Post, url)
    }

    /// A PUT to `url`.
    pub fn put(self, url: &str) -> RequestBuilder<'a> {
        self.request(Method::Put, url)
    }

    /// A DELETE to `url`.
    pub fn delete(self, url: &str) -> RequestBuilder<'a> {
        self.request(Method::Delete, url)
    }
}

/// A request being built; [`send`](Self::send) sends it.
pub struct RequestBuilder<'a> {
    backend: &'a mut dyn Backend,
    request: Request,
    redirects: u32,
}

impl fmt::Debug for RequestBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder<'_> {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request
            .headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// The body, as is.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// The body as JSON, with `Content-Type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, HttpError> {
        self.request.body =
            serde_json::to_vec(value).map_err(|e| HttpError::Decode(e.to_string()))?;
        Ok(self.header("Content-Type", "application/json"))
    }

    /// Connect, first-byte and between-bytes timeout in ms (at most the
    /// plugin's `http_timeout_ms`).
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.request.timeout_ms = Some(ms);
        self
    }

    /// Follow up to `n` redirects (default 0: a 3xx is returned as is).
    /// Each hop is a request of its own, checked by the host's allow-list.
    pub fn follow_redirects(mut self, n: u32) -> Self {
        self.redirects = n;
        self
    }

    /// Sends it and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let RequestBuilder {
            backend,
            mut request,
            redirects,
        } = self;
        let mut left = redirects;
        loop {
            let res = send_one(backend, &request)?;
            let location = match res.status {
                301 | 302 | 303 | 307 | 308 if left > 0 => res.header("location"),
                _ => None,
            };
            let Some(location) = location else {
                return Ok(res);
            };
            left -= 1;
            request.url = resolve(&request.url, location)?;
            if res.status == 303
                || (matches!(res.status, 301 | 302) && request.method == Method::Post)
            {
                request.method = Method::Get;
                request.body.clear();
                request
                    .headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn send_one(_backend: &mut dyn Backend, request: &Request) -> Result<Response, HttpError> {
    // Straight to wasi:http, not through the backend: a plugin that never
    // sends a request does not import wasi:http at all.
    crate::wasm::http::send(request)
}

#[cfg(not(target_arch = "wasm32"))]
fn send_one(backend: &mut dyn Backend, request: &Request) -> Result<Response, HttpError> {
    backend.http(request)
}

/// Splits `http(s)://AUTHORITY/PATH` into its scheme, authority and path.
pub(crate) fn split_url(url: &str) -> Result<(&str, &str, &str), HttpError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HttpError::Invalid(format!("{url:?}: not an absolute URL")))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Invalid(format!("{url:?}: no host")));
    }
    Ok((scheme, authority, path))
}

/// A `Location` against the URL that answered with it.
fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
    if location.contains("://") {
        return Ok(location.to_owned());
    }
    let (scheme, authority, path) = split_url(base)?;
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let dir = path.split('?').next().unwrap_or("/");
    let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
    Ok(format!("{scheme}://{authority}{dir}{location}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_split_and_locations_resolve() {
        assert_eq!(
            split_url("http://h:1/a/b?q").unwrap(),
            ("http", "h:1", "/a/b?q")
        );
        assert_eq!(split_url("https://h").unwrap(), ("https", "h", "/"));
        assert!(split_url("h/x").is_err());
        assert_eq!(resolve("http://h/a/b", "http://x/y").unwrap(), "http://x/y");
        assert_eq!(resolve("http://h/a/b", "/c").unwrap(), "http://h/c");
        assert_eq!(resolve("http://h/a/b", "c").unwrap(), "http://h/a/c");
        assert_eq!(resolve("https://h/a", "//x:9/z").unwrap(), "https://x:9/z");
    }

    #[test]
    fn transient_errors_ask_for_a_retry() {
        let e: HandleError = HttpError::Timeout("t".into()).into();
        assert!(matches!(e, HandleError::Retry(_)));
        let e: HandleError = HttpError::Denied("d".into()).into();
        assert!(matches!(e, HandleError::Failed(_)));
    }
}
