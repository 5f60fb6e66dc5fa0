//! The fuzz drivers of the wire protocol, and their regression tests.
//!
//! [`fuzz_decode`] and [`fuzz_handshake`] are the entry points of the
//! cargo-fuzz targets in `fuzz/` (which build with `--cfg fuzzing`, where
//! `wire` re-exports them); they are no part of the library otherwise.
//! The tests here replay the committed corpus (`fuzz/corpus/<target>/`)
//! through them, so every input the fuzzer kept stays a regression test
//! without the fuzzer, and hold the generator of the seed inputs (ignored;
//! see `fuzz/README.md`). The replay is a unit test rather than a test in
//! `host/tests/` because those see the library without `cfg(test)`, and a
//! cargo feature for it would leave the replay out of a plain `cargo test`.

use super::{
    AcceptStatus, CLIENT_HELLO_LEN, ClientHello, FLAG_SECRET, FRAME_HEADER_LEN, Frame, FrameLimits,
    HandshakeRefusal, PROTOCOL_VERSION, SERVER_ACCEPT_LEN, SERVER_HELLO_LEN, Secret, ServerAccept,
    ServerHello, answer_server_hello, check_server_accept, decode_frame, encode_ack, encode_batch,
    encode_error, encode_ping, encode_pong, frame_len, judge_client_hello,
};
use crate::envelope::{Envelope, Limits};

/// Feed arbitrary bytes through every decoder (the fuzz targets and the
/// corpus replay call this): nothing may panic or allocate beyond the limits.
pub(crate) fn fuzz_decode(data: &[u8]) {
    let limits = FrameLimits {
        max_frame: 1 << 20,
        envelope: Limits {
            max_batch: 1000,
            ..Limits::default()
        },
    };
    // A stream of frames split wherever the input says.
    let mut rest = data;
    while rest.len() >= FRAME_HEADER_LEN {
        let mut prefix = [0u8; FRAME_HEADER_LEN];
        prefix.copy_from_slice(&rest[..FRAME_HEADER_LEN]);
        rest = &rest[FRAME_HEADER_LEN..];
        let Ok(len) = frame_len(prefix, limits.max_frame) else {
            break;
        };
        let body = &rest[..len.min(rest.len())];
        if let Ok(frame) = decode_frame(body, &limits) {
            roundtrip(&frame, &limits);
        }
        rest = &rest[body.len()..];
    }
    // The handshake messages from the same bytes.
    let secret = Secret::new(b"fuzzing-secret-0123456789");
    if let Some(b) = data
        .get(..CLIENT_HELLO_LEN)
        .and_then(|b| <&[u8; CLIENT_HELLO_LEN]>::try_from(b).ok())
    {
        let _ = judge_client_hello(b, &[7; 32], Some(&secret));
        let _ = judge_client_hello(b, &[7; 32], None);
    }
    if let Some(b) = data
        .get(..SERVER_HELLO_LEN)
        .and_then(|b| <&[u8; SERVER_HELLO_LEN]>::try_from(b).ok())
    {
        if let Ok((server, _)) = answer_server_hello(b, [9; 32], Some(&secret)) {
            let _ = check_server_accept(b, &server, &[9; 32], Some(&secret));
        }
        let _ = answer_server_hello(b, [9; 32], None);
    }
}

/// A decoded frame encodes to bytes that decode to the same frame.
fn roundtrip(frame: &Frame, limits: &FrameLimits) {
    let bytes = match frame {
        Frame::Batch { seq, entries } => {
            if entries.iter().any(Result::is_err) {
                return;
            }
            let encoded: Vec<Vec<u8>> = entries.iter().flatten().map(Envelope::encode).collect();
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            encode_batch(*seq, &refs)
        }
        Frame::Ack { seq, verdicts } => encode_ack(*seq, verdicts),
        Frame::Ping { seq } => encode_ping(*seq),
        Frame::Pong { seq } => encode_pong(*seq),
        Frame::Error { message } => encode_error(message),
    };
    let again = decode_frame(&bytes[FRAME_HEADER_LEN..], limits);
    assert_eq!(
        again.as_ref(),
        Ok(frame),
        "frame did not survive a round trip"
    );
}

/// Drive both sides of the handshake from arbitrary bytes (the handshake fuzz
/// target and the corpus replay call this). First an honest exchange with
/// the input's nonces, each side with or without the secret as the first
/// byte says: peers that agree must succeed, peers that do not must stop
/// where the protocol says. Then the rest of the input plays an attacker
/// that sends made-up messages, messages of the honest exchange (whole,
/// cut, spliced, or in the wrong place) and replays to a listener and a
/// sender whose nonces it does not choose: nothing may panic, and no
/// message passes a secret check unless it is a replay for the very same
/// nonces.
pub(crate) fn fuzz_handshake(data: &[u8]) {
    const VICTIM_SERVER_NONCE: [u8; 32] = [0xA5; 32];
    const VICTIM_CLIENT_NONCE: [u8; 32] = [0x5A; 32];
    let secret = Secret::new(b"fuzzing-secret-0123456789");
    let mut input = FuzzInput(data);
    let setup = input.byte();
    let server_secret = (setup & 1 != 0).then_some(&secret);
    let client_secret = (setup & 2 != 0).then_some(&secret);
    let (ns, nc) = (input.arr32(), input.arr32());

    // The honest exchange.
    let hello = ServerHello {
        version: PROTOCOL_VERSION,
        flags: if server_secret.is_some() {
            FLAG_SECRET
        } else {
            0
        },
        nonce: ns,
    }
    .encode();
    let mut observed: Vec<Vec<u8>> = vec![hello.to_vec()];
    let answered = answer_server_hello(&hello, nc, client_secret);
    match (server_secret.is_some(), client_secret.is_some()) {
        (true, false) => assert_eq!(answered, Err(HandshakeRefusal::SecretRequired)),
        (false, true) => assert_eq!(answered, Err(HandshakeRefusal::SecretNotOffered)),
        _ => assert!(answered.is_ok(), "honest peers disagree: {answered:?}"),
    }
    let honest_server = match answered {
        Ok((server, client_hello)) => {
            let client_hello = client_hello.encode();
            let (accept, verdict) = judge_client_hello(&client_hello, &ns, server_secret);
            assert!(verdict.is_ok(), "honest client hello refused: {verdict:?}");
            let accept = accept.encode();
            assert_eq!(
                check_server_accept(&accept, &server, &nc, client_secret),
                Ok(()),
                "honest accept refused"
            );
            // Honest messages in the wrong place are refused wherever a
            // secret is checked.
            for wrong in [&hello[..], &accept[..]] {
                if server_secret.is_some() {
                    assert!(
                        judge_client_hello(&fit(wrong), &ns, server_secret)
                            .1
                            .is_err()
                    );
                }
            }
            for wrong in [&hello[..], &client_hello[..]] {
                assert!(check_server_accept(&fit(wrong), &server, &nc, client_secret).is_err());
            }
            observed.push(client_hello.to_vec());
            observed.push(accept.to_vec());
            Some(server)
        }
        Err(_) => None,
    };

    // The attacker.
    while !input.is_empty() {
        let op = input.byte();
        let message = input.message(&observed);
        match op % 4 {
            // A client hello at a listener with its own nonce.
            0 => {
                let bytes = fit::<CLIENT_HELLO_LEN>(&message);
                let (accept, verdict) =
                    judge_client_hello(&bytes, &VICTIM_SERVER_NONCE, Some(&secret));
                if verdict.is_ok() {
                    assert!(
                        ns == VICTIM_SERVER_NONCE && client_secret.is_some(),
                        "a client hello not made for this listener's nonce passed the secret check"
                    );
                } else {
                    assert_ne!(accept.status, AcceptStatus::Ok as u8);
                    assert_eq!(accept.mac, [0; 32], "a refusal must not carry a proof");
                }
                let _ = judge_client_hello(&bytes, &VICTIM_SERVER_NONCE, None);
            }
            // A server hello, then an accept, at a sender with its own nonce.
            1 => {
                let bytes = fit::<SERVER_HELLO_LEN>(&message);
                let _ = answer_server_hello(&bytes, VICTIM_CLIENT_NONCE, None);
                if let Ok((server, _)) =
                    answer_server_hello(&bytes, VICTIM_CLIENT_NONCE, Some(&secret))
                {
                    let accept = fit::<SERVER_ACCEPT_LEN>(&input.message(&observed));
                    if check_server_accept(&accept, &server, &VICTIM_CLIENT_NONCE, Some(&secret))
                        .is_ok()
                    {
                        assert!(
                            nc == VICTIM_CLIENT_NONCE
                                && server.nonce == ns
                                && server_secret.is_some(),
                            "an accept not made for this sender's nonce passed the secret check"
                        );
                    }
                }
            }
            // An accept at the honest sender, after its own exchange.
            2 => {
                if let Some(server) = &honest_server {
                    let accept = fit::<SERVER_ACCEPT_LEN>(&message);
                    if check_server_accept(&accept, server, &nc, client_secret).is_ok()
                        && client_secret.is_some()
                    {
                        assert_eq!(
                            &accept[8..],
                            &observed[2][8..],
                            "only the listener's own proof passes"
                        );
                    }
                }
            }
            // The decoders alone: what decodes encodes to what decodes the same.
            _ => {
                if let Ok(h) = ServerHello::decode(&fit(&message)) {
                    assert_eq!(ServerHello::decode(&h.encode()).as_ref(), Ok(&h));
                }
                if let Ok(h) = ClientHello::decode(&fit(&message)) {
                    assert_eq!(ClientHello::decode(&h.encode()).as_ref(), Ok(&h));
                }
                if let Ok(a) = ServerAccept::decode(&fit(&message)) {
                    assert_eq!(ServerAccept::decode(&a.encode()).as_ref(), Ok(&a));
                }
            }
        }
    }
}

/// The first `N` bytes of `b`, zero-padded.
fn fit<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// The fuzz input, read front to back; reads past the end give zeros.
struct FuzzInput<'a>(&'a [u8]);

impl<'a> FuzzInput<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn arr32(&mut self) -> [u8; 32] {
        fit(self.take(32))
    }
    /// Up to three pieces, each either bytes of the input or a slice of a
    /// message seen in the honest exchange.
    fn message(&mut self, observed: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces = 1 + self.byte() % 3;
        for _ in 0..pieces {
            let len = usize::from(self.byte()) % (CLIENT_HELLO_LEN + 1);
            if self.byte().is_multiple_of(2) {
                out.extend_from_slice(self.take(len));
            } else {
                let seen = &observed[usize::from(self.byte()) % observed.len()];
                let from = usize::from(self.byte()) % seen.len();
                let to = (from + len).min(seen.len());
                out.extend_from_slice(&seen[from..to]);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use super::*;
    use crate::transport::wire::Verdict;

    #[test]
    fn handshake_fuzz_entry_point_survives_simple_inputs() {
        for setup in 0..4u8 {
            let mut input = vec![setup];
            input.extend_from_slice(&[0x11; 32]);
            input.extend_from_slice(&[0x22; 32]);
            fuzz_handshake(&input);
            // Replays of every honest message to every victim, whole.
            for op in 0..4u8 {
                for seen in 0..3u8 {
                    input.extend_from_slice(&[op, 0, 72, 1, seen, 0, 0, 40, 1, seen, 0]);
                }
            }
            fuzz_handshake(&input);
        }
        fuzz_handshake(&[]);
        fuzz_handshake(&[3; 200]);
    }

    #[test]
    fn fuzz_entry_point_survives_simple_inputs() {
        let good = Envelope::new("A", b"{}".to_vec()).encode();
        for input in [
            Vec::new(),
            vec![0; 3],
            encode_batch(1, &[&good]),
            encode_ack(2, &[Verdict::Accepted]),
            [encode_ping(1), encode_pong(1)].concat(),
            u32::MAX.to_le_bytes().to_vec(),
        ] {
            fuzz_decode(&input);
        }
    }

    /// A fuzz target's entry point.
    type Entry = fn(&[u8]);

    /// The fuzz targets and their entry points.
    const TARGETS: &[(&str, Entry)] = &[
        ("frame_decoder", fuzz_decode),
        ("handshake", fuzz_handshake),
    ];

    fn corpus_root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_corpus_input_replays_cleanly() {
        let root = corpus_root();
        let start = Instant::now();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("the fuzz corpus {} is missing: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        // Every target has a corpus, and every corpus a target.
        for (target, _) in TARGETS {
            assert!(
                dirs.iter().any(|d| d.ends_with(target)),
                "no corpus for the fuzz target {target} in {}",
                root.display()
            );
        }
        let mut failures = Vec::new();
        let mut replayed = 0;
        for dir in &dirs {
            let name = dir.file_name().unwrap().to_string_lossy();
            let Some((_, entry)) = TARGETS.iter().find(|(t, _)| *t == name) else {
                panic!(
                    "{} is a corpus of no known fuzz target (known: {:?})",
                    dir.display(),
                    TARGETS.iter().map(|(t, _)| t).collect::<Vec<_>>()
                );
            };
            let inputs = files(dir);
            assert!(
                inputs.len() >= 10,
                "the corpus {} holds only {} input(s): run the seed generator and the fuzzer (fuzz/README.md)",
                dir.display(),
                inputs.len()
            );
            for path in inputs {
                let data = std::fs::read(&path).unwrap();
                if let Err(panic) = std::panic::catch_unwind(|| entry(&data)) {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{}: {why}", path.display()));
                }
                replayed += 1;
            }
        }
        eprintln!(
            "replayed {replayed} corpus inputs of {} targets in {:?}",
            dirs.len(),
            start.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{} corpus input(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    // ---------------------------------------------------------------------------
    // Seeds
    // ---------------------------------------------------------------------------

    fn envelopes() -> Vec<Envelope> {
        let plain = Envelope::new(
            "OrderPlaced",
            br#"{"order_id":"o-1","amount_cents":100}"#.to_vec(),
        );
        let mut full = Envelope::new("billing.Invoice", vec![0xff, 0, 1, 2, 3]);
        full.content_type = "application/octet-stream".into();
        full.destination = Some("durable://127.0.0.1:7000/audit".into());
        full.source = Some("durable://127.0.0.1:7001".into());
        full.reply_uri = Some("durable://127.0.0.1:7001/orders".into());
        full.correlation_id = Some("corr-1".into());
        full.conversation_id = Some("conv-1".into());
        full.causation_id = Some("cause-1".into());
        full.headers.insert("a".into(), "1".into());
        full.headers.insert("trace".into(), "00-abc-def-01".into());
        full.attempts = 3;
        full.scheduled_at = Some(1_700_000_000_000);
        full.deliver_by = Some(1_700_000_060_000);
        let empty = Envelope::new("", Vec::new());
        vec![plain, full, empty]
    }

    fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let encoded: Vec<Vec<u8>> = envelopes().iter().map(Envelope::encode).collect();
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let ack = encode_ack(
            7,
            &[
                Verdict::Accepted,
                Verdict::Rejected("no plugin on this host handles message type 'X'".into()),
                Verdict::UnknownDestination("no plugin named 'q' is loaded on this host".into()),
            ],
        );
        let client_hello = ClientHello {
            version: 1,
            nonce: [1; 32],
            mac: [2; 32],
        }
        .encode();
        let server_hello = ServerHello {
            version: 1,
            flags: FLAG_SECRET,
            nonce: [3; 32],
        }
        .encode();
        vec![
            ("batch-1", encode_batch(1, &refs[..1])),
            ("batch-3", encode_batch(2, &refs)),
            ("batch-bad-entry", encode_batch(3, &[refs[0], b"garbage"])),
            ("batch-empty", encode_batch(4, &[])),
            ("ack", ack.clone()),
            ("ping", encode_ping(5)),
            ("pong", encode_pong(5)),
            ("error", encode_error("the host is shutting down")),
            (
                "stream",
                [
                    encode_ping(1),
                    encode_batch(2, &refs[..2]),
                    ack,
                    encode_error("bye"),
                ]
                .concat(),
            ),
            ("client-hello", client_hello.to_vec()),
            ("server-hello", server_hello.to_vec()),
            ("length-0", 0u32.to_le_bytes().to_vec()),
            ("length-max", u32::MAX.to_le_bytes().to_vec()),
        ]
    }

    fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
        let mut seeds = Vec::new();
        for setup in 0..4u8 {
            let mut honest = vec![setup];
            honest.extend_from_slice(&[0x11; 32]);
            honest.extend_from_slice(&[0x22; 32]);
            seeds.push((format!("honest-{setup}"), honest.clone()));
            // Each observed message, whole, to each victim.
            let mut replays = honest.clone();
            for op in 0..4u8 {
                for seen in 0..3u8 {
                    // op, then one piece: 72 bytes of observed message `seen`.
                    replays.extend_from_slice(&[op, 0, 72, 1, seen, 0]);
                    if op == 1 {
                        // The victim sender also reads an accept.
                        replays.extend_from_slice(&[0, 40, 1, (seen + 2) % 3, 0]);
                    }
                }
            }
            seeds.push((format!("replays-{setup}"), replays));
            // Spliced: an observed header with a made-up tail, to each victim.
            let mut spliced = honest.clone();
            for op in 0..4u8 {
                spliced.extend_from_slice(&[op, 1, 8, 1, 1, 0, 64, 0]);
                spliced.extend_from_slice(&[0x33; 64]);
            }
            seeds.push((format!("spliced-{setup}"), spliced));
            // Made-up messages of the right shape.
            let mut made_up = honest;
            let hello = ClientHello {
                version: 1,
                nonce: [0x44; 32],
                mac: [0x55; 32],
            }
            .encode();
            made_up.extend_from_slice(&[0, 0, 72, 0]);
            made_up.extend_from_slice(&hello);
            let server = ServerHello {
                version: 1,
                flags: FLAG_SECRET,
                nonce: [0x66; 32],
            }
            .encode();
            made_up.extend_from_slice(&[1, 0, 40, 0]);
            made_up.extend_from_slice(&server);
            made_up.extend_from_slice(&[0, 40, 0]);
            made_up.extend_from_slice(&[b'J', b'S', b'P', b'R', 0, 0, 0, 0]);
            made_up.extend_from_slice(&[0x77; 32]);
            seeds.push((format!("made-up-{setup}"), made_up));
        }
        seeds
    }

    /// Writes the seed inputs into `fuzz/corpus/<target>/seed-*`:
    /// `cargo test --release -p jasper-host --lib -- --ignored write_seed_corpus`.
    #[test]
    #[ignore = "writes the seed corpus; run by hand (fuzz/README.md)"]
    fn write_seed_corpus() {
        let root = corpus_root();
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        };
        for (name, data) in frame_seeds() {
            fuzz_decode(&data);
            write("frame_decoder", name, &data);
        }
        for (name, data) in handshake_seeds() {
            fuzz_handshake(&data);
            write("handshake", &name, &data);
        }
    }
}
