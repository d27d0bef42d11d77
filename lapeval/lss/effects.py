"""An LSS matrix beside its controls, with effect sizes (method.md §11).

LSS is a sign test: per fact i of a cell (s, t), g_i = 1[Δ¹_i > Δ⁰_i] (the margin
Δ = log P(obj_t | prompt_s) − log P(obj_s | prompt_s) grew under the intervention), LSS = mean_i g_i. Any
disruption moves each margin one way or the other, so a non-specific intervention scores about 0.5. Beside
every LSS this module therefore reports, per cell, per target (mean over s ≠ t) and overall (mean over the
off-diagonal cells, as ``mean_off_diagonal``):

* the control mean: the LSS of K random-neuron controls (:mod:`lapeval.identification.controls`), scored on
  the same facts against the same paired baseline, averaged over the K controls;
* real − control: mean_i (g_i − mean_k g^(k)_i), with a 95 % paired bootstrap interval over facts;
* the real set's rank among the K + 1 (1 = the highest LSS; ties count against the real set);
* the chance-corrected LSS: (LSS − LSS_control) / (1 − LSS_control);
* the mean margin shift E[Δ¹ − Δ⁰] in nats (real and control), with a bootstrap interval.

The bootstrap resamples each source's facts (R times, fixed seed); a fact keeps its weight in every target's
cell and in every control (a fact of source s appears in all cells (s, ·)), so intervals of means over
cells account for the facts they share.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_RESAMPLES = 1000


def _cells(margins: dict) -> list[tuple[str, str]]:
    return [(s, t) for s, row in margins.items() for t in row if s != t and row[t]["ids"]]


def _arrays(real: dict, controls: list[dict], s: str, t: str) -> dict[str, np.ndarray]:
    """Per fact of cell (s, t): the real indicator and shift, the controls' mean indicator and shift."""
    m = real[s][t]
    b, a = np.asarray(m["before"], float), np.asarray(m["after"], float)
    out = {"g": (a - b > 0).astype(float), "shift": a - b}
    if controls:
        for c in controls:
            if c[s][t]["ids"] != m["ids"]:
                raise ValueError(f"control of ({s}, {t}) scored other facts than the real set")
        cg = np.stack([(np.asarray(c[s][t]["after"], float) - np.asarray(c[s][t]["before"], float) > 0).astype(float)
                       for c in controls])
        cs = np.stack([np.asarray(c[s][t]["after"], float) - np.asarray(c[s][t]["before"], float) for c in controls])
        out.update(cg=cg.mean(0), cshift=cs.mean(0), diff=out["g"] - cg.mean(0), per_control=cg.mean(1))
    return out


def _ci(x: np.ndarray) -> list[float | None]:
    x = x[np.isfinite(x)]
    if not len(x):
        return [None, None]
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def _corrected(lss: float, ctrl: float) -> float | None:
    return None if ctrl is None or not math.isfinite(ctrl) or ctrl >= 1 else (lss - ctrl) / (1 - ctrl)


def _rank(real: float, controls: list[float]) -> int:
    """1 + how many controls reach the real value (ties count against the real set)."""
    return 1 + sum(c >= real for c in controls)


def effects(real_margins: dict, n_items: dict, control_margins: list[dict] | None = None,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 1234) -> dict:
    """Effect sizes of one LSS matrix (its ``margins``: ``{s: {t: {ids, before, after}}}`` and ``n_items`` from
    :func:`~lapeval.lss.matrix.compute_matrix`) and, given ``control_margins`` (the same for each control), the
    comparison with the controls. Returns ``{"cells": {s: {t: {...}}}, "per_target": {t: {...}},
    "overall": {...}, "resamples", "seed"}`` where each entry holds ``lss``, ``shift`` and ``shift_ci`` (nats),
    and with controls ``control_mean``, ``controls`` (each control's LSS), ``real_minus_control`` and its
    ``ci``, ``rank`` (of K + 1), ``chance_corrected``, ``control_shift``."""
    controls = control_margins or []
    cells = _cells(real_margins)
    arrays = {c: _arrays(real_margins, controls, *c) for c in cells}
    rng = np.random.default_rng(seed)
    sources = sorted({s for s, _ in cells})
    size = {s: int(n_items[s]) for s in sources}  # fact ids of source s are 0 … n_items[s] − 1
    weights = {s: rng.multinomial(size[s], [1.0 / size[s]] * size[s], size=resamples).astype(float) for s in sources}

    def boot(s: str, t: str, key: str) -> np.ndarray:
        """[R] bootstrap replicates of the mean of arrays[(s, t)][key] over resampled facts."""
        w = weights[s][:, real_margins[s][t]["ids"]]
        tot = w.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tot > 0, (w @ arrays[(s, t)][key]) / np.where(tot > 0, tot, 1), np.nan)

    def summary(group: list[tuple[str, str]]) -> dict:
        if not group:
            return {}
        mean = lambda key: float(np.mean([arrays[c][key].mean() for c in group]))  # noqa: E731
        reps = lambda key: np.nanmean(np.stack([boot(*c, key) for c in group]), axis=0)  # noqa: E731
        d = {"lss": mean("g"), "shift": mean("shift"), "shift_ci": _ci(reps("shift")), "n_cells": len(group)}
        if controls:
            per_control = [float(np.mean([arrays[c]["per_control"][k] for c in group])) for k in range(len(controls))]
            ctrl = float(np.mean(per_control))
            d.update(control_mean=ctrl, controls=per_control, real_minus_control=d["lss"] - ctrl,
                     ci=_ci(reps("diff")), rank=_rank(d["lss"], per_control), of=len(controls) + 1,
                     chance_corrected=_corrected(d["lss"], ctrl), control_shift=mean("cshift"))
        return d

    out_cells: dict = {}
    for s, t in cells:
        out_cells.setdefault(s, {})[t] = summary([(s, t)])
    targets = list(dict.fromkeys(t for _, t in cells))
    return {"cells": out_cells, "per_target": {t: summary([c for c in cells if c[1] == t]) for t in targets},
            "overall": summary(cells), "resamples": resamples, "seed": seed,
            "statistic": "real − control: mean over facts of 1[Δ¹>Δ⁰] − mean over controls of the same; intervals: "
                         "2.5/97.5 percentiles of a bootstrap over each source's facts, shared by its cells"}


def format_effects(eff: dict) -> str:
    """Plain text: per target and overall, LSS beside its control, real − control [CI], rank, corrected LSS and
    the mean margin shift in nats."""
    def row(name: str, d: dict) -> str:
        if not d:
            return f"{name:>8}  –"
        line = f"{name:>8}  LSS {d['lss']:.3f}"
        if "control_mean" in d:
            lo, hi = d["ci"]
            ci = "[–]" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"
            cc = "–" if d["chance_corrected"] is None else f"{d['chance_corrected']:+.3f}"
            line += (f"  control {d['control_mean']:.3f}  real−control {d['real_minus_control']:+.3f} {ci}"
                     f"  rank {d['rank']}/{d['of']}  corrected {cc}")
        lo, hi = d["shift_ci"]
        line += f"  shift {d['shift']:+.3f} nats" + ("" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]")
        return line

    lines = [row(t, d) for t, d in eff["per_target"].items()]
    lines.append(row("all", eff["overall"]))
    return "\n".join(lines)
