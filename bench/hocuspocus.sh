#!/usr/bin/env bash
# Issue 13's "ten users at the same instant", side by side in one run:
# codeedex-server with codeedex-loadgen, and Hocuspocus (in memory, no
# persistence) with its own provider (bench/hocuspocus/fanout.mjs), both on
# 10 documents x 5 devices at 0.5 edits/s per device, with arrivals together
# (device d of every document at the same instant) and random (a seeded
# Poisson process per device), alternating servers, ROUNDS times.
# DATA_BASES lists where our data directory goes, one run of ours for each
# (for example "/tmp /dev/shm", to see in the same run what the disk
# costs). Prints one latency line per run.
# Usage: bench/hocuspocus.sh   (env: ROUNDS=2, SECONDS_EACH=15, DATA_BASES=/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
(cd bench/hocuspocus && npm ci --no-audit --no-fund --silent)
rounds=${ROUNDS:-2}
seconds=${SECONDS_EACH:-15}
loadgen=${CARGO_TARGET_DIR:-./target}/release/codeedex-loadgen
for round in $(seq "$rounds"); do
  for arrivals in together random; do
    (cd bench/hocuspocus && exec node fanout.mjs --serve --port 18360) > /dev/null 2>&1 &
    hp_pid=$!
    for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/18360) 2>/dev/null && break; sleep 0.1; done
    printf 'hocuspocus %-8s %s\n' "$arrivals" "$(cd bench/hocuspocus && node fanout.mjs --url ws://127.0.0.1:18360 \
      --docs 10 --devices 5 --rate 0.5 --seconds "$seconds" --arrivals "$arrivals" | grep latency)"
    kill "$hp_pid"; wait "$hp_pid" 2>/dev/null || true
    for base in ${DATA_BASES:-${DATA_BASE:-/tmp}}; do
      data=$(mktemp -d -p "$base")
      pid=$(PORT=18361 DATA="$data" bench/server.sh)
      printf 'codeedex   %-8s %-9s %s\n' "$arrivals" "$base" "$("$loadgen" --server http://127.0.0.1:18361 fanout \
        --users 10 --devices 5 --tasks 1 --rate 0.5 --seconds "$seconds" --arrivals "$arrivals" | grep latency)"
      kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$data"
    done
  done
done
