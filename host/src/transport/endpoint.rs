//! Destination and listener URIs: what `local://`, `tcp://` and `durable://`
//! mean, parsed once. A remote URI names a peer (`HOST:PORT`) and, optionally,
//! one plugin's queue on it (`durable://HOST:PORT/PLUGIN`); without a queue the
//! receiving host routes the message by its type to its subscribers.

use std::fmt;

use crate::runtime::routing::LOCAL_SCHEME;

/// A parsed endpoint URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A plugin's queue on this host.
    Local { plugin: String },
    /// A peer reached over the built-in TCP transport.
    Tcp(TcpEndpoint),
    /// A RabbitMQ queue or exchange.
    Rabbit(RabbitEndpoint),
}

/// `rabbitmq://queue/NAME` or `rabbitmq://exchange/NAME[/ROUTING_KEY]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RabbitEndpoint {
    /// Published through the default exchange with the queue's name as key.
    Queue(String),
    /// Published to the exchange with the routing key, or the message type
    /// when the URI names none.
    Exchange {
        name: String,
        routing_key: Option<String>,
    },
}

/// `tcp://HOST:PORT[/QUEUE]` or `durable://HOST:PORT[/QUEUE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpEndpoint {
    /// `HOST:PORT` as written.
    pub addr: String,
    /// `durable://`: store and forward on both sides (outgoing row until the
    /// peer acknowledged its inbox commit). `tcp://`: fire and forget.
    pub durable: bool,
    /// One plugin's queue on the peer; `None`: routed by message type there.
    pub queue: Option<String>,
}

impl TcpEndpoint {
    pub fn scheme(&self) -> &'static str {
        if self.durable { "durable" } else { "tcp" }
    }

    /// The peer without the queue: one sending agent serves each.
    pub fn peer_uri(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Local { plugin } => write!(f, "{LOCAL_SCHEME}{plugin}"),
            Endpoint::Tcp(t) => match &t.queue {
                Some(q) => write!(f, "{}/{q}", t.peer_uri()),
                None => f.write_str(&t.peer_uri()),
            },
            Endpoint::Rabbit(RabbitEndpoint::Queue(q)) => write!(f, "rabbitmq://queue/{q}"),
            Endpoint::Rabbit(RabbitEndpoint::Exchange { name, routing_key }) => {
                write!(f, "rabbitmq://exchange/{name}")?;
                match routing_key {
                    Some(k) => write!(f, "/{k}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The schemes [`Endpoint::parse`] accepts, for error messages.
pub const SCHEMES: &str = "local://PLUGIN, tcp://HOST:PORT[/PLUGIN], durable://HOST:PORT[/PLUGIN], \
     rabbitmq://queue/NAME, rabbitmq://exchange/NAME[/ROUTING_KEY]";

impl Endpoint {
    /// Parse a URI; the error says what is wrong with it.
    pub fn parse(uri: &str) -> Result<Endpoint, String> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(format!("{uri:?} is not a URI; accepted: {SCHEMES}"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "local" => {
                if !valid_name(rest) {
                    return Err(format!("{uri:?} names no valid plugin queue"));
                }
                Ok(Endpoint::Local {
                    plugin: rest.to_string(),
                })
            }
            s @ ("tcp" | "durable") => {
                let (addr, queue) = match rest.split_once('/') {
                    Some((a, "")) => (a, None),
                    Some((a, q)) => (a, Some(q)),
                    None => (rest, None),
                };
                let Some((host, port)) = addr.rsplit_once(':') else {
                    return Err(format!("{uri:?} has no port (want {s}://HOST:PORT)"));
                };
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(format!(
                        "{uri:?}: {addr:?} is not HOST:PORT with a port from 0 to 65535"
                    ));
                }
                if let Some(q) = queue
                    && !valid_name(q)
                {
                    return Err(format!(
                        "{uri:?}: queue {q:?} is not a plugin name (letters, digits, '-', '_', '.')"
                    ));
                }
                Ok(Endpoint::Tcp(TcpEndpoint {
                    addr: addr.to_string(),
                    durable: s == "durable",
                    queue: queue.map(str::to_string),
                }))
            }
            "rabbitmq" => {
                let amqp_name = |n: &str| {
                    !n.is_empty()
                        && n.len() <= 255
                        && n.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
                };
                match rest.split_once('/') {
                    Some(("queue", q)) if amqp_name(q) => {
                        Ok(Endpoint::Rabbit(RabbitEndpoint::Queue(q.to_string())))
                    }
                    Some(("exchange", x)) => {
                        let (name, key) = match x.split_once('/') {
                            Some((n, k)) if !k.is_empty() => (n, Some(k.to_string())),
                            Some((n, _)) => (n, None),
                            None => (x, None),
                        };
                        if !amqp_name(name) {
                            return Err(format!("{uri:?}: {name:?} is not an exchange name"));
                        }
                        Ok(Endpoint::Rabbit(RabbitEndpoint::Exchange {
                            name: name.to_string(),
                            routing_key: key,
                        }))
                    }
                    _ => Err(format!(
                        "{uri:?}: want rabbitmq://queue/NAME or rabbitmq://exchange/NAME[/ROUTING_KEY]"
                    )),
                }
            }
            _ => Err(format!(
                "unsupported scheme in {uri:?}; accepted: {SCHEMES}"
            )),
        }
    }

    /// Whether a message for this endpoint is stored until the receiver
    /// confirms it (`durable://`, RabbitMQ) rather than sent and forgotten.
    pub fn is_durable(&self) -> bool {
        match self {
            Endpoint::Tcp(t) => t.durable,
            Endpoint::Local { .. } | Endpoint::Rabbit(_) => true,
        }
    }

    /// Whether a message for this endpoint leaves the host.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Endpoint::Local { .. })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_and_prints_it_back() {
        for uri in [
            "local://audit",
            "tcp://127.0.0.1:2222",
            "durable://example.org:1/audit",
            "durable://[::1]:2222",
            "rabbitmq://queue/orders",
            "rabbitmq://exchange/events",
            "rabbitmq://exchange/events/billing.paid",
        ] {
            assert_eq!(Endpoint::parse(uri).unwrap().to_string(), uri);
        }
        let Endpoint::Tcp(t) = Endpoint::parse("durable://h:9/q").unwrap() else {
            unreachable!()
        };
        assert!(t.durable);
        assert_eq!(t.peer_uri(), "durable://h:9");
        assert_eq!(t.queue.as_deref(), Some("q"));
    }

    #[test]
    fn bad_uris_are_named() {
        for (uri, needle) in [
            ("nothing", "not a URI"),
            ("ftp://h:1", "unsupported scheme"),
            ("tcp://h", "no port"),
            ("tcp://h:99999", "not HOST:PORT"),
            ("durable://:1", "not HOST:PORT"),
            ("durable://h:1/a b", "not a plugin name"),
            ("local://", "no valid plugin"),
            ("rabbitmq://topic/x", "want rabbitmq://queue"),
            ("rabbitmq://queue/", "want rabbitmq://queue"),
        ] {
            let e = Endpoint::parse(uri).unwrap_err();
            assert!(e.contains(needle) && e.contains(uri), "{uri}: {e}");
        }
    }
}
