#!/usr/bin/env bash
# Every kind of lapeval task through the real `lm_eval` command on Gemma-3-270m, offline, 24 items each.
#   bash benchmarks/real_tasks.sh [PRETRAINED] [OUT]
# PRETRAINED defaults to the prepared folder of `lapeval models prepare gemma-3-270m`.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${LAPEVAL_SHARED_DATA:-$HERE/../shared/data}"
PRETRAINED="${1:-$(python -c 'from lapeval.models import prepare; print(prepare("gemma-3-270m", quiet=True))')}"
OUT="${2:-$HERE/out/real_tasks}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_MULTIPROC=1
export LAPEVAL_FLORES_DIR="$SHARED/flores200_devtest"
export LAPEVAL_XCOPA_DIR="$SHARED/xcopa/data"
export LAPEVAL_XWINOGRAD_DIR="$SHARED/xwinograd"
export LAPEVAL_MLAMA_DIR="$(lapeval lss facts-dir)"
# INCLUDE has no offline copy: the test fixture in its schema stands in for it
INC="$(mktemp -d)"; trap 'rm -rf "$INC"' EXIT
python - "$INC" <<'PY'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from test_tasks import write_include_fixture
write_include_fixture(Path(sys.argv[1]))
PY
export LAPEVAL_INCLUDE_DIR="$INC"
TASKS="${TASKS:-lss_en,lss_zh,flores_mt_en-fr,flores_mt_en-zh,flores_mt_en-sw,flores_mt_fr-en,flores_ppl_en,flores_ppl_fr,flores_ppl_zh,lang_steer_en,lang_steer_fr,lang_steer_ja,lapeval_xcopa,lapeval_xwinograd,lapeval_include_id}"
time lm_eval --model hf --model_args "pretrained=$PRETRAINED,dtype=float32" --tasks "$TASKS" \
  --include_path "$HERE/tasks" --limit 24 --device cpu --batch_size 8 --output_path "$OUT" --log_samples
