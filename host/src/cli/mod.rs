//! The command line: flags parsed with clap, each command a small function
//! over the library. Errors come back as `anyhow` with the thing at fault
//! named; `main` prints them and exits non-zero.

mod dead_letters;
mod new;
mod plugins;
mod progress;
mod send;
pub(crate) mod shown;
mod state;
mod storage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "jasper-host",
    version,
    about = "Durable messaging with WebAssembly handlers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// The host's configuration file.
    #[arg(long, short = 'c', default_value = "jasper.toml", value_name = "FILE")]
    pub config: PathBuf,
}

impl ConfigArg {
    pub(crate) fn load(&self) -> anyhow::Result<Config> {
        load_config(&self.config)
    }

    /// The configured store, checked to hold the message tables: what every
    /// command that reads or changes existing messages or state starts with.
    pub(crate) async fn open_store(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn crate::store::MessageStore>> {
        let cfg = self.load()?;
        let store = crate::store::open(&cfg.storage).await?;
        store.check_schema().await?;
        Ok(store)
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host until SIGINT or SIGTERM.
    Run(ConfigArg),
    /// Write messages durably into the inbox (a host need not be running).
    ///
    /// send checks that each body is JSON, not that the handler can decode
    /// it. A body that does not fit the handler's message type is found only
    /// when a host handles it: a handler written with jasper_guest::handlers!
    /// rejects it to dead letters ("cannot decode ... body").
    Send(send::SendArgs),
    /// Administer the message store.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
    },
    /// List, show, replay or purge dead letters.
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// Make a new handler crate NAME: Cargo.toml, a handler with native
    /// tests, and a jasper.toml to run it with (then follow the printed steps).
    New(new::NewArgs),
    /// Inspect plugins.
    Plugins {
        #[command(subcommand)]
        command: plugins::PluginsCommand,
    },
    /// Read handlers' committed state as JSON (get one key, list keys).
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
}

/// Run one parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(c) => run(&c).await,
        Command::Send(a) => send::send(&a).await,
        Command::Storage { command } => storage::run(command).await,
        Command::DeadLetters { command } => dead_letters::run(command).await,
        Command::Plugins { command } => plugins::run(command).await,
        Command::New(a) => new::new(&a),
        Command::State { command } => state::run(command).await,
    }
}

async fn run(c: &ConfigArg) -> anyhow::Result<()> {
    let config = c.load()?;
    let bound = Duration::from_millis(config.handling.drain_timeout_ms);
    // Before start-up: a signal during it waits here instead of killing.
    let mut signals = Signals::install()?;
    let host = crate::host::Host::start(config)
        .await
        .with_context(|| format!("starting the host from {}", c.config.display()))?;
    let first = signals.next().await?;
    tracing::info!(
        signal = first,
        drain_timeout_ms = bound.as_millis() as u64,
        event = %"draining",
        "{first} received; draining: no new work, finishing the batch in hand (a second signal exits at once)"
    );
    tokio::select! {
        r = host.shutdown() => r,
        second = signals.next() => {
            let second = second?;
            tracing::warn!(
                signal = second,
                event = %"drain-abandoned",
                "{second} received while draining: exiting at once; the messages in hand are recovered as a dead node's"
            );
            std::process::exit(EXIT_SECOND_SIGNAL)
        }
        () = tokio::time::sleep(bound) => {
            tracing::error!(
                drain_timeout_ms = bound.as_millis() as u64,
                event = %"drain-timed-out",
                "the drain did not finish within handling.drain_timeout_ms: exiting; the messages in hand are recovered as a dead node's"
            );
            // Not through `main`'s return: dropping the runtime would wait for
            // the handler calls still running on blocking threads.
            std::process::exit(EXIT_DRAIN_TIMED_OUT)
        }
    }
}

/// Exit status after a second SIGINT/SIGTERM cut the drain short (128 + SIGINT, as shells do).
const EXIT_SECOND_SIGNAL: i32 = 130;
/// Exit status when the drain ran past `handling.drain_timeout_ms`.
const EXIT_DRAIN_TIMED_OUT: i32 = 124;

/// SIGINT and SIGTERM, each received as often as they come.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> anyhow::Result<&'static str> {
        tokio::select! {
            r = self.int.recv() => r.map(|()| "SIGINT"),
            r = self.term.recv() => r.map(|()| "SIGTERM"),
        }
        .context("the signal stream ended")
    }
}
