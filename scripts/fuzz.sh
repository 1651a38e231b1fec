#!/usr/bin/env bash
# Fuzz every parser of untrusted input (the cargo-fuzz targets in fuzz/), one target after the
# other, each for a bounded time, then print a table: target, executions, crashes found.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      # default 60 s, every target
#
# Needs a nightly toolchain (ICAHUB_FUZZ_TOOLCHAIN, default `nightly`); installs cargo-fuzz when
# it is missing. One libFuzzer process at a time (the targets are single-threaded). Each target's
# corpus grows in fuzz/corpus/<target>/ (only the seed-* files are in git); a crash, timeout or
# OOM is written to fuzz/artifacts/<target>/ and the run's log to fuzz/artifacts/<target>.log.
# Keep a crashing input as a regression test in tests/fixtures/fuzz/<target>/ (see docs/testing.md).
# ICAHUB_FUZZ_ARGS adds libFuzzer options (say `-max_len=65536`). Exits 1 when anything was found.
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-60}"
[ $# -gt 0 ] && shift
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
toolchain="${ICAHUB_FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz..." >&2
  cargo install cargo-fuzz --locked
fi

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

echo "building ${#targets[@]} fuzz targets..." >&2
cargo "+$toolchain" fuzz build >&2

declare -A execs speed found
total_execs=0
total_found=0
started=$(date +%s)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t.log"
  marker=$(mktemp)
  echo "fuzzing $t for ${secs}s..." >&2
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: an OOM is a finding too.
  cargo "+$toolchain" fuzz run "$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    ${ICAHUB_FUZZ_ARGS:-} >"$log" 2>&1 || true
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$n" ]; then # a crash may end the run before the final stats
    n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  s=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  new=$(find "artifacts/$t" -type f -newer "$marker")
  c=$(printf '%s' "$new" | grep -c . || true)
  rm -f "$marker"
  execs[$t]=${n:-0}
  speed[$t]=${s:-?}
  found[$t]=$c
  total_execs=$((total_execs + ${n:-0}))
  total_found=$((total_found + c))
  if [ "$c" -gt 0 ]; then
    echo "  $t: found $c input(s):" >&2
    printf '%s\n' "$new" | sed 's|^|    fuzz/|' >&2
    grep -m1 -E 'panicked at|ERROR: libFuzzer' "$log" | sed 's/^/    /' >&2 || true
  fi
done
elapsed=$(($(date +%s) - started))

printf '\n%-22s %14s %10s %8s\n' target executions "exec/s" crashes
for t in "${targets[@]}"; do
  printf '%-22s %14s %10s %8s\n' "$t" "${execs[$t]}" "${speed[$t]}" "${found[$t]}"
done
printf '%-22s %14s %10s %8s\n' total "$total_execs" "" "$total_found"
echo "fuzzed ${#targets[@]} targets for ${elapsed}s in all (${secs}s each)"
[ "$total_found" -eq 0 ]
