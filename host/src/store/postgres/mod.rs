//! The PostgreSQL message store: for several hosts sharing one database.
//!
//! Owns the connection pool, the tables in the configured PostgreSQL schema
//! (`jasper_incoming`, `jasper_outgoing`, `jasper_dead_letters`,
//! `jasper_nodes`, `jasper_state`, with partial indexes matching the
//! queries) and every statement run against them. Same semantics as the
//! SQLite store, with what sharing needs on top:
//!
//! - DDL (`migrate`, `rebuild`, `drop_all`) runs in one transaction holding
//!   `pg_advisory_xact_lock` on a key derived from the schema, so hosts that
//!   start together do not race; `migrate` only runs the DDL of objects that
//!   are missing (`admin.rs`).
//! - Claims (`claim_incoming`, `claim_outgoing`) are one `UPDATE … WHERE id IN
//!   (SELECT … FOR UPDATE SKIP LOCKED)`: two nodes never take the same row and
//!   never wait for each other (`claim.rs`).
//! - The steps of the shared group commit are set-based statements
//!   (`commit.rs`).
//! - `open` connects once before building the pool, so an unreachable
//!   server, wrong credentials or a missing database are named at once
//!   (`connect.rs`); errors name the URL without its password.
//!
//! Laid out like the other backends: `connect`, `schema` (names, DDL and the
//! SQL text), `claim`, `commit`, `dead_letters`, `nodes`, `admin`. Ids are
//! native `uuid` columns, bound and read as `Uuid`.

mod admin;
mod claim;
mod commit;
mod connect;
mod dead_letters;
mod nodes;
mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgPool};
use sqlx::{AssertSqlSafe, Postgres};

use self::schema::{Names, Statements};
use super::commit::Transactional;
use super::error::{StoreError, StoreResult};
use super::faces::MessageStore;
use super::shared::{begin, redact};

/// Open the store at `url` (a `postgres://` URL) in PostgreSQL schema `schema`.
/// Connects once to report a bad URL, an unreachable server, wrong credentials
/// or a missing database right away. Does not create tables.
pub(crate) async fn open(url: &str, schema: &str) -> StoreResult<Arc<dyn MessageStore>> {
    Ok(Arc::new(PostgresStore::open(url, schema).await?))
}

/// The PostgreSQL backend.
#[derive(Debug)]
pub(crate) struct PostgresStore {
    pool: PgPool,
    /// The URL without its password.
    target: String,
    names: Arc<Names>,
    sql: Arc<Statements>,
}

fn q(sql: &Arc<str>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

impl PostgresStore {
    pub(crate) async fn open(url: &str, schema: &str) -> StoreResult<Self> {
        let target = redact(url);
        if !schema::valid_schema(schema) {
            return Err(StoreError::Open {
                target,
                source: sqlx::Error::Configuration(
                    format!(
                        "schema {schema:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 bytes)"
                    )
                    .into(),
                ),
            });
        }
        let pool = connect::pool(url, &target).await?;
        let names = Names::new(schema);
        let sql = Statements::new(&names);
        Ok(PostgresStore {
            pool,
            target,
            names: Arc::new(names),
            sql: Arc::new(sql),
        })
    }
}

#[async_trait]
impl Transactional for PostgresStore {
    type Tx = commit::PgTx;
    async fn begin_steps(&self) -> StoreResult<Self::Tx> {
        Ok(commit::PgTx {
            tx: begin(&self.pool).await?,
            names: self.names.clone(),
            sql: self.sql.clone(),
        })
    }
}
