//! The store data of one handler call and the host imports the plugin calls:
//! `outbox` (recorded as effects, nothing leaves before commit), `state`
//! (through the batch's [`StateView`]) and `log` (into `tracing`). Values from
//! the guest are checked against fixed caps per item (one key, one value, one
//! body) and against the call's totals ([`Usage`], see `bounds.rs`) before
//! the host keeps them. A publish nobody takes is kept with no destination
//! (`handling` warns about it and drops or dead-letters it). A call past a total traps at once: the instance is
//! discarded and nothing it wrote or sent is kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::jasper::messaging::{log, outbox, state, types};
use super::bindings::{ScheduleTime, SendError, SendOptions};
use super::bounds::{Bounds, Exceeded, Usage};
use super::http::{HttpPolicy, PolicyHooks};
use super::limits::Limiter;
use super::routing::{Egress, RouteError, Router};
use super::state_view::StateView;
use crate::address::{Destination, Endpoint};
use crate::envelope::{Envelope, now_ms};
use crate::handling::replies;

/// Largest body a handler may send (one message; the total per call is
/// `plugins.max_send_bytes`).
pub(crate) const MAX_SEND_BODY: usize = 16 << 20;
/// Longest state key.
pub(crate) const MAX_STATE_KEY: usize = 1024;
/// Largest state value.
pub(crate) const MAX_STATE_VALUE: usize = 4 << 20;
/// Guest stderr kept per call (panic messages).
pub(crate) const STDERR_CAPACITY: usize = 16 << 10;

/// What the current message is, for the envelopes it causes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub id: Option<String>,
    pub correlation_id: Option<String>,
    pub conversation_id: Option<String>,
    /// Where `outbox.reply` sends (the message's `reply_uri`).
    pub reply_uri: Option<String>,
}

/// Data of one wasmtime `Store`: one handler call.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    /// Every `wasi:http` request goes through the plugin's [`HttpPolicy`].
    http_hooks: PolicyHooks,
    pub(crate) limiter: Limiter,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) plugin: Arc<str>,
    pub(crate) origin: Origin,
    pub(crate) router: Arc<Router>,
    /// The remote destinations the plugin may send to besides the routes.
    egress: Arc<Egress>,
    pub(crate) state: StateView,
    /// Envelopes the handler sent, published or scheduled (destination set).
    pub(crate) sent: Vec<Envelope>,
    /// A fault of the host (not the plugin) during the call, e.g. the database.
    pub(crate) host_fault: Option<String>,
    /// What the call holds so far, against the per-message bounds.
    usage: Usage,
    /// The bound the call went past (it trapped there).
    pub(crate) limit_hit: Option<Exceeded>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin)
            .field("sent", &self.sent.len())
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        origin: Origin,
        router: Arc<Router>,
        egress: Arc<Egress>,
        state: StateView,
        max_memory: usize,
        bounds: Bounds,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopens, no sockets, no env: a handler reaches the world only
        // through the jasper imports.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_hooks: PolicyHooks {
                plugin: plugin.clone(),
                policy: Arc::new(HttpPolicy::deny_all()),
            },
            limiter: Limiter::new(max_memory),
            stderr,
            plugin,
            origin,
            router,
            egress,
            state,
            sent: Vec::new(),
            host_fault: None,
            usage: Usage::new(bounds),
            limit_hit: None,
        }
    }

    /// Outbound HTTP under `policy` (the default refuses every request).
    pub(crate) fn with_http(mut self, policy: Arc<HttpPolicy>) -> Self {
        self.http_hooks.policy = policy;
        self
    }

    /// The trap that ends a call past a bound; remembered so the call is
    /// reported as `limit`, not as the trap the guest sees.
    fn past_bound(&mut self, e: Exceeded) -> wasmtime::Error {
        let err = wasmtime::Error::msg(e.to_string());
        self.limit_hit = Some(e);
        err
    }

    /// Count a write of `key` (a put of `value_len` bytes, or a delete)
    /// against the state bounds, in place of this call's earlier write of it.
    fn count_state_write(&mut self, key: &str, value_len: usize) -> wasmtime::Result<()> {
        let held = self.state.held(key);
        self.usage
            .state_write(held, key.len(), value_len)
            .map_err(|e| self.past_bound(e))
    }

    /// An envelope the current message causes; `destination` is `None` for a
    /// publish nobody takes.
    fn new_envelope(
        &self,
        destination: Option<Destination>,
        message_type: &str,
        body: Vec<u8>,
        options: &SendOptions,
        scheduled_at: Option<i64>,
    ) -> Envelope {
        let mut env = Envelope::new(message_type, body);
        if let Some(ct) = &options.content_type {
            env.content_type = ct.clone();
        }
        env.destination = destination;
        env.source = Some(Endpoint::local(&*self.plugin).to_string());
        env.causation_id = self.origin.id.clone();
        env.correlation_id = options
            .correlation_id
            .clone()
            .or_else(|| self.origin.correlation_id.clone())
            .or_else(|| self.origin.id.clone());
        env.conversation_id = self
            .origin
            .conversation_id
            .clone()
            .or_else(|| self.origin.id.clone());
        env.headers = options.headers.iter().cloned().collect::<BTreeMap<_, _>>();
        if crate::telemetry::enabled() {
            // The handler's span is the current one: the message joins its trace.
            let to = env.destination.as_ref().map(|d| d.uri()).unwrap_or("");
            let id = env.id.to_string();
            crate::telemetry::on_send(&tracing::Span::current(), to, &id, &mut env.headers);
        }
        env.deliver_by = options.deliver_by;
        env.scheduled_at = scheduled_at;
        env
    }

    fn check_send(message_type: &str, body: &[u8]) -> Result<(), SendError> {
        if message_type.is_empty() || message_type.len() > 256 {
            return Err(SendError::Invalid(
                "message type must be 1 to 256 bytes".into(),
            ));
        }
        if body.len() > MAX_SEND_BODY {
            return Err(SendError::Invalid(format!(
                "body of {} bytes exceeds the limit of {MAX_SEND_BODY}",
                body.len()
            )));
        }
        Ok(())
    }

    fn publish_at(
        &mut self,
        message_type: String,
        body: Vec<u8>,
        options: SendOptions,
        scheduled_at: Option<i64>,
    ) -> wasmtime::Result<Result<Vec<String>, SendError>> {
        if let Err(e) = Self::check_send(&message_type, &body) {
            return Ok(Err(e));
        }
        let destinations = self.router.publish_destinations(&message_type);
        if destinations.is_empty() {
            // Nobody takes it: kept with no destination (and counted as one
            // copy, since the host holds it until the commit), so `handling`
            // can warn, count and drop or dead-letter it as
            // `handling.unrouted` says. The guest gets no id: nothing was sent.
            if let Err(e) = self.usage.send(1, body.len()) {
                return Err(self.past_bound(e));
            }
            let env = self.new_envelope(None, &message_type, body, &options, scheduled_at);
            self.sent.push(env);
            return Ok(Ok(Vec::new()));
        }
        if let Err(e) = self.usage.send(destinations.len(), body.len()) {
            return Err(self.past_bound(e));
        }
        let mut ids = Vec::with_capacity(destinations.len());
        for dest in destinations {
            let env = self.new_envelope(
                Some(dest.into()),
                &message_type,
                body.clone(),
                &options,
                scheduled_at,
            );
            ids.push(env.id.to_string());
            self.sent.push(env);
        }
        Ok(Ok(ids))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl types::Host for HostState {}

impl outbox::Host for HostState {
    fn send(
        &mut self,
        destination: String,
        message_type: String,
        body: Vec<u8>,
        options: SendOptions,
    ) -> wasmtime::Result<Result<String, SendError>> {
        if let Err(e) = Self::check_send(&message_type, &body) {
            return Ok(Err(e));
        }
        let destination = Destination::parse(destination);
        if let Err(e) =
            self.router
                .check_send(&destination, &message_type, &self.plugin, &self.egress)
        {
            if matches!(e, RouteError::NotAllowed { .. }) {
                tracing::warn!(plugin = %self.plugin, destination = %destination.uri(), event = "send-refused", "a handler's send to a destination it may not reach was refused");
            }
            return Ok(Err(SendError::UnknownDestination(e.to_string())));
        }
        if let Err(e) = self.usage.send(1, body.len()) {
            return Err(self.past_bound(e));
        }
        let env = self.new_envelope(Some(destination), &message_type, body, &options, None);
        let id = env.id.to_string();
        self.sent.push(env);
        Ok(Ok(id))
    }

    fn publish(
        &mut self,
        message_type: String,
        body: Vec<u8>,
        options: SendOptions,
    ) -> wasmtime::Result<Result<Vec<String>, SendError>> {
        self.publish_at(message_type, body, options, None)
    }

    fn reply(
        &mut self,
        message_type: String,
        body: Vec<u8>,
        options: SendOptions,
    ) -> wasmtime::Result<Result<String, SendError>> {
        let Some(to) = self.origin.reply_uri.clone() else {
            return Ok(Err(SendError::Invalid(format!(
                "message {} asks for no reply (it has no reply-uri)",
                self.origin.id.as_deref().unwrap_or("?")
            ))));
        };
        if !replies::is_invoke(&to) {
            // A reply address from the message is checked like any send.
            return outbox::Host::send(self, to, message_type, body, options);
        }
        if let Err(e) = Self::check_send(&message_type, &body) {
            return Ok(Err(e));
        }
        if let Err(e) = self.usage.send(1, body.len()) {
            return Err(self.past_bound(e));
        }
        // An HTTP caller waits for it: the worker hands it over after the
        // commit (`handling::replies`).
        let env = self.new_envelope(
            Some(Destination::parse(to)),
            &message_type,
            body,
            &options,
            None,
        );
        let id = env.id.to_string();
        self.sent.push(env);
        Ok(Ok(id))
    }

    fn schedule(
        &mut self,
        message_type: String,
        body: Vec<u8>,
        when: ScheduleTime,
        options: SendOptions,
    ) -> wasmtime::Result<Result<Vec<String>, SendError>> {
        let at = match when {
            ScheduleTime::At(t) => t,
            ScheduleTime::DelayMs(d) => {
                now_ms().saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
            }
        };
        self.publish_at(message_type, body, options, Some(at))
    }
}

impl state::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        match self.state.get(&key).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let msg = format!("state read of {}/{key} failed: {e}", self.plugin);
                self.host_fault = Some(msg.clone());
                Err(wasmtime::Error::msg(msg))
            }
        }
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            return Err(wasmtime::Error::msg(format!(
                "state put rejected: key of {} bytes (max {MAX_STATE_KEY}) or value of {} bytes (max {MAX_STATE_VALUE})",
                key.len(),
                value.len()
            )));
        }
        self.count_state_write(&key, value.len())?;
        self.state.put(key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_KEY {
            return Err(wasmtime::Error::msg(format!(
                "state delete rejected: key of {} bytes (max {MAX_STATE_KEY})",
                key.len()
            )));
        }
        self.count_state_write(&key, 0)?;
        self.state.delete(key);
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        let message: &str = if message.len() > 8192 {
            message
                .get(..8192)
                .unwrap_or("(log line not UTF-8 at the cut)")
        } else {
            &message
        };
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::runtime::bounds::Bound;
    use outbox::Host as _;
    use state::Host as _;

    fn host_state(router: Router, bounds: Bounds) -> HostState {
        let plugin: Arc<str> = Arc::from("p");
        HostState::new(
            plugin.clone(),
            Origin::default(),
            Arc::new(router),
            Arc::new(Egress::any()),
            StateView::detached(plugin),
            1 << 20,
            bounds,
        )
    }

    fn options() -> SendOptions {
        SendOptions {
            correlation_id: None,
            content_type: None,
            headers: Vec::new(),
            deliver_by: None,
        }
    }

    #[test]
    fn every_published_copy_counts_against_the_send_bounds() {
        let mut router = Router::default();
        router.add("a", &["T".into()]);
        router.add("b", &["T".into()]);
        let bounds = Bounds {
            max_sends: 3,
            max_send_bytes: 100,
            ..Bounds::default()
        };
        let mut hs = host_state(router.clone(), bounds);
        let ids = hs.publish("T".into(), vec![0; 10], options()).unwrap();
        assert_eq!(ids.unwrap().len(), 2);
        // Two more copies make 4 > 3: a trap, not an error the guest could ignore.
        let trap = hs
            .schedule("T".into(), vec![0; 10], ScheduleTime::DelayMs(5), options())
            .unwrap_err();
        assert!(trap.to_string().contains("plugins.max_sends = 3"), "{trap}");
        let hit = hs.limit_hit.clone().unwrap();
        assert_eq!((hit.bound, hit.actual), (Bound::Sends, 4));
        assert_eq!(hs.sent.len(), 2, "the copies past the bound are not kept");

        // 2 copies of 60 bytes: 120 > 100.
        let mut hs = host_state(router, bounds);
        hs.publish("T".into(), vec![0; 60], options()).unwrap_err();
        let hit = hs.limit_hit.clone().unwrap();
        assert_eq!((hit.bound, hit.actual), (Bound::SendBytes, 120));
        assert!(hs.sent.is_empty());
    }

    #[test]
    fn a_publish_or_schedule_nobody_takes_is_held_once_with_no_destination() {
        let mut router = Router::default();
        router.add("a", &["T".into()]);
        let bounds = Bounds {
            max_sends: 2,
            ..Bounds::default()
        };
        let mut hs = host_state(router, bounds);
        let ids = hs.publish("Nobody".into(), vec![1], options()).unwrap();
        assert_eq!(ids.unwrap(), Vec::<String>::new(), "nothing was sent");
        let ids = hs
            .schedule("Later".into(), vec![2], ScheduleTime::At(5), options())
            .unwrap();
        assert_eq!(ids.unwrap(), Vec::<String>::new());
        let held: Vec<_> = hs
            .sent
            .iter()
            .map(|e| {
                (
                    e.message_type.as_str(),
                    e.destination.is_none(),
                    e.scheduled_at,
                )
            })
            .collect();
        assert_eq!(held, [("Nobody", true, None), ("Later", true, Some(5))]);
        assert_eq!(hs.sent[0].source.as_deref(), Some("local://p"));
        // Each is one copy the host holds until the commit.
        let trap = hs.publish("Nobody".into(), vec![3], options()).unwrap_err();
        assert!(trap.to_string().contains("plugins.max_sends = 2"), "{trap}");
    }

    #[test]
    fn per_item_errors_are_not_counted_and_deletes_count_as_writes() {
        let bounds = Bounds {
            max_sends: 1,
            max_state_keys: 2,
            ..Bounds::default()
        };
        let mut hs = host_state(Router::default(), bounds);
        // Unknown local queue: an error for the guest, nothing held.
        let err = hs
            .send("local://nope".into(), "T".into(), vec![1], options())
            .unwrap();
        assert!(matches!(err, Err(SendError::UnknownDestination(_))));
        hs.send("durable://h:1/q".into(), "T".into(), vec![1], options())
            .unwrap()
            .unwrap();
        assert!(hs.limit_hit.is_none());

        hs.put("a".into(), vec![1]).unwrap();
        hs.put("a".into(), vec![2]).unwrap();
        hs.delete("b".into()).unwrap();
        let trap = hs.delete("c".into()).unwrap_err();
        assert_eq!(
            trap.to_string(),
            "state writes exceeded plugins.max_state_keys = 2 (wrote 3 keys)"
        );
    }
}
