//! Test plugin `versioned`: handles `versioned.Tick` and records, in its state
//! under `seq-NNNNNNNNNN`, every version that handled that tick (so a tick
//! handled twice shows two entries). Its version is [`MARKER`]'s payload, a
//! constant in the binary that the hot-reload test patches in place (same
//! length) to make distinct versions of one build.

use jasper_guest::{Context, HandleError};
use serde::{Deserialize, Serialize};

/// What the test looks for in the `.wasm` bytes: [`MARKER_PREFIX`], then a
/// payload of [`MARKER_PAYLOAD_LEN`] bytes it overwrites.
pub const MARKER: &str = "@@jasper-versioned-marker@@v1______________";
/// The part of [`MARKER`] the test finds.
pub const MARKER_PREFIX: &str = "@@jasper-versioned-marker@@";
/// The part of [`MARKER`] the test overwrites.
pub const MARKER_PAYLOAD_LEN: usize = 16;

/// One tick; `seq` names it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tick {
    pub seq: u64,
}

/// The versions that handled one tick, in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Handled {
    pub by: Vec<String>,
}

jasper_guest::message!(Tick = "versioned.Tick");

/// This build's version: [`MARKER`]'s payload, read from the binary's data
/// at run time (`black_box`), so a patched binary reports its patch.
pub fn version() -> String {
    let marker = std::hint::black_box(MARKER);
    marker
        .get(MARKER_PREFIX.len()..)
        .unwrap_or(marker)
        .trim_end_matches('_')
        .to_string()
}

/// The state key of tick `seq`.
pub fn key(seq: u64) -> String {
    format!("seq-{seq:010}")
}

/// Adds this version to the tick's record.
pub fn tick(ctx: &mut Context, msg: Tick) -> Result<(), HandleError> {
    let key = key(msg.seq);
    let mut handled: Handled = ctx.state().get(&key)?.unwrap_or_default();
    handled.by.push(version());
    ctx.state().put(&key, &handled)?;
    Ok(())
}

jasper_guest::handlers!(tick);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::testing::TestContext;

    #[test]
    fn each_handling_adds_the_version_to_the_record() {
        assert_eq!(MARKER.len(), MARKER_PREFIX.len() + MARKER_PAYLOAD_LEN);
        let mut ctx = TestContext::new();
        tick(&mut ctx, Tick { seq: 7 }).unwrap();
        tick(&mut ctx, Tick { seq: 7 }).unwrap();
        let h: Handled = ctx.state().get("seq-0000000007").unwrap().unwrap();
        assert_eq!(h.by, ["v1", "v1"]);
    }
}
