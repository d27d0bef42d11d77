"""The summary of a grid directory: self-language vs cross-language tables, deltas to the baseline with
paired bootstrap confidence intervals, LSS and perplexity matrices, heatmaps.

Everything is computed from the files a grid wrote (``grid.json``, ``cells/*/results.json`` and
``samples_*.jsonl``), so a resumed grid and an uninterrupted one give the same summary.

* A task's *family* is its name without the language part (``xcopa_id`` → ``xcopa``, ``flores_mt_en-fr`` →
  ``flores_mt``, ``belebele_ind_Latn`` → ``belebele``), its *language* :func:`lapeval.languages.task_language`
  (with the task's ``metadata.lapeval_language`` from the results and the grid's ``lang_map``); a cell with
  target t evaluated on a task in language e is *self-language* when t = e (the diagonal) and
  *cross-language* otherwise.
* Δ(cell, task, metric) = metric(cell) − metric(baseline). Its 95 % interval is a paired bootstrap: the
  same documents are resampled (with replacement, R times, fixed seed) for the cell and the baseline, the
  metric's own aggregation (lm-eval's, e.g. mean, weighted perplexity, chrF) is recomputed on both, and the
  2.5 / 97.5 percentiles of the R differences are reported.
* LSS(s, t) (:mod:`lapeval.metrics.lss`) comes from the ``lss_<s>`` samples of the baseline and of the cell
  amplifying t; rows are sources, columns targets, per target the mean over s ≠ t.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

from .._io import markdown_text as md
from .._io import safe_name, spreadsheet_safe, write_json, write_text
from ..errors import OutputError
from ..results import GRID_SUMMARY_FORMAT as SUMMARY_FORMAT  # noqa: F401
from ..results import (
    ResultsError,
    cell_samples,
    format_number,
    metric_entries,
    read_grid,
)
from .bootstrap import bootstrap_replicates, finite_mean, interval, mean

# ---- reading a grid directory: lapeval.results ------------------------------------------------
samples = cell_samples


def family(task: str, metadata: dict | None = None, lang_map=None) -> tuple[str, str]:
    """(family, column label) of a task name: ``xcopa_id`` → (xcopa, id), ``flores_mt_en-fr`` → (flores_mt,
    en-fr), ``belebele_ind_Latn`` → (belebele, ind_Latn), ``global_mmlu_full_de_law`` → (global_mmlu_full_law,
    de); a task whose language comes from elsewhere (metadata, ``lang_map``) splits at its last ``_``; tasks
    with no language → (task, '-')."""
    from ..languages import task_family, task_language

    spelled = task_family(task, metadata, lang_map)
    if spelled is not None:
        return spelled
    if task_language(task, metadata, lang_map) is None or "_" not in task:
        return task, "-"
    head, tail = task.rsplit("_", 1)
    return head, tail


# ---- aggregation and the paired bootstrap --------------------------------------------------------
def _aggregator(task_config: dict, metric: str):
    """The aggregation lm-eval applied to ``metric``, to recompute it on resampled documents: a registered
    name (``mean``, ``weighted_perplexity``, ...) or a ``!function`` of lapeval's own metric modules, which
    the results JSON records as source code (found by name and checked to be the same source). None when
    it cannot be recomputed here."""
    import importlib
    import inspect

    from lm_eval.api.registry import get_aggregation

    for m in task_config.get("metric_list") or []:
        if m.get("metric") != metric:
            continue
        agg = m.get("aggregation")
        if isinstance(agg, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", agg):
            try:
                return get_aggregation(agg)
            except (KeyError, ValueError):
                return None
        found = re.match(r"\s*def\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", agg) if isinstance(agg, str) else None
        if found:
            for mod in ("translation", "lss", "perplexity", "lid"):
                fn = getattr(importlib.import_module(f"lapeval.metrics.{mod}"), found.group(1), None)
                if callable(fn) and inspect.getsource(fn).strip() == agg.strip():
                    return fn
        return None
    return None


def _per_doc(records: dict[int, dict], metric: str) -> dict[int, object]:
    return {i: r[metric] for i, r in records.items() if metric in r}


# ---- the summary ---------------------------------------------------------------------------------
def summarize(out: Path) -> dict:
    from ..languages import task_language
    from ..lss.tasks import lss_source
    from ..metrics import lss as lss_metric

    g = read_grid(out)
    meta, cells = g["meta"], g["cells"]
    cfg = meta["config"]
    if "baseline" not in cells:
        raise ResultsError(f"{out}: the baseline cell has not finished: rerun lapeval grid to complete it")
    resamples = int(cfg.get("ci_resamples", 1000))
    base = cells["baseline"]
    order = [c["id"] for c in meta["cells"] if c["id"] in cells]
    results = {cid: {**cells[cid]["results"].get("results", {}), **cells[cid]["results"].get("groups", {})}
               for cid in order}
    groups = {g for g, members in base["results"].get("group_subtasks", {}).items() if members}
    tasks = [t for t in base["results"].get("results", {}) if t not in groups]  # the scored tasks, not their groups
    base_samples = {t: samples(base["dir"], t) for t in tasks}
    base_entries = {t: metric_entries(results["baseline"].get(t, {})) for t in tasks}
    aggregators: dict[tuple[str, str], object] = {}
    pairs: dict = {}  # (cell, task, metric, filter) -> its bootstrap replicates, for the leaderboard
    rows = []  # long format
    lang_map = cfg.get("lang_map")
    for cid in order:
        c = cells[cid]["cell"]
        for task in tasks:
            tconf = base["results"].get("configs", {}).get(task, {})
            tmeta = tconf.get("metadata") if isinstance(tconf.get("metadata"), dict) else None
            fam, col = family(task, tmeta, lang_map)
            lang = task_language(task, tmeta, lang_map)
            cs = samples(cells[cid]["dir"], task) if cid != "baseline" else {}
            for (metric, filt), (value, se) in metric_entries(results[cid].get(task, {})).items():
                b = base_entries[task].get((metric, filt))
                row = {"cell": cid, "intervention": c["id"].split("/")[0], "target": c.get("target"),
                       "task": task, "family": fam, "column": col, "language": lang, "metric": metric,
                       "filter": filt, "value": value, "stderr": se, "baseline": None if b is None else b[0],
                       "delta": None, "ci_low": None, "ci_high": None,
                       "self": None if c.get("target") is None or lang is None else c["target"] in ("self", lang)}
                if b is not None and cid != "baseline":
                    row["delta"] = value - b[0]
                    bd = _per_doc(base_samples[task].get(filt, {}), metric)
                    cd = _per_doc(cs.get(filt, {}), metric)
                    ids = sorted(set(bd) & set(cd))
                    if (task, metric) not in aggregators:
                        aggregators[(task, metric)] = _aggregator(tconf, metric)
                    agg = aggregators[(task, metric)]
                    numeric = bool(ids) and all(isinstance(bd[i], (int, float)) for i in ids)
                    if numeric and (agg is None or getattr(agg, "__name__", "") == "mean"):
                        agg = mean  # vectorised
                    if agg is not None and ids:
                        reps = bootstrap_replicates([bd[i] for i in ids], [cd[i] for i in ids], agg, resamples,
                                                    seed=int(cfg.get("seed", 1234)))
                        row["ci_low"], row["ci_high"] = interval(reps)
                        if reps is not None:
                            pairs[(cid, task, metric, filt)] = reps
                rows.append(row)

    tables = []
    interventions = list(dict.fromkeys(c["id"].split("/")[0] for c in meta["cells"] if c.get("target")))
    targets = list(dict.fromkeys(c["target"] for c in meta["cells"] if c.get("target")))
    keys = list(dict.fromkeys((r["family"], r["metric"], r["filter"]) for r in rows))
    for op in interventions:
        for fam, metric, filt in keys:
            sel = [r for r in rows if r["intervention"] == op and (r["family"], r["metric"], r["filter"]) == (fam, metric, filt)]
            if not sel:
                continue
            cols = list(dict.fromkeys(r["column"] for r in rows if (r["family"], r["metric"], r["filter"]) == (fam, metric, filt)))
            col_lang = {r["column"]: r["language"] for r in sel}
            tgts = [t for t in targets if any(r["target"] == t for r in sel)]
            get = {(r["target"], r["column"]): r for r in sel}
            base_row = {r["column"]: r["value"] for r in rows if r["cell"] == "baseline"
                        and (r["family"], r["metric"], r["filter"]) == (fam, metric, filt)}
            mat = [[get.get((t, col), {}).get("delta") for col in cols] for t in tgts]
            # self-language: the target is the task's language (the diagonal), or the cell's target is self
            diag = [get[(t, col)]["delta"] for t in tgts for col in cols
                    if (t, col) in get and get[(t, col)]["self"] and get[(t, col)]["delta"] is not None]
            off = [get[(t, col)]["delta"] for t in tgts for col in cols
                   if (t, col) in get and not get[(t, col)]["self"] and get[(t, col)]["delta"] is not None]
            tables.append({
                "intervention": op, "family": fam, "metric": metric, "filter": filt, "targets": tgts,
                "columns": cols, "column_languages": [col_lang.get(c) for c in cols],
                "baseline": [base_row.get(c) for c in cols],
                "values": [[get.get((t, col), {}).get("value") for col in cols] for t in tgts],
                "delta": mat,
                "ci_low": [[get.get((t, col), {}).get("ci_low") for col in cols] for t in tgts],
                "ci_high": [[get.get((t, col), {}).get("ci_high") for col in cols] for t in tgts],
                "self_mean_delta": finite_mean(diag), "cross_mean_delta": finite_mean(off), "n_self": len(diag), "n_cross": len(off),
            })

    lss_out = {}
    sources = [s for t in tasks if (s := lss_source(t))]

    def margins(cell_dir):  # {source: {doc_id: ...}} in the grid's task order
        m = lss_metric.read_samples(cell_dir)
        return {src: m[src] for src in sources if src in m}

    if sources:
        base_m = margins(base["dir"])
        paired = {}
        for op in interventions:
            runs = {cells[cid]["cell"]["target"]: margins(cells[cid]["dir"]) for cid in order if cid.split("/")[0] == op}
            if runs and (pm := lss_metric.paired_margins(base_m, runs)):  # none: every pair on the diagonal
                paired[op] = pm
                matrix = {s: {t: lss_metric.lss(m["before"], m["after"]) for t, m in row.items()}
                          for s, row in paired[op].items()}
                lss_out[op] = {"matrix": matrix, **lss_metric.summarize(matrix), "sources": list(matrix),
                               "targets": list(dict.fromkeys(t for row in matrix.values() for t in row))}
        lss_effects(lss_out, paired, {s: len(base_m[s]) for s in base_m}, resamples, int(cfg.get("seed", 1234)))

    from . import leaderboard

    s = {"format": SUMMARY_FORMAT, "format_version": 1, "config": cfg, "neurons_sha256": meta.get("neurons_sha256"),
         "cells": {cid: cells[cid]["cell"] for cid in order},
         "missing_cells": [c["id"] for c in meta["cells"] if c["id"] not in cells],
         "results": results, "rows": rows, "tables": tables, "lss": lss_out}
    higher = base["results"].get("higher_is_better", {})
    name = cfg.get("name") or str(cfg.get("model"))
    s["leaderboard"] = leaderboard.build({name: leaderboard.model_board(s, pairs, higher)})
    s["provenance"] = {cid: leaderboard.provenance(cells[cid]["results"]) for cid in order}
    return s


def lss_effects(lss_out: dict, paired: dict, n_items: dict, resamples: int, seed: int) -> None:
    """``effects`` beside each real intervention's LSS (:func:`lapeval.lss.effects.effects`, over the facts of
    its sample logs): the margin shift with its interval and, where its random-neuron control cells have all
    finished (``control<k>:<op>``, the same cells), the controls' mean, real − control with a paired bootstrap
    interval over facts, the rank and the chance-corrected LSS."""
    from ..lss.effects import effects
    from .config import control_of

    def cells(m: dict) -> set:
        return {(s, t) for s, row in m.items() for t in row}

    for op, real in paired.items():
        if control_of(op) is not None or not cells(real):
            continue
        ctrl = [m for c, m in paired.items() if (k := control_of(c)) and k[1] == op and cells(m) == cells(real)]
        e = effects(real, n_items, ctrl or None, resamples=resamples, seed=seed)
        lss_out[op]["effects"] = {"overall": e["overall"], "per_target": e["per_target"]}


# ---- writing -------------------------------------------------------------------------------------
def _slug(*parts: str) -> str:
    """A figure's file name from its parts (intervention labels in their file-name form, ``set=p_max``), one
    safe name (:func:`~lapeval._io.safe_name`: long or odd ones end in a hash; ordinary ones unchanged)."""
    from ..intervention.operation import file_name

    return safe_name(re.sub(r"[^A-Za-z0-9=@._~-]+", "_", file_name("_".join(parts))).strip("_"), SLUG_MAX)


SLUG_MAX = 200  # bytes: <slug>.png stays a file name


def check_outputs(out) -> None:
    """Before a summary is written (and before a grid computes anything): its ``heatmaps`` folder can be
    made, i.e. is not a file nor a dangling symbolic link; a one-line :class:`OutputError` otherwise."""
    figs = Path(out) / "heatmaps"
    if figs.is_symlink() and not figs.exists():
        raise OutputError(f"cannot write heatmaps into {figs}: it is a symbolic link to {os.readlink(figs)}, which "
                          "does not exist; remove the link (or make its folder) and rerun")
    if figs.exists() and not figs.is_dir():
        raise OutputError(f"cannot write heatmaps into {figs}: it is a file, not a folder; move it away and rerun")


def write_summary(output, log=print) -> dict:
    """The summary of a grid's output folder — what ``lapeval grid`` writes at the end and ``lapeval grid
    --summary-only`` rebuilds: a multi-model grid's leaderboard (:func:`write_models_summary`) or one model's
    tables (:func:`write_model_summary`), as ``grid.json`` says.

    Example::

        lapeval.write_summary("out/grid")["leaderboard"]
    """
    from ..results import read_json

    out = Path(output)
    meta = read_json(out / "grid.json", "grid file", "rerun lapeval grid")
    return write_models_summary(out, log=log) if "models" in meta else write_model_summary(out, log=log)


def write_model_summary(out: Path, log=print) -> dict:
    """summary.json, summary.csv, summary.md and heatmaps/ in one model's grid directory."""
    from ..plot import heatmap

    out = Path(out)
    check_outputs(out)  # first: nothing rewritten when the heatmaps cannot be
    s = summarize(out)
    write_json(out / "summary.json", s)
    buf = io.StringIO()
    fields = ["cell", "intervention", "target", "task", "family", "column", "language", "metric", "filter",
              "value", "stderr", "baseline", "delta", "ci_low", "ci_high", "self"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in s["rows"]:
        w.writerow({k: spreadsheet_safe(r[k]) for k in fields})
    write_text(out / "summary.csv", buf.getvalue())

    figs = out / "heatmaps"
    figs.mkdir(exist_ok=True)
    images = []
    for t in s["tables"]:
        if not t["targets"] or not t["columns"]:
            continue
        vals = [[math.nan if v is None else v for v in row] for row in t["delta"]]
        name = figs / f"{_slug(t['intervention'], t['family'], t['metric'], t['filter'])}.png"
        heatmap(vals, t["targets"], t["columns"], name,
                f"Δ {t['metric']} vs baseline: {t['family']}, {t['intervention']}", fmt="{:+.3g}",
                xlabel="evaluated", ylabel="target (amplified/deactivated)", center=0.0)
        images.append(name)
    for op, l in s["lss"].items():
        src, tg = l["sources"], l["targets"]
        vals = [[l["matrix"][a].get(t, math.nan) for a in src] for t in tg]
        name = figs / f"{_slug('lss', op)}.png"
        heatmap(vals, tg, src, name, f"LSS(source, target), {op}; mean {format_number(l['mean_off_diagonal'], 3)}",
                xlabel="source (prompt) language", ylabel="target (amplified)")
        images.append(name)
    write_text(out / "summary.md", _markdown(s, [p.relative_to(out) for p in images]))
    from . import leaderboard

    name = next(iter(s["leaderboard"]["models"]))
    leaderboard.write(out, s["leaderboard"], {name: model_info(s)},
                      {name: [(p.stem, p.read_bytes()) for p in images]}, f"Leaderboard: {name}")
    log(f"grid summary: {out / 'summary.md'} ({len(s['cells'])} cells, {len(images)} heatmaps; leaderboard.md, "
        "report.html)")
    return s


def model_info(s: dict) -> dict:
    """What the report page shows of one model's grid: its model, mask and cells' provenance."""
    return {"pretrained": s["config"].get("model"), "neurons_sha256": s.get("neurons_sha256"),
            "provenance": s.get("provenance", {})}


def _ci_text(ci) -> str:
    lo, hi = (ci or [None, None])[:2]
    return "" if lo is None or hi is None else f" [{format_number(lo, 3, sign=True)}, {format_number(hi, 3, sign=True)}]"


def comparison_markdown(s: dict) -> list[str]:
    """The grid in one table: a row per real intervention — its LSS beside its random-neuron controls (real −
    control with a paired bootstrap interval over facts, rank among the K + 1, chance-corrected LSS) and its
    margin shift in nats, then per task family the self-language Δ of the leaderboard's metric with its
    interval and, with controls, real − control with its paired interval. Empty for a grid without
    interventions."""
    board = next(iter(s["leaderboard"]["models"].values()), None)
    if not board or not board["interventions"]:
        return []
    from ..lss.tasks import lss_source

    lss = s.get("lss", {})
    lss_families = {r["family"] for r in s["rows"] if lss_source(r["task"])} if lss else set()  # the LSS columns
    entries = []  # (family, entry): each family's first metric, then its off-target rate where it has one
    for f, e in board["families"].items():
        if f not in lss_families:
            entries += [(f, e)] + ([(f, board["steering"][f])] if f in board.get("steering", {}) else [])
    has_ctrl = any("control_mean" in (lss.get(op, {}).get("effects") or {}).get("overall", {}) for op in lss) or any(
        "minus_control" in e["interventions"][op]["self"] for _, e in entries for op in e["interventions"])
    head = ["intervention"]
    if lss:
        head += ["LSS", "margin shift (nats)"] + (["controls' LSS", "LSS − controls", "rank", "chance-corrected"]
                                                 if has_ctrl else [])
    for f, e in entries:
        head += [f"{f} {e['metric']} self Δ"] + ([f"{f} {e['metric']} − controls"] if has_ctrl else [])
    L = ["## Interventions beside their controls", "",
         "LSS over all s ≠ t; margin shift E[Δ¹ − Δ⁰]; self Δ = mean over self-language cells of cell − baseline; "
         "brackets: 95 % paired-bootstrap intervals (facts for LSS, documents otherwise); controls: the same cells "
         "on random-neuron masks (same count per language and layer, same values); LSS ≈ 0.5 is what any "
         "disruption scores.", "", "| " + " | ".join(md(h) for h in head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for op in board["interventions"]:
        row = [md(op)]
        if lss:
            eff = (lss.get(op, {}).get("effects") or {}).get("overall", {})
            row += [format_number(lss.get(op, {}).get("mean_off_diagonal"), 3),
                    (format_number(eff.get("shift"), 3, sign=True) + _ci_text(eff.get("shift_ci"))) if eff else "–"]
            if has_ctrl:
                if "control_mean" in eff:
                    row += [format_number(eff["control_mean"], 3),
                            format_number(eff["real_minus_control"], 3, sign=True) + _ci_text(eff.get("ci")),
                            f"{eff['rank']}/{eff['of']}", format_number(eff.get("chance_corrected"), 3)]
                else:
                    row += ["–"] * 4
        for _, e in entries:
            side = e["interventions"].get(op, {}).get("self", {})
            row.append("–" if side.get("delta") is None else format_number(side["delta"], 3, sign=True) + _ci_text(side.get("ci")))
            if has_ctrl:
                mc = side.get("minus_control")
                row.append("–" if mc is None else format_number(mc, 3, sign=True) + _ci_text(side.get("minus_control_ci")))
        L.append("| " + " | ".join(row) + " |")
    return L + [""]


def _markdown(s: dict, images: list[Path]) -> str:
    cfg = s["config"]
    L = [f"# Grid: {md(cfg['model'])}", "",
         f"mask `{cfg.get('neurons')}` (sha256 {str(s.get('neurons_sha256'))[:12]}…), limit {cfg.get('limit')}, "
         f"{len(s['cells'])} cells, tasks: {', '.join(md(t) for t in cfg['tasks'])}", ""]
    if s["missing_cells"]:
        L += [f"**Unfinished cells:** {', '.join(md(c) for c in s['missing_cells'])}", ""]
    L += ["## Baseline", "", "| task | metric | value | stderr |", "|---|---|---:|---:|"]
    for r in s["rows"]:
        if r["cell"] == "baseline":
            L.append(f"| {md(r['task'])} | {md(r['metric'])},{md(r['filter'])} | {format_number(r['value'])} | {format_number(r['stderr'])} |")
    L.append("")
    L += comparison_markdown(s)
    for op, l in s["lss"].items():
        src, tg = l["sources"], l["targets"]
        L += [f"## LSS, {md(op)}", "", "rows: target (amplified); columns: source (prompt) language; last column: mean over s ≠ t", "",
              "| target | " + " | ".join(src) + " | mean |", "|---|" + "---:|" * (len(src) + 1)]
        for t in tg:
            L.append(f"| {t} | " + " | ".join(format_number(l["matrix"][a].get(t), 3) if a != t else "·" for a in src)
                     + f" | {format_number(l['per_target'].get(t), 3)} |")
        L += ["", f"mean LSS over all s ≠ t: **{format_number(l['mean_off_diagonal'], 3)}**", ""]
    for t in s["tables"]:
        L += [f"## {md(t['family'])} · {md(t['metric'])} ({md(t['filter'])}) · {md(t['intervention'])}", "",
              f"self-language (diagonal) mean Δ: **{format_number(t['self_mean_delta'])}** over {t['n_self']} cells; "
              f"cross-language mean Δ: **{format_number(t['cross_mean_delta'])}** over {t['n_cross']} cells", "",
              "| target | " + " | ".join(md(c) for c in t["columns"]) + " |", "|---|" + "---:|" * len(t["columns"]),
              "| *baseline* | " + " | ".join(format_number(v) for v in t["baseline"]) + " |"]
        for i, tg in enumerate(t["targets"]):
            cells = []
            for j, col in enumerate(t["columns"]):
                d, lo, hi = t["delta"][i][j], t["ci_low"][i][j], t["ci_high"][i][j]
                txt = "–" if d is None else f"{format_number(d, 4, sign=True)} [{format_number(lo, 3)}, {format_number(hi, 3)}]"
                own = tg == "self" or t["column_languages"][j] == tg
                cells.append(f"**{txt}**" if own and d is not None else txt)
            L.append(f"| {tg} | " + " | ".join(cells) + " |")
        L += ["", "Δ = cell − baseline [paired-bootstrap 95 % interval]; bold = self-language.", ""]
        if "perplexity" in t["metric"]:
            L += [f"{md(t['metric'])} itself:", "", "| target | " + " | ".join(md(c) for c in t["columns"]) + " |",
                  "|---|" + "---:|" * len(t["columns"]), "| *baseline* | " + " | ".join(format_number(v, 2) for v in t["baseline"]) + " |"]
            L += [f"| {tg} | " + " | ".join(format_number(v, 2) for v in t["values"][i]) + " |" for i, tg in enumerate(t["targets"])]
            L.append("")
    if images:
        L += ["## Heatmaps", ""] + [f"![{p.stem}]({p.as_posix()})" for p in images] + [""]
    return "\n".join(L)



# ---- several models -----------------------------------------------------------------------------------
def write_models_summary(out: Path, log=print) -> dict:
    """The summary of a multi-model grid: each model's own summary (``models/<name>/summary.*``), then, in
    ``out``, ``summary.json`` (every model's results as ``<model>/<cell>``, the leaderboard), ``summary.md``,
    ``leaderboard.md``, ``leaderboard.csv`` and ``report.html``. A model whose baseline has not finished is
    listed as missing, not ranked. Everything comes from the files: the models are those ``grid.json`` lists."""
    from ..results import read_json
    from . import leaderboard

    out = Path(out)
    config = read_json(out / "grid.json", "grid file", "rerun lapeval grid")["config"]
    entries = {m["name"]: m for m in config["models"]}
    for name in entries:  # first: nothing rewritten when some model's heatmaps cannot be
        check_outputs(out / "models" / safe_name(name))
    summaries, missing = {}, {}
    for name in entries:
        try:
            summaries[name] = write_model_summary(out / "models" / safe_name(name), log=log)
        except ResultsError as err:
            missing[name] = str(err)
    boards = {name: s["leaderboard"]["models"][next(iter(s["leaderboard"]["models"]))] for name, s in summaries.items()}
    lb = leaderboard.build(boards)
    top = {"format": SUMMARY_FORMAT, "format_version": 1, "multi_model": True, "config": config,
           "models": {name: {"pretrained": entries[name]["pretrained"], "neurons": entries[name]["neurons"],
                             "neurons_sha256": s.get("neurons_sha256"), "summary": f"models/{name}/summary.json",
                             "missing_cells": s["missing_cells"]} for name, s in summaries.items()},
           "missing_models": missing,
           "results": {f"{name}/{cid}": tasks for name, s in summaries.items() for cid, tasks in s["results"].items()},
           "leaderboard": lb}
    write_json(out / "summary.json", top)
    images = {name: [(p.stem, p.read_bytes()) for p in sorted((out / "models" / safe_name(name) / "heatmaps").glob("*.png"))]
              for name in summaries}
    title = f"Leaderboard: {len(summaries)} models"
    leaderboard.write(out, lb, {name: model_info(s) for name, s in summaries.items()}, images, title)
    L = [f"# Grid: {', '.join(md(n) for n in summaries)}", "", leaderboard.markdown(lb, "Leaderboard").split("\n", 2)[2], ""]
    if missing:
        L += ["**Not summarised (baseline unfinished):** " + "; ".join(f"{md(k)}: {md(v)}" for k, v in missing.items()), ""]
    L += ["Per model: " + ", ".join(f"[{md(n)}](models/{safe_name(n)}/summary.md)" for n in summaries), ""]
    write_text(out / "summary.md", "\n".join(L))
    log(f"grid summary: {out / 'summary.md'} ({len(summaries)} models; leaderboard.md, report.html)")
    return top
