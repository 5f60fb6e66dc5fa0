//! Messages entering the host from outside a handler (the `send` command,
//! tests, an embedding application): one envelope per subscribing plugin,
//! written to the inbox. A second copy of an id derives its id from the first,
//! so sending the same id again is always a duplicate.

use uuid::Uuid;

use crate::address::Destination;
use crate::envelope::Envelope;
use crate::runtime::routing::Router;

/// Why a message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SendError {
    #[error("no loaded plugin handles message type '{message_type}' (known types: {known})")]
    NoSubscriber { message_type: String, known: String },
}

/// The envelopes for one message body: a copy per subscriber of its type.
pub(crate) fn envelopes_for(
    router: &Router,
    message_type: &str,
    body: Vec<u8>,
    id: Option<Uuid>,
    correlation_id: Option<&str>,
    source: &str,
) -> Result<Vec<Envelope>, SendError> {
    let destinations = router.publish_destinations(message_type);
    if destinations.is_empty() {
        let known: Vec<&str> = router.message_types().collect();
        return Err(SendError::NoSubscriber {
            message_type: message_type.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    let base = id.unwrap_or_else(Uuid::now_v7);
    Ok(destinations
        .into_iter()
        .enumerate()
        .map(|(k, dest)| {
            let dest = Destination::from(dest);
            let mut env = Envelope::new(message_type, body.clone());
            env.id = if k == 0 {
                base
            } else {
                Uuid::new_v5(&base, dest.uri().as_bytes())
            };
            env.destination = Some(dest);
            env.source = Some(source.to_string());
            env.correlation_id = Some(
                correlation_id
                    .map(str::to_string)
                    .unwrap_or_else(|| base.to_string()),
            );
            env
        })
        .collect())
}
