#!/usr/bin/env bash
# Measures OTP verification + token issue per second on this machine.
# Usage: bench/auth.sh [identities] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export IDENTITIES=${1:-64} PORT=${PORT:-18181} DATA=$(mktemp -d)
seconds=${2:-20}
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
pid=$(bench/server.sh)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$DATA"' EXIT
"${CARGO_TARGET_DIR:-./target}/release/codeedex-loadgen" --server "http://127.0.0.1:$PORT" --server-pid "$pid" auth \
  --identities "$IDENTITIES" --seconds "$seconds" --sign-ins 1000000
