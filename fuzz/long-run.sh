#!/usr/bin/env bash
# The long fuzz runs behind the figures in BENCHMARKS.md: every target until it has executed
# RUNS inputs (default ten million), JOBS targets at a time, from the checked-in seeds. Prints one
# line per target: executions, wall time, executions per second, corpus size, coverage.
# Usage: fuzz/long-run.sh [RUNS] [JOBS]      (needs the nightly toolchain and cargo-fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10000000}"
jobs="${2:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backporcher/fuzz-target}"
work="$(mktemp -d)"
targets=$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^fuzz$')
cargo +nightly fuzz build -O -s none >/dev/null
run_one() {
  local t="$1" start end extra=""
  # Each glob input compiles its rules into automata: short inputs keep it to thousands a second.
  [ "$t" = glob ] && extra="-max_len=96"
  mkdir -p "$work/$t"
  start=$(date +%s)
  cargo +nightly fuzz run -O -s none "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -runs="$runs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 $extra >"$work/$t.log" 2>&1 \
    || { echo "$t: FAILED (see $work/$t.log)"; return 1; }
  end=$(date +%s)
  local execs cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -n 1 | cut -d' ' -f2)
  printf '%s\t%s executions\t%s s\t%s/s\tcorpus %s\tcoverage %s\n' "$t" "$execs" "$((end - start))" \
    "$((execs / (end - start > 0 ? end - start : 1)))" "$(ls "$work/$t" | wc -l)" "${cov:-?}"
}
export -f run_one
export work runs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}'
