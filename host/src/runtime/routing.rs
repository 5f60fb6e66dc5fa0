//! Where messages go: `publish` fans a message type out to every loaded plugin
//! that subscribes to it (one copy each, addressed to the plugin's local
//! queue) and to every `[[route]]` whose pattern matches it (remote peers),
//! and `send` checks that an explicit destination is one the host can reach.

use std::collections::{BTreeMap, BTreeSet};

use crate::address::{AddressError, Destination, Endpoint};
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

    /// Check an explicit destination for a message type. A remote
    /// destination only needs to be well formed: the peer judges the rest.
    pub(crate) fn check_send(
        &self,
        destination: &Destination,
        message_type: &str,
    ) -> Result<(), RouteError> {
        let plugin = match destination.endpoint() {
            Ok(Endpoint::Local { plugin }) => plugin,
            Ok(_) => return Ok(()),
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
        assert_eq!(r.check_send(&"local://mail".into(), "Welcome"), Ok(()));
        assert_eq!(
            r.check_send(&"local://audit".into(), "Welcome"),
            Err(RouteError::NotSubscribed {
                plugin: "audit".into(),
                message_type: "Welcome".into()
            })
        );
        assert_eq!(
            r.check_send(&"local://nope".into(), "Welcome"),
            Err(RouteError::UnknownPlugin("nope".into()))
        );
        assert_eq!(r.check_send(&"durable://h:1".into(), "Welcome"), Ok(()));
        assert!(matches!(
            r.check_send(&"ftp://h:1".into(), "Welcome"),
            Err(RouteError::UnknownScheme(_))
        ));
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
