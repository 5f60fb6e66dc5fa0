//! Where the harness finds things: the workspace, the target dir, the host
//! binary and the plugins, each checked not to be older than its sources.

use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

/// The workspace root (the folder holding the root Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target dir: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Newest modification time of the files under `paths` (files or folders).
/// `skip` folders are not looked into.
fn newest_mtime(paths: &[PathBuf], skip: &[PathBuf]) -> Option<(SystemTime, PathBuf)> {
    fn walk(
        p: &Path,
        skip: &[PathBuf],
        best: &mut Option<(SystemTime, PathBuf)>,
        budget: &mut u32,
    ) {
        if *budget == 0 || skip.iter().any(|s| s == p) {
            return;
        }
        *budget -= 1;
        let Ok(md) = fs::metadata(p) else { return };
        if md.is_dir() {
            let Ok(rd) = fs::read_dir(p) else { return };
            for e in rd.flatten() {
                walk(&e.path(), skip, best, budget);
            }
        } else if let Ok(m) = md.modified()
            && best.as_ref().is_none_or(|(b, _)| m > *b)
        {
            *best = Some((m, p.to_path_buf()));
        }
    }
    let mut best = None;
    let mut budget = 10_000;
    for p in paths {
        walk(p, skip, &mut best, &mut budget);
    }
    best
}

/// Panics unless `artifact` exists and is newer than every file of `sources`.
fn check_artifact(artifact: &Path, what: &str, sources: &[PathBuf], skip: &[PathBuf], build: &str) {
    let md = fs::metadata(artifact).unwrap_or_else(|e| {
        panic!(
            "{what} not found at {} ({e}).\nBuild it first, from {}:\n    {build}",
            artifact.display(),
            workspace_root().display()
        )
    });
    if std::env::var_os("E2E_ALLOW_STALE").is_some() {
        return;
    }
    if let (Ok(built), Some((src_time, src))) = (md.modified(), newest_mtime(sources, skip))
        && src_time > built
    {
        panic!(
            "{what} at {} is older than {} (edited after the last build).\nRebuild it, from {}:\n    {build}\n(or set E2E_ALLOW_STALE=1 to test the old build anyway)",
            artifact.display(),
            src.display(),
            workspace_root().display()
        );
    }
}

/// The host binary, checked to exist and to be newer than host/ and wit/.
pub fn host_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("JASPER_HOST_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "JASPER_HOST_BIN={} is not a file", p.display());
        return p;
    }
    let root = workspace_root();
    let bin = target_dir().join("release").join("jasper-host");
    check_artifact(
        &bin,
        "the jasper-host binary",
        &[
            root.join("host/src"),
            root.join("host/Cargo.toml"),
            root.join("wit"),
        ],
        // other binaries (jasper-bench) do not go into jasper-host
        &[root.join("host/src/bin")],
        "make build      # = cargo build --release -p jasper-host",
    );
    bin
}

/// Where `make plugins` puts the plugin `name` (the .wasm file stem).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let root = workspace_root();
    let wasm = target_dir()
        .join("wasm32-wasip2")
        .join("plugin")
        .join(format!("{name}.wasm"));
    let src = match name {
        "orders" | "audit" => root.join("plugins-example").join(name),
        other => root.join("tests/plugins").join(other),
    };
    check_artifact(
        &wasm,
        &format!("the plugin {name}.wasm"),
        &[src, root.join("guest-sdk/src"), root.join("wit")],
        &[],
        "make plugins",
    );
    wasm
}

pub(crate) fn rust_log() -> String {
    std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}
