"""One ``lapeval grid`` against the same cells as separate ``lm_eval`` processes (one per cell: model load,
task index and dataset loading each time). Same model, mask, tasks, limit and batch size; both run as
fresh processes from this script, alternating order is not needed since each side runs once in full.
Prints both wall times, their ratio (goal <= 0.6) and checks that every metric of every cell agrees.

    python benchmarks/grid_vs_separate.py [--targets en,fr,zh,ja] [--limit 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAPEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def newest_results(folder: Path) -> dict:
    files = sorted(folder.rglob("results_*.json"))
    if not files:
        raise SystemExit(f"no results under {folder}")
    return json.loads(files[-1].read_text())["results"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--mask", default=str(ROOT / "neuron_masks" / "gemma-3-270m.safetensors"))
    ap.add_argument("--targets", default="en,fr,zh,ja")
    ap.add_argument("--tasks", default=None, help="default: lss_<t> and flores_ppl_<t> for every target")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()

    from lapeval.models import resolve
    from lapeval.taskdata import FACTS_DIR

    targets = args.targets.split(",")
    tasks = args.tasks or ",".join([f"lss_{t}" for t in targets] + [f"flores_ppl_{t}" for t in targets])
    pretrained = resolve(args.model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LAPEVAL_MLAMA_DIR": str(FACTS_DIR), "LAPEVAL_FLORES_DIR": str(SHARED / "flores200_devtest")}
    work = Path(tempfile.mkdtemp(prefix="grid_vs_sep_"))
    bindir = Path(sys.executable).parent
    lm_eval = str(bindir / "lm_eval") if (bindir / "lm_eval").exists() else shutil.which("lm_eval")
    tasks_path = subprocess.run([sys.executable, "-m", "lapeval", "tasks-path"], capture_output=True, text=True,
                                check=True).stdout.strip()

    cells = [("baseline", None)] + [(f"set=p_max/{t}", t) for t in targets]
    t0 = time.perf_counter()
    for name, t in cells:
        margs = f"pretrained={pretrained},dtype=float32"
        if t:
            margs += f",neurons={args.mask},lang={t},mode=set,value=p_max"
        cmd = [lm_eval, "--model", "lape", "--model_args", margs, "--tasks", tasks, "--include_path", tasks_path,
               "--limit", str(args.limit), "--batch_size", str(args.batch_size), "--device", "cpu", "--log_samples",
               "--output_path", str(work / "separate" / name.replace("/", "__"))]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"lm_eval failed for {name}:\n{r.stderr[-2000:]}")
        print(f"separate {name}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    separate = time.perf_counter() - t0

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "lapeval", "grid", "--model", args.model, "--model-args", "dtype=float32",
           "--neurons", args.mask, "--targets", args.targets, "--tasks", tasks, "--limit", str(args.limit),
           "--batch-size", str(args.batch_size), "--device", "cpu", "--output", str(work / "grid")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"lapeval grid failed:\n{r.stderr[-2000:]}")
    grid = time.perf_counter() - t0
    print(f"grid: done in {grid:.0f} s", flush=True)

    worst, compared = 0.0, 0
    for name, _ in cells:
        a = newest_results(work / "separate" / name.replace("/", "__"))
        b = json.loads((work / "grid" / "cells" / name.replace("/", "__") / "results.json").read_text())["results"]
        for task, metrics in a.items():
            for k, v in metrics.items():
                if isinstance(v, float) and "stderr" not in k:
                    worst = max(worst, abs(b[task][k] - v))
                    compared += 1
    rows = [["separate lm_eval processes", len(cells), f"{separate:.1f}"], ["lapeval grid (one process)", len(cells), f"{grid:.1f}"]]
    print(f"\n## grid vs separate processes: {args.model}, CPU, {len(tasks.split(','))} tasks, limit {args.limit}, "
          f"batch size {args.batch_size}\n")
    print("| run | cells | wall s |\n|---|---:|---:|")
    for r_ in rows:
        print("| " + " | ".join(str(c) for c in r_) + " |")
    print(f"\nratio grid / separate = {grid / separate:.3f} (goal <= 0.6); {compared} metrics compared, "
          f"largest difference {worst:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"separate_s": separate, "grid_s": grid, "ratio": grid / separate,
                                               "cells": [c for c, _ in cells], "tasks": tasks, "limit": args.limit,
                                               "metrics_compared": compared, "max_abs_difference": worst}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
