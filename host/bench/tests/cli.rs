//! The benchmark binaries' command lines: `--help` prints the usage, and a bad
//! flag or value ends in one plain line and the usage (status 2), never a
//! backtrace, even with RUST_BACKTRACE set. None of these touch a database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

const BINARIES: [&str; 4] = [
    env!("CARGO_BIN_EXE_jasper-bench"),
    env!("CARGO_BIN_EXE_jasper-cluster-bench"),
    env!("CARGO_BIN_EXE_jasper-tcp-bench"),
    env!("CARGO_BIN_EXE_jasper-rabbit-bench"),
];

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `bench` with `args` ends with status 2 and says `says`.
fn refused(bench: &str, args: &[&str], says: &str) {
    let out = run(bench, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = text(&out.stderr);
    assert!(err.contains(says), "{args:?}: {err}");
}

#[test]
fn help_prints_the_usage_and_succeeds() {
    for bin in BINARIES {
        let out = run(bin, &["--help"]);
        assert!(out.status.success(), "{bin} --help: {:?}", out.status);
        assert!(
            text(&out.stdout).starts_with("usage: "),
            "{bin}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn a_bad_flag_is_one_plain_line_and_the_usage() {
    for bin in BINARIES {
        let out = run(bin, &["--bogus"]);
        assert_eq!(out.status.code(), Some(2), "{bin}");
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{bin}: {err}");
        assert!(
            lines[0].ends_with("unknown argument --bogus"),
            "{bin}: {err}"
        );
        assert!(lines[1].starts_with("usage: "), "{bin}: {err}");
        assert!(
            !err.contains("backtrace") && !err.contains("panicked"),
            "{bin}: {err}"
        );
    }
}

#[test]
fn jasper_bench_names_the_value_at_fault() {
    let bench = BINARIES[0];
    for (args, says) in [
        (
            &["--messages", "many"][..],
            "--messages \"many\": expected a count",
        ),
        (
            &["--batch-size", "0"][..],
            "--batch-size must be between 1 and 10000",
        ),
        (
            &["--batches-in-flight", "9"][..],
            "--batches-in-flight must be between 1 and 8",
        ),
        (
            &["--max-in-flight", "0"][..],
            "--max-in-flight must be at least 1",
        ),
        (&["--rate"][..], "--rate needs a value"),
    ] {
        refused(bench, args, says);
    }
}

#[test]
fn jasper_rabbit_bench_names_the_value_at_fault() {
    let bench = BINARIES[3];
    for (args, says) in [
        (
            &["--queue-type", "stream"][..],
            "--queue-type \"stream\": expected classic or quorum",
        ),
        (
            &["--reps", "0"][..],
            "--messages and --reps must be at least 1",
        ),
        (&["--reps", "two"][..], "--reps \"two\": expected a count"),
    ] {
        refused(bench, args, says);
    }
}
