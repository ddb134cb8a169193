#!/usr/bin/env bash
# Find and verify the OOM boundaries of the design-card profiles on one large GPU (how
# results/<profile>/boundaries.csv was made; see results/README.md), then write the tables.
# Resumable: boundaries already recorded are skipped. Usage: scripts/measure-boundaries.sh [PROFILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(rtx3050-laptop gtx1650 rtx3070 t4 l4)
for profile in "${profiles[@]}"; do
  # Searches run concurrently, each worker capped at the card's memory: as many as fit in
  # ~120 GiB of the host GPU, at most 8 (16 CPU cores import the workers).
  parallel=$(python3 -c "
from bench.profiles import load_profile
cap = load_profile('$profile').gpu.usable_vram_gib
print(max(1, min(8, int(120 // (cap + 1)))))")
  python3 -m bench boundary --profile "$profile" --results-dir results --parallel "$parallel"
done
python3 -m bench report --results-dir results
