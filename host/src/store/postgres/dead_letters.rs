//! Dead letters in the PostgreSQL store: list, look one up, replay into the
//! inbox (one statement that moves them), purge.

use async_trait::async_trait;
use uuid::Uuid;

use super::{PostgresStore, q};
use crate::store::error::StoreResult;
use crate::store::faces::DeadLetters;
use crate::store::rows::{DeadLetter, Selection};
use crate::store::shared::{self, db_count, run};

#[async_trait]
impl DeadLetters for PostgresStore {
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let query = q(&self.sql.dead_letters).bind(db_count(limit));
        shared::dead_letters(&shared::fetch_all(&self.pool, query, "list dead letters").await?)
    }

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        let query = q(&self.sql.dead_letter).bind(id);
        shared::one_dead_letter(
            shared::fetch_optional(&self.pool, query, "show dead letter").await?,
        )
    }

    async fn replay_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let query = match which {
            Selection::All => q(&self.sql.replay_all),
            Selection::Ids(ids) if ids.is_empty() => return Ok(0),
            Selection::Ids(ids) => q(&self.sql.replay_ids).bind(ids),
        };
        run(&self.pool, query, "replay dead letters").await
    }

    async fn purge_dead_letters(&self, which: &Selection) -> StoreResult<u64> {
        let query = match which {
            Selection::All => q(&self.sql.purge_all),
            Selection::Ids(ids) if ids.is_empty() => return Ok(0),
            Selection::Ids(ids) => q(&self.sql.purge_ids).bind(ids),
        };
        run(&self.pool, query, "purge dead letters").await
    }
}
