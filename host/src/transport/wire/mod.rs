//! The wire protocol of `tcp://` and `durable://` (docs/wire-protocol.md),
//! encoded and decoded without I/O so that the fuzz targets and tests drive
//! it directly. Every length is checked against its bound before anything
//! is allocated for it. The connection that does the I/O is
//! `transport::tcp::conn`.
//!
//! - `handshake`: the fixed-size hello / hello / accept messages, the HMAC
//!   proofs of the shared secret ([`Secret`]) and each side's judgement.
//! - `frame`: length-prefixed frames ([`Frame`]) under [`FrameLimits`].
//! - `ack`: the [`Verdict`]s of an acknowledgement and their encoding.
//! - `bytes`: the bounded reader and the reason text frames share.
//! - `error`: [`WireError`], why bytes from a peer were refused.
//! - `fuzz` (tests and `--cfg fuzzing` only): the cargo-fuzz entry points
//!   and the replay of their corpus.

mod ack;
mod bytes;
mod error;
mod frame;
#[cfg(any(test, fuzzing))]
mod fuzz;
mod handshake;

pub use ack::Verdict;
pub use error::WireError;
pub use frame::{
    FRAME_HEADER_LEN, Frame, FrameLimits, decode_frame, encode_ack, encode_batch, encode_error,
    encode_ping, encode_pong, frame_len,
};
#[cfg(fuzzing)]
pub(crate) use fuzz::{fuzz_decode, fuzz_handshake};
pub use handshake::{
    AcceptStatus, CLIENT_HELLO_LEN, ClientHello, FLAG_SECRET, HandshakeRefusal, MAGIC,
    PROTOCOL_VERSION, SERVER_ACCEPT_LEN, SERVER_HELLO_LEN, Secret, ServerAccept, ServerHello,
    answer_server_hello, check_server_accept, judge_client_hello,
};
