//! Test plugin `probe`: one message type per capability a plugin must not
//! have (files, environment, raw sockets, HTTP off its list or to internal
//! addresses, redirects off the list, sends it may not make) and two that
//! break its limits (a recursion bomb, an allocation of the whole memory
//! cap). Each attempt is recorded in state at `probe/{name}` as
//! `refused: ...` or `ALLOWED: ...`, so a test asserts the refusal itself,
//! not just that nothing happened.

use std::hint::black_box;

use jasper_guest::{Context, HandleError, HttpError};
use serde::{Deserialize, Serialize};

/// `probe.File`: read `path`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeFile {
    pub name: String,
    pub path: String,
}

/// `probe.Env`: read the environment.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeEnv {
    pub name: String,
}

/// `probe.Tcp`: open a TCP connection to `addr` (wasi:sockets).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeTcp {
    pub name: String,
    pub addr: String,
}

/// `probe.Http`: GET `url`, following up to `follow` redirects.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeHttp {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub follow: u32,
}

/// `probe.Send`: send a `probe.Ping` to `to`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeSend {
    pub name: String,
    pub to: String,
}

/// `probe.Recurse`: recurse until the stack runs out.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeRecurse {
    pub n: u64,
}

/// `probe.Alloc`: allocate `mb` MiB at once and touch it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeAlloc {
    pub mb: u64,
}

/// `probe.Ping`: puts `ping/{n}` = true (the host still answers).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbePing {
    pub n: u64,
}

jasper_guest::message!(
    ProbeFile = "probe.File",
    ProbeEnv = "probe.Env",
    ProbeTcp = "probe.Tcp",
    ProbeHttp = "probe.Http",
    ProbeSend = "probe.Send",
    ProbeRecurse = "probe.Recurse",
    ProbeAlloc = "probe.Alloc",
    ProbePing = "probe.Ping",
);

fn record(ctx: &mut Context, name: &str, outcome: String) -> Result<(), HandleError> {
    ctx.info(&format!("probe {name}: {outcome}"));
    ctx.state().put(&format!("probe/{name}"), &outcome)?;
    Ok(())
}

/// Tries to read a file.
pub fn file(ctx: &mut Context, msg: ProbeFile) -> Result<(), HandleError> {
    let outcome = match std::fs::read(&msg.path) {
        Ok(bytes) => format!("ALLOWED: read {} bytes of {}", bytes.len(), msg.path),
        Err(e) => format!("refused: {}: {e}", msg.path),
    };
    record(ctx, &msg.name, outcome)
}

/// Tries to read environment variables.
pub fn env(ctx: &mut Context, msg: ProbeEnv) -> Result<(), HandleError> {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let outcome = if vars.is_empty() && std::env::var("PATH").is_err() {
        "refused: no environment variables".to_string()
    } else {
        format!("ALLOWED: {} variables: {}", vars.len(), vars.join(","))
    };
    record(ctx, &msg.name, outcome)
}

/// Tries a raw TCP connection.
pub fn tcp(ctx: &mut Context, msg: ProbeTcp) -> Result<(), HandleError> {
    let outcome = match std::net::TcpStream::connect(&msg.addr) {
        Ok(_) => format!("ALLOWED: connected to {}", msg.addr),
        Err(e) => format!("refused: {}: {e}", msg.addr),
    };
    record(ctx, &msg.name, outcome)
}

/// Tries an HTTP GET.
pub fn http(ctx: &mut Context, msg: ProbeHttp) -> Result<(), HandleError> {
    let res = ctx
        .http()
        .get(&msg.url)
        .follow_redirects(msg.follow)
        .timeout_ms(5_000)
        .send();
    let outcome = match res {
        Err(HttpError::Denied(m)) => format!("refused: {m}"),
        Err(e) => format!("error: {e}"),
        Ok(r) => format!("ALLOWED: {} answered {}", msg.url, r.status),
    };
    record(ctx, &msg.name, outcome)
}

/// Tries a send.
pub fn send(ctx: &mut Context, msg: ProbeSend) -> Result<(), HandleError> {
    let outcome = match ctx.send(&msg.to, &ProbePing { n: 0 }) {
        Ok(id) => format!("ALLOWED: sent {id} to {}", msg.to),
        Err(e) => format!("refused: {e}"),
    };
    record(ctx, &msg.name, outcome)
}

/// Recursion with no end the optimiser can see: only the stack limit stops it.
#[inline(never)]
fn deeper(n: u64) -> u64 {
    if black_box(n) == u64::MAX {
        return 0;
    }
    // Not a tail call: every level keeps a frame.
    deeper(black_box(n + 1)).wrapping_add(n)
}

/// Overflows the stack.
pub fn recurse(ctx: &mut Context, msg: ProbeRecurse) -> Result<(), HandleError> {
    let depth = deeper(msg.n);
    record(ctx, "recurse", format!("ALLOWED: returned {depth}"))
}

/// Allocates `mb` MiB at once.
pub fn alloc(ctx: &mut Context, msg: ProbeAlloc) -> Result<(), HandleError> {
    let bytes = usize::try_from(msg.mb << 20).unwrap_or(usize::MAX);
    let v = black_box(vec![1u8; bytes]);
    let len = black_box(&v).len();
    record(ctx, "alloc", format!("ALLOWED: allocated {len} bytes"))
}

/// Marks `ping/{n}`.
pub fn ping(ctx: &mut Context, msg: ProbePing) -> Result<(), HandleError> {
    ctx.state().put(&format!("ping/{}", msg.n), &true)?;
    Ok(())
}

jasper_guest::handlers!(file, env, tcp, http, send, recurse, alloc, ping);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jasper_guest::testing::TestContext;

    #[test]
    fn http_records_the_refusal() {
        let mut ctx = TestContext::new();
        ctx.deliver_raw(
            &HANDLERS,
            "probe.Http",
            br#"{"name":"h","url":"http://nowhere.test/"}"#,
        )
        .unwrap();
        let got: String = ctx.state().get("probe/h").unwrap().unwrap();
        assert!(got.starts_with("refused: "), "{got}");
    }
}
