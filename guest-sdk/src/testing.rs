//! Native unit testing: [`TestContext`] runs handlers with no host and records what they did.
//!
//! ```
//! use jasper_guest::testing::TestContext;
//! use jasper_guest::Level;
//!
//! let mut ctx = TestContext::new();
//! ctx.state().put("greeting", "hi").unwrap();
//! ctx.info("done");
//! assert_eq!(ctx.state().get::<String>("greeting").unwrap().as_deref(), Some("hi"));
//! assert_eq!(ctx.logs(), vec![(Level::Info, "done".to_owned())]);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use crate::context::{Backend, Context};
use crate::dispatch::Handlers;
use crate::envelope::{Envelope, Level, Schedule, SendOptions};
use crate::error::{HandleError, SendError};
use crate::http::{HttpError, Request, Response};
use crate::message::Message;

/// One message a handler sent, published or scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentMessage {
    /// The destination URI for `send`; `None` for `publish` and `schedule`.
    pub destination: Option<String>,
    /// The message-type name.
    pub message_type: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The options it was sent with.
    pub options: SendOptions,
    /// When it is due, for `schedule`.
    pub when: Option<Schedule>,
}

impl SentMessage {
    /// Decodes the body as `M` (check `message_type` first if several types were sent).
    pub fn decode<M: Message>(&self) -> Result<M, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// What the recording backend saw; shared between the context and the test.
#[derive(Debug, Default)]
struct Recorded {
    sent: Vec<SentMessage>,
    published: Vec<SentMessage>,
    scheduled: Vec<SentMessage>,
    replies: Vec<SentMessage>,
    state: BTreeMap<String, Vec<u8>>,
    logs: Vec<(Level, String)>,
    fail_sends: Option<SendError>,
    next_id: u64,
    /// (URL or `PREFIX*`, answer); the latest match wins.
    http_stubs: Vec<(String, Result<Response, HttpError>)>,
    http_requests: Vec<Request>,
}

impl Recorded {
    fn record(
        &mut self,
        destination: Option<&str>,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
        when: Option<Schedule>,
    ) -> Result<String, SendError> {
        if let Some(e) = &self.fail_sends {
            return Err(e.clone());
        }
        let msg = SentMessage {
            destination: destination.map(str::to_owned),
            message_type: message_type.to_owned(),
            body: body.to_vec(),
            options: options.clone(),
            when,
        };
        match (destination, when) {
            (Some(_), _) => self.sent.push(msg),
            (None, Some(_)) => self.scheduled.push(msg),
            (None, None) => self.published.push(msg),
        }
        self.next_id += 1;
        Ok(format!("test-message-{}", self.next_id))
    }
}

/// The recording backend behind a [`TestContext`].
struct Recorder(Rc<RefCell<Recorded>>);

impl Backend for Recorder {
    fn send(
        &mut self,
        destination: &str,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, SendError> {
        self.0
            .borrow_mut()
            .record(Some(destination), message_type, body, options, None)
    }

    fn publish(
        &mut self,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<Vec<String>, SendError> {
        let id = self
            .0
            .borrow_mut()
            .record(None, message_type, body, options, None)?;
        Ok(vec![id])
    }

    fn schedule(
        &mut self,
        message_type: &str,
        body: &[u8],
        when: Schedule,
        options: &SendOptions,
    ) -> Result<Vec<String>, SendError> {
        let id = self
            .0
            .borrow_mut()
            .record(None, message_type, body, options, Some(when))?;
        Ok(vec![id])
    }

    fn reply(
        &mut self,
        message_type: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, SendError> {
        let mut rec = self.0.borrow_mut();
        let before = rec.sent.len();
        // `Context::reply` calls here only when the envelope has a reply_uri.
        let id = rec.record(Some("reply"), message_type, body, options, None)?;
        if rec.sent.len() > before
            && let Some(msg) = rec.sent.pop()
        {
            rec.replies.push(msg);
        }
        Ok(id)
    }

    fn state_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().state.get(key).cloned()
    }

    fn state_put(&mut self, key: &str, value: &[u8]) {
        self.0
            .borrow_mut()
            .state
            .insert(key.to_owned(), value.to_vec());
    }

    fn state_delete(&mut self, key: &str) {
        self.0.borrow_mut().state.remove(key);
    }

    fn log(&mut self, level: Level, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_owned()));
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn http(&mut self, request: &Request) -> Result<Response, HttpError> {
        let mut rec = self.0.borrow_mut();
        rec.http_requests.push(request.clone());
        let url = request.url.as_str();
        rec.http_stubs
            .iter()
            .rev()
            .find(|(m, _)| match m.strip_suffix('*') {
                Some(prefix) => url.starts_with(prefix),
                None => m == url,
            })
            .map(|(_, answer)| answer.clone())
            .unwrap_or_else(|| Err(HttpError::Denied(format!("{url}: no stub_http for it"))))
    }
}

/// A [`Context`] for native tests: state is an in-memory map, and everything
/// sent, published, scheduled or logged is recorded for assertions.
///
/// It dereferences to [`Context`], so `handler(&mut test_ctx, msg)` works.
/// Publishing and scheduling return one made-up id, as if one plugin subscribed.
pub struct TestContext {
    ctx: Context,
    recorded: Rc<RefCell<Recorded>>,
}

impl std::fmt::Debug for TestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestContext")
            .field("envelope", self.ctx.envelope())
            .field("recorded", &self.recorded.borrow())
            .finish()
    }
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TestContext {
    /// A context with empty state and an envelope with id `test-envelope`, first attempt.
    pub fn new() -> Self {
        let recorded = Rc::new(RefCell::new(Recorded::default()));
        let envelope = Envelope::new("test-envelope", "", Vec::new());
        let ctx = Context::new(envelope, Box::new(Recorder(Rc::clone(&recorded))));
        Self { ctx, recorded }
    }

    /// The envelope handlers see; set `attempts`, `headers`... here.
    pub fn envelope_mut(&mut self) -> &mut Envelope {
        self.ctx.envelope_mut()
    }

    /// Runs `msg` through `handlers` as the host would (JSON-encoded, dispatched by type).
    pub fn deliver<M: Message>(&mut self, handlers: &Handlers, msg: &M) -> Result<(), HandleError> {
        let body = serde_json::to_vec(msg)
            .map_err(|e| HandleError::Failed(format!("cannot encode `{}`: {e}", M::TYPE)))?;
        self.deliver_raw(handlers, M::TYPE, &body)
    }

    /// Runs a raw body through `handlers` under `message_type`.
    pub fn deliver_raw(
        &mut self,
        handlers: &Handlers,
        message_type: &str,
        body: &[u8],
    ) -> Result<(), HandleError> {
        let envelope = self.ctx.envelope_mut();
        envelope.message_type = message_type.to_owned();
        envelope.body = body.to_vec();
        handlers.dispatch(&mut self.ctx)
    }

    /// Makes every later send, publish and schedule fail with `error` (`None` to stop).
    pub fn fail_sends(&mut self, error: Option<SendError>) {
        self.recorded.borrow_mut().fail_sends = error;
    }

    /// Answers requests to `url` (or to every URL starting with `PREFIX`
    /// when given as `PREFIX*`) with `response`; a later stub for the same
    /// URL wins. A request no stub matches fails with [`HttpError::Denied`].
    pub fn stub_http(&mut self, url: &str, response: Response) {
        self.recorded
            .borrow_mut()
            .http_stubs
            .push((url.to_owned(), Ok(response)));
    }

    /// Like [`stub_http`](Self::stub_http), failing with `error` instead.
    pub fn stub_http_error(&mut self, url: &str, error: HttpError) {
        self.recorded
            .borrow_mut()
            .http_stubs
            .push((url.to_owned(), Err(error)));
    }

    /// HTTP requests made, oldest first (each redirect hop is one).
    pub fn http_requests(&self) -> Vec<Request> {
        self.recorded.borrow().http_requests.clone()
    }

    /// Messages sent with `send`, oldest first.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.recorded.borrow().sent.clone()
    }

    /// Replies made with `reply` (set `envelope_mut().reply_uri` so the
    /// message asks for one), oldest first; `destination` is `"reply"`.
    pub fn replies(&self) -> Vec<SentMessage> {
        self.recorded.borrow().replies.clone()
    }

    /// Messages published with `publish`, oldest first.
    pub fn published(&self) -> Vec<SentMessage> {
        self.recorded.borrow().published.clone()
    }

    /// Messages scheduled with `schedule`, oldest first.
    pub fn scheduled(&self) -> Vec<SentMessage> {
        self.recorded.borrow().scheduled.clone()
    }

    /// The state map as it is now (raw JSON bytes per key).
    pub fn state_snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.recorded.borrow().state.clone()
    }

    /// Log lines, oldest first.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.recorded.borrow().logs.clone()
    }
}

impl Deref for TestContext {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl DerefMut for TestContext {
    fn deref_mut(&mut self) -> &mut Context {
        &mut self.ctx
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }
    crate::message!(Note = "test.Note");

    fn note(text: &str) -> Note {
        Note { text: text.into() }
    }

    #[test]
    fn records_send_publish_schedule_with_options() {
        let mut ctx = TestContext::new();
        let id = ctx
            .send_with(
                "local://audit",
                &note("a"),
                SendOptions::new().correlation_id("c"),
            )
            .unwrap();
        let published = ctx.publish(&note("b")).unwrap();
        let scheduled = ctx.schedule(&note("c"), Schedule::at_ms(1_000)).unwrap();
        assert_eq!(id, "test-message-1");
        assert_eq!(published, ["test-message-2"]);
        assert_eq!(scheduled, ["test-message-3"]);

        let sent = ctx.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].destination.as_deref(), Some("local://audit"));
        assert_eq!(sent[0].message_type, "test.Note");
        assert_eq!(sent[0].options.correlation_id.as_deref(), Some("c"));
        assert_eq!(sent[0].decode::<Note>().unwrap(), note("a"));
        assert_eq!(ctx.published()[0].body, br#"{"text":"b"}"#);
        assert_eq!(ctx.published()[0].when, None);
        assert_eq!(ctx.scheduled()[0].when, Some(Schedule::At(1_000)));
    }

    #[test]
    fn state_reads_its_own_writes() {
        let mut ctx = TestContext::new();
        assert_eq!(ctx.state().get::<Note>("k").unwrap(), None);
        ctx.state().put("k", &note("x")).unwrap();
        assert_eq!(ctx.state().get::<Note>("k").unwrap(), Some(note("x")));
        assert_eq!(ctx.state().get_bytes("k").unwrap(), br#"{"text":"x"}"#);
        ctx.state().put_bytes("raw", b"not json");
        let err = ctx.state().get::<Note>("raw").unwrap_err();
        assert_eq!(err.key, "raw");
        assert!(matches!(HandleError::from(err), HandleError::Failed(_)));
        ctx.state().delete("k");
        assert_eq!(ctx.state().get_bytes("k"), None);
        assert_eq!(ctx.state_snapshot().keys().collect::<Vec<_>>(), ["raw"]);
    }

    #[test]
    fn logs_are_recorded_in_order() {
        let mut ctx = TestContext::new();
        ctx.log(Level::Warn, "w");
        ctx.trace("t");
        ctx.error("e");
        assert_eq!(
            ctx.logs(),
            [
                (Level::Warn, "w".to_owned()),
                (Level::Trace, "t".to_owned()),
                (Level::Error, "e".to_owned())
            ]
        );
    }

    #[test]
    fn failing_sends_map_to_failed_through_question_mark() {
        fn handler(ctx: &mut Context, msg: Note) -> Result<(), HandleError> {
            ctx.send("nowhere://x", &msg)?;
            Ok(())
        }
        let mut ctx = TestContext::new();
        ctx.fail_sends(Some(SendError::UnknownDestination("nowhere://x".into())));
        let err = handler(&mut ctx, note("a")).unwrap_err();
        assert_eq!(
            err,
            HandleError::failed("send failed: unknown destination: nowhere://x")
        );
        assert!(ctx.sent().is_empty());
        ctx.fail_sends(None);
        handler(&mut ctx, note("a")).unwrap();
        assert_eq!(ctx.sent().len(), 1);
    }

    #[test]
    fn http_answers_from_stubs_follows_redirects_and_records_requests() {
        let mut ctx = TestContext::new();
        ctx.stub_http("http://a.test/*", Response::new(500));
        ctx.stub_http(
            "http://a.test/old",
            Response::new(302).with_header("Location", "/new"),
        );
        ctx.stub_http("http://a.test/new", Response::new(200).with_body("ok"));
        let res = ctx
            .http()
            .post("http://a.test/old")
            .json(&note("x"))
            .unwrap()
            .follow_redirects(2)
            .send()
            .unwrap();
        assert_eq!((res.status, res.body.as_slice()), (200, &b"ok"[..]));
        let reqs = ctx.http_requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].body, br#"{"text":"x"}"#);
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
        // A 302 after a POST is fetched with GET and no body.
        assert_eq!(reqs[1].method, crate::http::Method::Get);
        assert!(reqs[1].body.is_empty());
        // Without following, the 3xx comes back as is.
        let res = ctx.http().get("http://a.test/old").send().unwrap();
        assert_eq!(res.status, 302);
        assert_eq!(
            ctx.http().get("http://a.test/x").send().unwrap().status,
            500
        );
        let err = ctx.http().get("http://b.test/").send().unwrap_err();
        assert!(matches!(err, HttpError::Denied(_)), "{err:?}");
        ctx.stub_http_error("http://b.test/", HttpError::Timeout("slow".into()));
        let err = ctx.http().get("http://b.test/").send().unwrap_err();
        assert!(matches!(HandleError::from(err), HandleError::Retry(_)));
    }

    #[test]
    fn envelope_is_editable() {
        let mut ctx = TestContext::new();
        ctx.envelope_mut().attempts = 2;
        ctx.envelope_mut()
            .headers
            .push(("tenant".into(), "acme".into()));
        assert_eq!(ctx.envelope().attempts, 2);
        assert_eq!(ctx.envelope().header("tenant"), Some("acme"));
        assert_eq!(ctx.envelope().header("other"), None);
        assert_eq!(ctx.envelope().id, "test-envelope");
    }
}
