#!/usr/bin/env bash
# The data of the per-kernel projection (analysis/kernel_projection.py): the H200's sustained
# rates (once), then profiled steps of every catalogue model at two lengths, batch 1, r16, with
# and without checkpointing (the fastest settings `estimate` picks often have none), once with
# the T4's attention kernels and fp16 (the cards without FlashAttention) and once with the
# H200's own and bf16 (the cards with it). Run alone on the GPU: the timings are the point.
# Appends to results/kernels/; a time-cut run resumes (profiled points are skipped).
# Usage: scripts/measure-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
models=qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b,qwen2.5-3b,llama-3.2-3b,qwen2.5-7b,llama-3.1-8b
[ -s results/kernels/rates.csv ] || python3 -m bench kernels --profile h200 --rates
k() { python3 -m bench kernels --models "$models" --seq-lens 512,2048 --batch-sizes 1 --ranks 16 --grad-ckpt on,off "$@"; }
k --profile t4 --dtypes fp16
k --profile h200 --dtypes bf16
