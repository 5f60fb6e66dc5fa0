//! Example plugin `orders`: takes `PlaceOrder`, stores it, publishes `OrderPlaced`
//! and schedules an `OrderReminder`; the reminder marks the order as reminded.
//! A `PlaceOrder` that asks for a reply (`POST /invoke/PlaceOrder` on the
//! admin endpoint, or a sender's `reply_uri`) is answered with `OrderAccepted`.

use jasper_guest::{Context, HandleError, Schedule};
use serde::{Deserialize, Serialize};

/// A customer places an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The order's id, unique per order.
    pub order_id: String,
    /// Who ordered (may be empty).
    #[serde(default)]
    pub customer: String,
    /// The total; must be positive.
    pub amount_cents: u64,
    /// Delay before the reminder, in ms (default one hour).
    #[serde(default = "default_remind_after_ms")]
    pub remind_after_ms: u64,
}

fn default_remind_after_ms() -> u64 {
    3_600_000
}

/// Published once an order is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: String,
    /// The order's total.
    pub amount_cents: u64,
}

/// The answer to a `PlaceOrder` that asks for one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAccepted {
    /// The order's id.
    pub order_id: String,
    /// The order's total.
    pub amount_cents: u64,
}

/// Scheduled `remind_after_ms` after an order is placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReminder {
    /// The order's id.
    pub order_id: String,
}

jasper_guest::message!(
    PlaceOrder = "PlaceOrder",
    OrderPlaced = "OrderPlaced",
    OrderReminder = "OrderReminder",
    OrderAccepted = "OrderAccepted",
);

/// Stores the order at `order/{id}`, publishes `OrderPlaced`, schedules the
/// reminder, and answers `OrderAccepted` when asked.
pub fn place_order(ctx: &mut Context, order: PlaceOrder) -> Result<(), HandleError> {
    if order.amount_cents == 0 {
        return Err(HandleError::reject("amount_cents must be positive"));
    }
    ctx.state()
        .put(&format!("order/{}", order.order_id), &order)?;
    ctx.publish(&OrderPlaced {
        order_id: order.order_id.clone(),
        amount_cents: order.amount_cents,
    })?;
    ctx.schedule(
        &OrderReminder {
            order_id: order.order_id.clone(),
        },
        Schedule::after_ms(order.remind_after_ms),
    )?;
    ctx.reply(&OrderAccepted {
        order_id: order.order_id,
        amount_cents: order.amount_cents,
    })?;
    Ok(())
}

/// Marks the order as reminded at `reminded/{id}`.
pub fn order_reminder(ctx: &mut Context, reminder: OrderReminder) -> Result<(), HandleError> {
    ctx.state()
        .put(&format!("reminded/{}", reminder.order_id), &true)?;
    ctx.info(&format!("reminded about order {}", reminder.order_id));
    Ok(())
}

jasper_guest::handlers!(place_order, order_reminder);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::testing::TestContext;
    use jasper_guest::{Level, Message};

    fn order(amount_cents: u64) -> PlaceOrder {
        PlaceOrder {
            order_id: "o-1".into(),
            customer: "ann".into(),
            amount_cents,
            remind_after_ms: 5_000,
        }
    }

    #[test]
    fn place_order_stores_publishes_and_schedules() {
        let mut ctx = TestContext::new();
        place_order(&mut ctx, order(1250)).unwrap();

        assert_eq!(
            ctx.state().get::<PlaceOrder>("order/o-1").unwrap(),
            Some(order(1250))
        );
        let published = ctx.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].message_type, OrderPlaced::TYPE);
        assert_eq!(
            published[0].decode::<OrderPlaced>().unwrap(),
            OrderPlaced {
                order_id: "o-1".into(),
                amount_cents: 1250
            }
        );
        let scheduled = ctx.scheduled();
        assert_eq!(scheduled.len(), 1);
        assert_eq!(scheduled[0].message_type, OrderReminder::TYPE);
        assert_eq!(scheduled[0].when, Some(Schedule::after_ms(5_000)));
        assert!(ctx.sent().is_empty());
        // Nobody asked for an answer.
        assert!(ctx.replies().is_empty());
    }

    #[test]
    fn place_order_answers_when_asked() {
        let mut ctx = TestContext::new();
        ctx.envelope_mut().reply_uri = Some("local://replies".into());
        place_order(&mut ctx, order(990)).unwrap();
        let replies = ctx.replies();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].message_type, OrderAccepted::TYPE);
        assert_eq!(
            replies[0].decode::<OrderAccepted>().unwrap(),
            OrderAccepted {
                order_id: "o-1".into(),
                amount_cents: 990
            }
        );
        assert!(ctx.sent().is_empty());
    }

    #[test]
    fn zero_amount_is_rejected_and_does_nothing() {
        let mut ctx = TestContext::new();
        let err = place_order(&mut ctx, order(0)).unwrap_err();
        assert_eq!(err, HandleError::reject("amount_cents must be positive"));
        assert!(ctx.state_snapshot().is_empty());
        assert!(ctx.published().is_empty() && ctx.scheduled().is_empty());
    }

    #[test]
    fn contract_body_uses_defaults() {
        let mut ctx = TestContext::new();
        ctx.deliver_raw(
            &HANDLERS,
            "PlaceOrder",
            br#"{"order_id":"o-2","amount_cents":10}"#,
        )
        .unwrap();
        let stored: PlaceOrder = ctx.state().get("order/o-2").unwrap().unwrap();
        assert_eq!(stored.customer, "");
        assert_eq!(stored.remind_after_ms, 3_600_000);
        assert_eq!(ctx.scheduled()[0].when, Some(Schedule::after_ms(3_600_000)));
    }

    #[test]
    fn reminder_marks_order_and_logs() {
        let mut ctx = TestContext::new();
        ctx.deliver(
            &HANDLERS,
            &OrderReminder {
                order_id: "o-1".into(),
            },
        )
        .unwrap();
        assert_eq!(ctx.state().get::<bool>("reminded/o-1").unwrap(), Some(true));
        assert_eq!(ctx.logs()[0].0, Level::Info);
    }

    #[test]
    fn subscribes_to_both_types() {
        assert_eq!(HANDLERS.subscriptions(), ["PlaceOrder", "OrderReminder"]);
    }
}
