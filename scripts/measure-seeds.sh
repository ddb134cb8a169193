#!/usr/bin/env bash
# Measure the configurations people report (results/seeds/claims.yaml) with the stacks they used, into
# results/seeds/<profile>/trials.csv; `qlora-bench report` then writes results/seeds.md from them.
# Every point runs (no OOM inferred from a smaller one). Resumable: recorded points are skipped.
# Usage: [RESULTS_DIR=results] scripts/measure-seeds.sh
set -uo pipefail  # a sweep with error rows exits 1: go on to the next, report at the end
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out="${RESULTS_DIR:-results}/seeds"
rc=0
sweep() { python3 -m bench sweep --results-dir "$out" --no-skip-implied --spare-workers 1 "$@" || rc=1; }
sweep --profile rtx3050-laptop --models qwen2.5-0.5b,qwen2.5-1.5b --seq-lens 256,512 \
  --batch-sizes 1 --ranks 8 --dtypes fp16,bf16 --grad-ckpt on,off --recipe trl
sweep --profile gtx1650 --models qwen2.5-3b,llama-3.2-3b --seq-lens 512 --batch-sizes 1 \
  --ranks 8 --dtypes fp16 --grad-ckpt on --recipe loop
sweep --profile l4 --models llama-3.2-3b --seq-lens 2048 --batch-sizes 4,8 --ranks 32,64 \
  --lora-alpha-ratio 1 --dtypes bf16 --grad-ckpt on --recipe trl,peft --padding longest --eval-batch-size 2,4
# the same with the report's length distribution over 16 steps: a real run's allocation history
sweep --profile l4 --models llama-3.2-3b --seq-lens 2048 --batch-sizes 4 --ranks 32 --lora-alpha-ratio 1 \
  --dtypes bf16 --grad-ckpt on --recipe trl,peft --padding longest --lengths 731/1062 --steps 16 --eval-batch-size 2,4
sweep --profile t4 --models llama-3.2-1b --seq-lens 2048 --batch-sizes 2 --ranks 16,64 \
  --dtypes fp16 --grad-ckpt on --recipe unsloth,liger,trl,loop,peft
sweep --profile rtx3070 --models tinyllama-1.1b --seq-lens 512 --batch-sizes 4 --ranks 16 \
  --dtypes fp16 --grad-ckpt on --recipe peft
# TRL 0.25.1 (installed apart, TRL_OLD_SITE; scripts/gpu-wheels.sh): the stack of most published
# reports, its rows in a folder of their own (a run refuses to mix TRL versions in one file)
if [ -n "${TRL_OLD_SITE:-}" ]; then
  old() {
    PYTHONPATH="$TRL_OLD_SITE:${PYTHONPATH:-}" python3 -m bench sweep --results-dir "$out/trl-0.25.1" \
      --no-skip-implied --spare-workers 1 --recipe trl "$@" || rc=1
  }
  if PYTHONPATH="$TRL_OLD_SITE:${PYTHONPATH:-}" python3 -c 'import trl, sys; sys.exit(trl.__version__ != "0.25.1")'; then
    old --profile rtx3050-laptop --models qwen2.5-0.5b,qwen2.5-1.5b --seq-lens 256,512 --batch-sizes 1 \
      --ranks 8 --dtypes fp16 --grad-ckpt on,off
    old --profile l4 --models llama-3.2-3b --seq-lens 2048 --batch-sizes 4,8 --ranks 32,64 \
      --lora-alpha-ratio 1 --dtypes bf16 --grad-ckpt on --padding longest --eval-batch-size 2,4
  else
    echo "TRL_OLD_SITE=$TRL_OLD_SITE does not hold trl 0.25.1" >&2; rc=1
  fi
fi
exit $rc
