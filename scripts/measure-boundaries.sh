#!/usr/bin/env bash
# Find and verify the OOM boundaries of the design-card profiles on one large GPU (how
# results/<profile>/boundaries.csv was made; see results/README.md), then write the tables.
# Resumable: boundaries already recorded are skipped, so a run cut short is finished by running
# the same command again. Searches run concurrently (`--parallel auto`: as many capped workers,
# each with a preloading spare, as the host GPU holds; at most 8).
# Usage: [BUDGET_S=seconds] [RESULTS_DIR=results] scripts/measure-boundaries.sh [PROFILE...]
# BUDGET_S: start no new search after that many seconds in all (for time-limited machines).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
results="${RESULTS_DIR:-results}"
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(gtx1650 rtx3050-laptop rtx3070 t4 l4)
start=$(date +%s)
for profile in "${profiles[@]}"; do
  budget=()
  if [ -n "${BUDGET_S:-}" ]; then
    left=$((BUDGET_S - ($(date +%s) - start)))
    if [ "$left" -le 0 ]; then echo "time budget spent; rerun to go on" >&2; break; fi
    budget=(--time-budget "$left")
  fi
  python3 -m bench boundary --profile "$profile" --results-dir "$results" "${budget[@]}"
done
python3 -m bench report --results-dir "$results"
