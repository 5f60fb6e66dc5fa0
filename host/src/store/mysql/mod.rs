//! The MySQL/MariaDB message store: the tables `{schema}_incoming`,
//! `_outgoing`, `_dead_letters`, `_nodes` and `_state` in the database the URL
//! names (InnoDB; ids `CHAR(36)` ASCII, bound and read as
//! `uuid::fmt::Hyphenated`; times `BIGINT` ms, bodies `LONGBLOB`), their DDL
//! (created under a `GET_LOCK` so hosts starting together do not race), and
//! every statement of the store's faces with the semantics of the SQLite
//! reference.
//!
//! Connections run at `READ COMMITTED`: a queue does not want the gap locks of
//! `REPEATABLE READ`, which make concurrent inserters wait on (and deadlock
//! over) the gap after the newest id. Claims take rows with
//! `SELECT … FOR UPDATE SKIP LOCKED`, so nodes never get the same row nor wait
//! for each other; the steps of the shared group commit are set-based
//! statements (see `commit.rs`). A transaction the server chose as a deadlock
//! victim runs again. Written for MariaDB 10.6+ and MySQL 8.0+.
//!
//! Counts returned to callers come from `DELETE`s, from `UPDATE`s whose every
//! matched row changes, and from inserts without `ON DUPLICATE KEY`, so they
//! are right whether or not the connection reports found rows (sqlx sets
//! `CLIENT_FOUND_ROWS`) or changed ones.
//!
//! Laid out like the other backends: `connect`, `schema`, `claim`, `commit`,
//! `dead_letters`, `nodes`, `admin`.

mod admin;
mod claim;
mod commit;
mod connect;
mod dead_letters;
mod nodes;
mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool};

use self::schema::Tables;
use super::commit::Transactional;
use super::error::{StoreError, StoreResult};
use super::faces::MessageStore;
use super::shared::{begin, redact};

/// Open the store at `url` (`mysql://` or `mariadb://`) with the table
/// prefix `{schema}_`. Does not create tables.
pub(crate) async fn open(url: &str, schema: &str) -> StoreResult<Arc<dyn MessageStore>> {
    let target = redact(url);
    let connected = connect::connect(url, schema, &target).await?;
    Ok(Arc::new(MysqlStore {
        pool: connected.pool,
        options: connected.options,
        target,
        t: Arc::new(Tables::new(schema)),
        budget: connected.budget,
    }))
}

/// The MySQL/MariaDB backend.
struct MysqlStore {
    pool: MySqlPool,
    /// For the dedicated DDL connection (see `admin.rs`).
    options: MySqlConnectOptions,
    /// The URL without its password.
    target: String,
    t: Arc<Tables>,
    /// Bytes per multi-row statement.
    budget: usize,
}

// By hand: the connect options hold the password.
impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("target", &self.target)
            .field("tables", &self.t.raw)
            .finish_non_exhaustive()
    }
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    /// `ER_LOCK_DEADLOCK`
    const DEADLOCK: u16 = 1213;
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|d| d.number() == DEADLOCK)
}

#[async_trait]
impl Transactional for MysqlStore {
    type Tx = commit::MysqlTx;

    async fn begin_steps(&self) -> StoreResult<Self::Tx> {
        Ok(commit::MysqlTx {
            tx: begin(&self.pool).await?,
            t: self.t.clone(),
            budget: self.budget,
        })
    }

    /// A deadlock victim was rolled back entirely, so running it again is safe.
    fn may_run_again(&self, error: &StoreError) -> bool {
        matches!(error, StoreError::Database { source, .. } if is_deadlock(source))
    }
}
