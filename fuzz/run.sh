#!/usr/bin/env bash
# Builds every fuzz target once, then runs each target that is expected to be
# clean for a time box, on a copy of its committed corpus.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60, the CI set)
#
# Toolchain: nightly with AddressSanitizer when `cargo +nightly` works, else
# stable with `--sanitizer none` (no ASan, and -malloc_limit_mb then has no
# effect: libFuzzer's malloc hooks come from the sanitizer; -rss_limit_mb
# still does). Exits non-zero if any target crashed, leaked, ran out of
# memory or timed out, after printing the reproducer. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
# Targets CI runs: those expected to find nothing. chunk_load is left out
# (panics inside the hexane dependency may remain; see README.md).
default_targets=(wire_decode rest_bodies client_machine admission sync_frame)
if (($# > 0)); then
    targets=("$@")
else
    targets=("${default_targets[@]}")
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    sanitizer=address
else
    toolchain=()
    sanitizer=none
fi
echo "fuzz: toolchain $(cargo "${toolchain[@]}" --version), sanitizer ${sanitizer}"

# cargo-fuzz is not part of the toolchain: install the pinned version once.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# FUZZ_TARGET_DIR: where to build (default fuzz/target). CI points it
# outside its fresh clone so that a machine that runs CI again rebuilds only
# what changed: the cold build is most of the time this script takes.
target_dir="${FUZZ_TARGET_DIR:-$PWD/target}"
build_start=$SECONDS
cargo "${toolchain[@]}" fuzz build --release --debug-assertions \
    --sanitizer "$sanitizer" --target-dir "$target_dir"
echo "fuzz: build took $((SECONDS - build_start)) s"

bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# sync_frame keeps a store in a temporary directory for the whole run: make
# it one that goes away with the rest.
export TMPDIR="$work"

# Per-target input size limit: frames and sync messages can be large, REST
# bodies cannot (the server caps JSON bodies far below this).
max_len() {
    case "$1" in
        rest_bodies) echo 16384 ;;
        wire_decode | client_machine) echo 65536 ;;
        *) echo 262144 ;;
    esac
}

failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
    if [[ -d "corpus/$target" ]]; then
        cp -R "corpus/$target/." "$work/corpus/$target/"
    fi
    seeds=$(find "$work/corpus/$target" -type f | wc -l)
    log="$work/$target.log"
    status=0
    # -rss_limit_mb: the whole process; -malloc_limit_mb: any single
    # allocation (a length field believed blindly); -timeout: one input.
    "$bin_dir/$target" "$work/corpus/$target" \
        -max_total_time="$seconds" \
        -rss_limit_mb=2048 \
        -malloc_limit_mb=512 \
        -timeout=30 \
        -max_len="$(max_len "$target")" \
        -dict=dict/wire.dict \
        -artifact_prefix="$work/artifacts/$target/" \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    found=$(find "$work/corpus/$target" -type f | wc -l)
    if ((status == 0)); then
        echo "fuzz: ${target}: ok, ${execs:-?} executions in ${seconds} s (${rate:-?}/s), corpus ${seeds} -> ${found}"
    else
        failed+=("$target")
        echo "fuzz: ${target}: FAILED (exit ${status}) after ${execs:-?} executions"
        # The report: libFuzzer's and the sanitizer's, from the first error.
        first=$(grep -n -m1 -E '^==[0-9]+==|panicked|ERROR: libFuzzer|deadly signal' "$log" | cut -d: -f1 || true)
        sed -n "${first:-1},\$p" "$log" | head -80 || true
        for artifact in "$work/artifacts/$target"/*; do
            [[ -f "$artifact" ]] || continue
            keep="artifacts/$target/$(basename "$artifact")"
            mkdir -p "artifacts/$target"
            cp "$artifact" "$keep"
            echo "fuzz: reproducer fuzz/$keep ($(wc -c <"$artifact") bytes), base64:"
            head -c 4096 "$artifact" | base64 -w 100
            echo "fuzz: replay with: $bin_dir/$target fuzz/$keep"
        done
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz: failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets clean"
