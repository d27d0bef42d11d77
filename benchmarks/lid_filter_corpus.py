"""How much calibration text ``--lid-filter P`` drops, per language, and how much the mask changes (issue 23).

    python benchmarks/lid_filter_corpus.py --corpus ntrex:../shared/data/ntrex128+tico:../shared/data/tico19 \
        --languages en,zh,ja,id,vi,fr,es,ru,th,ta,ar,sw,it,tr,pt,et --threshold 0.5 \
        [--masks A.safetensors B.safetensors] --out docs/lid-filter.md

Reads every text of each language from the corpus (what ``identify`` would stream, in order) and counts those
fastText identifies as another language with probability ≥ P, with the first few dropped as examples; with
``--masks`` (the same identification without and with the filter), the Jaccard index of each language's neuron
set, |A ∩ B| / |A ∪ B| over (layer, neuron) pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def jaccard(a, b, lang: str) -> tuple[float, int, int]:
    """(|A ∩ B| / |A ∪ B|, |A|, |B|) of ``lang``'s (layer, neuron) pairs in masks ``a`` and ``b``."""
    sa = set(zip(a.sets[lang].layer.tolist(), a.sets[lang].neuron.tolist()))
    sb = set(zip(b.sets[lang].layer.tolist(), b.sets[lang].neuron.tolist()))
    union = sa | sb
    return (len(sa & sb) / len(union) if union else 1.0), len(sa), len(sb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--languages", required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--masks", nargs=2, metavar=("UNFILTERED", "FILTERED"))
    ap.add_argument("--examples", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()

    from lapeval.identification import corpus
    from lapeval.languages import parse_list
    from lapeval.metrics.lid import identify

    langs = parse_list(args.languages)
    sources = corpus.parse(args.corpus)
    rows, examples = [], {}
    for lang in langs:
        counts: dict = {}
        kept = sum(1 for _ in corpus.lid_filtered(corpus.texts(sources, lang), lang, args.threshold, counts))
        c = counts[lang]
        rows.append((lang, c["read"], c["dropped"], kept))
        ex = []
        for text in corpus.texts(sources, lang):
            got, p = identify(text)
            if got is not None and got != lang and p >= args.threshold:
                ex.append(f"{got} {p:.2f}: {text[:80]!r}")
                if len(ex) >= args.examples:
                    break
        examples[lang] = ex
    lines = [f"| language | texts | dropped at P = {args.threshold:g} | share | examples (fastText's language, probability) |",
             "|---|---:|---:|---:|---|"]
    for lang, read, dropped, _ in rows:
        lines.append(f"| {lang} | {read} | {dropped} | {dropped / read:.1%} | " + "<br>".join(
            e.replace("|", "\\|") for e in examples[lang]) + " |")
    if args.masks:
        from lapeval.masks import NeuronMask

        a, b = NeuronMask.load(args.masks[0]), NeuronMask.load(args.masks[1])
        lines += ["", f"Masks: {Path(args.masks[0]).name} (unfiltered) vs {Path(args.masks[1]).name} (filtered)", "",
                  "| language | neurons unfiltered | filtered | Jaccard |", "|---|---:|---:|---:|"]
        for lang in langs:
            if lang in a.languages and lang in b.languages:
                j, na, nb = jaccard(a, b, lang)
                lines.append(f"| {lang} | {na} | {nb} | {j:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from lapeval._io import write_text

        write_text(args.out, text)


if __name__ == "__main__":
    main()
