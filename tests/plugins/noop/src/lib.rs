//! Test plugin `noop`: handles `bench.Noop` and does nothing, to measure the
//! host's overhead; `bench.Relay` publishes one `bench.Relayed` (in, handle,
//! out: the transport benchmarks).

use jasper_guest::{Context, HandleError};
use serde::{Deserialize, Deserializer, Serialize};

/// Any JSON body; its content is ignored.
#[derive(Debug, Serialize)]
pub struct Noop {}

impl<'de> Deserialize<'de> for Noop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Noop {})
    }
}

/// Published once per `bench.Relay` handled.
#[derive(Debug, Serialize, Deserialize)]
pub struct Relayed {}

/// Any JSON body; its content is ignored.
#[derive(Debug, Serialize)]
pub struct Relay {}

impl<'de> Deserialize<'de> for Relay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Relay {})
    }
}

jasper_guest::message!(
    Noop = "bench.Noop",
    Relay = "bench.Relay",
    Relayed = "bench.Relayed"
);

/// Does nothing.
pub fn noop(_ctx: &mut Context, _msg: Noop) -> Result<(), HandleError> {
    Ok(())
}

/// Publishes one `bench.Relayed`.
pub fn relay(ctx: &mut Context, _msg: Relay) -> Result<(), HandleError> {
    ctx.publish(&Relayed {})?;
    Ok(())
}

jasper_guest::handlers!(noop, relay);
