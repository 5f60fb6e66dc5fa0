//! The SQLite store's table names (`{schema}_incoming`, …), its DDL and the
//! statements it runs, built once per store.

use std::sync::Arc;

use crate::store::maintenance::Table;
use crate::store::rows::{STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED};

/// Table names for one prefix.
#[derive(Debug, Clone)]
pub(super) struct Tables {
    pub(super) incoming: String,
    pub(super) outgoing: String,
    pub(super) dead_letters: String,
    pub(super) nodes: String,
    pub(super) state: String,
    pub(super) prefix: String,
}

impl Tables {
    pub(super) fn new(schema: &str) -> Self {
        let p = format!("{schema}_");
        Tables {
            incoming: format!("{p}incoming"),
            outgoing: format!("{p}outgoing"),
            dead_letters: format!("{p}dead_letters"),
            nodes: format!("{p}nodes"),
            state: format!("{p}state"),
            prefix: p,
        }
    }

    pub(super) fn all(&self) -> [&str; 5] {
        [
            &self.incoming,
            &self.outgoing,
            &self.dead_letters,
            &self.nodes,
            &self.state,
        ]
    }
}

/// Pre-built statements (table names are configuration, checked to be plain identifiers).
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) claim: Arc<str>,
    pub(super) next_scheduled: Arc<str>,
    pub(super) read_state: Arc<str>,
    pub(super) retry: Arc<str>,
    pub(super) delete_incoming: Arc<str>,
    pub(super) insert_dead: Arc<str>,
    pub(super) state_upsert: Arc<str>,
    pub(super) state_insert_new: Arc<str>,
    pub(super) state_update_checked: Arc<str>,
    pub(super) state_delete_checked: Arc<str>,
    pub(super) state_delete: Arc<str>,
    pub(super) state_version: Arc<str>,
}

impl Sql {
    pub(super) fn new(t: &Tables) -> Self {
        let (inc, dl, st) = (&t.incoming, &t.dead_letters, &t.state);
        let s = |x: String| -> Arc<str> { x.into() };
        Sql {
            // Ready rows first in id (= time) order: those never claimed and at
            // most one claimed before without an outcome (see `rows::ClaimedRow`);
            // then due scheduled rows.
            claim: s(format!(
                "WITH ready AS (SELECT id, attempts FROM {inc} WHERE status = '{STATUS_INCOMING}' AND owner_id = 0 ORDER BY id LIMIT ?3) \
                 UPDATE {inc} SET owner_id = ?1, status = '{STATUS_INCOMING}', attempts = attempts + 1 WHERE id IN ( \
                   SELECT id FROM ready WHERE attempts = 0 \
                   UNION ALL \
                   SELECT id FROM (SELECT id FROM ready WHERE attempts > 0 ORDER BY id LIMIT 1) \
                   UNION ALL \
                   SELECT id FROM (SELECT id FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0 AND execute_at <= ?2 ORDER BY execute_at LIMIT ?3) \
                   LIMIT ?3) \
                 RETURNING id, attempts, received_at, body"
            )),
            next_scheduled: s(format!(
                "SELECT MIN(execute_at) FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0"
            )),
            read_state: s(format!(
                "SELECT value, version FROM {st} WHERE plugin = ?1 AND key = ?2"
            )),
            retry: s(format!(
                "UPDATE {inc} SET owner_id = 0, attempts = ?2, execute_at = ?3, \
                 status = CASE WHEN ?3 IS NULL THEN '{STATUS_INCOMING}' ELSE '{STATUS_SCHEDULED}' END WHERE id = ?1"
            )),
            delete_incoming: s(format!("DELETE FROM {inc} WHERE id = ?1")),
            insert_dead: s(format!(
                "INSERT INTO {dl} (id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT(id) DO UPDATE SET error_kind = excluded.error_kind, error_message = excluded.error_message, \
                 failed_at = excluded.failed_at, attempts = excluded.attempts, body = excluded.body"
            )),
            state_upsert: s(format!(
                "INSERT INTO {st} (plugin, key, value, version) VALUES (?1, ?2, ?3, 1) \
                 ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value, version = version + 1"
            )),
            state_insert_new: s(format!(
                "INSERT INTO {st} (plugin, key, value, version) VALUES (?1, ?2, ?3, 1) ON CONFLICT(plugin, key) DO NOTHING"
            )),
            state_update_checked: s(format!(
                "UPDATE {st} SET value = ?3, version = version + 1 WHERE plugin = ?1 AND key = ?2 AND version = ?4"
            )),
            state_delete_checked: s(format!(
                "DELETE FROM {st} WHERE plugin = ?1 AND key = ?2 AND version = ?3"
            )),
            state_delete: s(format!("DELETE FROM {st} WHERE plugin = ?1 AND key = ?2")),
            state_version: s(format!(
                "SELECT version FROM {st} WHERE plugin = ?1 AND key = ?2"
            )),
        }
    }
}

impl Tables {
    /// The table a maintenance step names.
    pub(super) fn of(&self, table: Table) -> &str {
        table.pick(&self.incoming, &self.outgoing, &self.dead_letters)
    }

    pub(super) fn ddl(&self) -> Vec<String> {
        let t = self;
        let p = &t.prefix;
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  status TEXT NOT NULL,\n  owner_id INTEGER NOT NULL DEFAULT 0,\n  execute_at INTEGER,\n  attempts INTEGER NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  keep_until INTEGER,\n  body BLOB NOT NULL\n)",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_ready ON {} (id) WHERE status = '{STATUS_INCOMING}' AND owner_id = 0",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_scheduled ON {} (execute_at) WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_handled ON {} (keep_until) WHERE status = '{STATUS_HANDLED}'",
                t.incoming
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}incoming_owner ON {} (owner_id) WHERE owner_id <> 0",
                t.incoming
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  owner_id INTEGER NOT NULL DEFAULT 0,\n  destination TEXT NOT NULL,\n  deliver_by INTEGER,\n  attempts INTEGER NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  body BLOB NOT NULL\n)",
                t.outgoing
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {p}outgoing_free ON {} (id) WHERE owner_id = 0",
                t.outgoing
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id TEXT PRIMARY KEY NOT NULL,\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  source TEXT,\n  error_kind TEXT NOT NULL,\n  error_message TEXT NOT NULL,\n  failed_at INTEGER NOT NULL,\n  attempts INTEGER NOT NULL,\n  replayable INTEGER NOT NULL DEFAULT 1,\n  body BLOB NOT NULL\n)",
                t.dead_letters
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  node_id INTEGER PRIMARY KEY NOT NULL,\n  name TEXT NOT NULL,\n  started_at INTEGER NOT NULL,\n  heartbeat_at INTEGER NOT NULL,\n  listeners TEXT NOT NULL DEFAULT ''\n)",
                t.nodes
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  plugin TEXT NOT NULL,\n  key TEXT NOT NULL,\n  value BLOB NOT NULL,\n  version INTEGER NOT NULL,\n  PRIMARY KEY (plugin, key)\n)",
                t.state
            ),
        ]
    }
}
