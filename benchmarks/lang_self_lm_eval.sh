#!/usr/bin/env bash
# lang=self on lm-eval's OWN Belebele / XNLI / XStoryCloze definitions (their group names), on Gemma-3-270m with
# the committed mask, offline: the data source alone overridden to the few rows in tests/data (see
# tests/test_lang_self.py). Then a grid over belebele + xnli for targets fr, id, sw and its self/cross tables.
#   bash benchmarks/lang_self_lm_eval.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/lang_self}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
OVR=$(.venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); from test_lang_self import override_dir; from pathlib import Path; print(override_dir(Path('$OUT/overrides')))")
.venv/bin/lapeval eval --model lape \
  --model_args pretrained=gemma-3-270m,neurons=neuron_masks/gemma-3-270m.safetensors,lang=self,mode=set,value=p_max \
  --tasks belebele,xnli,xstorycloze --include_path "$OVR" --device cpu --batch_size 8 --output_path "$OUT/lm_eval" \
  > "$OUT/lm_eval.txt" 2>"$OUT/lm_eval.err"
.venv/bin/python - "$OUT" "$OVR" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
import lm_eval.tasks
from lapeval import GridConfig, run_grid
out, ovr = Path(sys.argv[1]), sys.argv[2]
res = json.loads(next((out / "lm_eval").rglob("results_*.json")).read_text())
iv = res["config"]["lape"]["intervention"]
print("lm_eval lang=self: languages routed", iv["languages"], "| unmodified", iv.get("unmodified"))
for t, r in sorted(res["results"].items()):
    if "acc,none" in r:
        print(f"  {t:<22} acc {r['acc,none']:.3f}")
base = Path(lm_eval.tasks.__file__).parent
cfg = GridConfig(model="gemma-3-270m", tasks=["belebele", "xnli"], targets=["fr", "id", "sw"],
                 neurons="neuron_masks/gemma-3-270m.safetensors", interventions=["set:p_max"],
                 include_path=[str(base / "belebele"), str(base / "xnli"), ovr], output=str(out / "grid"),
                 batch_size=8, bootstrap_iters=0, ci_resamples=200, multiplex="off")
run_grid(cfg, log=lambda m: None)
print((out / "grid" / "summary.md").read_text())
PY
