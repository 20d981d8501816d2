#!/usr/bin/env bash
# Pretraining benchmarks with their baselines, in one run on this machine:
#   - build/bench/train_bench: one training step of the default config (images/s and peak memory,
#     fp32 and bf16, contiguous and channels_last; the median of 5 repetitions, interleaved with
#     the other benchmarks), the data wait of the training loop, and
#     augmentation throughput per worker for each recipe;
#   - bench/peer_pytorch.py (Debian's python3-torch, python3-torchvision): the same model, batch
#     and augmentations in a plain PyTorch loop, in fp32 and at its best (autocast bf16 +
#     channels_last, as the PyTorch references train), and torchvision/PIL's ImageNet pipeline on
#     one core;
#   - the step ratios: our step (BM_TrainStep) and the peer's, each in processes of its own,
#     alternately, in five rounds; each ratio is the median of its five rounds' ratios.
# Prints the ratios against the targets (docs/benchmarks.md). Needs Fashion-MNIST.
# On a CPU without bf16 instructions (AVX512-BF16 or AMX), where --precision auto trains in fp32
# and bf16 is emulated (tens of times slower), the bf16 measurements are left out, on both sides,
# and the loop is compared with the peer's fp32 loop.
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
rm -rf "$out"
mkdir -p "$out"
bf16=0
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then bf16=1; fi
filter=()
if [ "$bf16" = 0 ]; then
  echo "bench-train: this CPU has no bf16 instructions; fp32 only"
  filter=(--benchmark_filter='-(bf16:1|BM_TrainStepBf16Conv|BM_TrainStepPatchesAtStride1|fp32:0|BM_ConvWeightGrad)')
fi
"$root/build/bench/train_bench" --threads="$threads" --benchmark_out="$out/train_bench.json" \
  --benchmark_out_format=json --benchmark_enable_random_interleaving=true "${filter[@]}"
/usr/bin/python3 "$root/bench/peer_pytorch.py" train --threads "$threads" > "$out/peer_train.json"
if [ "$bf16" = 1 ]; then
  /usr/bin/python3 "$root/bench/peer_pytorch.py" train --threads "$threads" --precision bf16 \
    --channels-last > "$out/peer_train_bf16.json"
fi
# The step ratios: our steps and the peer's, each in a process of its own, the four one after
# the other in each of five rounds. Both sides are measured alike and at the same moments: the
# machine's speed drifts within a run (one process to the next moved by up to 15 %), so each
# ratio is taken within a round, and the median of the five rounds' ratios is reported;
# train_bench's own repetitions above run interleaved with some hundred other benchmarks in one
# long process. Our bf16 step in the memory format auto chose for the loop above.
bf16_cl=$(/usr/bin/python3 -c 'import json, sys
b = [x for x in json.load(open(sys.argv[1]))["benchmarks"] if x["name"].startswith("BM_TrainLoopDataWait")]
print(int(b[0].get("channels_last", 0)))' "$out/train_bench.json")
our_step() {  # our_step BF16 CHANNELS_LAST OUTPUT: BM_TrainStep alone (its 5 repetitions)
  "$root/build/bench/train_bench" --threads="$threads" --benchmark_out="$3" \
    --benchmark_out_format=json --benchmark_filter="^BM_TrainStep/bf16:$1/channels_last:$2/" \
    > /dev/null
}
rounds=5
for i in $(seq "$rounds"); do
  /usr/bin/python3 "$root/bench/peer_pytorch.py" train --threads "$threads" --reuse-batch \
    > "$out/peer_step.$i.json"
  our_step 0 0 "$out/step.$i.json"
  if [ "$bf16" = 1 ]; then
    /usr/bin/python3 "$root/bench/peer_pytorch.py" train --threads "$threads" --reuse-batch \
      --precision bf16 --channels-last > "$out/peer_step_bf16.$i.json"
    our_step 1 "$bf16_cl" "$out/step_bf16.$i.json"
  fi
done
/usr/bin/python3 "$root/bench/peer_pytorch.py" augment > "$out/peer_augment.json"
/usr/bin/python3 - "$out" "$threads" "$bf16" "$rounds" <<'PY'
import json, statistics, sys
out, threads, bf16, rounds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", range(1, int(sys.argv[4]) + 1)
bench = json.load(open(out + "/train_bench.json"))["benchmarks"]
b = {x["name"]: x for x in bench}
peer_train = json.load(open(out + "/peer_train.json"))["images_per_s"]
peer_bf16 = json.load(open(out + "/peer_train_bf16.json"))["images_per_s"] if bf16 else None
def peer_runs(name):  # images/s of each round, in round order
    return [json.load(open("%s/%s.%d.json" % (out, name, i)))["images_per_s"] for i in rounds]
def our_runs(name):  # the median of BM_TrainStep's repetitions in each round's process
    return [[x for x in json.load(open("%s/%s.%d.json" % (out, name, i)))["benchmarks"]
             if x.get("aggregate_name") == "median"][0]["images/s"] for i in rounds]
peer_step_runs, step_runs_alone = peer_runs("peer_step"), our_runs("step")
if bf16:
    peer_step_bf16_runs, step_bf16_runs_alone = peer_runs("peer_step_bf16"), our_runs("step_bf16")
med = statistics.median
def ratio(a, b):  # the median over the rounds of a / b within each round
    return med(x / y for x, y in zip(a, b))
peer_step, step_alone = med(peer_step_runs), med(step_runs_alone)
peer_step_bf16 = med(peer_step_bf16_runs) if bf16 else None
bf16_alone = med(step_bf16_runs_alone) if bf16 else None
peer_aug = json.load(open(out + "/peer_augment.json"))["images_per_s"]
def step_runs(p, c, kind):
    # BM_TrainStep's repetitions (interleaved with the other benchmarks) or their median.
    prefix = "BM_TrainStep/bf16:%d/channels_last:%d/" % (p, c)
    return [x for x in bench if x["name"].startswith(prefix) and
            (x.get("aggregate_name") == "median" if kind == "median" else x.get("run_type") == "iteration")]
steps = {(p, c): step_runs(p, c, "median")[0] for p in ((0, 1) if bf16 else (0,)) for c in (0, 1)}
spread = {k: sorted(x["images/s"] for x in step_runs(k[0], k[1], "iteration")) for k in steps}
loop = b["BM_TrainLoopDataWait/iterations:1/real_time"]
aug = {r: b["BM_Augment/%s/min_time:%s/real_time" % (r, t)]["images/s"]
       for r, t in [("imagenet", "3.000"), ("cifar", "2.000"), ("fashion_mnist", "2.000")]}
rows = [("training step, fp32 contiguous vs the peer's fp32 step (images/s, both views)", step_alone, peer_step, ratio(step_runs_alone, peer_step_runs), ">= 1.2x")]
if bf16:
    rows += [
        ("training step, bf16 (auto) vs the peer's bf16 + channels_last step", bf16_alone, peer_step_bf16, ratio(step_bf16_runs_alone, peer_step_bf16_runs), ">= 1.2x"),
        ("training step, bf16 (auto) vs our fp32", bf16_alone, step_alone, ratio(step_bf16_runs_alone, step_runs_alone), ">= 1.8x"),
        ("training loop with loader, auto settings vs the peer's bf16 + channels_last loop", loop["images/s"], peer_bf16, loop["images/s"] / peer_bf16, ">= 1.2x")]
else:  # auto is fp32 here: the peer at its best is its fp32 loop
    rows += [("training loop with loader, auto settings (fp32) vs the peer's fp32 loop", loop["images/s"], peer_train, loop["images/s"] / peer_train, ">= 1.2x")]
rows += [
    ("imagenet augmentation, 1 worker (images/s)", aug["imagenet"], peer_aug, aug["imagenet"] / peer_aug, ">= 3x"),
    ("cifar augmentation, 1 worker (images/s)", aug["cifar"], None, None, ""),
    ("fashion-mnist augmentation, 1 worker (images/s)", aug["fashion_mnist"], None, None, ""),
]
print("\n%s cores, %s threads%s\n" % (threads, threads, "" if bf16 else "; no bf16 instructions: the bf16 rows left out"))
print("| measure | vicreg | peer | ratio | target |\n|---|---:|---:|---:|---|")
for name, v, p, r, t in rows:
    print("| %s | %.0f | %s | %s | %s |" % (name, v, "%.0f" % p if p else "-", "%.2fx" % r if r else "-", t))
print("| data wait in the training loop | %.2f %% | | | < 5 %% |" % loop["data_wait_%"])
print("\nThe step rows: each side in processes of its own, one after the other in %d rounds; images/s the\n"
      "medians, ratios the medians of the rounds' ratios." % len(rounds))
print("\n| training step, in the benchmark run above | images/s (median of %d) | lowest - highest | peak memory per step (MiB) |\n|---|---:|---:|---:|"
      % len(spread[(0, 0)]))
for (p, c), x in sorted(steps.items()):
    print("| %s%s | %.0f | %.0f - %.0f | %.0f |" % ("bf16" if p else "fp32", " + channels_last" if c else "",
                                                 x["images/s"], spread[(p, c)][0], spread[(p, c)][-1],
                                                 x["step_peak_MiB"]))
def runs(xs):
    return " / ".join("%.0f" % x for x in xs)
torch_version = json.load(open(out + "/peer_train.json"))["torch"]
if bf16:
    print("\npeer (plain PyTorch %s), images/s: loop fp32 %.0f, loop bf16 + channels_last %.0f, "
          "step fp32 %.0f, step bf16 + channels_last %.0f"
          % (torch_version, peer_train, peer_bf16, peer_step, peer_step_bf16))
    print("steps, rounds in order (images/s): ours fp32 %s, bf16 %s%s; the peer's fp32 %s, bf16 + channels_last %s"
          % (runs(step_runs_alone), runs(step_bf16_runs_alone), " + channels_last" if int(loop.get("channels_last", 0)) else "",
             runs(peer_step_runs), runs(peer_step_bf16_runs)))
else:
    print("\npeer (plain PyTorch %s), images/s: loop fp32 %.0f, step fp32 %.0f"
          % (torch_version, peer_train, peer_step))
    print("steps, rounds in order (images/s): ours fp32 %s; the peer's fp32 %s"
          % (runs(step_runs_alone), runs(peer_step_runs)))
PY
