//! Frames: the 4-byte length prefix, the kind byte, and the payloads of
//! batch, ack, ping, pong and error frames, encoded and decoded without
//! I/O. A length or count is checked against [`FrameLimits`] and against
//! the bytes there are before anything is allocated for it.

use super::WireError;
use super::ack::{self, Verdict};
use super::bytes::{Cursor, len_u32, put_reason};
use crate::envelope::{CodecError, Envelope, Limits, VERSION as ENVELOPE_VERSION};

/// The length prefix of a frame.
pub const FRAME_HEADER_LEN: usize = 4;

const KIND_BATCH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_PING: u8 = 3;
const KIND_PONG: u8 = 4;
const KIND_ERROR: u8 = 5;

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
    let payload = ack::encode_payload(seq, verdicts);
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
            let (seq, verdicts) = ack::decode_payload(&mut c, limits.envelope.max_batch)?;
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
}
