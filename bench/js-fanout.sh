#!/usr/bin/env bash
# Ten stock automerge-repo JS devices editing one shared document
# (bench/reference/js-fanout.mjs), against the reference automerge-repo sync
# server and against codeedex-server with coalescing off
# (CODEEDEX_SYNC_COALESCE_MS=0, every change answered at once) and on (the
# default), at each offered rate, in one run. Prints one JSON line per run:
# frames up and down per edit, edits delivered to every other device per
# second, the fan-out latency, and its parts (the clients' batching, the
# transit through the server, the receiving client's share).
# Usage: bench/js-fanout.sh   (env: RATES="20 50", SECONDS_EACH=10,
#        COALESCES="0 default" : coalescing bounds in ms to run ours with)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server
(cd bench/reference && npm ci --no-audit --no-fund --silent)
rates=${RATES:-20 50}
seconds=${SECONDS_EACH:-10}
pin_server=(); pin_clients=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0); pin_clients=(taskset -c 1)
fi
run_clients() { (cd bench/reference && "${pin_clients[@]}" node js-fanout.mjs "$@"); }
for rate in $rates; do
  ref_data=$(mktemp -d)
  PORT=18310 DATA="$ref_data" "${pin_server[@]}" node bench/reference/server.mjs > "$ref_data/server.log" 2>&1 &
  ref_pid=$!
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/18310) 2>/dev/null && break; sleep 0.1; done
  printf 'reference            %s\n' "$(run_clients --no-auth --url ws://127.0.0.1:18310 --rate "$rate" --seconds "$seconds")"
  kill "$ref_pid"; wait "$ref_pid" 2>/dev/null || true; rm -rf "$ref_data"
  for coalesce in ${COALESCES:-0 default}; do
    data=$(mktemp -d)
    if [ "$coalesce" = default ]; then unset CODEEDEX_SYNC_COALESCE_MS; else export CODEEDEX_SYNC_COALESCE_MS="$coalesce"; fi
    pid=$(PORT=18311 DATA="$data" "${pin_server[@]}" bench/server.sh)
    printf 'codeedex coalesce=%-3s %s\n' "$coalesce" \
      "$(run_clients --url ws://127.0.0.1:18311/v1/sync --server http://127.0.0.1:18311 --rate "$rate" --seconds "$seconds")"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$data"
  done
done
