//! How the CLI shows bytes a handler or a sender wrote (a state value, a
//! message body) in its JSON: as the JSON they hold when they are JSON, else
//! as text, else as base64, with a field that says which. Shows; never
//! judges what the bytes should have been.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::Envelope;

/// How [`Shown::value`] holds the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The bytes are JSON; `value` is that JSON.
    Json,
    /// UTF-8 text that is not JSON; `value` is the text.
    Text,
    /// Not UTF-8; `value` is the bytes in standard base64.
    Base64,
}

impl Encoding {
    /// The name it is printed with.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Text => "text",
            Encoding::Base64 => "base64",
        }
    }
}

/// Bytes as shown: `{"encoding": "json", "value": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Shown {
    pub encoding: Encoding,
    pub value: Value,
}

impl Shown {
    /// `bytes` as JSON when they parse as JSON, else as text or base64.
    pub(crate) fn of(bytes: &[u8]) -> Shown {
        if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
            return Shown {
                encoding: Encoding::Json,
                value: json,
            };
        }
        Shown::not_json(bytes)
    }

    /// `bytes` as text, or base64 when they are not UTF-8.
    pub(crate) fn not_json(bytes: &[u8]) -> Shown {
        match std::str::from_utf8(bytes) {
            Ok(text) => Shown {
                encoding: Encoding::Text,
                value: Value::String(text.to_owned()),
            },
            Err(_) => Shown {
                encoding: Encoding::Base64,
                value: Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }
}

/// A stored message as `dead-letters list --json` and `show` print it: the
/// envelope's metadata and headers, and its body as [`Shown`]
/// (`body_encoding`, `body`): as JSON when its content type is JSON and it
/// parses (a body labelled JSON that does not parse shows as text, its
/// content type beside it), else as text or base64.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MessageShown {
    pub content_type: String,
    pub headers: BTreeMap<String, String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub reply_uri: Option<String>,
    pub correlation_id: Option<String>,
    pub conversation_id: Option<String>,
    pub causation_id: Option<String>,
    pub sent_at: i64,
    pub scheduled_at: Option<i64>,
    pub deliver_by: Option<i64>,
    pub body_encoding: Encoding,
    pub body: Value,
}

impl MessageShown {
    pub(crate) fn of(env: &Envelope) -> MessageShown {
        let body = if is_json(&env.content_type) {
            Shown::of(&env.body)
        } else {
            Shown::not_json(&env.body)
        };
        MessageShown {
            content_type: env.content_type.clone(),
            headers: env.headers.clone(),
            destination: env.destination.as_ref().map(|d| d.uri().to_owned()),
            source: env.source.clone(),
            reply_uri: env.reply_uri.clone(),
            correlation_id: env.correlation_id.clone(),
            conversation_id: env.conversation_id.clone(),
            causation_id: env.causation_id.clone(),
            sent_at: env.sent_at,
            scheduled_at: env.scheduled_at,
            deliver_by: env.deliver_by,
            body_encoding: body.encoding,
            body: body.value,
        }
    }
}

/// `application/json` or a `+json` type (`application/cloudevents+json`),
/// parameters (`; charset=utf-8`) and case aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::{Encoding, MessageShown, Shown};
    use crate::envelope::Envelope;

    #[test]
    fn a_body_is_read_as_json_only_when_its_content_type_is_json() {
        let mut env = Envelope::new("T", b"42".to_vec());
        env.content_type = "application/json; charset=utf-8".into();
        let m = MessageShown::of(&env);
        assert_eq!((m.body_encoding, m.body), (Encoding::Json, json!(42)));
        env.content_type = "text/plain".into();
        let m = MessageShown::of(&env);
        assert_eq!((m.body_encoding, m.body), (Encoding::Text, json!("42")));
        env.content_type = "application/vnd.x+json".into();
        assert_eq!(MessageShown::of(&env).body_encoding, Encoding::Json);
    }

    #[test]
    fn json_shows_as_json_text_as_text_and_other_bytes_as_base64() {
        assert_eq!(
            Shown::of(br#"{"a":[1,2]}"#),
            Shown {
                encoding: Encoding::Json,
                value: json!({"a": [1, 2]})
            }
        );
        assert_eq!(
            Shown::of(b"hello {"),
            Shown {
                encoding: Encoding::Text,
                value: json!("hello {")
            }
        );
        assert_eq!(
            Shown::of(&[0xff, 0x00, 0x01]),
            Shown {
                encoding: Encoding::Base64,
                value: json!("/wAB")
            }
        );
        let shown = serde_json::to_value(Shown::of(b"7")).unwrap();
        assert_eq!(shown, json!({"encoding": "json", "value": 7}));
    }
}
