#!/usr/bin/env bash
# Sequence-length boundaries of the recipes beside peft for the five design cards (how the
# recipe sections of results/<profile>/boundaries.csv were made): batch 1, LoRA r16,
# checkpointing on, the profile's models. A reduced grid: the peft tables cover the full one.
# fp16 on every card, the precision all five have (TRL since 0.26 casts a 4-bit model's adapters to
# bf16, so its fp16 searches end in that error at once); TRL in bf16 too on the cards that
# have it (of the five: rtx3050-laptop, rtx3070, l4), which is how it runs there.
# Resumable: boundaries already recorded are skipped; BUDGET_S bounds each invocation.
# Usage: [BUDGET_S=seconds] [RESULTS_DIR=results] [RECIPES=loop,liger,trl,unsloth] \
#        scripts/measure-recipes.sh [PROFILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
results="${RESULTS_DIR:-results}"
recipes="${RECIPES:-loop,liger,trl,unsloth}"
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(gtx1650 rtx3050-laptop rtx3070 t4 l4)
boundary() {  # boundary DTYPE RECIPES PROFILE...
  local dtype=$1 which=$2 args=()
  shift 2
  for profile in "$@"; do args+=(--profile "$profile"); done
  [ -z "${BUDGET_S:-}" ] || args+=(--time-budget "$BUDGET_S")
  python3 -m bench boundary "${args[@]}" --recipe "$which" --ranks 16 --dtypes "$dtype" \
    --grad-ckpt on --axes seq_len --results-dir "$results"
}
boundary fp16 "$recipes" "${profiles[@]}"
# the cards whose profile says they have bf16 (native_bf16)
mapfile -t bf16_cards < <(python3 -c '
import sys
from bench.catalog import load_catalog
from bench.profiles import load_profile
for name in sys.argv[1:]:
    if load_profile(name, set(load_catalog())).gpu.native_bf16:
        print(name)
' "${profiles[@]}")
if [[ ",$recipes," == *,trl,* && ${#bf16_cards[@]} -gt 0 ]]; then
  boundary bf16 trl "${bf16_cards[@]}"
fi
python3 -m bench report --results-dir "$results"
