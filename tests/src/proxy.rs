//! [`FreezingProxy`]: a TCP proxy on 127.0.0.1 in front of a server that
//! can be frozen, to make a database hang instead of going away: while
//! frozen it forwards nothing in either direction (nor a close) and keeps
//! every connection open; connections made meanwhile are accepted and wait
//! (the upstream connection is made only when thawed, so a frozen proxy
//! takes no server connection slots). Thawed, everything held goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::{Backend, ServerUrl};

/// The proxy; dropping it closes every connection through it.
#[derive(Debug)]
pub struct FreezingProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FreezingProxy {
    /// A proxy in front of the test PostgreSQL server, and the URL of the
    /// test database through it.
    pub async fn before_postgres() -> (FreezingProxy, String) {
        let server = ServerUrl::parse(&Backend::Postgres.server_url().expect("a PostgreSQL URL"))
            .expect("the PostgreSQL URL parses");
        let proxy = FreezingProxy::start(&format!("{}:{}", server.host, server.port))
            .await
            .expect("start the proxy");
        let via_proxy = ServerUrl {
            host: "127.0.0.1".to_owned(),
            port: proxy.port(),
            ..server.clone()
        }
        .with_database(&server.database);
        (proxy, via_proxy)
    }

    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`host:port`), thawed. Runs on the caller's tokio runtime.
    pub async fn start(upstream: &str) -> std::io::Result<FreezingProxy> {
        Self::start_on(0, upstream).await
    }

    /// [`FreezingProxy::start`] on a port chosen before (a server that comes
    /// up late where a host already looks for it; see [`crate::free_port`]).
    pub async fn start_on(port: u16, upstream: &str) -> std::io::Result<FreezingProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (frozen, rx) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((client, _)) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            conns.spawn(relay(client, upstream.clone(), rx.clone()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FreezingProxy {
            addr,
            frozen,
            accepted,
            task,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stop forwarding (connections stay open).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forward again, what was held first.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it ends them.
        self.task.abort();
    }
}

/// Returns once the proxy is not frozen (at once if the proxy is gone).
async fn thawed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|frozen| !*frozen).await;
}

async fn relay(client: TcpStream, upstream: String, mut rx: watch::Receiver<bool>) {
    thawed(&mut rx).await;
    // A refused upstream connection closes the client's: what a client of
    // a server that is down sees.
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pipe(cr, sw, rx.clone()), pipe(sr, cw, rx));
}

/// Copies `from` to `to` while thawed; a read that returns while frozen
/// (data, or the end of the stream) is passed on only after the thaw.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut rx: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        thawed(&mut rx).await;
        let n = from.read(&mut buf).await.unwrap_or(0);
        thawed(&mut rx).await;
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: bytes pass thawed, are held frozen
    /// (the connection stays open), and arrive after the thaw.
    #[tokio::test]
    async fn frozen_proxy_holds_bytes_until_thawed() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = FreezingProxy::start(&echo_addr.to_string()).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        proxy.freeze();
        c.write_all(b"world").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut got)).await;
        assert!(r.is_err(), "bytes came through a frozen proxy");
        // A new connection is accepted but goes nowhere while frozen.
        let mut c2 = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        c2.write_all(b"later").await.unwrap();

        proxy.thaw();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
        c2.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"later");
        assert_eq!(proxy.accepted(), 2);
    }
}
