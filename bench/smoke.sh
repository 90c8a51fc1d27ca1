#!/usr/bin/env bash
# Runs every load-generator scenario in a smoke form of a few seconds against
# a debug build, so that the generator and the bench scripts cannot rot.
# Asserts nothing about speed: only that each scenario runs to the end and did
# its work (a sign-in, an edit delivered, a change acknowledged; no failed
# sign-in, no missing delivery, no acknowledged change lost in a crash).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p codeedex-server -p codeedex-loadgen
export BIN_DIR=${CARGO_TARGET_DIR:-./target}/debug PORT=${PORT:-18191} IDENTITIES=64 DATA=$(mktemp -d)
pid=$(bench/server.sh)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$DATA"' EXIT
lg() { "$BIN_DIR/codeedex-loadgen" "$@"; }
on() { lg --server "http://127.0.0.1:$PORT" --server-pid "$pid" "$@"; }
lg echo --round-trips 200
lg fsync --dir "$DATA" --rounds 50
lg automerge-floor --edits 50
on auth --identities 4 --seconds 2
on fanout --users 2 --devices 2 --tasks 3 --rate 5 --seconds 2
on saturation --users 1 --devices 2 --tasks 3 --start-rate 5 --steps 2 --seconds 1
on idle --connections 50 --users 2 --concurrency 8 --hold 1
on catchup --tasks 50 --edits 3
on ingest --devices 4 --users 2 --batch 4 --seconds 2
# The soak for one minute, sampled every 5 s; bench/soak.sh runs the hour.
on soak --seconds 60 --sample-secs 5 --editors 4 --idle 20 --data-dir "$DATA"
lg crash --server-bin "$BIN_DIR/codeedex-server" --cycles 2 --writers 2 --port $((PORT + 1))
lg coldstart --server-bin "$BIN_DIR/codeedex-server" --documents 300 --connections 2 --port $((PORT + 2))
lg storm --server-bin "$BIN_DIR/codeedex-server" --devices 200 --users 4 --connection-burst 50 --port $((PORT + 3))
echo "smoke: every scenario ran"
