//! jasper-host: durable messaging and command processing whose message
//! handlers are WebAssembly components.
//!
//! A tour, in the order a message meets them (each folder or file below is
//! one module; `mod.rs` or the file itself says what it owns):
//! - [`address`] (`address.rs`): what a destination or listener URI means,
//!   parsed once; depends on nothing else in the crate.
//! - [`config`] (`config.rs`, `config/transport.rs`): the TOML file, parsed
//!   once into typed structs; the transport sections apart.
//! - [`envelope`] (`envelope.rs`): the message record and its one binary codec.
//! - [`store`] (`store/`): the message store in narrow faces (`faces.rs`: inbox,
//!   group commit, state, outbox, dead letters, nodes, admin), its rows
//!   (`rows.rs`, `dead_letter.rs`), the commit sequence and the node sweeps
//!   written once (`commit.rs`, `maintenance.rs`) over per-backend steps, the
//!   helpers every backend shares (`shared.rs`), and one folder per backend
//!   (`sqlite/`, `postgres/`, `mysql/`), each split the same way: `connect`,
//!   `schema`, `claim`, `commit`, `dead_letters`, `nodes`, `admin`.
//! - [`runtime`] (`runtime/`): wasmtime, the loaded plugins, routing of what a
//!   handler sends, state reads, one handler call under limits.
//! - `handling` (`handling/`): a batch of messages through their handlers into
//!   one commit; `policy.rs` decides what a failure becomes.
//! - `durability` (`durability.rs`): heartbeat, recovery of dead nodes'
//!   messages, cleanup.
//! - [`transport`] (`transport/`): the sending agent (`agent.rs`), the
//!   receiving inbox (`receive.rs`), `tcp://` and `durable://` (`tcp/`), the
//!   wire protocol (`wire/`: frame, handshake, ack), RabbitMQ (`rabbitmq/`).
//! - `backoff` (`backoff.rs`): the one doubling delay every retry loop uses.
//! - `host` (`host.rs`): all of the above started together, in-process
//!   ([`Host`]).
//! - [`admin`] (`admin/`): the admin endpoint: metrics and health, and the
//!   command ingress over HTTP.
//! - [`telemetry`] (`telemetry.rs`): OpenTelemetry traces and the trace
//!   context in envelope headers.
//! - `sending` (`sending.rs`): messages entering from outside a handler.
//! - `testing` (`testing.rs`): tracked sessions for tests of a host in-process.
//! - [`cli`] (`cli/`): the `jasper-host` command line, one file per command
//!   group; `main.rs` is the binary around it.
//!
//! Items are `pub` only where another crate (the binary, `host/bench`, the e2e
//! suites in `tests/`, `host/tests`, `fuzz/`) uses them; the rest is
//! `pub(crate)`.

pub mod address;
pub mod admin;
mod backoff;
pub mod cli;
pub mod config;
pub(crate) mod durability;
pub mod envelope;
pub(crate) mod handling;
pub(crate) mod host;
#[cfg(test)]
mod paused;
pub mod runtime;
pub(crate) mod sending;
pub mod store;
pub mod telemetry;
pub(crate) mod testing;
pub mod transport;

pub use config::Config;

/// An error and its causes on one line (`a: b: c`), for logs and the command
/// line. A cause whose text the line already holds is left out: sqlx and io
/// errors repeat their source in their own message.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    join_causes(parts)
}

/// Join messages outermost first, skipping any already contained in the line.
pub fn join_causes(parts: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for part in parts {
        if part.is_empty() || out.contains(&part) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&part);
    }
    out
}
pub use envelope::Envelope;
pub use handling::BatchEvent;
pub use host::Host;
