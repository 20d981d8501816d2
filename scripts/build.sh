#!/usr/bin/env bash
# Installs the dependencies (scripts/setup.sh) and builds vicreg in ./build (Release, Ninja,
# ccache) with the Python extension (build/python). Extra arguments go to CMake's configure step,
# e.g. -DVICREG_BUILD_BENCH=OFF or -DVICREG_BUILD_PYTHON=OFF.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVICREG_BUILD_PYTHON=ON "$@"
# LibTorch's headers are heavy: each compiler process takes about 1 GiB. One per core.
cmake --build "$root/build" --parallel "$(nproc)"
