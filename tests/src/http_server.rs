//! [`HttpServer`]: a small real HTTP/1.1 server on 127.0.0.1 for the
//! outbound-HTTP tests (plain tokio, one task per connection, one request
//! per connection). A test gives it a function from each request to a
//! [`Reply`] (a status and body, optionally late, a redirect, a chunked
//! body) and reads back every request it got. Also used by the host's own
//! tests (`host/tests/common`), so it needs nothing but std and tokio.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// The first value of `name` (any case) among `headers` (names in lower case).
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// What the server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and body (with a Content-Length).
    Status(u16, Vec<u8>),
    /// `302 Found` to this location.
    Redirect(String),
    /// 200 with `chunks` chunks of `size` bytes, chunked (no Content-Length).
    Chunked { chunks: usize, size: usize },
    /// The reply after this pause (before the status line).
    Late(Duration, Box<Reply>),
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

#[derive(Default)]
struct Seen {
    requests: Vec<Received>,
    connections: usize,
}

/// A running server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Longest request head or body the server reads.
const MAX_REQUEST: usize = 1 << 20;

impl HttpServer {
    /// Starts on 127.0.0.1 (a port the kernel picks), answering with `handler`.
    pub async fn start(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(mut s) = seen2.lock() {
                    s.connections += 1;
                }
                let seen = Arc::clone(&seen2);
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let _ = serve(stream, seen, handler).await;
                });
            }
        });
        Ok(HttpServer { addr, seen, task })
    }

    /// Always answers `status` with an empty body.
    pub async fn status(status: u16) -> std::io::Result<HttpServer> {
        Self::start(move |_| Reply::Status(status, Vec::new())).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request read so far, in the order they were read.
    pub fn requests(&self) -> Vec<Received> {
        self.seen
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.lock().map(|s| s.connections).unwrap_or(0)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Seen>>,
    handler: Arc<Handler>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await? else {
        return Ok(());
    };
    if let Ok(mut s) = seen.lock() {
        s.requests.push(req.clone());
    }
    let mut reply = handler(&req);
    while let Reply::Late(pause, inner) = reply {
        tokio::time::sleep(pause).await;
        reply = *inner;
    }
    let bytes = match reply {
        Reply::Status(status, body) => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }
        Reply::Redirect(to) => format!(
            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
        Reply::Chunked { chunks, size } => {
            let mut out =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                    .to_vec();
            for _ in 0..chunks {
                out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                out.extend(std::iter::repeat_n(b'c', size));
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        }
        Reply::Late(..) => Vec::new(),
    };
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Received>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Some(Received {
        method,
        path,
        headers,
        body,
    }))
}
