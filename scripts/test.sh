#!/usr/bin/env bash
# The test suite: installs what it needs, builds, and runs every CTest test that is not labelled
# slow. Extra arguments go to ctest, e.g. scripts/test.sh -L unit, or -R Loss. With CI=true it
# then runs the unit tests once more under AddressSanitizer + UndefinedBehaviorSanitizer
# (scripts/sanitize.sh, in ./build-asan).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
(cd "$root/build" && ctest --output-on-failure --label-exclude slow --parallel "$(nproc)" "$@")
if [ "${CI:-}" = "true" ]; then
  bash "$root/scripts/sanitize.sh"
fi
