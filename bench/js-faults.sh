#!/usr/bin/env bash
# Issue 10's setup, outside the Rust test harness: three stock automerge-repo
# devices behind Node fault proxies, editing one document while the server is
# killed and restarted twice (bench/reference/js-faults.mjs). Runs the script
# RUNS times and prints one summary line per run. Builds nothing.
#
# Usage: bench/js-faults.sh ours|reference [hold|drop|hold-reset] [RUNS] [-- extra script flags]
#   SEED=N        the first run's seed (the next runs use N+1, N+2, ...); random by default
#   BIN=path      our server's binary (default /tmp/cdx-server, else target/release/codeedex-server)
#   PORT=N        the server's port (default: chosen by the script from its pid)
# Extra flags go to the script as they are, for example
#   bench/js-faults.sh ours hold 5 -- --storage nodefs --crashes-ms 7000,14000
# Each run keeps its logs (server.log, events.log, summary.json) in the
# directory its summary line names.
set -euo pipefail
cd "$(dirname "$0")/reference"
server=${1:?usage: bench/js-faults.sh ours|reference [hold|drop|hold-reset] [RUNS] [-- flags]}
variant=${2:-hold}
runs=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
bin=${BIN:-/tmp/cdx-server}
[ -x "$bin" ] || bin=../../target/release/codeedex-server
[ -d node_modules ] || npm ci --no-audit --no-fund >&2
seed=${SEED:-$RANDOM}
for i in $(seq 0 $((runs - 1))); do
  node js-faults.mjs --server "$server" --variant "$variant" --seed $((seed + i)) --bin "$bin" \
    ${PORT:+--port "$PORT"} "$@" 2>/dev/null
done
