//! Example plugin `audit`: counts `OrderPlaced` messages, in total and per order.

use jasper_guest::{Context, HandleError};
use serde::{Deserialize, Serialize};

/// Published by the `orders` plugin once an order is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: String,
    /// The order's total.
    #[serde(default)]
    pub amount_cents: u64,
}

jasper_guest::message!(OrderPlaced = "OrderPlaced");

/// Adds one to the JSON number at `key` (missing counts as 0); returns the new value.
fn increment(ctx: &mut Context, key: &str) -> Result<u64, HandleError> {
    let n = ctx.state().get::<u64>(key)?.unwrap_or(0) + 1;
    ctx.state().put(key, &n)?;
    Ok(n)
}

/// Counts the order in `count` and in `seen/{order_id}`.
pub fn order_placed(ctx: &mut Context, msg: OrderPlaced) -> Result<(), HandleError> {
    let total = increment(ctx, "count")?;
    let seen = increment(ctx, &format!("seen/{}", msg.order_id))?;
    ctx.debug(&format!(
        "order {} seen {seen} time(s), {total} in total",
        msg.order_id
    ));
    Ok(())
}

jasper_guest::handlers!(order_placed);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::Level;
    use jasper_guest::testing::TestContext;

    fn placed(id: &str) -> OrderPlaced {
        OrderPlaced {
            order_id: id.into(),
            amount_cents: 1,
        }
    }

    #[test]
    fn counts_total_and_per_order() {
        let mut ctx = TestContext::new();
        for id in ["a", "b", "a"] {
            ctx.deliver(&HANDLERS, &placed(id)).unwrap();
        }
        assert_eq!(ctx.state().get::<u64>("count").unwrap(), Some(3));
        assert_eq!(ctx.state().get::<u64>("seen/a").unwrap(), Some(2));
        assert_eq!(ctx.state().get::<u64>("seen/b").unwrap(), Some(1));
        assert!(ctx.logs().iter().all(|(level, _)| *level == Level::Debug));
    }

    #[test]
    fn continues_from_existing_count() {
        let mut ctx = TestContext::new();
        ctx.state().put_bytes("count", b"41");
        order_placed(&mut ctx, placed("x")).unwrap();
        assert_eq!(ctx.state_snapshot()["count"], b"42");
    }

    #[test]
    fn corrupt_counter_fails() {
        let mut ctx = TestContext::new();
        ctx.state().put_bytes("count", b"\"many\"");
        let err = order_placed(&mut ctx, placed("x")).unwrap_err();
        assert!(matches!(err, HandleError::Failed(_)), "{err:?}");
    }
}
