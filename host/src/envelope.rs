//! The envelope and its one binary codec.
//!
//! This module owns [`Envelope`] (the record every message travels in) and the
//! single binary layout used both on the TCP wire and as the stored `body`
//! column. Nothing else in the host encodes or decodes envelopes. It also
//! turns an envelope into its inbox row ([`local_row`]), which the receiving
//! transports, the worker and the `send` command all write.
//!
//! # Layout (version 1)
//!
//! All integers are little-endian. A *string* or *bytes* field is a `u32`
//! length followed by that many bytes (strings are UTF-8). An *optional* field
//! is a presence byte (`0` = absent, `1` = present, anything else is an error)
//! followed, when present, by the value.
//!
//! | field             | encoding                                        |
//! |-------------------|-------------------------------------------------|
//! | version           | `u8`, always [`VERSION`] (`1`)                  |
//! | `id`              | 16 bytes, the UUID in big-endian (RFC 9562) order |
//! | `message_type`    | string                                          |
//! | `content_type`    | string                                          |
//! | `body`            | bytes                                           |
//! | `destination`     | optional string                                 |
//! | `source`          | optional string                                 |
//! | `reply_uri`       | optional string                                 |
//! | `correlation_id`  | optional string                                 |
//! | `conversation_id` | optional string                                 |
//! | `causation_id`    | optional string                                 |
//! | `headers`         | `u32` count, then count × (key string, value string), keys ascending |
//! | `attempts`        | `u32`                                           |
//! | `scheduled_at`    | optional `i64` (ms since the Unix epoch)        |
//! | `deliver_by`      | optional `i64` (ms since the Unix epoch)        |
//! | `sent_at`         | `i64` (ms since the Unix epoch)                 |
//!
//! The envelope must end exactly after `sent_at`; extra bytes are an error.
//! Header keys must be strictly ascending (byte-wise, as [`BTreeMap`] orders
//! them): duplicates or out-of-order keys are an error. Together with the
//! other rules this makes the encoding canonical: bytes that decode
//! re-encode to exactly the same bytes.
//!
//! Batches of envelopes are framed by the wire protocol
//! (`transport::wire`), not here: one bad envelope in a batch is refused
//! alone there, so this module decodes one envelope at a time.
//!
//! # Bounds
//!
//! Decoding never trusts a length: every length or count is checked against
//! [`Limits`] *and* against the bytes remaining in the input before anything
//! is allocated, so a hostile input can make the decoder allocate at most a
//! small multiple of its own size.
//!
//! Encoding is infallible. A field longer than `u32::MAX` bytes cannot be
//! represented; its length is written as `u32::MAX`, which every decoder with
//! sane limits rejects. Callers bound bodies well below that (see
//! [`Limits::max_body`]).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::address::Destination;
use crate::store::NewIncoming;

/// The codec version this module writes and the only one it reads.
pub const VERSION: u8 = 1;

/// The default `content_type` of a new envelope.
pub(crate) const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// One message: routing metadata, headers and an opaque body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id (UUIDv7 for envelopes created here).
    pub id: Uuid,
    pub message_type: String,
    /// MIME type of `body`, default `application/json`.
    pub content_type: String,
    pub body: Vec<u8>,
    /// Destination, e.g. `local://audit`.
    pub destination: Option<Destination>,
    pub source: Option<String>,
    pub reply_uri: Option<String>,
    pub correlation_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The id of the message whose handler sent this one.
    pub causation_id: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Handling attempts made so far.
    pub attempts: u32,
    /// Not to be handled before this time (ms since the Unix epoch).
    pub scheduled_at: Option<i64>,
    /// Expiry: not to be delivered after this time (ms since the Unix epoch).
    pub deliver_by: Option<i64>,
    /// When the envelope was created (ms since the Unix epoch).
    pub sent_at: i64,
}

/// Bounds the decoder enforces on untrusted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `body`, in bytes. Default 16 MiB.
    pub max_body: usize,
    /// Most headers per envelope. Default 256.
    pub max_headers: usize,
    /// Longest accepted string field (each one, header keys and values
    /// included), in bytes. Default 64 KiB.
    pub max_string: usize,
    /// Most envelopes per batch. Default 10 000.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 * 1024 * 1024,
            max_headers: 256,
            max_string: 64 * 1024,
            max_batch: 10_000,
        }
    }
}

/// Why bytes could not be decoded. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is empty or starts with a version this codec does not read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The input ended in the middle of a field.
    #[error("truncated while reading {field}")]
    Truncated { field: &'static str },
    /// A length or count is larger than the configured limit.
    #[error("{what} {actual} exceeds limit {limit}")]
    LimitExceeded {
        what: &'static str,
        actual: usize,
        limit: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in {field}")]
    InvalidUtf8 { field: &'static str },
    /// An optional field's presence byte is neither 0 nor 1.
    #[error("invalid presence byte {value} for {field}")]
    InvalidPresence { field: &'static str, value: u8 },
    /// The same header key appears twice.
    #[error("duplicate header key {key:?}")]
    DuplicateHeader { key: String },
    /// Header keys are not in ascending byte order.
    #[error("header key {key:?} out of order (keys must be ascending)")]
    HeaderOrder { key: String },
    /// Bytes remain after the last field.
    #[error("trailing bytes: {count} byte(s) after the {what}")]
    TrailingBytes { what: &'static str, count: usize },
}

/// Milliseconds since the Unix epoch, from the system clock (negative if
/// the clock is set before 1970).
pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

impl Envelope {
    /// A new envelope with a fresh UUIDv7 id, `application/json` content
    /// type, `sent_at` = now and everything else empty.
    pub fn new(message_type: impl Into<String>, body: Vec<u8>) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            message_type: message_type.into(),
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            body,
            destination: None,
            source: None,
            reply_uri: None,
            correlation_id: None,
            conversation_id: None,
            causation_id: None,
            headers: BTreeMap::new(),
            attempts: 0,
            scheduled_at: None,
            deliver_by: None,
            sent_at: now_ms(),
        }
    }

    /// True when `deliver_by` is set and `now_ms` is past it (the deadline
    /// itself is still in time).
    pub(crate) fn is_expired(&self, now_ms: i64) -> bool {
        self.deliver_by.is_some_and(|deadline| now_ms > deadline)
    }

    /// The encoded form (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded form to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(VERSION);
        out.extend_from_slice(self.id.as_bytes());
        put_bytes(out, self.message_type.as_bytes());
        put_bytes(out, self.content_type.as_bytes());
        put_bytes(out, &self.body);
        for field in self.optional_strings() {
            put_opt_str(out, field);
        }
        put_u32(out, len_u32(self.headers.len()));
        for (key, value) in &self.headers {
            put_bytes(out, key.as_bytes());
            put_bytes(out, value.as_bytes());
        }
        put_u32(out, self.attempts);
        put_opt_i64(out, self.scheduled_at);
        put_opt_i64(out, self.deliver_by);
        out.extend_from_slice(&self.sent_at.to_le_bytes());
    }

    /// Decodes one envelope with the default [`Limits`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
        Self::decode_with(bytes, &Limits::default())
    }

    /// Decodes one envelope; `bytes` must hold exactly one encoding.
    pub(crate) fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Envelope, CodecError> {
        let mut r = Reader { buf: bytes, limits };
        r.version()?;
        let envelope = r.envelope()?;
        r.finish("envelope")?;
        Ok(envelope)
    }

    /// The optional string fields in their encoded order (the destination
    /// as written, whether or not it parses).
    fn optional_strings(&self) -> [Option<&str>; 6] {
        [
            self.destination.as_ref().map(Destination::uri),
            self.source.as_deref(),
            self.reply_uri.as_deref(),
            self.correlation_id.as_deref(),
            self.conversation_id.as_deref(),
            self.causation_id.as_deref(),
        ]
    }

    /// Exact length of the encoding.
    fn encoded_len(&self) -> usize {
        let opt = |s: Option<&str>| 1 + s.map_or(0, |s| 4 + s.len());
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let options: usize = self.optional_strings().into_iter().map(opt).sum();
        let time = |t: Option<i64>| 1 + t.map_or(0, |_| 8);
        1 + 16
            + (4 + self.message_type.len())
            + (4 + self.content_type.len())
            + (4 + self.body.len())
            + options
            + 4
            + headers
            + 4
            + time(self.scheduled_at)
            + time(self.deliver_by)
            + 8
    }
}

/// The inbox row of an envelope for a local queue (or of a scheduled one).
pub fn local_row(env: &Envelope) -> NewIncoming {
    NewIncoming {
        id: env.id,
        message_type: env.message_type.clone(),
        destination: env
            .destination
            .as_ref()
            .map(|d| d.uri().to_string())
            .unwrap_or_default(),
        owner_id: 0,
        execute_at: env.scheduled_at,
        attempts: 0,
        body: env.encode(),
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, len_u32(bytes.len()));
    out.extend_from_slice(bytes);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A cursor over untrusted input.
struct Reader<'a> {
    buf: &'a [u8],
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() {
            return Err(CodecError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, CodecError> {
        self.array(field).map(i64::from_le_bytes)
    }

    fn version(&mut self) -> Result<(), CodecError> {
        match self.buf.first() {
            Some(&VERSION) => {
                self.buf = &self.buf[1..];
                Ok(())
            }
            Some(&other) => Err(CodecError::UnsupportedVersion(other)),
            None => Err(CodecError::Truncated { field: "version" }),
        }
    }

    /// A `u32` length (named `what` in limit errors) then that many bytes,
    /// checked against `limit` and the remaining input before slicing.
    fn bytes(
        &mut self,
        what: &'static str,
        field: &'static str,
        limit: usize,
    ) -> Result<&'a [u8], CodecError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(CodecError::LimitExceeded {
                what,
                actual: len,
                limit,
            });
        }
        self.take(len, field)
    }

    fn string(&mut self, what: &'static str, field: &'static str) -> Result<String, CodecError> {
        let raw = self.bytes(what, field, self.limits.max_string)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| CodecError::InvalidUtf8 { field })
    }

    fn presence(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidPresence { field, value }),
        }
    }

    fn opt_string(
        &mut self,
        what: &'static str,
        field: &'static str,
    ) -> Result<Option<String>, CodecError> {
        if self.presence(field)? {
            self.string(what, field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_i64(&mut self, field: &'static str) -> Result<Option<i64>, CodecError> {
        if self.presence(field)? {
            self.i64(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn headers(&mut self) -> Result<BTreeMap<String, String>, CodecError> {
        let count = self.u32("header count")? as usize;
        if count > self.limits.max_headers {
            return Err(CodecError::LimitExceeded {
                what: "header count",
                actual: count,
                limit: self.limits.max_headers,
            });
        }
        // Each header takes at least two length prefixes.
        if count.saturating_mul(8) > self.buf.len() {
            return Err(CodecError::Truncated { field: "headers" });
        }
        let mut headers = BTreeMap::new();
        for _ in 0..count {
            let key = self.string("header key length", "header key")?;
            let value = self.string("header value length", "header value")?;
            if let Some((last, _)) = headers.last_key_value() {
                if key == *last {
                    return Err(CodecError::DuplicateHeader { key });
                }
                if key < *last {
                    return Err(CodecError::HeaderOrder { key });
                }
            }
            headers.insert(key, value);
        }
        Ok(headers)
    }

    /// Everything after the version byte.
    fn envelope(&mut self) -> Result<Envelope, CodecError> {
        let id = Uuid::from_bytes(self.array("id")?);
        let message_type = self.string("message_type length", "message_type")?;
        let content_type = self.string("content_type length", "content_type")?;
        let body = self
            .bytes("body length", "body", self.limits.max_body)?
            .to_vec();
        // Kept as written even when it does not parse: the reader decides
        // (a receiver routes by type, a sender dead-letters).
        let destination = self
            .opt_string("destination length", "destination")?
            .map(Destination::parse);
        let source = self.opt_string("source length", "source")?;
        let reply_uri = self.opt_string("reply_uri length", "reply_uri")?;
        let correlation_id = self.opt_string("correlation_id length", "correlation_id")?;
        let conversation_id = self.opt_string("conversation_id length", "conversation_id")?;
        let causation_id = self.opt_string("causation_id length", "causation_id")?;
        let headers = self.headers()?;
        let attempts = self.u32("attempts")?;
        let scheduled_at = self.opt_i64("scheduled_at")?;
        let deliver_by = self.opt_i64("deliver_by")?;
        let sent_at = self.i64("sent_at")?;
        Ok(Envelope {
            id,
            message_type,
            content_type,
            body,
            destination,
            source,
            reply_uri,
            correlation_id,
            conversation_id,
            causation_id,
            headers,
            attempts,
            scheduled_at,
            deliver_by,
            sent_at,
        })
    }

    fn finish(&self, what: &'static str) -> Result<(), CodecError> {
        match self.buf.len() {
            0 => Ok(()),
            count => Err(CodecError::TrailingBytes { what, count }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Size of the smallest possible encoded envelope (all strings empty,
    /// all options absent, no headers).
    const MIN_ENCODED_LEN: usize = 1 + 16 + 4 + 4 + 4 + 6 + 4 + 4 + 1 + 1 + 8;

    fn minimal() -> Envelope {
        Envelope {
            id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            message_type: String::new(),
            content_type: String::new(),
            body: Vec::new(),
            destination: None,
            source: None,
            reply_uri: None,
            correlation_id: None,
            conversation_id: None,
            causation_id: None,
            headers: BTreeMap::new(),
            attempts: 0,
            scheduled_at: None,
            deliver_by: None,
            sent_at: 0,
        }
    }

    fn full() -> Envelope {
        let mut e = Envelope::new("orders.PlaceOrder", br#"{"order_id":"o-1"}"#.to_vec());
        e.content_type = "application/x-thing; charset=utf-8".into();
        e.destination = Some("local://orders".into());
        e.source = Some("tcp://node-1:7000".into());
        e.reply_uri = Some("local://replies".into());
        e.correlation_id = Some("corr-é-1".into());
        e.conversation_id = Some("conv".into());
        e.causation_id = Some(Uuid::now_v7().to_string());
        e.headers.insert("tenant".into(), "acme".into());
        e.headers.insert("trace".into(), "00-abc-01".into());
        e.headers.insert("empty".into(), String::new());
        e.attempts = 7;
        e.scheduled_at = Some(-5);
        e.deliver_by = Some(i64::MAX);
        e.sent_at = i64::MIN;
        e
    }

    /// Deterministic xorshift64* generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn new_has_defaults() {
        let before = now_ms();
        let e = Envelope::new("T", b"{}".to_vec());
        assert_eq!(e.id.get_version_num(), 7);
        assert_eq!(e.content_type, "application/json");
        assert_eq!(e.attempts, 0);
        assert!(e.sent_at >= before && e.sent_at <= now_ms());
        assert_ne!(e.id, Envelope::new("T", vec![]).id);
    }

    #[test]
    fn round_trip_minimal_and_full() {
        for e in [minimal(), full(), Envelope::new("x", vec![0; 1000])] {
            let bytes = e.encode();
            assert_eq!(bytes.len(), e.encoded_len());
            assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        }
        assert_eq!(minimal().encode().len(), MIN_ENCODED_LEN);
    }

    #[test]
    fn a_destination_that_does_not_parse_decodes_as_written() {
        for uri in ["local://a b", "nowhere", "DURABLE://h:1/audit/"] {
            let mut e = minimal();
            e.destination = Some(crate::address::Destination::parse(uri));
            let bytes = e.encode();
            let back = Envelope::decode(&bytes).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.destination.as_ref().unwrap().uri(), uri);
            assert_eq!(back.encode(), bytes);
        }
    }

    #[test]
    fn encode_into_appends() {
        let e = full();
        let mut out = vec![9, 9];
        e.encode_into(&mut out);
        assert_eq!(&out[..2], &[9, 9]);
        assert_eq!(&out[2..], e.encode().as_slice());
    }

    #[test]
    fn layout_is_stable() {
        let mut e = minimal();
        e.message_type = "T".into();
        e.body = vec![0xAA];
        e.attempts = 2;
        e.deliver_by = Some(1);
        e.sent_at = 3;
        let mut expected = vec![1];
        expected.extend_from_slice(e.id.as_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0, b'T']);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0, 0xAA]);
        expected.extend_from_slice(&[0; 6]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        expected.extend_from_slice(&[2, 0, 0, 0]);
        expected.push(0);
        expected.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(e.encode(), expected);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for e in [minimal(), full()] {
            let bytes = e.encode();
            for cut in 0..bytes.len() {
                let err = Envelope::decode(&bytes[..cut]).unwrap_err();
                assert!(
                    matches!(err, CodecError::Truncated { .. }),
                    "cut {cut}: {err}"
                );
            }
        }
        let err = Envelope::decode(&full().encode()[..17]).unwrap_err();
        assert_eq!(err.to_string(), "truncated while reading message_type");
    }

    #[test]
    fn truncated_body_names_body() {
        let mut e = minimal();
        e.body = vec![1, 2, 3];
        let bytes = e.encode();
        let end_of_body_len = 1 + 16 + 4 + 4 + 4;
        let err = Envelope::decode(&bytes[..end_of_body_len + 1]).unwrap_err();
        assert_eq!(err.to_string(), "truncated while reading body");
    }

    #[test]
    fn bad_version() {
        let mut bytes = full().encode();
        bytes[0] = 7;
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err, CodecError::UnsupportedVersion(7));
        assert_eq!(err.to_string(), "unsupported envelope version 7");
        assert!(matches!(
            Envelope::decode(&[]),
            Err(CodecError::Truncated { field: "version" })
        ));
    }

    #[test]
    fn trailing_bytes() {
        let mut bytes = full().encode();
        bytes.push(0);
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            CodecError::TrailingBytes {
                what: "envelope",
                count: 1
            }
        );
        assert!(err.to_string().starts_with("trailing bytes"));
    }

    #[test]
    fn limits_are_enforced() {
        let mut e = minimal();
        e.headers = (0..300)
            .map(|i| (format!("k{i:03}"), String::new()))
            .collect();
        let err = Envelope::decode(&e.encode()).unwrap_err();
        assert_eq!(err.to_string(), "header count 300 exceeds limit 256");

        let limits = Limits {
            max_body: 10,
            max_string: 5,
            ..Limits::default()
        };
        let mut e = minimal();
        e.body = vec![0; 11];
        let err = Envelope::decode_with(&e.encode(), &limits).unwrap_err();
        assert_eq!(err.to_string(), "body length 11 exceeds limit 10");
        e.body = vec![0; 10];
        assert_eq!(Envelope::decode_with(&e.encode(), &limits).unwrap(), e);

        let mut e = minimal();
        e.message_type = "abcdef".into();
        let err = Envelope::decode_with(&e.encode(), &limits).unwrap_err();
        assert_eq!(err.to_string(), "message_type length 6 exceeds limit 5");

        let mut e = minimal();
        e.causation_id = Some("abcdef".into());
        let err = Envelope::decode_with(&e.encode(), &limits).unwrap_err();
        assert_eq!(err.to_string(), "causation_id length 6 exceeds limit 5");

        let mut e = minimal();
        e.headers.insert("k".into(), "abcdef".into());
        let err = Envelope::decode_with(&e.encode(), &limits).unwrap_err();
        assert_eq!(err.to_string(), "header value length 6 exceeds limit 5");
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        // A body length of 4 GiB - 1 with no bytes behind it: limit error
        // with default limits, truncation with unlimited ones.
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(CodecError::LimitExceeded {
                what: "body length",
                ..
            })
        ));
        let unlimited = Limits {
            max_body: usize::MAX,
            max_headers: usize::MAX,
            max_string: usize::MAX,
            max_batch: usize::MAX,
        };
        assert_eq!(
            Envelope::decode_with(&bytes, &unlimited),
            Err(CodecError::Truncated { field: "body" })
        );

        // A header count of u32::MAX with nothing behind it.
        let mut bytes = minimal().encode();
        let headers_at = 1 + 16 + 12 + 6;
        bytes[headers_at..headers_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Envelope::decode_with(&bytes, &unlimited),
            Err(CodecError::Truncated { field: "headers" })
        );
    }

    #[test]
    fn invalid_utf8_presence_and_header_order() {
        let mut e = minimal();
        e.message_type = "ab".into();
        let mut bytes = e.encode();
        bytes[1 + 16 + 4] = 0xFF;
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "invalid UTF-8 in message_type");

        let mut bytes = minimal().encode();
        bytes[1 + 16 + 12] = 2;
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "invalid presence byte 2 for destination");

        let mut e = minimal();
        e.headers.insert("a".into(), "1".into());
        e.headers.insert("b".into(), "2".into());
        let mut bytes = e.encode();
        let second_key = bytes
            .windows(5)
            .position(|w| w == [1, 0, 0, 0, b'b'])
            .unwrap();
        bytes[second_key + 4] = b'a';
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err, CodecError::DuplicateHeader { key: "a".into() });
        bytes[second_key + 4] = b'0';
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err, CodecError::HeaderOrder { key: "0".into() });
    }

    #[test]
    fn expiry() {
        let mut e = minimal();
        assert!(!e.is_expired(i64::MAX));
        e.deliver_by = Some(100);
        assert!(!e.is_expired(99));
        assert!(!e.is_expired(100));
        assert!(e.is_expired(101));
    }

    #[test]
    fn fuzz_random_and_mutated_inputs_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let limits = Limits {
            max_body: 64,
            max_headers: 4,
            max_string: 32,
            max_batch: 8,
        };
        let seeds = [minimal().encode(), full().encode()];
        let mut ok = 0;
        for i in 0..6000 {
            let input: Vec<u8> = if i % 2 == 0 {
                // Pure noise, usually with a valid version byte.
                let len = rng.below(200);
                let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if !v.is_empty() && i % 4 == 0 {
                    v[0] = VERSION;
                }
                v
            } else {
                // A valid encoding with a few bytes flipped, cut or extended.
                let mut v = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len());
                    v[at] = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => 0xFF,
                        _ => v[at] ^ (1 << rng.below(8)),
                    };
                }
                match rng.below(4) {
                    0 => v.truncate(rng.below(v.len() + 1)),
                    1 => v.push(rng.next() as u8),
                    _ => {}
                }
                v
            };
            for l in [&limits, &Limits::default()] {
                if let Ok(e) = Envelope::decode_with(&input, l) {
                    // Whatever decodes re-encodes to the same bytes.
                    assert_eq!(e.encode(), input);
                    ok += 1;
                }
            }
        }
        // Some mutations (e.g. inside the body or id) stay valid.
        assert!(ok > 0);
    }
}
