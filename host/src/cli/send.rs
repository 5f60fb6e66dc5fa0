//! `jasper-host send`: write messages durably into the inbox, routed to every
//! plugin that handles the type, whether or not a host is running. All or
//! nothing: one bad line, an unknown type or a store error writes nothing.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use uuid::Uuid;

use super::ConfigArg;
use super::progress::Progress;
use crate::envelope::local_row;
use crate::runtime::Runtime;
use crate::sending::envelopes_for;
use crate::store;

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The message type, e.g. PlaceOrder.
    #[arg(long = "type", value_name = "TYPE")]
    pub message_type: String,
    /// The message id (a UUID); only with a single body. Sending an id that is
    /// already in the inbox is a no-op.
    #[arg(long)]
    pub id: Option<Uuid>,
    /// One JSON body.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub body: Option<String>,
    /// A file with one JSON body per line, or - for standard input.
    #[arg(long, value_name = "PATH|-")]
    pub file: Option<PathBuf>,
    /// Correlation id for every message sent (default: the message's id).
    #[arg(long)]
    pub correlation_id: Option<String>,
}

fn read_bodies(args: &SendArgs) -> anyhow::Result<Vec<String>> {
    let (text, origin) = match (&args.body, &args.file) {
        (Some(b), _) => (b.clone(), "--body".to_string()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading bodies from standard input")?;
            (s, "standard input".to_string())
        }
        (None, Some(p)) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        (None, None) => bail!("give --body JSON or --file PATH"),
    };
    let mut bodies = Vec::new();
    let lines: Vec<&str> = if args.body.is_some() {
        vec![text.as_str()]
    } else {
        text.lines().collect()
    };
    let progress = Progress::bar("checking bodies", lines.len() as u64);
    for (i, line) in lines.iter().enumerate() {
        progress.inc(1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
            bail!(
                "line {} of {origin} is not valid JSON: {e}; nothing was sent",
                i + 1
            );
        }
        bodies.push(line.to_string());
    }
    progress.finish();
    if bodies.is_empty() {
        bail!("{origin} holds no message body; nothing was sent");
    }
    Ok(bodies)
}

pub(crate) async fn send(args: &SendArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    let bodies = read_bodies(args)?;
    if args.id.is_some() && bodies.len() != 1 {
        bail!(
            "--id names one message but {} bodies were given; nothing was sent",
            bodies.len()
        );
    }
    let runtime = Runtime::new(&cfg.plugins)?;
    let (mut plugins, errors) = runtime
        .load_dir(&cfg.plugins.dir)
        .await
        .with_context(|| format!("loading plugins from {}", cfg.plugins.dir.display()))?;
    // A type routed to a peer is written to the inbox addressed to it; the
    // host's worker forwards it (outgoing row, then the sender).
    plugins.add_routes(&cfg.route);
    let mut rows = Vec::with_capacity(bodies.len());
    let progress = Progress::bar("making envelopes", bodies.len() as u64);
    for body in &bodies {
        progress.inc(1);
        let envelopes = match envelopes_for(
            plugins.router(),
            &args.message_type,
            body.as_bytes().to_vec(),
            args.id,
            args.correlation_id.as_deref(),
            "cli",
        ) {
            Ok(e) => e,
            Err(e) => {
                let mut msg = format!(
                    "{e}; nothing was sent (plugin folder {})",
                    cfg.plugins.dir.display()
                );
                for e in &errors {
                    msg.push_str(&format!("\n  also: {}", crate::error_chain(e)));
                }
                bail!(msg);
            }
        };
        rows.extend(envelopes.iter().map(local_row));
    }
    progress.finish();
    let store = store::open(&cfg.storage).await?;
    store.migrate().await?;
    // One insert: all or nothing.
    let progress = Progress::spinner("writing messages to the inbox", rows.len() as u64);
    let report = store.insert_incoming(&rows).await;
    progress.finish();
    let report = report?;
    println!("sent {} message(s)", report.inserted);
    if !report.duplicates.is_empty() {
        println!(
            "skipped {} duplicate(s) already in the inbox: {}",
            report.duplicates.len(),
            report
                .duplicates
                .iter()
                .take(10)
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
