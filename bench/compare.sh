#!/usr/bin/env bash
# Runs scenarios 1-4 (fan-out, saturation, idle sockets, catch-up) against
# the reference automerge-repo sync server and against codeedex-server (with
# auth on) in the same run, and prints both, with the floors measured in the
# same run (WebSocket echo round trip, write + fsync).
# Usage: bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
(cd bench/reference && npm ci --no-audit --no-fund --silent)
ulimit -n 65536 2>/dev/null || true

# Each server runs on core 0 and the generator on core 1 (where taskset
# exists), so that the generator does not take CPU from the server it loads.
pin_server=(); pin_generator=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0); pin_generator=(taskset -c 1)
fi

ref_data=$(mktemp -d)
PORT=18300 DATA="$ref_data" "${pin_server[@]}" node bench/reference/server.mjs > "$ref_data/server.log" 2>&1 &
ref_pid=$!
export PORT=18301 DATA=$(mktemp -d)
our_pid=$("${pin_server[@]}" bench/server.sh)
trap 'kill "$ref_pid" "$our_pid" 2>/dev/null || true; rm -rf "$ref_data" "$DATA"' EXIT
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/18300) 2>/dev/null && break; sleep 0.1; done

lg() { "${pin_generator[@]}" "${CARGO_TARGET_DIR:-./target}/release/codeedex-loadgen" "$@"; }
echo "=== floors"
lg echo --round-trips 5000
lg fsync --dir "$DATA" --rounds 2000
lg automerge-floor --edits 2000
# The Automerge floor at the saturation knee: a document's history there is
# about 640 edits/s x 3 devices x 4 s / 20 tasks = 384 changes.
lg automerge-floor --edits 400 --devices 3
for target in reference codeedex; do
  if [ "$target" = reference ]; then
    args=(--server http://127.0.0.1:18300 --ws-path / --no-auth --server-pid "$ref_pid")
  else
    args=(--server http://127.0.0.1:18301 --server-pid "$our_pid")
  fi
  echo "=== $target"
  lg "${args[@]}" fanout --users 4 --devices 3 --tasks 20 --rate 5 --seconds 10
  lg "${args[@]}" saturation --users 4 --devices 3 --tasks 20 --start-rate 5 --steps 10 --seconds 4
  lg "${args[@]}" idle --connections "${IDLE_CONNECTIONS:-2000}" --users 10 --concurrency 32 --hold 3
  lg "${args[@]}" catchup --tasks 1000 --edits 10 --without-extension
done

# Ten devices on one document at rising offered rates (edits/s over all
# ten), frames and bytes per edit: the Rust generator, then the stock JS
# automerge-repo client (bench/reference/js-fanout.mjs, ten Repos in one
# Node process), against both servers.
rates=${ONE_DOC_RATES:-10 20 50 100 200}
for target in reference codeedex; do
  if [ "$target" = reference ]; then
    args=(--server http://127.0.0.1:18300 --ws-path / --no-auth --server-pid "$ref_pid")
    js=(--no-auth --url ws://127.0.0.1:18300)
  else
    args=(--server http://127.0.0.1:18301 --server-pid "$our_pid")
    js=(--url ws://127.0.0.1:18301/v1/sync --server http://127.0.0.1:18301)
  fi
  echo "=== $target: ten devices on one document"
  for rate in $rates; do
    per_device=$(awk "BEGIN { print $rate / 10 }")
    echo "--- Rust generator, $rate edits/s offered"
    # Past a server's knee some deliveries are missing at the end, which
    # the scenario reports as a failure; here it is the measurement.
    lg "${args[@]}" fanout --users 1 --devices 10 --tasks 1 --rate "$per_device" --seconds 10 \
      || echo "(saturated: deliveries missing)"
    echo "--- stock JS client, $rate edits/s offered"
    (cd bench/reference && "${pin_generator[@]}" node js-fanout.mjs "${js[@]}" --rate "$rate" --seconds 10)
  done
done
