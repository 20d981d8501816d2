#!/usr/bin/env bash
# The unit tests under AddressSanitizer + UndefinedBehaviorSanitizer: vicreg's library, CLI
# commands and tests built with -DVICREG_SANITIZE=address,undefined in ./build-asan (LibTorch is
# not instrumented, but ASan sees every allocation it makes), then `ctest -L unit` there. The
# parsers of untrusted files and the threaded loader are where memory errors would hide.
# scripts/test.sh runs this after the suite when CI=true. Extra arguments go to ctest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVICREG_SANITIZE=address,undefined -DVICREG_BUILD_BENCH=OFF -DVICREG_BUILD_PYTHON=OFF \
  -DVICREG_BUILD_EXAMPLES=OFF
cmake --build "$root/build-asan" --parallel "$(nproc)"
cd "$root/build-asan"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --output-on-failure --label-regex unit --parallel "$(nproc)" "$@"
