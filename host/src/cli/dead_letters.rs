//! `jasper-host dead-letters …`: list, show one, replay, purge.

use clap::Subcommand;
use serde::Serialize;
use uuid::Uuid;

use super::ConfigArg;
use super::progress::Progress;
use super::shown::MessageShown;
use crate::envelope::Envelope;
use crate::store::{DeadLetter, Selection};

/// How much of a body the plain listing shows.
const PREVIEW_CHARS: usize = 120;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters with their error and a preview of the body (--json:
    /// each with its whole message; `show ID` for one).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// A JSON array; each entry's `message` holds the content type,
        /// headers and body (`body_encoding`: json, text or base64).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Print one dead letter in full as JSON: its error, headers and body.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The dead letter's id (as `list` prints it).
        id: Uuid,
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

/// A dead letter as printed in JSON: its row, and the message decoded from
/// the stored envelope (`message`), or why that failed (`message_error`,
/// with `message` null): one bad row does not hide the others.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    row: &'a DeadLetter,
    message: Option<MessageShown>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_error: Option<String>,
}

impl<'a> Listed<'a> {
    fn of(row: &'a DeadLetter) -> Listed<'a> {
        match Envelope::decode(&row.body) {
            Ok(env) => Listed {
                row,
                message: Some(MessageShown::of(&env)),
                message_error: None,
            },
            Err(e) => Listed {
                row,
                message: None,
                message_error: Some(format!(
                    "the stored envelope ({} bytes) cannot be decoded: {}",
                    row.body.len(),
                    crate::error_chain(&e)
                )),
            },
        }
    }

    /// One line for the plain listing: the body's start, or why there is none.
    fn preview(&self) -> String {
        let Some(m) = &self.message else {
            return self.message_error.clone().unwrap_or_default();
        };
        let body = match &m.body {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut line: String = body.chars().take(PREVIEW_CHARS).collect();
        if body.chars().nth(PREVIEW_CHARS).is_some() {
            line.push('…');
        }
        format!("body ({}): {line}", m.body_encoding.name())
    }
}

pub(crate) async fn run(cmd: DeadLettersCommand) -> anyhow::Result<()> {
    match cmd {
        DeadLettersCommand::List {
            config,
            json,
            limit,
        } => {
            let store = config.open_store().await?;
            let list = store.dead_letters(limit).await?;
            let shown: Vec<Listed<'_>> = list.iter().map(Listed::of).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else if shown.is_empty() {
                println!("no dead letters");
            } else {
                for s in shown {
                    let d = s.row;
                    println!(
                        "{}  {}  {} after {} attempt(s): {}",
                        d.id, d.message_type, d.error_kind, d.attempts, d.error_message
                    );
                    println!("    {}", s.preview());
                }
            }
        }
        DeadLettersCommand::Show { config, id } => {
            let store = config.open_store().await?;
            let Some(row) = store.dead_letter(id).await? else {
                anyhow::bail!(
                    "no dead letter with id {id} (`dead-letters list` shows the ids there are)"
                );
            };
            println!("{}", serde_json::to_string_pretty(&Listed::of(&row))?);
        }
        DeadLettersCommand::Replay { config, ids } => {
            let store = config.open_store().await?;
            let n = replay(&*store, ids).await?;
            println!("replayed {n} dead letter(s) into the inbox");
        }
        DeadLettersCommand::Purge { config, ids } => {
            let store = config.open_store().await?;
            let n = store.purge_dead_letters(&Selection::all_or(ids)).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}

/// Dead letters replayed per transaction by `replay` (a crash between
/// two leaves the rest in dead letters, to replay again).
const REPLAY_CHUNK: usize = 500;

/// Replay `ids` in chunks with a bar, or every replayable dead letter in
/// one statement (no `--id`) with a spinner; returns how many went back
/// into the inbox.
async fn replay(store: &dyn crate::store::MessageStore, ids: Vec<Uuid>) -> anyhow::Result<u64> {
    if ids.is_empty() {
        let held = store.counts().await.map_or(0, |c| c.dead_letters);
        let progress =
            Progress::spinner("replaying dead letters", u64::try_from(held).unwrap_or(0));
        let n = store.replay_dead_letters(&Selection::All).await;
        progress.finish();
        return Ok(n?);
    }
    let progress = Progress::bar("replaying dead letters", ids.len() as u64);
    let mut n = 0;
    for chunk in ids.chunks(REPLAY_CHUNK) {
        n += store
            .replay_dead_letters(&Selection::Ids(chunk.to_vec()))
            .await?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;
    use uuid::Uuid;

    use super::Listed;
    use crate::envelope::Envelope;
    use crate::store::DeadLetter;

    fn dead(body: Vec<u8>) -> DeadLetter {
        DeadLetter {
            id: Uuid::now_v7(),
            message_type: "T".into(),
            received_at: "local://a".into(),
            source: None,
            error_kind: "rejected".into(),
            error_message: "no".into(),
            failed_at: 1,
            attempts: 1,
            replayable: true,
            body,
        }
    }

    #[test]
    fn a_dead_letter_carries_its_decoded_message() {
        let mut env = Envelope::new("T", br#"{"n":1}"#.to_vec());
        env.headers.insert("h".into(), "v".into());
        let row = dead(env.encode());
        let shown = serde_json::to_value(Listed::of(&row)).unwrap();
        assert_eq!(shown["error_message"], "no", "{shown}");
        assert_eq!(shown["message"]["body"], json!({"n": 1}), "{shown}");
        assert_eq!(shown["message"]["body_encoding"], "json", "{shown}");
        assert_eq!(shown["message"]["headers"], json!({"h": "v"}), "{shown}");
        assert!(shown.get("message_error").is_none(), "{shown}");
        assert!(
            Listed::of(&row)
                .preview()
                .starts_with(r#"body (json): {"n":1}"#)
        );
    }

    #[test]
    fn an_undecodable_envelope_is_said_so_in_its_entry_only() {
        let row = dead(b"\x07garbage".to_vec());
        let shown = serde_json::to_value(Listed::of(&row)).unwrap();
        assert_eq!(shown["message"], json!(null), "{shown}");
        let why = shown["message_error"].as_str().unwrap();
        assert!(why.contains("cannot be decoded"), "{why}");
        assert_eq!(shown["id"], row.id.to_string(), "the row is still listed");
        assert!(Listed::of(&row).preview().contains("cannot be decoded"));
    }
}
