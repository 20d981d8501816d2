#!/usr/bin/env bash
# The main job: installs what it needs, builds, pretrains the default configuration on
# Fashion-MNIST (Debian's dataset-fashion-mnist: ConvNet with a 1x1 conv to 1024 channels,
# expander 1024-1024-1024, batch 128, AdamW, 12 epochs, bf16 where the CPU has it: about 30
# minutes on 2 cores), then evaluates the backbone on the test split
# (linear probe and kNN, with collapse diagnostics) and writes the run report. Writes
# runs/fashion-mnist/{config.json, metrics.jsonl, checkpoint.pt, backbone.pt, linear.json, knn.json,
# report.html, results.md}; run it again to resume an interrupted run. Extra arguments
# go to `vicreg train` (see `build/vicreg train --help`), e.g. --max-steps 50 for a smoke run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exp="$root/runs/fashion-mnist"
bash "$root/scripts/build.sh"
# --eval-every 4: the kNN probe at epochs 4, 8 and 12 (about 15 s each), for the report's curve.
"$root/build/vicreg" train --exp-dir "$exp" --eval-every 4 "$@"
"$root/build/vicreg" eval --checkpoint "$exp/checkpoint.pt" --protocol linear --json "$exp/linear.json"
"$root/build/vicreg" eval --checkpoint "$exp/checkpoint.pt" --protocol knn --json "$exp/knn.json"
"$root/build/vicreg" report --exp-dir "$exp"
