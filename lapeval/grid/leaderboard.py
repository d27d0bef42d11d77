"""The leaderboard of a grid: per model, what its language neurons do, ranked.

Per model (from its grid summary, :func:`lapeval.grid.report.summarize`) and per task family (``xcopa``,
``flores_mt`` ...), with the family's *primary metric* (bits per byte for perplexity families, else the
first metric its tasks report; filter ``none`` where there is one):

* **baseline**: the mean over the family's languages of the baseline value;
* **self Δ** and **cross Δ** of each intervention: the mean over the self-language cells (target = the
  task's language) and over the cross-language ones of Δ = cell − baseline, with a paired bootstrap 95 %
  interval of that mean — in each replicate every task's documents are resampled (alike for the baseline
  and every cell), each (cell, task) pair's Δ recomputed with the metric's own aggregation, and the
  replicate's statistic is the mean of the pairs' Δ (the grid summary's own replicates, reused);
* **LSS**: the mean off-diagonal LSS of each intervention (when the grid has ``lss_*`` tasks).

The **best intervention** of a model is the one with the highest mean off-diagonal LSS when the grid scores
LSS, otherwise the highest self Δ of the first family's primary metric (sign-adjusted: lower is better for
perplexities and off-target rates, as lm-eval's ``higher_is_better`` says). Models are **ranked** by their
best intervention's score; models whose scores agree to 4 decimals share a rank (``ties``).
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

from .._io import markdown_text as md
from .._io import spreadsheet_safe
from ..results import format_number
from .bootstrap import finite_mean, mean_delta_interval, minus_controls_interval

TIE_DIGITS = 4


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


# preferred where a family reports them: scale-free across scripts (word perplexity of unsegmented text
# reaches 1e60 and its mean over languages means nothing), and chrF++ for translation (small models floor BLEU at 0)
PREFERRED = ("bits_per_byte", "chrfpp")


def primary_metrics(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """``{family: (metric, filter)}``: a metric of :data:`PREFERRED` when the family reports one, else the
    first metric its baseline rows report (filter ``none`` where the family has it)."""
    out: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r["cell"] != "baseline" or r["family"] in out:
            continue
        fam = [x for x in rows if x["cell"] == "baseline" and x["family"] == r["family"]]
        fam = [x for x in fam if x["filter"] == "none"] or fam
        pick = next((x for m in PREFERRED for x in fam if x["metric"] == m), fam[0])
        out[r["family"]] = (pick["metric"], pick["filter"])
    return out


STEERING_METRIC = "off_target"  # the output-language measure, shown beside a family's first metric


def family_entry(rows: list[dict], fam: str, metric: str, filt: str, ops: list, controls: dict, pairs: dict,
                 higher: dict) -> dict:
    """One family's metric in a leaderboard entry: its baseline and, per real intervention, the self- and
    cross-language Δ with intervals and, with controls, the controls' Δ and real − control with its paired
    interval."""
    sel = [r for r in rows if r["family"] == fam and r["metric"] == metric and r["filter"] == filt]
    hib = next((higher.get(r["task"], {}).get(metric) for r in sel if higher.get(r["task"], {}).get(metric) is not None), True)
    entry = {"metric": metric, "filter": filt, "higher_is_better": bool(hib),
             "baseline": finite_mean([r["value"] for r in sel if r["cell"] == "baseline"]),
             "n_languages": len({r["column"] for r in sel if r["cell"] == "baseline"}), "interventions": {}}
    for op in ops:
        per = {}
        for side, flag in (("self", True), ("cross", False)):
            part = [r for r in sel if r["intervention"] == op and r["self"] is flag and r["delta"] is not None]
            lo, hi = mean_delta_interval([pairs[k] for r in part if (k := (r["cell"], r["task"], metric, filt)) in pairs])
            per[side] = {"delta": finite_mean([r["delta"] for r in part]), "ci": [_num(lo), _num(hi)], "n": len(part)}
            if controls[op]:  # the same cells on random-neuron controls: their mean Δ, and real − control
                cparts = [[r for r in sel if r["intervention"] == c and r["self"] is flag and r["delta"] is not None]
                          for c in controls[op]]
                ctrl = finite_mean([finite_mean([r["delta"] for r in cp]) for cp in cparts])
                per[side]["control_delta"] = ctrl
                per[side]["minus_control"] = (None if ctrl is None or per[side]["delta"] is None
                                              else per[side]["delta"] - ctrl)
                lo, hi = minus_controls_interval(
                    [pairs.get((r["cell"], r["task"], metric, filt)) for r in part],
                    [[pairs.get((r["cell"], r["task"], metric, filt)) for r in cp] for cp in cparts])
                per[side]["minus_control_ci"] = [_num(lo), _num(hi)]
        entry["interventions"][op] = per
    return entry


def model_board(summary: dict, pairs: dict, higher: dict) -> dict:
    """One model's leaderboard entry from its grid summary; ``pairs``: ``{(cell, task, metric, filter):
    bootstrap replicates of Δ}``; ``higher``: ``{task: {metric: higher_is_better}}`` from lm-eval's results."""
    from .config import control_of

    rows = summary["rows"]
    every = list(dict.fromkeys(r["intervention"] for r in rows if r["cell"] != "baseline"))
    ops = [op for op in every if control_of(op) is None]  # real interventions; their controls are paired below
    controls = {op: [c for c in every if (k := control_of(c)) and k[1] == op] for op in ops}
    families, steering = {}, {}
    for fam, (metric, filt) in primary_metrics(rows).items():
        families[fam] = family_entry(rows, fam, metric, filt, ops, controls, pairs, higher)
        if metric != STEERING_METRIC and any(r["family"] == fam and r["metric"] == STEERING_METRIC for r in rows):
            steering[fam] = family_entry(rows, fam, STEERING_METRIC, filt, ops, controls, pairs, higher)
    all_lss = {op: _num(v.get("mean_off_diagonal")) for op, v in summary.get("lss", {}).items()}
    lss = {op: v for op, v in all_lss.items() if control_of(op) is None}
    lss_control = {op: finite_mean([all_lss.get(c) for c in controls.get(op, [])]) for op in lss if controls.get(op)}
    best = None
    if lss and any(v is not None for v in lss.values()):
        if lss_control:  # LSS is a sign test (disruption alone scores ~0.5): rank by what the controls do not reach
            score = {op: v - lss_control[op] for op, v in lss.items() if v is not None and lss_control.get(op) is not None}
            by = "mean off-diagonal LSS − its random-neuron controls' mean"
        else:
            score = {op: v for op, v in lss.items() if v is not None}
            by = "mean off-diagonal LSS"
    elif families and ops:
        fam, e = next(iter(families.items()))
        sign = 1.0 if e["higher_is_better"] else -1.0
        key = "minus_control" if any(controls.values()) else "delta"
        score = {op: sign * d for op in ops if (d := e["interventions"][op]["self"].get(key)) is not None}
        by = (f"self-language Δ {e['metric']} on {fam}" + (" − its controls' Δ" if key == "minus_control" else "")
              + ("" if e["higher_is_better"] else " (lower is better: sign flipped)"))
    else:
        score, by = {}, "none (baseline only)"
    if score:
        op = max(score, key=lambda k: (score[k], -ops.index(k) if k in ops else 0))  # ties: the earlier one
        best = {"intervention": op, "score": score[op], "by": by}
    out = {"families": families, "lss": lss, "best": best, "interventions": ops}
    if steering:
        out["steering"] = steering
    if lss_control:
        out["lss_control"] = lss_control
    return out


def rank(boards: dict[str, dict]) -> list[dict]:
    """Models ranked by their best intervention's score (highest first; models without one last); scores
    equal to :data:`TIE_DIGITS` decimals share a rank. ``[{model, rank, score, tie_with}]``."""
    scored = sorted(boards, key=lambda m: (boards[m]["best"] is None,
                                           -(boards[m]["best"] or {}).get("score", 0.0), m))
    out, prev, prev_rank = [], None, 0
    for i, m in enumerate(scored):
        b = boards[m]["best"]
        key = None if b is None else round(b["score"], TIE_DIGITS)
        r = prev_rank if (key is not None and key == prev) else i + 1
        out.append({"model": m, "rank": r, "score": None if b is None else b["score"]})
        prev, prev_rank = key, r
    for e in out:
        e["tie_with"] = [x["model"] for x in out if x["rank"] == e["rank"] and x["model"] != e["model"]
                         and e["score"] is not None]
    return out


def build(boards: dict[str, dict]) -> dict:
    """The leaderboard section of a summary: per-model entries and the ranking."""
    ranking = rank(boards)
    return {"rule": "ranked by the best intervention's score (mean off-diagonal LSS when the grid scores LSS, "
                    "else the self-language Δ of the first family; with controls: minus the same for its "
                    "random-neuron controls); scores equal to "
                    f"{TIE_DIGITS} decimals share a rank",
            "ranking": ranking, "models": boards,
            "ties": [list(t) for t in dict.fromkeys(tuple(sorted([e["model"], *e["tie_with"]]))
                                                     for e in ranking if e["tie_with"])]}


# ---- tables ----------------------------------------------------------------------------------------
def table(lb: dict) -> tuple[list[str], list[list]]:
    """(header, rows) of the ranked table, one row per model: rank, model, best intervention and score,
    then per family its baseline and the best intervention's self / cross Δ (with intervals), and LSS."""
    fams = list(dict.fromkeys(f for b in lb["models"].values() for f in b["families"]))
    metric = {f: next(b["families"][f] for b in lb["models"].values() if f in b["families"]) for f in fams}
    header = ["rank", "model", "best intervention", "score"]
    for f in fams:
        m = metric[f]["metric"]
        header += [f"{f} {m} baseline", f"{f} {m} self Δ", f"{f} self 95% CI", f"{f} {m} cross Δ", f"{f} cross 95% CI"]
    header.append("mean off-diagonal LSS")
    with_controls = any(b.get("lss_control") for b in lb["models"].values())
    if with_controls:
        header += ["controls' LSS", "LSS − controls"]
    rows = []
    for e in lb["ranking"]:
        b = lb["models"][e["model"]]
        op = (b["best"] or {}).get("intervention")
        rank_s = f"{e['rank']}" + ("=" if e["tie_with"] else "")
        row = [rank_s, e["model"], op or "–", e["score"]]
        for f in fams:
            fe = b["families"].get(f)
            iv = (fe or {}).get("interventions", {}).get(op, {}) if op else {}
            s, c = iv.get("self", {}), iv.get("cross", {})
            row += [None if fe is None else fe["baseline"], s.get("delta"), s.get("ci"), c.get("delta"), c.get("ci")]
        row.append(b["lss"].get(op) if op else None)
        if with_controls:
            ctrl = b.get("lss_control", {}).get(op) if op else None
            real = b["lss"].get(op) if op else None
            row += [ctrl, None if ctrl is None or real is None else real - ctrl]
        rows.append(row)
    return header, rows


def _cell_text(v, col: str) -> str:
    if isinstance(v, list):
        return "–" if not v or v[0] is None else f"[{format_number(v[0], 3, True)}, {format_number(v[1], 3, True)}]"
    if isinstance(v, float):
        return format_number(v, 3, sign="Δ" in col)
    return "–" if v is None else str(v)


def markdown(lb: dict, title: str = "Leaderboard") -> str:
    header, rows = table(lb)
    L = [f"# {md(title)}", "", lb["rule"] + ".", "", "| " + " | ".join(md(h) for h in header) + " |",
         "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for r in rows:
        L.append("| " + " | ".join(md(_cell_text(v, h)) for v, h in zip(r, header)) + " |")
    if lb["ties"]:
        L += ["", "Ties: " + "; ".join(" = ".join(md(m) for m in t) for t in lb["ties"]) + "."]
    return "\n".join(L) + "\n"


def to_csv(lb: dict) -> str:
    header, rows = table(lb)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    flat = []
    for h in header:
        flat += [f"{h} low", f"{h} high"] if h.endswith("95% CI") else [h]
    w.writerow([spreadsheet_safe(h) for h in flat])
    for r in rows:
        out = []
        for v, h in zip(r, header):
            if h.endswith("95% CI"):
                out += list(v) if isinstance(v, list) and v else ["", ""]
            else:
                out.append("" if v is None else v)
        w.writerow([spreadsheet_safe(v) for v in out])
    return buf.getvalue()


# ---- the page -------------------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" ▲"}th.sorted-desc::after{content:" ▼"}td.num{text-align:right}
details{margin:.5em 0}code{background:#f6f6f6;padding:1px 3px}img{max-width:100%;border:1px solid #eee}"""

_SCRIPT = """function sortBy(table, col, dir){const body=table.tBodies[0];const rows=[...body.rows];
const key=r=>{const v=r.cells[col].dataset.sort;return v===undefined||v===''?null:(isNaN(+v)?v:+v)};
rows.sort((a,b)=>{const x=key(a),y=key(b);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
return (x<y?-1:x>y?1:0)*dir});rows.forEach(r=>body.appendChild(r));
[...table.tHead.rows[0].cells].forEach((th,i)=>th.className=i===col?(dir>0?'sorted-asc':'sorted-desc'):'')}
document.querySelectorAll('table.sortable').forEach(t=>{[...t.tHead.rows[0].cells].forEach((th,i)=>{
th.addEventListener('click',()=>sortBy(t,i,th.className==='sorted-asc'?-1:1))})});"""


def report_html(lb: dict, models: dict[str, dict], images: dict[str, list[tuple[str, bytes]]], title: str) -> str:
    """A self-contained page (no network): the leaderboard table, sortable by any column (click a header),
    per-model heatmaps (PNG inlined), and every cell's provenance (model, mask sha256, intervention,
    lapeval and lm-eval versions). ``models``: ``{name: {"pretrained", "provenance": {cell: {...}}}}``."""
    import base64

    header, rows = table(lb)
    e = html.escape
    P = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_STYLE}</style></head><body>",
         f"<h1>{e(title)}</h1>", f"<p>{e(lb['rule'])}. Click a column header to sort.</p>",
         "<table id='leaderboard' class='sortable'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
         + "</tr></thead><tbody>"]
    for r in rows:
        tds = []
        for v, h in zip(r, header):
            key = v[0] if isinstance(v, list) and v else v
            if h == "rank":
                key = float(str(v).rstrip("="))
            sort = "" if key is None else (repr(float(key)) if isinstance(key, (int, float)) else str(key))
            cls = " class='num'" if isinstance(key, (int, float)) else ""
            text = _cell_text(v, h)
            if h == "model":
                text = f"<a href='#model-{e(str(v))}'>{e(text)}</a>"
            else:
                text = e(text)
            tds.append(f"<td{cls} data-sort='{e(sort)}'>{text}</td>")
        P.append(f"<tr data-model='{e(str(r[1]))}'>" + "".join(tds) + "</tr>")
    P.append("</tbody></table>")
    if lb["ties"]:
        P.append("<p>Ties: " + e("; ".join(" = ".join(t) for t in lb["ties"])) + ".</p>")
    for name, info in models.items():
        P.append(f"<h2 id='model-{e(name)}'>{e(name)}</h2><p><code>{e(str(info.get('pretrained')))}</code>"
                 f" · mask sha256 <code>{e(str(info.get('neurons_sha256')))}</code></p>")
        for label, png in images.get(name, []):
            P.append(f"<figure><img alt='{e(label)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     f"<figcaption>{e(label)}</figcaption></figure>")
        P.append("<details><summary>cells and their provenance</summary><table class='sortable'><thead><tr>"
                 "<th>cell</th><th>intervention</th><th>mask sha256</th><th>lapeval</th><th>lm-eval</th><th>key</th>"
                 "</tr></thead><tbody>")
        for cell, prov in info.get("provenance", {}).items():
            P.append("<tr>" + "".join(f"<td data-sort='{e(str(x))}'>{e(str(x))}</td>" for x in (
                cell, prov.get("intervention"), prov.get("neurons_sha256"), prov.get("lapeval_version"),
                prov.get("lm_eval_version"), prov.get("key"))) + "</tr>")
        P.append("</tbody></table></details>")
    P.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(P) + "\n"


def provenance(results: dict) -> dict:
    """A cell's provenance from its lm-eval results JSON."""
    lape = results.get("config", {}).get("lape", {}) or {}
    iv = lape.get("intervention") or {}
    return {"intervention": iv.get("label", "none (baseline)") if iv else "none (baseline)",
            "neurons_sha256": iv.get("neurons_sha256"), "lapeval_version": lape.get("lapeval_version"),
            "lm_eval_version": results.get("lm_eval_version") or results.get("git_hash"),
            "key": results.get("lapeval_grid", {}).get("key"), "model": (lape.get("model") or {})}


def write(out: Path, lb: dict, models: dict, images: dict, title: str) -> list[Path]:
    """leaderboard.md, leaderboard.csv and report.html in ``out``, each written atomically."""
    from .._io import write_text

    out = Path(out)
    paths = [out / "leaderboard.md", out / "leaderboard.csv", out / "report.html"]
    write_text(paths[0], markdown(lb, title))
    write_text(paths[1], to_csv(lb))
    write_text(paths[2], report_html(lb, models, images, title))
    return paths
