#!/usr/bin/env bash
# The long run of the fault tests: RUNS rounds of the two convergence
# scenarios of tests/tests/faults.rs, each with a fresh random seed:
#  - client-core and stock JS devices making random edits through fault
#    proxies for FAULTS_SECONDS (default 60) while the server is killed
#    FAULTS_CRASH_COUNT times (default 4);
#  - three JS devices editing one document through resets, black holes and
#    tiny writes, with two SIGKILLs.
# Every round must converge with nothing lost; a failure prints its seed
# (replay: FAULTS_SEED=<seed> cargo test -p codeedex-tests --test faults).
# Prints each round's summary and the totals.
# Usage: bench/faults.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
export FAULTS_SECONDS=${FAULTS_SECONDS:-60} FAULTS_CRASH_COUNT=${FAULTS_CRASH_COUNT:-4}
(cd tests/js && npm ci --no-audit --no-fund >/dev/null)
cargo test --locked -p codeedex-tests --test faults --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for run in $(seq "$runs"); do
    seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))
    echo "round $run of $runs, seed $seed"
    for test in client_core_and_js_devices_converge_under_random_faults_and_crashes \
        js_devices_converge_through_resets_black_holes_tiny_writes_and_crashes; do
        if ! FAULTS_SEED=$seed cargo test --locked -q -p codeedex-tests --test faults "$test" \
            -- --exact --nocapture >"$log" 2>&1; then
            cat "$log"
            echo "FAILED: $test with FAULTS_SEED=$seed"
            exit 1
        fi
        grep -E "^seed [0-9]+:" "$log" | sed "s/^/  $test: /" || true
    done
done
echo "faults: $runs rounds, every one converged with nothing lost"
