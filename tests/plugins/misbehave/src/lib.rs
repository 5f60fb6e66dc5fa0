//! Test plugin `misbehave`: handlers that panic, spin, eat memory, reject,
//! fail a few times, take their time, or write and send as much as they
//! are told, so the host's limits, per-message bounds, error policy and
//! leases can be tested.

// Panicking is this plugin's job.
#![allow(clippy::panic)]

use std::hint::black_box;

use jasper_guest::{Context, HandleError};
use serde::{Deserialize, Serialize};

/// Body of `test.Ok`, `test.Panic`, `test.Spin`, `test.MemBomb`, `test.Reject`.
macro_rules! numbered {
    ($($name:ident = $ty:literal),+ $(,)?) => {$(
        #[doc = concat!("Body of `", $ty, "`: `{\"n\":1}`.")]
        #[derive(Debug, Serialize, Deserialize)]
        pub struct $name {
            /// The test's tag for this message.
            pub n: u64,
        }
        jasper_guest::message!($name = $ty);
    )+};
}

numbered!(
    TestOk = "test.Ok",
    TestPanic = "test.Panic",
    TestSpin = "test.Spin",
    TestMemBomb = "test.MemBomb",
    TestReject = "test.Reject",
    TestLeak = "test.Leak",
);

/// Body of `test.Flaky`: fails while the envelope's attempts are below `fail_times`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestFlaky {
    /// The test's tag for this message.
    pub n: u64,
    /// How many attempts fail before one succeeds.
    pub fail_times: u32,
}

jasper_guest::message!(TestFlaky = "test.Flaky");

/// Body of `test.Forward`: send `test.Ok {n}` (or `test.Flaky`) to `to`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestForward {
    /// Tag passed on.
    pub n: u64,
    /// The explicit destination URI.
    pub to: String,
    /// Send `test.Flaky` failing this many attempts instead of `test.Ok`.
    #[serde(default)]
    pub flaky: u32,
}

jasper_guest::message!(TestForward = "test.Forward");

/// Body of `test.Flood`: put `keys` state keys `flood/{n}/{i}`, each a value
/// of `bytes` bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestFlood {
    /// The test's tag for this message.
    pub n: u64,
    /// How many distinct keys to write.
    pub keys: u32,
    /// Size of each value.
    pub bytes: u32,
}

jasper_guest::message!(TestFlood = "test.Flood");

/// Body of `test.Sink`: send `sends` messages `test.Blob` with `bytes` bytes of
/// padding each, to `to`, or published (to every subscriber) without it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestSink {
    /// The test's tag for this message.
    pub n: u64,
    /// How many messages to send (or publish).
    pub sends: u32,
    /// Padding in each message's body.
    pub bytes: u32,
    /// The explicit destination; publish when absent.
    #[serde(default)]
    pub to: Option<String>,
}

jasper_guest::message!(TestSink = "test.Sink");

/// What `test.Sink` sends: handled by doing nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestBlob {
    /// The sink's tag.
    pub n: u64,
    /// Which of the sink's messages this is.
    pub i: u32,
    /// Padding.
    pub pad: String,
}

jasper_guest::message!(TestBlob = "test.Blob");

/// Body of `test.Slow`: sleep `ms` (a WASI clock wait, no CPU burnt), then
/// count the message in `slow/{n}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestSlow {
    /// The test's tag for this message.
    pub n: u64,
    /// How long the handler takes.
    pub ms: u64,
}

jasper_guest::message!(TestSlow = "test.Slow");

/// Puts `ok/{n}` = true.
pub fn ok(ctx: &mut Context, msg: TestOk) -> Result<(), HandleError> {
    ctx.state().put(&format!("ok/{}", msg.n), &true)?;
    Ok(())
}

/// Panics (a trap on the host side).
pub fn panic(_ctx: &mut Context, msg: TestPanic) -> Result<(), HandleError> {
    panic!("test.Panic {}", msg.n)
}

/// Loops forever; only the host's deadline stops it.
pub fn spin(_ctx: &mut Context, msg: TestSpin) -> Result<(), HandleError> {
    let mut i = msg.n;
    loop {
        // black_box keeps the optimiser from proving the loop useless.
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks, writes them and keeps them, until the memory cap traps it.
pub fn mem_bomb(_ctx: &mut Context, msg: TestMemBomb) -> Result<(), HandleError> {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        // vec![x; n] with x != 0 writes every byte, so the pages are really used.
        kept.push(black_box(vec![msg.n as u8 | 1; 1 << 20]));
        black_box(&kept);
    }
}

/// Rejects with `rejected {n}`.
pub fn reject(_ctx: &mut Context, msg: TestReject) -> Result<(), HandleError> {
    Err(HandleError::reject(format!("rejected {}", msg.n)))
}

/// Fails while attempts < fail_times, then puts `flaky/{n}` = attempts.
pub fn flaky(ctx: &mut Context, msg: TestFlaky) -> Result<(), HandleError> {
    let attempts = ctx.envelope().attempts;
    if attempts < msg.fail_times {
        return Err(HandleError::failed(format!(
            "flaky {}: attempt {attempts} of {} failing",
            msg.n, msg.fail_times
        )));
    }
    ctx.state().put(&format!("flaky/{}", msg.n), &attempts)?;
    Ok(())
}

/// Sends to the explicit destination the message names.
pub fn forward(ctx: &mut Context, msg: TestForward) -> Result<(), HandleError> {
    if msg.flaky > 0 {
        ctx.send(
            &msg.to,
            &TestFlaky {
                n: msg.n,
                fail_times: msg.flaky,
            },
        )?;
    } else {
        ctx.send(&msg.to, &TestOk { n: msg.n })?;
    }
    Ok(())
}

/// Writes `keys` keys of `bytes` bytes each.
pub fn flood(ctx: &mut Context, msg: TestFlood) -> Result<(), HandleError> {
    let value = vec![b'f'; msg.bytes as usize];
    for i in 0..msg.keys {
        ctx.state()
            .put_bytes(&format!("flood/{}/{i}", msg.n), &value);
    }
    Ok(())
}

/// Sends (or publishes) `sends` blobs of `bytes` bytes of padding.
pub fn sink(ctx: &mut Context, msg: TestSink) -> Result<(), HandleError> {
    let pad = "s".repeat(msg.bytes as usize);
    for i in 0..msg.sends {
        let blob = TestBlob {
            n: msg.n,
            i,
            pad: pad.clone(),
        };
        match &msg.to {
            Some(to) => {
                ctx.send(to, &blob)?;
            }
            None => {
                ctx.publish(&blob)?;
            }
        }
    }
    Ok(())
}

/// Does nothing.
pub fn blob(_ctx: &mut Context, _msg: TestBlob) -> Result<(), HandleError> {
    Ok(())
}

/// Sleeps `ms`, then adds one to `slow/{n}`: a message handled twice shows
/// as 2 (and a state version above 1).
pub fn slow(ctx: &mut Context, msg: TestSlow) -> Result<(), HandleError> {
    // Tests wait for this line: the host is running the batch, not claiming it.
    ctx.info(&format!("test.Slow {} started", msg.n));
    std::thread::sleep(std::time::Duration::from_millis(msg.ms));
    let key = format!("slow/{}", msg.n);
    let seen = ctx.state().get::<u64>(&key)?.unwrap_or(0) + 1;
    ctx.state().put(&key, &seen)?;
    Ok(())
}

/// Calls of `test.Leak` this instance has seen (a static in linear memory).
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// What `test.Leak` writes over its heap before it returns.
const MARK: u8 = 0xA5;
/// Heap `test.Leak` checks and marks: past the pages the pool keeps resident.
const LEAK_HEAP: usize = 2 << 20;

/// Fails if anything of an earlier message's instance is visible: a static
/// counter not at zero, or a zeroed allocation holding the mark an earlier
/// call left (a fresh memory hands out zeroed pages without writing them,
/// so stale pages would show). Then leaves both behind for the next call.
pub fn leak(_ctx: &mut Context, msg: TestLeak) -> Result<(), HandleError> {
    let before = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if before != 0 {
        return Err(HandleError::Reject(format!(
            "test.Leak {}: the static counter reads {before}, not 0",
            msg.n
        )));
    }
    let mut heap = black_box(vec![0u8; LEAK_HEAP]);
    if let Some(at) = heap.iter().position(|b| *b != 0) {
        return Err(HandleError::Reject(format!(
            "test.Leak {}: a fresh allocation holds {:#x} at byte {at}",
            msg.n, heap[at]
        )));
    }
    heap.fill(MARK);
    black_box(&heap);
    Ok(())
}

jasper_guest::handlers!(
    ok, panic, spin, mem_bomb, reject, flaky, forward, flood, sink, blob, slow, leak
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::testing::TestContext;

    #[test]
    fn leak_sees_what_an_earlier_call_in_the_same_instance_left() {
        // Natively every call shares one process, as calls on one reused
        // instance would: the second call must see the first's counter.
        let mut ctx = TestContext::new();
        ctx.deliver_raw(&HANDLERS, "test.Leak", br#"{"n":1}"#)
            .unwrap();
        let err = ctx
            .deliver_raw(&HANDLERS, "test.Leak", br#"{"n":2}"#)
            .unwrap_err();
        assert!(
            matches!(&err, HandleError::Reject(m) if m.contains("static counter reads 1")),
            "{err:?}"
        );
    }

    #[test]
    fn flaky_fails_then_records_attempts() {
        let mut ctx = TestContext::new();
        let body = br#"{"n":7,"fail_times":2}"#;
        for attempts in 0..2 {
            ctx.envelope_mut().attempts = attempts;
            let err = ctx.deliver_raw(&HANDLERS, "test.Flaky", body).unwrap_err();
            assert!(matches!(err, HandleError::Failed(_)));
        }
        ctx.envelope_mut().attempts = 2;
        ctx.deliver_raw(&HANDLERS, "test.Flaky", body).unwrap();
        assert_eq!(ctx.state().get::<u32>("flaky/7").unwrap(), Some(2));
    }

    #[test]
    fn flood_writes_its_keys_and_sink_sends_its_blobs() {
        let mut ctx = TestContext::new();
        ctx.deliver_raw(&HANDLERS, "test.Flood", br#"{"n":3,"keys":4,"bytes":5}"#)
            .unwrap();
        let state = ctx.state_snapshot();
        assert_eq!(state.len(), 4);
        assert_eq!(state["flood/3/0"], b"fffff");
        ctx.deliver_raw(
            &HANDLERS,
            "test.Sink",
            br#"{"n":4,"sends":2,"bytes":3,"to":"local://misbehave"}"#,
        )
        .unwrap();
        ctx.deliver_raw(&HANDLERS, "test.Sink", br#"{"n":5,"sends":3,"bytes":0}"#)
            .unwrap();
        assert_eq!(ctx.sent().len(), 2);
        assert_eq!(ctx.published().len(), 3);
    }

    #[test]
    fn slow_counts_each_delivery() {
        let mut ctx = TestContext::new();
        for _ in 0..2 {
            ctx.deliver_raw(&HANDLERS, "test.Slow", br#"{"n":4,"ms":1}"#)
                .unwrap();
        }
        assert_eq!(ctx.state().get::<u64>("slow/4").unwrap(), Some(2));
    }

    #[test]
    fn ok_and_reject() {
        let mut ctx = TestContext::new();
        ctx.deliver_raw(&HANDLERS, "test.Ok", br#"{"n":1}"#)
            .unwrap();
        assert_eq!(ctx.state().get::<bool>("ok/1").unwrap(), Some(true));
        let err = ctx
            .deliver_raw(&HANDLERS, "test.Reject", br#"{"n":3}"#)
            .unwrap_err();
        assert_eq!(err, HandleError::reject("rejected 3"));
    }
}
