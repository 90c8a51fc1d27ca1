#!/usr/bin/env bash
# Starts a release codeedex-server on 127.0.0.1:$PORT for benchmarks, with
# fixed test codes for bench-<i>@example.com (i < $IDENTITIES) and limits
# raised so that the generator measures the server, not its rate limits.
# Prints the server's pid on stdout; the server's log goes to $DATA/server.log.
# EXTRA_ARGS adds flags (for example --database-url for PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-18181}
identities=${IDENTITIES:-64}
data=${DATA:?set DATA to a fresh directory}
mkdir -p "$data"
codes=$(for i in $(seq 0 $((identities - 1))); do printf 'bench-%d@example.com=123456,' "$i"; done)
CODEEDEX_TEST_CODES="${codes%,}" "${BIN_DIR:-${CARGO_TARGET_DIR:-./target}/release}/codeedex-server" \
  --listen "127.0.0.1:$port" --data-dir "$data" --log warn \
  --allow-test-codes --test-codes-expire "$(date -u -d '+1 day' +%F)" \
  --otp-resend-cooldown-secs 0 --otp-hourly-cap 100000 --otp-daily-cap 100000 \
  --ip-send-limit 1000000 --ip-verify-limit 1000000 --ip-refresh-limit 1000000 \
  --sync-max-connections-per-user 100000 --sync-messages-per-second 100000 --sync-message-burst 100000 \
  --sync-max-connections 100000 --sync-connections-per-second 1000000 --sync-connection-burst 1000000 \
  ${EXTRA_ARGS:-} > "$data/server.log" 2>&1 &
pid=$!
up=
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "bench/server.sh: the server on port $port never answered /healthz; the end of $data/server.log:" >&2
  tail -n 20 "$data/server.log" >&2 || true
  kill "$pid" 2>/dev/null || true
  exit 1
fi
echo "$pid"
