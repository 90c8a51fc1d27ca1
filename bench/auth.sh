#!/usr/bin/env bash
# Measures OTP verification + token issue per second on this machine.
# Usage: bench/auth.sh [identities] [seconds]
# Builds release binaries, starts a server on 127.0.0.1 with fixed test codes
# for the bench identities, runs the load generator, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
identities=${1:-64}
seconds=${2:-20}
port=${PORT:-18181}
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
data=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; rm -rf "$data"' EXIT
codes=$(for i in $(seq 0 $((identities - 1))); do printf 'bench-%d@example.com=123456,' "$i"; done)
CODEEDEX_TEST_CODES="${codes%,}" ./target/release/codeedex-server \
  --listen "127.0.0.1:$port" --data-dir "$data" --log warn \
  --test-codes-expire "$(date -u -d '+1 day' +%F)" \
  --otp-resend-cooldown-secs 0 --otp-hourly-cap 100000 --otp-daily-cap 100000 \
  --ip-send-limit 1000000 --ip-verify-limit 1000000 > "$data/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
./target/release/codeedex-loadgen --server "http://127.0.0.1:$port" auth \
  --identities "$identities" --seconds "$seconds" --sign-ins 1000000
