#!/usr/bin/env bash
# The data of the per-kernel projection (analysis/kernel_projection.py): the H200's sustained
# rates (once), then profiled steps of every catalogue model, batch 1, r16, with and without
# checkpointing (the fastest settings `estimate` picks often have none), once with the T4's
# attention kernels and fp16 (the cards without FlashAttention) and once with the H200's own and
# bf16 (the cards with it). Without checkpointing the T4's cap holds less, so its points there
# are those that fit it (its boundaries: Qwen2.5-7B 384 tokens, the 3B models under 1024, none
# at 2048); a point that runs out of memory writes no row and would be tried again on resume.
# Run alone on the GPU: the timings are the point.
# Appends to results/kernels/; a time-cut run resumes (profiled points are skipped).
# Usage: scripts/measure-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
small=qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b
models=$small,qwen2.5-3b,llama-3.2-3b,qwen2.5-7b,llama-3.1-8b
[ -s results/kernels/rates.csv ] || python3 -m bench kernels --profile h200 --rates
k() { python3 -m bench kernels --batch-sizes 1 --ranks 16 "$@"; }
k --profile t4 --dtypes fp16 --models "$models" --seq-lens 512,2048 --grad-ckpt on
k --profile t4 --dtypes fp16 --models "$small,qwen2.5-3b,llama-3.2-3b" --seq-lens 512 --grad-ckpt off
k --profile t4 --dtypes fp16 --models "$small" --seq-lens 1024 --grad-ckpt off
k --profile t4 --dtypes fp16 --models qwen2.5-7b --seq-lens 256 --grad-ckpt off
k --profile h200 --dtypes bf16 --models "$models" --seq-lens 512,2048 --grad-ckpt on,off
