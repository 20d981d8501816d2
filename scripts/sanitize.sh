#!/usr/bin/env bash
# The unit tests under AddressSanitizer + UndefinedBehaviorSanitizer, then every fuzz target for a
# short time: vicreg's library, CLI commands, tests and fuzz targets built by clang-14 with
# -DVICREG_SANITIZE=address,undefined -DVICREG_BUILD_FUZZ=ON in ./build-asan (LibTorch is not
# instrumented, but ASan sees every allocation it makes), then `ctest -L unit` there, then
# scripts/fuzz.sh for FUZZ_SECONDS (default 30) per target on its seeds and regression corpus.
# The parsers of untrusted files and the threaded loader are where memory errors would hide.
# scripts/test.sh runs this after the suite when CI=true. Extra arguments go to ctest;
# --build-only (scripts/fuzz.sh) configures and builds, and stops there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-asan"
bash "$root/scripts/setup.sh"
# A build directory configured with another compiler (gcc, before the fuzz targets) starts over.
if [ -f "$build/CMakeCache.txt" ] &&
  ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++-14$' "$build/CMakeCache.txt"; then
  rm -rf "$build"
fi
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DVICREG_SANITIZE=address,undefined -DVICREG_BUILD_FUZZ=ON -DVICREG_BUILD_BENCH=OFF \
  -DVICREG_BUILD_PYTHON=OFF -DVICREG_BUILD_EXAMPLES=OFF
cmake --build "$build" --parallel "$(nproc)"
[ "${1:-}" = "--build-only" ] && exit 0
(
  cd "$build"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
  export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  ctest --output-on-failure --label-regex unit --parallel "$(nproc)" "$@"
)
bash "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-30}"
