#!/usr/bin/env bash
# Soak: an hour of mixed load (sign-ins with refreshes and logouts, sync
# edits, REST, reconnects, idle sockets) against a release server, with its
# RSS, open fds, threads, size on disk and latency sampled every minute.
# Fails if any of them grows without bound (see `verdict` in
# loadgen/src/scenario/soak.rs) or if any operation fails.
# Usage: bench/soak.sh   (env: SOAK_SECONDS=3600, SAMPLE_SECS=60,
#                          EDITORS=20, IDLE=200, BUILD=release|debug)
# CI runs it for one minute through bench/smoke.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-release}
if [[ "$build" == release ]]; then
    cargo build --release --locked -p codeedex-server -p codeedex-loadgen
else
    cargo build --locked -p codeedex-server -p codeedex-loadgen
fi
export BIN_DIR=${CARGO_TARGET_DIR:-./target}/$build PORT=${PORT:-18183} DATA=$(mktemp -d)
ulimit -n 65536 2>/dev/null || true
pid=$(bench/server.sh)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN_DIR/codeedex-loadgen" --server "http://127.0.0.1:$PORT" --server-pid "$pid" soak \
    --seconds "${SOAK_SECONDS:-3600}" --sample-secs "${SAMPLE_SECS:-60}" \
    --editors "${EDITORS:-20}" --idle "${IDLE:-200}" --data-dir "$DATA"
