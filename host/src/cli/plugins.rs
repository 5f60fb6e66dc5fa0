//! `jasper-host plugins …`: what is in the plugin folder and what each handles.

use std::path::PathBuf;

use clap::Subcommand;

use super::ConfigArg;
use crate::config::PluginsConfig;
use crate::runtime::Runtime;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load every plugin in the configured folder and show its subscriptions.
    List(ConfigArg),
    /// Check that one .wasm file loads as a plugin.
    Check { file: PathBuf },
}

pub(crate) async fn run(cmd: PluginsCommand) -> anyhow::Result<()> {
    match cmd {
        PluginsCommand::List(config) => {
            let cfg = config.load()?;
            let runtime = Runtime::new(&cfg.plugins)?;
            let (plugins, errors) = runtime.load_dir(&cfg.plugins.dir).await?;
            for p in plugins.iter() {
                println!(
                    "{}  {}  handles: {}",
                    p.name,
                    p.path.display(),
                    p.subscriptions.join(", ")
                );
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
                "ok: plugin '{}' handles: {}",
                p.name,
                p.subscriptions.join(", ")
            );
        }
    }
    Ok(())
}
