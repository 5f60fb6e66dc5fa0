#!/usr/bin/env bash
# A benchmark of an earlier commit and of this tree, one after the other in
# one command: how issue 11's `durable://` goal ("1.5x today's figure, or the
# figure of the commit before") is measured. The earlier commit is checked
# out in a worktree and built in a target directory of its own (seeded with
# a copy of ./target/release, so only what changed is compiled again: about
# 10 minutes on 2 cores the first time, nothing after). Its no-op plugin is
# built from its own tree (the plugin world changed since).
#
#   scripts/bench-before.sh [REV] [BENCH] [-- ARGS...]
#
# REV defaults to 9ed0938 (the last commit before issue 11's work), BENCH to
# jasper-tcp-bench; ARGS go to both runs (e.g. `-- --seconds 2`). Needs
# `make plugins build` first.
set -euo pipefail

cd "$(dirname "$0")/.."
REV=9ed0938
BENCH=jasper-tcp-bench
if [[ $# -gt 0 && $1 != -- ]]; then REV=$1; shift; fi
if [[ $# -gt 0 && $1 != -- ]]; then BENCH=$1; shift; fi
if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
ARGS=("$@")

if [[ ! -x target/release/$BENCH || ! -f target/wasm32-wasip2/plugin/noop.wasm ]]; then
    echo "missing target/release/$BENCH or the no-op plugin: run 'make plugins build'" >&2
    exit 1
fi
SHORT=$(git rev-parse --short "$REV")
TREE=target/before/$SHORT/tree
OUT=target/before/$SHORT/target
if [[ ! -d $TREE ]]; then
    git worktree add --detach "$TREE" "$REV" >/dev/null
fi
if [[ ! -d $OUT/release ]]; then
    mkdir -p "$OUT"
    cp -a target/release "$OUT/"
fi
(
    cd "$TREE"
    CARGO_TARGET_DIR="$PWD/../target" cargo build --release -q -p jasper-bench --bin "$BENCH"
    CARGO_TARGET_DIR="$PWD/../target" cargo build --profile plugin -q --target wasm32-wasip2 -p noop
)

echo "== $BENCH at $SHORT (before)"
"$OUT/release/$BENCH" --noop "$OUT/wasm32-wasip2/plugin/noop.wasm" "${ARGS[@]}"
echo "== $BENCH at $(git rev-parse --short HEAD) (this tree)"
"./target/release/$BENCH" --noop target/wasm32-wasip2/plugin/noop.wasm "${ARGS[@]}"
