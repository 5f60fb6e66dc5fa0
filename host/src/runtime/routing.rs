//! Where messages go: `publish` fans a message type out to every loaded plugin
//! that subscribes to it (one copy each, addressed to the plugin's local
//! queue) and to every `[[route]]` whose pattern matches it (remote peers),
//! and `send` checks that an explicit destination is one the host can reach
//! and, when remote, one the plugin may reach (its [`Egress`]: the config's
//! route targets and its `allow_send` list).

use std::collections::{BTreeMap, BTreeSet};

use crate::address::{AddressError, Destination, Endpoint, RabbitEndpoint};
use crate::config::RouteConfig;

/// Message type -> subscribing plugins, built from the loaded plugins.
#[derive(Debug, Default, Clone)]
pub struct Router {
    subscribers: BTreeMap<String, Vec<String>>,
    plugins: BTreeSet<String>,
    routes: Vec<RouteConfig>,
}

/// Why a destination cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("no plugin named '{0}' is loaded (destination {local})", local = Endpoint::local(.0.as_str()))]
    UnknownPlugin(String),
    #[error("plugin '{plugin}' does not handle message type '{message_type}'")]
    NotSubscribed {
        plugin: String,
        message_type: String,
    },
    #[error("unsupported destination: {0}")]
    UnknownScheme(AddressError),
    #[error(
        "plugin '{plugin}' may not send to {destination}: a plugin sends only to \
         local queues, the config's [[route]] targets and its [plugins.{plugin}] allow_send list"
    )]
    NotAllowed { plugin: String, destination: String },
}

/// The remote destinations one plugin may name in `send` besides the
/// config's `[[route]]` targets (`[plugins.NAME] allow_send`). Local queues
/// are always allowed; anything else is refused unless listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Egress {
    /// `"*"`: any destination.
    any: bool,
    allowed: Vec<Endpoint>,
}

impl Egress {
    /// From `allow_send` entries (checked by the config; one that is no
    /// endpoint allows nothing).
    pub(crate) fn from_entries(entries: &[String]) -> Egress {
        Egress {
            any: entries.iter().any(|e| e == "*"),
            allowed: entries
                .iter()
                .filter_map(|e| Endpoint::parse(e).ok())
                .collect(),
        }
    }

    /// Any destination (the plugin's own checks only).
    #[cfg(test)]
    pub(crate) fn any() -> Egress {
        Egress {
            any: true,
            allowed: Vec::new(),
        }
    }
}

/// Whether an allowed endpoint covers `to`: the same endpoint, or a whole
/// peer (no queue) or exchange (no routing key) that `to` is part of.
fn covers(allowed: &Endpoint, to: &Endpoint) -> bool {
    match (allowed, to) {
        (Endpoint::Tcp(a), Endpoint::Tcp(t)) => {
            a.addr.eq_ignore_ascii_case(&t.addr)
                && a.durable == t.durable
                && (a.queue.is_none() || a.queue == t.queue)
        }
        (
            Endpoint::Rabbit(RabbitEndpoint::Exchange {
                name: a,
                routing_key: None,
            }),
            Endpoint::Rabbit(RabbitEndpoint::Exchange { name: t, .. }),
        ) => a == t,
        _ => allowed == to,
    }
}

impl Router {
    pub(crate) fn add(&mut self, plugin: &str, subscriptions: &[String]) {
        self.plugins.insert(plugin.to_string());
        for t in subscriptions {
            let subs = self.subscribers.entry(t.clone()).or_default();
            if !subs.iter().any(|p| p == plugin) {
                subs.push(plugin.to_string());
            }
        }
    }

    /// A router with this one's `[[route]]` rules and no plugin (a reload
    /// adds the plugins of the new set).
    pub(crate) fn routes_only(&self) -> Router {
        Router {
            routes: self.routes.clone(),
            ..Router::default()
        }
    }

    /// Add `[[route]]` rules (validated by the config).
    pub(crate) fn add_routes(&mut self, routes: &[RouteConfig]) {
        self.routes.extend(routes.iter().cloned());
    }

    /// The local queues subscribing to a message type.
    pub(crate) fn local_destinations(&self, message_type: &str) -> Vec<Endpoint> {
        self.subscribers
            .get(message_type)
            .map(|subs| subs.iter().map(|p| Endpoint::local(p.as_str())).collect())
            .unwrap_or_default()
    }

    /// The destinations of a published message type: local subscribers,
    /// then matching routes (empty: nobody takes it).
    pub(crate) fn publish_destinations(&self, message_type: &str) -> Vec<Endpoint> {
        let mut out = self.local_destinations(message_type);
        for r in &self.routes {
            if type_matches(&r.message_type, message_type) && !out.contains(&r.to) {
                out.push(r.to.clone());
            }
        }
        out
    }

    /// Check an explicit destination of `sender`'s for a message type. A
    /// remote destination must be a route target or allowed by `egress`;
    /// the peer judges the rest.
    pub(crate) fn check_send(
        &self,
        destination: &Destination,
        message_type: &str,
        sender: &str,
        egress: &Egress,
    ) -> Result<(), RouteError> {
        let plugin = match destination.endpoint() {
            Ok(Endpoint::Local { plugin }) => plugin,
            Ok(remote) => {
                let allowed = egress.any
                    || self.routes.iter().any(|r| covers(&r.to, remote))
                    || egress.allowed.iter().any(|a| covers(a, remote));
                if allowed {
                    return Ok(());
                }
                return Err(RouteError::NotAllowed {
                    plugin: sender.to_string(),
                    destination: destination.uri().to_string(),
                });
            }
            Err(e) => return Err(RouteError::UnknownScheme(e.clone())),
        };
        if !self.plugins.contains(plugin) {
            return Err(RouteError::UnknownPlugin(plugin.to_string()));
        }
        let subscribed = self
            .subscribers
            .get(message_type)
            .is_some_and(|s| s.iter().any(|p| p == plugin));
        if !subscribed {
            return Err(RouteError::NotSubscribed {
                plugin: plugin.to_string(),
                message_type: message_type.to_string(),
            });
        }
        Ok(())
    }

    /// Every message type some plugin handles, and every route pattern.
    pub(crate) fn message_types(&self) -> impl Iterator<Item = &str> {
        self.subscribers
            .keys()
            .map(String::as_str)
            .chain(self.routes.iter().map(|r| r.message_type.as_str()))
    }
}

/// Whether `message_type` matches a route pattern (`*`: any characters).
pub(crate) fn type_matches(pattern: &str, message_type: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = message_type.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn endpoints(uris: &[&str]) -> Vec<Endpoint> {
        uris.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn route_patterns() {
        for (p, t, want) in [
            ("billing.*", "billing.Invoice", true),
            ("billing.*", "billing.", true),
            ("billing.*", "shipping.Label", false),
            ("OrderPlaced", "OrderPlaced", true),
            ("OrderPlaced", "OrderPlacedLater", false),
            ("*", "anything", true),
            ("*.Created", "user.Created", true),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(type_matches(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn publish_fans_out_to_every_subscriber_and_send_checks_the_queue() {
        let mut r = Router::default();
        r.add("audit", &["OrderPlaced".into()]);
        r.add("mail", &["OrderPlaced".into(), "Welcome".into()]);
        assert_eq!(
            r.publish_destinations("OrderPlaced"),
            endpoints(&["local://audit", "local://mail"])
        );
        assert!(r.publish_destinations("Nobody").is_empty());
        let any = Egress::any();
        assert_eq!(
            r.check_send(&"local://mail".into(), "Welcome", "p", &any),
            Ok(())
        );
        assert_eq!(
            r.check_send(&"local://audit".into(), "Welcome", "p", &any),
            Err(RouteError::NotSubscribed {
                plugin: "audit".into(),
                message_type: "Welcome".into()
            })
        );
        assert_eq!(
            r.check_send(&"local://nope".into(), "Welcome", "p", &any),
            Err(RouteError::UnknownPlugin("nope".into()))
        );
        assert_eq!(
            r.check_send(&"durable://h:1".into(), "Welcome", "p", &any),
            Ok(())
        );
        assert!(matches!(
            r.check_send(&"ftp://h:1".into(), "Welcome", "p", &any),
            Err(RouteError::UnknownScheme(_))
        ));
    }

    #[test]
    fn a_remote_send_needs_a_route_or_the_plugins_allow_list() {
        let mut r = Router::default();
        r.add("mail", &["Welcome".into()]);
        r.add_routes(&[RouteConfig {
            message_type: "billing.*".into(),
            to: "durable://billing:7000".parse().unwrap(),
        }]);
        let none = Egress::default();
        let listed = Egress::from_entries(&[
            "tcp://peer:1/audit".into(),
            "rabbitmq://exchange/events".into(),
        ]);
        let check = |to: &str, egress: &Egress| r.check_send(&to.into(), "Welcome", "p", egress);
        // Local queues need no listing.
        assert_eq!(check("local://mail", &none), Ok(()));
        // A route target, as a whole peer: any queue of it.
        assert_eq!(check("durable://billing:7000", &none), Ok(()));
        assert_eq!(check("durable://BILLING:7000/mail", &none), Ok(()));
        // Not the same peer: other port, other scheme.
        for to in [
            "durable://billing:7001",
            "tcp://billing:7000",
            "tcp://peer:1/audit",
        ] {
            assert_eq!(
                check(to, &none),
                Err(RouteError::NotAllowed {
                    plugin: "p".into(),
                    destination: to.into()
                }),
                "{to}"
            );
        }
        assert_eq!(check("tcp://peer:1/audit", &listed), Ok(()));
        // A listed queue allows that queue only.
        assert!(check("tcp://peer:1/mail", &listed).is_err());
        assert!(check("tcp://peer:1", &listed).is_err());
        // A listed exchange allows every routing key of it.
        assert_eq!(check("rabbitmq://exchange/events/x.y", &listed), Ok(()));
        assert!(check("rabbitmq://queue/events", &listed).is_err());
        let e = check("tcp://evil:1", &none).unwrap_err().to_string();
        assert!(
            e.contains("tcp://evil:1") && e.contains("allow_send"),
            "{e}"
        );
        let star = Egress::from_entries(&["*".into()]);
        assert_eq!(check("tcp://evil:1", &star), Ok(()));
    }

    #[test]
    fn routes_add_remote_destinations_after_local_ones() {
        let mut r = Router::default();
        r.add("audit", &["billing.Paid".into()]);
        r.add_routes(&[
            RouteConfig {
                message_type: "billing.*".into(),
                to: "durable://h:1".parse().unwrap(),
            },
            RouteConfig {
                message_type: "other".into(),
                to: "tcp://h:2".parse().unwrap(),
            },
        ]);
        assert_eq!(
            r.publish_destinations("billing.Paid"),
            endpoints(&["local://audit", "durable://h:1"])
        );
        assert_eq!(
            r.publish_destinations("billing.Due"),
            endpoints(&["durable://h:1"])
        );
        assert_eq!(r.local_destinations("billing.Due"), Vec::<Endpoint>::new());
        assert!(r.publish_destinations("shipping").is_empty());
    }
}
