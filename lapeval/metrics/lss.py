"""Language Steering Shift (LSS; Rahmanisa et al. 2025) on parallel facts.

For a source language s, a target language t and fact i (a row of config s, which also carries the
subject and object in every other language):

* prompt_i = template_s with ``[X]`` → sub_s and ``" [Y]"`` deleted (a ``[Y]`` with no space before it
  is deleted too); the model scores ``prompt_i + " " + o``;
* margin_i(t) = log P(obj_t | prompt_i) − log P(obj_s | prompt_i), summed over the object's tokens;
* **LSS(s, t) = (1/N) Σ_i 1[ margin¹_i(t) − margin⁰_i(t) > 0 ]**, where ⁰ is the baseline run and ¹ the
  run with t's neurons amplified. Strictly greater: a no-op intervention gives 0, and a fact whose object
  is the same string in s and t can never count.

The ``lss_<s>`` tasks log margin⁰/¹ for every t (the per-sample ``margin`` field); :func:`score_logs`
turns a baseline log and an intervened log into LSS, :func:`summarize` a matrix into per-target means
over s ≠ t and the overall off-diagonal mean.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import InputFileError
from ..results import ResultsError, read_jsonl


# --------------------------------------------------------------------------------- the task's prompt
def prompt(doc: dict, lang: str | None = None) -> str:
    """The premise of one fact in language ``lang`` (default: the row's own ``src_lang``)."""
    lang = lang or doc["src_lang"]
    text = doc["template"].replace("[X]", doc[f"sub_{lang}"])
    return text.replace(" [Y]", "").replace("[Y]", "")


def object_languages(doc: dict) -> list[str]:
    """The languages whose object the row carries, in the row's field order."""
    return [k[4:] for k, v in doc.items() if k.startswith("obj_") and v not in (None, "")]


# ------------------------------------------------------------------------------ lm-eval entry points
def doc_to_text(doc: dict) -> str:
    return prompt(doc)


def doc_to_choice(doc: dict) -> list[str]:
    return [doc[f"obj_{lang}"] for lang in object_languages(doc)]


def doc_to_target(doc: dict) -> int:
    return object_languages(doc).index(doc["src_lang"])


def margins_from_loglikelihoods(doc: dict, lls: list[float]) -> dict[str, float]:
    langs = object_languages(doc)
    own = lls[langs.index(doc["src_lang"])]
    return {t: float(ll - own) for t, ll in zip(langs, lls) if t != doc["src_lang"]}


def process_results(doc: dict, results) -> dict:
    """``margin``: {t: margin(t)} for every other language; ``src_top``: no language's object is more likely
    than the source-language object (a sanity check of the baseline; an object spelled the same in another
    language ties with it and does not count against it)."""
    lls = [r[0] if isinstance(r, (tuple, list)) else r for r in results]
    margins = margins_from_loglikelihoods(doc, lls)
    return {"margin": margins, "src_top": int(all(m <= 0 for m in margins.values()))}


def mean_margin(items) -> float:
    """Aggregation of ``margin``: the mean margin over facts and target languages."""
    values = [v for item in items for v in item.values()]
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------ LSS from margins
def lss(baseline: list[float], intervened: list[float]) -> float:
    """The share of items whose margin grew strictly (two aligned lists)."""
    if len(baseline) != len(intervened):
        raise ValueError(f"{len(baseline)} baseline margins but {len(intervened)} intervened ones")
    if not baseline:
        return math.nan
    return sum(b1 - b0 > 0 for b0, b1 in zip(baseline, intervened)) / len(baseline)


def summarize(matrix: dict[str, dict[str, float]]) -> dict:
    """Per-target means over s ≠ t (column means without the diagonal) and the off-diagonal mean."""
    targets = [s for s in matrix if any(s in row for row in matrix.values())]  # sources' order first
    for row in matrix.values():
        targets += [t for t in row if t not in targets]
    per_target = {}
    cells = []
    for t in targets:
        col = [row[t] for s, row in matrix.items() if s != t and t in row and not math.isnan(row[t])]
        per_target[t] = sum(col) / len(col) if col else math.nan
        cells += col
    return {"per_target": per_target, "mean_off_diagonal": sum(cells) / len(cells) if cells else math.nan}


# ------------------------------------------------------------------------------------ sample logs
# lm-eval's samples_<task>_<ISO datetime>.jsonl, or a grid cell's samples_<task>.jsonl
_SAMPLES_NAME = re.compile(r"samples_(.+?)(?:_\d{4}-\d{2}-\d{2}T[\d.:-]+)?\.jsonl")


def read_samples(path: str | Path) -> dict[str, dict[int, dict]]:
    """{source language: {doc_id: {"margin": {...}, "doc_hash": ...}}} from lm-eval ``samples_lss_*``
    files: one file, or every such file under a folder (the newest per task when a folder holds
    several runs of it)."""
    path = Path(path)
    if path.is_dir():
        newest: dict[str, Path] = {}
        for f in sorted(path.rglob("samples_lss_*.jsonl")):
            task = _SAMPLES_NAME.fullmatch(f.name).group(1)
            if task not in newest or f.stat().st_mtime >= newest[task].stat().st_mtime:
                newest[task] = f
        files = list(newest.values())
        if not files:
            raise InputFileError(f"no samples_lss_*.jsonl under {path} (run lm_eval with --log_samples)")
    else:
        files = [path]
    out: dict[str, dict[int, dict]] = {}
    for f in files:
        for rec in read_jsonl(f, "samples file", "give lm-eval's samples_lss_*.jsonl (run with --log_samples)"):
            if "margin" not in rec:
                raise ResultsError(f"{f}: samples carry no 'margin' field: not an lss_* task log")
            src = rec["doc"]["src_lang"]
            out.setdefault(src, {})[int(rec["doc_id"])] = {"margin": rec["margin"], "doc_hash": rec.get("doc_hash")}
    return out


def paired_margins(baseline: dict, intervened: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Each off-diagonal cell's facts as ``{s: {t: {"ids", "before", "after"}}}`` from a baseline log and one
    intervened log per target t (each as returned by :func:`read_samples`): Δ⁰ and Δ¹ of t's object over s's
    per fact, ``ids`` the facts' positions among the baseline's facts of s (what
    :func:`lapeval.lss.effects.effects` resamples). Facts are matched by doc_id and must hash alike in both runs."""
    out: dict[str, dict[str, dict]] = {}
    for t, intv in intervened.items():
        for s, docs in intv.items():
            if s == t:
                continue
            base_docs = baseline.get(s)
            if base_docs is None:
                raise ResultsError(f"the baseline has no lss_{s} samples (intervened run for {t} has)")
            ids = sorted(docs)
            missing = [i for i in ids if i not in base_docs]
            if missing:
                raise ResultsError(f"lss_{s}: doc ids {missing[:5]} of the {t} run are not in the baseline (same --limit?)")
            for i in ids:
                h0, h1 = base_docs[i]["doc_hash"], docs[i]["doc_hash"]
                if h0 and h1 and h0 != h1:
                    raise ResultsError(f"lss_{s} doc {i}: different documents in the two runs (other data?)")
            ids = [i for i in ids if t in docs[i]["margin"]]
            position = {d: k for k, d in enumerate(sorted(base_docs))}
            out.setdefault(s, {})[t] = {"ids": [position[i] for i in ids],
                                        "before": [base_docs[i]["margin"][t] for i in ids],
                                        "after": [docs[i]["margin"][t] for i in ids]}
    return out


def score_logs(baseline: dict, intervened: dict[str, dict]) -> dict[str, dict[str, float]]:
    """LSS matrix {s: {t: LSS(s,t)}} from a baseline log and one intervened log per target t (each as
    returned by :func:`read_samples`), over the facts :func:`paired_margins` pairs."""
    return {s: {t: lss(m["before"], m["after"]) for t, m in row.items()}
            for s, row in paired_margins(baseline, intervened).items()}


def format_matrix(matrix: dict[str, dict[str, float]], summary: dict | None = None) -> str:
    """A plain-text table: rows = source language, columns = amplified target language."""
    summary = summary or summarize(matrix)
    targets = list(summary["per_target"])
    lines = ["src\\tgt " + " ".join(f"{t:>6}" for t in targets)]
    for s, row in matrix.items():
        lines.append(f"{s:<7} " + " ".join(f"{row[t]:6.3f}" if t in row and t != s else f"{'-':>6}" for t in targets))
    lines.append("mean    " + " ".join(f"{summary['per_target'][t]:6.3f}" for t in targets))
    lines.append(f"mean off-diagonal LSS: {summary['mean_off_diagonal']:.4f}")
    return "\n".join(lines)

