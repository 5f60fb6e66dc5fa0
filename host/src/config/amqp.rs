//! The AMQP 1.0 keys of the config file: `[amqp]` (plain brokers, `amqp://`
//! and `amqps://`) and `[azure_service_bus]` (`asb://`). Parsed and checked
//! here; used by `transport::amqp1`.

use std::path::PathBuf;

use serde::Deserialize;

use super::transport::{ListenConfig, RouteConfig};
use crate::address::{AmqpBroker, AmqpEndpoint, Endpoint, EntityKind};

/// `[amqp]`: how the host talks to plain AMQP 1.0 brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// SASL PLAIN user name; empty: SASL ANONYMOUS.
    pub username: String,
    pub password: String,
    /// Link credit of each listener (unsettled deliveries it holds),
    /// default 500. A listener stores at most half of it in one inbox
    /// transaction, so the next batch arrives while one commits.
    pub prefetch: u32,
    /// How long a listener waits for a batch to fill, default 5 ms.
    pub batch_window_ms: u64,
    /// A PEM file of CA certificates trusted for `amqps://` besides the
    /// public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            username: String::new(),
            password: String::new(),
            prefetch: 500,
            batch_window_ms: 5,
            ca_file: None,
        }
    }
}

/// `[azure_service_bus]`: the namespace `asb://` URIs name and its
/// credentials (a shared access key; tokens are made from it and put on
/// each connection through `$cbs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceBusConfig {
    /// `NAME.servicebus.windows.net` (a bare `NAME` gets that suffix);
    /// every `asb://` URI must name it.
    pub namespace: String,
    /// Connect here instead of `NAMESPACE:5671` (`HOST:PORT`: a proxy, a
    /// local emulator or test double); the namespace still names the
    /// tokens' audience.
    pub endpoint: Option<String>,
    /// TLS to the namespace, default true.
    pub tls: bool,
    /// The shared access policy's name, e.g. `RootManageSharedAccessKey`.
    pub sas_key_name: String,
    /// The policy's key (`sas_key` or `sas_key_file`, not both).
    pub sas_key: Option<String>,
    pub sas_key_file: Option<PathBuf>,
    /// Lifetime of each token, default 3600 s. A token is put again when
    /// 80% of it has passed, on every connection.
    pub token_ttl_s: u64,
    /// Link credit per listener, default 500 (as `[amqp] prefetch`).
    pub prefetch: u32,
    /// How long a listener waits for a batch to fill, default 5 ms.
    pub batch_window_ms: u64,
    /// A PEM file of CA certificates trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for ServiceBusConfig {
    fn default() -> Self {
        ServiceBusConfig {
            namespace: String::new(),
            endpoint: None,
            tls: true,
            sas_key_name: String::new(),
            sas_key: None,
            sas_key_file: None,
            token_ttl_s: 3600,
            prefetch: 500,
            batch_window_ms: 5,
            ca_file: None,
        }
    }
}

impl ServiceBusConfig {
    /// The namespace as `asb://` URIs spell it after parsing.
    pub(crate) fn full_namespace(&self) -> String {
        crate::address::service_bus_namespace(&self.namespace)
    }
}

/// Checks of the AMQP keys and of the `amqp://`/`asb://` URIs in
/// `[[listen]]` and `[[route]]`; the error is the dotted key and what is
/// wrong.
pub(super) fn validate(
    listen: &[ListenConfig],
    routes: &[RouteConfig],
    amqp: &AmqpConfig,
    asb: &ServiceBusConfig,
) -> Result<(), (String, String)> {
    let listened = listen
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listen[{i}].uri"), &l.uri, true));
    let routed = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("route[{i}].to"), &r.to, false));
    let mut service_bus = false;
    for (key, uri, is_listener) in listened.chain(routed) {
        let Endpoint::Amqp(a) = uri else { continue };
        check_endpoint(a, is_listener, asb)
            .map_err(|why| (key, format!("{:?}: {why}", uri.to_string())))?;
        service_bus |= a.is_service_bus();
    }
    if amqp.prefetch < 2 {
        return Err((
            "amqp.prefetch".into(),
            format!("must be at least 2, got {}", amqp.prefetch),
        ));
    }
    if !amqp.password.is_empty() && amqp.username.is_empty() {
        return Err((
            "amqp.password".into(),
            "is set without amqp.username".into(),
        ));
    }
    if asb.prefetch < 2 {
        return Err((
            "azure_service_bus.prefetch".into(),
            format!("must be at least 2, got {}", asb.prefetch),
        ));
    }
    if asb.token_ttl_s < 10 {
        return Err((
            "azure_service_bus.token_ttl_s".into(),
            format!("must be at least 10, got {}", asb.token_ttl_s),
        ));
    }
    if let Some(e) = &asb.endpoint {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err((
                "azure_service_bus.endpoint".into(),
                format!("{e:?} is not HOST:PORT"),
            ));
        }
    }
    if asb.sas_key.is_some() && asb.sas_key_file.is_some() {
        return Err((
            "azure_service_bus.sas_key".into(),
            "set azure_service_bus.sas_key or sas_key_file, not both".into(),
        ));
    }
    if service_bus {
        if asb.sas_key_name.is_empty() {
            return Err((
                "azure_service_bus.sas_key_name".into(),
                "is required with an asb:// URI".into(),
            ));
        }
        if asb.sas_key.is_none() && asb.sas_key_file.is_none() {
            return Err((
                "azure_service_bus.sas_key".into(),
                "is required with an asb:// URI (or sas_key_file)".into(),
            ));
        }
    }
    Ok(())
}

fn check_endpoint(
    a: &AmqpEndpoint,
    is_listener: bool,
    asb: &ServiceBusConfig,
) -> Result<(), String> {
    if let AmqpBroker::ServiceBus { namespace } = &a.broker {
        let configured = asb.full_namespace();
        if configured.is_empty() {
            return Err("an asb:// URI needs [azure_service_bus] namespace".into());
        }
        if *namespace != configured {
            return Err(format!(
                "names namespace {namespace:?}, but [azure_service_bus] namespace is {configured:?}"
            ));
        }
        if !is_listener && a.entity_kind() == Some(EntityKind::Subscription) {
            return Err("a subscription is read only: send to its topic".into());
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listen(uri: &str) -> Vec<ListenConfig> {
        vec![ListenConfig {
            uri: Endpoint::parse(uri).unwrap(),
        }]
    }

    fn keyed() -> ServiceBusConfig {
        ServiceBusConfig {
            namespace: "jasper".into(),
            sas_key_name: "RootManageSharedAccessKey".into(),
            sas_key: Some("c2VjcmV0".into()),
            ..ServiceBusConfig::default()
        }
    }

    #[test]
    fn service_bus_uris_need_the_namespace_and_a_key() {
        let amqp = AmqpConfig::default();
        let l = listen("asb://jasper/orders");
        let none = ServiceBusConfig::default();
        let e = validate(&l, &[], &amqp, &none).unwrap_err();
        assert_eq!(e.0, "listen[0].uri");
        assert!(e.1.contains("namespace"), "{e:?}");
        let mut no_key = keyed();
        no_key.sas_key = None;
        let e = validate(&l, &[], &amqp, &no_key).unwrap_err();
        assert_eq!(e.0, "azure_service_bus.sas_key");
        let other = listen("asb://other/orders");
        let e = validate(&other, &[], &amqp, &keyed()).unwrap_err();
        assert!(e.1.contains("other.servicebus.windows.net"), "{e:?}");
        validate(&l, &[], &amqp, &keyed()).unwrap();
        // A subscription is listened to, never sent to.
        validate(
            &listen("asb://jasper/t/Subscriptions/s"),
            &[],
            &amqp,
            &keyed(),
        )
        .unwrap();
        let route = vec![RouteConfig {
            message_type: "X".into(),
            to: Endpoint::parse("asb://jasper/t/Subscriptions/s").unwrap(),
        }];
        let e = validate(&[], &route, &amqp, &keyed()).unwrap_err();
        assert_eq!(e.0, "route[0].to");
        assert!(e.1.contains("read only"), "{e:?}");
    }

    #[test]
    fn bad_amqp_keys_are_named() {
        let amqp = AmqpConfig {
            prefetch: 1,
            ..AmqpConfig::default()
        };
        let e = validate(&[], &[], &amqp, &ServiceBusConfig::default()).unwrap_err();
        assert_eq!(e.0, "amqp.prefetch");
        let asb = ServiceBusConfig {
            endpoint: Some("nowhere".into()),
            ..ServiceBusConfig::default()
        };
        let e = validate(&[], &[], &AmqpConfig::default(), &asb).unwrap_err();
        assert_eq!(e.0, "azure_service_bus.endpoint");
    }
}
