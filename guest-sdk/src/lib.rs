//! Write [jasper-host] message handlers in plain Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It declares its
//! message types ([`Message`]), writes one function per type, and registers
//! the functions with [`handlers!`]. On `wasm32` that exports the WIT
//! `jasper:messaging/handler` interface; natively, the same functions run
//! against [`testing::TestContext`], so `cargo test` needs no host and no Wasm.
//!
//! Everything a handler does goes through its [`Context`]: messages it sends,
//! publishes or schedules, and [state](Context::state) it writes, are kept
//! only if the handler returns `Ok` (the host commits them together with the
//! mark that the message is handled). Bodies and state values are JSON.
//!
//! # Example
//!
//! ```
//! use jasper_guest::{Context, HandleError, Message, Schedule};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct PlaceOrder { order_id: String, amount_cents: u64 }
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: String }
//! #[derive(Serialize, Deserialize)]
//! struct OrderReminder { order_id: String }
//!
//! impl Message for PlaceOrder { const TYPE: &'static str = "PlaceOrder"; }
//! // The same, for several types at once:
//! jasper_guest::message!(OrderPlaced = "OrderPlaced", OrderReminder = "OrderReminder");
//!
//! fn place_order(ctx: &mut Context, msg: PlaceOrder) -> Result<(), HandleError> {
//!     if msg.amount_cents == 0 {
//!         return Err(HandleError::reject("amount_cents must be positive"));
//!     }
//!     ctx.state().put(&format!("order/{}", msg.order_id), &msg)?;
//!     ctx.publish(&OrderPlaced { order_id: msg.order_id.clone() })?;
//!     ctx.schedule(&OrderReminder { order_id: msg.order_id }, Schedule::after_ms(60_000))?;
//!     Ok(())
//! }
//!
//! fn order_reminder(ctx: &mut Context, msg: OrderReminder) -> Result<(), HandleError> {
//!     ctx.info(&format!("reminding about {}", msg.order_id));
//!     Ok(())
//! }
//!
//! // Exports both handlers (on wasm32) and defines `HANDLERS`.
//! jasper_guest::handlers!(place_order, order_reminder);
//!
//! // A native unit test: `#[test] fn ...` in the plugin crate.
//! # fn main() {
//! use jasper_guest::testing::TestContext;
//!
//! let mut ctx = TestContext::new();
//! // Call the function directly...
//! place_order(&mut ctx, PlaceOrder { order_id: "o-1".into(), amount_cents: 100 }).unwrap();
//! assert_eq!(ctx.published()[0].message_type, "OrderPlaced");
//! assert_eq!(ctx.scheduled()[0].when, Some(Schedule::after_ms(60_000)));
//! assert!(ctx.state().get_bytes("order/o-1").is_some());
//!
//! // ...or deliver a message through the registered handlers, as the host does.
//! let bad = ctx.deliver_raw(&HANDLERS, "PlaceOrder", br#"{"order_id":"o-2"}"#);
//! assert!(matches!(bad, Err(HandleError::Reject(_))));
//! assert_eq!(HANDLERS.subscriptions(), ["PlaceOrder", "OrderReminder"]);
//! # }
//! ```
//!
//! Build the plugin with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` in `target/wasm32-wasip2/release/` is a component the host loads.
//!
//! # Modules
//!
//! - [`Message`] and [`message!`]: naming message types.
//! - [`handlers!`], [`Handlers`]: registration and dispatch by type.
//! - [`Context`], [`State`]: what a handler can do.
//! - [`http`]: outbound HTTP ([`Context::http`]), allow-listed by the host.
//! - [`HandleError`], [`SendError`], [`StateError`]: failures.
//! - [`testing`]: [`TestContext`](testing::TestContext) for native tests.
//!
//! [jasper-host]: https://example.invalid/jasper-host

mod context;
mod dispatch;
mod envelope;
mod error;
pub mod http;
mod message;
pub mod testing;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use context::{Context, State};
pub use dispatch::{Handler, HandlerFn, HandlerSig, Handlers};
pub use envelope::{Envelope, Level, Schedule, SendOptions};
pub use error::{HandleError, SendError, StateError};
pub use http::{HttpError, Response as HttpResponse};
pub use message::Message;

/// Plumbing for the macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::*;
}
