#!/usr/bin/env bash
# Installs every Debian package vicreg needs to build, test and run. Idempotent: packages that
# are already installed are skipped, and apt is not touched at all when nothing is missing.
# Works as root, or as a user with sudo.
set -euo pipefail

packages=(
  # toolchain, and the formatter the test suite checks with
  build-essential cmake ninja-build ccache clang-format
  # the install checks: pkg-config reads the installed vicreg.pc (dpkg-dev, for CPack's .deb and
  # dpkg-shlibdeps, comes with build-essential)
  pkg-config
  # the sanitizer and fuzzing build (scripts/sanitize.sh, scripts/fuzz.sh): clang with its
  # sanitizer and libFuzzer runtimes
  clang-14 libclang-rt-14-dev
  # LibTorch (CPU) and the BLAS it should use: OpenBLAS's OpenMP build shares LibTorch's OpenMP
  # threads (the pthread build fights them: docs/building.md, BLAS); CMake points our programs at it
  libtorch-dev libopenblas0-openmp
  # data: IDX/gzip reading, image decoding (libjpeg-turbo; OpenCV) and augmentation, the default
  # data set
  zlib1g-dev libjpeg62-turbo-dev libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev dataset-fashion-mnist
  # tests, benchmarks, CLI, config files
  libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  # TensorBoard event files (Protocol Buffers), and their test's independent reader
  libprotobuf-dev protobuf-compiler python3-protobuf python3-crc32c
  # the run report's rendering test opens report.html in headless Chromium
  chromium
  # distributed training: Gloo's headers (LibTorch's c10d uses them), and torchrun (python3-torch)
  libgloo-dev python3-torch
  # the Python extension (python/: pybind11 on python3-torch's LibTorch) and its tests, which load
  # weights into torchvision's models
  pybind11-dev python3-dev python3-torchvision python3-numpy python3-pil
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
