"""Paired bootstrap of corpus BLEU / chrF++ (the grid summary's intervals): summing per-document sufficient
statistics against re-scoring every resampled corpus, as a ratio within one run.

    python benchmarks/bootstrap_corpus_metrics.py [--docs 12] [--resamples 1000]

FLORES French sentences (../shared/data) as references, truncated copies as outputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()

    from lapeval.grid.bootstrap import bootstrap_replicates
    from lapeval.metrics import translation as tr

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flores200_devtest" / "devtest"
    refs = (root / "fra_Latn.devtest").read_text(encoding="utf-8").splitlines()[: args.docs]
    cell = [(r, " ".join(r.split()[:-2])) for r in refs]
    base = [(r, " ".join(r.split()[2:])) for r in refs]
    for agg in (tr.bleu, tr.chrfpp):
        t0 = time.perf_counter()
        fast = bootstrap_replicates(base, cell, agg, args.resamples)
        t_fast = time.perf_counter() - t0
        idx = np.random.default_rng(1234).integers(0, len(refs), size=(args.resamples, len(refs)))
        t0 = time.perf_counter()
        slow = [agg([cell[i] for i in row]) - agg([base[i] for i in row]) for row in idx]
        t_slow = time.perf_counter() - t0
        same = np.allclose(fast, slow, atol=1e-9)
        print(f"{agg.__name__}: {args.docs} docs × {args.resamples} resamples: re-scoring {t_slow:.2f} s, "
              f"sufficient statistics {t_fast:.2f} s (×{t_slow / t_fast:.0f}); identical: {same}")


if __name__ == "__main__":
    main()
