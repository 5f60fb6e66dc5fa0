//! Shared by the host's integration tests: where the built plugins are.

#![allow(dead_code, clippy::panic)]

use std::path::PathBuf;

/// A plugin built by `make plugins`; fails loudly (with the command) if missing.
pub fn wasm(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}
