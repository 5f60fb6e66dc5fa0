//! [`Context`]: what a handler can do (send, publish, schedule, state, log), over a swappable [`Backend`].
//!
//! On `wasm32` the backend calls the host's WIT imports; natively,
//! [`TestContext`](crate::testing::TestContext) records everything instead.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Envelope, Level, Schedule, SendOptions};
use crate::error::{SendError, StateError};
use crate::http::Http;
#[cfg(not(target_arch = "wasm32"))]
use crate::http::{HttpError, Request, Response};
use crate::message::Message;

/// What the context calls: one method per WIT import, bodies already encoded.
pub(crate) trait Backend {
    fn send(
        &mut self,
        destination: &str,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, SendError>;
    fn publish(
        &mut self,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<Vec<String>, SendError>;
    fn schedule(
        &mut self,
        message_type: &str,
        body: &[u8],
        when: Schedule,
        options: &SendOptions,
    ) -> Result<Vec<String>, SendError>;
    /// Answer the current message (the context checked it asks for a reply).
    fn reply(
        &mut self,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, SendError>;
    fn state_get(&mut self, key: &str) -> Option<Vec<u8>>;
    fn state_put(&mut self, key: &str, value: &[u8]);
    fn state_delete(&mut self, key: &str);
    fn log(&mut self, level: Level, message: &str);
    /// One HTTP request (natively: the test stubs). On wasm32 requests go
    /// straight to `wasi:http`, so a plugin that sends none imports nothing.
    #[cfg(not(target_arch = "wasm32"))]
    fn http(&mut self, request: &Request) -> Result<Response, HttpError>;
}

/// The handler's view of the host while one message is handled.
///
/// Nothing sent through it leaves, and no state write is kept, unless the
/// handler returns `Ok` and the host commits the message as handled.
pub struct Context {
    envelope: Envelope,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, SendError> {
    serde_json::to_vec(msg).map_err(|e| SendError::Encode(format!("{}: {e}", M::TYPE)))
}

impl Context {
    pub(crate) fn new(envelope: Envelope, backend: Box<dyn Backend>) -> Self {
        Self { envelope, backend }
    }

    pub(crate) fn envelope_mut(&mut self) -> &mut Envelope {
        &mut self.envelope
    }

    /// The message being handled: id, type, attempts, correlation id, headers...
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Sends `msg` to one destination URI (`local://PLUGIN`, ...); returns the new message's id.
    pub fn send<M: Message>(&mut self, destination: &str, msg: &M) -> Result<String, SendError> {
        self.send_with(destination, msg, SendOptions::default())
    }

    /// [`send`](Self::send) with options (correlation id, headers, expiry).
    pub fn send_with<M: Message>(
        &mut self,
        destination: &str,
        msg: &M,
        options: SendOptions,
    ) -> Result<String, SendError> {
        let body = encode(msg)?;
        self.backend.send(destination, M::TYPE, &body, &options)
    }

    /// Publishes `msg` to every subscriber of its type; returns one id per copy (none if nobody subscribes).
    pub fn publish<M: Message>(&mut self, msg: &M) -> Result<Vec<String>, SendError> {
        self.publish_with(msg, SendOptions::default())
    }

    /// [`publish`](Self::publish) with options.
    pub fn publish_with<M: Message>(
        &mut self,
        msg: &M,
        options: SendOptions,
    ) -> Result<Vec<String>, SendError> {
        let body = encode(msg)?;
        self.backend.publish(M::TYPE, &body, &options)
    }

    /// Publishes `msg` later, at or after `when`; returns one id per copy scheduled.
    pub fn schedule<M: Message>(
        &mut self,
        msg: &M,
        when: Schedule,
    ) -> Result<Vec<String>, SendError> {
        self.schedule_with(msg, when, SendOptions::default())
    }

    /// [`schedule`](Self::schedule) with options.
    pub fn schedule_with<M: Message>(
        &mut self,
        msg: &M,
        when: Schedule,
        options: SendOptions,
    ) -> Result<Vec<String>, SendError> {
        let body = encode(msg)?;
        self.backend.schedule(M::TYPE, &body, when, &options)
    }

    /// Answers the message being handled with `msg`, sent to its reply
    /// address (`reply_uri`): for a `POST /invoke/{type}` on the host's
    /// admin endpoint, the HTTP response's body. Returns the reply's id, or
    /// `None` when the message asks for no reply (queued work, a publish),
    /// so a handler can always answer.
    pub fn reply<M: Message>(&mut self, msg: &M) -> Result<Option<String>, SendError> {
        self.reply_with(msg, SendOptions::default())
    }

    /// [`reply`](Self::reply) with options.
    pub fn reply_with<M: Message>(
        &mut self,
        msg: &M,
        options: SendOptions,
    ) -> Result<Option<String>, SendError> {
        if self.envelope.reply_uri.is_none() {
            return Ok(None);
        }
        let body = encode(msg)?;
        self.backend.reply(M::TYPE, &body, &options).map(Some)
    }

    /// The plugin's key-value state, written in the same transaction as the handled mark.
    pub fn state(&mut self) -> State<'_> {
        State {
            backend: self.backend.as_mut(),
        }
    }

    /// Outbound HTTP: `ctx.http().post(url).json(&body)?.send()`. The host
    /// sends it only to the hosts the plugin's `allow_http` lists.
    pub fn http(&mut self) -> Http<'_> {
        Http {
            backend: self.backend.as_mut(),
        }
    }

    /// Writes a log line through the host.
    pub fn log(&mut self, level: Level, message: &str) {
        self.backend.log(level, message);
    }

    /// Logs at [`Level::Trace`].
    pub fn trace(&mut self, message: &str) {
        self.log(Level::Trace, message);
    }

    /// Logs at [`Level::Debug`].
    pub fn debug(&mut self, message: &str) {
        self.log(Level::Debug, message);
    }

    /// Logs at [`Level::Info`].
    pub fn info(&mut self, message: &str) {
        self.log(Level::Info, message);
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&mut self, message: &str) {
        self.log(Level::Warn, message);
    }

    /// Logs at [`Level::Error`].
    pub fn error(&mut self, message: &str) {
        self.log(Level::Error, message);
    }
}

/// The plugin's key-value state; typed values are stored as JSON.
///
/// Reads see committed state plus this message's own earlier writes.
pub struct State<'a> {
    backend: &'a mut dyn Backend,
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State<'_> {
    /// The value at `key` decoded from JSON, or `None` if the key is absent.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, StateError> {
        self.backend
            .state_get(key)
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| StateError {
                    key: key.to_owned(),
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    /// Stores `value` as JSON at `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StateError {
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        self.backend.state_put(key, &bytes);
        Ok(())
    }

    /// Removes `key` (no-op if absent).
    pub fn delete(&mut self, key: &str) {
        self.backend.state_delete(key);
    }

    /// The raw bytes at `key`.
    pub fn get_bytes(&mut self, key: &str) -> Option<Vec<u8>> {
        self.backend.state_get(key)
    }

    /// Stores raw bytes at `key`.
    pub fn put_bytes(&mut self, key: &str, value: &[u8]) {
        self.backend.state_put(key, value);
    }
}
