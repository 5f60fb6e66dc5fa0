//! OpenTelemetry traces, off unless `[telemetry] otlp_endpoint` is set: the
//! `tracing` layer that exports the host's spans over OTLP/HTTP (protobuf),
//! the messaging attributes of its spans, and the W3C trace context
//! (`traceparent`, `tracestate`) carried in envelope headers, so one trace
//! follows a message from the handler that sent it, over `tcp://`,
//! `durable://` or RabbitMQ, into the handler that takes it.
//!
//! While it is off, nothing here costs more than one relaxed load per call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// Whether spans are exported (set once the layer is installed).
static ON: AtomicBool = AtomicBool::new(false);

/// `messaging.system` of every span: this host's own protocol.
pub const SYSTEM: &str = "jasper";

/// Whether traces are exported.
pub(crate) fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint = {endpoint:?}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// The exporter; [`Telemetry::shutdown`] sends what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Export what is buffered and stop.
    pub fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry: flushing the last spans failed: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL of `endpoint`: `/v1/traces` added to a bare
/// collector address.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The `tracing` layer that exports spans.
pub type OtelLayer<S> =
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>;

/// The layer that exports spans as `service` (and the handle that flushes
/// it), when `config` names an endpoint.
pub fn layer<S>(
    config: &TelemetryConfig,
    service: &str,
) -> Result<Option<(OtelLayer<S>, Telemetry)>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Some(endpoint) = config.otlp_endpoint.as_deref() else {
        return Ok(None);
    };
    let err = |message: String| TelemetryError {
        endpoint: endpoint.to_owned(),
        message,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let service = config
        .service_name
        .clone()
        .unwrap_or_else(|| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("jasper-host");
    ON.store(true, Ordering::Relaxed);
    Ok(Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Telemetry { provider },
    )))
}

struct Headers<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct ReadHeaders<'a>(&'a BTreeMap<String, String>);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The messaging attributes of a span about one message.
pub(crate) fn describe(span: &Span, operation: &'static str, destination: &str, id: &str) {
    if !enabled() {
        return;
    }
    span.set_attribute("messaging.system", SYSTEM);
    span.set_attribute("messaging.operation", operation);
    span.set_attribute("messaging.destination.name", destination.to_owned());
    span.set_attribute("messaging.message.id", id.to_owned());
}

/// Make `span` part of the trace in `headers` (a message sent by a traced
/// handler), if they carry one.
pub(crate) fn adopt(span: &Span, headers: &BTreeMap<String, String>) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    if cx.span().span_context().is_valid() {
        // Only fails for a span already started elsewhere: not ours.
        let _ = span.set_parent(cx);
    }
}

/// A message about to be sent from within `parent` (a handler's span): a
/// `publish` span for it, whose context goes into its headers.
pub(crate) fn on_send(
    parent: &Span,
    destination: &str,
    id: &str,
    headers: &mut BTreeMap<String, String>,
) {
    if !enabled() {
        return;
    }
    let span = tracing::info_span!(parent: parent, "send");
    describe(&span, "publish", destination, id);
    TraceContextPropagator::new().inject_context(&span.context(), &mut Headers(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_collector_address_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces/"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn nothing_is_written_while_off() {
        let mut h = BTreeMap::new();
        on_send(&Span::none(), "local://a", "id", &mut h);
        assert!(h.is_empty());
    }
}
