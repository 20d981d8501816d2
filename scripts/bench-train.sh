#!/usr/bin/env bash
# Pretraining benchmarks with their baselines, in one run on this machine:
#   - build/bench/train_bench: one training step of the default config (images/s), the data wait
#     of the training loop, and augmentation throughput per worker for each recipe;
#   - bench/peer_pytorch.py (Debian's python3-torch, python3-torchvision): the same model, batch
#     and augmentations in a plain PyTorch loop, and torchvision/PIL's ImageNet pipeline on one core.
# Prints the ratios against the targets (README, "Performance"). Needs Fashion-MNIST.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
if ! /usr/bin/python3 -c "import torch, torchvision, PIL" 2>/dev/null; then
  echo "bench-train: installing the Python peer's packages (python3-torch, python3-torchvision)"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3-torch python3-torchvision python3-pil python3-numpy
fi
threads=$(nproc)
out="$root/build/bench-train"
mkdir -p "$out"
"$root/build/bench/train_bench" --threads="$threads" --benchmark_out="$out/train_bench.json" \
  --benchmark_out_format=json
/usr/bin/python3 "$root/bench/peer_pytorch.py" train --threads "$threads" > "$out/peer_train.json"
/usr/bin/python3 "$root/bench/peer_pytorch.py" augment > "$out/peer_augment.json"
/usr/bin/python3 - "$out" "$threads" <<'PY'
import json, sys
out, threads = sys.argv[1], sys.argv[2]
b = {x["name"]: x for x in json.load(open(out + "/train_bench.json"))["benchmarks"]}
peer_train = json.load(open(out + "/peer_train.json"))["images_per_s"]
peer_aug = json.load(open(out + "/peer_augment.json"))["images_per_s"]
step = b["BM_TrainStep/min_time:5.000/real_time"]["images/s"]
loop = b["BM_TrainLoopDataWait/iterations:1/real_time"]
aug = {r: b["BM_Augment/%s/min_time:%s/real_time" % (r, t)]["images/s"]
       for r, t in [("imagenet", "3.000"), ("cifar", "2.000"), ("fashion_mnist", "2.000")]}
rows = [
    ("training step, default config (images/s, both views)", step, peer_train, step / peer_train, ">= 1.2x"),
    ("training loop with loader (images/s)", loop["images/s"], peer_train, loop["images/s"] / peer_train, ">= 1.2x"),
    ("imagenet augmentation, 1 worker (images/s)", aug["imagenet"], peer_aug, aug["imagenet"] / peer_aug, ">= 3x"),
    ("cifar augmentation, 1 worker (images/s)", aug["cifar"], None, None, ""),
    ("fashion-mnist augmentation, 1 worker (images/s)", aug["fashion_mnist"], None, None, ""),
]
print("\n%s cores, %s threads\n" % (threads, threads))
print("| measure | vicreg | peer | ratio | target |\n|---|---:|---:|---:|---|")
for name, v, p, r, t in rows:
    print("| %s | %.0f | %s | %s | %s |" % (name, v, "%.0f" % p if p else "-", "%.2fx" % r if r else "-", t))
print("| data wait in the training loop | %.2f %% | | | < 5 %% |" % loop["data_wait_%"])
PY
