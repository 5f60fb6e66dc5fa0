//! The handshake that opens every connection, before any frame: the
//! listener's hello, the sender's hello with its HMAC proof of the shared
//! secret over both nonces, and the listener's accept with its own proof.
//! Fixed-size messages, encoded and decoded without I/O; each side's
//! judgement of what it read is a pure function here, the I/O is
//! `tcp/conn.rs`'s.

use ring::hmac;

use super::WireError;

/// The first bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"JSPR";
/// The protocol version this host speaks (and the only one it accepts).
pub const PROTOCOL_VERSION: u8 = 1;
pub const SERVER_HELLO_LEN: usize = 40;
pub const CLIENT_HELLO_LEN: usize = 72;
pub const SERVER_ACCEPT_LEN: usize = 40;

/// Server hello flag: the listener requires the shared secret.
pub const FLAG_SECRET: u8 = 1;

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
    pub(crate) fn decode(b: &[u8; CLIENT_HELLO_LEN]) -> Result<ClientHello, WireError> {
        check_magic(b)?;
        Ok(ClientHello {
            version: b[4],
            nonce: arr32(&b[8..40]),
            mac: arr32(&b[40..]),
        })
    }
}

impl ServerAccept {
    pub(crate) fn encode(&self) -> [u8; SERVER_ACCEPT_LEN] {
        let mut out = [0u8; SERVER_ACCEPT_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.status;
        out[8..].copy_from_slice(&self.mac);
        out
    }
    pub(crate) fn decode(b: &[u8; SERVER_ACCEPT_LEN]) -> Result<ServerAccept, WireError> {
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
    pub(crate) fn client_mac(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(CLIENT_LABEL, server_nonce, client_nonce)
    }

    /// The listener's proof: over the sender's nonce, then its own.
    pub(crate) fn server_mac(&self, client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(SERVER_LABEL, client_nonce, server_nonce)
    }

    /// Constant-time check of a proof.
    pub(crate) fn verify(expected: &[u8; 32], got: &[u8; 32]) -> bool {
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

impl HandshakeRefusal {
    /// A stable name of the refusal, for the `cause` field of log lines.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            HandshakeRefusal::Malformed(e) => e.cause(),
            HandshakeRefusal::Version(_) => "protocol-version",
            HandshakeRefusal::WrongSecret => "wrong-secret",
            HandshakeRefusal::SecretRequired => "secret-required",
            HandshakeRefusal::SecretNotOffered => "secret-not-offered",
            HandshakeRefusal::Refused(_) => "refused",
            HandshakeRefusal::ServerProofWrong => "server-proof-wrong",
        }
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
