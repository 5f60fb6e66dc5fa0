//! Message bodies of the example plugins.

use serde_json::Value;

use crate::json;

/// A `PlaceOrder` body.
pub fn place_order(order_id: &str, amount_cents: u64, remind_after_ms: u64) -> Value {
    json!({
        "order_id": order_id,
        "customer": "e2e",
        "amount_cents": amount_cents,
        "remind_after_ms": remind_after_ms,
    })
}

/// Ten days: reminders that stay `scheduled` for the whole test.
pub const REMIND_LATER_MS: u64 = 10 * 24 * 3600 * 1000;
