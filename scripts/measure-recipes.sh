#!/usr/bin/env bash
# Sequence-length boundaries of the recipes beside peft for the five design cards (how the
# recipe sections of results/<profile>/boundaries.csv were made): batch 1, LoRA r16, fp16,
# checkpointing on, the profile's models. A reduced grid: the peft tables cover the full one.
# Resumable: boundaries already recorded are skipped.
# Usage: [BUDGET_S=seconds] [RESULTS_DIR=results] [RECIPES=trl,liger,unsloth,loop] \
#        scripts/measure-recipes.sh [PROFILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
results="${RESULTS_DIR:-results}"
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(gtx1650 rtx3050-laptop rtx3070 t4 l4)
args=()
for profile in "${profiles[@]}"; do args+=(--profile "$profile"); done
[ -z "${BUDGET_S:-}" ] || args+=(--time-budget "$BUDGET_S")
python3 -m bench boundary "${args[@]}" --recipe "${RECIPES:-trl,liger,unsloth,loop}" --ranks 16 \
  --dtypes fp16 --grad-ckpt on --axes seq_len --results-dir "$results"
python3 -m bench report --results-dir "$results"
