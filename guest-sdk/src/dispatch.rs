//! Handler registration: [`handlers!`](crate::handlers), [`Handlers`] and message dispatch by type.

use std::marker::PhantomData;

use crate::context::Context;
use crate::error::HandleError;
use crate::message::Message;

/// A handler for one message type, with the body still encoded.
///
/// [`handlers!`](crate::handlers) wraps each function in a [`HandlerFn`];
/// implement this yourself only for handlers that want the raw body.
pub trait Handler: Sync {
    /// The message-type name this handler subscribes to.
    fn message_type(&self) -> &'static str;
    /// Decodes the body of `ctx.envelope()` and handles it.
    fn handle(&self, ctx: &mut Context) -> Result<(), HandleError>;
}

/// The signature every registered handler function has.
pub type HandlerSig<M> = fn(&mut Context, M) -> Result<(), HandleError>;

/// A typed handler function, `fn(&mut Context, M) -> Result<(), HandleError>`.
pub struct HandlerFn<M> {
    f: HandlerSig<M>,
    // `fn() -> M` keeps `HandlerFn` Send + Sync whatever `M` is.
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for HandlerFn<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

impl<M: Message> HandlerFn<M> {
    /// Wraps `f`; the message type comes from `f`'s second parameter.
    pub const fn new(f: HandlerSig<M>) -> Self {
        Self {
            f,
            _message: PhantomData,
        }
    }
}

impl<M: Message> Handler for HandlerFn<M> {
    fn message_type(&self) -> &'static str {
        M::TYPE
    }

    fn handle(&self, ctx: &mut Context) -> Result<(), HandleError> {
        let msg: M = serde_json::from_slice(&ctx.envelope().body)
            .map_err(|e| HandleError::Reject(format!("cannot decode `{}` body: {e}", M::TYPE)))?;
        (self.f)(ctx, msg)
    }
}

/// The handlers a plugin registers, in registration order.
///
/// Built by [`handlers!`](crate::handlers) as the static `HANDLERS`.
#[derive(Clone, Copy)]
pub struct Handlers {
    list: &'static [&'static dyn Handler],
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|h| h.message_type()))
            .finish()
    }
}

impl Handlers {
    /// A registry over `list`.
    pub const fn new(list: &'static [&'static dyn Handler]) -> Self {
        Self { list }
    }

    /// The message types handled, each once, in registration order.
    pub fn subscriptions(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = Vec::with_capacity(self.list.len());
        for h in self.list {
            if !types.contains(&h.message_type()) {
                types.push(h.message_type());
            }
        }
        types
    }

    /// Runs every handler registered for `ctx.envelope().message_type`, in
    /// order, stopping at the first error. A type with no handler is rejected.
    pub fn dispatch(&self, ctx: &mut Context) -> Result<(), HandleError> {
        let mut matched = false;
        for h in self.list {
            if h.message_type() == ctx.envelope().message_type {
                matched = true;
                h.handle(ctx)?;
            }
        }
        if matched {
            Ok(())
        } else {
            Err(HandleError::Reject(format!(
                "no handler for message type `{}`",
                ctx.envelope().message_type
            )))
        }
    }
}

/// Registers handler functions and, on `wasm32`, exports them as the plugin's
/// WIT `handler` interface. Use it once per plugin crate, at the crate root.
///
/// Each argument is a function `fn(&mut Context, M) -> Result<(), HandleError>`
/// where `M: Message`; its message type is taken from the signature. It also
/// defines `pub static HANDLERS: jasper_guest::Handlers`, which native tests can
/// feed messages through [`TestContext::deliver`](crate::testing::TestContext::deliver).
///
/// A function with another signature does not compile:
///
/// ```compile_fail
/// use jasper_guest::{Context, HandleError, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping {}
/// impl Message for Ping { const TYPE: &'static str = "Ping"; }
///
/// // Wrong: the context must be `&mut Context`.
/// fn ping(_ctx: &Context, _msg: Ping) -> Result<(), HandleError> { Ok(()) }
///
/// jasper_guest::handlers!(ping);
/// # fn main() {}
/// ```
///
/// Nor does a message type that does not implement [`Message`](crate::Message):
///
/// ```compile_fail
/// use jasper_guest::{Context, HandleError};
///
/// fn raw(_ctx: &mut Context, _msg: String) -> Result<(), HandleError> { Ok(()) }
///
/// jasper_guest::handlers!(raw);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! handlers {
    ($($handler:expr),+ $(,)?) => {
        /// The message handlers of this plugin, registered with `jasper_guest::handlers!`.
        pub static HANDLERS: $crate::Handlers =
            $crate::Handlers::new(&[$(&$crate::HandlerFn::new($handler)),+]);

        $crate::__export_handlers!(HANDLERS);
    };
}

/// Exports `HANDLERS` as the WIT `handler` interface (wasm32 only).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handlers {
    ($handlers:ident) => {
        const _: () = {
            struct JasperPlugin;

            impl $crate::__private::Guest for JasperPlugin {
                fn subscriptions() -> ::std::vec::Vec<::std::string::String> {
                    $crate::__private::subscriptions(&$handlers)
                }

                fn handle(
                    message: $crate::__private::WitEnvelope,
                ) -> ::std::result::Result<(), $crate::__private::WitHandleError> {
                    $crate::__private::handle(&$handlers, message)
                }
            }

    $crate::__private::export!(JasperPlugin with_types_in $crate::__private::bindings);
        };
    };
}

/// Natively there is no host to export to: handlers run through `TestContext`.
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handlers {
    ($handlers:ident) => {};
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::testing::TestContext;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct Pong {}
    crate::message!(Ping = "test.Ping", Pong = "test.Pong");

    fn ping(ctx: &mut Context, msg: Ping) -> Result<(), HandleError> {
        ctx.state().put("ping", &msg.n)?;
        Ok(())
    }

    fn ping_again(ctx: &mut Context, msg: Ping) -> Result<(), HandleError> {
        if msg.n == 0 {
            return Err(HandleError::retry("zero"));
        }
        ctx.state().put("ping-again", &msg.n)?;
        Ok(())
    }

    fn pong(_ctx: &mut Context, _msg: Pong) -> Result<(), HandleError> {
        Err(HandleError::failed("pong"))
    }

    crate::handlers!(ping, pong, ping_again);

    #[test]
    fn subscriptions_are_unique_in_registration_order() {
        assert_eq!(HANDLERS.subscriptions(), ["test.Ping", "test.Pong"]);
        assert_eq!(
            format!("{HANDLERS:?}"),
            r#"["test.Ping", "test.Pong", "test.Ping"]"#
        );
    }

    #[test]
    fn dispatch_runs_every_handler_of_the_type() {
        let mut ctx = TestContext::new();
        ctx.deliver(&HANDLERS, &Ping { n: 3 }).unwrap();
        assert_eq!(ctx.state().get::<u32>("ping").unwrap(), Some(3));
        assert_eq!(ctx.state().get::<u32>("ping-again").unwrap(), Some(3));
    }

    #[test]
    fn dispatch_stops_at_first_error_and_returns_it() {
        let mut ctx = TestContext::new();
        let err = ctx.deliver(&HANDLERS, &Ping { n: 0 }).unwrap_err();
        assert_eq!(err, HandleError::retry("zero"));
        assert_eq!(ctx.state().get::<u32>("ping").unwrap(), Some(0));
        assert_eq!(ctx.state().get::<u32>("ping-again").unwrap(), None);
        let err = ctx.deliver(&HANDLERS, &Pong {}).unwrap_err();
        assert_eq!(err, HandleError::failed("pong"));
    }

    #[test]
    fn undecodable_body_is_rejected_naming_type_and_serde_error() {
        let mut ctx = TestContext::new();
        let err = ctx
            .deliver_raw(&HANDLERS, "test.Ping", br#"{"n":"x"}"#)
            .unwrap_err();
        let HandleError::Reject(msg) = err else {
            panic!("expected reject, got {err:?}");
        };
        assert!(msg.starts_with("cannot decode `test.Ping` body: "), "{msg}");
        assert!(msg.contains("invalid type: string \"x\""), "{msg}");
        assert!(ctx.state_snapshot().is_empty());
    }

    #[test]
    fn unknown_type_is_rejected() {
        let mut ctx = TestContext::new();
        let err = ctx.deliver_raw(&HANDLERS, "test.Nope", b"{}").unwrap_err();
        assert_eq!(
            err,
            HandleError::reject("no handler for message type `test.Nope`")
        );
    }
}
