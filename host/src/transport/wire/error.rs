//! [`WireError`]: why bytes from a peer were refused, for the frame codec
//! and the handshake messages alike.

use super::handshake::PROTOCOL_VERSION;

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

impl WireError {
    /// A stable name of the refusal, for the `cause` field of log lines.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            WireError::EmptyFrame => "empty-frame",
            WireError::FrameTooLarge { .. } => "frame-too-large",
            WireError::UnknownKind(_) => "unknown-frame-kind",
            WireError::Truncated(_) => "truncated",
            WireError::TooMany { .. } => "too-many",
            WireError::BadUtf8(_) => "bad-utf8",
            WireError::Trailing { .. } => "trailing-bytes",
            WireError::BatchVersion(_) => "batch-version",
            WireError::BadStatus(_) => "bad-ack-status",
            WireError::BadMagic(_) => "bad-magic",
            WireError::BadVersion(_) => "protocol-version",
        }
    }
}
