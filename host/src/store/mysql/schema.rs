//! Table names and DDL of the MySQL/MariaDB store, and the split of rows
//! into statements that fit the server's packet size.

use crate::store::maintenance::Table;
use crate::store::shared::CHUNK;

/// The longest table suffix (`_dead_letters` is 13 characters with its `_`).
const LONGEST_SUFFIX: usize = "_dead_letters".len();
/// MySQL and MariaDB limit identifiers to 64 characters.
pub(super) const MAX_SCHEMA: usize = 64 - LONGEST_SUFFIX;

/// Table names for one prefix: `quoted` for statements, `raw` for
/// `information_schema`.
#[derive(Debug, Clone)]
pub(super) struct Tables {
    pub incoming: String,
    pub outgoing: String,
    pub dead_letters: String,
    pub nodes: String,
    pub state: String,
    pub raw: [String; 5],
    /// The `GET_LOCK` name that serialises DDL of this prefix.
    pub lock_name: String,
}

impl Tables {
    /// `schema` is checked by the configuration to be `[A-Za-z_][A-Za-z0-9_]*`,
    /// so it needs no escaping inside backticks.
    pub(crate) fn new(schema: &str) -> Self {
        let raw = ["incoming", "outgoing", "dead_letters", "nodes", "state"]
            .map(|suffix| format!("{schema}_{suffix}"));
        let q = |i: usize| format!("`{}`", raw[i]);
        Tables {
            incoming: q(0),
            outgoing: q(1),
            dead_letters: q(2),
            nodes: q(3),
            state: q(4),
            lock_name: format!("{schema}_migrate"),
            raw,
        }
    }

    /// The table a maintenance step names.
    pub(crate) fn of(&self, table: Table) -> &str {
        table.pick(&self.incoming, &self.outgoing, &self.dead_letters)
    }

    /// `DROP TABLE IF EXISTS` of every table, as one statement.
    pub(crate) fn drop_statement(&self) -> String {
        format!(
            "DROP TABLE IF EXISTS {}, {}, {}, {}, {}",
            self.incoming, self.outgoing, self.dead_letters, self.nodes, self.state
        )
    }

    /// The `CREATE TABLE IF NOT EXISTS` statements, indexes included so that
    /// `IF NOT EXISTS` covers them too (MySQL has no `CREATE INDEX IF NOT EXISTS`;
    /// MariaDB does, but one shape for both is simpler).
    ///
    /// Ids are ASCII with a binary collation (the text order is the id order);
    /// state keys are `VARBINARY` so they compare byte for byte, as in SQLite
    /// (a `_ci` collation would merge `A` and `a`, a `PAD SPACE` one `k` and `k `).
    pub(crate) fn ddl(&self) -> Vec<String> {
        const ID: &str = "CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL";
        const TAIL: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id {ID},\n  status VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n  owner_id BIGINT NOT NULL DEFAULT 0,\n  execute_at BIGINT NULL,\n  attempts BIGINT NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  keep_until BIGINT NULL,\n  body LONGBLOB NOT NULL,\n  PRIMARY KEY (id),\n  KEY incoming_ready (status, owner_id, id),\n  KEY incoming_scheduled (status, owner_id, execute_at),\n  KEY incoming_handled (status, keep_until),\n  KEY incoming_owner (owner_id)\n) {TAIL}",
                self.incoming
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id {ID},\n  owner_id BIGINT NOT NULL DEFAULT 0,\n  destination TEXT NOT NULL,\n  deliver_by BIGINT NULL,\n  attempts BIGINT NOT NULL DEFAULT 0,\n  message_type TEXT NOT NULL,\n  body LONGBLOB NOT NULL,\n  PRIMARY KEY (id),\n  KEY outgoing_owner (owner_id, id)\n) {TAIL}",
                self.outgoing
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  id {ID},\n  message_type TEXT NOT NULL,\n  received_at TEXT NOT NULL,\n  source TEXT NULL,\n  error_kind TEXT NOT NULL,\n  error_message MEDIUMTEXT NOT NULL,\n  failed_at BIGINT NOT NULL,\n  attempts BIGINT NOT NULL,\n  replayable BOOLEAN NOT NULL DEFAULT TRUE,\n  body LONGBLOB NOT NULL,\n  PRIMARY KEY (id),\n  KEY dead_letters_failed (failed_at, id)\n) {TAIL}",
                self.dead_letters
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  node_id BIGINT NOT NULL,\n  name TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,\n  started_at BIGINT NOT NULL,\n  heartbeat_at BIGINT NOT NULL,\n  listeners TEXT NOT NULL,\n  PRIMARY KEY (node_id)\n) {TAIL}",
                self.nodes
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  plugin VARBINARY(255) NOT NULL,\n  `key` VARBINARY(1024) NOT NULL,\n  value LONGBLOB NOT NULL,\n  version BIGINT NOT NULL,\n  PRIMARY KEY (plugin, `key`)\n) {TAIL}",
                self.state
            ),
        ]
    }
}

/// Split `rows` into runs of at most [`CHUNK`] rows and about `budget` bytes
/// (a statement must fit in the server's `max_allowed_packet`); a row larger
/// than the budget goes alone.
pub(super) fn chunks<T>(rows: &[T], budget: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let n = size(row);
        if i > start && (i - start >= CHUNK || bytes + n > budget) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let rows = vec![10usize; 1200];
        let sizes: Vec<usize> = chunks(&rows, usize::MAX, |n| *n)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![500, 500, 200]);
        let sizes: Vec<usize> = chunks(&rows[..7], 25, |n| *n)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![2, 2, 2, 1]);
        assert_eq!(chunks(&[100usize], 10, |n| *n).len(), 1);
        assert!(chunks::<usize>(&[], 10, |n| *n).is_empty());
    }

    #[test]
    fn long_schemas_still_fit_mysql_identifiers() {
        let t = Tables::new(&"s".repeat(MAX_SCHEMA));
        assert!(t.raw.iter().all(|n| n.len() <= 64));
        assert!(t.lock_name.len() <= 64);
    }
}
