#!/usr/bin/env bash
# Installs the dependencies (scripts/setup.sh) and builds vicreg in ./build (Release, Ninja,
# ccache). Extra arguments go to CMake's configure step, e.g. -DVICREG_BUILD_BENCH=OFF.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
# LibTorch's headers are heavy: each compiler process takes about 1 GiB. One per core.
cmake --build "$root/build" --parallel "$(nproc)"
