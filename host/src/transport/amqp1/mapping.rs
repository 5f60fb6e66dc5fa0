//! Envelope ↔ AMQP 1.0 message (docs/amqp-mapping.md). The body is one
//! `data` section holding the message body itself, so a plain AMQP 1.0
//! client (qpid-proton, Azure's SDKs) can send to a jasper-host listener
//! and read what the host sends; the envelope's fields travel in the
//! standard properties and in application properties named as on RabbitMQ
//! (`message-type`, `jasper-*`).

use std::collections::BTreeMap;

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Header, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use uuid::Uuid;

use crate::envelope::{DEFAULT_CONTENT_TYPE, Envelope, Limits, now_ms};
use crate::transport::rabbitmq::mapping::{
    H_CAUSATION, H_CONVERSATION, H_DELIVER_BY, H_MESSAGE_TYPE, H_SENT_AT, H_SOURCE, id_of,
    within_limits,
};

/// Service Bus: when a sent message becomes visible (ms since the epoch).
pub(crate) const SCHEDULED_ENQUEUE_TIME: &str = "x-opt-scheduled-enqueue-time";

/// The AMQP message of an envelope. `schedule`: the broker holds it until
/// the envelope's `scheduled_at` (Service Bus); else it is sent as is.
pub(crate) fn to_message(env: &Envelope, schedule: bool) -> Message<Body<Value>> {
    let mut app = ApplicationProperties::default();
    let mut put = |k: &str, v: SimpleValue| {
        app.0.insert(k.to_string(), v);
    };
    for (k, v) in &env.headers {
        put(k, SimpleValue::String(v.clone()));
    }
    put(
        H_MESSAGE_TYPE,
        SimpleValue::String(env.message_type.clone()),
    );
    if let Some(s) = &env.source {
        put(H_SOURCE, SimpleValue::String(s.clone()));
    }
    if let Some(c) = &env.conversation_id {
        put(H_CONVERSATION, SimpleValue::String(c.clone()));
    }
    if let Some(c) = &env.causation_id {
        put(H_CAUSATION, SimpleValue::String(c.clone()));
    }
    put(H_SENT_AT, SimpleValue::Long(env.sent_at));
    let mut header = Header {
        durable: true,
        ..Header::default()
    };
    let mut properties = Properties {
        message_id: Some(MessageId::String(env.id.to_string())),
        subject: Some(env.message_type.clone()),
        content_type: Some(Symbol::from(env.content_type.as_str())),
        creation_time: Some(Timestamp::from_milliseconds(env.sent_at)),
        correlation_id: env.correlation_id.clone().map(MessageId::String),
        reply_to: env.reply_uri.clone(),
        ..Properties::default()
    };
    if let Some(d) = env.deliver_by {
        put(H_DELIVER_BY, SimpleValue::Long(d));
        // The broker drops it once expired, too.
        let left = d.saturating_sub(now_ms()).max(1);
        header.ttl = Some(u32::try_from(left).unwrap_or(u32::MAX));
        properties.absolute_expiry_time = Some(Timestamp::from_milliseconds(d));
    }
    let mut annotations = None;
    if schedule && let Some(at) = env.scheduled_at {
        let mut m = MessageAnnotations::default();
        m.0.insert(
            OwnedKey::Symbol(Symbol::from(SCHEDULED_ENQUEUE_TIME)),
            Value::Timestamp(Timestamp::from_milliseconds(at)),
        );
        annotations = Some(m);
    }
    Message {
        header: Some(header),
        delivery_annotations: None,
        message_annotations: annotations,
        properties: Some(properties),
        application_properties: Some(app),
        body: Body::from(Data(Binary::from(env.body.clone()))),
        footer: None,
    }
}

fn text(v: &SimpleValue) -> Option<String> {
    Some(match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => Uuid::from_bytes(u.clone().into_inner()).to_string(),
        _ => return None,
    })
}

fn int(v: &SimpleValue) -> Option<i64> {
    match v {
        SimpleValue::Long(n) => Some(*n),
        SimpleValue::Int(n) => Some(i64::from(*n)),
        SimpleValue::Uint(n) => Some(i64::from(*n)),
        SimpleValue::Ulong(n) => i64::try_from(*n).ok(),
        SimpleValue::Timestamp(t) => Some(t.milliseconds()),
        other => text(other)?.parse().ok(),
    }
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => Uuid::from_bytes(u.clone().into_inner()).to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The message's body bytes: its `data` sections joined, or an
/// `amqp-value` string or binary (what some clients send by default).
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, String> {
    match body {
        Body::Data(sections) => Ok(sections.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(v) => match &v.0 {
            Value::String(s) => Ok(s.clone().into_bytes()),
            Value::Binary(b) => Ok(b.to_vec()),
            other => Err(format!(
                "an amqp-value body of {} is not a message body: send a data section (bytes) or a string",
                value_kind(other)
            )),
        },
        Body::Sequence(_) => {
            Err("an amqp-sequence body is not a message body: send a data section".into())
        }
        Body::Empty => Ok(Vec::new()),
    }
}

/// What can be read of a message's body, for a dead letter of a message
/// that is not one (empty when the body is no bytes at all).
pub(crate) fn raw_body(message: &Message<Body<Value>>) -> Vec<u8> {
    body_bytes(&message.body).unwrap_or_default()
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Array(_) => "an array",
        Value::Null => "null",
        _ => "a scalar",
    }
}

/// The envelope of a received AMQP message, or why it cannot be one.
/// `listener` becomes its destination (the inbox routes it by type).
pub(crate) fn from_message(
    message: &Message<Body<Value>>,
    listener: &str,
    limits: &Limits,
) -> Result<Envelope, String> {
    let mut headers = BTreeMap::new();
    let mut special = BTreeMap::new();
    if let Some(app) = &message.application_properties {
        for (k, v) in app.0.iter() {
            if k == H_MESSAGE_TYPE || k.starts_with("jasper-") {
                special.insert(k.clone(), v.clone());
            } else if let Some(t) = text(v) {
                headers.insert(k.clone(), t);
            }
        }
    }
    let props = message.properties.clone().unwrap_or_default();
    let message_type = special
        .get(H_MESSAGE_TYPE)
        .and_then(text)
        .or_else(|| props.subject.clone())
        .unwrap_or_default();
    if message_type.is_empty() {
        return Err(
            "the message has no type: set a `message-type` application property or the subject"
                .into(),
        );
    }
    let body = body_bytes(&message.body)?;
    within_limits(body.len(), headers.len(), limits)?;
    let mut env = Envelope::new(message_type, body);
    env.id = match props.message_id.as_ref().map(id_text) {
        Some(m) if !m.is_empty() => id_of(&m),
        // No id: nothing to dedupe a redelivery by.
        _ => Uuid::now_v7(),
    };
    env.content_type = props
        .content_type
        .as_ref()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string());
    env.correlation_id = props.correlation_id.as_ref().map(id_text);
    env.reply_uri = props.reply_to.clone();
    env.source = special.get(H_SOURCE).and_then(text);
    env.conversation_id = special.get(H_CONVERSATION).and_then(text);
    env.causation_id = special.get(H_CAUSATION).and_then(text);
    env.deliver_by = special
        .get(H_DELIVER_BY)
        .and_then(int)
        .or_else(|| props.absolute_expiry_time.map(|t| t.milliseconds()));
    env.sent_at = special
        .get(H_SENT_AT)
        .and_then(int)
        .or_else(|| props.creation_time.map(|t| t.milliseconds()))
        .unwrap_or_else(now_ms);
    env.headers = headers;
    env.destination = Some(listener.into());
    Ok(env)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_the_trip_through_amqp_1_0() {
        let mut env = Envelope::new("OrderPlaced", br#"{"order_id":"o-1"}"#.to_vec());
        env.correlation_id = Some("c-1".into());
        env.conversation_id = Some("v-1".into());
        env.causation_id = Some("p-1".into());
        env.source = Some("local://orders".into());
        env.reply_uri = Some("asb://ns.servicebus.windows.net/replies".into());
        env.deliver_by = Some(now_ms() + 60_000);
        env.headers.insert("tenant".into(), "acme".into());
        let m = to_message(&env, false);
        assert!(m.message_annotations.is_none());
        let back = from_message(&m, "amqp://h:1/q", &Limits::default()).unwrap();
        let mut want = env.clone();
        want.destination = Some("amqp://h:1/q".into());
        assert_eq!(back, want);
    }

    #[test]
    fn a_scheduled_envelope_is_held_by_service_bus() {
        let mut env = Envelope::new("Reminder", b"{}".to_vec());
        env.scheduled_at = Some(1_700_000_000_000);
        let m = to_message(&env, true);
        let a = m.message_annotations.unwrap();
        let key = OwnedKey::Symbol(Symbol::from(SCHEDULED_ENQUEUE_TIME));
        assert_eq!(
            a.0.get(&key),
            Some(&Value::Timestamp(Timestamp::from_milliseconds(
                1_700_000_000_000
            )))
        );
    }

    #[test]
    fn a_plain_client_message_needs_only_a_subject_or_a_type_property() {
        let plain = |props: Option<Properties>, app: Option<ApplicationProperties>, body| Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: props,
            application_properties: app,
            body,
            footer: None,
        };
        let by_subject = plain(
            Some(Properties {
                subject: Some("OrderPlaced".into()),
                message_id: Some(MessageId::String("order-1".into())),
                ..Properties::default()
            }),
            None,
            Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(
                "{}".into(),
            ))),
        );
        let a = from_message(&by_subject, "q", &Limits::default()).unwrap();
        let b = from_message(&by_subject, "q", &Limits::default()).unwrap();
        assert_eq!(a.message_type, "OrderPlaced");
        assert_eq!(a.body, b"{}");
        assert_eq!(a.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(a.id, b.id, "a non-UUID message id gives a stable id");
        let mut app = ApplicationProperties::default();
        app.0.insert(
            "message-type".into(),
            SimpleValue::String("OrderPlaced".into()),
        );
        let by_property = plain(None, Some(app), Body::Empty);
        assert_eq!(
            from_message(&by_property, "q", &Limits::default())
                .unwrap()
                .message_type,
            "OrderPlaced"
        );
        let untyped = plain(None, None, Body::Empty);
        let e = from_message(&untyped, "q", &Limits::default()).unwrap_err();
        assert!(e.contains("no type"), "{e}");
        let mapped = plain(
            Some(Properties {
                subject: Some("T".into()),
                ..Properties::default()
            }),
            None,
            Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::List(vec![]))),
        );
        let e = from_message(&mapped, "q", &Limits::default()).unwrap_err();
        assert!(e.contains("a list"), "{e}");
    }
}
