//! Dead letters in the SQLite store: list, look one up, replay into the
//! inbox, purge.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::SqliteStore;
use crate::store::commit::CommitSteps;
use crate::store::error::StoreResult;
use crate::store::faces::DeadLetters;
use crate::store::rows::{DeadLetter, STATUS_INCOMING, Selection};
use crate::store::shared::{self, db_count, inline_ids, run};

/// The `WHERE` condition of a selection, with `base` (or `1 = 1`) first.
fn filter(which: &Selection, base: Option<&str>) -> String {
    let base = base.unwrap_or("1 = 1");
    match which {
        Selection::All => base.to_owned(),
        Selection::Ids(ids) => format!("{base} AND id IN ({})", inline_ids(ids)),
    }
}

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} ORDER BY failed_at, id LIMIT ?1",
            self.tables.dead_letters
        )))
        .bind(db_count(limit));
        shared::dead_letters(&shared::fetch_all(&self.pool, query, "list dead letters").await?)
    }

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} WHERE id = ?1",
            self.tables.dead_letters
        )))
        .bind(id.hyphenated());
        shared::one_dead_letter(
            shared::fetch_optional(&self.pool, query, "show dead letter").await?,
        )
    }

    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        if which.is_none() {
            return Ok(0);
        }
        let t = &self.tables;
        let filter = filter(which, Some("replayable <> 0"));
        let op = "replay dead letters";
        let mut tx = self.begin().await?;
        // Back into the inbox as fresh attempts; an id still in the inbox wins.
        let n = tx
            .exec(
                format!(
                    "INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
                     SELECT id, '{STATUS_INCOMING}', 0, NULL, 0, message_type, received_at, body FROM {dl} WHERE {filter} \
                     ON CONFLICT(id) DO NOTHING",
                    inc = t.incoming,
                    dl = t.dead_letters
                ),
                op,
            )
            .await?;
        tx.exec(format!("DELETE FROM {} WHERE {filter}", t.dead_letters), op)
            .await?;
        tx.finish().await?;
        Ok(n)
    }

    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        if which.is_none() {
            return Ok(0);
        }
        let filter = filter(which, None);
        let query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE {filter}",
            self.tables.dead_letters
        )));
        run(&self.pool, query, "purge dead letters").await
    }
}
