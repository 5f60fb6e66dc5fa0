//! The host's configuration file.
//!
//! This module owns the TOML config format (the keys are listed in README.md,
//! "Configuration"): parsing with
//! defaults for every key, rejecting unknown keys, resolving relative paths
//! against the config file's folder, resolving `storage.url` into a
//! [`Backend`], and validating values. Nothing else reads the file.
//!
//! After [`Config::load`], [`Config::from_toml_str`] or [`Config::for_dir`]
//! every path in the config is resolved (absolute when the base dir is), and
//! `storage.backend` matches `storage.url`.

mod amqp;
mod plugins;
pub(crate) mod transport;

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

pub use amqp::{AmqpConfig, ServiceBusConfig};
pub(crate) use plugins::valid_plugin_name;
pub use plugins::{EffectiveSettings, PluginSettings};
pub use transport::{
    BindingConfig, ListenConfig, RabbitConfig, RouteConfig, SendingConfig, TcpConfig,
};

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub storage: StorageConfig,
    pub plugins: PluginsConfig,
    pub handling: HandlingConfig,
    pub durability: DurabilityConfig,
    /// `[[listen]]` endpoints.
    pub listen: Vec<ListenConfig>,
    /// `[[route]]` rules for published messages.
    pub route: Vec<RouteConfig>,
    pub sending: SendingConfig,
    pub tcp: TcpConfig,
    pub rabbitmq: RabbitConfig,
    pub amqp: AmqpConfig,
    pub azure_service_bus: ServiceBusConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: OpenTelemetry traces, off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (spans go to
    /// its `/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans, default the node's name.
    pub service_name: Option<String>,
    /// How often buffered spans are sent, in ms, default 2000.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: None,
            export_interval_ms: 2000,
        }
    }
}

/// `[admin]`: the admin endpoint, off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `HOST:PORT` to serve `/metrics`, `/health/live` and `/health/ready`
    /// on, e.g. `127.0.0.1:9090`.
    pub listen: Option<String>,
    /// The bearer token `POST /messages/{type}` and `POST /invoke/{type}`
    /// require (`Authorization: Bearer TOKEN`); without one they answer 403.
    pub token: Option<String>,
    /// Largest request body the ingress takes, in bytes, default 1 MiB.
    pub max_body_bytes: u64,
    /// How long `POST /invoke/{type}` waits for the handler, in ms, default
    /// 10000 (past it: 504, and the command stays in the inbox).
    pub invoke_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            token: None,
            max_body_bytes: 1 << 20,
            invoke_timeout_ms: 10_000,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name, default `jasper`.
    pub name: String,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Store URL as written, default `sqlite://jasper.db`.
    pub url: String,
    /// Table prefix / schema name, default `jasper`. Used in SQL identifiers.
    pub schema: String,
    /// How long `run` (and [`crate::Host::start`]) keeps trying, with
    /// backoff, to reach a database that is not reachable yet (refused,
    /// starting up, no connection slot), in ms, default 30000; 0 fails at
    /// once. Errors waiting will not mend (a wrong password) fail at once.
    pub connect_retry_ms: u64,
    /// The backend `url` resolves to (not a key in the file).
    #[serde(skip)]
    pub backend: Backend,
}

/// Which store `storage.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite database file (resolved against the config's folder).
    Sqlite { path: PathBuf },
    /// `postgres://` or `postgresql://`, URL kept verbatim.
    Postgres { url: String },
    /// `mysql://` or `mariadb://`, URL kept verbatim.
    Mysql { url: String },
}

/// `[plugins]` (read by `config/plugins.rs`: the keys below, and one
/// `[plugins.NAME]` table per plugin, kept in `each`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// Folder holding the `.wasm` plugins, default `plugins`.
    pub dir: PathBuf,
    /// Memory cap per instance in MiB, default 64.
    pub memory_mb: u64,
    /// Wall-clock limit per message in ms, default 5000.
    pub deadline_ms: u64,
    /// Fuel per message, 0 = off (default).
    pub fuel: u64,
    /// Handler calls at once (the calls of a batch run on every core), default
    /// 16; also sizes the instance pool (slots = 2 x this + 8, at most 1000).
    pub max_in_flight: usize,
    /// Most distinct state keys one handling may write (put or delete),
    /// default 1000. Past it (and past the three below) the message goes
    /// to dead letters at once with kind `limit`.
    pub max_state_keys: u64,
    /// Most bytes of state keys and values one handling may write, default
    /// 16 MiB.
    pub max_state_bytes: u64,
    /// Most messages one handling may send, publish or schedule (every
    /// destination copy counted), default 10000.
    pub max_sends: u64,
    /// Most body bytes one handling may send (every copy counted), default
    /// 64 MiB.
    pub max_send_bytes: u64,
    /// Connect, first byte and between bytes of one outbound HTTP request
    /// of a handler, in ms, default 10000.
    pub http_timeout_ms: u64,
    /// Largest HTTP response body a handler may read, default 4 MiB.
    pub http_max_response_bytes: u64,
    /// A PEM file of CA certificates trusted for handlers' `https`
    /// requests besides the web PKI roots (a private CA); relative to the
    /// config file. Default none.
    pub http_ca_file: Option<PathBuf>,
    /// Keep compiled plugins in `cache_dir`, so a restart (or `send`) does
    /// not compile an unchanged plugin again; default true.
    pub cache: bool,
    /// Where compiled plugins are kept: in the file, default `.jasper-cache`
    /// beside it; the loader sets it (resolved) when `cache` is on and
    /// `None` when off. `None` (as in a config built in code) compiles every
    /// time.
    pub cache_dir: Option<PathBuf>,
    /// Watch `dir` while the host runs and load, replace or unload plugins
    /// as their files change (hot reload); default true.
    pub watch: bool,
    /// `[plugins.NAME]`: one plugin's settings, by plugin name.
    pub each: std::collections::BTreeMap<String, PluginSettings>,
}

/// `[handling]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlingConfig {
    /// Rows claimed per poll, default 256.
    pub batch_size: usize,
    /// Total tries before dead letters, default 3.
    pub max_attempts: u32,
    /// Backoff base in ms (doubles per attempt), default 100.
    pub retry_delay_ms: u64,
    /// How long handled rows are kept for dedupe, default one day.
    pub keep_handled_ms: u64,
    /// Default 100.
    pub poll_interval_ms: u64,
    /// Batches in hand at once, default 4: the next batches are claimed
    /// and handled while the ones before commit (they commit in the order
    /// they were claimed); 1 runs one batch at a time. With 4 the database
    /// and the handlers are rarely idle waiting on each other: 8-16% more
    /// throughput than 2 on PostgreSQL (jasper-bench, 100,000 messages).
    pub batches_in_flight: u32,
    /// What becomes of a message a handler publishes (or schedules) that no
    /// loaded plugin subscribes to and no `[[route]]` matches, default
    /// `drop` (with a warning either way).
    pub unrouted: Unrouted,
    /// How long `run` may take to drain on SIGTERM/SIGINT (finish the batch
    /// in hand, flush the senders, release what is left), default 30 s.
    /// Past it, or on a second signal, the host exits at once; what it held
    /// is recovered as a dead node's rows.
    pub drain_timeout_ms: u64,
}

/// `handling.unrouted`: the fate of a published message nobody takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unrouted {
    /// Logged (WARN, `event=unrouted`), counted and not kept: a handler may
    /// publish events nobody listens to yet.
    #[default]
    Drop,
    /// Logged, counted and kept in dead letters (kind `no-route`) in the
    /// handler's commit; `dead-letters replay` publishes it again.
    DeadLetter,
}

/// `[durability]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// Default 1000.
    pub heartbeat_ms: u64,
    /// A node silent this long is presumed dead, default 10000.
    pub stale_after_ms: u64,
    /// Default 60000.
    pub cleanup_interval_ms: u64,
    /// Every store call (claim, commit, heartbeat, sweep, …) that takes
    /// longer fails and is tried again with backoff, so a database that
    /// hangs (black-holed network, stuck server) stalls nothing for good;
    /// default 10000, at least 100.
    pub store_timeout_ms: u64,
}

/// Why the config could not be loaded. `path` is the config file
/// (`<inline config>` for [`Config::from_toml_str`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML, unknown key or wrong type; `message` is toml's, with the
    /// line and key.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value out of range; `key` is dotted, e.g. `handling.batch_size`.
    #[error("invalid config file {}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The path reported in errors from [`Config::from_toml_str`].
const INLINE_PATH: &str = "<inline config>";

const ACCEPTED_SCHEMES: &str =
    "sqlite:, sqlite://, postgres://, postgresql://, mysql://, mariadb://";

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "jasper".to_owned(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://jasper.db".to_owned(),
            schema: "jasper".to_owned(),
            connect_retry_ms: 30_000,
            backend: Backend::default(),
        }
    }
}

impl Default for Backend {
    /// `jasper.db`, unresolved; configs built by this module resolve it.
    fn default() -> Self {
        Backend::Sqlite {
            path: PathBuf::from("jasper.db"),
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            memory_mb: 64,
            deadline_ms: 5000,
            fuel: 0,
            max_in_flight: 16,
            max_state_keys: 1000,
            max_state_bytes: 16 << 20,
            max_sends: 10_000,
            max_send_bytes: 64 << 20,
            http_timeout_ms: 10_000,
            http_max_response_bytes: 4 << 20,
            http_ca_file: None,
            cache: true,
            cache_dir: None,
            watch: true,
            each: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for HandlingConfig {
    fn default() -> Self {
        HandlingConfig {
            batch_size: 256,
            max_attempts: 3,
            retry_delay_ms: 100,
            keep_handled_ms: 86_400_000,
            poll_interval_ms: 100,
            batches_in_flight: 4,
            unrouted: Unrouted::Drop,
            drain_timeout_ms: 30_000,
        }
    }
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            heartbeat_ms: 1000,
            stale_after_ms: 10_000,
            cleanup_interval_ms: 60_000,
            store_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`; relative paths in it are
    /// resolved against the file's folder (made absolute).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned());
        Self::parse(&text, &base_dir, path)
    }

    /// Parses and validates config text; relative paths are resolved
    /// against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, Path::new(INLINE_PATH))
    }

    /// All defaults, paths resolved against `base_dir` (the same as an
    /// empty file in `base_dir`).
    pub fn for_dir(base_dir: &Path) -> Config {
        let mut config = Config::default();
        config.storage.backend = Backend::Sqlite {
            path: resolve(base_dir, Path::new("jasper.db")),
        };
        config.plugins.dir = resolve(base_dir, &config.plugins.dir);
        config.plugins.resolve_cache_dir(base_dir);
        config
    }

    fn parse(text: &str, base_dir: &Path, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            match e
                .span()
                .and_then(|span| transport::uri_error_at(text, span))
            {
                Some((key, message)) => invalid(&key, message),
                None => ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                },
            }
        })?;
        config.storage.backend = parse_storage_url(&config.storage.url, base_dir)
            .map_err(|m| invalid("storage.url", m))?;
        config.plugins.dir = resolve(base_dir, &config.plugins.dir);
        config.plugins.resolve_cache_dir(base_dir);
        config
            .plugins
            .validate_each()
            .map_err(|(key, message)| invalid(&key, message))?;
        for p in [
            &mut config.amqp.ca_file,
            &mut config.azure_service_bus.ca_file,
            &mut config.azure_service_bus.sas_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve(base_dir, p);
        }
        let tcp = &mut config.tcp;
        for p in [
            &mut tcp.secret_file,
            &mut tcp.tls_cert,
            &mut tcp.tls_key,
            &mut tcp.tls_ca,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve(base_dir, p);
        }
        transport::validate(
            &config.listen,
            &config.route,
            &config.sending,
            &config.tcp,
            &config.rabbitmq,
        )
        .map_err(|(key, message)| invalid(&key, message))?;
        amqp::validate(
            &config.listen,
            &config.route,
            &config.amqp,
            &config.azure_service_bus,
        )
        .map_err(|(key, message)| invalid(&key, message))?;
        config
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(config)
    }

    /// Range checks; the error is the dotted key and what is wrong.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), (&'static str, String)> {
            if value < min {
                return Err((key, format!("must be at least {min}, got {value}")));
            }
            Ok(())
        }
        if let Some(listen) = &self.admin.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                "admin.listen",
                format!(
                    "must be HOST:PORT with an IP address, e.g. 127.0.0.1:9090, got {listen:?}"
                ),
            ));
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err((
                "admin.token",
                "must not be empty (leave it out to refuse the ingress)".into(),
            ));
        }
        at_least("admin.max_body_bytes", self.admin.max_body_bytes, 1)?;
        if let Some(e) = &self.telemetry.otlp_endpoint
            && !(e.starts_with("http://") && e.len() > "http://".len())
        {
            return Err((
                "telemetry.otlp_endpoint",
                format!(
                    "must be an http:// URL of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318, got {e:?} (https is not supported: run the collector on a private address)"
                ),
            ));
        }
        at_least(
            "telemetry.export_interval_ms",
            self.telemetry.export_interval_ms,
            1,
        )?;
        at_least("admin.invoke_timeout_ms", self.admin.invoke_timeout_ms, 1)?;
        if !valid_schema(&self.storage.schema) {
            return Err((
                "storage.schema",
                format!(
                    "{:?} is not a valid SQL identifier: use 1 to 63 ASCII letters, digits or \
                     underscores, not starting with a digit",
                    self.storage.schema
                ),
            ));
        }
        let p = &self.plugins;
        at_least("plugins.memory_mb", p.memory_mb, 2)?;
        at_least("plugins.deadline_ms", p.deadline_ms, 1)?;
        at_least("plugins.max_in_flight", p.max_in_flight as u64, 1)?;
        at_least("plugins.max_state_keys", p.max_state_keys, 1)?;
        at_least("plugins.max_state_bytes", p.max_state_bytes, 1)?;
        at_least("plugins.max_sends", p.max_sends, 1)?;
        at_least("plugins.max_send_bytes", p.max_send_bytes, 1)?;
        at_least("plugins.http_timeout_ms", p.http_timeout_ms, 1)?;
        at_least(
            "plugins.http_max_response_bytes",
            p.http_max_response_bytes,
            1,
        )?;
        let h = &self.handling;
        if !(1..=10_000).contains(&h.batch_size) {
            return Err((
                "handling.batch_size",
                format!("must be between 1 and 10000, got {}", h.batch_size),
            ));
        }
        at_least("handling.max_attempts", u64::from(h.max_attempts), 1)?;
        // Zero intervals would make timers spin (or panic in tokio).
        at_least("handling.poll_interval_ms", h.poll_interval_ms, 1)?;
        at_least("handling.drain_timeout_ms", h.drain_timeout_ms, 1)?;
        if !(1..=8).contains(&h.batches_in_flight) {
            return Err((
                "handling.batches_in_flight",
                format!("must be between 1 and 8, got {}", h.batches_in_flight),
            ));
        }
        let d = &self.durability;
        at_least("durability.heartbeat_ms", d.heartbeat_ms, 1)?;
        at_least("durability.cleanup_interval_ms", d.cleanup_interval_ms, 1)?;
        at_least("durability.store_timeout_ms", d.store_timeout_ms, 100)?;
        if d.stale_after_ms <= d.heartbeat_ms {
            return Err((
                "durability.stale_after_ms",
                format!(
                    "must be greater than durability.heartbeat_ms ({}), got {}",
                    d.heartbeat_ms, d.stale_after_ms
                ),
            ));
        }
        Ok(())
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`
fn valid_schema(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    s.len() <= 63 && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `base_dir/path` for a relative `path`, without `.` components.
fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    base_dir
        .join(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn parse_storage_url(url: &str, base_dir: &Path) -> Result<Backend, String> {
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(format!(
            "{url:?} has no scheme; accepted schemes: {ACCEPTED_SCHEMES}"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!("{url:?} names no database file"));
            }
            if path == ":memory:" || path.contains("mode=memory") {
                return Err(format!(
                    "{url:?} is an in-memory database; the durable store needs a file, \
                     e.g. sqlite://jasper.db"
                ));
            }
            if path.contains('?') {
                return Err(format!(
                    "{url:?}: query parameters are not supported for SQLite; \
                     the host sets connection options itself"
                ));
            }
            Ok(Backend::Sqlite {
                path: resolve(base_dir, Path::new(path)),
            })
        }
        "postgres" | "postgresql" if rest.starts_with("//") => Ok(Backend::Postgres {
            url: url.to_owned(),
        }),
        "mysql" | "mariadb" if rest.starts_with("//") => Ok(Backend::Mysql {
            url: url.to_owned(),
        }),
        _ => Err(format!(
            "unsupported scheme in {url:?}; accepted schemes: {ACCEPTED_SCHEMES}"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        PathBuf::from("/srv/jasper")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, &base())
    }

    /// The error's key and display text, for an `Invalid` error.
    fn invalid(text: &str) -> (String, String) {
        match parse(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let shown = e.to_string();
                let ConfigError::Invalid { key, .. } = e else {
                    unreachable!()
                };
                (key, shown)
            }
            other => panic!("expected Invalid for {text:?}, got {other:?}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match parse(text) {
            Err(e @ ConfigError::Parse { .. }) => e.to_string(),
            other => panic!("expected Parse for {text:?}, got {other:?}"),
        }
    }

    fn sqlite_path(url: &str) -> PathBuf {
        match parse(&format!("[storage]\nurl = {url:?}\n"))
            .unwrap()
            .storage
            .backend
        {
            Backend::Sqlite { path } => path,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::for_dir(&base()));
        assert_eq!(c.node.name, "jasper");
        assert_eq!(c.storage.url, "sqlite://jasper.db");
        assert_eq!(c.storage.schema, "jasper");
        assert_eq!(c.storage.connect_retry_ms, 30_000);
        assert_eq!(
            c.storage.backend,
            Backend::Sqlite {
                path: PathBuf::from("/srv/jasper/jasper.db")
            }
        );
        assert_eq!(c.plugins.dir, PathBuf::from("/srv/jasper/plugins"));
        assert_eq!(
            (c.plugins.memory_mb, c.plugins.deadline_ms, c.plugins.fuel),
            (64, 5000, 0)
        );
        assert_eq!(c.plugins.max_in_flight, 16);
        assert_eq!(
            (
                c.plugins.max_state_keys,
                c.plugins.max_state_bytes,
                c.plugins.max_sends,
                c.plugins.max_send_bytes
            ),
            (1000, 16 << 20, 10_000, 64 << 20)
        );
        assert_eq!(c.handling, HandlingConfig::default());
        assert_eq!(c.handling.batch_size, 256);
        assert_eq!(c.handling.max_attempts, 3);
        assert_eq!(c.handling.retry_delay_ms, 100);
        assert_eq!(c.handling.keep_handled_ms, 86_400_000);
        assert_eq!(c.handling.poll_interval_ms, 100);
        assert_eq!(
            c.durability,
            DurabilityConfig {
                heartbeat_ms: 1000,
                stale_after_ms: 10_000,
                cleanup_interval_ms: 60_000,
                store_timeout_ms: 10_000
            }
        );
        // Empty tables are fine too.
        assert_eq!(parse("[node]\n[storage]\n[plugins]\n").unwrap(), c);
    }

    #[test]
    fn full_file() {
        let text = r#"
[node]
name = "node-1"
[storage]
url = "sqlite://data/store.db"
schema = "jasper_test"
connect_retry_ms = 500
[plugins]
dir = "/opt/plugins"
memory_mb = 128
deadline_ms = 250
fuel = 1000000
max_in_flight = 4
max_state_keys = 10
max_state_bytes = 2048
max_sends = 3
max_send_bytes = 4096
watch = false
[handling]
batch_size = 10
max_attempts = 5
retry_delay_ms = 7
keep_handled_ms = 0
poll_interval_ms = 20
batches_in_flight = 1
unrouted = "dead-letter"
drain_timeout_ms = 4000
[durability]
heartbeat_ms = 500
stale_after_ms = 2000
cleanup_interval_ms = 30000
[[listen]]
uri = "durable://0.0.0.0:2222"
[[route]]
message_type = "billing.*"
to = "durable://10.0.0.2:2222/billing"
[sending]
batch_size = 50
[tcp]
secret_file = "secret.txt"
max_connections = 8
"#;
        let c = parse(text).unwrap();
        let expected = Config {
            node: NodeConfig {
                name: "node-1".into(),
            },
            storage: StorageConfig {
                url: "sqlite://data/store.db".into(),
                schema: "jasper_test".into(),
                connect_retry_ms: 500,
                backend: Backend::Sqlite {
                    path: "/srv/jasper/data/store.db".into(),
                },
            },
            plugins: PluginsConfig {
                dir: "/opt/plugins".into(),
                memory_mb: 128,
                deadline_ms: 250,
                fuel: 1_000_000,
                max_in_flight: 4,
                max_state_keys: 10,
                max_state_bytes: 2048,
                max_sends: 3,
                max_send_bytes: 4096,
                http_timeout_ms: 10_000,
                http_max_response_bytes: 4 << 20,
                http_ca_file: None,
                cache: true,
                cache_dir: Some("/srv/jasper/.jasper-cache".into()),
                watch: false,
                each: Default::default(),
            },
            handling: HandlingConfig {
                batch_size: 10,
                max_attempts: 5,
                retry_delay_ms: 7,
                keep_handled_ms: 0,
                poll_interval_ms: 20,
                batches_in_flight: 1,
                unrouted: Unrouted::DeadLetter,
                drain_timeout_ms: 4000,
            },
            durability: DurabilityConfig {
                heartbeat_ms: 500,
                stale_after_ms: 2000,
                cleanup_interval_ms: 30_000,
                store_timeout_ms: 10_000,
            },
            listen: vec![ListenConfig {
                uri: "durable://0.0.0.0:2222".parse().unwrap(),
            }],
            route: vec![RouteConfig {
                message_type: "billing.*".into(),
                to: "durable://10.0.0.2:2222/billing".parse().unwrap(),
            }],
            sending: SendingConfig {
                batch_size: 50,
                ..SendingConfig::default()
            },
            tcp: TcpConfig {
                secret_file: Some("/srv/jasper/secret.txt".into()),
                max_connections: 8,
                ..TcpConfig::default()
            },
            rabbitmq: RabbitConfig::default(),
            amqp: AmqpConfig::default(),
            azure_service_bus: ServiceBusConfig::default(),
            admin: AdminConfig::default(),
            telemetry: TelemetryConfig::default(),
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let msg = parse_error("[handling]\nbatch_sise = 3\n");
        assert!(msg.contains("batch_sise"), "{msg}");
        assert!(msg.contains(INLINE_PATH), "{msg}");
        let msg = parse_error("[nodes]\nname = \"x\"\n");
        assert!(msg.contains("nodes"), "{msg}");
        let msg = parse_error("verbose = true\n");
        assert!(msg.contains("verbose"), "{msg}");
        // `backend` is derived, not a key.
        let msg = parse_error("[storage]\nbackend = \"sqlite\"\n");
        assert!(msg.contains("backend"), "{msg}");
        // A near miss of a bound key (the singular) is a typo, not a default.
        let msg = parse_error("[plugins]\nmax_state_key = 5\n");
        assert!(msg.contains("max_state_key"), "{msg}");
    }

    #[test]
    fn a_plugin_table_overrides_the_shared_keys_for_that_plugin_only() {
        let c = parse(
            "[plugins]\nmemory_mb = 32\nmax_in_flight = 8\n\
             [plugins.webhook]\nmemory_mb = 96\nmax_in_flight = 2\nfuel = 5000\n\
             allow_http = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]\n\
             allow_send = [\"durable://peer:7000\"]\n\
             [plugins.orders]\n",
        )
        .unwrap();
        let w = c.plugins.settings("webhook");
        assert_eq!(
            (w.memory_mb, w.deadline_ms, w.fuel, w.max_in_flight),
            (96, 5000, 5000, 2)
        );
        assert_eq!(
            w.allow_http,
            ["https://api.example.com", "http://127.0.0.1:8080"]
        );
        assert_eq!(w.allow_send, ["durable://peer:7000"]);
        assert_eq!(
            (w.http_timeout_ms, w.http_max_response_bytes),
            (10_000, 4 << 20)
        );
        // An empty table and no table at all both mean the shared keys.
        for name in ["orders", "audit"] {
            let s = c.plugins.settings(name);
            assert_eq!((s.memory_mb, s.fuel, s.max_in_flight), (32, 0, 8), "{name}");
            assert!(s.allow_http.is_empty() && s.allow_send.is_empty(), "{name}");
        }
        assert_eq!(c.plugins.largest_memory_mb(), 96);
        assert!(c.plugins.any_fuel());
        assert!(!parse("").unwrap().plugins.any_fuel());
        assert_eq!(
            parse("").unwrap().plugins.cache_dir,
            Some(PathBuf::from("/srv/jasper/.jasper-cache"))
        );
        let c = parse("[plugins]\ncache_dir = \"/var/cache/j\"\n").unwrap();
        assert_eq!(c.plugins.cache_dir, Some(PathBuf::from("/var/cache/j")));
        let c = parse("[plugins]\ncache = false\ncache_dir = \"x\"\n").unwrap();
        assert_eq!(c.plugins.cache_dir, None);
    }

    #[test]
    fn a_bad_plugin_table_names_its_key() {
        let msg = parse_error("[plugins.webhook]\nmemry_mb = 3\n");
        assert!(msg.contains("memry_mb"), "{msg}");
        let msg = parse_error("[plugins.webhook]\ndeadline_ms = \"soon\"\n");
        assert!(msg.contains("deadline_ms"), "{msg}");
        // A scalar under an unknown key is a typo of a shared key.
        let msg = parse_error("[plugins]\nmemorymb = 3\n");
        assert!(
            msg.contains("memorymb") && msg.contains("memory_mb"),
            "{msg}"
        );
        for (text, key) in [
            (
                "[plugins.webhook]\nmemory_mb = 1",
                "plugins.webhook.memory_mb",
            ),
            (
                "[plugins.webhook]\nmax_in_flight = 17",
                "plugins.webhook.max_in_flight",
            ),
            (
                "[plugins.webhook]\nallow_http = [\"ftp://x\"]",
                "plugins.webhook.allow_http",
            ),
            (
                "[plugins.webhook]\nallow_http = [\"https://x/path\"]",
                "plugins.webhook.allow_http",
            ),
            (
                "[plugins.webhook]\nallow_send = [\"nope://x\"]",
                "plugins.webhook.allow_send",
            ),
            ("[plugins.\"a b\"]\nfuel = 1", "plugins.a b"),
            ("[plugins]\nhttp_timeout_ms = 0", "plugins.http_timeout_ms"),
        ] {
            let (k, shown) = invalid(text);
            assert_eq!(k, key, "{text}: {shown}");
        }
    }

    #[test]
    fn unrouted_is_drop_or_dead_letter_and_anything_else_names_the_key() {
        assert_eq!(parse("").unwrap().handling.unrouted, Unrouted::Drop);
        let c = parse("[handling]\nunrouted = \"drop\"\n").unwrap();
        assert_eq!(c.handling.unrouted, Unrouted::Drop);
        let c = parse("[handling]\nunrouted = \"dead-letter\"\n").unwrap();
        assert_eq!(c.handling.unrouted, Unrouted::DeadLetter);
        let msg = parse_error("[handling]\nunrouted = \"bounce\"\n");
        assert!(msg.contains("unrouted"), "{msg}");
        assert!(msg.contains("bounce"), "{msg}");
        assert!(msg.contains("dead-letter"), "the accepted values: {msg}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let msg = parse_error("[plugins]\nmemory_mb = \"64\"\n");
        assert!(msg.contains("memory_mb"), "{msg}");
        let msg = parse_error("[handling]\nmax_attempts = -1\n");
        assert!(msg.contains("max_attempts"), "{msg}");
        parse_error("node = 3\n");
        parse_error("[node\n");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("[handling]\nbatch_size = 0", "handling.batch_size"),
            ("[handling]\nbatch_size = 10001", "handling.batch_size"),
            ("[handling]\nmax_attempts = 0", "handling.max_attempts"),
            (
                "[handling]\npoll_interval_ms = 0",
                "handling.poll_interval_ms",
            ),
            ("[plugins]\nmemory_mb = 1", "plugins.memory_mb"),
            ("[plugins]\ndeadline_ms = 0", "plugins.deadline_ms"),
            ("[plugins]\nmax_in_flight = 0", "plugins.max_in_flight"),
            (
                "[handling]\nbatches_in_flight = 0",
                "handling.batches_in_flight",
            ),
            (
                "[handling]\nbatches_in_flight = 9",
                "handling.batches_in_flight",
            ),
            ("[plugins]\nmax_state_keys = 0", "plugins.max_state_keys"),
            ("[plugins]\nmax_state_bytes = 0", "plugins.max_state_bytes"),
            ("[plugins]\nmax_sends = 0", "plugins.max_sends"),
            ("[plugins]\nmax_send_bytes = 0", "plugins.max_send_bytes"),
            ("[durability]\nheartbeat_ms = 0", "durability.heartbeat_ms"),
            (
                "[durability]\ncleanup_interval_ms = 0",
                "durability.cleanup_interval_ms",
            ),
            (
                "[durability]\nheartbeat_ms = 5000\nstale_after_ms = 5000",
                "durability.stale_after_ms",
            ),
            ("[storage]\nschema = \"\"", "storage.schema"),
            ("[storage]\nschema = \"1abc\"", "storage.schema"),
            ("[storage]\nschema = \"a-b\"", "storage.schema"),
            ("[storage]\nschema = \"a; DROP TABLE x\"", "storage.schema"),
            ("[storage]\nschema = \"sch\u{e9}ma\"", "storage.schema"),
            ("[[listen]]\nuri = \"ftp://h:1\"", "listen[0].uri"),
            ("[[listen]]\nuri = \"durable://h\"", "listen[0].uri"),
            ("[[listen]]\nuri = \"local://audit\"", "listen[0].uri"),
            ("[[listen]]\nuri = \"durable://h:1/q\"", "listen[0].uri"),
            (
                "[[route]]\nmessage_type = \"a\"\nto = \"nowhere\"",
                "route[0].to",
            ),
            (
                "[[route]]\nmessage_type = \"\"\nto = \"tcp://h:1\"",
                "route[0].message_type",
            ),
            ("[sending]\nbatch_size = 0", "sending.batch_size"),
            ("[tcp]\nsecret = \"short\"", "tcp.secret"),
            ("[tcp]\ntls = true", "tcp.tls_ca"),
            ("[tcp]\nmutual_tls = true", "tcp.mutual_tls"),
            ("[tcp]\nmax_frame_bytes = 10", "tcp.max_frame_bytes"),
            ("[rabbitmq]\nurl = \"http://x\"", "rabbitmq.url"),
            ("[rabbitmq]\nqueue_type = \"stream\"", "rabbitmq.queue_type"),
            ("[rabbitmq]\nprefetch = 0", "rabbitmq.prefetch"),
            (
                "[[listen]]\nuri = \"rabbitmq://exchange/x\"",
                "listen[0].uri",
            ),
        ];
        for (text, want) in cases {
            let (key, shown) = invalid(text);
            assert_eq!(key, want, "{text}");
            assert!(shown.contains(want), "{shown}");
            assert!(shown.contains(INLINE_PATH), "{shown}");
        }
        let (_, shown) = invalid("[plugins]\nmax_sends = 0");
        assert!(shown.contains("must be at least 1, got 0"), "{shown}");
        let (_, shown) = invalid("[handling]\nbatch_size = 0");
        assert!(shown.contains("between 1 and 10000, got 0"), "{shown}");

        // Boundaries that are accepted.
        parse("[handling]\nbatch_size = 1\nmax_attempts = 1").unwrap();
        parse("[handling]\nbatch_size = 10000").unwrap();
        parse("[plugins]\nmemory_mb = 2\ndeadline_ms = 1\nmax_in_flight = 1").unwrap();
        parse(
            "[plugins]\nmax_state_keys = 1\nmax_state_bytes = 1\nmax_sends = 1\nmax_send_bytes = 1",
        )
        .unwrap();
        parse(&format!("[storage]\nschema = \"_{}\"", "a".repeat(62))).unwrap();
        invalid(&format!("[storage]\nschema = \"_{}\"", "a".repeat(63)));
        parse("[storage]\nschema = \"Jasper_2\"").unwrap();
    }

    #[test]
    fn sqlite_url_forms() {
        assert_eq!(sqlite_path("sqlite://jasper.db"), base().join("jasper.db"));
        assert_eq!(sqlite_path("sqlite:jasper.db"), base().join("jasper.db"));
        assert_eq!(sqlite_path("sqlite://./x.db"), base().join("x.db"));
        assert_eq!(sqlite_path("sqlite:./x.db"), base().join("x.db"));
        assert_eq!(
            sqlite_path("sqlite://../data/x.db"),
            PathBuf::from("/srv/jasper/../data/x.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///abs/path.db"),
            PathBuf::from("/abs/path.db")
        );
        assert_eq!(
            sqlite_path("SQLite:///abs/path.db"),
            PathBuf::from("/abs/path.db")
        );
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://file?mode=memory",
        ] {
            let (key, shown) = invalid(&format!("[storage]\nurl = {url:?}"));
            assert_eq!(key, "storage.url");
            assert!(shown.contains("needs a file"), "{shown}");
        }
        for url in ["sqlite:", "sqlite://", "sqlite://x.db?mode=rwc"] {
            let (key, _) = invalid(&format!("[storage]\nurl = {url:?}"));
            assert_eq!(key, "storage.url");
        }
    }

    #[test]
    fn server_url_forms() {
        for (url, pg) in [
            ("postgres://u:p@db:5432/jasper", true),
            ("postgresql://db/jasper?sslmode=require", true),
            ("mysql://root@localhost/jasper", false),
            ("mariadb://db/jasper", false),
        ] {
            let c = parse(&format!("[storage]\nurl = {url:?}")).unwrap();
            let expected = if pg {
                Backend::Postgres { url: url.into() }
            } else {
                Backend::Mysql { url: url.into() }
            };
            assert_eq!(c.storage.backend, expected);
        }
        for url in ["redis://x", "jasper.db", "http://x", "postgres:db", ""] {
            let (key, shown) = invalid(&format!("[storage]\nurl = {url:?}"));
            assert_eq!(key, "storage.url");
            assert!(shown.contains("postgres://"), "{shown}");
            assert!(shown.contains("sqlite:"), "{shown}");
        }
    }

    #[test]
    fn load_resolves_against_the_file_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("jasper.toml");
        std::fs::write(
            &file,
            "[storage]\nurl = \"sqlite://./db/j.db\"\n[plugins]\ndir = \"../plugins\"\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(
            c.storage.backend,
            Backend::Sqlite {
                path: sub.join("db/j.db")
            }
        );
        assert_eq!(c.plugins.dir, sub.join("../plugins"));

        std::fs::write(&file, "[handling]\nbatch_size = 0\n").unwrap();
        let shown = Config::load(&file).unwrap_err().to_string();
        assert!(shown.contains(&*file.to_string_lossy()), "{shown}");
        assert!(shown.contains("handling.batch_size"), "{shown}");

        std::fs::write(&file, "[handling]\nbogus = 0\n").unwrap();
        let shown = Config::load(&file).unwrap_err().to_string();
        assert!(shown.contains(&*file.to_string_lossy()), "{shown}");
        assert!(shown.contains("bogus"), "{shown}");

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
