"""Paper 1's key result with the ``lape`` model: deactivate each language's neurons (``mode=zero``) and
measure FLORES-200 devtest perplexity in every language. The diagonal (deactivate L, evaluate L) should
rise far more than the off-diagonal.

Perplexity of language E under setting S is exp(Σ NLL / Σ tokens) over the first ``--n`` devtest
sentences, each scored whole as ``loglikelihood("", sentence)`` (every token predicted, the first from BOS;
as the ``flores_ppl_*`` tasks, see lapeval/metrics/perplexity.py — ``loglikelihood_rolling`` would also score
log P(BOS | BOS) on Gemma). Tokens counted without BOS.
ΔNLL[S, E] = log PPL[S, E] − log PPL[baseline, E]; the reported ratio is
mean_L ΔNLL[L, L] / mean_{L≠E} ΔNLL[L, E] (and the same with PPL differences).

    python benchmarks/deactivation_matrix.py [--langs en,zh,ja,id,vi,fr,es,ru] [--n 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import time

import _lapebench as B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--mask")
    ap.add_argument("--langs", default="en,zh,ja,id,vi,fr,es,ru")
    ap.add_argument("--n", type=int, default=50, help="devtest sentences per language")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()

    from lapeval import languages
    from lapeval.instances import instances
    from lapeval.lm import LapeLM

    mask = args.mask or B.mask_path()
    langs = [languages.normalize(l) for l in args.langs.split(",")]
    pairs, owner = [], []
    for l in langs:
        path = B.SHARED / "flores200_devtest" / "devtest" / f"{languages.get(l).flores}.devtest"
        for s in path.read_text(encoding="utf-8").splitlines()[: args.n]:
            pairs.append(("", s))
            owner.append(l)
    reqs = instances("loglikelihood", pairs, [f"flores_ppl_{l}" for l in owner])
    lm = LapeLM(pretrained=args.model, device="cpu", batch_size=args.batch_size)
    ntok = {l: 0 for l in langs}
    for r, l in zip(reqs, owner):
        ntok[l] += len(lm.tok_encode(r.args[1], add_special_tokens=False))

    def ppl() -> dict[str, float]:
        lls = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
        nll = {l: 0.0 for l in langs}
        for v, l in zip(lls, owner):
            nll[l] -= v
        return {l: math.exp(nll[l] / ntok[l]) for l in langs}

    t0 = time.time()
    lm.clear_intervention()
    base = ppl()
    print(f"baseline done ({time.time() - t0:.0f} s)", flush=True)
    rows = {}
    for d in langs:
        lm.set_intervention(neurons=mask, lang=d, mode="zero")
        rows[d] = ppl()
        n = lm.intervention.intervention((d,)).n_neurons
        print(f"deactivated {d} ({n} neurons) done ({time.time() - t0:.0f} s)", flush=True)

    dnll = {d: {e: math.log(rows[d][e]) - math.log(base[e]) for e in langs} for d in langs}
    dppl = {d: {e: rows[d][e] - base[e] for e in langs} for d in langs}

    def ratio(m):
        diag = sum(m[l][l] for l in langs) / len(langs)
        off = [m[d][e] for d in langs for e in langs if d != e]
        return diag, sum(off) / len(off), diag / (sum(off) / len(off))

    print(f"\n## FLORES devtest perplexity, {args.model}, first {args.n} sentences per language; mask {mask}\n")
    print(B.table([["baseline"] + [f"{base[e]:.2f}" for e in langs]]
                  + [[f"zero {d}"] + [f"{rows[d][e]:.2f}" for e in langs] for d in langs], ["deactivated \\ eval"] + langs))
    print("\n## ΔNLL = log(PPL / baseline PPL) (diagonal marked *)\n")
    print(B.table([[f"zero {d}"] + [f"{dnll[d][e]:+.3f}{'*' if d == e else ''}" for e in langs] for d in langs],
                  ["deactivated \\ eval"] + langs))
    dg, of, r = ratio(dnll)
    dg2, of2, r2 = ratio(dppl)
    dominant = sum(all(dnll[d][d] > dnll[d][e] for e in langs if e != d) for d in langs)
    col_dominant = sum(all(dnll[e][e] > dnll[d][e] for d in langs if d != e) for e in langs)
    print(f"\nmean diagonal ΔNLL {dg:.3f}, mean off-diagonal ΔNLL {of:.3f}, ratio {r:.1f}")
    print(f"mean diagonal ΔPPL {dg2:.2f}, mean off-diagonal ΔPPL {of2:.2f}, ratio {r2:.1f}")
    print(f"rows whose largest increase is on the diagonal: {dominant}/{len(langs)}; "
          f"columns whose largest increase comes from their own language: {col_dominant}/{len(langs)}")
    print(f"({time.time() - t0:.0f} s)")
    B.dump(args.json, {"mask": str(mask), "n": args.n, "langs": langs, "baseline": base, "ppl": rows, "dnll": dnll,
                       "ratio_dnll": r, "ratio_dppl": r2, "diag_dominant_rows": dominant, "diag_dominant_cols": col_dominant})


if __name__ == "__main__":
    main()
