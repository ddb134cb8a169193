#!/usr/bin/env bash
# Measure the published sweeps on a GPU host (how results/ was made; see docs/published-results.md).
# Usage: scripts/measure-gpu.sh PROFILE [PROFILE ...]
# Resumable: rows already in results/<profile>/trials.csv are skipped, so a run cut short by a
# time limit continues where it stopped. Extra sweep flags go in QLORA_BENCH_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for profile in "$@"; do
  # shellcheck disable=SC2086
  python3 -m bench --profile "$profile" --results-dir results --spare-workers 3 ${QLORA_BENCH_FLAGS:-}
done
