//! The wire protocol of `tcp://` and `durable://` (docs/wire-protocol.md):
//! the fixed-size handshake messages and the length-prefixed frames, encoded
//! and decoded without I/O so that the fuzz targets and tests drive them
//! directly. Every length is checked against its bound before anything is
//! allocated for it.

use ring::hmac;

use crate::envelope::{CodecError, Envelope, Limits, VERSION as ENVELOPE_VERSION};

/// The first bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"JSPR";
/// The protocol version this host speaks (and the only one it accepts).
pub const PROTOCOL_VERSION: u8 = 1;
pub const SERVER_HELLO_LEN: usize = 40;
pub const CLIENT_HELLO_LEN: usize = 72;
pub const SERVER_ACCEPT_LEN: usize = 40;
/// The length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;
/// Longest reason text in an acknowledgement or error frame.
pub const MAX_REASON: usize = 1024;

/// Server hello flag: the listener requires the shared secret.
pub const FLAG_SECRET: u8 = 1;

const KIND_BATCH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_PING: u8 = 3;
const KIND_PONG: u8 = 4;
const KIND_ERROR: u8 = 5;

/// Why bytes from a peer were refused. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame length 0 (a frame holds at least its kind byte)")]
    EmptyFrame,
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{what} {actual} exceeds the limit of {limit}")]
    TooMany {
        what: &'static str,
        actual: usize,
        limit: usize,
    },
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    #[error("{count} trailing byte(s) after the {what}")]
    Trailing { what: &'static str, count: usize },
    #[error("unsupported batch encoding version {0}")]
    BatchVersion(u8),
    #[error("unknown acknowledgement status {0}")]
    BadStatus(u8),
    #[error("not a jasper-host peer (bad magic bytes {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this host speaks {PROTOCOL_VERSION})")]
    BadVersion(u8),
}

/// A peer's verdict on one envelope of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In the receiver's inbox (or its local queue for `tcp://`), or a
    /// duplicate of one that is.
    Accepted,
    /// Refused for good: resending will not help (the reason says why).
    Rejected(String),
    /// The envelope names a queue the receiver does not have.
    UnknownDestination(String),
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Envelopes, each decoded on its own so that one bad envelope is
    /// rejected alone.
    Batch {
        seq: u64,
        entries: Vec<Result<Envelope, CodecError>>,
    },
    Ack {
        seq: u64,
        verdicts: Vec<Verdict>,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// The peer gives up on the connection, saying why.
    Error {
        message: String,
    },
}

/// Bounds on what a frame may hold.
#[derive(Debug, Clone)]
pub struct FrameLimits {
    pub max_frame: u32,
    pub envelope: Limits,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_frame: 64 << 20,
            envelope: Limits::default(),
        }
    }
}

/// The frame length a 4-byte prefix announces, checked against the limit.
pub fn frame_len(prefix: [u8; FRAME_HEADER_LEN], max_frame: u32) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix);
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > max_frame {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: max_frame,
        });
    }
    Ok(len as usize)
}

fn frame(kind: u8, payload_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + 1 + payload_len);
    out.extend_from_slice(&len_u32(1 + payload_len).to_le_bytes());
    out.push(kind);
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A batch frame from already-encoded envelopes (as stored in `outgoing`).
pub fn encode_batch(seq: u64, encoded: &[&[u8]]) -> Vec<u8> {
    let payload: usize = 8 + 1 + 4 + encoded.iter().map(|e| 4 + e.len()).sum::<usize>();
    let mut out = frame(KIND_BATCH, payload);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&len_u32(encoded.len()).to_le_bytes());
    for e in encoded {
        out.extend_from_slice(&len_u32(e.len()).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

pub fn encode_ack(seq: u64, verdicts: &[Verdict]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12 + verdicts.len());
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&len_u32(verdicts.len()).to_le_bytes());
    for v in verdicts {
        match v {
            Verdict::Accepted => payload.push(0),
            Verdict::Rejected(r) => {
                payload.push(1);
                put_reason(&mut payload, r);
            }
            Verdict::UnknownDestination(r) => {
                payload.push(2);
                put_reason(&mut payload, r);
            }
        }
    }
    let mut out = frame(KIND_ACK, payload.len());
    out.extend_from_slice(&payload);
    out
}

pub fn encode_ping(seq: u64) -> Vec<u8> {
    let mut out = frame(KIND_PING, 8);
    out.extend_from_slice(&seq.to_le_bytes());
    out
}

pub fn encode_pong(seq: u64) -> Vec<u8> {
    let mut out = frame(KIND_PONG, 8);
    out.extend_from_slice(&seq.to_le_bytes());
    out
}

pub fn encode_error(message: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    put_reason(&mut payload, message);
    let mut out = frame(KIND_ERROR, payload.len());
    out.extend_from_slice(&payload);
    out
}

/// Cut at a char boundary at most [`MAX_REASON`] bytes in.
fn put_reason(out: &mut Vec<u8>, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn reason(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        if n > MAX_REASON {
            return Err(WireError::TooMany {
                what,
                actual: n,
                limit: MAX_REASON,
            });
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadUtf8(what))
    }
    fn finish(&self, what: &'static str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                what,
                count: self.buf.len(),
            })
        }
    }
}

/// Decode a frame's body (the bytes after the length prefix: kind and payload).
pub fn decode_frame(body: &[u8], limits: &FrameLimits) -> Result<Frame, WireError> {
    let mut c = Cursor { buf: body };
    let kind = c.u8("frame kind")?;
    let frame = match kind {
        KIND_BATCH => {
            let seq = c.u64("batch sequence number")?;
            let version = c.u8("batch version")?;
            if version != ENVELOPE_VERSION {
                return Err(WireError::BatchVersion(version));
            }
            let count = c.u32("batch count")? as usize;
            if count > limits.envelope.max_batch {
                return Err(WireError::TooMany {
                    what: "batch count",
                    actual: count,
                    limit: limits.envelope.max_batch,
                });
            }
            // Each entry needs at least its 4-byte length: a count larger
            // than the bytes could hold is refused before the Vec is sized.
            if count.saturating_mul(4) > c.buf.len() {
                return Err(WireError::Truncated("batch entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let n = c.u32("batch entry length")? as usize;
                let bytes = c.take(n, "batch entry")?;
                entries.push(Envelope::decode_with(bytes, &limits.envelope));
            }
            c.finish("batch")?;
            Frame::Batch { seq, entries }
        }
        KIND_ACK => {
            let seq = c.u64("ack sequence number")?;
            let count = c.u32("ack count")? as usize;
            if count > limits.envelope.max_batch || count > c.buf.len() {
                return Err(WireError::TooMany {
                    what: "ack count",
                    actual: count,
                    limit: limits.envelope.max_batch.min(c.buf.len()),
                });
            }
            let mut verdicts = Vec::with_capacity(count);
            for _ in 0..count {
                verdicts.push(match c.u8("ack status")? {
                    0 => Verdict::Accepted,
                    1 => Verdict::Rejected(c.reason("ack reason")?),
                    2 => Verdict::UnknownDestination(c.reason("ack reason")?),
                    s => return Err(WireError::BadStatus(s)),
                });
            }
            c.finish("ack")?;
            Frame::Ack { seq, verdicts }
        }
        KIND_PING | KIND_PONG => {
            let seq = c.u64("ping sequence number")?;
            c.finish("ping")?;
            if kind == KIND_PING {
                Frame::Ping { seq }
            } else {
                Frame::Pong { seq }
            }
        }
        KIND_ERROR => {
            let message = c.reason("error message")?;
            c.finish("error")?;
            Frame::Error { message }
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    Ok(frame)
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// Outcome codes of the server's accept message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AcceptStatus {
    Ok = 0,
    BadVersion = 1,
    AuthFailed = 2,
}

/// First message, listener to sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u8,
    pub flags: u8,
    pub nonce: [u8; 32],
}

/// Second message, sender to listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub version: u8,
    pub nonce: [u8; 32],
    /// HMAC of the secret over both nonces (zeros without a secret).
    pub mac: [u8; 32],
}

/// Third message, listener to sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccept {
    pub status: u8,
    /// HMAC of the secret over both nonces, the other way round.
    pub mac: [u8; 32],
}

fn check_magic(b: &[u8]) -> Result<(), WireError> {
    let mut m = [0u8; 4];
    m.copy_from_slice(&b[..4]);
    if m != MAGIC {
        return Err(WireError::BadMagic(m));
    }
    Ok(())
}

fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut out = [0u8; SERVER_HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.flags;
        out[8..].copy_from_slice(&self.nonce);
        out
    }
    pub fn decode(b: &[u8; SERVER_HELLO_LEN]) -> Result<ServerHello, WireError> {
        check_magic(b)?;
        Ok(ServerHello {
            version: b[4],
            flags: b[5],
            nonce: arr32(&b[8..]),
        })
    }
}

impl ClientHello {
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut out = [0u8; CLIENT_HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[8..40].copy_from_slice(&self.nonce);
        out[40..].copy_from_slice(&self.mac);
        out
    }
    pub fn decode(b: &[u8; CLIENT_HELLO_LEN]) -> Result<ClientHello, WireError> {
        check_magic(b)?;
        Ok(ClientHello {
            version: b[4],
            nonce: arr32(&b[8..40]),
            mac: arr32(&b[40..]),
        })
    }
}

impl ServerAccept {
    pub fn encode(&self) -> [u8; SERVER_ACCEPT_LEN] {
        let mut out = [0u8; SERVER_ACCEPT_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.status;
        out[8..].copy_from_slice(&self.mac);
        out
    }
    pub fn decode(b: &[u8; SERVER_ACCEPT_LEN]) -> Result<ServerAccept, WireError> {
        check_magic(b)?;
        Ok(ServerAccept {
            status: b[4],
            mac: arr32(&b[8..]),
        })
    }
}

/// The shared secret of `[tcp] secret`, as an HMAC-SHA256 key.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

const CLIENT_LABEL: &[u8] = b"jasper-client\0";
const SERVER_LABEL: &[u8] = b"jasper-server\0";

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn mac(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        ctx.update(first);
        ctx.update(second);
        arr32(ctx.sign().as_ref())
    }

    /// The sender's proof: over the listener's nonce, then its own.
    pub fn client_mac(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(CLIENT_LABEL, server_nonce, client_nonce)
    }

    /// The listener's proof: over the sender's nonce, then its own.
    pub fn server_mac(&self, client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(SERVER_LABEL, client_nonce, server_nonce)
    }

    /// Constant-time check of a proof.
    pub fn verify(expected: &[u8; 32], got: &[u8; 32]) -> bool {
        // ring has no public constant-time compare; fold the differences.
        expected
            .iter()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The listener's judgement of a client hello: the accept message to send,
/// and whether the connection may go on.
pub fn judge_client_hello(
    bytes: &[u8; CLIENT_HELLO_LEN],
    server_nonce: &[u8; 32],
    secret: Option<&Secret>,
) -> (ServerAccept, Result<ClientHello, HandshakeRefusal>) {
    let hello = match ClientHello::decode(bytes) {
        Ok(h) => h,
        Err(e) => {
            return (
                ServerAccept {
                    status: AcceptStatus::BadVersion as u8,
                    mac: [0; 32],
                },
                Err(HandshakeRefusal::Malformed(e)),
            );
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return (
            ServerAccept {
                status: AcceptStatus::BadVersion as u8,
                mac: [0; 32],
            },
            Err(HandshakeRefusal::Version(hello.version)),
        );
    }
    match secret {
        Some(s) => {
            if !Secret::verify(&s.client_mac(server_nonce, &hello.nonce), &hello.mac) {
                return (
                    ServerAccept {
                        status: AcceptStatus::AuthFailed as u8,
                        mac: [0; 32],
                    },
                    Err(HandshakeRefusal::WrongSecret),
                );
            }
            let mac = s.server_mac(&hello.nonce, server_nonce);
            (
                ServerAccept {
                    status: AcceptStatus::Ok as u8,
                    mac,
                },
                Ok(hello),
            )
        }
        None => (
            ServerAccept {
                status: AcceptStatus::Ok as u8,
                mac: [0; 32],
            },
            Ok(hello),
        ),
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRefusal {
    #[error("malformed hello: {0}")]
    Malformed(WireError),
    #[error("peer speaks protocol version {0}, this host {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("wrong shared secret")]
    WrongSecret,
    #[error("the listener requires a shared secret and this host has none ([tcp] secret)")]
    SecretRequired,
    #[error(
        "the listener does not authenticate with the shared secret this host is configured with"
    )]
    SecretNotOffered,
    #[error("the listener refused the handshake (status {0})")]
    Refused(u8),
    #[error("the listener's proof of the shared secret is wrong")]
    ServerProofWrong,
}

/// The sender's side of the handshake, after reading the server hello:
/// what to send, or why not to go on.
pub fn answer_server_hello(
    bytes: &[u8; SERVER_HELLO_LEN],
    client_nonce: [u8; 32],
    secret: Option<&Secret>,
) -> Result<(ServerHello, ClientHello), HandshakeRefusal> {
    let hello = ServerHello::decode(bytes).map_err(HandshakeRefusal::Malformed)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeRefusal::Version(hello.version));
    }
    let requires = hello.flags & FLAG_SECRET != 0;
    let mac = match (secret, requires) {
        (Some(s), true) => s.client_mac(&hello.nonce, &client_nonce),
        (None, false) => [0; 32],
        (None, true) => return Err(HandshakeRefusal::SecretRequired),
        (Some(_), false) => return Err(HandshakeRefusal::SecretNotOffered),
    };
    let reply = ClientHello {
        version: PROTOCOL_VERSION,
        nonce: client_nonce,
        mac,
    };
    Ok((hello, reply))
}

/// The sender's check of the server's accept message.
pub fn check_server_accept(
    bytes: &[u8; SERVER_ACCEPT_LEN],
    server: &ServerHello,
    client_nonce: &[u8; 32],
    secret: Option<&Secret>,
) -> Result<(), HandshakeRefusal> {
    let accept = ServerAccept::decode(bytes).map_err(HandshakeRefusal::Malformed)?;
    if accept.status != AcceptStatus::Ok as u8 {
        return Err(if accept.status == AcceptStatus::AuthFailed as u8 {
            HandshakeRefusal::WrongSecret
        } else {
            HandshakeRefusal::Refused(accept.status)
        });
    }
    if let Some(s) = secret
        && !Secret::verify(&s.server_mac(client_nonce, &server.nonce), &accept.mac)
    {
        return Err(HandshakeRefusal::ServerProofWrong);
    }
    Ok(())
}

/// Feed arbitrary bytes through every decoder (the fuzz targets and the
/// corpus replay call this): nothing may panic or allocate beyond the limits.
pub fn fuzz_decode(data: &[u8]) {
    let limits = FrameLimits {
        max_frame: 1 << 20,
        envelope: Limits {
            max_batch: 1000,
            ..Limits::default()
        },
    };
    // A stream of frames split wherever the input says.
    let mut rest = data;
    while rest.len() >= FRAME_HEADER_LEN {
        let mut prefix = [0u8; FRAME_HEADER_LEN];
        prefix.copy_from_slice(&rest[..FRAME_HEADER_LEN]);
        rest = &rest[FRAME_HEADER_LEN..];
        let Ok(len) = frame_len(prefix, limits.max_frame) else {
            break;
        };
        let body = &rest[..len.min(rest.len())];
        if let Ok(frame) = decode_frame(body, &limits) {
            roundtrip(&frame, &limits);
        }
        rest = &rest[body.len()..];
    }
    // The handshake messages from the same bytes.
    let secret = Secret::new(b"fuzzing-secret-0123456789");
    if let Some(b) = data
        .get(..CLIENT_HELLO_LEN)
        .and_then(|b| <&[u8; CLIENT_HELLO_LEN]>::try_from(b).ok())
    {
        let _ = judge_client_hello(b, &[7; 32], Some(&secret));
        let _ = judge_client_hello(b, &[7; 32], None);
    }
    if let Some(b) = data
        .get(..SERVER_HELLO_LEN)
        .and_then(|b| <&[u8; SERVER_HELLO_LEN]>::try_from(b).ok())
    {
        if let Ok((server, _)) = answer_server_hello(b, [9; 32], Some(&secret)) {
            let _ = check_server_accept(b, &server, &[9; 32], Some(&secret));
        }
        let _ = answer_server_hello(b, [9; 32], None);
    }
}

/// A decoded frame encodes to bytes that decode to the same frame.
fn roundtrip(frame: &Frame, limits: &FrameLimits) {
    let bytes = match frame {
        Frame::Batch { seq, entries } => {
            if entries.iter().any(Result::is_err) {
                return;
            }
            let encoded: Vec<Vec<u8>> = entries.iter().flatten().map(Envelope::encode).collect();
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            encode_batch(*seq, &refs)
        }
        Frame::Ack { seq, verdicts } => encode_ack(*seq, verdicts),
        Frame::Ping { seq } => encode_ping(*seq),
        Frame::Pong { seq } => encode_pong(*seq),
        Frame::Error { message } => encode_error(message),
    };
    let again = decode_frame(&bytes[FRAME_HEADER_LEN..], limits);
    assert_eq!(
        again.as_ref(),
        Ok(frame),
        "frame did not survive a round trip"
    );
}

/// Drive both sides of the handshake from arbitrary bytes (the handshake fuzz
/// target and the corpus replay call this). First an honest exchange with
/// the input's nonces, each side with or without the secret as the first
/// byte says: peers that agree must succeed, peers that do not must stop
/// where the protocol says. Then the rest of the input plays an attacker
/// that sends made-up messages, messages of the honest exchange (whole,
/// cut, spliced, or in the wrong place) and replays to a listener and a
/// sender whose nonces it does not choose: nothing may panic, and no
/// message passes a secret check unless it is a replay for the very same
/// nonces.
pub fn fuzz_handshake(data: &[u8]) {
    const VICTIM_SERVER_NONCE: [u8; 32] = [0xA5; 32];
    const VICTIM_CLIENT_NONCE: [u8; 32] = [0x5A; 32];
    let secret = Secret::new(b"fuzzing-secret-0123456789");
    let mut input = FuzzInput(data);
    let setup = input.byte();
    let server_secret = (setup & 1 != 0).then_some(&secret);
    let client_secret = (setup & 2 != 0).then_some(&secret);
    let (ns, nc) = (input.arr32(), input.arr32());

    // The honest exchange.
    let hello = ServerHello {
        version: PROTOCOL_VERSION,
        flags: if server_secret.is_some() {
            FLAG_SECRET
        } else {
            0
        },
        nonce: ns,
    }
    .encode();
    let mut observed: Vec<Vec<u8>> = vec![hello.to_vec()];
    let answered = answer_server_hello(&hello, nc, client_secret);
    match (server_secret.is_some(), client_secret.is_some()) {
        (true, false) => assert_eq!(answered, Err(HandshakeRefusal::SecretRequired)),
        (false, true) => assert_eq!(answered, Err(HandshakeRefusal::SecretNotOffered)),
        _ => assert!(answered.is_ok(), "honest peers disagree: {answered:?}"),
    }
    let honest_server = match answered {
        Ok((server, client_hello)) => {
            let client_hello = client_hello.encode();
            let (accept, verdict) = judge_client_hello(&client_hello, &ns, server_secret);
            assert!(verdict.is_ok(), "honest client hello refused: {verdict:?}");
            let accept = accept.encode();
            assert_eq!(
                check_server_accept(&accept, &server, &nc, client_secret),
                Ok(()),
                "honest accept refused"
            );
            // Honest messages in the wrong place are refused wherever a
            // secret is checked.
            for wrong in [&hello[..], &accept[..]] {
                if server_secret.is_some() {
                    assert!(
                        judge_client_hello(&fit(wrong), &ns, server_secret)
                            .1
                            .is_err()
                    );
                }
            }
            for wrong in [&hello[..], &client_hello[..]] {
                assert!(check_server_accept(&fit(wrong), &server, &nc, client_secret).is_err());
            }
            observed.push(client_hello.to_vec());
            observed.push(accept.to_vec());
            Some(server)
        }
        Err(_) => None,
    };

    // The attacker.
    while !input.is_empty() {
        let op = input.byte();
        let message = input.message(&observed);
        match op % 4 {
            // A client hello at a listener with its own nonce.
            0 => {
                let bytes = fit::<CLIENT_HELLO_LEN>(&message);
                let (accept, verdict) =
                    judge_client_hello(&bytes, &VICTIM_SERVER_NONCE, Some(&secret));
                if verdict.is_ok() {
                    assert!(
                        ns == VICTIM_SERVER_NONCE && client_secret.is_some(),
                        "a client hello not made for this listener's nonce passed the secret check"
                    );
                } else {
                    assert_ne!(accept.status, AcceptStatus::Ok as u8);
                    assert_eq!(accept.mac, [0; 32], "a refusal must not carry a proof");
                }
                let _ = judge_client_hello(&bytes, &VICTIM_SERVER_NONCE, None);
            }
            // A server hello, then an accept, at a sender with its own nonce.
            1 => {
                let bytes = fit::<SERVER_HELLO_LEN>(&message);
                let _ = answer_server_hello(&bytes, VICTIM_CLIENT_NONCE, None);
                if let Ok((server, _)) =
                    answer_server_hello(&bytes, VICTIM_CLIENT_NONCE, Some(&secret))
                {
                    let accept = fit::<SERVER_ACCEPT_LEN>(&input.message(&observed));
                    if check_server_accept(&accept, &server, &VICTIM_CLIENT_NONCE, Some(&secret))
                        .is_ok()
                    {
                        assert!(
                            nc == VICTIM_CLIENT_NONCE
                                && server.nonce == ns
                                && server_secret.is_some(),
                            "an accept not made for this sender's nonce passed the secret check"
                        );
                    }
                }
            }
            // An accept at the honest sender, after its own exchange.
            2 => {
                if let Some(server) = &honest_server {
                    let accept = fit::<SERVER_ACCEPT_LEN>(&message);
                    if check_server_accept(&accept, server, &nc, client_secret).is_ok()
                        && client_secret.is_some()
                    {
                        assert_eq!(
                            &accept[8..],
                            &observed[2][8..],
                            "only the listener's own proof passes"
                        );
                    }
                }
            }
            // The decoders alone: what decodes encodes to what decodes the same.
            _ => {
                if let Ok(h) = ServerHello::decode(&fit(&message)) {
                    assert_eq!(ServerHello::decode(&h.encode()).as_ref(), Ok(&h));
                }
                if let Ok(h) = ClientHello::decode(&fit(&message)) {
                    assert_eq!(ClientHello::decode(&h.encode()).as_ref(), Ok(&h));
                }
                if let Ok(a) = ServerAccept::decode(&fit(&message)) {
                    assert_eq!(ServerAccept::decode(&a.encode()).as_ref(), Ok(&a));
                }
            }
        }
    }
}

/// The first `N` bytes of `b`, zero-padded.
fn fit<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// The fuzz input, read front to back; reads past the end give zeros.
struct FuzzInput<'a>(&'a [u8]);

impl<'a> FuzzInput<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn arr32(&mut self) -> [u8; 32] {
        fit(self.take(32))
    }
    /// Up to three pieces, each either bytes of the input or a slice of a
    /// message seen in the honest exchange.
    fn message(&mut self, observed: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces = 1 + self.byte() % 3;
        for _ in 0..pieces {
            let len = usize::from(self.byte()) % (CLIENT_HELLO_LEN + 1);
            if self.byte().is_multiple_of(2) {
                out.extend_from_slice(self.take(len));
            } else {
                let seen = &observed[usize::from(self.byte()) % observed.len()];
                let from = usize::from(self.byte()) % seen.len();
                let to = (from + len).min(seen.len());
                out.extend_from_slice(&seen[from..to]);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER_LEN..]
    }

    #[test]
    fn frames_round_trip() {
        let limits = FrameLimits::default();
        let a = Envelope::new("A", b"{}".to_vec());
        let b = Envelope::new("B", vec![1; 300]);
        let (ea, eb) = (a.encode(), b.encode());
        let f = encode_batch(7, &[&ea, &eb]);
        assert_eq!(
            frame_len(f[..4].try_into().unwrap(), limits.max_frame).unwrap(),
            f.len() - 4
        );
        assert_eq!(
            decode_frame(body(&f), &limits).unwrap(),
            Frame::Batch {
                seq: 7,
                entries: vec![Ok(a), Ok(b)]
            }
        );
        let verdicts = vec![
            Verdict::Accepted,
            Verdict::Rejected("no plugin handles X".into()),
            Verdict::UnknownDestination("no queue q".into()),
        ];
        assert_eq!(
            decode_frame(body(&encode_ack(9, &verdicts)), &limits).unwrap(),
            Frame::Ack { seq: 9, verdicts }
        );
        assert_eq!(
            decode_frame(body(&encode_ping(3)), &limits).unwrap(),
            Frame::Ping { seq: 3 }
        );
        assert_eq!(
            decode_frame(body(&encode_pong(3)), &limits).unwrap(),
            Frame::Pong { seq: 3 }
        );
        assert_eq!(
            decode_frame(body(&encode_error("bye")), &limits).unwrap(),
            Frame::Error {
                message: "bye".into()
            }
        );
    }

    #[test]
    fn lengths_are_checked_before_anything_is_read() {
        assert_eq!(
            frame_len(0u32.to_le_bytes(), 1024),
            Err(WireError::EmptyFrame)
        );
        assert_eq!(frame_len(1024u32.to_le_bytes(), 1024), Ok(1024));
        assert_eq!(
            frame_len(1025u32.to_le_bytes(), 1024),
            Err(WireError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert!(matches!(
            frame_len(u32::MAX.to_le_bytes(), 1024),
            Err(WireError::FrameTooLarge { .. })
        ));
        let limits = FrameLimits::default();
        // A batch claiming 4 billion entries in a few bytes.
        let mut f = vec![KIND_BATCH];
        f.extend_from_slice(&1u64.to_le_bytes());
        f.push(ENVELOPE_VERSION);
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&f, &limits),
            Err(WireError::TooMany { .. })
        ));
        // Within the count limit but more than the bytes hold.
        let mut f = vec![KIND_BATCH];
        f.extend_from_slice(&1u64.to_le_bytes());
        f.push(ENVELOPE_VERSION);
        f.extend_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            decode_frame(&f, &limits),
            Err(WireError::Truncated("batch entries"))
        );
    }

    #[test]
    fn one_bad_envelope_is_rejected_alone() {
        let good = Envelope::new("A", b"{}".to_vec()).encode();
        let f = encode_batch(1, &[&good, b"garbage", &good]);
        let Frame::Batch { entries, .. } = decode_frame(body(&f), &FrameLimits::default()).unwrap()
        else {
            panic!()
        };
        assert!(entries[0].is_ok() && entries[1].is_err() && entries[2].is_ok());
    }

    #[test]
    fn every_truncation_of_every_frame_is_an_error() {
        let limits = FrameLimits::default();
        let good = Envelope::new("A", b"{}".to_vec()).encode();
        for f in [
            encode_batch(1, &[&good]),
            encode_ack(1, &[Verdict::Rejected("r".into())]),
            encode_ping(1),
            encode_error("x"),
        ] {
            for cut in 0..f.len() - FRAME_HEADER_LEN {
                assert!(
                    decode_frame(&body(&f)[..cut], &limits).is_err(),
                    "cut {cut}"
                );
            }
        }
        assert_eq!(
            decode_frame(&[99], &limits),
            Err(WireError::UnknownKind(99))
        );
    }

    #[test]
    fn handshake_with_and_without_the_secret() {
        let s = Secret::new(b"0123456789abcdef");
        let wrong = Secret::new(b"fedcba9876543210");
        let server = ServerHello {
            version: PROTOCOL_VERSION,
            flags: FLAG_SECRET,
            nonce: [1; 32],
        };
        let (srv, hello) = answer_server_hello(&server.encode(), [2; 32], Some(&s)).unwrap();
        let (accept, ok) = judge_client_hello(&hello.encode(), &server.nonce, Some(&s));
        assert!(ok.is_ok());
        check_server_accept(&accept.encode(), &srv, &[2; 32], Some(&s)).unwrap();
        // The wrong secret is refused on both sides.
        let (_, bad) = answer_server_hello(&server.encode(), [2; 32], Some(&wrong)).unwrap();
        let (accept, refused) = judge_client_hello(&bad.encode(), &server.nonce, Some(&s));
        assert_eq!(refused.unwrap_err(), HandshakeRefusal::WrongSecret);
        assert_eq!(
            check_server_accept(&accept.encode(), &srv, &[2; 32], Some(&wrong)),
            Err(HandshakeRefusal::WrongSecret)
        );
        // A listener that does not know the secret cannot fake its proof.
        let fake = ServerAccept {
            status: 0,
            mac: [0; 32],
        };
        assert_eq!(
            check_server_accept(&fake.encode(), &srv, &[2; 32], Some(&s)),
            Err(HandshakeRefusal::ServerProofWrong)
        );
        // A replayed client hello does not fit a new server nonce.
        let (_, replay) = judge_client_hello(&hello.encode(), &[3; 32], Some(&s));
        assert_eq!(replay.unwrap_err(), HandshakeRefusal::WrongSecret);
        // No secret on one side only.
        assert_eq!(
            answer_server_hello(&server.encode(), [2; 32], None).unwrap_err(),
            HandshakeRefusal::SecretRequired
        );
        let open = ServerHello { flags: 0, ..server };
        assert_eq!(
            answer_server_hello(&open.encode(), [2; 32], Some(&s)).unwrap_err(),
            HandshakeRefusal::SecretNotOffered
        );
        let mut garbage = [0u8; CLIENT_HELLO_LEN];
        garbage[..4].copy_from_slice(b"GET ");
        assert!(matches!(
            judge_client_hello(&garbage, &[1; 32], None).1,
            Err(HandshakeRefusal::Malformed(WireError::BadMagic(_)))
        ));
    }

    #[test]
    fn handshake_fuzz_entry_point_survives_simple_inputs() {
        for setup in 0..4u8 {
            let mut input = vec![setup];
            input.extend_from_slice(&[0x11; 32]);
            input.extend_from_slice(&[0x22; 32]);
            fuzz_handshake(&input);
            // Replays of every honest message to every victim, whole.
            for op in 0..4u8 {
                for seen in 0..3u8 {
                    input.extend_from_slice(&[op, 0, 72, 1, seen, 0, 0, 40, 1, seen, 0]);
                }
            }
            fuzz_handshake(&input);
        }
        fuzz_handshake(&[]);
        fuzz_handshake(&[3; 200]);
    }

    #[test]
    fn fuzz_entry_point_survives_simple_inputs() {
        let good = Envelope::new("A", b"{}".to_vec()).encode();
        for input in [
            Vec::new(),
            vec![0; 3],
            encode_batch(1, &[&good]),
            encode_ack(2, &[Verdict::Accepted]),
            [encode_ping(1), encode_pong(1)].concat(),
            u32::MAX.to_le_bytes().to_vec(),
        ] {
            fuzz_decode(&input);
        }
    }
}
