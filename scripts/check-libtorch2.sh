#!/usr/bin/env bash
# Compiles every vicreg source (library, CLI, tests, benchmarks, examples, Python extension)
# against LibTorch 2.x's headers, without linking or running: the check that the tree still builds
# where the LibTorch is not Debian 12's 1.13, a CUDA LibTorch from pytorch.org say. It fetches
# Debian 13 (trixie)'s libtorch-dev (2.6) with apt-get download (nothing is installed), unpacks it
# in build-libtorch2/, and runs each command of build/compile_commands.json with -fsyntax-only,
# the 2.x headers ahead of the system's and warnings as errors (so that a deprecated LibTorch
# function fails the check too). With --cuda it also compiles the code that only a CUDA build
# compiles (VICREG_WITH_CUDA, USE_C10D_NCCL) against CUDA 12.4's and NCCL's headers from the
# suite's non-free section (about 1 GB to download, once). Usage:
#   bash scripts/check-libtorch2.sh [--cuda] [SUITE]
# SUITE: a Debian suite whose libtorch-dev is 2.x (default trixie). Needs build/
# (bash scripts/build.sh) and deb.debian.org.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cuda=0
if [[ ${1:-} == --cuda ]]; then
  cuda=1
  shift
fi
suite=${1:-trixie}
work="$root/build-libtorch2/$suite"
commands="$root/build/compile_commands.json"
[[ -f $commands ]] || {
  echo "check-libtorch2: $commands is missing: run bash scripts/build.sh first" >&2
  exit 2
}

# fetch SECTIONS DEST PACKAGE...: downloads the packages from the suite's sections and unpacks
# their headers into $work/DEST (apt's state lives in $work/apt: the system's apt is untouched).
fetch() {
  local sections=$1 dest=$2
  shift 2
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/$dest"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian $suite $sections" > "$work/apt/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
             -o APT::Architecture=amd64 -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" -qq update
  (cd "$work/debs" && apt-get "${apt[@]}" -qq download "$@")
  for package in "$@"; do
    dpkg-deb --fsys-tarfile "$work/debs/${package}"_*.deb | tar -x -C "$work/$dest" --wildcards './usr/include/*'
    rm "$work/debs/${package}"_*.deb  # only the headers are needed
  done
}

include="$work/torch/usr/include"
[[ -f $include/torch/csrc/api/include/torch/version.h ]] || fetch main torch libtorch-dev
version=$(sed -n 's/^#define TORCH_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
  "$include/torch/csrc/api/include/torch/version.h" | paste -sd.)
[[ $version == 2.* ]] || {
  echo "check-libtorch2: $suite's libtorch-dev is $version, not 2.x" >&2
  exit 2
}
cuda_include="$work/cuda/usr/include"
if [[ $cuda == 1 ]]; then
  [[ -f $cuda_include/cuda_runtime_api.h && -f $cuda_include/nccl.h && -f $cuda_include/nv/target ]] ||
    fetch "main contrib non-free" cuda nvidia-cuda-dev libnccl-dev libcu++-dev
  # A header LibTorch's CMake build generates and Debian's CPU package lacks: its one setting.
  mkdir -p "$work/generated/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$work/generated/c10/cuda/impl/cuda_cmake_macros.h"
fi

# The 2.x headers come first; headers 2.x no longer has would silently come from the system's
# 1.13, so each LibTorch header vicreg includes must exist in the 2.x tree.
missing=0
while read -r header; do
  if [[ ! -f $include/$header && ! -f $include/torch/csrc/api/include/$header ]]; then
    echo "check-libtorch2: LibTorch $version has no <$header>" >&2
    missing=1
  fi
done < <(grep -rhoE '#include <(ATen|c10|torch|caffe2)/[^>]+>' "$root"/{include,src,apps,tests,bench,examples,python} |
  sed 's/#include <\(.*\)>/\1/' | sort -u)

echo "check-libtorch2: compiling $(grep -c '"file"' "$commands") sources against LibTorch $version ($include)" \
  "$([[ $cuda == 1 ]] && echo "and the CUDA code against CUDA's headers ($cuda_include)")"
failed=0
# shellcheck disable=SC2016
/usr/bin/python3 - "$commands" "$include" "$cuda" "$cuda_include" "$work/generated" <<'PY' |
import json, re, shlex, sys
commands, include, cuda, cuda_include, generated = sys.argv[1:]
torch = ["-isystem", include, "-isystem", include + "/torch/csrc/api/include"]
for entry in json.load(open(commands)):
    args = shlex.split(entry["command"])
    if "-o" in args:  # only parse and check: no output
        i = args.index("-o")
        del args[i:i + 2]
    runs = [(torch, "")]
    with open(entry["file"], errors="replace") as f:
        if cuda == "1" and re.search(r"VICREG_WITH_CUDA|USE_C10D_NCCL", f.read()):
            runs.append((torch + ["-isystem", generated, "-isystem", cuda_include, "-DUSE_CUDA",
                                  "-DVICREG_WITH_CUDA", "-DUSE_C10D_NCCL"], " (CUDA)"))
    for flags, what in runs:
        command = shlex.join(args[:1] + flags + args[1:] + ["-fsyntax-only"])
        sys.stdout.write("cd %s && %s || { echo 'check-libtorch2: failed: %s%s' >&2; exit 1; }\0" % (
            shlex.quote(entry["directory"]), command, entry["file"], what))
PY
  xargs -0 -P "$(nproc)" -n 1 bash -c 'eval "$1"' _ || failed=1
[[ $missing == 0 && $failed == 0 ]] || exit 1
echo "check-libtorch2: every source compiles against LibTorch $version"
