//! [`request`]: one plain HTTP/1.1 request to a port on 127.0.0.1 (one per
//! connection, `Connection: close`), for the suites that call the host's
//! admin endpoint and chromedriver. Bodies are read to their
//! `Content-Length` (or to the close); chunked answers are not expected.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: status, headers (names in lower case) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http_server::header_in(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// `method path` on `port` with `headers` and `body`; the whole exchange
/// within 30 s.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        // A server may answer (413) before reading a large body and close:
        // a failed write still leaves its answer to read.
        let _ = s.write_all(body).await;
        // To the end of the body its length gives (a server may keep the
        // connection open despite `Connection: close`), else to the close.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Ok(a) = parse(&raw)
                && let Some(len) = a
                    .header("content-length")
                    .and_then(|l| l.parse::<usize>().ok())
                && a.body.len() >= len
            {
                return Ok(a);
            }
        }
        parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(30), exchange).await?
}

/// `GET path`: (status, body as text).
pub async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let a = request(port, "GET", path, &[], b"").await?;
    Ok((a.status, a.text()))
}

fn parse(raw: &[u8]) -> anyhow::Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!("no end of headers in {:?}", String::from_utf8_lossy(raw))
        })?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}
