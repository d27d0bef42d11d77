"""Paper 2's steering with the ``lape`` model: ``mode=set,value=p_max`` on a target language's neurons
makes greedy continuations of prompts in *other* languages come out in the target language.

Prompts: Language Confusion Benchmark monolingual prompts (``../shared/data/language_confusion``),
``--n`` per source language, fed as ``"<prompt>\\n"``; greedy, ``--max-gen-toks`` new tokens through
lm-eval's ``generate_until``. The language of each output is fastText lid.176's (lapeval.metrics.lid).
For each target T: share of outputs (over prompts whose source ≠ T) identified as T, baseline vs steered.

    python benchmarks/steering_table.py [--targets en,zh,ja,fr,es,ru,id,vi] [--n 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import time

import _lapebench as B

SOURCES = {  # language -> LCB monolingual file
    "en": "aya/en.csv", "zh": "aya/zh.csv", "ja": "native/ja.csv", "fr": "dolly/fr.csv",
    "es": "dolly/es.csv", "ru": "dolly/ru.csv", "ar": "dolly/ar.csv",
}


def prompts(lang: str, n: int) -> list[str]:
    path = B.SHARED / "language_confusion" / "test_sets" / "monolingual" / SOURCES[lang]
    with open(path, encoding="utf-8") as f:
        rows = [r["prompt"].strip() for r in csv.DictReader(f)]
    rows = [r for r in rows if 0 < len(r) <= 300 and "\n" not in r]  # short single-line prompts
    return rows[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--mask")
    ap.add_argument("--sources", default="en,zh,ja,fr,es,ru")
    ap.add_argument("--targets", default="en,zh,ja,fr,es,ru,id,vi")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-gen-toks", type=int, default=24)
    ap.add_argument("--value", default="p_max")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()

    from lapeval.instances import instances
    from lapeval.lm import LapeLM
    from lapeval.metrics.lid import identify

    mask = args.mask or B.mask_path()
    sources, targets = args.sources.split(","), args.targets.split(",")
    gen, src = [], []
    kw = {"until": [], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    for s in sources:
        for p in prompts(s, args.n):
            gen.append((p + "\n", dict(kw)))
            src.append(s)
    reqs = instances("generate_until", gen, [f"lang_steer_{s}" for s in src])
    lm = LapeLM(pretrained=args.model, device="cpu", batch_size=args.batch_size)
    t0 = time.time()

    def langs_of(outs):
        return [identify(o)[0] for o in outs]

    lm.clear_intervention()
    base_out = lm.generate_until(reqs, disable_tqdm=True)
    base = langs_of(base_out)
    print(f"baseline done ({time.time() - t0:.0f} s); baseline outputs in their prompt's language: "
          f"{sum(b == s for b, s in zip(base, src))}/{len(src)}", flush=True)
    rows, detail = [], {"baseline": list(zip(src, base, base_out))}
    for t in targets:
        lm.set_intervention(neurons=mask, lang=t, mode="set", value=args.value)
        out = lm.generate_until(reqs, disable_tqdm=True)
        got = langs_of(out)
        idx = [i for i, s in enumerate(src) if s != t]
        b = sum(base[i] == t for i in idx) / len(idx)
        st = sum(got[i] == t for i in idx) / len(idx)
        per_src = {s: sum(got[i] == t for i in idx if src[i] == s) / max(1, sum(src[i] == s for i in idx))
                   for s in sources if s != t}
        rows.append([t, len(idx), f"{b:.2f}", f"{st:.2f}", f"{st - b:+.2f}",
                     " ".join(f"{s}:{v:.2f}" for s, v in per_src.items())])
        detail[t] = list(zip(src, got, out))
        print(f"target {t} done ({time.time() - t0:.0f} s)", flush=True)
    print(f"\n## steering: share of outputs in the target language (fastText lid.176), {args.model}, "
          f"mode=set,value={args.value}, {args.n} prompts per source ({','.join(sources)}), "
          f"{args.max_gen_toks} greedy tokens; mask {mask}\n")
    print(B.table(rows, ["target", "prompts (other sources)", "baseline", "steered", "Δ", "steered share per source"]))
    print(f"\nexamples (source → output, target {targets[0]}):")
    for s, l, o in detail[targets[0]][:: max(1, len(src) // 6)][:6]:
        print(f"  [{s}→{l}] {o[:100]!r}")
    print(f"({time.time() - t0:.0f} s)")
    B.dump(args.json, {"mask": str(mask), "rows": rows, "detail": detail})


if __name__ == "__main__":
    main()
