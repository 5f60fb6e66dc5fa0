//! Placeholder: the mysql message store is being written (issue 3).

use std::sync::Arc;

use super::{MessageStore, StoreError, StoreResult};

pub async fn open(url: &str, _schema: &str) -> StoreResult<Arc<dyn MessageStore>> {
    Err(StoreError::Unsupported {
        backend: "mysql",
        url: url.to_string(),
    })
}
