//! One authenticated TCP connection of the built-in transport: TLS (when
//! configured), the handshake on both sides, and frames read under the
//! idle and per-frame time limits. Nothing past the handshake messages is
//! decoded before the peer proved itself.

use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::TcpSettings;
use crate::transport::wire::{
    self, CLIENT_HELLO_LEN, FLAG_SECRET, FRAME_HEADER_LEN, Frame, HandshakeRefusal,
    PROTOCOL_VERSION, SERVER_ACCEPT_LEN, SERVER_HELLO_LEN, ServerHello, WireError,
};

/// A byte stream: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Why a connection failed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out {0}")]
    Timeout(Stage),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeRefusal),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer reported an error: {0}")]
    Peer(String),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

impl ConnError {
    /// A stable name of what went wrong: the `cause` field of the log lines
    /// about a refused or dropped connection (the wording may change, this
    /// does not).
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            ConnError::Io(_) => "io",
            ConnError::Timeout(stage) => stage.cause(),
            ConnError::Wire(e) => e.cause(),
            ConnError::Handshake(r) => r.cause(),
            ConnError::Tls(_) => "tls",
            ConnError::Closed => "closed",
            ConnError::Peer(_) => "peer-error",
            ConnError::Unexpected(_) => "unexpected-frame",
        }
    }
}

/// What a connection was doing when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The listener's side of the handshake (TLS included).
    Handshake,
    /// The sender's connect, TLS and handshake.
    Connecting,
    /// Between a frame's first byte and its last.
    Frame,
    /// Between frames, past the idle timeout.
    Idle,
}

impl Stage {
    fn cause(self) -> &'static str {
        match self {
            Stage::Handshake => "handshake-timeout",
            Stage::Connecting => "connect-timeout",
            Stage::Frame => "frame-timeout",
            Stage::Idle => "idle-timeout",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Handshake => "during the handshake",
            Stage::Connecting => "connecting",
            Stage::Frame => "reading a frame",
            Stage::Idle => "waiting for a frame",
        })
    }
}

/// A connection past its handshake.
pub struct Conn {
    io: Box<dyn Io>,
    settings: std::sync::Arc<TcpSettings>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

async fn within<T>(
    d: Duration,
    what: Stage,
    f: impl Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| ConnError::Timeout(what))?
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rng().fill_bytes(&mut n);
    n
}

impl Conn {
    /// The listener's side: TLS, then hello / client hello / accept, all
    /// within the handshake timeout.
    pub async fn accept(
        tcp: tokio::net::TcpStream,
        settings: std::sync::Arc<TcpSettings>,
    ) -> Result<Conn, ConnError> {
        let limit = settings.handshake_timeout;
        within(limit, Stage::Handshake, async {
            let mut io: Box<dyn Io> = match &settings.tls_acceptor {
                Some(acceptor) => Box::new(
                    acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| ConnError::Tls(e.to_string()))?,
                ),
                None => Box::new(tcp),
            };
            let server = ServerHello {
                version: PROTOCOL_VERSION,
                flags: if settings.secret.is_some() {
                    FLAG_SECRET
                } else {
                    0
                },
                nonce: nonce(),
            };
            io.write_all(&server.encode()).await?;
            io.flush().await?;
            let mut hello = [0u8; CLIENT_HELLO_LEN];
            // The magic first: a client that is not a jasper-host peer (an
            // HTTP probe, say) is dropped at once, not at the timeout.
            read_exact_or_closed(&mut io, &mut hello[..wire::MAGIC.len()]).await?;
            if hello[..wire::MAGIC.len()] != wire::MAGIC {
                let mut m = [0u8; 4];
                m.copy_from_slice(&hello[..4]);
                return Err(ConnError::Handshake(HandshakeRefusal::Malformed(
                    WireError::BadMagic(m),
                )));
            }
            read_exact_or_closed(&mut io, &mut hello[wire::MAGIC.len()..]).await?;
            let (accept, verdict) =
                wire::judge_client_hello(&hello, &server.nonce, settings.secret.as_ref());
            io.write_all(&accept.encode()).await?;
            io.flush().await?;
            verdict?;
            Ok(Conn {
                io,
                settings: settings.clone(),
            })
        })
        .await
    }

    /// The sender's side: connect, TLS, then the handshake, within the
    /// connect timeout.
    pub async fn connect(
        addr: &str,
        settings: std::sync::Arc<TcpSettings>,
        connect_timeout: Duration,
    ) -> Result<Conn, ConnError> {
        within(connect_timeout, Stage::Connecting, async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut io: Box<dyn Io> = match &settings.tls_connector {
                Some(connector) => {
                    let name = settings.server_name_for(addr)?;
                    Box::new(
                        connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| ConnError::Tls(e.to_string()))?,
                    )
                }
                None => Box::new(tcp),
            };
            let mut hello = [0u8; SERVER_HELLO_LEN];
            read_exact_or_closed(&mut io, &mut hello).await?;
            let client_nonce = nonce();
            let (server, reply) =
                wire::answer_server_hello(&hello, client_nonce, settings.secret.as_ref())?;
            io.write_all(&reply.encode()).await?;
            io.flush().await?;
            let mut accept = [0u8; SERVER_ACCEPT_LEN];
            read_exact_or_closed(&mut io, &mut accept).await?;
            wire::check_server_accept(&accept, &server, &client_nonce, settings.secret.as_ref())?;
            Ok(Conn {
                io,
                settings: settings.clone(),
            })
        })
        .await
    }

    /// Write whole frames and flush.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), ConnError> {
        self.io.write_all(frame).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next frame. `Ok(None)`: the peer closed cleanly between frames.
    /// Waits up to `idle` for its first byte, then up to the frame timeout
    /// for the rest; the length is checked before the body is allocated.
    pub async fn recv(&mut self, idle: Duration) -> Result<Option<Frame>, ConnError> {
        let mut prefix = [0u8; FRAME_HEADER_LEN];
        let first = tokio::time::timeout(idle, self.io.read(&mut prefix[..1]))
            .await
            .map_err(|_| ConnError::Timeout(Stage::Idle))??;
        if first == 0 {
            return Ok(None);
        }
        let settings = self.settings.clone();
        let io = &mut self.io;
        within(settings.frame_timeout, Stage::Frame, async move {
            let mid_frame = |e| match e {
                ConnError::Closed => ConnError::Wire(WireError::Truncated(
                    "a frame (the peer closed the connection in the middle of it)",
                )),
                e => e,
            };
            read_exact_or_closed(io, &mut prefix[1..])
                .await
                .map_err(mid_frame)?;
            let len = wire::frame_len(prefix, settings.limits.max_frame)?;
            let mut body = vec![0u8; len];
            read_exact_or_closed(io, &mut body)
                .await
                .map_err(mid_frame)?;
            Ok(Some(wire::decode_frame(&body, &settings.limits)?))
        })
        .await
    }

    /// Tell the peer why the connection ends (best effort) and close it.
    pub async fn fail(mut self, reason: &str) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.io.write_all(&wire::encode_error(reason)).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

async fn read_exact_or_closed(io: &mut Box<dyn Io>, buf: &mut [u8]) -> Result<(), ConnError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
        Err(e) => Err(ConnError::Io(e)),
    }
}
