//! Command ingress over HTTP on the admin endpoint: `POST /messages/{type}`
//! writes the body durably into the inbox (one copy per subscribing plugin)
//! and answers 202 with its id; `POST /invoke/{type}` does the same for a
//! type exactly one plugin handles, waits for the handler, and answers with
//! its reply (`ctx.reply`), 204 when it gave none, or its failure. Both take
//! `Authorization: Bearer` with `[admin] token`; without a token configured
//! they refuse every request.
//!
//! The message is stored before anything is answered, so a 202 (or a reply)
//! means it is in the inbox and will be handled even if the host dies next.
//! An `Idempotency-Key` header on `/messages` makes the id a function of the
//! type and the key: a client that retries a POST whose answer it lost
//! writes the message once.

// The refusals are axum answers, built once per request: their size is no cost.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{Instrument, debug, info_span, warn};
use uuid::Uuid;

use crate::config::AdminConfig;
use crate::envelope::Envelope;
use crate::handling::replies::{self, Answer, Replies};
use crate::transport::receive::{Inbox, Keep};
use crate::transport::wire::Verdict;

/// The `source` of messages that came in over HTTP.
const SOURCE: &str = "http://admin";
/// Longest message type in a path.
const MAX_TYPE: usize = 256;
/// The namespace of ids made from an `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a61_7370_6572_2d68_7474_702d_6b65_7973);

/// What the ingress routes need.
#[derive(Debug)]
pub struct Ingress {
    inbox: Inbox,
    replies: Arc<Replies>,
    token: Option<String>,
    max_body: usize,
    invoke_timeout: Duration,
}

impl Ingress {
    pub(crate) fn new(inbox: Inbox, replies: Arc<Replies>, config: &AdminConfig) -> Ingress {
        Ingress {
            inbox,
            replies,
            token: config.token.clone(),
            max_body: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            invoke_timeout: Duration::from_millis(config.invoke_timeout_ms),
        }
    }
}

/// A refusal: status and a plain JSON `{"error": ...}` naming what is wrong.
fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": error.into() }))).into_response()
}

/// Equal in time independent of where the first difference is.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer check; `Err` is the answer.
pub(crate) fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this endpoint is off: set [admin] token in the config to enable it",
        ));
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            let mut r = refuse(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <[admin] token>)",
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(r)
        }
    }
}

/// The body, at most `max` bytes.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, Response> {
    let too_big = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than admin.max_body_bytes = {max}"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            // Over the limit, or the client went away mid-body.
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                Err(too_big())
            } else {
                Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

/// The envelope of a request: the type from the path, the body, the
/// content type and correlation id from headers.
fn envelope(message_type: &str, headers: &HeaderMap, body: Vec<u8>) -> Result<Envelope, Response> {
    if message_type.is_empty()
        || message_type.len() > MAX_TYPE
        || message_type.chars().any(char::is_control)
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("the message type must be 1 to {MAX_TYPE} bytes with no control characters"),
        ));
    }
    let mut env = Envelope::new(message_type, body);
    env.source = Some(SOURCE.to_owned());
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(ct) = header(CONTENT_TYPE.as_str()) {
        env.content_type = ct.to_owned();
    }
    if let Some(c) = header("jasper-correlation-id") {
        env.correlation_id = Some(c.to_owned());
    }
    Ok(env)
}

/// How many plugins here handle `message_type`; 404 if none.
fn handlers_of(ingress: &Ingress, message_type: &str) -> Result<usize, Response> {
    let n = ingress
        .inbox
        .plugins
        .snapshot()
        .router()
        .local_destinations(message_type)
        .len();
    if n == 0 {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no plugin on this host handles message type '{message_type}'"),
        ));
    }
    Ok(n)
}

/// Store the envelope in the inbox (handed to this node's worker).
async fn store(ingress: &Ingress, env: Envelope) -> Result<(), Response> {
    match ingress.inbox.receive_as(vec![Ok(env)], Keep::Handed).await {
        Ok(verdicts) => match verdicts.into_iter().next() {
            Some(Verdict::Accepted) | None => Ok(()),
            // Its plugin went away between the check and the insert.
            Some(Verdict::Rejected(m) | Verdict::UnknownDestination(m)) => {
                Err(refuse(StatusCode::NOT_FOUND, m))
            }
        },
        Err(e) => {
            warn!(error = %crate::error_chain(&e), "a message over HTTP could not be stored");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the message could not be stored; nothing was written: {}",
                    crate::error_chain(&e)
                ),
            ))
        }
    }
}

/// What every command request checks first: the token, the body's size,
/// the type; the envelope and how many plugins here handle its type.
async fn accept(
    ingress: &Ingress,
    message_type: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Envelope, usize), Response> {
    authorize(ingress.token.as_deref(), headers)?;
    let body = read_body(headers, body, ingress.max_body).await?;
    let env = envelope(message_type, headers, body)?;
    let n = handlers_of(ingress, message_type)?;
    Ok((env, n))
}

/// `POST /messages/{type}`.
pub(crate) async fn post_message(
    State(ingress): State<Arc<Ingress>>,
    Path(message_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (mut env, _) = accept(&ingress, &message_type, &headers, body).await?;
    if let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        env.id = Uuid::new_v5(
            &IDEMPOTENCY_NAMESPACE,
            format!("{message_type}\n{key}").as_bytes(),
        );
    }
    let id = env.id;
    let span = info_span!("ingress", message_id = %id, message_type = %message_type);
    crate::telemetry::on_send(&span, "http", &id.to_string(), &mut env.headers);
    store(&ingress, env).instrument(span).await?;
    debug!(message_id = %id, %message_type, "message taken over HTTP");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id.to_string(), "message_type": message_type })),
    )
        .into_response())
}

/// `POST /invoke/{type}`.
pub(crate) async fn invoke(
    State(ingress): State<Arc<Ingress>>,
    Path(message_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (mut env, n) = accept(&ingress, &message_type, &headers, body).await?;
    if n > 1 {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "{n} plugins handle message type '{message_type}': /invoke needs exactly one \
                 (POST /messages/{message_type} reaches them all)"
            ),
        ));
    }
    let id = env.id;
    env.reply_uri = Some(replies::invoke_uri(id));
    // Registered before the message is stored: its answer cannot come first.
    let mut waiter = ingress.replies.wait(id);
    let span = info_span!("invoke", message_id = %id, message_type = %message_type);
    crate::telemetry::on_send(&span, "http", &id.to_string(), &mut env.headers);
    store(&ingress, env).instrument(span).await?;
    let id_header = HeaderValue::from_str(&id.to_string()).ok();
    let with_id = |mut r: Response| {
        if let Some(v) = id_header.clone() {
            r.headers_mut().insert("jasper-message-id", v);
        }
        r
    };
    let answer = tokio::time::timeout(ingress.invoke_timeout, waiter.answer()).await;
    Ok(with_id(match answer {
        Ok(Some(Answer::Handled(Some(reply)))) => {
            let reply = *reply;
            let mut r = (StatusCode::OK, reply.body).into_response();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&reply.content_type) {
                h.insert(CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&reply.message_type) {
                h.insert("jasper-message-type", v);
            }
            r
        }
        Ok(Some(Answer::Handled(None))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(Answer::DeadLettered { kind, message })) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "id": id.to_string(),
                "kind": kind,
                "error": message,
            })),
        )
            .into_response(),
        Ok(None) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the host stopped before message {id} was handled; it stays in the inbox"),
        ),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            axum::Json(json!({
                "id": id.to_string(),
                "error": format!(
                    "not handled within admin.invoke_timeout_ms = {} ms; the message stays in the inbox and will be handled",
                    ingress.invoke_timeout.as_millis()
                ),
            })),
        )
            .into_response(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert_eq!(
            authorize(Some("s3cret"), &h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cre"));
        assert!(authorize(Some("s3cret"), &h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(authorize(Some("s3cret"), &h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorize(Some("s3cret"), &h).is_ok());
        assert_eq!(
            authorize(None, &h).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_type_with_control_characters_is_refused() {
        let h = HeaderMap::new();
        assert!(envelope("Ok", &h, Vec::new()).is_ok());
        assert!(envelope("", &h, Vec::new()).is_err());
        assert!(envelope("a\nb", &h, Vec::new()).is_err());
        assert!(envelope(&"x".repeat(MAX_TYPE + 1), &h, Vec::new()).is_err());
    }
}
