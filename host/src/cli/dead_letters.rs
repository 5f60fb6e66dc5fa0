//! `jasper-host dead-letters …`: list, replay, purge.

use clap::Subcommand;
use uuid::Uuid;

use super::ConfigArg;
use crate::store::{self, Selection};

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters with their error.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Put dead letters back into the inbox (all replayable ones without --id).
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long = "id")]
        ids: Vec<Uuid>,
    },
    /// Delete dead letters (all without --id).
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long = "id")]
        ids: Vec<Uuid>,
    },
}

pub(crate) async fn run(cmd: DeadLettersCommand) -> anyhow::Result<()> {
    match cmd {
        DeadLettersCommand::List {
            config,
            json,
            limit,
        } => {
            let cfg = config.load()?;
            let store = store::open(&cfg.storage).await?;
            store.check_schema().await?;
            let list = store.dead_letters(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no dead letters");
            } else {
                for d in list {
                    println!(
                        "{}  {}  {} after {} attempt(s): {}",
                        d.id, d.message_type, d.error_kind, d.attempts, d.error_message
                    );
                }
            }
        }
        DeadLettersCommand::Replay { config, ids } => {
            let cfg = config.load()?;
            let store = store::open(&cfg.storage).await?;
            store.check_schema().await?;
            let n = store.replay_dead_letters(&Selection::all_or(ids)).await?;
            println!("replayed {n} dead letter(s) into the inbox");
        }
        DeadLettersCommand::Purge { config, ids } => {
            let cfg = config.load()?;
            let store = store::open(&cfg.storage).await?;
            store.check_schema().await?;
            let n = store.purge_dead_letters(&Selection::all_or(ids)).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}
