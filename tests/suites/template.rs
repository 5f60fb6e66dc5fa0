//! The README's handler path, step by step: `jasper-host new`, the new
//! crate's native tests, its wasm32-wasip2 build, and a host that loads the
//! `.wasm` and handles a message sent with `jasper-host send`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jasper_e2e::{HostConfig, TestHost, host_bin, target_dir};

/// `cargo` as the test run's own (cargo sets `CARGO` for its test binaries).
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` in `dir` and panics with its output unless it exits 0.
fn run_ok(mut cmd: Command, dir: &Path, what: &str) -> String {
    // The generated crate builds into a target dir of its own under the
    // workspace's (kept between runs, so a rerun is incremental), as the
    // README's `cargo build` does into the crate's `target/`.
    let out = cmd
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir().join("handler-template"))
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_handler_path_builds_a_plugin_that_handles_a_message() {
    let work = tempfile::tempdir().unwrap();

    // 1. jasper-host new greeter
    let mut new = Command::new(host_bin());
    new.args(["new", "greeter"]);
    let printed = run_ok(new, work.path(), "jasper-host new greeter");
    let krate = work.path().join("greeter");
    assert!(
        printed.contains("cargo build --release --target wasm32-wasip2"),
        "{printed}"
    );

    // 2. cargo test: the handler's native tests run and pass.
    let mut test = cargo();
    test.arg("test");
    let tested = run_ok(test, &krate, "cargo test in the new crate");
    assert!(
        tested.contains("test result: ok. 3 passed"),
        "the template's 3 native tests did not all run:\n{tested}"
    );

    // 3. cargo build --release --target wasm32-wasip2: one component .wasm.
    let mut build = cargo();
    build.args(["build", "--release", "--target", "wasm32-wasip2"]);
    run_ok(
        build,
        &krate,
        "cargo build --release --target wasm32-wasip2",
    );
    let wasm = target_dir().join("handler-template/wasm32-wasip2/release/greeter.wasm");
    let size = fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("no {} after the build: {e}", wasm.display()))
        .len();
    eprintln!("greeter.wasm: {size} bytes");

    // 4. The crate's own jasper.toml, its plugin folder holding the .wasm.
    let config = fs::read_to_string(krate.join("jasper.toml")).unwrap();
    let host = TestHost::with_config_text(&[], &config, &HostConfig::new());
    fs::copy(&wasm, host.root().join("plugins/greeter.wasm")).unwrap();
    let listed = host.cli(&["plugins", "list"], &[]);
    listed.assert_success();
    assert!(
        listed.stdout.contains("handles: Greet, Greeted"),
        "{}",
        listed.all_output()
    );

    // 5. jasper-host run, then jasper-host send: Greet and the Greeted it
    // published are handled, the count is in the plugin's state.
    host.spawn();
    host.cli(
        &["send"],
        &["--type", "Greet", "--body", r#"{"name":"ann"}"#],
    )
    .assert_success();
    let db = host.db();
    let p = host
        .wait_for(
            "Greet and Greeted handled",
            Duration::from_secs(60),
            || db.progress(),
            |p| p.get("Greet", "handled") == 1 && p.get("Greeted", "handled") == 1,
        )
        .await;
    assert_eq!(p.dead_letters, 0, "{p:?}");
    let count = db.state_get("greeter", "greeted/ann").await.unwrap();
    assert_eq!(count.map(|r| r.as_i64().unwrap()), Some(1));
    host.wait_for_log(
        "the Greeted handler's log line",
        0,
        &["greeted ann (1 times)"],
        Duration::from_secs(10),
    )
    .await;
    host.stop();
}
