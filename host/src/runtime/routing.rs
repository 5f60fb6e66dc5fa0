//! Where messages go: `publish` fans a message type out to every loaded plugin
//! that subscribes to it (one copy each, addressed `local://PLUGIN`), and
//! `send` checks that an explicit destination is one the host can reach.

use std::collections::{BTreeMap, BTreeSet};

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
    #[error("unsupported destination '{0}': this host knows local://PLUGIN queues")]
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

    /// The destinations of a published message type (empty: nobody subscribes).
    pub fn publish_destinations(&self, message_type: &str) -> Vec<String> {
        self.subscribers
            .get(message_type)
            .map(|subs| subs.iter().map(|p| local_uri(p)).collect())
            .unwrap_or_default()
    }

    /// Check an explicit destination for a message type.
    pub fn check_send(&self, destination: &str, message_type: &str) -> Result<(), RouteError> {
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

    /// Every message type some plugin handles.
    pub fn message_types(&self) -> impl Iterator<Item = &str> {
        self.subscribers.keys().map(String::as_str)
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
        assert!(matches!(
            r.check_send("durable://h:1", "Welcome"),
            Err(RouteError::UnknownScheme(_))
        ));
    }
}
