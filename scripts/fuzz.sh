#!/usr/bin/env bash
# Bounded fuzzing: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS seconds (default 20),
# starting from the seed corpus in fuzz/corpus/<target>/. Installs what it needs (the nightly
# toolchain, cargo-fuzz) when missing, so it works from a fresh clone. A crash fails the run;
# libFuzzer leaves the input in fuzz/artifacts/<target>/ and the log says how to replay it.
# New corpus entries go to a temporary directory, never into the repository.
#
#   scripts/fuzz.sh                   # every target, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh job_spec
#   FUZZ_TARGET_DIR=/tmp/fuzz-target  # where the instrumented build goes (default fuzz/target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (cargo-fuzz needs it)"
    if ! rustup toolchain install nightly --profile minimal; then
        # A machine that can reach crates.io but not the toolchain server cannot fuzz; say so
        # loudly rather than fail every other check with it.
        echo "== fuzz: SKIPPED: no nightly toolchain here and none could be installed" >&2
        exit 0
    fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

target_dir=()
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    target_dir=(--target-dir "$FUZZ_TARGET_DIR")
fi
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets (address sanitizer)"
cargo +nightly fuzz build "${target_dir[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "== fuzz $t for ${seconds}s"
    if ! cargo +nightly fuzz run "${target_dir[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (replay: cargo +nightly fuzz run $t <file>)" >&2
        exit 1
    fi
    grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$work/$t.log" || true
done
