#!/usr/bin/env bash
# The main job: installs what it needs, builds, and runs the vicreg CLI on a real workload.
# Until pretraining lands this is the loss benchmark: the fused VICReg loss against the
# reference formulation at the shapes of the reference recipes. Extra arguments go to
# `vicreg bench-loss` (see `build/vicreg bench-loss --help`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
"$root/build/vicreg" bench-loss --json "$root/build/bench-loss.json" "$@"
echo "results also in build/bench-loss.json"
