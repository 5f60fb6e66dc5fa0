//! Example plugin `webhook`: durable messaging to an external system. Each
//! `OrderPlaced` is POSTed as JSON to the URL a `ConfigureWebhook` message
//! set, with `Idempotency-Key: <message id>` so the receiver can apply a
//! retried delivery once. A 5xx, 429, timeout or refused connection asks
//! for a retry (the host's backoff, then dead letters after
//! `handling.max_attempts`); another 4xx rejects the message at once.
//!
//! The host must allow the target: `[plugins.webhook] allow_http =
//! ["http://127.0.0.1:8080"]`.

use jasper_guest::{Context, HandleError, HttpError};
use serde::{Deserialize, Serialize};

/// Sets the URL orders are POSTed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigureWebhook {
    /// `http(s)://HOST[:PORT]/PATH`.
    pub url: String,
}

/// Published by `orders` once an order is stored (the same body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: String,
    /// The order's total.
    pub amount_cents: u64,
}

jasper_guest::message!(
    ConfigureWebhook = "ConfigureWebhook",
    OrderPlaced = "OrderPlaced"
);

/// Where the webhook URL is kept.
const URL_KEY: &str = "webhook/url";

/// Stores the URL.
pub fn configure_webhook(ctx: &mut Context, msg: ConfigureWebhook) -> Result<(), HandleError> {
    if !(msg.url.starts_with("http://") || msg.url.starts_with("https://")) {
        return Err(HandleError::reject(format!(
            "webhook url {:?} must start with http:// or https://",
            msg.url
        )));
    }
    ctx.state().put(URL_KEY, &msg.url)?;
    Ok(())
}

/// POSTs the order; the message id is the idempotency key.
pub fn order_placed(ctx: &mut Context, order: OrderPlaced) -> Result<(), HandleError> {
    let Some(url) = ctx.state().get::<String>(URL_KEY)? else {
        // Configuration may come later: try again.
        return Err(HandleError::retry(
            "no webhook configured (send ConfigureWebhook)",
        ));
    };
    let key = ctx.envelope().id.clone();
    let res = ctx
        .http()
        .post(&url)
        .header("Idempotency-Key", &key)
        .json(&order)?
        .send()
        .map_err(|e| match e {
            // A refusal by the host is configuration, not a passing fault;
            // the retry policy still applies, then dead letters.
            HttpError::Denied(m) => HandleError::failed(format!("webhook {url}: {m}")),
            other => HandleError::from(other),
        })?;
    match res.status {
        200..=299 => {
            ctx.state()
                .put(&format!("delivered/{}", order.order_id), &res.status)?;
            Ok(())
        }
        429 | 500..=599 => Err(HandleError::retry(format!(
            "webhook {url} answered {} for order {}",
            res.status, order.order_id
        ))),
        status => Err(HandleError::reject(format!(
            "webhook {url} answered {status} for order {}",
            order.order_id
        ))),
    }
}

jasper_guest::handlers!(configure_webhook, order_placed);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::http::Response;
    use jasper_guest::testing::TestContext;

    const URL: &str = "http://hooks.test/orders";

    fn configured() -> TestContext {
        let mut ctx = TestContext::new();
        ctx.deliver(&HANDLERS, &ConfigureWebhook { url: URL.into() })
            .unwrap();
        ctx
    }

    fn order() -> OrderPlaced {
        OrderPlaced {
            order_id: "o-1".into(),
            amount_cents: 250,
        }
    }

    #[test]
    fn posts_the_order_with_the_message_id_as_idempotency_key() {
        let mut ctx = configured();
        ctx.stub_http(URL, Response::new(201));
        ctx.envelope_mut().id = "m-42".into();
        ctx.deliver(&HANDLERS, &order()).unwrap();
        let reqs = ctx.http_requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].url, URL);
        assert_eq!(reqs[0].header("Idempotency-Key"), Some("m-42"));
        let body: OrderPlaced = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(body, order());
        assert_eq!(ctx.state().get::<u16>("delivered/o-1").unwrap(), Some(201));
    }

    #[test]
    fn server_errors_timeouts_and_refused_connections_ask_for_a_retry() {
        let mut ctx = configured();
        ctx.stub_http(URL, Response::new(503));
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Retry(_))
        ));
        ctx.stub_http_error(URL, HttpError::Timeout("slow".into()));
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Retry(_))
        ));
        ctx.stub_http_error(URL, HttpError::Connect("refused".into()));
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Retry(_))
        ));
        ctx.stub_http(URL, Response::new(400));
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Reject(_))
        ));
        ctx.stub_http_error(URL, HttpError::Denied("not listed".into()));
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Failed(_))
        ));
        assert_eq!(ctx.state().get::<u16>("delivered/o-1").unwrap(), None);
    }

    #[test]
    fn unconfigured_retries_and_a_bad_url_is_rejected() {
        let mut ctx = TestContext::new();
        assert!(matches!(
            ctx.deliver(&HANDLERS, &order()),
            Err(HandleError::Retry(_))
        ));
        assert!(ctx.http_requests().is_empty());
        let err = ctx
            .deliver(
                &HANDLERS,
                &ConfigureWebhook {
                    url: "ftp://x".into(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, HandleError::Reject(_)));
    }
}
