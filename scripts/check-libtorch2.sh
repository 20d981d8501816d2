#!/usr/bin/env bash
# Compiles every vicreg source (library, CLI, tests, benchmarks, examples, Python extension)
# against LibTorch 2.x's headers, without linking or running: the check that the tree still builds
# where the LibTorch is not Debian 12's 1.13, a CUDA LibTorch from pytorch.org for one. It fetches
# Debian 13 (trixie)'s libtorch-dev (2.6) with apt-get download (no root needed, nothing
# installed), unpacks it in build-libtorch2/, and runs each command of build/compile_commands.json
# with -fsyntax-only, the 2.x headers ahead of the system's, warnings as errors (so that a
# deprecated LibTorch function fails the check too). Code under VICREG_WITH_CUDA is not compiled:
# trixie has no CUDA headers in main. Usage: bash scripts/check-libtorch2.sh [SUITE] (default
# trixie; any Debian suite whose libtorch-dev is 2.x). Needs build/ (bash scripts/build.sh) and
# network access to deb.debian.org.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=${1:-trixie}
work="$root/build-libtorch2/$suite"
commands="$root/build/compile_commands.json"
[[ -f $commands ]] || {
  echo "check-libtorch2: $commands is missing: run bash scripts/build.sh first" >&2
  exit 2
}

if [[ ! -f $work/usr/include/torch/csrc/api/include/torch/version.h ]]; then
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian $suite main" > "$work/apt/sources.list"
  apt=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
       -o APT::Architecture=amd64 -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" -qq update
  (cd "$work/debs" && apt-get "${apt[@]}" -qq download libtorch-dev)
  dpkg -x "$work"/debs/libtorch-dev_*.deb "$work"
fi
include="$work/usr/include"
version=$(sed -n 's/^#define TORCH_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
  "$include/torch/csrc/api/include/torch/version.h" | paste -sd.)
[[ $version == 2.* ]] || {
  echo "check-libtorch2: $suite's libtorch-dev is $version, not 2.x" >&2
  exit 2
}

# The 2.x headers come first; headers 2.x no longer has would silently come from the system's
# 1.13, so each LibTorch header vicreg includes must exist in the 2.x tree.
missing=0
while read -r header; do
  if [[ ! -f $include/$header && ! -f $include/torch/csrc/api/include/$header ]]; then
    echo "check-libtorch2: LibTorch $version has no <$header>" >&2
    missing=1
  fi
done < <(grep -rhoE '#include <(ATen|c10|torch|caffe2)/[^>]+>' "$root"/{include,src,apps,tests,bench,examples,python} |
  sed 's/#include <\(.*\)>/\1/' | grep -v '^ATen/cuda/\|^c10/cuda/' | sort -u)

echo "check-libtorch2: compiling $(grep -c '"file"' "$commands") sources against LibTorch $version ($include)"
# shellcheck disable=SC2016
failed=0
/usr/bin/python3 - "$commands" "$include" <<'PY' | xargs -0 -P "$(nproc)" -n 1 bash -c 'eval "$1"' _ || failed=1
import json, shlex, sys
commands, include = sys.argv[1], sys.argv[2]
for entry in json.load(open(commands)):
    args = shlex.split(entry["command"])
    # Drop the output; put the 2.x headers first; only parse and check.
    if "-o" in args:
        i = args.index("-o")
        del args[i:i + 2]
    args[1:1] = ["-isystem", include, "-isystem", include + "/torch/csrc/api/include"]
    args += ["-fsyntax-only"]
    sys.stdout.write("cd %s && %s || { echo 'check-libtorch2: failed: %s' >&2; exit 1; }\0" % (
        shlex.quote(entry["directory"]), shlex.join(args), entry["file"]))
PY
[[ $missing == 0 && $failed == 0 ]] || exit 1
echo "check-libtorch2: every source compiles against LibTorch $version"
