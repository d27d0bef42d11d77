"""Reading what evaluations wrote: lm-eval results and sample logs, grid folders and grid summaries.

One reader for :mod:`lapeval.grid.report` (the grid summary), :mod:`lapeval.check` (the CI gate) and
:mod:`lapeval.metrics.lss` (LSS from sample logs), so that they agree on what a metric entry is:

* a task's lm-eval results entry ``{"acc,none": 0.61, "acc_stderr,none": 0.02, "alias": ...}`` holds
  ``(metric, filter) → (value, stderr)`` for every numeric value that is not a standard error, nor one of
  :data:`SKIP_KEYS`; the stderr of ``acc,none`` is ``acc_stderr,none``, and a stderr that is missing,
  ``"N/A"`` or not finite is ``None`` (no standard error);
* every JSON / JSONL file that cannot be read is a one-line :class:`ResultsError` naming the file, the line
  and what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

from ._io import inside, safe_name
from .errors import LapevalError

SAMPLES_NAME_MAX = 200  # bytes of the task's part: samples_<task>.jsonl stays a file name
SKIP_KEYS = frozenset({"alias", "name", "sample_len", "samples"})
GRID_SUMMARY_FORMAT = "lapeval.grid_summary"


class ResultsError(LapevalError, ValueError):
    """A results, samples or grid file that cannot be read: one line naming it and the fix."""


def format_number(x, nd: int = 4, sign: bool = False, *, small: bool = False, missing: str = "–") -> str:
    """A number in a table: ``nd`` decimals (``+`` for deltas when ``sign``), scientific from 1e6 on (word
    perplexities of unsegmented scripts reach 1e60) and, with ``small``, also below 1e-3 (tolerances and
    tiny deltas in the CI gate); ``missing`` for None, NaN and ±inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    plus = "+" if sign else ""
    if x != 0 and (abs(x) >= 1e6 or (small and abs(x) < 1e-3)):
        return f"{x:{plus}.3e}"
    return f"{x:{plus}.{nd}f}"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def metric_entries(task_results: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """``{(metric, filter): (value, stderr or None)}`` of one task's lm-eval results entry."""
    out = {}
    for key, value in task_results.items():
        metric, sep, filt = str(key).partition(",")
        if metric in SKIP_KEYS or metric.endswith("_stderr") or not is_number(value):
            continue
        se = task_results.get(f"{metric}_stderr{sep}{filt}")
        se = float(se) if is_number(se) and math.isfinite(se) else None
        out[(metric, filt)] = (float(value), se)
    return out


def read_json(path: str | Path, what: str = "results file", fix: str = "regenerate it"):
    """Parsed JSON of ``path``; a one-line :class:`ResultsError` when it cannot be read."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{what} {p}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{what} {p}: not a text JSON file; {fix}") from None
    except OSError as e:
        raise ResultsError(f"{what} {p}: cannot read ({e.strerror or e}); {fix}") from None


def read_jsonl(path: str | Path, what: str = "samples file", fix: str = "regenerate it") -> Iterator[dict]:
    """The JSON objects of a JSONL file, one per non-empty line."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ResultsError(f"{what} {p} line {n}: not JSON ({e.msg}); {fix}") from None
                if not isinstance(rec, dict):
                    raise ResultsError(f"{what} {p} line {n}: not a JSON object; {fix}")
                yield rec
    except UnicodeDecodeError:
        raise ResultsError(f"{what} {p}: not UTF-8 text; {fix}") from None
    except OSError as e:
        raise ResultsError(f"{what} {p}: cannot read ({e.strerror or e}); {fix}") from None


# ---- grid folders ---------------------------------------------------------------------------------
def read_grid(out: str | Path) -> dict:
    """``{"meta": grid.json, "cells": {cell id: {"cell", "results", "dir"}}}`` of the finished cells."""
    out = Path(out)
    meta = read_json(out / "grid.json", "grid file", "rerun lapeval grid")
    cells = {}
    for c in meta["cells"]:
        p = inside(out / "cells", c["folder"], f"grid.json: the folder of cell {c['id']!r},") / "results.json"
        if p.is_file():
            res = read_json(p, f"grid cell {c['id']}:", "delete that cell's folder and rerun lapeval grid to redo it")
            cells[c["id"]] = {"cell": c, "results": res, "dir": p.parent}
    return {"meta": meta, "cells": cells}


def samples_path(cell_dir: str | Path, task: str) -> Path:
    """A grid cell's ``samples_<task>.jsonl``, the task as one safe file name (:func:`~lapeval._io.safe_name`:
    a task named ``t/../../x`` stays in the cell's folder; ordinary names unchanged)."""
    return Path(cell_dir) / f"samples_{safe_name(task, SAMPLES_NAME_MAX)}.jsonl"


def cell_samples(cell_dir: str | Path, task: str) -> dict[str, dict[int, dict]]:
    """``{filter: {doc_id: record}}`` of a grid cell's ``samples_<task>.jsonl`` (empty when absent)."""
    p = samples_path(cell_dir, task)
    if not p.is_file():
        return {}
    out: dict[str, dict[int, dict]] = {}
    for r in read_jsonl(p, "grid samples", "delete that cell's folder and rerun lapeval grid to redo it"):
        out.setdefault(r.get("filter", "none"), {})[int(r["doc_id"])] = r
    return out


# ---- what a run was -------------------------------------------------------------------------------
NOT_RECORDED = object()


def run_intervention(path: str | Path):
    """The intervention an lm-eval run (a samples file, its folder, or a grid cell) was made with, from the
    ``config.lape`` that the ``lape`` model records in its results JSON: ``None`` for a run without one
    (``hf`` or an idle ``lape``), the intervention's description otherwise, :data:`NOT_RECORDED` when no
    results file is found beside the samples."""
    p = Path(path)
    found = p.rglob("results*.json") if p.is_dir() else p.parent.glob("results*.json")  # a file: only beside it
    found = sorted(found, key=lambda f: f.stat().st_mtime)
    if not found:
        return NOT_RECORDED
    res = read_json(found[-1], "results file", "rerun the evaluation")
    cfg = res.get("config") if isinstance(res, dict) else None
    if not isinstance(cfg, dict):
        return NOT_RECORDED
    lape = cfg.get("lape")
    if not isinstance(lape, dict):
        return None if cfg.get("model") == "hf" else NOT_RECORDED
    return lape.get("intervention")
