//! jasper-host: durable messaging and command processing whose message
//! handlers are WebAssembly components.
//!
//! A tour, in the order a message meets them:
//! - [`address`]: what a destination or listener URI means, parsed once.
//! - [`config`]: the TOML file, parsed once into typed structs.
//! - [`envelope`]: the message record and its one binary codec.
//! - [`store`]: the message store (inbox, scheduled, dead letters, state, nodes).
//! - [`runtime`]: wasmtime, the loaded plugins, one handler call under limits.
//! - [`handling`]: a batch of messages through their handlers into one commit.
//! - [`durability`]: heartbeat, recovery of dead nodes' messages, cleanup.
//! - [`transport`]: `tcp://` and `durable://` between hosts: listeners,
//!   sending agents, the wire protocol.
//! - [`host`]: all of the above started together, in-process.
//! - [`sending`]: messages entering from outside a handler.
//! - [`testing`]: tracked sessions for tests of a host in-process.
//! - [`cli`]: the `jasper-host` command line.

pub mod address;
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
pub use host::Host;
