//! Replays the cargo-fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points as the fuzz targets, so every input the fuzzer kept
//! (and every crash it found, once fixed) stays a regression test without
//! the fuzzer. Also holds the generator of the seed inputs (ignored; see
//! `fuzz/README.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use jasper_host::Envelope;
use jasper_host::transport::wire::{self, ClientHello, FLAG_SECRET, ServerHello, Verdict};

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// The fuzz targets and their entry points.
const TARGETS: &[(&str, Entry)] = &[
    ("frame_decoder", wire::fuzz_decode),
    ("handshake", wire::fuzz_handshake),
];

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
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
    let ack = wire::encode_ack(
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
        ("batch-1", wire::encode_batch(1, &refs[..1])),
        ("batch-3", wire::encode_batch(2, &refs)),
        (
            "batch-bad-entry",
            wire::encode_batch(3, &[refs[0], b"garbage"]),
        ),
        ("batch-empty", wire::encode_batch(4, &[])),
        ("ack", ack.clone()),
        ("ping", wire::encode_ping(5)),
        ("pong", wire::encode_pong(5)),
        ("error", wire::encode_error("the host is shutting down")),
        (
            "stream",
            [
                wire::encode_ping(1),
                wire::encode_batch(2, &refs[..2]),
                ack,
                wire::encode_error("bye"),
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
/// `cargo test --release -p jasper-host --test fuzz_corpus -- --ignored`.
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
        wire::fuzz_decode(&data);
        write("frame_decoder", name, &data);
    }
    for (name, data) in handshake_seeds() {
        wire::fuzz_handshake(&data);
        write("handshake", &name, &data);
    }
}
