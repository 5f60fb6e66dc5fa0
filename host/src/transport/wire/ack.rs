//! Acknowledgements: a [`Verdict`] per envelope of a batch, and the ack
//! payload that carries them (the frame around it is `frame.rs`'s).

use super::WireError;
use super::bytes::{Cursor, len_u32, put_reason};

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

const STATUS_ACCEPTED: u8 = 0;
const STATUS_REJECTED: u8 = 1;
const STATUS_UNKNOWN_DESTINATION: u8 = 2;

/// The ack payload: the batch's sequence number, a count, then a status
/// byte per verdict (with its reason where it has one).
pub(super) fn encode_payload(seq: u64, verdicts: &[Verdict]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12 + verdicts.len());
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&len_u32(verdicts.len()).to_le_bytes());
    for v in verdicts {
        match v {
            Verdict::Accepted => payload.push(STATUS_ACCEPTED),
            Verdict::Rejected(r) => {
                payload.push(STATUS_REJECTED);
                put_reason(&mut payload, r);
            }
            Verdict::UnknownDestination(r) => {
                payload.push(STATUS_UNKNOWN_DESTINATION);
                put_reason(&mut payload, r);
            }
        }
    }
    payload
}

/// Reads what [`encode_payload`] wrote; the count is checked against
/// `max_batch` and the bytes left (a verdict takes at least one) before
/// anything is allocated for it. The caller checks nothing trails.
pub(super) fn decode_payload(
    c: &mut Cursor<'_>,
    max_batch: usize,
) -> Result<(u64, Vec<Verdict>), WireError> {
    let seq = c.u64("ack sequence number")?;
    let count = c.u32("ack count")? as usize;
    if count > max_batch || count > c.buf.len() {
        return Err(WireError::TooMany {
            what: "ack count",
            actual: count,
            limit: max_batch.min(c.buf.len()),
        });
    }
    let mut verdicts = Vec::with_capacity(count);
    for _ in 0..count {
        verdicts.push(match c.u8("ack status")? {
            STATUS_ACCEPTED => Verdict::Accepted,
            STATUS_REJECTED => Verdict::Rejected(c.reason("ack reason")?),
            STATUS_UNKNOWN_DESTINATION => Verdict::UnknownDestination(c.reason("ack reason")?),
            s => return Err(WireError::BadStatus(s)),
        });
    }
    Ok((seq, verdicts))
}
