//! `jasper-host plugins …`: what is in the plugin folder, which version of
//! each (the SHA-256 of its bytes) and what each handles.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::ConfigArg;
use crate::config::PluginsConfig;
use crate::runtime::{Plugin, Runtime};

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load every plugin in the configured folder and show its version and
    /// subscriptions.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// A JSON array of {name, version, subscriptions, path} (the whole
        /// version: SHA-256 of the file, hex).
        #[arg(long)]
        json: bool,
    },
    /// Check that one .wasm file loads as a plugin.
    Check { file: PathBuf },
}

pub(crate) async fn run(cmd: PluginsCommand) -> anyhow::Result<()> {
    match cmd {
        PluginsCommand::List { config, json } => {
            let cfg = config.load()?;
            let runtime = Runtime::new(&cfg.plugins)?;
            let (plugins, errors) = runtime.load_dir(&cfg.plugins.dir).await?;
            if json {
                let listed: Vec<Listed<'_>> = plugins.iter().map(|p| Listed::of(p)).collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                for p in plugins.iter() {
                    println!(
                        "{}  {}  {}  handles: {}",
                        p.name,
                        p.short_version(),
                        p.path.display(),
                        p.subscriptions.join(", ")
                    );
                }
            }
            for e in &errors {
                eprintln!("error: {}", crate::error_chain(e));
            }
            if !errors.is_empty() {
                anyhow::bail!("{} plugin(s) failed to load", errors.len());
            }
        }
        PluginsCommand::Check { file } => {
            let runtime = Runtime::new(&PluginsConfig::default())?;
            let p = runtime.load_plugin(&file).await?;
            println!(
                "ok: plugin '{}' version {} handles: {}",
                p.name,
                p.short_version(),
                p.subscriptions.join(", ")
            );
        }
    }
    Ok(())
}

/// One plugin as `plugins list --json` shows it; the field names are stable.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    name: &'a str,
    version: &'a str,
    subscriptions: &'a [String],
    path: String,
}

impl<'a> Listed<'a> {
    fn of(p: &'a Plugin) -> Self {
        Listed {
            name: &p.name,
            version: &p.version,
            subscriptions: &p.subscriptions,
            path: p.path.display().to_string(),
        }
    }
}
