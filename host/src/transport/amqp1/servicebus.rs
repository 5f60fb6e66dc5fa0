//! Azure Service Bus on an AMQP 1.0 connection: shared access signature
//! tokens made from the configured key and put through the `$cbs` node
//! (and put again before they expire), lock renewal through an entity's
//! `$management` node, lock tokens read off deliveries, and the
//! dead-letter outcome Service Bus understands.

use std::time::Duration;

use base64::Engine as _;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Symbol, Timestamp, Value};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::client::MgmtClient;
use fe2o3_amqp_management::request::Request;
use fe2o3_amqp_management::response::Response;
use uuid::Uuid;

use crate::transport::LinkError;

/// The token type Service Bus takes for a shared access signature.
const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// The error condition of a rejected delivery that Service Bus moves to
/// the entity's dead-letter queue.
const DEAD_LETTER: &str = "com.microsoft:dead-letter";
/// Part of a token's lifetime after which it is put again.
const REFRESH_AT: f64 = 0.8;

/// The shared access key and how long each token made from it lasts.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// `NAME.servicebus.windows.net`.
    pub namespace: String,
    pub key_name: String,
    pub key: String,
    pub token_ttl: Duration,
}

/// A shared access signature for `resource` (a URI such as
/// `sb://ns.servicebus.windows.net/orders`) valid until `expiry` (Unix
/// seconds): `HMAC-SHA256(key, urlencode(resource) + "\n" + expiry)`, as
/// Azure's SDKs make it.
pub(crate) fn sas_token(resource: &str, key_name: &str, key: &str, expiry: u64) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let resource = encode(resource);
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let signed = ring::hmac::sign(&hmac, format!("{resource}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(signed.as_ref());
    format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={}",
        encode(&sig),
        encode(key_name)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `$cbs` client of one connection, and when its token is due again.
pub(crate) struct Authorizer {
    cbs: CbsClient,
    credentials: Credentials,
    audience: String,
    refresh_at: tokio::time::Instant,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Attach the `$cbs` links on `session` and put a token for `entity`.
    pub(crate) async fn attach(
        session: &mut SessionHandle<()>,
        credentials: &Credentials,
        entity: &str,
        link_name: &str,
    ) -> Result<Authorizer, LinkError> {
        let cbs = CbsClient::builder()
            .client_node_addr(format!("{link_name}-cbs"))
            .attach(session)
            .await
            .map_err(|e| LinkError(format!("attaching to $cbs: {e}")))?;
        let mut auth = Authorizer {
            cbs,
            credentials: credentials.clone(),
            audience: format!("sb://{}/{entity}", credentials.namespace),
            refresh_at: tokio::time::Instant::now(),
        };
        auth.put().await?;
        Ok(auth)
    }

    /// When the token should be put again.
    pub(crate) fn refresh_at(&self) -> tokio::time::Instant {
        self.refresh_at
    }

    /// Put a new token for the audience.
    pub(crate) async fn put(&mut self) -> Result<(), LinkError> {
        let ttl = self.credentials.token_ttl;
        let expiry = unix_now() + ttl.as_secs();
        let token = sas_token(
            &self.audience,
            &self.credentials.key_name,
            &self.credentials.key,
            expiry,
        );
        let expires =
            Timestamp::from_milliseconds(i64::try_from(expiry * 1000).unwrap_or(i64::MAX));
        self.cbs
            .put_token(
                self.audience.as_str(),
                CbsToken::new(token, SAS_TOKEN_TYPE, expires),
            )
            .await
            .map_err(|e| {
                LinkError(format!(
                    "Service Bus refused the token for {} (key {:?}): {e}",
                    self.audience, self.credentials.key_name
                ))
            })?;
        self.refresh_at = tokio::time::Instant::now() + ttl.mul_f64(REFRESH_AT);
        tracing::debug!(audience = %self.audience, ttl_s = ttl.as_secs(), "put a Service Bus token");
        Ok(())
    }

    /// Put a new token whenever one is due, in the background, for as long
    /// as the returned guard lives (a link idle past its token's life must
    /// still have one). A refused or failed put is logged; the broker then
    /// detaches the links, and the link's next use fails and reconnects.
    pub(crate) fn keep(mut self) -> KeepToken {
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep_until(self.refresh_at()).await;
                if let Err(e) = self.put().await {
                    tracing::warn!(audience = %self.audience, error = %e, "putting a new Service Bus token failed");
                    return;
                }
            }
        });
        KeepToken(task)
    }
}

/// Keeps a connection's token fresh until dropped ([`Authorizer::keep`]).
#[derive(Debug)]
pub(crate) struct KeepToken(tokio::task::JoinHandle<()>);

impl Drop for KeepToken {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lock token of a delivery: the `x-opt-lock-token` annotation when
/// the broker sends one, else the delivery tag read as a .NET GUID (how
/// Service Bus makes its tags).
pub(crate) fn lock_token(message: &Message<Body<Value>>, tag: &[u8]) -> Option<Uuid> {
    let annotated = message.message_annotations.as_ref().and_then(|a| {
        match a
            .0
            .get(&OwnedKey::Symbol(Symbol::from("x-opt-lock-token")))?
        {
            Value::Uuid(u) => Some(Uuid::from_bytes(u.clone().into_inner())),
            _ => None,
        }
    });
    annotated.or_else(|| Some(Uuid::from_bytes_le(tag.try_into().ok()?)))
}

/// When a delivery's lock ends (`x-opt-locked-until`, ms since the epoch).
pub(crate) fn locked_until(message: &Message<Body<Value>>) -> Option<i64> {
    let a = message.message_annotations.as_ref()?;
    match a
        .0
        .get(&OwnedKey::Symbol(Symbol::from("x-opt-locked-until")))?
    {
        Value::Timestamp(t) => Some(t.milliseconds()),
        Value::Long(n) => Some(*n),
        _ => None,
    }
}

/// The rejection Service Bus turns into a move to the dead-letter queue,
/// with the reason and description an operator reads there.
pub(crate) fn dead_letter_error(reason: &str, description: &str) -> definitions::Error {
    let mut info = Fields::default();
    info.insert(
        Symbol::from("DeadLetterReason"),
        Value::String(reason.to_string()),
    );
    // Service Bus caps the description at 4096 characters.
    let description: String = description.chars().take(4096).collect();
    info.insert(
        Symbol::from("DeadLetterErrorDescription"),
        Value::String(description),
    );
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(DEAD_LETTER)),
        None,
        Some(info),
    )
}

/// `com.microsoft:renew-lock` for some lock tokens.
struct RenewLock(Vec<Uuid>);

struct Renewed;

impl Request for RenewLock {
    const OPERATION: &'static str = "com.microsoft:renew-lock";
    type Response = Renewed;
    type Body = Value;

    fn encode_body(self) -> Value {
        let tokens = self
            .0
            .into_iter()
            .map(|u| Value::Uuid(u.into_bytes().into()))
            .collect::<Vec<_>>();
        let mut map = OrderedMap::new();
        map.insert(
            Value::String("lock-tokens".into()),
            Value::Array(Array::from(tokens)),
        );
        Value::Map(map)
    }
}

impl Response for Renewed {
    const STATUS_CODE: u16 = 200;
    type Body = Value;
    type Error = fe2o3_amqp_management::error::Error;

    fn decode_message(_message: Message<Value>) -> Result<Self, Self::Error> {
        Ok(Renewed)
    }
}

/// The `$management` links of one receiving entity, for lock renewal.
pub(crate) struct LockRenewer {
    mgmt: MgmtClient,
}

impl LockRenewer {
    pub(crate) async fn attach(
        session: &mut SessionHandle<()>,
        entity: &str,
        link_name: &str,
    ) -> Result<LockRenewer, LinkError> {
        let mgmt = MgmtClient::builder()
            .management_node_address(format!("{entity}/$management"))
            .client_node_addr(format!("{link_name}-mgmt"))
            .attach(session)
            .await
            .map_err(|e| LinkError(format!("attaching to {entity}/$management: {e}")))?;
        Ok(LockRenewer { mgmt })
    }

    /// Renew the locks of `tokens`.
    pub(crate) async fn renew(&mut self, tokens: &[Uuid]) -> Result<(), LinkError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let _: Renewed = self
            .mgmt
            .call(RenewLock(tokens.to_vec()))
            .await
            .map_err(|e| LinkError(format!("renewing {} locks: {e}", tokens.len())))?;
        Ok(())
    }
}

/// How long to wait before renewing locks that end at `until` (ms since
/// the epoch): half the time left, at least 100 ms.
pub(crate) fn renew_after(until: i64, now: i64) -> Duration {
    let left = until.saturating_sub(now).max(0);
    Duration::from_millis(u64::try_from(left / 2).unwrap_or(0).max(100))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_token_is_signed_as_azure_signs_it() {
        // The signature of Azure's documented algorithm, computed with
        // Python's hmac/hashlib/urllib.parse.quote_plus for these inputs.
        let t = sas_token(
            "sb://jasper.servicebus.windows.net/orders",
            "RootManageSharedAccessKey",
            "secret",
            1_700_000_000,
        );
        assert!(
            t.starts_with(
                "SharedAccessSignature sr=sb%3A%2F%2Fjasper.servicebus.windows.net%2Forders&sig="
            ),
            "{t}"
        );
        assert!(
            t.ends_with("&se=1700000000&skn=RootManageSharedAccessKey"),
            "{t}"
        );
        let sig = t.split("&sig=").nth(1).unwrap().split('&').next().unwrap();
        assert_eq!(sig, SIG_OF_EXAMPLE);
    }

    const SIG_OF_EXAMPLE: &str = "90fr5rWZnN1ClyVDwUqqWKbYinusAfsX%2BhS%2Fh4eY58k%3D";

    #[test]
    fn a_lock_token_is_the_tag_read_as_a_dotnet_guid() {
        let tag: Vec<u8> = (1..=16).collect();
        let m: Message<Body<Value>> = Message::builder().body(Body::Empty).build();
        assert_eq!(
            lock_token(&m, &tag).unwrap().to_string(),
            "04030201-0605-0807-090a-0b0c0d0e0f10"
        );
    }

    #[test]
    fn locks_are_renewed_halfway() {
        assert_eq!(renew_after(10_000, 0), Duration::from_millis(5000));
        assert_eq!(renew_after(0, 10_000), Duration::from_millis(100));
    }
}
