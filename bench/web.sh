#!/usr/bin/env bash
# Browser benchmarks of the web app against a release server on loopback:
# first-load bytes (JS + WASM, compressed as sent), first paint of 1,000
# tasks from IndexedDB after a reload, and the latency of a change from one
# browser to another (p50/p90/p99). Needs `npm ci` in web/ and Debian's
# chromium. Figures go to BENCHMARKS.md by hand.
#   WEB_BENCH_TASKS (default 1000), WEB_BENCH_CHANGES (default 200).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p codeedex-server >&2
data=$(mktemp -d)
port=${PORT:-18183}
pid=$(PORT=$port DATA=$data IDENTITIES=4 bash bench/server.sh)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
CODEEDEX_APP_URL="http://127.0.0.1:$port" node web/bench/web-bench.mjs
