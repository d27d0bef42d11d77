#!/usr/bin/env bash
# LSS from lm-eval sample logs (baseline: hf; intervened: lape with p_max) equals the in-process matrix,
# and the logged baseline margins equal a direct transformers scoring.
#   bash benchmarks/lss_logs_vs_direct.sh [PRETRAINED] [MASK] [OUT]
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PRETRAINED="${1:-$(python -c 'from lapeval.models import prepare; print(prepare("gemma-3-270m", quiet=True))')}"
MASK="${2:-$HERE/neuron_masks/gemma-3-270m.safetensors}"
OUT="${3:-$HERE/out/lss_logs}"
SRC="${SRC:-en,ja}" TGT="${TGT:-fr zh}" LIMIT="${LIMIT:-24}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LAPEVAL_MLAMA_DIR="$(lapeval lss facts-dir)"
tasks="lss_${SRC//,/,lss_}"
common=(--tasks "$tasks" --limit "$LIMIT" --device cpu --batch_size 8 --log_samples)
python -m lapeval eval --model hf --model_args "pretrained=$PRETRAINED,dtype=float32" --output_path "$OUT/base" "${common[@]}"
runs=()
for t in $TGT; do
  python -m lapeval eval --model lape --model_args "pretrained=$PRETRAINED,dtype=float32,neurons=$MASK,lang=$t,mode=set,value=p_max" \
    --output_path "$OUT/$t" "${common[@]}"
  runs+=("$t=$OUT/$t")
done
lapeval lss score --baseline "$OUT/base" --intervened "${runs[@]}" --out "$OUT/from_logs.json"
lapeval lss matrix --model "$PRETRAINED" --neurons "$MASK" --languages "$SRC" --targets "${TGT// /,}" --limit "$LIMIT" \
  --out "$OUT/in_process.json"
python "$HERE/benchmarks/lss_direct.py" "$PRETRAINED" "$OUT"
