#!/usr/bin/env bash
# The LSS matrix of Gemma-3-270m with p_max amplification, in one process, on lapeval's parallel facts.
#   bash benchmarks/lss_matrix.sh [MODEL] [MASK] [OUT]
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="${1:-gemma-3-270m}"
MASK="${2:-$HERE/neuron_masks/gemma-3-270m.safetensors}"
OUT="${3:-$HERE/benchmarks/results/lss_matrix_gemma-3-270m.json}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
time lapeval lss matrix --model "$MODEL" --neurons "$MASK" --languages "${LANGS:-en,fr,id,vi,zh,ja,ru,th}" \
  --facts builtin --limit "${LIMIT:-40}" --mode set --value p_max --batch-size "${BATCH:-16}" --out "$OUT"
