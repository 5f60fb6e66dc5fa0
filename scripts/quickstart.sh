#!/usr/bin/env bash
# The quickstart tour: start a host, send it orders, look at what happened, stop it.
# Run through `make quickstart` (which builds everything and copies the orders and
# audit plugins into ./plugins/ first).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=target/release/jasper-host
CONFIG=examples/jasper.toml

if [[ -t 1 ]]; then
    step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    step() { printf '\n==> %s\n' "$*"; }
fi

if [[ ! -x $BIN ]]; then
    echo "missing $BIN: run 'make build' (or just 'make quickstart')" >&2
    exit 1
fi
for p in orders audit; do
    if [[ ! -f plugins/$p.wasm ]]; then
        echo "missing plugins/$p.wasm: run 'make quickstart' (it builds and copies the plugins)" >&2
        exit 1
    fi
done

# count KEY: one number from `storage counts --json`
count() {
    "$BIN" storage counts --config "$CONFIG" --json \
        | grep -o "\"$1\"[[:space:]]*:[[:space:]]*[0-9]*" | grep -o '[0-9]*$'
}

LOG=$(mktemp -t jasper-quickstart.XXXXXX.log)
HOST_PID=
cleanup() {
    if [[ -n $HOST_PID ]] && kill -0 "$HOST_PID" 2>/dev/null; then
        kill -TERM "$HOST_PID" 2>/dev/null || true
        wait "$HOST_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

step "The config: $CONFIG"
grep -v '^#' "$CONFIG" | sed '/^$/d'

step "Plugins in ./plugins (each .wasm is a message handler)"
"$BIN" plugins list --config "$CONFIG"

step "Starting the host in the background (its log: $LOG)"
echo "$BIN run --config $CONFIG &"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$BIN" run --config "$CONFIG" >"$LOG" 2>&1 &
HOST_PID=$!
echo "host pid $HOST_PID"

# The host creates its tables on start: wait until the store answers.
ready=
for _ in $(seq 1 150); do  # at most ~30 s
    if ! kill -0 "$HOST_PID" 2>/dev/null; then
        echo "the host exited; its log:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    if "$BIN" storage counts --config "$CONFIG" --json >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
done
if [[ -z $ready ]]; then
    echo "the message store did not become ready within 30 s; host log:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
fi

# A database may remain from an earlier run: measure from where it stands.
handled_before=$(count handled)
dead_before=$(count dead_letters)

step "Sending 20 PlaceOrder messages (one JSON body per line on stdin)"
orders=$(for i in $(seq 1 20); do
    printf '{"order_id":"demo-%d","customer":"ann","amount_cents":%d,"remind_after_ms":60000}\n' "$i" $((i * 250))
done)
printf '%s\n' "$orders" | head -n 3
echo "... (20 lines)"
printf '%s\n' "$orders" | "$BIN" send --config "$CONFIG" --type PlaceOrder --file -

step "Sending one PlaceOrder with amount_cents 0 (the orders plugin rejects it)"
"$BIN" send --config "$CONFIG" --type PlaceOrder \
    --body '{"order_id":"demo-zero","customer":"bob","amount_cents":0}'

step "Waiting until they are handled"
# Each order is handled twice: PlaceOrder by orders, then the OrderPlaced it
# publishes by audit. The rejected one goes to dead letters.
want_handled=$((handled_before + 40))
want_dead=$((dead_before + 1))
ok=
for _ in $(seq 1 300); do  # at most ~60 s
    if ! kill -0 "$HOST_PID" 2>/dev/null; then
        echo "the host exited; its log:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    h=$(count handled); d=$(count dead_letters); n=$(count incoming)
    if (( h >= want_handled && d >= want_dead && n == 0 )); then ok=1; break; fi
    sleep 0.2
done
if [[ -z $ok ]]; then
    echo "not all handled within 60 s (handled $h of $want_handled, dead letters $d of $want_dead, incoming $n); host log:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
fi
echo "done: handled $((h - handled_before)) messages, $((d - dead_before)) dead letter"

step "Storage counts (scheduled = the OrderReminder each order scheduled for 60 s later)"
"$BIN" storage counts --config "$CONFIG"

step "Dead letters (the zero-amount order, with why it failed)"
"$BIN" dead-letters list --config "$CONFIG"

step "Stopping the host (SIGTERM)"
kill -TERM "$HOST_PID"
for _ in $(seq 1 150); do  # at most ~30 s
    kill -0 "$HOST_PID" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$HOST_PID" 2>/dev/null; then
    echo "the host did not stop within 30 s of SIGTERM" >&2
    exit 1
fi
status=0
wait "$HOST_PID" || status=$?
HOST_PID=
echo "host exited with status $status. Last lines of its log:"
tail -n 5 "$LOG"

step "Done"
echo "The database is ./jasper.db; look again any time with:"
echo "  $BIN storage counts --config $CONFIG"
echo "  $BIN dead-letters list --config $CONFIG"
