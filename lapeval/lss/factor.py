"""Choosing the amplification value per target language by LSS (method.md §3.3 "How the factor was searched
and chosen", §4).

Every candidate operation (``mode:value``, e.g. ``set:p_max``) is applied to the neurons of each target
language t in turn and scored by LSS(s, t) on the parallel facts of every source s ≠ t, all against one
baseline (no intervention) computed once. For each candidate the result is the LSS matrix (sources ×
targets), its per-target means over s ≠ t and its overall off-diagonal mean. The chosen candidate of a
target is the one with the highest per-target mean; the chosen candidate overall the one with the highest
off-diagonal mean. Ties go to the candidate that comes **earlier** in the candidate list, so list the
preferred (e.g. the paper's p_max) first.

Default candidates (the reference's grid, §3.3): ``set:p_max``, ``set:p_median`` (patched), ``set:tt_max``,
``add:tt_max`` (test-time layer maximum), ``set:tt_p10`` (test-time 10th percentile, a soft deactivation),
``zero`` (deactivation, the contrast), then ``scale:c`` for each factor c of ``scales`` (default 2, 5, 10).
A candidate is any intervention spec of :mod:`lapeval.intervention.operation` (``zero@en;set:p_max``, ``add:2*p_max``,
``set:p_max;scope:generation``); its terms without languages act on the target.

**Sweep** (:func:`sweep_candidates`): one operation graded by α over a list (default 0.5, 1, 2, 4) —
``add:p_max`` gives ``add:α*p_max``, ``scale`` gives ``scale:α``, a number is multiplied (``add:2`` gives
``add:2α``, ``vec:add:1`` gives ``vec:add:α``, the DiffMean steering strength) — scored the same way, with the
LSS curve per target (mean over s ≠ t against α) drawn as ``<stem>.factor.sweep.png``.

**Residual vectors** (``vectors=``, method.md §10–11): candidates may steer with DiffMean vectors instead of,
or beside, the neurons — ``add:α`` alone on the vectors, or ``vec:add:α`` terms beside a mask — so the same
search picks the vectors' α by the same LSS against the same baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import LapevalError
from ..intervention.operation import (
    InterventionError,
    Operation,
    Spec,
    Term,
    parse_layers,
    parse_ops,
    require_target_term,
)

DEFAULT_CANDIDATES = ("set:p_max", "set:p_median", "set:tt_max", "add:tt_max", "set:tt_p10", "zero")
DEFAULT_SCALES = (2.0, 5.0, 10.0)
DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
TIE_RULE = "ties go to the earlier candidate in the list"


class CandidateError(InterventionError):
    """A bad candidate (mode, value, or a value the mask lacks): one line naming the candidate and the fix."""


@dataclass(frozen=True)
class Candidate:
    """One intervention to try on each target: ``label`` is its canonical spelling (``set:p_max``, ``zero``,
    ``zero@en;set:p_max``)."""

    spec: Spec

    def __init__(self, spec) -> None:
        object.__setattr__(self, "spec", spec if isinstance(spec, Spec) else parse_ops(spec, "candidate"))

    @property
    def op(self) -> Operation:
        """The operation of a one-term candidate (the first term's otherwise)."""
        return self.spec.terms[0].op

    @property
    def mode(self) -> str | None:
        return self.op.mode if self.spec.simple else None

    @property
    def value(self) -> float | str | None:
        """A one-term candidate's value (``p_max``, ``2.0``; graded: ``2*p_max``); None for a composite."""
        if not self.spec.simple:
            return None
        return self.op.value if self.op.factor == 1.0 else self.op.label.partition(":")[2]

    @property
    def label(self) -> str:
        return self.spec.label

    def __str__(self) -> str:
        return self.label


def parse_candidate(spec) -> Candidate:
    """``"set:p_max"`` / ``"set=p_max"`` / ``"zero"`` / ``("scale", 2)`` / ``"zero@en;set:p_max"`` / a
    :class:`Candidate` (:func:`lapeval.intervention.operation.parse_ops`; the search's ``layers`` apply to every term that
    names none; a term without languages acts on the target, and some term must)."""
    if isinstance(spec, Candidate):
        return spec
    try:
        parsed = parse_ops(tuple(spec) if isinstance(spec, list) else spec, what="candidate")
    except LapevalError as e:
        raise CandidateError(f"{e} (candidates are specs such as set:p_max, scale:2, zero, zero@en;set:p_max)") from None
    if all(t.languages for t in parsed.terms):
        raise CandidateError(f"candidate {parsed.label!r}: every term names its languages, so the target gets nothing: "
                             "leave the target's term without @LANGS (e.g. zero@en;set:p_max)")
    return Candidate(parsed)


def parse_alphas(spec) -> list[float]:
    """``"0.5,1,2,4"`` (or numbers) → [0.5, 1.0, 2.0, 4.0]; None → :data:`DEFAULT_ALPHAS`."""
    if spec is None:
        return list(DEFAULT_ALPHAS)
    items = [x.strip() for x in spec.split(",") if x.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise CandidateError(f"--alphas: {item!r} is not a number (give factors such as 0.5,1,2,4)") from None
        if not math.isfinite(f) or f <= 0:
            raise CandidateError(f"--alphas: {item!r}: give positive finite factors")
        out.append(f)
    if not out:
        raise CandidateError("--alphas: no factor given (e.g. 0.5,1,2,4)")
    return list(dict.fromkeys(out))


def sweep_candidates(operation, alphas=None) -> list[Candidate]:
    """``operation`` graded by each α: every term acting on the target (no ``@LANGS``) gets ``α·value``
    (``add:p_max`` → ``add:α*p_max``, ``set:tt_max`` → ``set:α*tt_max``, ``route:bias:1`` → ``route:bias:α``)
    or, for ``scale``, ``scale:α``."""
    try:
        base = parse_ops("scale:1" if str(operation).strip().lower() == "scale" else operation, "--sweep")
    except LapevalError as e:
        raise CandidateError(f"{e} (sweep one operation such as add:p_max, set:tt_max or scale)") from None
    graded = [t for t in base.terms if not t.languages]
    if not graded:
        raise CandidateError(f"--sweep {operation!r}: no term acts on the target (leave its @LANGS out)")
    for t in graded:
        if t.op.mode in ("zero", "ban"):
            raise CandidateError(f"--sweep {operation!r}: {t.op.mode} has no value to grade: sweep add:p_max, "
                                 "set:p_max, add:tt_max, vec:add:1, route:bias:1 or scale")
        if t.op.factor != 1.0:
            raise CandidateError(f"--sweep {operation!r}: give the operation without a factor (add:p_max): "
                                 "--alphas grades it")
    out = []
    for a in parse_alphas(alphas):
        terms = []
        for t in base.terms:
            if t.languages:
                terms.append(t)
            elif t.op.mode == "scale":
                terms.append(Term(Operation("scale", float(a)), None, t.layers, t.site))
            elif isinstance(t.op.value, str):
                terms.append(Term(Operation(t.op.mode, t.op.value, float(a)), None, t.layers, t.site))
            else:  # a number (add:2, vec:add:1): α times it
                terms.append(Term(Operation(t.op.mode, float(a) * t.op.value), None, t.layers, t.site))
        out.append(Candidate(Spec(tuple(terms), base.scope)))
    return out


def parse_scales(spec) -> list[float]:
    """``"2,5,10"`` (or numbers) → [2.0, 5.0, 10.0]; ``""``/None → []."""
    if spec is None:
        return []
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if isinstance(item, str) and not item:
            continue
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise CandidateError(f"--scales: {item!r} is not a number (give factors such as 2,5,10, or '' for none)") from None
        if not math.isfinite(f):
            raise CandidateError(f"--scales: {item!r} is not a finite number")
        out.append(f)
    return out


def default_candidates(scales: Iterable[float] = DEFAULT_SCALES) -> list[Candidate]:
    """The reference grid (:data:`DEFAULT_CANDIDATES`) then ``scale:c`` for each c of ``scales``."""
    return build_candidates(None, scales)


def build_candidates(specs=None, scales: Iterable[float] = ()) -> list[Candidate]:
    """``specs`` (a comma string or a list; None = :data:`DEFAULT_CANDIDATES`) then ``scale:c`` per scale,
    parsed, with repeats (same canonical label) dropped keeping the first. Refuses an empty list."""
    if specs is None:
        specs = list(DEFAULT_CANDIDATES)
    elif isinstance(specs, str):
        specs = [s for s in (p.strip() for p in specs.split(",")) if s]
    cands = [parse_candidate(s) for s in specs] + [Candidate(Operation.parse("scale", float(c))) for c in scales]
    seen: dict[str, Candidate] = {}
    for c in cands:
        seen.setdefault(c.label, c)
    if not seen:
        raise CandidateError("no candidates to search: give --candidates mode:value,... and/or --scales")
    return list(seen.values())


def check_candidates(candidates: Sequence[Candidate], mask, targets: Sequence[str], vectors=None) -> None:
    """One-line errors, before anything heavy (:func:`~lapeval.intervention.setting.check_spec` on each
    candidate against the targets): every target is a language of the mask, every language and layer a term
    names fits the mask, and every candidate taking its value from the mask (``p_max`` / ``p_median``) finds
    it for every language it acts on — else the message names the candidates that would run. With
    ``vectors`` (:class:`~lapeval.vectors.ResidualVectors`), each candidate is also built as the setting it
    will be on every target (vector terms add α · v; without a mask every term is one)."""
    from ..intervention.setting import MissingValuesError, build_setting, check_spec
    from ..masks import MaskError

    if vectors is not None:
        for c in candidates:
            try:
                require_target_term(c.spec)
                for t in targets:
                    build_setting(mask, t, None, None, None, ops=c.spec, vectors=vectors)
            except MissingValuesError:
                pass  # named with the candidates that would run, below
            except (MaskError, InterventionError) as e:
                raise CandidateError(f"candidate {c.label!r}: {e}") from None
        if mask is None:
            return
    for t in targets:
        mask.code(t)  # MaskError naming the mask's languages
    lacking: dict[str, MissingValuesError] = {}
    for c in candidates:
        try:
            check_spec(c.spec, mask, targets)
        except MissingValuesError as e:
            lacking[c.label] = e
        except (MaskError, InterventionError) as e:
            raise CandidateError(f"candidate {c.label!r}: {e}") from None
    if lacking:
        label, e = next(iter(lacking.items()))
        rest = [x.label for x in candidates if x.label not in lacking]
        drop = f"drop it with --candidates {','.join(rest)}" if rest else "give other --candidates (e.g. set:tt_max,zero)"
        where = f" {mask.path}" if mask.path else ""
        raise CandidateError(f"candidate {label!r}: mask{where} has no {e.kind} values for {', '.join(e.languages)}: "
                             f"{drop}, or use a mask from lapeval identify, which stores p_max/p_median from the "
                             "activation statistics")


# ------------------------------------------------------------------------------------------ search
def _best(scores: list[tuple[str, float]]) -> tuple[str, float] | None:
    """The first (label, score) with the highest score, NaN skipped; None when every score is NaN."""
    best = None
    for label, v in scores:
        if v is None or math.isnan(v):
            continue
        if best is None or v > best[1]:  # strictly greater: a tie keeps the earlier candidate
            best = (label, v)
    return best


def search(lm, tasks: dict, targets: Sequence[str], neurons, candidates, layers=None, limit: int | None = None,
           log: Callable[[str], None] = print, controls: Sequence = (), vectors=None) -> dict:
    """LSS of every candidate operation for every target language, against one baseline, with a loaded model.

    ``lm``: a :class:`~lapeval.lm.LapeLM`; ``tasks``: ``{s: lss_<s> task}`` (from
    :func:`lapeval.lss.load_lss_tasks`); ``targets``: languages of the mask whose neurons get the
    operation; ``neurons``: a mask path or :class:`~lapeval.masks.NeuronMask` (None with ``vectors`` alone);
    ``vectors``: residual DiffMean vectors (:class:`~lapeval.vectors.ResidualVectors`) that ``add:α`` /
    ``vec:add:α`` terms steer with; ``candidates``: ``mode:value``
    strings, ``(mode, value)`` tuples or :class:`Candidate` s (see :func:`parse_candidate`); ``layers``:
    where to intervene (default all); ``limit``: first N facts per source.

    The baseline log-likelihoods (no intervention) are computed once; each candidate then gives exactly
    what :func:`lapeval.lss.compute_matrix` gives for it alone. Returns::

        candidates        [label, ...] in the given order (repeats dropped)
        sources, targets  the languages, in order
        table             {label: {t: mean over s ≠ t of LSS(s, t)}}
        overall           {label: mean LSS over all off-diagonal (s, t) pairs}
        best_per_target   {t: {"candidate", "mode", "value", "lss"}}, highest table[·][t]
        best_overall      {"candidate", "mode", "value", "lss"}, highest overall
        matrices          {label: {s: {t: LSS(s, t)}}}
        n_items           {s: facts scored}
        effects           {label: effects of :func:`lapeval.lss.effects.effects`} — with ``controls`` (control
                          masks, :func:`lapeval.control_mask`), each candidate also on each control, against
                          the same baseline: control mean, real − control [CI], rank, chance-corrected LSS
                          (a candidate without neuron terms has no neuron control: its effects have none)

    Ties (equal means) go to the **earlier** candidate in the list; NaN means (no pair to score) never
    win, and a target whose every mean is NaN gets ``None``.
    """
    from ..lm import check_mask
    from ..masks import NeuronMask
    from .matrix import compute_matrix, load_vectors, paired_baseline

    mask = None if neurons is None else (
        neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser()))
    cands = build_candidates(candidates if isinstance(candidates, str) else list(candidates))
    targets = list(targets)
    vecs = load_vectors(vectors, targets) if vectors is not None else None
    if mask is None and vecs is None:
        raise CandidateError("give a neuron mask or residual vectors (vectors=) to search with")
    check_candidates(cands, mask, targets, vecs)
    parse_layers(layers, (mask or vecs).n_layers)
    if mask is not None:
        check_mask(mask, lm.sites)
    if vecs is not None:
        from ..sites import hidden_size_of

        vecs.check_model(len(lm.sites), hidden_size_of(lm.model))

    from .effects import effects

    def on_neurons(c: Candidate) -> bool:  # a control mask changes nothing in a candidate without neuron terms
        return mask is not None and any(t.site != "vec" for t in c.spec.terms)

    base = paired_baseline(lm, tasks, targets, limit=limit, log=log)
    matrices, table, overall, n_items, sources, effs = {}, {}, {}, {}, list(tasks), {}
    for i, c in enumerate(cands, 1):
        t0 = time.time()
        res = compute_matrix(lm, tasks, targets, neurons=mask, ops=c.spec, layers=layers,
                             limit=limit, log=lambda m: None, baseline=base, vectors=vecs)
        ctrl = [compute_matrix(lm, tasks, targets, neurons=m, ops=c.spec, layers=layers, limit=limit,
                               log=lambda m: None, baseline=base, vectors=vecs)["margins"]
                for m in (controls if on_neurons(c) else ())]
        effs[c.label] = effects(res["margins"], res["n_items"], ctrl or None)
        matrices[c.label] = res["matrix"]
        table[c.label] = {t: res["per_target"].get(t, math.nan) for t in targets}
        overall[c.label] = res["mean_off_diagonal"]
        n_items, sources = res["n_items"], res["sources"]
        log(f"candidate {i}/{len(cands)} {c.label}: mean LSS {overall[c.label]:.3f} ({time.time() - t0:.0f}s)")

    by_label = {c.label: c for c in cands}

    def pick(scores):
        b = _best(scores)
        if b is None:
            return None
        c = by_label[b[0]]
        return {"candidate": c.label, "mode": c.mode, "value": c.value, "lss": b[1]}

    return {
        "candidates": [c.label for c in cands],
        "sources": sources,
        "targets": targets,
        "table": table,
        "overall": overall,
        "best_per_target": {t: pick([(c.label, table[c.label][t]) for c in cands]) for t in targets},
        "best_overall": pick([(c.label, overall[c.label]) for c in cands]),
        "tie_rule": TIE_RULE,
        "matrices": matrices,
        "n_items": n_items,
        "effects": effs,
    }


def graded_label(operation) -> str:
    """The swept operation with α written in: ``add:p_max`` → ``add:α·p_max``, ``scale`` → ``scale:α``."""
    if str(operation).strip().lower() == "scale":
        return "scale:α"
    spec = parse_ops(operation)
    parts = []
    for t in spec.terms:
        if t.languages:
            parts.append(t.label)
        else:
            v = t.op.value
            graded = "α" if t.op.mode == "scale" or v == 1.0 else f"α·{v:g}" if isinstance(v, float) else f"α·{v}"
            prefix = f"{t.site}:" if t.site else ""
            parts.append(f"{prefix}{t.op.mode}:{graded}" + t.label[len(prefix + t.op.label):])
    return ";".join(parts + ([f"scope:{spec.scope}"] if spec.scope != "all" else []))


def sweep_curves(result: dict, operation: str, alphas: Sequence[float], cands: Sequence[Candidate]) -> dict:
    """The sweep section: per target, mean LSS over s ≠ t at each α (and overall), and the best α (ties:
    the smaller α, listed first)."""
    labels = [c.label for c in cands]
    curves = {t: [result["table"][lab][t] for lab in labels] for t in result["targets"]}
    overall = [result["overall"][lab] for lab in labels]

    def best(vals):
        b = _best(list(zip(map(str, alphas), vals)))
        return None if b is None else {"alpha": float(b[0]), "lss": b[1]}

    return {"operation": operation, "graded": graded_label(operation), "alphas": list(alphas), "candidates": labels,
            "curves": curves, "overall": overall,
            "best_alpha_per_target": {t: best(v) for t, v in curves.items()}, "best_alpha_overall": best(overall)}


def plot_sweep(sweep: dict, out, title: str = "") -> Path:
    """LSS (mean over s ≠ t) against α, one line per target and the overall mean dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plot import _save

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = sweep["alphas"]
    for t, ys in sweep["curves"].items():
        ax.plot(x, [_nan(y) for y in ys], marker="o", label=t)
    ax.plot(x, [_nan(y) for y in sweep["overall"]], "k--", marker="s", label="all (s ≠ t)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    ax.set_xticklabels([format(a, "g") for a in x])
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel(f"α in {sweep.get('graded', sweep['operation'])}")
    ax.set_ylabel("mean LSS over sources s ≠ t")
    ax.set_title(title or f"LSS sweep: {sweep.get('graded', sweep['operation'])}", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, out)


def format_sweep(sweep: dict) -> str:
    """Markdown: rows = targets, columns = α; the best α per row in bold."""
    alphas = sweep["alphas"]
    out = [f"## Sweep: {sweep.get('graded', sweep['operation'])}", "",
           "| target | " + " | ".join(f"α={format(a, 'g')}" for a in alphas) + " | best α |",
           "|---|" + "---:|" * (len(alphas) + 1)]
    rows = [*sweep["curves"].items(), ("all (s ≠ t)", sweep["overall"])]
    bests = [*sweep["best_alpha_per_target"].values(), sweep["best_alpha_overall"]]
    for (t, ys), b in zip(rows, bests):
        cells = ["–" if y is None or math.isnan(y) else (f"**{y:.3f}**" if _is_max(y, ys) else f"{y:.3f}") for y in ys]
        out.append(f"| {t} | " + " | ".join(cells) + f" | {'–' if b is None else format(b['alpha'], 'g')} |")
    return "\n".join(out) + "\n"


def factor_paths(neurons, out=None) -> tuple[Path, Path, Path]:
    """(json, md, png) of a search: ``out`` (and its .md/.png siblings), else ``<mask stem>.factor.*`` beside
    the mask."""
    if out:
        js = Path(out)
    else:
        mask = Path(str(neurons))
        stem = mask.stem if mask.suffix == ".safetensors" else mask.name
        js = mask.with_name(f"{stem}.factor.json")
    return js, js.with_suffix(".md"), js.with_suffix(".png")


def search_factor(model, neurons, languages, targets=None, *, candidates=None, scales=None, layers=None,
                  facts=None, limit: int | None = None, batch_size: int = 8, dtype: str = "float32",
                  device: str = "cpu", out=None, sweep=None, alphas=None, controls: int = 0,
                  control_stats=None, vectors=None, log: Callable[[str], None] = print) -> dict:
    """Choose the amplification value per target language by LSS — what ``lapeval search-factor`` runs.

    Every candidate operation (default :data:`DEFAULT_CANDIDATES`, then ``scale:c`` for each of ``scales``,
    default 2, 5, 10 with the default list and none with ``candidates``) is applied to each target t's
    neurons; its score for t is mean_{s ≠ t} LSS(s, t), all against one baseline. The best candidate per
    target and overall (highest mean; ties: the earlier candidate) are written as ``<mask stem>.factor.json``
    / ``.md`` / ``.png`` beside the mask (or at ``out``). ``model``: a name / folder / hub id or a loaded
    :class:`~lapeval.lm.LapeLM`; ``languages``: the sources; ``targets``: default ``languages``; ``facts``,
    ``limit``, ``layers``: as :func:`lapeval.lss_matrix`. ``sweep``: one operation graded by each of
    ``alphas`` (default 0.5, 1, 2, 4; :func:`sweep_candidates`) — the candidates are then the graded ones
    (plus ``candidates`` when given), and the curves go to the JSON (``sweep``), the markdown and
    ``<stem>.factor.sweep.png``. ``controls``: K random-neuron controls of the mask (seeds 0 … K−1), each
    candidate scored on them too (``control_stats``: the mask's STATS, controls matched on activation
    frequency); the JSON gains ``effects`` per candidate (control mean, real − control with its bootstrap
    interval, rank, chance-corrected LSS, margin shift). ``vectors``: residual DiffMean vectors (``lapeval
    vectors``) — ``neurons`` may then be None, every candidate adding α · v_t (``sweep="add:1"`` sweeps the
    steering strength), or, beside a mask, ``vec:add:α`` terms; the output goes beside the mask, else beside
    the vectors. Returns the JSON document written.

    Example::

        doc = lapeval.search_factor("gemma-3-270m", "neuron_masks/gemma-3-270m.safetensors", "en,fr,zh",
                                    facts="builtin", limit=20, candidates="set:p_max,scale:2")
        doc["best_per_target"]["fr"]["candidate"]
    """
    from .. import __version__, models
    from .matrix import check_inputs, control_masks, load_vectors, loaded_for_lss

    # ---- everything that can be checked without the model or the data
    sources, tgts, mask = check_inputs(neurons, languages, targets, None, None, layers, limit, facts, vectors)
    vecs = load_vectors(vectors, tgts) if vectors is not None else None
    if controls and mask is None:
        raise CandidateError("--controls: the controls are random-neuron masks; give --neurons MASK")
    ctrl_masks = control_masks(mask, controls, control_stats)
    if scales is not None:
        scale_list = parse_scales(scales) if isinstance(scales, str) else [float(c) for c in scales]
    else:
        scale_list = list(DEFAULT_SCALES) if candidates is None and sweep is None else []
    graded = sweep_candidates(sweep, alphas) if sweep is not None else []
    if alphas is not None and sweep is None:
        raise CandidateError("--alphas without --sweep: name the operation to grade (e.g. --sweep add:p_max)")
    cands = build_candidates(candidates, scale_list) if candidates is not None or scale_list or not graded else []
    cands = list({c.label: c for c in [*graded, *cands]}.values())
    check_candidates(cands, mask, tgts, vecs)
    js, md, png = factor_paths((mask.path or neurons) if mask is not None else (vecs.path or vectors), out)
    from .._io import check_writable

    for path in (js, md, png):  # before hours of scoring, not after
        check_writable(path, "--out" if out else "the output beside the mask")

    started = time.time()
    # the facts are read and checked (every target has objects) before the model loads
    with loaded_for_lss(model, mask, facts, batch_size, dtype, device, sources, tgts, limit) as (lm, name, where, tasks):
        result = search(lm, tasks, tgts, mask, cands, layers=layers, limit=limit, log=log, controls=ctrl_masks,
                        vectors=vecs)
    doc = {
        "model": name,
        **models.identity(name),
        "neurons": None if mask is None else str(neurons) if isinstance(neurons, (str, Path)) else str(mask.path),
        "neurons_sha256": mask.sha256() if mask is not None and mask.path else None,
        **({"vectors": str(vecs.path) if vecs.path else None,
            "vectors_sha256": vecs.sha256() if vecs.path else None} if vecs is not None else {}),
        "sources": result["sources"],
        "targets": result["targets"],
        "candidates": result["candidates"],
        "table": result["table"],
        "overall": result["overall"],
        "best_per_target": result["best_per_target"],
        "best_overall": result["best_overall"],
        "tie_rule": result["tie_rule"],
        "statistic": "per target: mean LSS over sources s != t; overall: mean over all off-diagonal (s, t)",
        "layers": layers or "all",
        "limit": limit,
        "n_items": result["n_items"],
        "facts": where,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "lapeval_version": __version__,
        "seconds": round(time.time() - started, 1),
        "matrices": result["matrices"],
        "effects": result["effects"],
        **({"controls": {"k": controls, "matching": ctrl_masks[0].meta["control"]["matching"]}} if ctrl_masks else {}),
    }
    if graded:
        operation = "scale" if str(sweep).strip().lower() == "scale" else parse_ops(sweep).label
        doc["sweep"] = sweep_curves(result, operation, parse_alphas(alphas), graded)
    searched = (f"mask {Path(str(mask.path or 'unsaved')).name}" if mask is not None
                else f"vectors {Path(str(vecs.path or 'unsaved')).name}")
    write_results(doc, result, name, searched, js, md, png)
    return doc


def write_results(doc: dict, result: dict, model: str, searched: str, js: Path, md: Path, png: Path) -> None:
    """The search's JSON document, markdown table and heatmap, each written atomically (``searched``: what
    was searched, ``mask gemma-3-270m.safetensors``)."""
    from .._io import json_safe, write_json, write_text

    title = f"LSS factor search: {model}, {searched}"
    text = format_markdown(result, title)
    if doc.get("sweep"):
        text += "\n" + format_sweep(doc["sweep"])
        plot_sweep(doc["sweep"], sweep_path(js), title=f"{model}: LSS against α ({doc['sweep']['graded']})")
    write_json(js, json_safe(doc))
    write_text(md, text)
    plot_table(result, png, title=f"{model}: mean LSS over s ≠ t")


def sweep_path(js: Path) -> Path:
    """``<stem>.factor.sweep.png`` beside the JSON."""
    return js.with_suffix(".sweep.png")


# ------------------------------------------------------------------------------------------ reports
def format_table(result: dict, fmt: str = "{:6.3f}") -> str:
    """Plain text: rows = candidates, columns = targets and the overall off-diagonal mean."""
    targets = result["targets"]
    width = max(len("candidate"), *(len(c) for c in result["candidates"]))
    cols = [*targets, "all"]
    lines = [f"{'candidate':<{width}} " + " ".join(f"{c:>6}" for c in cols)]
    for c in result["candidates"]:
        vals = [result["table"][c][t] for t in targets] + [result["overall"][c]]
        lines.append(f"{c:<{width}} " + " ".join(_cell(v, fmt) for v in vals))
    return "\n".join(lines)


def _cell(v, fmt: str) -> str:
    return f"{'-':>6}" if v is None or math.isnan(v) else fmt.format(v)


def _is_max(v, column: list) -> bool:
    finite = [x for x in column if x is not None and not math.isnan(x)]
    return v is not None and not math.isnan(v) and bool(finite) and v == max(finite)


def format_markdown(result: dict, title: str = "") -> str:
    """A markdown table: rows = candidates, columns = targets + overall mean; the best of each column in
    bold (every tied best), then the chosen candidate per target and overall."""
    targets, cands = result["targets"], result["candidates"]
    cols = {t: [result["table"][c][t] for c in cands] for t in targets}
    cols["all (s ≠ t)"] = [result["overall"][c] for c in cands]
    out = [f"# {title}" if title else "# LSS factor search", ""]
    n = result.get("n_items") or {}
    if n:
        out += [f"Mean LSS over sources s ≠ t ({', '.join(f'{s}: {k}' for s, k in n.items())} facts); "
                f"best of each column in bold; {TIE_RULE}.", ""]
    out.append("| candidate | " + " | ".join(cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for i, c in enumerate(cands):
        cells = []
        for col in cols.values():
            v = col[i]
            s = "–" if v is None or math.isnan(v) else f"{v:.3f}"
            cells.append(f"**{s}**" if _is_max(v, col) else s)
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Chosen per target: " + ", ".join(
        f"{t} → {b['candidate']} ({b['lss']:.3f})" if b else f"{t} → none" for t, b in result["best_per_target"].items()))
    b = result["best_overall"]
    out.append("")
    out.append(f"Best overall: {b['candidate']} (LSS {b['lss']:.3f})" if b else "Best overall: none (no LSS pair scored)")
    return "\n".join(out) + "\n"


def plot_table(result: dict, out, title: str = "") -> Path:
    """Heatmap candidates × (targets, overall mean) via :func:`lapeval.plot.heatmap`."""
    from ..plot import heatmap

    rows = result["candidates"]
    cols = [*result["targets"], "all"]
    values = [[_nan(result["table"][c][t]) for t in result["targets"]] + [_nan(result["overall"][c])] for c in rows]
    return heatmap(values, rows, cols, out, title or "mean LSS over s ≠ t", fmt="{:.2f}",
                   xlabel="amplified target language", ylabel="candidate")


def _nan(v) -> float:
    return math.nan if v is None else float(v)
