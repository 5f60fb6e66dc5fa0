//! [`HostConfig`]: a host's config file, built in code and rendered as TOML.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;

use crate::{Backend, Store, unique_schema};

/// A TOML scalar for [`HostConfig::set`].
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Int(i64),
    Str(String),
    Bool(bool),
    /// An array of strings.
    List(Vec<String>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Self {
        Val::Int(i64::from(v))
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Val::Int(i64::from(v))
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::Int(i64::try_from(v).expect("config value fits i64"))
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Str(v.to_owned())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Str(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::Bool(v)
    }
}

impl From<&[&str]> for Val {
    fn from(v: &[&str]) -> Self {
        Val::List(v.iter().map(|s| (*s).to_owned()).collect())
    }
}
impl From<Vec<String>> for Val {
    fn from(v: Vec<String>) -> Self {
        Val::List(v)
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(i) => write!(f, "{i}"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::List(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Val::Str(item.clone()))?;
                }
                f.write_char(']')
            }
            Val::Str(s) => {
                f.write_char('"')?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        c => f.write_char(c)?,
                    }
                }
                f.write_char('"')
            }
        }
    }
}

/// Builder for the host's TOML config (the keys README.md lists). Only keys that were
/// set are written; the host's defaults apply to the rest.
#[derive(Clone, Debug)]
pub struct HostConfig {
    sections: BTreeMap<String, BTreeMap<String, Val>>,
    /// `[[listen]]` URIs, in order.
    listen: Vec<String>,
    /// `[[route]]` (message_type pattern, to), in order.
    routes: Vec<(String, String)>,
    /// `[[rabbitmq.binding]]` (exchange, queue, routing_key), in order.
    rabbit_bindings: Vec<(String, String, String)>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HostConfig {
    /// node.name = "e2e", storage.url = "sqlite://jasper.db", plugins.dir = "plugins"
    /// (both relative to the config file's folder, as the contract says).
    pub fn new() -> Self {
        HostConfig {
            sections: BTreeMap::new(),
            listen: Vec::new(),
            routes: Vec::new(),
            rabbit_bindings: Vec::new(),
        }
        .set("node", "name", "e2e")
        .set("storage", "url", "sqlite://jasper.db")
        .set("plugins", "dir", "plugins")
    }

    /// [`HostConfig::new`] on `backend`: SQLite as `new()`; PostgreSQL and
    /// MySQL on the test server (env `JASPER_TEST_POSTGRES_URL` /
    /// `JASPER_TEST_MYSQL_URL`) with a schema / table prefix of its own
    /// (`t` + 12 hex digits), so tests run in parallel.
    pub fn on(backend: Backend) -> Self {
        match backend.server_url() {
            None => Self::new(),
            Some(url) => Self::new().storage(&url, &unique_schema()),
        }
    }

    /// `[storage] url` and `schema`.
    pub fn storage(self, url: &str, schema: &str) -> Self {
        self.set("storage", "url", url)
            .set("storage", "schema", schema)
    }

    /// The backend `[storage] url` names (SQLite when unset or unknown).
    pub fn backend(&self) -> Backend {
        match self.get("storage", "url") {
            Some(Val::Str(url)) => Backend::of_url(url).unwrap_or(Backend::Sqlite),
            _ => Backend::Sqlite,
        }
    }

    /// `[storage] schema`, or the host's default `jasper`.
    pub fn schema(&self) -> String {
        match self.get("storage", "schema") {
            Some(Val::Str(s)) => s.clone(),
            _ => "jasper".to_owned(),
        }
    }

    /// Where the store of this config is, with relative SQLite paths resolved
    /// against `dir` (the config file's folder).
    pub fn store(&self, dir: &Path) -> Store {
        let schema = self.schema();
        let url = match self.get("storage", "url") {
            Some(Val::Str(u)) => u.clone(),
            _ => String::new(),
        };
        match self.backend() {
            Backend::Sqlite => Store::Sqlite {
                path: self
                    .sqlite_path(dir)
                    .unwrap_or_else(|| dir.join("jasper.db")),
                schema,
            },
            Backend::Postgres => Store::Postgres { url, schema },
            Backend::Mysql => Store::Mysql { url, schema },
        }
    }

    /// Sets `[section] key = value` (any key: tests of unknown keys use this too).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Val>) -> Self {
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.into());
        self
    }

    pub fn get(&self, section: &str, key: &str) -> Option<&Val> {
        self.sections.get(section).and_then(|s| s.get(key))
    }

    pub fn memory_mb(self, v: u64) -> Self {
        self.set("plugins", "memory_mb", v)
    }
    pub fn deadline_ms(self, v: u64) -> Self {
        self.set("plugins", "deadline_ms", v)
    }
    pub fn max_in_flight(self, v: u64) -> Self {
        self.set("plugins", "max_in_flight", v)
    }
    pub fn batch_size(self, v: u64) -> Self {
        self.set("handling", "batch_size", v)
    }
    pub fn max_attempts(self, v: u64) -> Self {
        self.set("handling", "max_attempts", v)
    }
    pub fn retry_delay_ms(self, v: u64) -> Self {
        self.set("handling", "retry_delay_ms", v)
    }
    pub fn keep_handled_ms(self, v: u64) -> Self {
        self.set("handling", "keep_handled_ms", v)
    }
    pub fn poll_interval_ms(self, v: u64) -> Self {
        self.set("handling", "poll_interval_ms", v)
    }
    pub fn heartbeat_ms(self, v: u64) -> Self {
        self.set("durability", "heartbeat_ms", v)
    }
    pub fn stale_after_ms(self, v: u64) -> Self {
        self.set("durability", "stale_after_ms", v)
    }
    pub fn cleanup_interval_ms(self, v: u64) -> Self {
        self.set("durability", "cleanup_interval_ms", v)
    }
    /// `[node] name`.
    pub fn node_name(self, name: &str) -> Self {
        self.set("node", "name", name)
    }
    /// `[sending] key = value`.
    pub fn sending(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("sending", key, value)
    }
    /// `[tcp] key = value`.
    pub fn tcp(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("tcp", key, value)
    }

    /// Adds a `[[listen]]` table: `uri = "durable://127.0.0.1:PORT"`.
    pub fn listen(mut self, uri: impl Into<String>) -> Self {
        self.listen.push(uri.into());
        self
    }

    /// Adds a `[[route]]` table: `message_type = pattern`, `to = uri`.
    pub fn route(mut self, message_type: impl Into<String>, to: impl Into<String>) -> Self {
        self.routes.push((message_type.into(), to.into()));
        self
    }

    /// `[rabbitmq] key = value`.
    pub fn rabbitmq(self, key: &str, value: impl Into<Val>) -> Self {
        self.set("rabbitmq", key, value)
    }

    /// Adds a `[[rabbitmq.binding]]` table: `exchange`, `queue`, `routing_key`.
    pub fn rabbit_binding(
        mut self,
        exchange: impl Into<String>,
        queue: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.rabbit_bindings
            .push((exchange.into(), queue.into(), routing_key.into()));
        self
    }

    /// The `[[listen]]` URIs, in order.
    pub fn listen_uris(&self) -> &[String] {
        &self.listen
    }

    /// The `[[route]]` tables, in order: (message_type, to).
    pub fn routes(&self) -> &[(String, String)] {
        &self.routes
    }

    /// The TOML text: known sections in the contract's order, then the others,
    /// then the `[[listen]]` and `[[route]]` tables in the order they were added.
    pub fn render(&self) -> String {
        const ORDER: [&str; 5] = ["node", "storage", "plugins", "handling", "durability"];
        let mut names: Vec<&str> = ORDER
            .iter()
            .copied()
            .filter(|s| self.sections.contains_key(*s))
            .collect();
        names.extend(
            self.sections
                .keys()
                .map(String::as_str)
                .filter(|s| !ORDER.contains(s)),
        );
        let mut out = String::from("# written by the jasper-e2e harness\n");
        for name in names {
            let _ = writeln!(out, "\n[{name}]");
            for (k, v) in &self.sections[name] {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        // Arrays of tables last: a `[section]` after them would be fine TOML
        // too, but this way no key can end up in the wrong table.
        for uri in &self.listen {
            let _ = writeln!(out, "\n[[listen]]\nuri = {}", Val::from(uri.as_str()));
        }
        for (pattern, to) in &self.routes {
            let _ = writeln!(
                out,
                "\n[[route]]\nmessage_type = {}\nto = {}",
                Val::from(pattern.as_str()),
                Val::from(to.as_str())
            );
        }
        for (exchange, queue, key) in &self.rabbit_bindings {
            let _ = writeln!(
                out,
                "\n[[rabbitmq.binding]]\nexchange = {}\nqueue = {}\nrouting_key = {}",
                Val::from(exchange.as_str()),
                Val::from(queue.as_str()),
                Val::from(key.as_str())
            );
        }
        out
    }

    /// The SQLite file the config points at, resolved against `dir`.
    fn sqlite_path(&self, dir: &Path) -> Option<PathBuf> {
        let Some(Val::Str(url)) = self.get("storage", "url") else {
            return Some(dir.join("jasper.db"));
        };
        let rest = url.strip_prefix("sqlite://")?;
        let rest = rest.split('?').next().unwrap_or(rest);
        let p = Path::new(rest);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_renders_sections_in_contract_order_with_escaping() {
        let c = HostConfig::new()
            .max_attempts(2)
            .heartbeat_ms(200)
            .memory_mb(32)
            .set("node", "name", "a \"quoted\" \\ name");
        let text = c.render();
        let pos = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing in\n{text}"))
        };
        assert!(pos("[node]") < pos("[storage]"));
        assert!(pos("[storage]") < pos("[plugins]"));
        assert!(pos("[plugins]") < pos("[handling]"));
        assert!(pos("[handling]") < pos("[durability]"));
        assert!(text.contains("max_attempts = 2\n"), "{text}");
        assert!(text.contains("memory_mb = 32\n"), "{text}");
        assert!(text.contains(r#"name = "a \"quoted\" \\ name""#), "{text}");
        assert!(text.contains(r#"url = "sqlite://jasper.db""#), "{text}");
        let dir = Path::new("/x");
        assert_eq!(c.sqlite_path(dir), Some(PathBuf::from("/x/jasper.db")));
        let abs = HostConfig::new().set("storage", "url", "sqlite:///data/j.db?mode=rwc");
        assert_eq!(abs.sqlite_path(dir), Some(PathBuf::from("/data/j.db")));
    }

    #[test]
    fn config_renders_listen_and_route_tables_after_the_sections() {
        let c = HostConfig::new()
            .listen("durable://127.0.0.1:4100")
            .route("OrderPlaced", "durable://127.0.0.1:4200")
            .route("billing.*", "tcp://10.0.0.1:1/queue")
            .sending("ping_interval_ms", 200)
            .node_name("a");
        let text = c.render();
        let pos = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing in\n{text}"))
        };
        assert!(pos("[sending]") < pos("[[listen]]"), "{text}");
        assert!(pos("[[listen]]") < pos("[[route]]"), "{text}");
        assert!(
            text.contains("[[listen]]\nuri = \"durable://127.0.0.1:4100\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "[[route]]\nmessage_type = \"OrderPlaced\"\nto = \"durable://127.0.0.1:4200\"\n"
            ),
            "{text}"
        );
        assert!(
            pos("message_type = \"OrderPlaced\"") < pos("billing.*"),
            "{text}"
        );
        assert!(text.contains("ping_interval_ms = 200\n"), "{text}");
        assert_eq!(c.listen_uris().len(), 1);
        assert_eq!(c.routes().len(), 2);
    }

    #[test]
    fn config_renders_rabbit_bindings_as_an_array_of_tables() {
        let c = HostConfig::new()
            .rabbitmq("prefetch", 100)
            .rabbit_binding("events", "audit-in", "Order.*")
            .rabbit_binding("events", "all", "#")
            .route("OrderPlaced", "rabbitmq://exchange/events");
        let text = c.render();
        // The host reads it as two bindings.
        let parsed = jasper_host::Config::from_toml_str(&text, Path::new("/x"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let b = &parsed.rabbitmq.binding;
        assert_eq!(b.len(), 2, "{text}");
        assert_eq!(
            (
                b[0].exchange.as_str(),
                b[0].queue.as_str(),
                b[0].routing_key.as_str()
            ),
            ("events", "audit-in", "Order.*")
        );
        assert_eq!(parsed.rabbitmq.prefetch, 100);
        assert!(
            text.contains(
                "[[rabbitmq.binding]]\nexchange = \"events\"\nqueue = \"audit-in\"\nrouting_key = \"Order.*\"\n"
            ),
            "{text}"
        );
        assert!(
            text.find("[rabbitmq]") < text.find("[[rabbitmq.binding]]"),
            "{text}"
        );
    }
}
