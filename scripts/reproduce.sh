#!/usr/bin/env bash
# Reproduces the results table of docs/results.md in one go: the main job (scripts/run.sh: install, build,
# pretrain the default configuration on Fashion-MNIST, linear probe and kNN), then kNN on the
# embedding, fine-tuning on 1 % and 10 % of the labels, the same protocols on the two baselines
# (raw pixels; the untrained model of the same config, which fine-tuned is plain supervised
# training), and the run report. Every result lands as JSON in runs/fashion-mnist/ (baselines
# prefixed baseline-), the report in runs/fashion-mnist/report.html, and the table in
# runs/fashion-mnist/results.md (also printed).
# About 40 minutes on 2 cores. Extra arguments go to `vicreg train`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exp="$root/runs/fashion-mnist"
v="$root/build/vicreg"

bash "$root/scripts/run.sh" "$@"  # writes linear.json and knn.json

"$v" eval --checkpoint "$exp/checkpoint.pt" --protocol knn --embedding --json "$exp/knn-embedding.json"
for fraction in 0.01 0.1; do
  "$v" eval --backbone "$exp/backbone.pt" --protocol finetune --label-fraction "$fraction" \
    --json "$exp/finetune-$fraction.json"
done

for baseline in pixels random-init; do
  common=(--baseline "$baseline" --config "$exp/config.json")
  "$v" eval "${common[@]}" --protocol linear --json "$exp/baseline-$baseline-linear.json"
  "$v" eval "${common[@]}" --protocol knn --json "$exp/baseline-$baseline-knn.json"
done
for fraction in 0.01 0.1; do
  "$v" eval --baseline random-init --config "$exp/config.json" --protocol finetune \
    --label-fraction "$fraction" --json "$exp/baseline-random-init-finetune-$fraction.json"
done

"$v" report --exp-dir "$exp"

echo
cat "$exp/results.md"
