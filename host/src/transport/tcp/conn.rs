//! One authenticated TCP connection of the built-in transport: TLS (when
//! configured), the handshake on both sides, and frames read under the
//! idle and per-frame time limits. Nothing past the handshake messages is
//! decoded before the peer proved itself. Frames are read through a buffer
//! (a read takes whatever has arrived), so frames a peer sent back to back
//! are at hand together: [`Conn::recv_ready`] gives the next one without
//! waiting, which is how a listener commits several batches at once.

use std::time::Duration;

use futures::FutureExt;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

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

/// Bytes asked of the socket per read when the size of what comes next is
/// not known yet.
const READ_CHUNK: usize = 64 * 1024;

/// A connection past its handshake.
pub struct Conn {
    io: Box<dyn Io>,
    settings: std::sync::Arc<TcpSettings>,
    /// Bytes read and not yet returned as frames: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    /// When the first byte of the frame in `buf[pos..]` arrived.
    frame_started: Option<Instant>,
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
            Ok(Conn::new(io, settings.clone()))
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
            Ok(Conn::new(io, settings.clone()))
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
    /// for the rest; the length is checked before room for the body is
    /// made. Cancel-safe: bytes read stay in the buffer.
    pub async fn recv(&mut self, idle: Duration) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            let started = self.frame_started;
            let read = match started {
                None => tokio::time::timeout(idle, self.read_more())
                    .await
                    .map_err(|_| ConnError::Timeout(Stage::Idle))?,
                Some(at) => {
                    tokio::time::timeout_at(at + self.settings.frame_timeout, self.read_more())
                        .await
                        .map_err(|_| ConnError::Timeout(Stage::Frame))?
                }
            };
            if read? == 0 {
                return match started {
                    None => Ok(None),
                    Some(_) => Err(ConnError::Wire(WireError::Truncated(
                        "a frame (the peer closed the connection in the middle of it)",
                    ))),
                };
            }
            if started.is_none() {
                self.frame_started = Some(Instant::now());
            }
        }
    }

    /// The next frame if it has arrived whole, without waiting: from the
    /// buffer, or from what the socket holds right now. `Ok(None)` when it
    /// has not (or the peer closed: the next [`Conn::recv`] says so).
    pub fn recv_ready(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            let was_empty = self.pos == self.buf.len();
            match self.read_more().now_or_never() {
                Some(Ok(0)) | None => return Ok(None),
                Some(Ok(_)) => {
                    if was_empty {
                        self.frame_started = Some(Instant::now());
                    }
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }

    fn new(io: Box<dyn Io>, settings: std::sync::Arc<TcpSettings>) -> Conn {
        Conn {
            io,
            settings,
            buf: Vec::new(),
            pos: 0,
            frame_started: None,
        }
    }

    /// A whole frame from the buffer, if it holds one; the length prefix is
    /// checked as soon as it is there.
    fn take_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        let have = &self.buf[self.pos..];
        let Some(prefix) = have.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = wire::frame_len(*prefix, self.settings.limits.max_frame)?;
        let end = FRAME_HEADER_LEN + len;
        if have.len() < end {
            return Ok(None);
        }
        let frame = wire::decode_frame(&have[FRAME_HEADER_LEN..end], &self.settings.limits)?;
        self.pos += end;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.frame_started = None;
        } else {
            // The next frame's first bytes came with this one.
            self.frame_started = Some(Instant::now());
        }
        Ok(Some(frame))
    }

    /// Read what has arrived into the buffer (at least one byte, or 0 at
    /// the end of the stream). Room is made for the rest of the frame when
    /// its (checked) length is known, else for [`READ_CHUNK`] bytes.
    async fn read_more(&mut self) -> Result<usize, ConnError> {
        if self.pos > 0 {
            // Only part of one frame is left here: moving it is cheap.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let want = match self.buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(prefix) => {
                let len = wire::frame_len(*prefix, self.settings.limits.max_frame)?;
                (FRAME_HEADER_LEN + len)
                    .saturating_sub(self.buf.len())
                    .max(1)
            }
            None => READ_CHUNK,
        };
        self.buf.reserve(want);
        Ok(self.io.read_buf(&mut self.buf).await?)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn pair() -> (tokio::io::DuplexStream, Conn) {
        let (peer, ours) = tokio::io::duplex(1 << 20);
        (peer, Conn::new(Box::new(ours), TcpSettings::plain()))
    }

    #[tokio::test]
    async fn frames_sent_back_to_back_are_at_hand_together_and_half_a_frame_is_not() {
        let (mut peer, mut conn) = pair();
        let e = Envelope::new("A", b"{}".to_vec()).encode();
        assert_eq!(conn.recv_ready().unwrap(), None, "nothing sent yet");
        let fourth = wire::encode_batch(4, &[&e]);
        let half = fourth.len() / 2;
        peer.write_all(
            &[
                wire::encode_batch(1, &[&e]),
                wire::encode_batch(2, &[&e, &e]),
                wire::encode_ping(3),
                fourth[..half].to_vec(),
            ]
            .concat(),
        )
        .await
        .unwrap();
        let first = conn.recv(Duration::from_secs(5)).await.unwrap();
        assert!(
            matches!(first, Some(Frame::Batch { seq: 1, .. })),
            "{first:?}"
        );
        let second = conn.recv_ready().unwrap();
        assert!(
            matches!(&second, Some(Frame::Batch { seq: 2, entries }) if entries.len() == 2),
            "{second:?}"
        );
        assert_eq!(conn.recv_ready().unwrap(), Some(Frame::Ping { seq: 3 }));
        assert_eq!(conn.recv_ready().unwrap(), None, "half a frame");
        peer.write_all(&fourth[half..]).await.unwrap();
        let fourth = conn.recv_ready().unwrap();
        assert!(
            matches!(fourth, Some(Frame::Batch { seq: 4, .. })),
            "{fourth:?}"
        );
        drop(peer);
        assert_eq!(conn.recv_ready().unwrap(), None);
        assert_eq!(conn.recv(Duration::from_secs(5)).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_begun_must_end_within_the_frame_timeout_and_before_the_stream_does() {
        let frame = wire::encode_ping(1);
        let (mut peer, mut conn) = pair();
        peer.write_all(&frame[..3]).await.unwrap();
        let t = Instant::now();
        let err = conn.recv(Duration::from_secs(3600)).await.unwrap_err();
        assert!(matches!(err, ConnError::Timeout(Stage::Frame)), "{err:?}");
        assert_eq!(t.elapsed(), TcpSettings::plain().frame_timeout);

        // Idle: nothing of a frame yet.
        let (_peer, mut conn) = pair();
        let t = Instant::now();
        let err = conn.recv(Duration::from_secs(7)).await.unwrap_err();
        assert!(matches!(err, ConnError::Timeout(Stage::Idle)), "{err:?}");
        assert_eq!(t.elapsed(), Duration::from_secs(7));

        // Cut off: the rest of the frame never comes.
        let (mut peer, mut conn) = pair();
        peer.write_all(&frame[..FRAME_HEADER_LEN + 2])
            .await
            .unwrap();
        drop(peer);
        let err = conn.recv(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(err, ConnError::Wire(WireError::Truncated(_))),
            "{err:?}"
        );
    }
}
