"""Wall-time cost of the ``lape`` hooks: the same lm-eval task with ``hf`` and with ``lape`` amplifying
all languages of the mask (``lang=all,mode=set,value=p_max``, every layer), for a loglikelihood task
(lm-eval's xcopa on the local data) and a generate_until task (greedy continuation of XCOPA premises).
Runs alternate hf / lape and the minimum of ``--repeats`` is compared (the CPU is shared). Goal: ≤ 1.05.

    python benchmarks/intervention_overhead.py [--limit 50] [--gen-limit 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _lapebench as B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--mask")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--gen-limit", type=int, default=16)
    ap.add_argument("--max-gen-toks", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--value", default="p_max")
    ap.add_argument("--json")
    args = ap.parse_args()

    from lm_eval.models.huggingface import HFLM

    from lapeval import models
    from lapeval.lm import LapeLM

    mask = args.mask or B.mask_path()
    folder = B.write_tasks(Path(tempfile.mkdtemp(prefix="lape_ovh_")), ("id",), ("id",), args.max_gen_toks)
    tm = B.task_manager(folder)
    hf = HFLM(pretrained=models.resolve(args.model), device="cpu", batch_size=args.batch_size)
    lape = LapeLM(pretrained=args.model, device="cpu", batch_size=args.batch_size, neurons=str(mask), lang="all",
                  mode="set", value=args.value)
    n_neurons = lape.intervention.intervention(tuple(lape.intervention.lang)).n_neurons
    rows, out = [], {}
    for kind, tasks, limit in (("loglikelihood", ["lape_xcopa"], args.limit), ("generate_until", ["lape_gen_id"], args.gen_limit)):
        times = {"hf": [], "lape": []}
        B.evaluate_samples(hf, tm, tasks, 2)  # warm-up (datasets, kernels)
        B.evaluate_samples(lape, tm, tasks, 2)
        for _ in range(args.repeats):
            for name, lm in (("hf", hf), ("lape", lape)):
                t = time.perf_counter()
                B.evaluate_samples(lm, tm, tasks, limit)
                times[name].append(time.perf_counter() - t)
        h, l = min(times["hf"]), min(times["lape"])
        rows.append([kind, limit, f"{h:.2f}", f"{l:.2f}", f"{l / h:.3f}", "yes" if l / h <= 1.05 else "no"])
        out[kind] = times
    print(f"\n## intervention overhead: {args.model}, CPU, batch size {args.batch_size}, lape lang=all "
          f"({n_neurons} neurons in {len(lape.sites)} layers) mode=set value={args.value}; min of {args.repeats}\n")
    print(B.table(rows, ["request type", "docs", "hf s", "lape s", "ratio", "≤ 1.05"]))
    B.dump(args.json, {"mask": str(mask), "rows": rows, "times": out})


if __name__ == "__main__":
    main()
