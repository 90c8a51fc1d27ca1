#!/usr/bin/env bash
# Runs the sync scenarios (fan-out, idle sockets, catch-up) against a release
# server on this machine and prints the results.
# Usage: bench/sync.sh   (env: SECONDS_FANOUT, IDLE_CONNECTIONS)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
export PORT=${PORT:-18182} DATA=$(mktemp -d)
ulimit -n 65536 2>/dev/null || true
pid=$(bench/server.sh)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$DATA"' EXIT
lg() { "${CARGO_TARGET_DIR:-./target}/release/codeedex-loadgen" --server "http://127.0.0.1:$PORT" --server-pid "$pid" "$@"; }
lg fanout --users 4 --devices 3 --tasks 20 --rate 5 --seconds "${SECONDS_FANOUT:-10}"
lg idle --connections "${IDLE_CONNECTIONS:-10000}" --users 10 --concurrency 64 --hold 3
lg catchup --tasks 1000 --edits 10
lg catchup --tasks 1000 --edits 10 --without-extension
