//! Plain data the handler sees and passes back: [`Envelope`], [`SendOptions`], [`Schedule`], [`Level`].

use std::time::Duration;

/// The message being handled, as the host delivered it (the WIT `envelope`).
///
/// Times are milliseconds since the Unix epoch (UTC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The message id (a UUID in hyphenated text form).
    pub id: String,
    /// The message-type name the host routed on.
    pub message_type: String,
    /// The body's content type, normally `application/json`.
    pub content_type: String,
    /// The raw body; handlers registered with [`handlers!`](crate::handlers) get it decoded.
    pub body: Vec<u8>,
    /// Where the message was sent to, if it was sent to one destination.
    pub destination: Option<String>,
    /// Where the message came from.
    pub source: Option<String>,
    /// Where replies should go.
    pub reply_uri: Option<String>,
    /// Correlation id set by the sender.
    pub correlation_id: Option<String>,
    /// Conversation id set by the sender.
    pub conversation_id: Option<String>,
    /// The id of the message whose handler sent this one.
    pub causation_id: Option<String>,
    /// Free-form headers, in the order the host gave them.
    pub headers: Vec<(String, String)>,
    /// Earlier failed attempts at handling this message (0 on the first try).
    pub attempts: u32,
    /// When the message was scheduled for, if it was scheduled.
    pub scheduled_at: Option<i64>,
    /// Expiry: the host discards the message if not delivered by then.
    pub deliver_by: Option<i64>,
    /// When the message was sent.
    pub sent_at: i64,
}

impl Envelope {
    /// An envelope with the given id, type and body; every other field empty.
    pub fn new(id: impl Into<String>, message_type: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            id: id.into(),
            message_type: message_type.into(),
            content_type: "application/json".to_owned(),
            body,
            ..Self::default()
        }
    }

    /// The first header with this name (names compare exactly).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Optional settings for a message sent from a handler (the WIT `send-options`).
///
/// ```
/// use jasper_guest::SendOptions;
/// let opts = SendOptions::new().correlation_id("c-1").header("tenant", "acme");
/// assert_eq!(opts.headers, vec![("tenant".to_owned(), "acme".to_owned())]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Correlation id of the new message.
    pub correlation_id: Option<String>,
    /// Content type; the host's default (`application/json`) when `None`.
    pub content_type: Option<String>,
    /// Headers of the new message.
    pub headers: Vec<(String, String)>,
    /// Expiry: a message not delivered by then is discarded.
    pub deliver_by: Option<i64>,
}

impl SendOptions {
    /// No options: the host's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the expiry time (ms since the Unix epoch).
    pub fn deliver_by(mut self, at_ms: i64) -> Self {
        self.deliver_by = Some(at_ms);
        self
    }
}

/// When a scheduled message becomes due (the WIT `schedule-time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// At an absolute time, ms since the Unix epoch.
    At(i64),
    /// After a delay from now, in ms.
    Delay(u64),
}

impl Schedule {
    /// At an absolute time, ms since the Unix epoch.
    pub fn at_ms(at: i64) -> Self {
        Self::At(at)
    }

    /// After `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::Delay(ms)
    }

    /// After a delay from now (whole milliseconds, saturating).
    pub fn after(delay: Duration) -> Self {
        Self::Delay(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Severity of a log line the handler writes through the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Diagnostics for developers.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
}
