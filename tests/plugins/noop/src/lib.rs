//! Test plugin `noop`: handles `bench.Noop` and does nothing, to measure the host's overhead.

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

jasper_guest::message!(Noop = "bench.Noop");

/// Does nothing.
pub fn noop(_ctx: &mut Context, _msg: Noop) -> Result<(), HandleError> {
    Ok(())
}

jasper_guest::handlers!(noop);
