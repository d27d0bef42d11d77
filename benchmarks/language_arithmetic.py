"""Language arithmetic on Gemma-3-270m: composite, graded and scoped interventions on FLORES en→X.

One model load for everything:

1. ``search_factor`` sweeps ``add:α*p_max`` over α ∈ {0.5, 1, 2, 4} on the LSS facts (builtin, 8 source
   languages, 6 targets); the α with the highest mean off-diagonal LSS is the one used below, and the
   sweep curves are written (JSON, markdown, PNG).
2. One grid, target ``self`` (each FLORES en→X task gets X's neurons): baseline, ``set:p_max``,
   ``zero@en;set:p_max`` (suppress the source, Gurgurov et al. 2025), ``add:α*p_max``, each with
   ``scope=all`` and ``scope=generation``, on flores_mt_en-{fr,zh,ja,id}, ``--limit`` sentences each.
3. The table: off-target rate (fastText lid.176), chrF++ and BLEU per task and cell, with the grid's paired
   bootstrap 95% CI of each Δ to the baseline.

    python benchmarks/language_arithmetic.py [--limit 40] [--lss-limit 30] [--out out/language-arithmetic]

Writes benchmarks/results/language_arithmetic_gemma-3-270m.{json,md}, the sweep as
benchmarks/results/lss_sweep_gemma-3-270m.{json,md,sweep.png,png}, and (``--docs``) the tables and figure
under docs/language-arithmetic/ (docs/language-arithmetic.md discusses them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import _lapebench as B

TARGETS = ["fr", "zh", "ja", "id"]
SWEEP_SOURCES = "en,fr,zh,ja,id,vi,ru,th"
SWEEP_TARGETS = "fr,zh,ja,id,ru,vi"
METRICS = [("off_target", "off-target"), ("chrfpp", "chrF++"), ("bleu", "BLEU")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--limit", type=int, default=40, help="FLORES sentences per direction")
    ap.add_argument("--lss-limit", type=int, default=30, help="facts per source language in the sweep")
    ap.add_argument("--alphas", default="0.5,1,2,4")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="out/language-arithmetic")
    ap.add_argument("--docs", action="store_true", help="also write docs/language-arithmetic.md and its figure")
    args = ap.parse_args()
    os.environ.setdefault("LAPEVAL_FLORES_DIR", str(B.SHARED / "flores200_devtest"))

    from lapeval import GridConfig, LapeLM, run_grid, search_factor

    results = B.ROOT / "benchmarks" / "results"
    mask = B.mask_path()
    started = time.time()
    lm = LapeLM(pretrained=args.model, device="cpu", batch_size=args.batch_size)
    print(f"model loaded in {time.time() - started:.0f}s", flush=True)

    t0 = time.time()
    sweep_json = results / f"lss_sweep_{args.model}.json"
    doc = search_factor(lm, mask, SWEEP_SOURCES, SWEEP_TARGETS, facts="builtin", limit=args.lss_limit,
                        sweep="add:p_max", alphas=args.alphas, out=sweep_json, batch_size=args.batch_size,
                        log=lambda m: print(m, flush=True))
    best = doc["sweep"]["best_alpha_overall"]
    alpha = best["alpha"]
    print(f"sweep {time.time() - t0:.0f}s: best α overall {alpha:g} (mean LSS {best['lss']:.3f})", flush=True)

    graded = "add:p_max" if alpha == 1 else f"add:{alpha:g}*p_max"
    ops = ["set:p_max", "zero@en;set:p_max", graded]
    interventions = [*ops, *(f"{o};scope:generation" for o in ops)]
    cfg = GridConfig(model=args.model, neurons=str(mask), tasks=[f"flores_mt_en-{x}" for x in TARGETS],
                     targets=["self"], interventions=interventions, limit=args.limit, batch_size=args.batch_size,
                     output=args.out, bootstrap_iters=0, ci_resamples=1000)
    t1 = time.time()
    status = run_grid(cfg, log=lambda m: print(m, flush=True), lm=lm)
    grid_s = time.time() - t1
    print(f"grid {grid_s:.0f}s ({sum(v == 'ran' for v in status.values())} cells ran)", flush=True)

    summary = json.loads((Path(args.out) / "summary.json").read_text())
    cells = ["baseline", *(f"{iv}/self" for iv in [c.op for c in cfg.cells() if c.target]) ]
    table = {}
    for r in summary["rows"]:
        if r["filter"] != "none" or r["metric"] not in dict(METRICS):
            continue
        table.setdefault(r["task"], {}).setdefault(r["cell"], {})[r["metric"]] = {
            "value": r["value"], "delta": r["delta"], "ci": [r["ci_low"], r["ci_high"]]}
    out = {"model": args.model, "mask": str(mask.relative_to(B.ROOT)) if mask.is_relative_to(B.ROOT) else str(mask),
           "limit": args.limit, "lss_limit": args.lss_limit, "sweep": doc["sweep"], "alpha": alpha, "interventions": interventions,
           "cells": cells, "table": table, "grid_seconds": round(grid_s, 1),
           "seconds": round(time.time() - started, 1), "grid_status": status}
    js = results / f"language_arithmetic_{args.model}.json"
    js.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = render(out)
    (results / f"language_arithmetic_{args.model}.md").write_text(md, encoding="utf-8")
    print(md)
    if args.docs:
        fig = B.ROOT / "docs" / "language-arithmetic"
        fig.mkdir(exist_ok=True)
        shutil.copyfile(sweep_json.with_suffix(".sweep.png"), fig / f"lss_sweep_{args.model}.png")
        (fig / "results.md").write_text(md, encoding="utf-8")  # docs/language-arithmetic.md reads it


def _f(v, nd=1, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def render(out: dict) -> str:
    s = out["sweep"]
    L = [f"# Language arithmetic on {out['model']}: FLORES en→X", "",
         f"Committed mask `{out['mask']}`; FLORES-200 devtest, first {out['limit']} sentences per direction; greedy, "
         "the amplification paper's prompt; off-target = share of outputs fastText lid.176 does not identify as X "
         "(%), chrF++ and BLEU by sacrebleu. One grid, one model load, target `self` (each en→X task gets X's "
         "neurons); Δ to the baseline with the grid's paired bootstrap 95% CI (1000 resamples) in brackets.",
         "", f"α of `add:α*p_max`: **{out['alpha']:g}**, the best mean off-diagonal LSS of the sweep below.", ""]
    for task, per in out["table"].items():
        L += [f"## {task}", "", "| intervention | " + " | ".join(n for _, n in METRICS) + " |",
              "|---|" + "---:|" * len(METRICS)]
        for cell in out["cells"]:
            m = per.get(cell, {})
            vals = []
            for key, _ in METRICS:
                e = m.get(key)
                pct = key == "off_target"
                if e is None:
                    vals.append("–")
                elif cell == "baseline" or e["delta"] is None:
                    vals.append(_f(e["value"], 1, pct))
                else:
                    ci = e["ci"]
                    ci_s = "" if ci[0] is None else f" [{_f(ci[0], 1, pct)}, {_f(ci[1], 1, pct)}]"
                    vals.append(f"{_f(e['value'], 1, pct)} (Δ {_f(e['delta'], 1, pct)}{ci_s})")
            L.append(f"| `{cell.rsplit('/', 1)[0]}` | " + " | ".join(vals) + " |")
        L.append("")
    L += ["## Mean over the four directions", "", "| intervention | " + " | ".join(n for _, n in METRICS) + " |",
          "|---|" + "---:|" * len(METRICS)]
    for cell in out["cells"]:
        vals = []
        for key, _ in METRICS:
            xs = [per[cell][key]["value"] for per in out["table"].values() if key in per.get(cell, {})]
            vals.append(_f(sum(xs) / len(xs), 1, key == "off_target") if xs else "–")
        L.append(f"| `{cell.rsplit('/', 1)[0]}` | " + " | ".join(vals) + " |")
    L += ["", f"## LSS sweep of `{s.get('graded', s['operation'])}`", "",
          f"Mean LSS over sources s ≠ t (sources {SWEEP_SOURCES}; builtin facts, first {out.get('lss_limit', '')} "
          "per source).", "", f"![LSS against α](lss_sweep_{out['model']}.png)", "",
          "| target | " + " | ".join(f"α={a:g}" for a in s["alphas"]) + " | best α |",
          "|---|" + "---:|" * (len(s["alphas"]) + 1)]
    for t, ys in [*s["curves"].items(), ("all", s["overall"])]:
        b = s["best_alpha_per_target"].get(t) if t != "all" else s["best_alpha_overall"]
        L.append(f"| {t} | " + " | ".join(_f(y, 3) for y in ys) + f" | {'–' if b is None else format(b['alpha'], 'g')} |")
    L += ["", f"Wall time: grid {out['grid_seconds']:.0f} s, everything {out['seconds']:.0f} s (2 CPU cores)."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
