#!/usr/bin/env bash
# Mixed precision against fp32 at the same number of epochs: pretrains the default configuration
# on Fashion-MNIST once per mode, evaluates each backbone (linear probe and kNN on the test
# split) and prints the points each mode is away from the first. Usage:
#   bash scripts/precision-quality.sh [EPOCHS] [extra vicreg train flags...]
# EPOCHS defaults to 4 (about 11 minutes per fp32 run on 2 cores). MODES (environment) lists the
# modes, each PRECISION or PRECISION:BF16CONV (--bf16-conv), default "fp32 bf16"; for example
# MODES="fp32 bf16 bf16:bf16" adds bf16 with autocast's bf16 convolutions on a CPU whose default
# runs them in fp32. Runs go to runs/precision-quality/<mode>; an interrupted run resumes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
epochs=${1:-4}
shift || true
read -r -a modes <<< "${MODES:-fp32 bf16}"
bash "$root/scripts/build.sh"
out="$root/runs/precision-quality"
mkdir -p "$out"
for mode in "${modes[@]}"; do
  precision=${mode%%:*}
  flags=(--precision "$precision")
  [[ $mode == *:* ]] && flags+=(--bf16-conv "${mode#*:}")
  exp="$out/${mode//:/-conv-}"
  "$root/build/vicreg" train --exp-dir "$exp" --epochs "$epochs" "${flags[@]}" --progress plain "$@"
  for protocol in linear knn; do
    "$root/build/vicreg" eval --checkpoint "$exp/checkpoint.pt" --protocol "$protocol" \
      --json "$exp/$protocol.json"
  done
done
/usr/bin/python3 - "$out" "$epochs" "${modes[@]}" <<'PY'
import json, sys
out, epochs, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for m in modes:
    d = out + "/" + m.replace(":", "-conv-")
    metrics = [json.loads(l) for l in open(d + "/metrics.jsonl") if l.strip()]
    seconds = max((x.get("elapsed_s", 0) for x in metrics), default=0)
    rows.append((m, json.load(open(d + "/linear.json"))["top1"],
                 json.load(open(d + "/knn.json"))["top1"], seconds))
base = rows[0]
print("\n%s epochs each; points against %s\n" % (epochs, base[0]))
print("| mode | linear | kNN | linear - %s | kNN - %s | pretraining |" % (base[0], base[0]))
print("|---|---:|---:|---:|---:|---:|")
for m, lin, knn, s in rows:
    print("| %s | %.2f %% | %.2f %% | %+.2f | %+.2f | %.0f s |"
          % (m, 100 * lin, 100 * knn, 100 * (lin - base[1]), 100 * (knn - base[2]), s))
PY
