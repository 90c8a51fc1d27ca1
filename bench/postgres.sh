#!/usr/bin/env bash
# The store engines side by side: one node on the embedded store (sled), one
# node on PostgreSQL, and two nodes on one PostgreSQL database (load split
# over both, every change also fanned out to the other node by NOTIFY), in the
# same run. For each: durable changes per second (ingest), edit-to-device
# latency at light load (fanout), and the saturation knee.
# PostgreSQL 15 runs in a temporary cluster with fsync on (a commit is then
# as durable as sled's flush), as the postgres user when run as root.
# Usage: bench/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server -p codeedex-loadgen
ulimit -n 65536 2>/dev/null || true
bin=/usr/lib/postgresql/15/bin
as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)

cluster=$(mktemp -d)
chmod 755 "$cluster"
[ "$(id -u)" = 0 ] && chown postgres "$cluster"
pg_port=18410
"${as_pg[@]}" "$bin/initdb" -D "$cluster/data" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/log" -w \
  -o "-p $pg_port -k $cluster -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  "${as_pg[@]}" "$bin/pg_ctl" -D "$cluster/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$cluster" "${dirs[@]}"
}
dirs=()
trap cleanup EXIT
fresh_db() { "${as_pg[@]}" "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$1"; echo "postgres://postgres@127.0.0.1:$pg_port/$1"; }

lg() { "${CARGO_TARGET_DIR:-./target}/release/codeedex-loadgen" "$@"; }
start() { # port, extra args
  local dir; dir=$(mktemp -d); dirs+=("$dir")
  PORT=$1 DATA=$dir EXTRA_ARGS=${2:-} bench/server.sh
}
run() { # label, server args...
  echo "=== $1"; shift
  lg "$@" ingest --devices 32 --users 8 --batch 16 --seconds 8
  lg "$@" fanout --users 4 --devices 3 --tasks 20 --rate 5 --seconds 8
  lg "$@" saturation --users 4 --devices 3 --tasks 20 --start-rate 5 --steps 8 --seconds 4
}

echo "=== floors"
lg fsync --dir "$cluster" --rounds 2000

pid=$(start 18411); pids+=("$pid")
run "embedded (sled), one node" --server http://127.0.0.1:18411 --server-pid "$pid"
kill "$pid"

url=$(fresh_db one)
pid=$(start 18412 "--database-url $url"); pids+=("$pid")
run "PostgreSQL, one node" --server http://127.0.0.1:18412 --server-pid "$pid"
kill "$pid"

url=$(fresh_db two)
a=$(start 18413 "--database-url $url"); pids+=("$a")
b=$(start 18414 "--database-url $url"); pids+=("$b")
echo "=== PostgreSQL, two nodes: each user's devices alternate between the nodes"
two=(--server http://127.0.0.1:18413 --also-server http://127.0.0.1:18414)
lg "${two[@]}" fanout --users 4 --devices 3 --tasks 20 --rate 5 --seconds 8
lg "${two[@]}" saturation --users 4 --devices 3 --tasks 20 --start-rate 5 --steps 8 --seconds 4
echo "--- ingest on both nodes at once (figures per node)"
gens=()
for port in 18413 18414; do
  lg --server "http://127.0.0.1:$port" ingest --devices 16 --users 4 --batch 16 --seconds 8 \
    > "$cluster/ingest-$port" 2>&1 &
  gens+=($!)
done
wait "${gens[@]}"
cat "$cluster/ingest-18413" "$cluster/ingest-18414"
