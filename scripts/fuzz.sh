#!/usr/bin/env bash
# Fuzzes vicreg's readers of untrusted files: scripts/fuzz.sh [SECONDS] [TARGET ...]
#
# Builds the libFuzzer targets of tests/fuzz/ (clang-14, ASan + UBSan, in ./build-asan, through
# scripts/sanitize.sh --build-only), writes their seed corpora (tests/fuzz/make_seeds.py), runs
# every input of the regression corpus tests/fuzz/regressions/TARGET/ once, then fuzzes each target
# for SECONDS (default 60), as many at a time as there are cores. Limits: 10 s per input, 2 GB of
# RSS. What the fuzzer finds is kept in build-asan/fuzz/corpus/TARGET/ (reused by the next run);
# a failing input is written to build-asan/fuzz/crashes/ and the script exits 1: once it is fixed,
# copy the input into tests/fuzz/regressions/TARGET/. Targets: safetensors torch_file npy idx
# cifar config checkpoint backbone event_file image (default: all).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] ||
  targets=(safetensors torch_file npy idx cifar config checkpoint backbone event_file image)
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac
for t in "${targets[@]}"; do
  [ -f "$root/tests/fuzz/fuzz_$t.cpp" ] || {
    echo "fuzz.sh: no fuzz target '$t' (tests/fuzz/fuzz_$t.cpp)" >&2
    exit 2
  }
done

bash "$root/scripts/sanitize.sh" --build-only
build="$root/build-asan"
work="$build/fuzz"
rm -rf "$work/seeds" "$work/logs"
mkdir -p "$work/corpus" "$work/crashes" "$work/logs"
/usr/bin/python3 "$root/tests/fuzz/make_seeds.py" "$work/seeds" "$build/vicreg"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048)

fuzz_one() {
  local t=$1 log="$work/logs/$1.log"
  mkdir -p "$work/corpus/$t"
  local regressions=()
  if [ -d "$root/tests/fuzz/regressions/$t" ]; then
    mapfile -t regressions < <(find "$root/tests/fuzz/regressions/$t" -type f | sort)
  fi
  if [ ${#regressions[@]} -gt 0 ] &&
    ! "$build/tests/fuzz/fuzz_$t" "${limits[@]}" "-artifact_prefix=$work/crashes/$t-" \
      "${regressions[@]}" >"$log" 2>&1; then
    echo "fuzz.sh: $t: an input of tests/fuzz/regressions/$t fails again:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
  if ! "$build/tests/fuzz/fuzz_$t" "${limits[@]}" "-max_total_time=$seconds" \
    -print_final_stats=1 "-artifact_prefix=$work/crashes/$t-" \
    "$work/corpus/$t" "$work/seeds/$t" >>"$log" 2>&1; then
    echo "fuzz.sh: $t: failed (input in $work/crashes/; log $log):" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
  local runs
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  echo "fuzz.sh: $t: ${#regressions[@]} regression inputs, then $runs executions in ${seconds} s," \
    "$(find "$work/corpus/$t" -type f | wc -l) inputs in the corpus; no findings"
}

failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$(nproc)" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
