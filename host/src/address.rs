//! Addresses: what `local://`, `tcp://`, `durable://`, `rabbitmq://`,
//! `amqp://`/`amqps://` (AMQP 1.0) and `asb://` (Azure Service Bus) URIs
//! mean, parsed once. [`Endpoint`] is a URI the host understands;
//! [`Destination`] is a destination as envelopes and outgoing messages carry
//! it (the text exactly as it travels, and what it means). The `local://`
//! scheme is spelled here and nowhere else.
//!
//! A remote URI names a peer (`HOST:PORT`) and, optionally, one plugin's
//! queue on it (`durable://HOST:PORT/PLUGIN`); without a queue the receiving
//! host routes the message by its type to its subscribers.
//!
//! This module depends on no other module of the crate.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The scheme of the host's local queues: one queue per plugin.
const LOCAL_SCHEME: &str = "local://";

/// Longest plugin or queue name, in bytes: a file name's limit, so every
/// plugin the host can load has an address.
const MAX_NAME: usize = 255;

/// A parsed endpoint URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Endpoint {
    /// A plugin's queue on this host.
    Local { plugin: String },
    /// A peer reached over the built-in TCP transport.
    Tcp(TcpEndpoint),
    /// A RabbitMQ queue or exchange.
    Rabbit(RabbitEndpoint),
    /// A node of an AMQP 1.0 broker or an Azure Service Bus entity.
    Amqp(AmqpEndpoint),
}

/// `amqp://HOST:PORT/ADDRESS`, `amqps://HOST:PORT/ADDRESS` or
/// `asb://NAMESPACE/ENTITY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AmqpEndpoint {
    pub broker: AmqpBroker,
    /// The node's address: the path after the `/` that ends the authority,
    /// as the broker spells it (`amqp://h:5672//amq/queue/orders` is
    /// RabbitMQ's `/amq/queue/orders`; `asb://ns/orders` is `orders`).
    pub address: String,
}

/// Where an [`AmqpEndpoint`]'s node lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AmqpBroker {
    /// A plain AMQP 1.0 broker at `HOST:PORT`; `tls` for `amqps://`.
    Plain { addr: String, tls: bool },
    /// An Azure Service Bus namespace (`NAME.servicebus.windows.net`; a
    /// bare `NAME` gets that suffix).
    ServiceBus { namespace: String },
}

/// The kind of a Service Bus entity path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntityKind {
    /// `NAME`: a queue or a topic (the same to a sender).
    QueueOrTopic,
    /// `TOPIC/Subscriptions/NAME`: read only.
    Subscription,
}

impl AmqpEndpoint {
    /// The peer (`amqp://HOST:PORT`, `asb://NAMESPACE`).
    pub(crate) fn peer(&self) -> String {
        match &self.broker {
            AmqpBroker::Plain { addr, tls } => {
                format!("{}://{addr}", if *tls { "amqps" } else { "amqp" })
            }
            AmqpBroker::ServiceBus { namespace } => format!("asb://{namespace}"),
        }
    }

    /// Whether this is a Service Bus entity.
    pub(crate) fn is_service_bus(&self) -> bool {
        matches!(self.broker, AmqpBroker::ServiceBus { .. })
    }

    /// A Service Bus entity path's kind; `None` for a plain broker's node.
    pub(crate) fn entity_kind(&self) -> Option<EntityKind> {
        if !self.is_service_bus() {
            return None;
        }
        let parts: Vec<&str> = self.address.split('/').collect();
        Some(match parts.as_slice() {
            [_, s, _] if s.eq_ignore_ascii_case("subscriptions") => EntityKind::Subscription,
            _ => EntityKind::QueueOrTopic,
        })
    }
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

/// The schemes [`Endpoint::parse`] accepts, for error messages.
pub(crate) const SCHEMES: &str = "local://PLUGIN, tcp://HOST:PORT[/PLUGIN], durable://HOST:PORT[/PLUGIN], \
     rabbitmq://queue/NAME, rabbitmq://exchange/NAME[/ROUTING_KEY], amqp[s]://HOST:PORT/ADDRESS, \
     asb://NAMESPACE/ENTITY";

/// Why a URI is not an endpoint. Every variant names the URI and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `SCHEME://`.
    #[error("{uri:?} is not a URI; accepted: {SCHEMES}")]
    NotAUri { uri: String },
    /// A scheme the host has no transport for.
    #[error("unsupported scheme in {uri:?}; accepted: {SCHEMES}")]
    UnsupportedScheme { uri: String },
    /// `local://` followed by no valid plugin name.
    #[error("{uri:?} names no valid plugin queue")]
    BadPlugin { uri: String },
    /// `tcp://` or `durable://` without `:PORT`.
    #[error("{uri:?} has no port (want {scheme}://HOST:PORT)")]
    NoPort { uri: String, scheme: String },
    /// An empty host or a port that is not 0 to 65535.
    #[error("{uri:?}: {addr:?} is not HOST:PORT with a port from 0 to 65535")]
    BadHostPort { uri: String, addr: String },
    /// The queue path of a TCP URI is not a plugin name.
    #[error("{uri:?}: queue {queue:?} is not a plugin name (letters, digits, '-', '_', '.')")]
    BadQueue { uri: String, queue: String },
    /// `rabbitmq://exchange/NAME` with a name AMQP does not take.
    #[error("{uri:?}: {name:?} is not an exchange name")]
    BadExchange { uri: String, name: String },
    /// `rabbitmq://` followed by neither `queue/NAME` nor `exchange/NAME`.
    #[error("{uri:?}: want rabbitmq://queue/NAME or rabbitmq://exchange/NAME[/ROUTING_KEY]")]
    BadRabbit { uri: String },
    /// `amqp://HOST:PORT` or `asb://NAMESPACE` without a node address.
    #[error("{uri:?} names no node: want {scheme}://{authority}/ADDRESS")]
    NoAddress {
        uri: String,
        scheme: String,
        authority: &'static str,
    },
    /// An `asb://` entity path Service Bus does not take.
    #[error(
        "{uri:?}: {entity:?} is not a Service Bus entity (want QUEUE, TOPIC or TOPIC/Subscriptions/NAME)"
    )]
    BadEntity { uri: String, entity: String },
}

impl AddressError {
    /// The URI at fault.
    #[cfg(test)]
    pub(crate) fn uri(&self) -> &str {
        match self {
            AddressError::NotAUri { uri }
            | AddressError::UnsupportedScheme { uri }
            | AddressError::BadPlugin { uri }
            | AddressError::NoPort { uri, .. }
            | AddressError::BadHostPort { uri, .. }
            | AddressError::BadQueue { uri, .. }
            | AddressError::BadExchange { uri, .. }
            | AddressError::BadRabbit { uri }
            | AddressError::NoAddress { uri, .. }
            | AddressError::BadEntity { uri, .. } => uri,
        }
    }
}

impl TcpEndpoint {
    pub(crate) fn scheme(&self) -> &'static str {
        if self.durable { "durable" } else { "tcp" }
    }

    /// The peer without the queue: one sending agent serves each.
    pub(crate) fn peer_uri(&self) -> String {
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
            Endpoint::Amqp(a) => write!(f, "{}/{}", a.peer(), a.address),
        }
    }
}

impl Endpoint {
    /// The queue of one plugin on this host (`local://PLUGIN`).
    pub(crate) fn local(plugin: impl Into<String>) -> Endpoint {
        Endpoint::Local {
            plugin: plugin.into(),
        }
    }

    /// Parse a URI; the error says what is wrong with it.
    pub(crate) fn parse(uri: &str) -> Result<Endpoint, AddressError> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(AddressError::NotAUri { uri: uri.into() });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "local" => {
                if !valid_name(rest) {
                    return Err(AddressError::BadPlugin { uri: uri.into() });
                }
                Ok(Endpoint::local(rest))
            }
            s @ ("tcp" | "durable") => {
                let (addr, queue) = match rest.split_once('/') {
                    Some((a, "")) => (a, None),
                    Some((a, q)) => (a, Some(q)),
                    None => (rest, None),
                };
                let Some((host, port)) = addr.rsplit_once(':') else {
                    return Err(AddressError::NoPort {
                        uri: uri.into(),
                        scheme: s.into(),
                    });
                };
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(AddressError::BadHostPort {
                        uri: uri.into(),
                        addr: addr.into(),
                    });
                }
                if let Some(q) = queue
                    && !valid_name(q)
                {
                    return Err(AddressError::BadQueue {
                        uri: uri.into(),
                        queue: q.into(),
                    });
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
                            return Err(AddressError::BadExchange {
                                uri: uri.into(),
                                name: name.into(),
                            });
                        }
                        Ok(Endpoint::Rabbit(RabbitEndpoint::Exchange {
                            name: name.to_string(),
                            routing_key: key,
                        }))
                    }
                    _ => Err(AddressError::BadRabbit { uri: uri.into() }),
                }
            }
            s @ ("amqp" | "amqps") => {
                let (addr, address) = rest.split_once('/').unwrap_or((rest, ""));
                let Some((host, port)) = addr.rsplit_once(':') else {
                    return Err(AddressError::NoPort {
                        uri: uri.into(),
                        scheme: s.into(),
                    });
                };
                if host.is_empty() || host.contains('@') || port.parse::<u16>().is_err() {
                    return Err(AddressError::BadHostPort {
                        uri: uri.into(),
                        addr: addr.into(),
                    });
                }
                if address.is_empty() {
                    return Err(AddressError::NoAddress {
                        uri: uri.into(),
                        scheme: s.into(),
                        authority: "HOST:PORT",
                    });
                }
                Ok(Endpoint::Amqp(AmqpEndpoint {
                    broker: AmqpBroker::Plain {
                        addr: addr.to_string(),
                        tls: s == "amqps",
                    },
                    address: address.to_string(),
                }))
            }
            "asb" => {
                let (namespace, entity) = rest.split_once('/').unwrap_or((rest, ""));
                if namespace.is_empty() || entity.is_empty() {
                    return Err(AddressError::NoAddress {
                        uri: uri.into(),
                        scheme: "asb".into(),
                        authority: "NAMESPACE",
                    });
                }
                if !valid_entity(entity) {
                    return Err(AddressError::BadEntity {
                        uri: uri.into(),
                        entity: entity.into(),
                    });
                }
                Ok(Endpoint::Amqp(AmqpEndpoint {
                    broker: AmqpBroker::ServiceBus {
                        namespace: service_bus_namespace(namespace),
                    },
                    address: entity.to_string(),
                }))
            }
            _ => Err(AddressError::UnsupportedScheme { uri: uri.into() }),
        }
    }

    /// Whether a message for this endpoint is stored until the receiver
    /// confirms it (`durable://`, RabbitMQ) rather than sent and forgotten.
    pub(crate) fn is_durable(&self) -> bool {
        match self {
            Endpoint::Tcp(t) => t.durable,
            Endpoint::Local { .. } | Endpoint::Rabbit(_) | Endpoint::Amqp(_) => true,
        }
    }

    /// Whether a message for this endpoint leaves the host.
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self, Endpoint::Local { .. })
    }

    /// The plugin whose local queue this is, if it is one.
    pub(crate) fn local_plugin(&self) -> Option<&str> {
        match self {
            Endpoint::Local { plugin } => Some(plugin),
            _ => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = AddressError;

    fn from_str(uri: &str) -> Result<Endpoint, AddressError> {
        Endpoint::parse(uri)
    }
}

impl TryFrom<String> for Endpoint {
    type Error = AddressError;

    fn try_from(uri: String) -> Result<Endpoint, AddressError> {
        Endpoint::parse(&uri)
    }
}

/// A Service Bus namespace as the host spells it: lower case, and a bare
/// `NAME` is Azure's `NAME.servicebus.windows.net`.
pub(crate) fn service_bus_namespace(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.is_empty() || name.contains('.') {
        name
    } else {
        format!("{name}.servicebus.windows.net")
    }
}

/// A Service Bus entity path: `NAME` or `TOPIC/Subscriptions/NAME`, each
/// name of letters, digits, `.`, `-`, `_` (at most 260 bytes in all).
fn valid_entity(path: &str) -> bool {
    let name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let parts: Vec<&str> = path.split('/').collect();
    path.len() <= 260
        && match parts.as_slice() {
            [q] => name(q),
            [t, s, n] => name(t) && s.eq_ignore_ascii_case("subscriptions") && name(n),
            _ => false,
        }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A destination as an envelope or an outgoing message carries it: the URI
/// exactly as it travels and is stored (so an envelope re-encodes to the
/// same bytes, and a dead letter names what was written), and what it
/// means, parsed once when the destination was made or decoded.
///
/// The host only makes destinations that parse; one that does not can come
/// from a peer or an old row, and is kept with the reason it does not, so
/// each place that reads it decides what that means (a receiver routes the
/// message by its type; a sender dead-letters it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    uri: String,
    endpoint: Result<Endpoint, AddressError>,
}

impl Destination {
    /// Parse a destination URI; one that is no endpoint is kept with why.
    pub fn parse(uri: impl Into<String>) -> Destination {
        let uri = uri.into();
        let endpoint = Endpoint::parse(&uri);
        Destination { uri, endpoint }
    }

    /// The URI as written.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// What the URI means, or why it means nothing.
    pub(crate) fn endpoint(&self) -> Result<&Endpoint, &AddressError> {
        self.endpoint.as_ref()
    }

    /// Whether it names a valid endpoint that leaves the host.
    pub(crate) fn is_remote(&self) -> bool {
        self.endpoint.as_ref().is_ok_and(Endpoint::is_remote)
    }

    /// Whether it names a valid endpoint whose messages are kept until the
    /// receiver confirms them.
    pub(crate) fn is_durable(&self) -> bool {
        self.endpoint.as_ref().is_ok_and(Endpoint::is_durable)
    }

    /// The plugin whose local queue it names, if it is one.
    pub(crate) fn local_plugin(&self) -> Option<&str> {
        self.endpoint.as_ref().ok().and_then(Endpoint::local_plugin)
    }
}

impl From<Endpoint> for Destination {
    fn from(endpoint: Endpoint) -> Destination {
        Destination {
            uri: endpoint.to_string(),
            endpoint: Ok(endpoint),
        }
    }
}

impl From<&str> for Destination {
    fn from(uri: &str) -> Destination {
        Destination::parse(uri)
    }
}

impl From<String> for Destination {
    fn from(uri: String) -> Destination {
        Destination::parse(uri)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
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
            "amqp://127.0.0.1:5672//amq/queue/orders",
            "amqps://broker.example:5671/orders",
            "asb://jasper.servicebus.windows.net/orders",
            "asb://jasper.servicebus.windows.net/events/Subscriptions/billing",
        ] {
            assert_eq!(Endpoint::parse(uri).unwrap().to_string(), uri);
        }
        let Endpoint::Amqp(a) = Endpoint::parse("amqp://h:5672//amq/queue/q").unwrap() else {
            unreachable!()
        };
        assert_eq!(a.address, "/amq/queue/q");
        assert_eq!(a.peer(), "amqp://h:5672");
        assert_eq!(a.entity_kind(), None);
        // A bare namespace name is Azure's.
        let Endpoint::Amqp(a) = Endpoint::parse("asb://Jasper/events/subscriptions/b").unwrap()
        else {
            unreachable!()
        };
        assert_eq!(a.peer(), "asb://jasper.servicebus.windows.net");
        assert_eq!(a.entity_kind(), Some(EntityKind::Subscription));
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
            ("amqp://h:5672", "names no node"),
            ("amqp://h/q", "no port"),
            ("amqp://guest:pw@h:5672/q", "not HOST:PORT"),
            ("asb://ns", "names no node"),
            ("asb://ns/a/b", "not a Service Bus entity"),
            ("asb://ns/a b", "not a Service Bus entity"),
        ] {
            let e = Endpoint::parse(uri).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(uri), "{uri}: {e}");
        }
    }

    #[test]
    fn the_error_names_its_uri() {
        let e = Endpoint::parse("tcp://h").unwrap_err();
        assert_eq!(e.uri(), "tcp://h");
        assert!(matches!(e, AddressError::NoPort { .. }));
    }

    #[test]
    fn local_queues_are_made_and_read_here() {
        let e = Endpoint::local("audit");
        assert_eq!(e.to_string(), "local://audit");
        assert_eq!(Endpoint::parse("local://audit").unwrap(), e);
        assert_eq!(e.local_plugin(), Some("audit"));
        assert!(!e.is_remote() && e.is_durable());
        assert_eq!(
            "durable://h:1".parse::<Endpoint>().unwrap().local_plugin(),
            None
        );
    }

    #[test]
    fn every_loadable_plugin_name_has_an_address() {
        // A plugin is NAME.wasm: NAME may be as long as a file name allows.
        let name = "p".repeat(250);
        let e = Endpoint::local(name.as_str());
        assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e);
        let too_long = format!("local://{}", "p".repeat(256));
        assert!(Endpoint::parse(&too_long).is_err());
    }

    #[test]
    fn a_destination_keeps_its_text_and_what_it_means() {
        let d = Destination::parse("DURABLE://h:1/audit");
        assert_eq!(d.uri(), "DURABLE://h:1/audit");
        assert_eq!(d.to_string(), "DURABLE://h:1/audit");
        assert!(d.is_remote() && d.is_durable());

        let bad = Destination::parse("local://a b");
        assert_eq!(bad.uri(), "local://a b");
        assert!(matches!(
            bad.endpoint(),
            Err(AddressError::BadPlugin { .. })
        ));
        assert!(!bad.is_remote() && !bad.is_durable());
        assert_eq!(bad.local_plugin(), None);

        let made = Destination::from(Endpoint::local("audit"));
        assert_eq!(made, Destination::parse("local://audit"));
        assert_eq!(made.local_plugin(), Some("audit"));
    }
}
