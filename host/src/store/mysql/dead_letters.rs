//! Dead letters in the MySQL/MariaDB store: list, look one up, replay into
//! the inbox (locking the dead letters first), purge.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::MysqlStore;
use super::commit::exec;
use crate::store::error::{StoreError, StoreResult};
use crate::store::faces::DeadLetters;
use crate::store::rows::{DeadLetter, STATUS_INCOMING, Selection};
use crate::store::shared::{self, CHUNK, Columns, db_count as limit, inline_ids};

#[async_trait]
impl DeadLetters for MysqlStore {
    async fn dead_letters(&self, limit_rows: usize) -> StoreResult<Vec<DeadLetter>> {
        let op = "list dead letters";
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} ORDER BY failed_at, id LIMIT ?",
            self.t.dead_letters
        )))
        .bind(limit(limit_rows));
        shared::dead_letters(&shared::fetch_all(&self.pool, query, op).await?)
    }

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        let query = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, message_type, received_at, source, error_kind, error_message, failed_at, attempts, replayable, body \
             FROM {} WHERE id = ?",
            self.t.dead_letters
        )))
        .bind(id.hyphenated());
        shared::one_dead_letter(
            shared::fetch_optional(&self.pool, query, "show dead letter").await?,
        )
    }

    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let op = "replay dead letters";
        let t = &self.t;
        let mut tx = self.pool.begin().await.map_err(StoreError::db(op))?;
        // Lock the dead letters first: one committed meanwhile must not be
        // deleted without having been replayed.
        let mut chosen: Vec<Uuid> = Vec::new();
        let filters: Vec<String> = match which {
            Selection::All => vec![String::new()],
            Selection::Ids(ids) => ids
                .chunks(CHUNK)
                .map(|c| format!(" AND id IN ({})", inline_ids(c)))
                .collect(),
        };
        for filter in filters {
            let rows = sqlx::raw_sql(AssertSqlSafe(format!(
                "SELECT id FROM {} WHERE replayable <> 0{filter} ORDER BY id FOR UPDATE",
                t.dead_letters
            )))
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;
            for r in &rows {
                chosen.push(r.id(0, op)?);
            }
        }
        // Back into the inbox as fresh attempts; an id still in the inbox wins.
        let mut n = 0;
        for chunk in chosen.chunks(CHUNK) {
            let list = inline_ids(chunk);
            n += exec(
                &mut tx,
                format!(
                    "INSERT INTO {inc} (id, status, owner_id, execute_at, attempts, message_type, received_at, body) \
                     SELECT d.id, '{STATUS_INCOMING}', 0, NULL, 0, d.message_type, d.received_at, d.body \
                     FROM {dl} d WHERE d.id IN ({list}) \
                     AND NOT EXISTS (SELECT 1 FROM {inc} i WHERE i.id = d.id)",
                    inc = t.incoming,
                    dl = t.dead_letters
                ),
                op,
            )
            .await?;
            exec(
                &mut tx,
                format!("DELETE FROM {} WHERE id IN ({list})", t.dead_letters),
                op,
            )
            .await?;
        }
        tx.commit().await.map_err(StoreError::db(op))?;
        Ok(n)
    }

    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let op = "purge dead letters";
        let ids = match which {
            Selection::Ids(ids) => ids,
            Selection::All => {
                let mut conn = self.pool.acquire().await.map_err(StoreError::db(op))?;
                return exec(
                    &mut conn,
                    format!("DELETE FROM {}", self.t.dead_letters),
                    op,
                )
                .await;
            }
        };
        self.delete_ids(&self.t.dead_letters, ids, op).await
    }
}
