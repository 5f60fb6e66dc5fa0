//! `jasper-host storage …`: counts, rebuild, script, clear, release.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::ConfigArg;
use crate::store;

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Count persisted messages by kind.
    Counts {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object: incoming, scheduled, handled, outgoing, dead_letters.
        #[arg(long)]
        json: bool,
    },
    /// Drop and recreate every message-store object (all messages and state are lost).
    Rebuild(ConfigArg),
    /// Write the DDL of the configured backend to a file.
    Script {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete every persisted message of every kind; keep the schema and state.
    Clear(ConfigArg),
    /// Hand every owned message back to any node.
    Release(ConfigArg),
}

pub(crate) async fn run(cmd: StorageCommand) -> anyhow::Result<()> {
    match cmd {
        StorageCommand::Counts { config, json } => {
            let store = config.open_store().await?;
            let c = store.counts().await?;
            if json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!("incoming      {}", c.incoming);
                println!("scheduled     {}", c.scheduled);
                println!("handled       {}", c.handled);
                println!("outgoing      {}", c.outgoing);
                println!("dead letters  {}", c.dead_letters);
            }
        }
        StorageCommand::Rebuild(config) => {
            let cfg = config.load()?;
            store::open(&cfg.storage).await?.rebuild().await?;
            println!("rebuilt the message store at {}", cfg.storage.url);
        }
        StorageCommand::Script { config, file } => {
            let cfg = config.load()?;
            let script = store::open(&cfg.storage).await?.schema_script();
            std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
            println!("wrote {}", file.display());
        }
        StorageCommand::Clear(config) => {
            let store = config.open_store().await?;
            let total = store.counts().await.map_or(0, |c| {
                c.incoming + c.scheduled + c.handled + c.outgoing + c.dead_letters
            });
            let progress = super::progress::Progress::spinner(
                "clearing persisted messages",
                u64::try_from(total).unwrap_or(0),
            );
            let cleared = store.clear().await;
            progress.finish();
            cleared?;
            println!("cleared every persisted message");
        }
        StorageCommand::Release(config) => {
            let store = config.open_store().await?;
            let n = store.release_all().await?;
            println!("released {n} message(s) to any node");
        }
    }
    Ok(())
}
