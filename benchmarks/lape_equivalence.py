"""``lape`` vs ``hf`` on the real model, through lm-eval's own xcopa task definitions on the local data
(plus a greedy generate_until task over XCOPA premises):

1. bit-identity: ``lape`` without ``neurons`` and with ``mode=scale,value=1`` (hooks active, lang=all)
   must give exactly ``hf``'s per-sample log-likelihoods and generations;
2. batch-size invariance: every mode (lang=self, so routing is exercised too) at batch size 1 and 8:
   max |Δ log-likelihood| and identical greedy text wherever ``hf`` itself is identical at both sizes.

    python benchmarks/lape_equivalence.py [--limit 20] [--gen-limit 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _lapebench as B

MODES = [("zero", None), ("set", "p_max"), ("set", "p_median"), ("set", 5.0), ("scale", 2.0), ("scale", 1.0),
         ("add", "p_max"), ("add", 1.0), ("set", "tt_max"), ("add", "tt_max"), ("set", "tt_p10")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--limit", type=int, default=20, help="XCOPA docs per language (2 choices each)")
    ap.add_argument("--gen-limit", type=int, default=8, help="generation prompts per language")
    ap.add_argument("--langs", default="id,vi")
    ap.add_argument("--dtype", default="auto", help="e.g. float64: separates intervention effects from float32 noise")
    ap.add_argument("--modes-only", action="store_true", help="skip the bit-identity part")
    ap.add_argument("--modes", help="subset, e.g. zero,set:p_max,add:tt_max (default: all)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from lm_eval.models.huggingface import HFLM

    from lapeval import models
    from lapeval.lm import LapeLM

    langs = args.langs.split(",")
    folder = B.write_tasks(Path(tempfile.mkdtemp(prefix="lape_eq_")), langs, langs)
    tm = B.task_manager(folder)
    ll_tasks, gen_tasks = ["lape_xcopa"], [f"lape_gen_{l}" for l in langs]
    mask = B.mask_path()
    out: dict = {"mask": str(mask)}

    def both(lm, bs):
        lm.batch_size_per_gpu = bs
        s = B.evaluate_samples(lm, tm, ll_tasks, args.limit)
        g = B.evaluate_samples(lm, tm, gen_tasks, args.gen_limit) if args.gen_limit else {}
        return B.loglikelihoods(s), B.generations(g)

    t0 = time.time()
    hf = HFLM(pretrained=models.resolve(args.model), device="cpu", batch_size=8, dtype=args.dtype)
    hf_ll8, hf_gen8 = both(hf, 8)
    hf_ll1, hf_gen1 = both(hf, 1)
    del hf
    lape = LapeLM(pretrained=args.model, device="cpu", batch_size=8, dtype=args.dtype)
    rows = []
    for name, kw in [] if args.modes_only else (("no neurons", None), ("scale=1, lang=all", dict(lang="all", mode="scale", value=1))):
        if kw:
            lape.set_intervention(neurons=mask, **kw)
        else:
            lape.clear_intervention()
        ll, gen = both(lape, 8)
        same_ll = sum(a == b for a, b in zip(ll, hf_ll8))
        same_gen = sum(a == b for a, b in zip(gen, hf_gen8))
        rows.append([name, f"{same_ll}/{len(ll)}", max(abs(a - b) for a, b in zip(ll, hf_ll8)), f"{same_gen}/{len(gen)}"])
    if rows:
        print(f"\n## lape vs hf, bit-identity ({args.model}, xcopa {'+'.join(langs)} limit {args.limit}, "
              f"generation limit {args.gen_limit}, batch size 8)\n")
        print(B.table(rows, ["lape setting", "identical log-likelihoods", "max |diff|", "identical generations"]))
    out["identity"] = rows

    hf_same = [a == b for a, b in zip(hf_gen1, hf_gen8)]
    rows = []
    wanted = None if not args.modes else {m if ":" in m else m + ":None" for m in args.modes.split(",")}
    for mode, value in [mv for mv in MODES if wanted is None or f"{mv[0]}:{mv[1]}" in wanted]:
        lape.set_intervention(neurons=mask, lang="self", mode=mode, value=value)
        ll8, gen8 = both(lape, 8)
        ll1, gen1 = both(lape, 1)
        dmax = max(abs(a - b) for a, b in zip(ll1, ll8))
        comparable = [i for i, s in enumerate(hf_same) if s]
        same = sum(gen1[i] == gen8[i] for i in comparable)
        changed = sum(a != b for a, b in zip(ll8, hf_ll8))
        rows.append([f"{mode}" + ("" if value is None else f" {value}"), f"{dmax:.2e}", "yes" if dmax <= 1e-5 else "NO",
                     f"{same}/{len(comparable)}", f"{changed}/{len(ll8)}"])
    hf_d = max(abs(a - b) for a, b in zip(hf_ll1, hf_ll8))
    print(f"\n## batch size 1 vs 8, dtype {args.dtype}, lang=self (hf itself: max |Δll| {hf_d:.2e}, identical generations "
          f"{sum(hf_same)}/{len(hf_same)})\n")
    print(B.table(rows, ["mode value", "max |Δ loglik|", "≤ 1e-5", "identical text (where hf is)", "ll changed vs hf"]))
    out["batch"] = rows
    out["hf_bs1_vs_bs8"] = {"max_ll_diff": hf_d, "identical_generations": sum(hf_same), "n": len(hf_same)}
    print(f"\n({time.time() - t0:.0f} s)")
    B.dump(args.json, out)


if __name__ == "__main__":
    main()
