#!/usr/bin/env bash
# Installs the dependencies (scripts/setup.sh) and builds vicreg in ./build (Release, Ninja,
# ccache, warnings as errors) with the Python extension (build/python). Extra arguments go to
# CMake's configure step, e.g. -DVICREG_BUILD_BENCH=OFF or -DVICREG_BUILD_PYTHON=OFF.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
# Warnings are errors here (the supported toolchain builds the tree without any); a plain CMake
# build leaves them warnings (VICREG_WERROR=OFF).
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVICREG_BUILD_PYTHON=ON \
  -DVICREG_WERROR=ON "$@"
# LibTorch's headers are heavy: each compiler process takes about 1 GiB. One per core.
cmake --build "$root/build" --parallel "$(nproc)"
