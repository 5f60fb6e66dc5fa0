//! `[plugins]` as the file has it: the keys every plugin shares, and one
//! `[plugins.NAME]` table per plugin that overrides some of them and says
//! what the plugin may reach (outbound HTTP hosts, send destinations).
//! Parsed and checked here; [`PluginsConfig::settings`] gives one plugin's
//! settings with the shared defaults filled in.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::value::MapAccessDeserializer};

use super::PluginsConfig;
use crate::address::Endpoint;

/// `[plugins.NAME]`: one plugin's settings. A key left out takes the
/// `[plugins]` value; the lists are empty (nothing allowed) unless set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Memory cap per instance in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock limit per message in ms.
    pub deadline_ms: Option<u64>,
    /// Fuel per message, 0 = off.
    pub fuel: Option<u64>,
    /// This plugin's handler calls at once (within `plugins.max_in_flight`).
    pub max_in_flight: Option<usize>,
    /// Hosts the plugin may call over HTTP (`wasi:http`): `https://HOST`,
    /// `http://HOST:PORT` or `https://*.DOMAIN`. Empty: no HTTP at all.
    pub allow_http: Vec<String>,
    /// Remote destinations the plugin may name in `send` besides the
    /// config's `[[route]]` targets: endpoint URIs (`durable://h:7000`
    /// allows every queue of that peer), or `"*"` for any.
    pub allow_send: Vec<String>,
    /// Connect, first byte and between bytes of one HTTP request, in ms.
    pub http_timeout_ms: Option<u64>,
    /// Largest HTTP response body the plugin may read, in bytes.
    pub http_max_response_bytes: Option<u64>,
}

/// One plugin's settings with the `[plugins]` defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSettings {
    pub memory_mb: u64,
    pub deadline_ms: u64,
    pub fuel: u64,
    pub max_in_flight: usize,
    pub allow_http: Vec<String>,
    pub allow_send: Vec<String>,
    pub http_timeout_ms: u64,
    pub http_max_response_bytes: u64,
}

impl PluginsConfig {
    /// The settings plugin `name` runs under.
    pub fn settings(&self, name: &str) -> EffectiveSettings {
        let own = self.each.get(name).cloned().unwrap_or_default();
        EffectiveSettings {
            memory_mb: own.memory_mb.unwrap_or(self.memory_mb),
            deadline_ms: own.deadline_ms.unwrap_or(self.deadline_ms),
            fuel: own.fuel.unwrap_or(self.fuel),
            max_in_flight: own
                .max_in_flight
                .unwrap_or(self.max_in_flight)
                .min(self.max_in_flight),
            allow_http: own.allow_http,
            allow_send: own.allow_send,
            http_timeout_ms: own.http_timeout_ms.unwrap_or(self.http_timeout_ms),
            http_max_response_bytes: own
                .http_max_response_bytes
                .unwrap_or(self.http_max_response_bytes),
        }
    }

    /// `cache_dir` as the runtime takes it: resolved against `base_dir`
    /// (default `.jasper-cache`) when `cache` is on, `None` when off.
    pub(crate) fn resolve_cache_dir(&mut self, base_dir: &std::path::Path) {
        self.cache_dir = self.cache.then(|| {
            let dir = self
                .cache_dir
                .take()
                .unwrap_or_else(|| ".jasper-cache".into());
            super::resolve(base_dir, &dir)
        });
    }

    /// The largest memory cap of any plugin (the size of a pool slot).
    pub(crate) fn largest_memory_mb(&self) -> u64 {
        self.each
            .values()
            .filter_map(|s| s.memory_mb)
            .fold(self.memory_mb, u64::max)
    }

    /// Whether any plugin runs with a fuel budget (fuel is then metered on
    /// the engine for all).
    pub(crate) fn any_fuel(&self) -> bool {
        self.fuel > 0 || self.each.values().any(|s| s.fuel.is_some_and(|f| f > 0))
    }

    /// Range and form checks of the `[plugins.NAME]` tables; the error is
    /// the dotted key and what is wrong.
    pub(crate) fn validate_each(&self) -> Result<(), (String, String)> {
        for (name, s) in &self.each {
            let key = |k: &str| format!("plugins.{name}.{k}");
            if !valid_plugin_name(name) {
                return Err((
                    format!("plugins.{name}"),
                    format!(
                        "{name:?} is neither a [plugins] key nor a plugin name \
                         (letters, digits, '-' or '_'); known keys: {}",
                        FIELDS.join(", ")
                    ),
                ));
            }
            let at_least = |k: &str, v: Option<u64>, min: u64| match v {
                Some(v) if v < min => Err((key(k), format!("must be at least {min}, got {v}"))),
                _ => Ok(()),
            };
            at_least("memory_mb", s.memory_mb, 2)?;
            at_least("deadline_ms", s.deadline_ms, 1)?;
            at_least("max_in_flight", s.max_in_flight.map(|n| n as u64), 1)?;
            at_least("http_timeout_ms", s.http_timeout_ms, 1)?;
            at_least("http_max_response_bytes", s.http_max_response_bytes, 1)?;
            if let Some(n) = s.max_in_flight.filter(|n| *n > self.max_in_flight) {
                return Err((
                    key("max_in_flight"),
                    format!(
                        "must be at most plugins.max_in_flight ({}), got {n}",
                        self.max_in_flight
                    ),
                ));
            }
            for entry in &s.allow_http {
                check_http_entry(entry).map_err(|m| (key("allow_http"), m))?;
            }
            for entry in &s.allow_send {
                if entry != "*" {
                    Endpoint::parse(entry)
                        .map_err(|e| (key("allow_send"), format!("{entry:?}: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

/// A plugin name as the plugin folder makes them (a file stem): letters,
/// digits, '-' or '_'. The runtime names plugins by this rule too.
pub(crate) fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `http(s)://HOST[:PORT]` with nothing after the authority (a `*.` label
/// first allows the subdomains of a domain).
fn check_http_entry(entry: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{entry:?}: {why}; expected http://HOST[:PORT] or https://HOST[:PORT] \
             (HOST may start with '*.')"
        ))
    };
    let Some((scheme, rest)) = entry.split_once("://") else {
        return bad("no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return bad("no host");
    }
    if authority.contains(['/', '?', '#', '@']) {
        return bad("only a scheme, a host and a port");
    }
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside the brackets.
        Some((host, port)) if !port.contains(']') => {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return bad("the port must be 1 to 65535");
            }
            host
        }
        _ => authority,
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty() || host.contains('*') {
        return bad("a '*' may only stand for the first labels ('*.example.com')");
    }
    Ok(())
}

/// The `[plugins]` keys every plugin shares.
const FIELDS: &[&str] = &[
    "dir",
    "memory_mb",
    "deadline_ms",
    "fuel",
    "max_in_flight",
    "max_state_keys",
    "max_state_bytes",
    "max_sends",
    "max_send_bytes",
    "http_timeout_ms",
    "http_max_response_bytes",
    "cache",
    "cache_dir",
    "watch",
];

impl<'de> Deserialize<'de> for PluginsConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PluginsVisitor)
    }
}

struct PluginsVisitor;

impl<'de> Visitor<'de> for PluginsVisitor {
    type Value = PluginsConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the [plugins] table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PluginsConfig, A::Error> {
        let mut c = PluginsConfig::default();
        // Each value is read by toml's own deserializer, so an error keeps
        // the line and the key it is about.
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "dir" => c.dir = map.next_value()?,
                "memory_mb" => c.memory_mb = map.next_value()?,
                "deadline_ms" => c.deadline_ms = map.next_value()?,
                "fuel" => c.fuel = map.next_value()?,
                "max_in_flight" => c.max_in_flight = map.next_value()?,
                "max_state_keys" => c.max_state_keys = map.next_value()?,
                "max_state_bytes" => c.max_state_bytes = map.next_value()?,
                "max_sends" => c.max_sends = map.next_value()?,
                "max_send_bytes" => c.max_send_bytes = map.next_value()?,
                "http_timeout_ms" => c.http_timeout_ms = map.next_value()?,
                "http_max_response_bytes" => c.http_max_response_bytes = map.next_value()?,
                "cache" => c.cache = map.next_value()?,
                "cache_dir" => c.cache_dir = Some(map.next_value()?),
                "watch" => c.watch = map.next_value()?,
                _ => {
                    // toml refuses a key given twice before this sees it.
                    let settings: OnePlugin = map.next_value()?;
                    c.each.insert(key, settings.0);
                }
            }
        }
        Ok(c)
    }
}

/// A `[plugins.NAME]` table; anything else under an unknown key is a typo
/// of a `[plugins]` key.
struct OnePlugin(PluginSettings);

impl<'de> Deserialize<'de> for OnePlugin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OnePluginVisitor)
    }
}

struct OnePluginVisitor;

impl<'de> Visitor<'de> for OnePluginVisitor {
    type Value = OnePlugin;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "one of the [plugins] keys ({}) or a [plugins.NAME] table of one plugin's settings",
            FIELDS.join(", ")
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnePlugin, A::Error> {
        PluginSettings::deserialize(MapAccessDeserializer::new(map)).map(OnePlugin)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check_http_entry;

    #[test]
    fn http_entries() {
        for ok in [
            "https://api.example.com",
            "https://api.example.com/",
            "http://127.0.0.1:8080",
            "https://*.example.com",
            "http://[::1]:8080",
            "http://localhost:1",
        ] {
            assert_eq!(check_http_entry(ok), Ok(()), "{ok}");
        }
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://user@x",
            "https://x:0",
            "https://x:99999",
            "https://*",
            "https://a.*.com",
        ] {
            let e = check_http_entry(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
