//! The SQL text of the PostgreSQL store: quoted, schema-qualified table names,
//! the DDL (one statement per object, so `migrate` can skip what exists), and
//! every statement the store runs, built once per store.
//!
//! Ids are native `uuid` columns, bound and read as `Uuid` (`uuid[]` for
//! sets). PostgreSQL orders `uuid` byte by byte, which for UUIDv7 is
//! creation-time order, the order the claim queries rely on.

use std::sync::Arc;

use crate::store::maintenance::Table;
use crate::store::rows::{STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED};

/// `"name"` with embedded quotes doubled (the schema is validated anyway).
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal with embedded quotes doubled (for the generated script).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A schema name PostgreSQL takes without surprises: what the configuration allows.
pub(super) fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    schema.len() <= 63 && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Bare table names (as in `pg_class.relname`).
pub(super) const TABLES: [&str; 5] = [
    "jasper_incoming",
    "jasper_outgoing",
    "jasper_dead_letters",
    "jasper_nodes",
    "jasper_state",
];

/// The advisory-lock key that serializes DDL on one schema across hosts:
/// FNV-1a (64 bit) of a fixed prefix and the schema name, so every build of
/// the host derives the same key.
pub(super) fn ddl_lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "jasper-host/ddl/".bytes().chain(schema.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Schema-qualified, quoted table names.
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// The schema as configured (unquoted), for catalog lookups.
    pub schema: String,
    /// The schema, quoted.
    pub schema_q: String,
    pub incoming: String,
    pub outgoing: String,
    pub dead_letters: String,
    pub nodes: String,
    pub state: String,
}

impl Names {
    pub(crate) fn new(schema: &str) -> Self {
        let schema_q = quote_ident(schema);
        let t = |name: &str| format!("{schema_q}.{}", quote_ident(name));
        Names {
            schema: schema.to_owned(),
            incoming: t(TABLES[0]),
            outgoing: t(TABLES[1]),
            dead_letters: t(TABLES[2]),
            nodes: t(TABLES[3]),
            state: t(TABLES[4]),
            schema_q,
        }
    }

    /// The table a maintenance step names.
    pub(crate) fn of(&self, table: Table) -> &str {
        table.pick(&self.incoming, &self.outgoing, &self.dead_letters)
    }

    pub(crate) fn all(&self) -> [&str; 5] {
        [
            &self.incoming,
            &self.outgoing,
            &self.dead_letters,
            &self.nodes,
            &self.state,
        ]
    }
}

/// What a DDL statement creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Object {
    Schema,
    /// A table or index, by its bare name.
    Relation(&'static str),
}

/// Every object of the store, in creation order.
pub(super) fn ddl(n: &Names) -> Vec<(Object, String)> {
    let (inc, out, dl, nodes, st) = (
        &n.incoming,
        &n.outgoing,
        &n.dead_letters,
        &n.nodes,
        &n.state,
    );
    let rel = Object::Relation;
    vec![
        (
            Object::Schema,
            format!("CREATE SCHEMA IF NOT EXISTS {}", n.schema_q),
        ),
        (
            rel("jasper_incoming"),
            format!(
                "CREATE TABLE IF NOT EXISTS {inc} (\n  id uuid PRIMARY KEY,\n  status text NOT NULL,\n  owner_id bigint NOT NULL DEFAULT 0,\n  execute_at bigint,\n  attempts bigint NOT NULL DEFAULT 0,\n  message_type text NOT NULL,\n  received_at text NOT NULL,\n  keep_until bigint,\n  body bytea NOT NULL\n)"
            ),
        ),
        (
            rel("jasper_incoming_ready"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_incoming_ready ON {inc} (id) WHERE status = '{STATUS_INCOMING}' AND owner_id = 0"
            ),
        ),
        (
            rel("jasper_incoming_scheduled"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_incoming_scheduled ON {inc} (execute_at) WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0"
            ),
        ),
        (
            rel("jasper_incoming_handled"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_incoming_handled ON {inc} (keep_until) WHERE status = '{STATUS_HANDLED}'"
            ),
        ),
        (
            rel("jasper_incoming_owner"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_incoming_owner ON {inc} (owner_id) WHERE owner_id <> 0"
            ),
        ),
        (
            rel("jasper_outgoing"),
            format!(
                "CREATE TABLE IF NOT EXISTS {out} (\n  id uuid PRIMARY KEY,\n  owner_id bigint NOT NULL DEFAULT 0,\n  destination text NOT NULL,\n  deliver_by bigint,\n  attempts bigint NOT NULL DEFAULT 0,\n  message_type text NOT NULL,\n  body bytea NOT NULL\n)"
            ),
        ),
        (
            rel("jasper_outgoing_free"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_outgoing_free ON {out} (id) WHERE owner_id = 0"
            ),
        ),
        (
            rel("jasper_outgoing_owner"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_outgoing_owner ON {out} (owner_id) WHERE owner_id <> 0"
            ),
        ),
        (
            rel("jasper_dead_letters"),
            format!(
                "CREATE TABLE IF NOT EXISTS {dl} (\n  id uuid PRIMARY KEY,\n  message_type text NOT NULL,\n  received_at text NOT NULL,\n  source text,\n  error_kind text NOT NULL,\n  error_message text NOT NULL,\n  failed_at bigint NOT NULL,\n  attempts bigint NOT NULL,\n  replayable boolean NOT NULL DEFAULT true,\n  body bytea NOT NULL\n)"
            ),
        ),
        (
            rel("jasper_dead_letters_failed"),
            format!(
                "CREATE INDEX IF NOT EXISTS jasper_dead_letters_failed ON {dl} (failed_at, id)"
            ),
        ),
        (
            rel("jasper_nodes"),
            format!(
                "CREATE TABLE IF NOT EXISTS {nodes} (\n  node_id bigint PRIMARY KEY,\n  name text NOT NULL,\n  started_at bigint NOT NULL,\n  heartbeat_at bigint NOT NULL,\n  listeners text NOT NULL DEFAULT ''\n)"
            ),
        ),
        (
            rel("jasper_state"),
            format!(
                "CREATE TABLE IF NOT EXISTS {st} (\n  plugin text NOT NULL,\n  key text NOT NULL,\n  value bytea NOT NULL,\n  version bigint NOT NULL,\n  PRIMARY KEY (plugin, key)\n)"
            ),
        ),
    ]
}

/// The DDL as one script for `psql -v ON_ERROR_STOP=1 -f FILE`: one
/// transaction, serialized with running hosts by the same advisory lock.
pub(super) fn script(n: &Names) -> String {
    let mut out = format!(
        "-- jasper-host message store (PostgreSQL), schema {}\n\
         -- Apply with: psql -v ON_ERROR_STOP=1 -f FILE\n\
         BEGIN;\n\
         -- The lock `migrate` takes, so a host starting now waits for this script.\n\
         SELECT pg_advisory_xact_lock({}) AS {};\n",
        quote_literal(&n.schema),
        ddl_lock_key(&n.schema),
        quote_ident("jasper_ddl_lock"),
    );
    for (_, stmt) in ddl(n) {
        out.push_str(&stmt);
        out.push_str(";\n");
    }
    out.push_str("COMMIT;\n");
    out
}

/// Every statement the store runs, built once.
#[derive(Debug)]
pub(super) struct Statements {
    pub claim: Arc<str>,
    pub lock_claimed: Arc<str>,
    pub release_claimed: Arc<str>,
    pub next_scheduled: Arc<str>,
    pub read_state: Arc<str>,
    pub insert_incoming: Arc<str>,
    pub mark_handled: Arc<str>,
    pub mark_held: Arc<str>,
    pub insert_outgoing: Arc<str>,
    pub retry: Arc<str>,
    pub delete_incoming: Arc<str>,
    pub insert_dead: Arc<str>,
    pub state_lock: Arc<str>,
    pub state_upsert: Arc<str>,
    pub state_insert_new: Arc<str>,
    pub state_update_checked: Arc<str>,
    pub state_delete_checked: Arc<str>,
    pub state_delete: Arc<str>,
    pub claim_outgoing: Arc<str>,
    pub delete_outgoing: Arc<str>,
    pub delete_expired_handled: Arc<str>,
    pub register_node: Arc<str>,
    pub heartbeat: Arc<str>,
    pub remove_node: Arc<str>,
    pub release_orphans: [Arc<str>; 2],
    pub forget_dead_nodes: Arc<str>,
    pub counts: Arc<str>,
    pub dead_letters: Arc<str>,
    pub dead_letter: Arc<str>,
    pub list_state: Arc<str>,
    pub replay_all: Arc<str>,
    pub replay_ids: Arc<str>,
    pub purge_all: Arc<str>,
    pub purge_ids: Arc<str>,
    pub check_schema: Arc<str>,
    pub existing_objects: Arc<str>,
}

impl Statements {
    pub(crate) fn new(n: &Names) -> Self {
        let (inc, out, dl, nodes, st) = (
            &n.incoming,
            &n.outgoing,
            &n.dead_letters,
            &n.nodes,
            &n.state,
        );
        let s = |x: String| -> Arc<str> { x.into() };
        // Live owners: this node, and nodes with a fresh heartbeat ($2).
        let live = format!("SELECT node_id FROM {nodes} WHERE node_id = $1 OR heartbeat_at >= $2");
        let replay = |filter: &str| {
            // Delete and re-insert in one statement, so a dead letter that
            // arrives meanwhile is neither lost nor half moved; an id still in
            // the inbox wins.
            s(format!(
                "WITH moved AS (DELETE FROM {dl} WHERE {filter} \
                   RETURNING id, message_type, received_at, body) \
                 INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
                 SELECT id, '{STATUS_INCOMING}', 0, NULL, 0, message_type, received_at, body FROM moved \
                 ON CONFLICT (id) DO NOTHING"
            ))
        };
        Statements {
            // Ready rows first in id (= time) order: those never claimed and at
            // most one claimed before without an outcome (see `rows::ClaimedRow`);
            // then due scheduled rows up to the limit. SKIP LOCKED: two nodes
            // never take the same row and never wait for each other.
            claim: s(format!(
                "WITH ready AS ( \
                   SELECT id, attempts FROM {inc} WHERE status = '{STATUS_INCOMING}' AND owner_id = 0 \
                   ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED), \
                 taken AS ( \
                   SELECT id FROM ready WHERE attempts = 0 \
                   UNION ALL (SELECT id FROM ready WHERE attempts > 0 ORDER BY id LIMIT 1)), \
                 due AS ( \
                   SELECT id FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0 AND execute_at <= $2 \
                   ORDER BY execute_at LIMIT GREATEST($3 - (SELECT count(*) FROM taken), 0) FOR UPDATE SKIP LOCKED) \
                 UPDATE {inc} SET owner_id = $1, status = '{STATUS_INCOMING}', attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM taken UNION ALL SELECT id FROM due) \
                 RETURNING id, attempts, received_at, body"
            )),
            // The fence: the batch's rows, locked in id order.
            lock_claimed: s(format!(
                "SELECT id, owner_id, attempts, status FROM {inc} WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
            )),
            release_claimed: s(format!(
                "UPDATE {inc} SET owner_id = 0 WHERE owner_id = $1 AND status = '{STATUS_INCOMING}'"
            )),
            next_scheduled: s(format!(
                "SELECT MIN(execute_at) FROM {inc} WHERE status = '{STATUS_SCHEDULED}' AND owner_id = 0"
            )),
            read_state: s(format!(
                "SELECT value, version FROM {st} WHERE plugin = $1 AND key = $2"
            )),
            // A second copy of an id inside the batch meets the first one and
            // is skipped like any existing id: RETURNING names what went in.
            insert_incoming: s(format!(
                "INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
                 SELECT r.id, CASE WHEN r.execute_at IS NULL THEN '{STATUS_INCOMING}' ELSE '{STATUS_SCHEDULED}' END, \
                        r.owner_id, r.execute_at, r.attempts, r.message_type, r.received_at, r.body \
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::bytea[]) \
                      AS r(id, owner_id, execute_at, attempts, message_type, received_at, body) \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            )),
            mark_handled: s(format!(
                "UPDATE {inc} SET status = '{STATUS_HANDLED}', keep_until = $1, owner_id = 0 \
                 WHERE id = ANY($2::uuid[])"
            )),
            // The fence and the marks in one: each row still this claim's
            // (a concurrent change is re-checked on the row's newest version).
            mark_held: s(format!(
                "UPDATE {inc} AS i SET status = '{STATUS_HANDLED}', keep_until = $2, owner_id = 0 \
                 FROM unnest($3::uuid[], $4::bigint[]) AS h(id, attempts) \
                 WHERE i.id = h.id AND i.owner_id = $1 AND i.status = '{STATUS_INCOMING}' AND i.attempts = h.attempts"
            )),
            insert_outgoing: s(format!(
                "INSERT INTO {out} (id, owner_id, destination, deliver_by, attempts, message_type, body) \
                 SELECT r.id, r.owner_id, r.destination, r.deliver_by, r.attempts, r.message_type, r.body \
                 FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bytea[]) \
                      AS r(id, owner_id, destination, deliver_by, attempts, message_type, body) \
                 ON CONFLICT (id) DO NOTHING"
            )),
            retry: s(format!(
                "UPDATE {inc} AS i SET owner_id = 0, attempts = r.attempts, execute_at = r.execute_at, \
                 status = CASE WHEN r.execute_at IS NULL THEN '{STATUS_INCOMING}' ELSE '{STATUS_SCHEDULED}' END \
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r(id, attempts, execute_at) \
                 WHERE i.id = r.id"
            )),
            delete_incoming: s(format!(
                "DELETE FROM {inc} WHERE id = ANY($1::uuid[])"
            )),
            insert_dead: s(format!(
                "INSERT INTO {dl} (id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) \
                 SELECT r.id, r.message_type, r.received_at, r.source, r.error_kind, r.error_message, r.failed_at, r.attempts, r.replayable, r.body \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::boolean[], $10::bytea[]) \
                      AS r(id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body) \
                 ON CONFLICT (id) DO UPDATE SET error_kind = EXCLUDED.error_kind, error_message = EXCLUDED.error_message, \
                 failed_at = EXCLUDED.failed_at, attempts = EXCLUDED.attempts, body = EXCLUDED.body"
            )),
            // Lock every state row a commit reads or writes, in one global
            // (byte-wise) order, so concurrent commits cannot deadlock; the
            // versions are compared in memory.
            state_lock: s(format!(
                "SELECT s.plugin, s.key, s.version FROM {st} AS s \
                 WHERE (s.plugin, s.key) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 ORDER BY s.plugin COLLATE \"C\", s.key COLLATE \"C\" FOR UPDATE"
            )),
            state_upsert: s(format!(
                "INSERT INTO {st} AS s (plugin, key, value, version) \
                 SELECT plugin, key, value, 1 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS w(plugin, key, value) \
                 ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value, version = s.version + 1"
            )),
            state_insert_new: s(format!(
                "INSERT INTO {st} (plugin, key, value, version) \
                 SELECT plugin, key, value, 1 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS w(plugin, key, value) \
                 ON CONFLICT (plugin, key) DO NOTHING RETURNING plugin, key"
            )),
            state_update_checked: s(format!(
                "UPDATE {st} AS s SET value = w.value, version = s.version + 1 \
                 FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[]) AS w(plugin, key, value, expected) \
                 WHERE s.plugin = w.plugin AND s.key = w.key AND s.version = w.expected \
                 RETURNING s.plugin, s.key"
            )),
            state_delete_checked: s(format!(
                "DELETE FROM {st} AS s USING unnest($1::text[], $2::text[], $3::bigint[]) AS w(plugin, key, expected) \
                 WHERE s.plugin = w.plugin AND s.key = w.key AND s.version = w.expected \
                 RETURNING s.plugin, s.key"
            )),
            state_delete: s(format!(
                "DELETE FROM {st} AS s USING unnest($1::text[], $2::text[]) AS w(plugin, key) \
                 WHERE s.plugin = w.plugin AND s.key = w.key"
            )),
            claim_outgoing: s(format!(
                "WITH free AS ( \
                   SELECT id FROM {out} WHERE owner_id = 0 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {out} SET owner_id = $1 WHERE id IN (SELECT id FROM free) \
                 RETURNING id, destination, deliver_by, attempts, body"
            )),
            delete_outgoing: s(format!(
                "DELETE FROM {out} WHERE id = ANY($1::uuid[])"
            )),
            delete_expired_handled: s(format!(
                "WITH expired AS ( \
                   SELECT id FROM {inc} WHERE status = '{STATUS_HANDLED}' AND keep_until <= $1 \
                   LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {inc} WHERE id IN (SELECT id FROM expired)"
            )),
            register_node: s(format!(
                "INSERT INTO {nodes} (node_id, name, started_at, heartbeat_at, listeners) VALUES ($1, $2, $3, $3, '')"
            )),
            heartbeat: s(format!(
                "UPDATE {nodes} SET heartbeat_at = $2 WHERE node_id = $1"
            )),
            remove_node: s(format!("DELETE FROM {nodes} WHERE node_id = $1")),
            release_orphans: [inc, out].map(|table| {
                s(format!(
                    "UPDATE {table} SET owner_id = 0 WHERE owner_id <> 0 AND owner_id NOT IN ({live})"
                ))
            }),
            forget_dead_nodes: s(format!(
                "DELETE FROM {nodes} WHERE node_id <> $1 AND heartbeat_at < $2"
            )),
            counts: s(format!(
                "SELECT \
                   (SELECT count(*) FROM {inc} WHERE status = '{STATUS_INCOMING}'), \
                   (SELECT count(*) FROM {inc} WHERE status = '{STATUS_SCHEDULED}'), \
                   (SELECT count(*) FROM {inc} WHERE status = '{STATUS_HANDLED}'), \
                   (SELECT count(*) FROM {out}), \
                   (SELECT count(*) FROM {dl})"
            )),
            dead_letters: s(format!(
                "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
                 FROM {dl} ORDER BY failed_at, id LIMIT $1"
            )),
            dead_letter: s(format!(
                "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
                 FROM {dl} WHERE id = $1"
            )),
            // starts_with, not LIKE: a prefix holding `%` or `_` is literal.
            // COLLATE "C": byte order, as SQLite and MySQL sort keys, whatever
            // the database's collation.
            list_state: s(format!(
                "SELECT key, value, version FROM {st} WHERE plugin = $1 AND starts_with(key, $2) \
                 ORDER BY key COLLATE \"C\" LIMIT $3"
            )),
            replay_all: replay("replayable"),
            replay_ids: replay("replayable AND id = ANY($1::uuid[])"),
            purge_all: s(format!("DELETE FROM {dl}")),
            purge_ids: s(format!(
                "DELETE FROM {dl} WHERE id = ANY($1::uuid[])"
            )),
            check_schema: s(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = ANY($2::text[])"
                    .to_owned(),
            ),
            existing_objects: s(
                "SELECT c.relname::text FROM pg_catalog.pg_class AS c \
                 JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = $1"
                    .to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_depends_on_the_schema_only() {
        assert_eq!(ddl_lock_key("jasper"), ddl_lock_key("jasper"));
        assert_ne!(ddl_lock_key("jasper"), ddl_lock_key("jasper2"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("Jasper_2"), "\"Jasper_2\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(valid_schema("_a1"));
        assert!(!valid_schema("1a"));
        assert!(!valid_schema("a-b"));
    }
}
