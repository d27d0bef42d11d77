"""``lapeval check``: compare evaluation results against a reference and fail when a metric moved.

Inputs (RESULTS and REFERENCE alike) are an lm-eval results JSON (``results_<datetime>.json``), an lm-eval
``--output_path`` folder (the newest ``results_*.json`` below it, or its ``summary.json`` when that is a
lapeval grid summary; for ``--output_path X.json`` lm-eval writes ``X_<datetime>.json``, and ``X.json``
finds the newest of those), or a lapeval grid summary (``"format": "lapeval.grid_summary"``, results per grid
cell). Both are flattened to ``{(cell, task, metric, filter): (value, stderr)}``; lm-eval results have the
cell ``""``. Non-numeric values and ``alias`` / ``name`` / ``sample_len`` / ``samples`` are skipped; the
stderr of ``acc,none`` is ``acc_stderr,none`` (``"N/A"`` means none).

The rule, for every reference metric (after ``--cells`` / ``--tasks`` / ``--metrics``)::

    allowed = max(abs_tol, rel_tol * |ref|, k * sqrt(se_res**2 + se_ref**2))
    passes  iff |result - ref| <= allowed

``abs_tol`` defaults to 1e-6 (runs on one machine are deterministic) and can be set per metric
(``acc=0.02``); ``rel_tol`` defaults to 0; the standard-error term is used only when both sides report a
standard error, with ``k`` = 2 by default (``k = 0`` turns it off). NaN equals only NaN, an infinity only
the same infinity. A reference metric absent from RESULTS is a failure; metrics only in RESULTS are counted
but never fail. Pure ``json`` / ``math``: nothing heavy is imported.
"""

from __future__ import annotations

import fnmatch
import glob
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LapevalError
from .grid.config import canonical_cell_id
from .results import GRID_SUMMARY_FORMAT as GRID_FORMAT  # noqa: F401
from .results import ResultsError, is_number, metric_entries, read_json

DEFAULT_ABS_TOL = 1e-6
DEFAULT_REL_TOL = 0.0
DEFAULT_STDERR_K = 2.0
_INPUTS = "an lm-eval results_*.json, an lm-eval --output_path folder, or a lapeval grid summary.json"

Key = tuple  # (cell, task, metric, filter)


class CheckError(LapevalError, ValueError):
    """Bad input to ``lapeval check``: a one-line message naming the problem and the fix (exit status 2)."""


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """One side of the comparison: the file actually read and its flattened metrics."""

    path: Path
    kind: str  # "lm-eval" or "grid"
    metrics: dict = field(default_factory=dict)  # Key -> (value, stderr or None)


def resolve(path: str | Path, role: str = "input") -> tuple[Path, dict]:
    """The JSON file that ``path`` stands for and its parsed content (see the module docstring)."""
    p = Path(path)
    if not p.exists() and p.suffix == ".json":
        # lm_eval --output_path X.json writes X_<datetime>.json beside it
        stamped = [f for f in p.parent.glob(f"{glob.escape(p.stem)}_*.json") if f.is_file()]
        if stamped:
            newest = max(stamped, key=lambda f: (f.stem[len(p.stem) + 1:], f.stat().st_mtime, str(f)))
            return newest, _read_json(newest, role)
    if not p.exists():
        raise CheckError(f"{role} {p}: no such file or directory; give {_INPUTS}")
    if p.is_dir():
        summary = p / "summary.json"
        if summary.is_file():
            data = _read_json(summary, role)
            if isinstance(data, dict) and data.get("format") == GRID_FORMAT:
                return summary, data
        found = [f for f in p.rglob("results_*.json") if f.is_file()]
        if not found:
            raise CheckError(f"{role} {p}: no results_*.json below this folder; run lm_eval with "
                             f"--output_path {p} first, or give {_INPUTS}")
        newest = max(found, key=_newest_key)
        return newest, _read_json(newest, role)
    return p, _read_json(p, role)


def _newest_key(f: Path):
    # lm-eval names files results_<ISO datetime>.json, which sorts as text; the mtime breaks ties.
    return (f.stem[len("results_"):], f.stat().st_mtime, str(f))


def _read_json(p: Path, role: str):
    try:
        return read_json(p, role, f"give {_INPUTS}")
    except ResultsError as e:
        raise CheckError(str(e)) from None


def load(path: str | Path, role: str = "input") -> Loaded:
    """Resolve ``path`` and flatten its metrics."""
    file, data = resolve(path, role)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CheckError(f"{role} {file}: JSON without a 'results' object; give {_INPUTS}")
    if data.get("format") == GRID_FORMAT:
        out: dict = {}
        for cell, tasks in data["results"].items():
            if not isinstance(tasks, dict):
                raise CheckError(f"{role} {file}: grid cell {cell!r} is not an object of tasks; "
                                 f"regenerate the grid summary")
            out.update(flatten(tasks, cell=str(cell), where=f"{role} {file}"))
        return Loaded(file, "grid", out)
    out = flatten(data["results"], where=f"{role} {file}")
    groups = data.get("groups")
    if isinstance(groups, dict):  # lm-eval repeats group rows in `results`; add any that are only here
        for k, v in flatten(groups, where=f"{role} {file}").items():
            out.setdefault(k, v)
    return Loaded(file, "lm-eval", out)


def flatten(results: dict, cell: str = "", where: str = "input") -> dict:
    """``{task: {"<metric>,<filter>": value, "<metric>_stderr,<filter>": se}}`` ->
    ``{(cell, task, metric, filter): (value, se or None)}`` for the numeric values
    (:func:`lapeval.results.metric_entries`)."""
    out: dict = {}
    for task, entries in results.items():
        if not isinstance(entries, dict):
            raise CheckError(f"{where}: results[{task!r}] is not an object of metrics; "
                             f"give {_INPUTS}")
        for (metric, filt), value in metric_entries(entries).items():
            out[(cell, str(task), metric, filt)] = value
    return out


_is_number = is_number


# ------------------------------------------------------------------------------------------- tolerances


@dataclass
class Tolerance:
    abs_tol: float = DEFAULT_ABS_TOL
    rel_tol: float = DEFAULT_REL_TOL
    stderr_k: float = DEFAULT_STDERR_K
    per_metric: list = field(default_factory=list)  # [(pattern, abs_tol)], later ones win

    def abs_for(self, metric: str, filt: str) -> float:
        tol = self.abs_tol
        for pattern, value in self.per_metric:
            if fnmatch.fnmatchcase(metric, pattern) or fnmatch.fnmatchcase(_mkey(metric, filt), pattern):
                tol = value
        return tol

    def allowed(self, metric: str, filt: str, ref: float, se_ref, se_res) -> float:
        allowed = max(self.abs_for(metric, filt), self.rel_tol * abs(ref) if math.isfinite(ref) else 0.0)
        if self.stderr_k and se_ref is not None and se_res is not None:
            allowed = max(allowed, self.stderr_k * math.sqrt(se_res ** 2 + se_ref ** 2))
        return allowed

    def as_dict(self) -> dict:
        return {"abs": self.abs_tol, "rel": self.rel_tol, "stderr_k": self.stderr_k,
                "per_metric": {p: v for p, v in self.per_metric}}


def parse_tolerances(specs, rel_tol: float = DEFAULT_REL_TOL, stderr_k: float = DEFAULT_STDERR_K) -> Tolerance:
    """``["0.01", "acc=0.02", "bleu*=0.5"]``: a bare number sets the default absolute tolerance,
    ``METRIC=NUMBER`` (an fnmatch pattern on ``metric`` or ``metric,filter``) overrides it."""
    tol = Tolerance(rel_tol=_non_negative(rel_tol, "--rel-tolerance"),
                    stderr_k=_non_negative(stderr_k, "--stderr-k"))
    for spec in specs or ():
        name, eq, number = str(spec).rpartition("=")
        if eq and not name.strip():
            raise CheckError(f"bad --tolerance {spec!r}: expected NUMBER or METRIC=NUMBER, e.g. acc=0.02")
        value = _non_negative(number, f"--tolerance {spec!r}")
        if eq:
            tol.per_metric.append((name.strip(), value))
        else:
            tol.abs_tol = value
    return tol


def _non_negative(x, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise CheckError(f"bad {what}: {x!r} is not a number; expected NUMBER or METRIC=NUMBER, e.g. acc=0.02") from None
    if not v >= 0 or math.isinf(v):
        raise CheckError(f"bad {what}: {x!r}; give a finite number >= 0")
    return v


# ------------------------------------------------------------------------------------------- comparing


@dataclass
class Row:
    cell: str
    task: str
    metric: str
    filter: str
    status: str  # "ok", "moved" or "missing"
    reference: float
    result: float | None
    reference_stderr: float | None
    result_stderr: float | None
    delta: float | None
    allowed: float | None

    def as_dict(self) -> dict:
        return {k: _json_num(v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    results: Loaded
    reference: Loaded
    tolerance: Tolerance
    rows: list
    only_in_results: list  # keys

    @property
    def moved(self) -> list:
        return [r for r in self.rows if r.status == "moved"]

    @property
    def missing(self) -> list:
        return [r for r in self.rows if r.status == "missing"]

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.status != "ok"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary_line(self) -> str:
        n, moved, missing = len(self.rows), len(self.moved), len(self.missing)
        extra = f" ({len(self.only_in_results)} only in results)" if self.only_in_results else ""
        if not moved and not missing:
            return f"lapeval check: all {n} metrics within tolerance{extra}"
        if moved and missing:
            return (f"lapeval check: {moved + missing} of {n} metrics failed: {moved} moved beyond tolerance, "
                    f"{missing} missing in results{extra}")
        if moved:
            return f"lapeval check: {moved} of {n} metrics moved beyond tolerance{extra}"
        return f"lapeval check: {missing} of {n} metrics missing in results{extra}"

    def lines(self, verbose: bool = False) -> list[str]:
        """One aligned line per failure (per metric with ``verbose``), then the summary line."""
        rows = self.rows if verbose else self.failures
        show_cell = any(r.cell for r in rows)
        table = []
        for r in rows:
            label = {"ok": "OK", "moved": "MOVED", "missing": "MISSING"}[r.status]
            change = (f"{_fmt(r.reference)} -> (missing)" if r.result is None
                      else f"{_fmt(r.reference)} -> {_fmt(r.result)}")
            detail = ("" if r.status == "missing"
                      else f"(Δ {_fmt(r.delta, sign=True)}, allowed ±{_fmt(r.allowed)})")
            cols = [label] + ([r.cell or "-"] if show_cell else []) + [r.task, _mkey(r.metric, r.filter), change, detail]
            table.append(cols)
        out = []
        if table:
            widths = [max(len(c[i]) for c in table) for i in range(len(table[0]))]
            for cols in table:
                out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        out.append(self.summary_line())
        return out

    def as_dict(self) -> dict:
        return {
            "format": "lapeval.check",
            "results": str(self.results.path),
            "reference": str(self.reference.path),
            "tolerance": self.tolerance.as_dict(),
            "passed": self.passed,
            "summary": {"compared": len(self.rows), "moved": len(self.moved), "missing": len(self.missing),
                        "only_in_results": len(self.only_in_results)},
            "metrics": [r.as_dict() for r in self.rows],
            "only_in_results": [{"cell": c, "task": t, "metric": m, "filter": f}
                                for c, t, m, f in self.only_in_results],
        }


def compare(results: Loaded, reference: Loaded, tolerance: Tolerance | None = None, *,
            cells=(), tasks=(), metrics=()) -> Comparison:
    """Compare every (selected) reference metric with RESULTS under ``tolerance``."""
    tolerance = tolerance or Tolerance()

    def selected(key) -> bool:
        cell, task, metric, filt = key
        return (_match(cell, cells) and _match(task, tasks)
                and (_match(metric, metrics) or _match(_mkey(metric, filt), metrics)))

    ref = {k: v for k, v in reference.metrics.items() if selected(k)}
    # grid cells are matched by their canonical id (a reference written as set=p_max/fr matches set:p_max/fr)
    # and shown as the reference spells them
    spelled = {canonical_cell_id(k[0]): k[0] for k in ref if k[0]}
    res = {(spelled.get(canonical_cell_id(k[0]), k[0]) if k[0] else k[0], *k[1:]): v
           for k, v in results.metrics.items()}
    res = {k: v for k, v in res.items() if selected(k)}
    if not ref:
        narrowed = " after --cells/--tasks/--metrics" if (cells or tasks or metrics) else ""
        raise CheckError(f"reference {reference.path}: no numeric metrics{narrowed}; "
                         f"check the file (or the patterns) and regenerate the reference")
    if not set(ref) & set(res):
        raise CheckError(f"nothing in common: reference {reference.path} has {_describe(ref)}, "
                         f"results {results.path} has {_describe(res)}; compare runs of the same tasks "
                         f"(and grid cells), or narrow with --tasks/--cells")
    rows = []
    for key, (rv, rse) in ref.items():
        cell, task, metric, filt = key
        if key not in res:
            rows.append(Row(cell, task, metric, filt, "missing", rv, None, rse, None, None, None))
            continue
        xv, xse = res[key]
        allowed = tolerance.allowed(metric, filt, rv, rse, xse)
        if math.isfinite(rv) and math.isfinite(xv):
            delta = xv - rv
            ok = abs(delta) <= allowed
        else:
            delta = xv - rv if not (math.isnan(rv) or math.isnan(xv)) else math.nan
            ok = (math.isnan(rv) and math.isnan(xv)) or rv == xv
            if ok:
                delta = 0.0
        rows.append(Row(cell, task, metric, filt, "ok" if ok else "moved", rv, xv, rse, xse, delta, allowed))
    only = [k for k in res if k not in ref]
    return Comparison(results, reference, tolerance, rows, only)


def check(results, reference, tolerance=None, *, rel_tolerance: float = DEFAULT_REL_TOL,
          stderr_k: float = DEFAULT_STDERR_K, cells=(), tasks=(), metrics=()) -> Comparison:
    """Compare ``results`` with ``reference`` — what ``lapeval check RESULTS --against REFERENCE`` runs.

    Each side: an lm-eval ``results_*.json``, an lm-eval ``--output_path`` folder, or a lapeval grid
    ``summary.json`` (or its folder). A reference metric passes iff

        |result − ref| ≤ max(abs_tol, rel_tolerance·|ref|, stderr_k·sqrt(se_result² + se_ref²))

    (the stderr term only when both sides have one). ``tolerance``: a :class:`Tolerance`, a number (the
    absolute tolerance, default 1e-6) or ``--tolerance`` specs (``["0.01", "acc=0.02"]``); ``cells`` /
    ``tasks`` / ``metrics``: fnmatch patterns restricting the comparison. Returns a :class:`Comparison`
    (``.passed``, ``.lines()``, ``.as_dict()``).

    Example::

        cmp = lapeval.check("out/ci", "out/ci-reference", tolerance=["0.01", "acc=0.02"])
        assert cmp.passed, "\n".join(cmp.lines())
    """
    if not isinstance(tolerance, Tolerance):
        specs = [tolerance] if isinstance(tolerance, (int, float, str)) else tolerance
        tolerance = parse_tolerances(specs, rel_tol=rel_tolerance, stderr_k=stderr_k)
    return compare(load(results, "results"), load(reference, "reference"), tolerance,
                   cells=cells, tasks=tasks, metrics=metrics)


# ---------------------------------------------------------------------------------------------- helpers


def _mkey(metric: str, filt: str) -> str:
    return f"{metric},{filt}" if filt else metric


def _match(name: str, patterns) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _describe(metrics: dict) -> str:
    cells = sorted({k[0] for k in metrics if k[0]})
    tasks = sorted({k[1] for k in metrics})
    if not metrics:
        return "no metrics"
    text = f"tasks {_short(tasks)}"
    return text + (f" in cells {_short(cells)}" if cells else " (no grid cells)")


def _short(names: list, n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _fmt(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    s = f"{x:+.4f}" if sign else f"{x:.4f}"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e7):
        s = f"{x:+.3g}" if sign else f"{x:.3g}"
    return s


def _json_num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v
