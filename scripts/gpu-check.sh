#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU and a CUDA LibTorch 2.x (about 8 minutes on one
# H100 with 16 cores):
#   1. builds vicreg against that LibTorch (build-gpu/, Release, tests and benchmarks);
#   2. runs the test suite there (ctest, all but the slow label, the format check and the install
#      checks, which package for Debian): the CUDA tests (loss, precision with loss scaling, a
#      training run that resumes, the CLI on cuda:0) and the rest on LibTorch 2.x;
#   3. times the training step of ResNet-50, ViT-B/16 and ConvNeXt-T at batch 256 x 2 views of
#      224 px (expander 8192-8192-8192, AdamW) in fp32, bf16 and fp16: images/s and peak GPU
#      memory of ours (train_bench's BM_TrainStepDevice: Trainer::train_step) and of torchvision's
#      models in a plain PyTorch loop under autocast, the loss in fp32 outside it, fused AdamW
#      (bench/peer_pytorch.py device-step), each in a process of its own, and prints the table.
# Usage: bash scripts/gpu-check.sh [--libtorch DIR] [--deps PREFIX] [--fashion-mnist DIR]
#                                  [--device cuda:N] [--out DIR] [--skip-tests]
#   --libtorch DIR  an unpacked CUDA LibTorch (pytorch.org's zip); default: the one inside
#                   python3's torch (pip's CUDA wheels carry its headers, libraries and CMake files)
#   --deps PREFIX   a prefix with the other dependencies (e.g. Debian packages unpacked with
#                   dpkg -x) searched before the system's
#   --fashion-mnist DIR  the four .gz files of Fashion-MNIST, copied to Debian's place
#                   (/usr/share/datasets/fashion-mnist, which the tests read) when it is missing
#   --out DIR       where the JSON files and the table go (default build-gpu/gpu-check)
# Needs: nvidia-smi, cmake, a C++17 compiler, CUDA's toolkit (LibTorch's CMake files look for it)
# and the -dev packages of scripts/setup.sh (OpenCV core/imgproc/imgcodecs, libjpeg-turbo,
# protobuf, nlohmann-json, CLI11, GoogleTest, Google Benchmark): the script names what is missing
# before it builds anything. Exits non-zero when a step fails; the table says which rows did.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
libtorch="" deps="" fashion="" device="cuda:0" out="" tests=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --libtorch) libtorch=$2; shift 2 ;;
    --deps) deps=$2; shift 2 ;;
    --fashion-mnist) fashion=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --skip-tests) tests=0; shift ;;
    *) echo "gpu-check: unknown argument '$1' (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
build="$root/build-gpu"
out=${out:-$build/gpu-check}
fail() { echo "gpu-check: $*" >&2; exit 2; }
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }

# --- What is there --------------------------------------------------------------------------
command -v nvidia-smi > /dev/null || fail "no nvidia-smi: this check needs a machine with an NVIDIA GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
command -v cmake > /dev/null || fail "no cmake (Debian/Ubuntu package cmake)"
python=python3
if [[ -z $libtorch ]]; then
  libtorch=$($python -c 'import torch, sys
if not torch.cuda.is_available(): sys.exit("python3 torch " + torch.__version__ + " sees no CUDA GPU")
if int(torch.__version__.split(".")[0]) < 2: sys.exit("python3 torch is " + torch.__version__ + ", not 2.x")
print(torch.utils.cmake_prefix_path)') || fail "no CUDA LibTorch 2.x: give --libtorch DIR, or a python3 with a CUDA torch 2.x"
else
  config=$(find "$libtorch" -maxdepth 5 -name TorchConfig.cmake -path '*/Torch/*' 2> /dev/null | head -1)
  [[ -n $config ]] ||
    fail "--libtorch $libtorch holds no .../Torch/TorchConfig.cmake: give the folder of an unpacked LibTorch"
  libtorch=$(dirname "$(dirname "$config")")  # the folder above Torch/: a CMake prefix path
fi
echo "gpu-check: LibTorch's CMake files in $libtorch"
includes=(/usr/include /usr/local/include)
[[ -n $deps ]] && includes=("$deps/usr/include" "$deps/include" "${includes[@]}")
missing=()
need() {  # need HEADER PACKAGE: HEADER under one of the include folders, else PACKAGE is missing
  local dir
  for dir in "${includes[@]}"; do
    [[ -f $dir/$1 || -f $dir/opencv4/$1 ]] && return 0
  done
  missing+=("$2 (<$1>)")
}
need opencv2/imgcodecs.hpp "libopencv-imgcodecs-dev libopencv-imgproc-dev libopencv-core-dev"
need jpeglib.h libjpeg62-turbo-dev
need google/protobuf/message.h "libprotobuf-dev protobuf-compiler"
need nlohmann/json.hpp nlohmann-json3-dev
need CLI/CLI.hpp libcli11-dev
need gtest/gtest.h libgtest-dev
need benchmark/benchmark.h libbenchmark-dev
need zlib.h zlib1g-dev
data=/usr/share/datasets/fashion-mnist
if [[ $tests == 1 && ! -f $data/train-images-idx3-ubyte.gz ]]; then
  if [[ -n $fashion ]]; then
    { mkdir -p "$data" && cp "$fashion"/*-ubyte.gz "$data"/; } ||
      fail "could not copy $fashion's files to $data (root is needed there)"
  else
    missing+=("dataset-fashion-mnist ($data, which the tests read; or --fashion-mnist DIR, or --skip-tests)")
  fi
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  printf 'gpu-check: missing: %s\n' "${missing[@]}" >&2
  fail "install them (apt-get install ...), or unpack them into a prefix and give --deps PREFIX"
fi

# --- 1. Build ---------------------------------------------------------------------------------
mkdir -p "$build"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
prefix="$libtorch${deps:+;$deps/usr;$deps}"
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DVICREG_BUILD_PYTHON=OFF -DVICREG_BUILD_EXAMPLES=OFF \
  -DVICREG_OPENBLAS_DIR= > "$build/configure.log" 2>&1 || {
  tail -30 "$build/configure.log" >&2
  fail "configuring failed (log: $build/configure.log)"
}
grep -q "vicreg: CUDA LibTorch" "$build/configure.log" ||
  fail "the LibTorch found has no CUDA libraries (TORCH_CUDA_LIBRARIES is empty): give a CUDA LibTorch"
cmake --build "$build" -j "$(nproc)" > "$build/build.log" 2>&1 || {
  grep -m 20 -E "error|Error" "$build/build.log" >&2
  fail "the build failed (log: $build/build.log)"
}
echo "gpu-check: built in $(elapsed)"
mkdir -p "$out"

# --- 2. Tests -----------------------------------------------------------------------------------
status=0
if [[ $tests == 1 ]]; then
  # The format check is left out: another machine's clang-format is not the repository's 14.
  if (cd "$build" && ctest --label-exclude slow -E '^(format|install)\.' -j "$(nproc)" --timeout 300 \
      --output-on-failure > "$out/ctest.log" 2>&1); then
    echo "gpu-check: tests passed ($(grep -E 'tests passed' "$out/ctest.log")) at $(elapsed)"
  else
    grep -E "tests passed|\(Failed\)|\(Timeout\)|\*\*\*" "$out/ctest.log" | tail -25 >&2
    echo "gpu-check: tests FAILED (log: $out/ctest.log)" >&2
    status=1
  fi
fi

# --- 3. The steps ---------------------------------------------------------------------------------
archs=(resnet50 vit_b_16 convnext_tiny)
precisions=(fp32 bf16 fp16)
for a in 0 1 2; do
  for p in 0 1 2; do
    name="${archs[$a]}_${precisions[$p]}"
    "$build/bench/train_bench" --device="$device" \
      --benchmark_filter="^BM_TrainStepDevice/arch:$a/precision:$p/" \
      --benchmark_out="$out/ours_$name.json" --benchmark_out_format=json > "$out/ours_$name.log" 2>&1 ||
      status=1
    $python "$root/bench/peer_pytorch.py" device-step --device "$device" --arch "${archs[$a]}" \
      --precision "${precisions[$p]}" --batch 256 --steps 15 > "$out/peer_$name.json" \
      2> "$out/peer_$name.log" || status=1
  done
done
$python - "$out" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
  "$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo unknown)" <<'PY' | tee "$out/table.md"
import json, sys
out, gpu, commit = sys.argv[1:]
print("Training step, batch 256 x 2 views of 224 px, expander 8192-8192-8192, AdamW; %s, commit %s" % (gpu, commit))
print("ours: train_bench BM_TrainStepDevice; peer: torchvision + autocast, loss in fp32, fused AdamW\n")
print("| backbone | precision | ours images/s | peer images/s | ratio | ours peak MiB | peer peak MiB |")
print("|---|---|---:|---:|---:|---:|---:|")
for arch in ("resnet50", "vit_b_16", "convnext_tiny"):
    for precision in ("fp32", "bf16", "fp16"):
        name = "%s_%s" % (arch, precision)
        try:
            rows = json.load(open("%s/ours_%s.json" % (out, name)))["benchmarks"]
            ours = rows[0] if rows and "error_message" not in rows[0] else None
        except (OSError, ValueError):
            ours = None
        try:
            peer = json.load(open("%s/peer_%s.json" % (out, name)))
        except (OSError, ValueError):
            peer = None
        def cell(row, key, fmt="%.0f"):
            return fmt % row[key] if row and row.get(key) is not None else "failed"
        ratio = "%.2fx" % (ours["images/s"] / peer["images_per_s"]) if ours and peer else "-"
        print("| %s | %s | %s | %s | %s | %s | %s |" % (
            arch, precision, cell(ours, "images/s"), cell(peer, "images_per_s"), ratio,
            cell(ours, "peak_MiB"), cell(peer, "peak_MiB")))
PY
echo "gpu-check: done in $(elapsed); files in $out"
exit $status
