//! Hostile peers at a `durable://` listener: garbage instead of a
//! handshake, impossible frame lengths, frames cut off, clients that send
//! one byte a second, the wrong shared secret or none, more connections
//! than the limit, and TLS clients without a certificate or with one from
//! another CA. For each: the host refuses or closes the connection, logs
//! why (a line naming the client's address, caught by a global tracing
//! subscriber, matched on its structured fields: `event`, `cause`, and the
//! `error` it also told the peer), stores nothing, and keeps serving proper
//! peers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use jasper_host::config::{ListenConfig, RouteConfig, TcpConfig};
use jasper_host::store::Counts;
use jasper_host::transport::tcp::TcpSettings;
use jasper_host::transport::tcp::conn::{Conn, ConnError};
use jasper_host::transport::wire::{
    self, CLIENT_HELLO_LEN, ClientHello, FLAG_SECRET, FRAME_HEADER_LEN, Frame, FrameLimits,
    HandshakeRefusal, PROTOCOL_VERSION, SERVER_ACCEPT_LEN, SERVER_HELLO_LEN, Secret, ServerHello,
    Verdict, WireError,
};
use jasper_host::{Config, Envelope, Host};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing_subscriber::fmt::format::FmtSpan;

const SECRET: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------
// The host's log, captured
// ---------------------------------------------------------------------------

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends to [`LOG`], and echoes to the test's captured output so that a
/// failing test shows the host's log.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber for the whole test binary (a thread-local one
/// would miss the events of tokio's worker threads).
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // The spans' new and close events show when the host is done with
        // a connection (see `open_connections`).
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_writer(|| LogWriter)
            .init();
    });
}

/// Whether `line` holds `key=value` with nothing more of the value after it
/// (`peer=127.0.0.1:4000` must not match `peer=127.0.0.1:40001`, nor
/// `cause=truncated` `cause=truncated-x`).
fn has_field(line: &str, key: &str, value: &str) -> bool {
    let needle = format!("{key}={value}");
    line.match_indices(&needle).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + needle.len()..].chars().next();
        before.is_none_or(|c| c == ' ' || c == '{')
            && after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// The value of `line`'s field `error`, the last field of the host's
/// warnings (it runs to the end of the line).
fn error_field(line: &str) -> &str {
    let at = line
        .rfind(" error=")
        .unwrap_or_else(|| panic!("no error field: {line}"));
    &line[at + " error=".len()..]
}

/// The innermost span of a span's own `new` / `close` line, with its
/// fields, and which of the two it is: `tcp_connection{listener=.. peer=..}:
/// jasper_host::..: close time.busy=..` gives `("tcp_connection",
/// "listener=.. peer=..", "close")`.
fn span_event(line: &str) -> Option<(&str, &str, &str)> {
    let (context, rest) = line.rsplit_once("}: ")?;
    let (_target, message) = rest.split_once(": ")?;
    let what = match message.split_whitespace().next()? {
        w @ ("new" | "close") => w,
        _ => return None,
    };
    let brace = context.rfind('{')?;
    let name = context[..brace].rsplit([' ', ':']).next()?;
    Some((name, &context[brace + 1..], what))
}

/// The peers whose connection to `listener` the host still serves: its
/// `tcp_connection` span was opened and not closed yet. The span closes
/// when the connection's task ends, after whatever it stored.
fn open_connections(listener: &str) -> BTreeSet<String> {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let mut open = BTreeSet::new();
    for line in String::from_utf8_lossy(&log).lines() {
        let Some(("tcp_connection", fields, what)) = span_event(line) else {
            continue;
        };
        if !has_field(fields, "listener", listener) {
            continue;
        }
        let Some(peer) = fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix("peer="))
        else {
            continue;
        };
        if what == "new" {
            open.insert(peer.to_owned());
        } else {
            open.remove(peer);
        }
    }
    open
}

/// The log lines of `listener` about the connection from `peer`.
fn lines_about(listener: &str, peer: SocketAddr) -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| has_field(l, "listener", listener) && has_field(l, "peer", &peer.to_string()))
        .map(str::to_owned)
        .collect()
}

/// Waits for a line of `listener` about `peer` at `level` (`WARN`, `INFO`)
/// with the field `event=event` and every one of `fields` (`key=value`).
async fn expect_log(
    listener: &str,
    peer: SocketAddr,
    level: &str,
    event: &str,
    fields: &[(&str, &str)],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = lines_about(listener, peer);
        if let Some(l) = lines.iter().find(|l| {
            l.contains(&format!(" {level} "))
                && has_field(l, "event", event)
                && fields.iter().all(|(k, v)| has_field(l, k, v))
        }) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {level} line with event={event} and {fields:?} about {peer} on {listener}; its lines: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------

fn config(dir: &Path, plugins: &[&str], tcp: TcpConfig) -> Config {
    let mut c = common::config_with(dir, plugins);
    c.tcp = tcp;
    c
}

/// Host B: the `audit` plugin behind a `durable://127.0.0.1:0` listener.
async fn start_b(dir: &Path, tcp: TcpConfig) -> Host {
    capture_logs();
    let mut c = config(dir, &["audit"], tcp);
    c.listen.push(ListenConfig {
        uri: "durable://127.0.0.1:0".parse().unwrap(),
    });
    Host::start(c).await.unwrap()
}

/// Host A: the `orders` plugin, routing OrderPlaced to `to`.
async fn start_a(dir: &Path, tcp: TcpConfig, to: &str) -> Host {
    let mut c = config(dir, &["orders"], tcp);
    c.route.push(RouteConfig {
        message_type: "OrderPlaced".into(),
        to: to.parse().unwrap(),
    });
    Host::start(c).await.unwrap()
}

/// `HOST:PORT` of a listener URI.
fn addr_of(uri: &str) -> String {
    uri.split_once("://").unwrap().1.to_string()
}

async fn audit_count(host: &Host) -> u64 {
    common::state_u64(host, "audit", "count").await
}

/// (c): not a row in any table of B's store, and nothing handled, once B
/// is done with every connection but the `held` ones the test keeps open
/// (so that a batch it wrongly accepted is in the store by then).
async fn assert_nothing_stored(b: &Host, held: &[SocketAddr]) {
    let listener = &b.listeners[0];
    let held: BTreeSet<String> = held.iter().map(SocketAddr::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_connections(listener);
        if open == held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves {open:?} on {listener} (the test holds {held:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = b.store.counts().await.unwrap();
    assert_eq!(counts, Counts::default(), "B stored something: {counts:?}");
    assert_eq!(audit_count(b).await, 0, "B handled something");
}

/// Waits until B's audit plugin counted `n` orders, and checks B's inbox
/// holds exactly those.
async fn expect_handled(b: &Host, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_count(b).await < n {
        assert!(
            Instant::now() < deadline,
            "B handled {} of {n} orders",
            audit_count(b).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(audit_count(b).await, n);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = b.store.counts().await.unwrap();
        if c.handled == n as i64 && c.incoming == 0 {
            assert_eq!(c.dead_letters, 0, "{c:?}");
            break;
        }
        assert!(Instant::now() < deadline, "B's inbox: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn order(i: usize) -> Envelope {
    let body = json!({"order_id": format!("o-{i}"), "amount_cents": 100 + i});
    Envelope::new("OrderPlaced", serde_json::to_vec(&body).unwrap())
}

fn batch_frame(seq: u64, orders: std::ops::Range<usize>) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = orders.map(|i| order(i).encode()).collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    wire::encode_batch(seq, &refs)
}

/// (d): a proper client (the host's own connection code) delivers `n`
/// orders in one batch, every one accepted and handled.
async fn deliver_properly(b: &Host, settings: Arc<TcpSettings>, n: usize) {
    let mut conn = Conn::connect(&addr_of(&b.listeners[0]), settings, Duration::from_secs(5))
        .await
        .unwrap();
    conn.send(&batch_frame(1, 0..n)).await.unwrap();
    match conn.recv(Duration::from_secs(10)).await.unwrap() {
        Some(Frame::Ack { seq: 1, verdicts }) => {
            assert_eq!(verdicts, vec![Verdict::Accepted; n]);
        }
        other => panic!("expected the ack of batch 1, got {other:?}"),
    }
    expect_handled(b, n as u64).await;
}

// ---------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------

/// A raw TCP connection to B, and the client address B's log names.
async fn raw_connect(b: &Host) -> (TcpStream, SocketAddr) {
    let s = TcpStream::connect(addr_of(&b.listeners[0])).await.unwrap();
    s.set_nodelay(true).unwrap();
    let local = s.local_addr().unwrap();
    (s, local)
}

async fn read_array<const N: usize>(s: &mut (impl AsyncRead + Unpin)) -> [u8; N] {
    let mut buf = [0u8; N];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the host sent nothing within 5 s")
        .unwrap();
    buf
}

/// The server hello, then a client hello built by `make` from it.
async fn send_client_hello(
    s: &mut TcpStream,
    make: impl FnOnce(&ServerHello) -> [u8; CLIENT_HELLO_LEN],
) -> ServerHello {
    let hello = ServerHello::decode(&read_array::<SERVER_HELLO_LEN>(s).await).unwrap();
    s.write_all(&make(&hello)).await.unwrap();
    hello
}

/// The whole client side of the handshake, which must succeed.
async fn raw_handshake(s: &mut TcpStream, secret: Option<&Secret>) {
    let bytes = read_array::<SERVER_HELLO_LEN>(s).await;
    let nonce = [7u8; 32];
    let (server, reply) = wire::answer_server_hello(&bytes, nonce, secret).unwrap();
    s.write_all(&reply.encode()).await.unwrap();
    let accept = read_array::<SERVER_ACCEPT_LEN>(s).await;
    wire::check_server_accept(&accept, &server, &nonce, secret).unwrap();
}

/// How the host ended a connection.
#[derive(Debug)]
struct Closed {
    /// Everything read before the end.
    bytes: Vec<u8>,
    /// Since the start of `expect_closed`.
    after: Duration,
    /// A reset or another error rather than a clean end of stream.
    error: Option<std::io::Error>,
}

impl Closed {
    /// The message of the error frame the host sent before closing.
    fn error_frame(&self) -> String {
        assert!(
            self.bytes.len() > FRAME_HEADER_LEN,
            "no error frame before the close: {self:?}"
        );
        let len = wire::frame_len(self.bytes[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(self.bytes.len(), FRAME_HEADER_LEN + len, "{self:?}");
        match wire::decode_frame(&self.bytes[4..], &FrameLimits::default()) {
            Ok(Frame::Error { message }) => message,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}

/// (a): reads until the host closes the connection (end of stream or an
/// error such as a reset); fails if it is still open after `deadline`.
async fn expect_closed(s: &mut (impl AsyncRead + Unpin), deadline: Duration) -> Closed {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the host did not close the connection within {deadline:?} (read {} bytes)",
                bytes.len()
            ),
            Ok(Ok(0)) => {
                return Closed {
                    bytes,
                    after: start.elapsed(),
                    error: None,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                return Closed {
                    bytes,
                    after: start.elapsed(),
                    error: Some(e),
                };
            }
        }
    }
}

/// A client that writes `bytes` one per second until it is stopped or the
/// connection fails; gives back the time the first byte went out.
fn dribble(
    mut w: impl AsyncWrite + Unpin + Send + 'static,
    bytes: Vec<u8>,
) -> (tokio::task::JoinHandle<()>, Instant) {
    let start = Instant::now();
    let task = tokio::spawn(async move {
        for b in bytes {
            if w.write_all(&[b]).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (task, start)
}

fn small_limits() -> TcpConfig {
    TcpConfig {
        max_frame_bytes: 4096,
        handshake_timeout_ms: 2000,
        frame_timeout_ms: 2000,
        ..TcpConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_handshake_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), small_limits()).await;
    let listener = b.listeners[0].clone();

    // An HTTP request longer than a client hello: refused as soon as the
    // hello's worth of bytes is in, long before the handshake timeout.
    let (mut s, peer) = raw_connect(&b).await;
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    )
    .await
    .unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.after < Duration::from_millis(1500), "{closed:?}");
    let line = expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "bad-magic")],
    )
    .await;
    let bad_magic = WireError::BadMagic(*b"GET ").to_string();
    assert!(error_field(&line).ends_with(&bad_magic), "{line}");

    // 200 random-looking bytes: the same.
    let (mut s, peer) = raw_connect(&b).await;
    let noise: Vec<u8> = (0..200u32).map(|i| (i * 167 + 13) as u8).collect();
    s.write_all(&noise).await.unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.after < Duration::from_millis(1500), "{closed:?}");
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "bad-magic")],
    )
    .await;

    // A short request that stops (an HTTP/1.0 client waiting for an
    // answer): its first bytes are not the magic, so it is dropped at once.
    let (mut s, peer) = raw_connect(&b).await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.after < Duration::from_millis(1500), "{closed:?}");
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "bad-magic")],
    )
    .await;

    // The magic, then a stop: the host waits for the rest of the hello
    // until the handshake timeout (2 s), then drops the connection.
    let (mut s, peer) = raw_connect(&b).await;
    let start = Instant::now();
    s.write_all(b"JSPR\x01").await.unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(10)).await;
    let after = start.elapsed();
    assert!(
        (Duration::from_millis(1800)..Duration::from_secs(5)).contains(&after),
        "closed after {after:?}, the handshake timeout is 2 s: {closed:?}"
    );
    // The server hello is all the host said.
    assert_eq!(closed.bytes.len(), SERVER_HELLO_LEN, "{closed:?}");
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "handshake-timeout")],
    )
    .await;

    // A jasper-host client of another protocol version.
    let (mut s, peer) = raw_connect(&b).await;
    send_client_hello(&mut s, |_| {
        let mut h = ClientHello {
            version: PROTOCOL_VERSION,
            nonce: [1; 32],
            mac: [0; 32],
        }
        .encode();
        h[4] = PROTOCOL_VERSION + 1;
        h
    })
    .await;
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(closed.bytes.len(), SERVER_ACCEPT_LEN, "{closed:?}");
    assert_eq!(closed.bytes[4], 1, "status BadVersion: {closed:?}");
    let line = expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "protocol-version")],
    )
    .await;
    let refusal = HandshakeRefusal::Version(PROTOCOL_VERSION + 1).to_string();
    assert!(error_field(&line).ends_with(&refusal), "{line}");

    assert_nothing_stored(&b, &[]).await;
    deliver_properly(&b, TcpSettings::plain(), 3).await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_frames_are_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(
        dir.path(),
        TcpConfig {
            // Long, so that a prompt refusal shows the host did not wait
            // for (or allocate) the body the prefix announced.
            frame_timeout_ms: 30_000,
            ..small_limits()
        },
    )
    .await;
    let listener = b.listeners[0].clone();

    let mut bad_version = batch_frame(1, 0..1);
    bad_version[FRAME_HEADER_LEN + 1 + 8] = 99;
    let mut huge_count = vec![];
    huge_count.extend_from_slice(&14u32.to_le_bytes());
    huge_count.push(1); // batch
    huge_count.extend_from_slice(&1u64.to_le_bytes());
    huge_count.push(jasper_host::envelope::VERSION);
    huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
    // What is sent after the handshake, what the error frame says, the
    // warning line's event and its other field (`cause`, or for the
    // violation `frame`).
    type Case<'a> = (&'a str, Vec<u8>, &'a str, &'a str, (&'a str, &'a str));
    let cases: Vec<Case> = vec![
        (
            "length 0",
            0u32.to_le_bytes().to_vec(),
            "frame length 0 (a frame holds at least its kind byte)",
            "peer-disconnected",
            ("cause", "empty-frame"),
        ),
        (
            "max_frame_bytes + 1",
            4097u32.to_le_bytes().to_vec(),
            "frame length 4097 exceeds the limit of 4096 bytes",
            "peer-disconnected",
            ("cause", "frame-too-large"),
        ),
        (
            "4 GiB",
            u32::MAX.to_le_bytes().to_vec(),
            "frame length 4294967295 exceeds the limit of 4096 bytes",
            "peer-disconnected",
            ("cause", "frame-too-large"),
        ),
        (
            "unknown kind",
            [&9u32.to_le_bytes()[..], &[99], &[0; 8]].concat(),
            "unknown frame kind 99",
            "peer-disconnected",
            ("cause", "unknown-frame-kind"),
        ),
        (
            "batch of another envelope version",
            bad_version,
            "unsupported batch encoding version 99",
            "peer-disconnected",
            ("cause", "batch-version"),
        ),
        (
            "batch count of 4 billion",
            huge_count,
            "batch count 4294967295 exceeds the limit of 10000",
            "peer-disconnected",
            ("cause", "too-many"),
        ),
        (
            "an ack sent to a listener",
            wire::encode_ack(1, &[Verdict::Accepted]),
            "unexpected ack frame",
            "protocol-violation",
            ("frame", "ack"),
        ),
    ];
    for (what, bytes, reason, event, field) in cases {
        let (mut s, peer) = raw_connect(&b).await;
        raw_handshake(&mut s, None).await;
        s.write_all(&bytes).await.unwrap();
        let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            closed.after < Duration::from_secs(2),
            "{what}: closed after {:?}",
            closed.after
        );
        assert!(closed.error.is_none(), "{what}: {closed:?}");
        let message = closed.error_frame();
        assert!(message.contains(reason), "{what}: told {message:?}");
        let line = expect_log(&listener, peer, "WARN", event, &[field]).await;
        // What the host logs is what it told the peer.
        assert!(
            event != "peer-disconnected" || error_field(&line) == message,
            "{what}: {line}"
        );
    }

    // A well-framed batch whose envelopes are garbage: each refused with
    // its reason, nothing stored, and the connection stays usable.
    let (mut s, _) = raw_connect(&b).await;
    raw_handshake(&mut s, None).await;
    s.write_all(&wire::encode_batch(5, &[b"garbage", &[1; 17], b""]))
        .await
        .unwrap();
    s.write_all(&wire::encode_ping(6)).await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..2 {
        let len = wire::frame_len(read_array::<4>(&mut s).await, 1 << 20).unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        frames.push(wire::decode_frame(&body, &FrameLimits::default()).unwrap());
    }
    let Frame::Ack { seq: 5, verdicts } = &frames[0] else {
        panic!("expected the ack of batch 5: {frames:?}");
    };
    assert_eq!(verdicts.len(), 3);
    for v in verdicts {
        assert!(
            matches!(v, Verdict::Rejected(r) if r.contains("the envelope cannot be decoded")),
            "{v:?}"
        );
    }
    assert_eq!(frames[1], Frame::Pong { seq: 6 });
    drop(s);

    assert_nothing_stored(&b, &[]).await;
    deliver_properly(&b, TcpSettings::plain(), 5).await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_off_by_the_client_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), small_limits()).await;
    let listener = b.listeners[0].clone();
    let frame = batch_frame(1, 0..3);
    assert!(frame.len() > 100);

    // Half a batch, then the client shuts its side: told, logged, closed.
    for cut in [2, FRAME_HEADER_LEN, frame.len() / 2, frame.len() - 1] {
        let (mut s, peer) = raw_connect(&b).await;
        raw_handshake(&mut s, None).await;
        s.write_all(&frame[..cut]).await.unwrap();
        s.shutdown().await.unwrap();
        let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            closed.after < Duration::from_secs(1),
            "cut {cut}: {closed:?}"
        );
        let told = closed.error_frame();
        assert!(
            told.contains("the peer closed the connection in the middle of it"),
            "cut {cut}: {closed:?}"
        );
        let line = expect_log(
            &listener,
            peer,
            "WARN",
            "peer-disconnected",
            &[("cause", "truncated")],
        )
        .await;
        assert_eq!(error_field(&line), told, "cut {cut}");
    }

    // Half a batch, then the client is gone altogether.
    let (mut s, peer) = raw_connect(&b).await;
    raw_handshake(&mut s, None).await;
    s.write_all(&frame[..frame.len() / 2]).await.unwrap();
    drop(s);
    expect_log(
        &listener,
        peer,
        "WARN",
        "peer-disconnected",
        &[("cause", "truncated")],
    )
    .await;

    assert_nothing_stored(&b, &[]).await;
    deliver_properly(&b, TcpSettings::plain(), 2).await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_a_byte_a_second_are_disconnected_at_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(
        dir.path(),
        TcpConfig {
            handshake_timeout_ms: 1500,
            frame_timeout_ms: 2500,
            idle_timeout_ms: 3500,
            ..TcpConfig::default()
        },
    )
    .await;
    let listener = b.listeners[0].clone();

    // A slow handshake: the client hello one byte a second. The clock
    // starts when the host accepts the connection.
    let slow_handshake = async {
        let (mut s, peer) = raw_connect(&b).await;
        let connected = Instant::now();
        let hello = ServerHello::decode(&read_array::<SERVER_HELLO_LEN>(&mut s).await).unwrap();
        let (_, reply) = wire::answer_server_hello(&hello.encode(), [3; 32], None).unwrap();
        let (mut r, w) = s.into_split();
        let (writer, _) = dribble(w, reply.encode().to_vec());
        let closed = expect_closed(&mut r, Duration::from_secs(10)).await;
        writer.abort();
        (peer, connected.elapsed(), closed)
    };
    // A slow frame after a quick handshake: a valid batch one byte a
    // second; the clock starts with its first byte.
    let slow_frame = async {
        let (mut s, peer) = raw_connect(&b).await;
        raw_handshake(&mut s, None).await;
        let (mut r, w) = s.into_split();
        let (writer, first_byte) = dribble(w, batch_frame(1, 0..1));
        let closed = expect_closed(&mut r, Duration::from_secs(10)).await;
        writer.abort();
        (peer, first_byte.elapsed(), closed)
    };
    // An authenticated client that then says nothing.
    let idle = async {
        let (mut s, peer) = raw_connect(&b).await;
        raw_handshake(&mut s, None).await;
        let quiet = Instant::now();
        let closed = expect_closed(&mut s, Duration::from_secs(10)).await;
        (peer, quiet.elapsed(), closed)
    };
    let (
        (hs_peer, hs_after, hs_closed),
        (fr_peer, fr_after, fr_closed),
        (idle_peer, idle_after, idle_closed),
    ) = tokio::join!(slow_handshake, slow_frame, idle);

    assert!(
        (Duration::from_millis(1300)..Duration::from_millis(3500)).contains(&hs_after),
        "slow handshake closed after {hs_after:?} (timeout 1.5 s): {hs_closed:?}"
    );
    expect_log(
        &listener,
        hs_peer,
        "WARN",
        "handshake-refused",
        &[("cause", "handshake-timeout")],
    )
    .await;

    assert!(
        (Duration::from_millis(2300)..Duration::from_millis(4500)).contains(&fr_after),
        "slow frame closed after {fr_after:?} (timeout 2.5 s): {fr_closed:?}"
    );
    let told = fr_closed.error_frame();
    assert!(told.contains("timed out reading a frame"), "{fr_closed:?}");
    let line = expect_log(
        &listener,
        fr_peer,
        "WARN",
        "peer-disconnected",
        &[("cause", "frame-timeout")],
    )
    .await;
    assert_eq!(error_field(&line), told);

    assert!(
        (Duration::from_millis(3300)..Duration::from_millis(5500)).contains(&idle_after),
        "idle connection closed after {idle_after:?} (timeout 3.5 s): {idle_closed:?}"
    );
    let told = idle_closed.error_frame();
    assert!(
        told.contains("timed out waiting for a frame"),
        "{idle_closed:?}"
    );
    let line = expect_log(
        &listener,
        idle_peer,
        "WARN",
        "peer-disconnected",
        &[("cause", "idle-timeout")],
    )
    .await;
    assert_eq!(error_field(&line), told);

    assert_nothing_stored(&b, &[]).await;
    deliver_properly(&b, TcpSettings::plain(), 2).await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_shared_secret_are_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_secret = TcpConfig {
        secret: Some(SECRET.into()),
        ..TcpConfig::default()
    };
    let b = start_b(db.path(), with_secret.clone()).await;
    let listener = b.listeners[0].clone();
    let right = Secret::new(SECRET.as_bytes());

    // The wrong secret: the accept says so, then the host closes.
    let (mut s, peer) = raw_connect(&b).await;
    let wrong = Secret::new(b"not the secret, but long enough");
    let server = send_client_hello(&mut s, |hello| {
        assert_eq!(hello.flags & FLAG_SECRET, FLAG_SECRET);
        let (_, reply) = wire::answer_server_hello(&hello.encode(), [4; 32], Some(&wrong)).unwrap();
        reply.encode()
    })
    .await;
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(closed.bytes.len(), SERVER_ACCEPT_LEN, "{closed:?}");
    assert_eq!(
        wire::check_server_accept(
            closed.bytes[..].try_into().unwrap(),
            &server,
            &[4; 32],
            Some(&wrong)
        ),
        Err(HandshakeRefusal::WrongSecret)
    );
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "wrong-secret")],
    )
    .await;

    // No secret: a client that ignores the listener's flag and sends no proof.
    let (mut s, peer) = raw_connect(&b).await;
    send_client_hello(&mut s, |hello| {
        assert_eq!(
            wire::answer_server_hello(&hello.encode(), [5; 32], None),
            Err(HandshakeRefusal::SecretRequired)
        );
        ClientHello {
            version: PROTOCOL_VERSION,
            nonce: [5; 32],
            mac: [0; 32],
        }
        .encode()
    })
    .await;
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(closed.bytes.len(), SERVER_ACCEPT_LEN, "{closed:?}");
    assert_eq!(closed.bytes[4], 2, "status AuthFailed: {closed:?}");
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "wrong-secret")],
    )
    .await;

    // A replay: a valid client hello of one connection on another.
    let (mut s, _) = raw_connect(&b).await;
    let mut recorded = [0u8; CLIENT_HELLO_LEN];
    send_client_hello(&mut s, |hello| {
        let (_, reply) = wire::answer_server_hello(&hello.encode(), [6; 32], Some(&right)).unwrap();
        recorded = reply.encode();
        recorded
    })
    .await;
    let mut replayed = TcpStream::connect(addr_of(&listener)).await.unwrap();
    let replay_peer = replayed.local_addr().unwrap();
    send_client_hello(&mut replayed, |_| recorded).await;
    let closed = expect_closed(&mut replayed, Duration::from_secs(5)).await;
    assert_eq!(closed.bytes.len(), SERVER_ACCEPT_LEN, "{closed:?}");
    expect_log(
        &listener,
        replay_peer,
        "WARN",
        "handshake-refused",
        &[("cause", "wrong-secret")],
    )
    .await;
    drop(s);

    // The host's own client without the secret gives up by itself; the
    // listener sees it leave.
    let err = Conn::connect(
        &addr_of(&listener),
        TcpSettings::plain(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnError::Handshake(HandshakeRefusal::SecretRequired)),
        "{err}"
    );

    assert_nothing_stored(&b, &[]).await;

    // A host with the secret delivers.
    let a = start_a(da.path(), with_secret, &listener).await;
    for i in 0..20 {
        let body = json!({"order_id": format!("o-{i}"), "amount_cents": 100 + i, "remind_after_ms": 3_600_000});
        a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    expect_handled(&b, 20).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(
        dir.path(),
        TcpConfig {
            max_connections: 2,
            ..TcpConfig::default()
        },
    )
    .await;
    let listener = b.listeners[0].clone();

    // Two authenticated, idle connections take both places.
    let (mut c1, c1_peer) = raw_connect(&b).await;
    raw_handshake(&mut c1, None).await;
    let (mut c2, c2_peer) = raw_connect(&b).await;
    raw_handshake(&mut c2, None).await;

    // A third is closed without a word.
    for _ in 0..2 {
        let (mut c3, peer) = raw_connect(&b).await;
        let closed = expect_closed(&mut c3, Duration::from_secs(5)).await;
        assert!(closed.bytes.is_empty(), "{closed:?}");
        assert!(closed.after < Duration::from_secs(1), "{closed:?}");
        expect_log(
            &listener,
            peer,
            "WARN",
            "connection-limit",
            &[("limit", "2")],
        )
        .await;
    }
    assert_nothing_stored(&b, &[c1_peer, c2_peer]).await;

    // The two connections inside the limit still work.
    c1.write_all(&wire::encode_ping(1)).await.unwrap();
    let len = wire::frame_len(read_array::<4>(&mut c1).await, 1 << 20).unwrap();
    let mut body = vec![0u8; len];
    c1.read_exact(&mut body).await.unwrap();
    assert_eq!(
        wire::decode_frame(&body, &FrameLimits::default()).unwrap(),
        Frame::Pong { seq: 1 }
    );
    c2.write_all(&batch_frame(9, 0..2)).await.unwrap();
    let len = wire::frame_len(read_array::<4>(&mut c2).await, 1 << 20).unwrap();
    let mut body = vec![0u8; len];
    c2.read_exact(&mut body).await.unwrap();
    assert_eq!(
        wire::decode_frame(&body, &FrameLimits::default()).unwrap(),
        Frame::Ack {
            seq: 9,
            verdicts: vec![Verdict::Accepted; 2]
        }
    );
    expect_handled(&b, 2).await;

    // Once one leaves, a new connection gets its place.
    drop(c1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match Conn::connect(
            &addr_of(&listener),
            TcpSettings::plain(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no place after one left: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    conn.send(&batch_frame(1, 2..4)).await.unwrap();
    assert!(matches!(
        conn.recv(Duration::from_secs(10)).await.unwrap(),
        Some(Frame::Ack { seq: 1, .. })
    ));
    expect_handled(&b, 4).await;
    drop(c2);
    b.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A CA, and certificates it signed for 127.0.0.1, as PEM files.
struct Pki {
    ca: PathBuf,
    dir: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        Pki { ca, dir, issuer }
    }

    /// A node certificate (server and client use), and its key.
    fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn tcp_config(&self, node: &str) -> TcpConfig {
        let (cert, key) = self.node(node);
        TcpConfig {
            tls: true,
            tls_cert: Some(cert),
            tls_key: Some(key),
            tls_ca: Some(self.ca.clone()),
            mutual_tls: true,
            ..TcpConfig::default()
        }
    }
}

/// A TLS client trusting `ca`, presenting `client` (certificate and key)
/// if given; connects to `addr` and reports the client address and how the
/// connection went.
async fn tls_client(
    addr: &str,
    ca: &Path,
    client: Option<(PathBuf, PathBuf)>,
) -> (SocketAddr, Result<Closed, std::io::Error>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let peer = tcp.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    match connector.connect(name, tcp).await {
        // TLS 1.3: the client's side completes before the listener has
        // judged its certificate; the refusal comes as the first read.
        Ok(mut tls) => (
            peer,
            Ok(expect_closed(&mut tls, Duration::from_secs(5)).await),
        ),
        Err(e) => (peer, Err(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_certificates_of_the_ca() {
    let (da, db, dp) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pki = Pki::new(dp.path(), "jasper-ca");
    let rogue = Pki::new(dp.path(), "rogue-ca");
    let b = start_b(db.path(), pki.tcp_config("node-b")).await;
    let listener = b.listeners[0].clone();
    let addr = addr_of(&listener);

    // A certificate from another CA, and no certificate: refused in the
    // TLS handshake, before the server hello, let alone a frame.
    for (what, client) in [
        ("another CA", Some(rogue.node("mallory"))),
        ("no certificate", None),
    ] {
        let (peer, outcome) = tls_client(&addr, &pki.ca, client).await;
        match outcome {
            Ok(closed) => {
                assert!(closed.bytes.is_empty(), "{what}: {closed:?}");
                assert!(closed.error.is_some(), "{what}: no TLS alert: {closed:?}");
            }
            Err(e) => eprintln!("{what}: refused in the TLS handshake: {e}"),
        }
        let line = expect_log(
            &listener,
            peer,
            "WARN",
            "handshake-refused",
            &[("cause", "tls")],
        )
        .await;
        eprintln!("{what}: {line}");
    }

    // Plain text at the TLS listener.
    let (mut s, peer) = raw_connect(&b).await;
    s.write_all(&[0u8; CLIENT_HELLO_LEN]).await.unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        !closed.bytes.windows(4).any(|w| w == wire::MAGIC),
        "a server hello went out in the clear: {closed:?}"
    );
    expect_log(
        &listener,
        peer,
        "WARN",
        "handshake-refused",
        &[("cause", "tls")],
    )
    .await;

    // The host's own client, trusting the right CA but with a certificate
    // of another.
    let (cert, key) = rogue.node("mallory-2");
    let rogue_settings = TcpSettings::from_config(&TcpConfig {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..pki.tcp_config("unused")
    })
    .unwrap();
    let err = Conn::connect(&addr, Arc::new(rogue_settings), Duration::from_secs(5))
        .await
        .unwrap_err();
    eprintln!("the host's own client with a rogue certificate: {err}");

    assert_nothing_stored(&b, &[]).await;

    // A host with a certificate of the CA delivers.
    let a = start_a(da.path(), pki.tcp_config("node-a"), &listener).await;
    for i in 0..10 {
        let body = json!({"order_id": format!("o-{i}"), "amount_cents": 100 + i, "remind_after_ms": 3_600_000});
        a.send("PlaceOrder", serde_json::to_vec(&body).unwrap(), None)
            .await
            .unwrap();
    }
    expect_handled(&b, 10).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// A 4 GiB length prefix allocates nothing
// ---------------------------------------------------------------------------

const CHILD: &str = "JASPER_TCP_HOSTILE_MEMORY_LIMITED";

/// Runs itself again in a child process whose address space is limited to
/// 2 GiB: a connection that announces a 4 GiB frame must be refused there,
/// where allocating its body would abort the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_prefix_allocates_nothing() {
    if std::env::var_os(CHILD).is_some() {
        return under_the_memory_limit().await;
    }
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 2097152 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "--exact",
            "a_4_gib_length_prefix_allocates_nothing",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("refused without allocating"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

async fn under_the_memory_limit() {
    // The limit is in force: 3 GiB cannot be had.
    assert!(
        Vec::<u8>::new().try_reserve_exact(3 << 30).is_err(),
        "the address space limit is not in force"
    );
    let settings = Arc::new(TcpSettings::from_config(&small_limits()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = Conn::accept(tcp, settings).await.unwrap();
        let result = conn.recv(Duration::from_secs(5)).await;
        if let Err(e) = &result {
            conn.fail(&e.to_string()).await;
        }
        result
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    raw_handshake(&mut s, None).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let closed = expect_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.error_frame().contains("exceeds the limit of 4096"),
        "{closed:?}"
    );
    let result = server.await.unwrap();
    assert!(
        matches!(
            result,
            Err(ConnError::Wire(WireError::FrameTooLarge {
                len: 4_294_967_295,
                max: 4096
            }))
        ),
        "{result:?}"
    );
    println!("a 4 GiB frame was refused without allocating");
}

/// Not hostile, but seen the same way: a client with several batches
/// unanswered (as a sender with `batches_in_flight` > 1 has) gets them
/// committed in one inbox transaction (one `receive_batch` span) and an
/// answer for each, in the order sent, a bad envelope refused alone, and
/// the pong of a ping sent behind them after their acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sent_back_to_back_commit_together_and_are_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), TcpConfig::default()).await;
    let listener = b.listeners[0].clone();
    let (mut s, peer) = raw_connect(&b).await;
    raw_handshake(&mut s, None).await;
    let (two, three) = (order(2).encode(), order(3).encode());
    let frames = [
        batch_frame(1, 0..2),
        wire::encode_batch(2, &[&two, b"garbage", &three]),
        batch_frame(3, 4..6),
        wire::encode_ping(4),
    ];
    // One write: the listener finds them all at hand.
    s.write_all(&frames.concat()).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let len = wire::frame_len(read_array::<4>(&mut s).await, 1 << 20).unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        answers.push(wire::decode_frame(&body, &FrameLimits::default()).unwrap());
    }
    let ok = Verdict::Accepted;
    assert_eq!(
        answers[0],
        Frame::Ack {
            seq: 1,
            verdicts: vec![ok.clone(), ok.clone()]
        }
    );
    let Frame::Ack { seq: 2, verdicts } = &answers[1] else {
        panic!("expected the ack of batch 2: {answers:?}");
    };
    assert_eq!(verdicts.len(), 3);
    assert_eq!((&verdicts[0], &verdicts[2]), (&ok, &ok));
    assert!(
        matches!(&verdicts[1], Verdict::Rejected(r) if r.contains("the envelope cannot be decoded")),
        "{verdicts:?}"
    );
    assert_eq!(
        answers[2],
        Frame::Ack {
            seq: 3,
            verdicts: vec![ok.clone(), ok]
        }
    );
    assert_eq!(answers[3], Frame::Pong { seq: 4 });
    expect_handled(&b, 6).await;
    // One inbox commit for the three batches.
    let peer = peer.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let commits = loop {
        let log =
            String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let commits: Vec<String> = log
            .lines()
            .filter(|l| has_field(l, "peer", &peer) && has_field(l, "listener", &listener))
            .filter_map(|l| match span_event(l) {
                Some(("receive_batch", fields, "close")) => Some(fields.to_string()),
                _ => None,
            })
            .collect();
        if !commits.is_empty() || Instant::now() > deadline {
            break commits;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert!(
        has_field(&commits[0], "batches", "3") && has_field(&commits[0], "size", "7"),
        "{commits:?}"
    );
    drop(s);
    b.shutdown().await.unwrap();
}
