//! `jasper-host state …`: a plugin's committed state, read as JSON (one key,
//! or the keys under a prefix). Reads only: state is written by handlers.

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::ConfigArg;
use super::shown::{Encoding, Shown};

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print one key of a plugin's state as a JSON object: plugin, key,
    /// version, encoding ("json", or "text"/"base64" for a value that is not
    /// JSON) and value. Fails when the key is not there.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// The plugin (its file name without .wasm).
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        key: String,
    },
    /// Print a plugin's state keys in key order (byte-wise) as a JSON array
    /// of {key, version, encoding, value}.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// The plugin (its file name without .wasm).
        #[arg(long)]
        plugin: String,
        /// Only keys that start with this text (taken literally: `%` and `_`
        /// are not wildcards).
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// One key as printed.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<&'a str>,
    key: &'a str,
    version: i64,
    #[serde(flatten)]
    value: Shown,
}

pub(crate) async fn run(cmd: StateCommand) -> anyhow::Result<()> {
    match cmd {
        StateCommand::Get {
            config,
            plugin,
            key,
        } => {
            let store = config.open_store().await?;
            let found = store
                .read_state(&plugin, &key)
                .await
                .with_context(|| format!("reading state key '{key}' of plugin '{plugin}'"))?;
            let Some(found) = found else {
                anyhow::bail!("plugin '{plugin}' has no state key '{key}'");
            };
            let value = Shown::of(&found.value);
            if value.encoding != Encoding::Json {
                eprintln!(
                    "note: the value of key '{key}' of plugin '{plugin}' is not JSON; shown as {}",
                    value.encoding.name()
                );
            }
            let entry = Entry {
                plugin: Some(&plugin),
                key: &key,
                version: found.version,
                value,
            };
            println!("{}", serde_json::to_string_pretty(&entry)?);
        }
        StateCommand::List {
            config,
            plugin,
            prefix,
            limit,
        } => {
            let store = config.open_store().await?;
            let rows = store
                .list_state(&plugin, &prefix, limit)
                .await
                .with_context(|| format!("listing the state of plugin '{plugin}'"))?;
            if rows.len() == limit {
                eprintln!("note: showing the first {limit} key(s); there may be more (--limit)");
            }
            let entries: Vec<Entry<'_>> = rows
                .iter()
                .map(|r| Entry {
                    plugin: None,
                    key: &r.key,
                    version: r.version,
                    value: Shown::of(&r.value),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
    }
    Ok(())
}
