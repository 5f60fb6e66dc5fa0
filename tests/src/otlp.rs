//! [`OtlpReceiver`]: an OTLP/HTTP traces receiver for the suites: a real
//! HTTP server ([`HttpServer`]) that answers every export with 200, and
//! decodes what it got (`ExportTraceServiceRequest` protobuf, as
//! `opentelemetry-proto` defines it) into flat [`SpanSeen`]s.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;

use crate::http_server::{HttpServer, Reply};

/// One exported span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSeen {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// Hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// String forms of the span's attributes.
    pub attributes: BTreeMap<String, String>,
}

impl SpanSeen {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// See the module docs; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    server: HttpServer,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

impl OtlpReceiver {
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let server = HttpServer::start(|_| Reply::Status(200, Vec::new())).await?;
        Ok(OtlpReceiver { server })
    }

    /// What a host's `[telemetry] otlp_endpoint` names.
    pub fn endpoint(&self) -> String {
        self.server.url("")
    }

    /// Every span received so far, in order; an export that does not
    /// decode is an error naming it.
    pub fn spans(&self) -> anyhow::Result<Vec<SpanSeen>> {
        let mut out = Vec::new();
        for r in self.server.requests() {
            anyhow::ensure!(
                r.path == "/v1/traces",
                "an export to {} (want /v1/traces)",
                r.path
            );
            let req = ExportTraceServiceRequest::decode(r.body.as_slice())
                .map_err(|e| anyhow::anyhow!("an export is no ExportTraceServiceRequest: {e}"))?;
            for rs in req.resource_spans {
                let resource = rs.resource.map(|r| map(&r.attributes)).unwrap_or_default();
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(SpanSeen {
                            service: service.clone(),
                            name: s.name,
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent_span_id: hex(&s.parent_span_id),
                            attributes: map(&s.attributes),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
