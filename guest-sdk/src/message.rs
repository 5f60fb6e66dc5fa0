//! The [`Message`] trait: a Rust type that travels as a JSON body under a message-type name.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A message type: serialized to JSON for the body, named by [`Message::TYPE`].
///
/// The name is what the host routes on: `publish` goes to every plugin whose
/// [`handlers!`](crate::handlers) include a handler for that name.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: String }
///
/// impl jasper_guest::Message for OrderPlaced {
///     const TYPE: &'static str = "OrderPlaced";
/// }
/// ```
pub trait Message: Serialize + DeserializeOwned {
    /// The message-type name on the wire, e.g. `"OrderPlaced"` or `"billing.Invoice"`.
    const TYPE: &'static str;
}

/// Implements [`Message`] for one or more types: `message!(Type = "Name", ...)`.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping {}
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Pong {}
///
/// jasper_guest::message!(Ping = "test.Ping", Pong = "test.Pong");
/// assert_eq!(<Ping as jasper_guest::Message>::TYPE, "test.Ping");
/// ```
#[macro_export]
macro_rules! message {
    ($($ty:ty = $name:expr),+ $(,)?) => {
        $(
            impl $crate::Message for $ty {
                const TYPE: &'static str = $name;
            }
        )+
    };
}
