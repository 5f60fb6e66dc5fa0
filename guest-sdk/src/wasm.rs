//! The wasm32 side: WIT bindings, the import-backed [`Backend`] and the export glue `handlers!` calls.
//!
//! Items here are `#[doc(hidden)]` plumbing re-exported through `__private`;
//! handler authors never name them.

pub(crate) mod http;

use crate::context::{Backend, Context};
use crate::dispatch::Handlers;
use crate::envelope::{Envelope, Level, Schedule, SendOptions};
use crate::error::{HandleError, SendError};

// `pub_export_macro` lets the `export!` macro run in the plugin crate, which is
// what `handlers!` expands to; the bindings themselves stay in this crate.
pub mod bindings {
    //! Generated from `wit/messaging.wit`, world `plugin`.
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "::jasper_guest::__private::bindings",
    });
}

pub use bindings::export;
pub use bindings::exports::jasper::messaging::handler::Guest;
pub use bindings::jasper::messaging::types::Envelope as WitEnvelope;
pub use bindings::jasper::messaging::types::HandleError as WitHandleError;

use bindings::jasper::messaging::{log, outbox, state, types};

/// The backend of a real plugin: every call goes to the host's imports.
struct WitBackend;

fn options(o: &SendOptions) -> types::SendOptions {
    types::SendOptions {
        correlation_id: o.correlation_id.clone(),
        content_type: o.content_type.clone(),
        headers: o.headers.clone(),
        deliver_by: o.deliver_by,
    }
}

fn send_error(e: types::SendError) -> SendError {
    match e {
        types::SendError::UnknownDestination(m) => SendError::UnknownDestination(m),
        types::SendError::Invalid(m) => SendError::Invalid(m),
    }
}

impl Backend for WitBackend {
    fn send(
        &mut self,
        destination: &str,
        message_type: &str,
        body: &[u8],
        opts: &SendOptions,
    ) -> Result<String, SendError> {
        outbox::send(destination, message_type, body, &options(opts)).map_err(send_error)
    }

    fn publish(
        &mut self,
        message_type: &str,
        body: &[u8],
        opts: &SendOptions,
    ) -> Result<Vec<String>, SendError> {
        outbox::publish(message_type, body, &options(opts)).map_err(send_error)
    }

    fn schedule(
        &mut self,
        message_type: &str,
        body: &[u8],
        when: Schedule,
        opts: &SendOptions,
    ) -> Result<Vec<String>, SendError> {
        let when = match when {
            Schedule::At(at) => types::ScheduleTime::At(at),
            Schedule::Delay(ms) => types::ScheduleTime::DelayMs(ms),
        };
        outbox::schedule(message_type, body, when, &options(opts)).map_err(send_error)
    }

    fn reply(
        &mut self,
        message_type: &str,
        body: &[u8],
        opts: &SendOptions,
    ) -> Result<String, SendError> {
        outbox::reply(message_type, body, &options(opts)).map_err(send_error)
    }

    fn state_get(&mut self, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }

    fn state_put(&mut self, key: &str, value: &[u8]) {
        state::put(key, value);
    }

    fn state_delete(&mut self, key: &str) {
        state::delete(key);
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }
}

/// `handler.subscriptions`: the registered message types.
pub fn subscriptions(handlers: &Handlers) -> Vec<String> {
    handlers
        .subscriptions()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// `handler.handle`: decodes the envelope and dispatches it to the registered handlers.
pub fn handle(handlers: &Handlers, e: WitEnvelope) -> Result<(), WitHandleError> {
    let envelope = Envelope {
        id: e.id,
        message_type: e.message_type,
        content_type: e.content_type,
        body: e.body,
        destination: e.destination,
        source: e.source,
        reply_uri: e.reply_uri,
        correlation_id: e.correlation_id,
        conversation_id: e.conversation_id,
        causation_id: e.causation_id,
        headers: e.headers,
        attempts: e.attempts,
        scheduled_at: e.scheduled_at,
        deliver_by: e.deliver_by,
        sent_at: e.sent_at,
    };
    let mut ctx = Context::new(envelope, Box::new(WitBackend));
    handlers.dispatch(&mut ctx).map_err(|err| match err {
        HandleError::Retry(m) => WitHandleError::Retry(m),
        HandleError::Reject(m) => WitHandleError::Reject(m),
        HandleError::Failed(m) => WitHandleError::Failed(m),
    })
}
