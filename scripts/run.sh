#!/usr/bin/env bash
# The main job: installs what it needs, builds, and pretrains the default configuration on
# Fashion-MNIST (Debian's dataset-fashion-mnist): ConvNet, expander 1024-1024-1024, batch 256,
# LARS, 12 epochs, about 25 minutes on 2 cores. Writes runs/fashion-mnist/{config.json,
# metrics.jsonl, checkpoint.pt, backbone.pt}; run it again to resume an interrupted run. Extra
# arguments go to `vicreg train` (see `build/vicreg train --help`), e.g. --max-steps 50.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
"$root/build/vicreg" train --exp-dir "$root/runs/fashion-mnist" "$@"
