//! The schema of the MySQL/MariaDB store (create, rebuild, drop, check,
//! script), run under a named lock, the whole-store commands (counts, clear)
//! and the operator's state listing.

use async_trait::async_trait;
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection};

use super::MysqlStore;
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::{Admin, StateListing};
use crate::store::maintenance;
use crate::store::rows::{Counts, STATUS_HANDLED, STATUS_INCOMING, STATUS_SCHEDULED, StateEntry};
use crate::store::shared::{self, db_count};

/// How long a migration waits for another host's migration (seconds).
const DDL_LOCK_WAIT: i64 = 30;

impl MysqlStore {
    /// Run DDL on a connection of its own holding the named lock of this
    /// prefix, so two hosts starting together take turns (MySQL DDL commits
    /// by itself; the lock is what makes the script atomic to the other host).
    /// The connection is closed afterwards, which also frees the lock if the
    /// future is dropped half-way.
    async fn ddl(&self, statements: &[String], op: &'static str) -> StoreResult<()> {
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(StoreError::db(op))?;
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
            .bind(&self.t.lock_name)
            .bind(DDL_LOCK_WAIT)
            .fetch_one(&mut conn)
            .await
            .map_err(StoreError::db(op))?;
        if got != Some(1) {
            let _ = conn.close().await;
            return Err(StoreError::Database {
                operation: op,
                source: sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another host held the lock {:?} for {DDL_LOCK_WAIT} s",
                        self.t.lock_name
                    ),
                )),
            });
        }
        let mut result = Ok(());
        for stmt in statements {
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(stmt.as_str()))
                .execute(&mut conn)
                .await
            {
                result = Err(StoreError::db(op)(e));
                break;
            }
        }
        let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&self.t.lock_name)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
    }
}

#[async_trait]
impl Admin for MysqlStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.ddl(&self.t.ddl(), "create schema").await
    }

    async fn rebuild(&self) -> StoreResult<()> {
        let mut stmts = vec![self.t.drop_statement()];
        stmts.extend(self.t.ddl());
        self.ddl(&stmts, "rebuild schema").await
    }

    async fn drop_all(&self) -> StoreResult<()> {
        self.ddl(&[self.t.drop_statement()], "drop schema").await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let [a, b, c, d, e] = &self.t.raw;
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name IN (?, ?, ?, ?, ?)",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(d)
        .bind(e)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("check schema"))?;
        shared::all_tables(n, || self.target.clone())
    }

    fn schema_script(&self) -> String {
        let mut out = String::from(
            "-- jasper-host message store (MySQL 8 / MariaDB 10.6+)\n\
             -- Apply to the database that storage.url names, e.g. `mariadb DATABASE < FILE`.\n",
        );
        for stmt in self.t.ddl() {
            out.push_str(&stmt);
            out.push_str(";\n");
        }
        out
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let op = "counts";
        let (inc, out, dl) = (&self.t.incoming, &self.t.outgoing, &self.t.dead_letters);
        let count = |from: &str, filter: &str| {
            format!("CAST((SELECT COUNT(*) FROM {from}{filter}) AS SIGNED)")
        };
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT {}, {}, {}, {}, {}",
            count(inc, &format!(" WHERE status = '{STATUS_INCOMING}'")),
            count(inc, &format!(" WHERE status = '{STATUS_SCHEDULED}'")),
            count(inc, &format!(" WHERE status = '{STATUS_HANDLED}'")),
            count(out, ""),
            count(dl, ""),
        )));
        shared::counts(&shared::fetch_one(&self.pool, query, op).await?)
    }

    async fn outgoing_by_destination(&self) -> StoreResult<Vec<(String, i64)>> {
        let sql = shared::outgoing_by_destination_sql(&self.t.outgoing, "CAST(COUNT(*) AS SIGNED)");
        let rows = shared::fetch_all(
            &self.pool,
            sqlx::query(AssertSqlSafe(sql)),
            "outgoing by destination",
        )
        .await?;
        shared::destination_counts(&rows)
    }

    async fn clear(&self) -> StoreResult<()> {
        maintenance::clear(self).await
    }
}

#[async_trait]
impl StateListing for MysqlStore {
    async fn list_state(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<StateEntry>> {
        // Keys are VARBINARY: LEFT and LENGTH count bytes, `>=` and ORDER BY
        // compare bytes, and no character of the prefix is a wildcard (no
        // LIKE). `key >= prefix` starts the primary-key range.
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT CAST(`key` AS CHAR CHARACTER SET utf8mb4), value, version FROM {} \
             WHERE plugin = ? AND `key` >= ? AND LEFT(`key`, LENGTH(?)) = ? \
             ORDER BY `key` LIMIT ?",
            self.t.state
        )))
        .bind(plugin.as_bytes())
        .bind(prefix.as_bytes())
        .bind(prefix.as_bytes())
        .bind(prefix.as_bytes())
        .bind(db_count(limit));
        shared::state_entries(&shared::fetch_all(&self.pool, query, "list state").await?)
    }
}
