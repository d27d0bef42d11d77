"""Paired bootstrap of deltas to the baseline (the grid summary's and the leaderboard's intervals).

For a task with documents 1..n, a cell and the baseline, each of R replicates draws n document indices with
replacement (the same draw for the cell and the baseline) and recomputes the metric's own aggregation on
both::

    Δ*_r = agg(cell[idx_r]) − agg(base[idx_r]),      95 % interval = percentiles 2.5 / 97.5 of {Δ*_r}

The draws depend only on (seed, n, R), so every cell of one task resamples the same documents in replicate
r; a mean of several pairs' Δ is then bootstrapped replicate by replicate (:func:`mean_delta_interval`).
"""

from __future__ import annotations

import math


def mean(items):
    """The plain mean (lm-eval's ``mean`` aggregation; the bootstrap vectorises it)."""
    return sum(items) / len(items)


def paired_bootstrap(base: list, cell: list, agg, resamples: int, seed: int = 1234) -> tuple[float, float]:
    """95 % interval of agg(cell) − agg(base) over documents resampled jointly."""
    return interval(bootstrap_replicates(base, cell, agg, resamples, seed))


def bootstrap_replicates(base: list, cell: list, agg, resamples: int, seed: int = 1234):
    """The R replicates of agg(cell*) − agg(base*), the documents resampled jointly (NaN where the
    aggregation fails); None with fewer than two documents. The index draws depend only on (seed, n, R), so
    the cells of one task resample the same documents in every replicate (what the leaderboard's mean of
    several pairs' differences relies on)."""
    import numpy as np

    n = len(base)
    if n < 2 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    if agg is mean:
        b, c = np.asarray(base, dtype=float), np.asarray(cell, dtype=float)
        return c[idx].mean(1) - b[idx].mean(1)
    suff = getattr(agg, "sufficient_statistics", None)
    if suff is not None:  # corpus BLEU / chrF++: sum each replicate's per-document statistics (same numbers)
        counts = np.stack([np.bincount(row, minlength=n) for row in idx])  # [R, n]: how often each document
        sb, sc = counts @ suff.per_document(base), counts @ suff.per_document(cell)
        return np.array([suff.score(c) - suff.score(b) for b, c in zip(sb, sc)], dtype=float)

    def safe(items):  # e.g. word perplexity of unsegmented text overflows exp() on some resamples
        try:
            return float(agg(items))
        except (OverflowError, ZeroDivisionError, ValueError):
            return math.nan

    return np.array([safe([cell[i] for i in row]) - safe([base[i] for i in row]) for row in idx], dtype=float)


def interval(d) -> tuple[float, float]:
    """2.5 / 97.5 percentiles of the finite replicates; NaN when there are none."""
    import numpy as np

    if d is None:
        return math.nan, math.nan
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def mean_delta_interval(replicates: list) -> tuple[float, float]:
    """95 % interval of the mean over pairs of Δ: the replicates of each (cell, task) pair's paired
    bootstrap (:func:`lapeval.grid.report.bootstrap_replicates`, one task's documents resampled alike in every
    cell) averaged replicate by replicate, then the 2.5 / 97.5 percentiles."""
    import numpy as np

    reps = [np.asarray(r, dtype=float) for r in replicates if r is not None]
    if not reps:
        return math.nan, math.nan
    return interval(np.mean(np.stack(reps), axis=0))


def minus_controls_interval(real: list, controls: list[list]) -> tuple[float, float]:
    """95 % interval of (mean Δ of the real cells) − (mean over controls of their cells' mean Δ): each side's
    pair replicates averaged replicate by replicate as in :func:`mean_delta_interval` (one task's documents
    resampled alike in every cell, so the difference is paired), then the controls averaged; NaN when a side
    has no replicates."""
    import numpy as np

    def averaged(replicates):
        reps = [np.asarray(r, dtype=float) for r in replicates if r is not None]
        return np.mean(np.stack(reps), axis=0) if reps else None

    r = averaged(real)
    cs = [c for c in (averaged(x) for x in controls) if c is not None]
    if r is None or not cs:
        return math.nan, math.nan
    return interval(r - np.mean(np.stack(cs), axis=0))


def finite_mean(xs):
    """The mean of the finite numbers among ``xs`` (None and NaN skipped); None when there are none."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None
