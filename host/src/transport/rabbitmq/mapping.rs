//! Envelope ↔ AMQP message (docs/amqp-mapping.md). The AMQP body is the
//! message body itself (JSON by default), so a plain AMQP client in any
//! language can send to a jasper-host queue and read what it publishes; the
//! envelope's fields travel as AMQP properties and `jasper-*` headers.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

use crate::envelope::{DEFAULT_CONTENT_TYPE, Envelope, Limits, now_ms};

/// Header carrying the message type for clients that cannot set `type`.
pub(crate) const H_MESSAGE_TYPE: &str = "message-type";
pub(crate) const H_SOURCE: &str = "jasper-source";
pub(crate) const H_CONVERSATION: &str = "jasper-conversation-id";
pub(crate) const H_CAUSATION: &str = "jasper-causation-id";
pub(crate) const H_DELIVER_BY: &str = "jasper-deliver-by";
pub(crate) const H_SENT_AT: &str = "jasper-sent-at-ms";

/// Namespace of ids derived from non-UUID AMQP message ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a61_7370_6572_2d61_6d71_702d_6964_7331);

/// The AMQP properties and body of an envelope.
pub(crate) fn to_amqp(env: &Envelope) -> (BasicProperties, Vec<u8>) {
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: &str| {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    };
    for (k, v) in &env.headers {
        put(k, v);
    }
    put(H_MESSAGE_TYPE, &env.message_type);
    if let Some(s) = &env.source {
        put(H_SOURCE, s);
    }
    if let Some(c) = &env.conversation_id {
        put(H_CONVERSATION, c);
    }
    if let Some(c) = &env.causation_id {
        put(H_CAUSATION, c);
    }
    headers.insert(
        ShortString::from(H_SENT_AT),
        AMQPValue::LongLongInt(env.sent_at),
    );
    let mut props = BasicProperties::default()
        .with_message_id(ShortString::from(env.id.to_string()))
        .with_type(ShortString::from(env.message_type.as_str()))
        .with_content_type(ShortString::from(env.content_type.as_str()))
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(env.sent_at / 1000).unwrap_or(0));
    if let Some(d) = env.deliver_by {
        headers.insert(ShortString::from(H_DELIVER_BY), AMQPValue::LongLongInt(d));
        // The broker drops it once expired, too.
        let left = d.saturating_sub(now_ms()).max(1);
        props = props.with_expiration(ShortString::from(left.to_string()));
    }
    if let Some(c) = &env.correlation_id {
        props = props.with_correlation_id(ShortString::from(c.as_str()));
    }
    if let Some(r) = &env.reply_uri {
        props = props.with_reply_to(ShortString::from(r.as_str()));
    }
    (props.with_headers(headers), env.body.clone())
}

fn text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// The id an AMQP message id stands for: itself when it is a UUID, else a
/// UUIDv5 of it (so a redelivery dedupes either way).
pub fn id_of(message_id: &str) -> Uuid {
    Uuid::parse_str(message_id)
        .unwrap_or_else(|_| Uuid::new_v5(&ID_NAMESPACE, message_id.as_bytes()))
}

/// Whether a received message's body and headers fit the envelope codec's
/// bounds; else why not.
pub(crate) fn within_limits(body: usize, headers: usize, limits: &Limits) -> Result<(), String> {
    if body > limits.max_body {
        return Err(format!(
            "body of {body} bytes exceeds the limit of {}",
            limits.max_body
        ));
    }
    if headers > limits.max_headers {
        return Err(format!(
            "{headers} headers exceed the limit of {}",
            limits.max_headers
        ));
    }
    Ok(())
}

/// The envelope of a received AMQP message, or why it cannot be one.
/// `listener` becomes its destination (the inbox routes it by type).
pub(crate) fn from_amqp(
    props: &BasicProperties,
    body: &[u8],
    listener: &str,
    limits: &Limits,
) -> Result<Envelope, String> {
    let mut headers = BTreeMap::new();
    let mut special = BTreeMap::new();
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            let k = k.as_str();
            if k == H_MESSAGE_TYPE || k.starts_with("jasper-") {
                special.insert(k.to_string(), v.clone());
            } else if let Some(t) = text(v) {
                headers.insert(k.to_string(), t);
            }
        }
    }
    let message_type = props
        .kind()
        .as_ref()
        .map(|t| t.as_str().to_string())
        .or_else(|| special.get(H_MESSAGE_TYPE).and_then(text))
        .unwrap_or_default();
    if message_type.is_empty() {
        return Err(
            "the message has no type: set the AMQP `type` property or a `message-type` header"
                .into(),
        );
    }
    within_limits(body.len(), headers.len(), limits)?;
    let mut env = Envelope::new(message_type, body.to_vec());
    env.id = match props.message_id() {
        Some(m) if !m.as_str().is_empty() => id_of(m.as_str()),
        // No id: nothing to dedupe a redelivery by.
        _ => Uuid::now_v7(),
    };
    if let Some(ct) = props.content_type() {
        env.content_type = ct.as_str().to_string();
    } else {
        env.content_type = DEFAULT_CONTENT_TYPE.to_string();
    }
    env.correlation_id = props
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_string());
    env.reply_uri = props.reply_to().as_ref().map(|r| r.as_str().to_string());
    env.source = special.get(H_SOURCE).and_then(text);
    env.conversation_id = special.get(H_CONVERSATION).and_then(text);
    env.causation_id = special.get(H_CAUSATION).and_then(text);
    env.deliver_by = special.get(H_DELIVER_BY).and_then(int);
    env.sent_at = special
        .get(H_SENT_AT)
        .and_then(int)
        .or_else(|| {
            props
                .timestamp()
                .and_then(|t| i64::try_from(t).ok())
                .map(|s| s * 1000)
        })
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
    fn an_envelope_survives_the_trip_through_amqp() {
        let mut env = Envelope::new("OrderPlaced", br#"{"order_id":"o-1"}"#.to_vec());
        env.correlation_id = Some("c-1".into());
        env.conversation_id = Some("v-1".into());
        env.causation_id = Some("p-1".into());
        env.source = Some("local://orders".into());
        env.reply_uri = Some("rabbitmq://queue/replies".into());
        env.deliver_by = Some(now_ms() + 60_000);
        env.headers.insert("tenant".into(), "acme".into());
        let (props, body) = to_amqp(&env);
        let back = from_amqp(&props, &body, "rabbitmq://queue/q", &Limits::default()).unwrap();
        let mut want = env.clone();
        want.destination = Some("rabbitmq://queue/q".into());
        assert_eq!(back, want);
    }

    #[test]
    fn a_plain_client_message_needs_only_a_type() {
        let props = BasicProperties::default().with_type("OrderPlaced".into());
        let env = from_amqp(&props, b"{}", "rabbitmq://queue/q", &Limits::default()).unwrap();
        assert_eq!(env.message_type, "OrderPlaced");
        assert_eq!(env.content_type, DEFAULT_CONTENT_TYPE);
        // By header instead, with a non-UUID message id: a stable derived id.
        let mut h = FieldTable::default();
        h.insert(
            "message-type".into(),
            AMQPValue::LongString("OrderPlaced".into()),
        );
        let props = BasicProperties::default()
            .with_headers(h)
            .with_message_id("order-1".into());
        let a = from_amqp(&props, b"{}", "q", &Limits::default()).unwrap();
        let b = from_amqp(&props, b"{}", "q", &Limits::default()).unwrap();
        assert_eq!(a.message_type, "OrderPlaced");
        assert_eq!(a.id, b.id);
        let err =
            from_amqp(&BasicProperties::default(), b"{}", "q", &Limits::default()).unwrap_err();
        assert!(err.contains("no type"), "{err}");
    }
}
