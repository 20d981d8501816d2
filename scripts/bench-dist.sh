#!/usr/bin/env bash
# Distributed benchmarks, in one run on this machine:
#   - build/bench/dist_bench: one rank's cost of the sharded loss (forward + backward) at the
#     issue's global batch (N, d) = (2048, 8192) for W = 1, 2, 4, 8 simulated ranks, against the
#     reference's gathered-and-recomputed loss (every rank computes the whole d x d loss) and
#     against our fused loss recomputed on the whole batch;
#   - measured step throughput of the default Fashion-MNIST config in 2 processes (torchrun, Gloo
#     on loopback, half the cores each) against 1 process (all the cores), STEPS steps each
#     (default 200; the first 40 are not counted).
# Results in build/bench-dist/. Needs Fashion-MNIST and torchrun (both from scripts/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
cores=$(nproc)
steps=${STEPS:-200}
out="$root/build/bench-dist"
rm -rf "$out"
mkdir -p "$out"

"$root/build/bench/dist_bench" --threads="$cores" --benchmark_out="$out/dist_bench.json" \
  --benchmark_out_format=json | tee "$out/dist_bench.txt"

common=(train --max-steps "$steps" --log-every 20 --progress none)
"$root/build/vicreg" "${common[@]}" --exp-dir "$out/one" --threads "$cores"
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
torchrun --no_python --redirects 2 --tee 2 --nproc_per_node=2 --master_addr=127.0.0.1 --master_port="${PORT:-29517}" \
  "$root/build/vicreg" "${common[@]}" --exp-dir "$out/two" --threads "$half"

/usr/bin/python3 - "$out" "$cores" "$half" <<'PY'
import json, statistics, sys
out, cores, half = sys.argv[1], sys.argv[2], sys.argv[3]
def rate(run):
    lines = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    return statistics.median(l["images_per_s"] for l in lines if "images_per_s" in l and l["step"] > 40)
one, two = rate("one"), rate("two")
print(f"\nstep throughput, default config, global batch 128 (images/s, both views):")
print(f"  1 process x {cores} threads:  {one:8.0f}")
print(f"  2 processes x {half} threads: {two:8.0f}  ({two / one:.2f}x of one process)")
PY
