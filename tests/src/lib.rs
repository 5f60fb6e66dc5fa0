//! End-to-end harness for jasper-host: real processes, real databases.
//!
//! Every test builds a [`TestHost`]: its own temp dir holding a config file, a
//! plugin dir (the needed `.wasm` files copied from
//! `target/wasm32-wasip2/plugin/`), the host's log and, on SQLite, the db. On
//! PostgreSQL and MySQL/MariaDB ([`HostConfig::on`]) the store is a schema /
//! table prefix of its own on the test server, dropped when the `TestHost` is
//! dropped, pass or fail (see `store.rs`). The host
//! binary (`target/release/jasper-host`) is run as a child process: `run` for
//! the long-lived host, `send`, `storage counts`, `dead-letters list` as short
//! commands. Conditions are awaited by polling the database with a deadline
//! ([`wait_until`], [`TestHost::wait_for`]), never by sleeping.
//!
//! Nothing here passes quietly: a missing or stale binary or plugin panics with
//! the command that builds it (`make build`, `make plugins`).
//!
//! The modules, each re-exported here: `paths` (the workspace, the binary
//! and plugins, checked fresh), `config` ([`HostConfig`]), `host`
//! ([`TestHost`]), `output` ([`CmdOut`]), `cli_json` (what the CLI prints as
//! JSON), `store` ([`Db`] and the backends), `ports` ([`free_port`]), `wait`
//! ([`wait_until`]), `backends` ([`per_backend!`]), `bodies` (the plugins'
//! message bodies); and, by path, [`amqp`] (the broker), [`orders`] (what
//! the two-host suites share), [`kill`] (SIGKILLs at chosen moments),
//! [`exactly_once`] (the checker of one store running orders and audit),
//! [`cluster`] (many hosts on one store), [`proxy`] (a TCP proxy that
//! freezes: a hung database), [`pg_outage`] (PostgreSQL stopped and
//! started again), [`http_server`] (a real HTTP server the plugins call),
//! [`http_client`] (requests to the host's admin endpoint), [`otlp`] (a
//! traces receiver) and [`browser`] (headless Chromium over WebDriver).
//!
//! Environment knobs: `E2E_RUST_LOG` (the host's RUST_LOG, default `info`),
//! `E2E_KEEP=1` (keep the temp dirs and the server schemas), `JASPER_HOST_BIN`
//! (another host binary), `JASPER_TEST_POSTGRES_URL`, `JASPER_TEST_MYSQL_URL`
//! (the test servers; defaults `postgres://postgres@127.0.0.1:5432/test`,
//! `mysql://root@127.0.0.1:3306/test`).

// A test harness fails by panicking; these lints guard library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

pub use serde_json::json;

pub mod amqp;
pub mod asb_double;
mod backends;
mod bodies;
pub mod browser;
mod cli_json;
pub mod cluster;
mod config;
pub mod exactly_once;
mod host;
pub mod http_client;
pub mod http_server;
pub mod kill;
pub mod orders;
pub mod otlp;
mod output;
mod paths;
pub mod pg_outage;
mod ports;
pub mod proxy;
mod store;
mod wait;

pub use bodies::{REMIND_LATER_MS, place_order};
pub use cli_json::{Counts, DeadLetter};
pub use config::{HostConfig, Val};
pub use host::{TestHost, strip_ansi};
pub use output::{CmdOut, tail};
pub(crate) use output::{threads_not_stopped, wait_child};
pub(crate) use paths::rust_log;
pub use paths::{host_bin, plugin_wasm, target_dir, workspace_root};
pub use ports::free_port;
pub use store::{
    Backend, Bind, Cell, Col, Db, DeadLetterRow, FreshDatabase, IncomingRow, OutgoingRow, Progress,
    ServerUrl, StateRow, Store, TABLES, TOOL_TIMEOUT, block_on_own_runtime, check_server,
    drop_store, leftovers, run_tool, unique_schema,
};
pub(crate) use wait::poll_until;
pub use wait::wait_until;

/// How long one short CLI command (`send`, `storage counts`, ...) may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `stop()` waits for the host to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default polling interval of the wait helpers.
pub const POLL: Duration = Duration::from_millis(25);
