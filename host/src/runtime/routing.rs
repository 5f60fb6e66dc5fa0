//! Where messages go: `publish` fans a message type out to every loaded plugin
//! that subscribes to it (one copy each, addressed `local://PLUGIN`) and to
//! every `[[route]]` whose pattern matches it (remote peers), and `send`
//! checks that an explicit destination is one the host can reach.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::RouteConfig;
use crate::config::transport::type_matches;
use crate::transport::endpoint::Endpoint;

/// The URI scheme of the host's local queues: one queue per plugin.
pub const LOCAL_SCHEME: &str = "local://";

/// The queue of one plugin.
pub fn local_uri(plugin: &str) -> String {
    format!("{LOCAL_SCHEME}{plugin}")
}

/// The plugin a `local://` URI names, if it is one.
pub fn local_plugin(uri: &str) -> Option<&str> {
    uri.strip_prefix(LOCAL_SCHEME)
}

/// Message type -> subscribing plugins, built from the loaded plugins.
#[derive(Debug, Default, Clone)]
pub struct Router {
    subscribers: BTreeMap<String, Vec<String>>,
    plugins: BTreeSet<String>,
    routes: Vec<RouteConfig>,
}

/// Why a destination cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no plugin named '{0}' is loaded (destination local://{0})")]
    UnknownPlugin(String),
    #[error("plugin '{plugin}' does not handle message type '{message_type}'")]
    NotSubscribed {
        plugin: String,
        message_type: String,
    },
    #[error("unsupported destination: {0}")]
    UnknownScheme(String),
}

impl Router {
    pub fn add(&mut self, plugin: &str, subscriptions: &[String]) {
        self.plugins.insert(plugin.to_string());
        for t in subscriptions {
            let subs = self.subscribers.entry(t.clone()).or_default();
            if !subs.iter().any(|p| p == plugin) {
                subs.push(plugin.to_string());
            }
        }
    }

    /// Add `[[route]]` rules (validated by the config).
    pub fn add_routes(&mut self, routes: &[RouteConfig]) {
        self.routes.extend(routes.iter().cloned());
    }

    /// The local queues subscribing to a message type.
    pub fn local_destinations(&self, message_type: &str) -> Vec<String> {
        self.subscribers
            .get(message_type)
            .map(|subs| subs.iter().map(|p| local_uri(p)).collect())
            .unwrap_or_default()
    }

    /// The destinations of a published message type: local subscribers,
    /// then matching routes (empty: nobody takes it).
    pub fn publish_destinations(&self, message_type: &str) -> Vec<String> {
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
    pub fn check_send(&self, destination: &str, message_type: &str) -> Result<(), RouteError> {
        match Endpoint::parse(destination) {
            Ok(e) if e.is_remote() => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(RouteError::UnknownScheme(e)),
        }
        let Some(plugin) = local_plugin(destination) else {
            return Err(RouteError::UnknownScheme(destination.to_string()));
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
    pub fn message_types(&self) -> impl Iterator<Item = &str> {
        self.subscribers
            .keys()
            .map(String::as_str)
            .chain(self.routes.iter().map(|r| r.message_type.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_fans_out_to_every_subscriber_and_send_checks_the_queue() {
        let mut r = Router::default();
        r.add("audit", &["OrderPlaced".into()]);
        r.add("mail", &["OrderPlaced".into(), "Welcome".into()]);
        assert_eq!(
            r.publish_destinations("OrderPlaced"),
            vec!["local://audit", "local://mail"]
        );
        assert!(r.publish_destinations("Nobody").is_empty());
        assert_eq!(r.check_send("local://mail", "Welcome"), Ok(()));
        assert_eq!(
            r.check_send("local://audit", "Welcome"),
            Err(RouteError::NotSubscribed {
                plugin: "audit".into(),
                message_type: "Welcome".into()
            })
        );
        assert_eq!(
            r.check_send("local://nope", "Welcome"),
            Err(RouteError::UnknownPlugin("nope".into()))
        );
        assert_eq!(r.check_send("durable://h:1", "Welcome"), Ok(()));
        assert!(matches!(
            r.check_send("ftp://h:1", "Welcome"),
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
                to: "durable://h:1".into(),
            },
            RouteConfig {
                message_type: "other".into(),
                to: "tcp://h:2".into(),
            },
        ]);
        assert_eq!(
            r.publish_destinations("billing.Paid"),
            vec!["local://audit", "durable://h:1"]
        );
        assert_eq!(r.publish_destinations("billing.Due"), vec!["durable://h:1"]);
        assert_eq!(r.local_destinations("billing.Due"), Vec::<String>::new());
        assert!(r.publish_destinations("shipping").is_empty());
    }
}
