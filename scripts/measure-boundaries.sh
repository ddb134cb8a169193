#!/usr/bin/env bash
# Find and verify the OOM boundaries of the design-card profiles on one large GPU (how
# results/<profile>/boundaries.csv was made; see docs/published-results.md), then write the tables.
# The profiles are searched together in one run (their model groups share the slots and the
# host GPU's memory, `--parallel auto`: as many capped workers as the host GPU holds, at most
# 8). Resumable: boundaries already recorded are skipped, so a run cut short is finished by
# running the same command again.
# Usage: [BUDGET_S=seconds] [RESULTS_DIR=results] scripts/measure-boundaries.sh [PROFILE...]
# BUDGET_S: start no new search after that many seconds (for time-limited machines).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
results="${RESULTS_DIR:-results}"
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(gtx1650 rtx3050-laptop rtx3070 t4 l4)
args=()
for profile in "${profiles[@]}"; do args+=(--profile "$profile"); done
[ -z "${BUDGET_S:-}" ] || args+=(--time-budget "$BUDGET_S")
python3 -m bench boundary "${args[@]}" --results-dir "$results"
python3 -m bench report --results-dir "$results"
