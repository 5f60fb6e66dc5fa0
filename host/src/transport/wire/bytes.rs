//! The byte-level pieces frames and acknowledgements are made of: a
//! bounds-checked reader over a frame body, lengths as `u32`, and the
//! length-prefixed reason text of acks and error frames.

use super::WireError;

/// Longest reason text in an acknowledgement or error frame.
pub(crate) const MAX_REASON: usize = 1024;

/// `n` as a `u32` length; lengths beyond it are written as `u32::MAX`,
/// which every decoder with sane limits refuses.
pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Cut at a char boundary at most [`MAX_REASON`] bytes in.
pub(super) fn put_reason(out: &mut Vec<u8>, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Reads a frame body front to back; every read names what it reads, for
/// the error when the bytes run out.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub(super) fn reason(&mut self, what: &'static str) -> Result<String, WireError> {
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
    pub(super) fn finish(&self, what: &'static str) -> Result<(), WireError> {
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
