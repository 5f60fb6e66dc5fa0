//! The SQLite message store: the embedded default. One file, WAL journal,
//! `synchronous=FULL` so a commit survives a crash of the process and of the
//! machine. Writers take the lock up front (`BEGIN IMMEDIATE`) so concurrent
//! writers (the host and `jasper-host send`) queue on the busy timeout instead
//! of failing on a lock upgrade.
//!
//! Laid out like the other backends: `connect` (the pool and the write
//! transaction), `schema` (table names, DDL, statements), `claim` (inbox and
//! outbox reads and claims), `commit` (the steps of the shared group commit
//! and maintenance sequences), `dead_letters`, `nodes`, `admin`. Ids are
//! `TEXT` columns, bound and read as `uuid::fmt::Hyphenated`.

mod admin;
mod claim;
mod commit;
mod connect;
mod dead_letters;
mod nodes;
mod schema;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteArguments, SqlitePool};
use sqlx::{AssertSqlSafe, Sqlite};

use self::schema::{Sql, Tables};
use super::commit::Transactional;
use super::error::StoreResult;

/// The SQLite backend.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    pool: SqlitePool,
    /// Held for the length of each write transaction (see `connect::begin`).
    writer: Arc<tokio::sync::Mutex<()>>,
    target: String,
    tables: Arc<Tables>,
    sql: Arc<Sql>,
}

impl SqliteStore {
    /// Open (creating the file if missing) the database at `path`.
    pub(crate) async fn open(path: &Path, schema: &str) -> StoreResult<Self> {
        let target = path.display().to_string();
        let pool = connect::pool(path, &target).await?;
        let tables = Tables::new(schema);
        let sql = Sql::new(&tables);
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            target,
            tables: Arc::new(tables),
            sql: Arc::new(sql),
        })
    }
}

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

#[async_trait]
impl Transactional for SqliteStore {
    type Tx = commit::SqliteTx;
    async fn begin_steps(&self) -> StoreResult<Self::Tx> {
        self.begin().await
    }
}
