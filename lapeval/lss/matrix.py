"""The Language Steering Shift matrix with one loaded model (Rahmanisa et al. 2025; method.md §4).

For a fact with a prompt in source language s and its objects obj_s, obj_t::

    margin(s, t)   = log P(obj_t | prompt_s) − log P(obj_s | prompt_s)
    LSS(s, t)      = share of facts whose margin grows strictly when t's neurons are intervened on

The baseline margins (no intervention) are scored once; then, per target t, t's neurons get the operation
(default ``set`` to ``p_max``) and only obj_s and obj_t of every fact of every source s ≠ t are re-scored.
Prompts come from the ``lss_<s>`` task definitions themselves (:func:`load_lss_tasks`), so the matrix and
lm-eval's ``lss_*`` tasks score the same strings. :mod:`lapeval.metrics.lss` holds the metric itself.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from ..instances import loglikelihoods
from .tasks import (
    check_facts_reachable,
    check_sources,
    facts_env,
    facts_of,
    load_lss_tasks,
    scored_pairs,
)


def load_lape(model: str, batch_size: int = 8, dtype: str = "float32", device: str = "cpu"):
    """A :class:`~lapeval.lm.LapeLM` without intervention."""
    from ..lm import LapeLM

    return LapeLM(pretrained=model, batch_size=batch_size, dtype=dtype, device=device)


def paired_baseline(lm, tasks: dict, targets: Sequence[str], *, limit=None, log=print) -> dict:
    """The baseline of every (s, t), with no intervention, scored as exactly the requests — same list, same
    order, hence the same batches — that the intervened run of (s, t) scores:
    ``{(s, t): {(prompt, continuation): log-likelihood}}``.

    Why paired: a request's log-likelihood moves by ~1e-5 in float32 when it is padded into a different
    batch, and LSS counts any strict growth of the margin. Scored in the same batch composition, an
    intervention that changes no activation gives bit-identical log-likelihoods, so LSS is exactly 0 by
    construction, at any batch size. Pass it to :func:`compute_matrix` (``baseline=``) to score several
    interventions (search-factor candidates, layers) against one baseline."""
    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    base: dict = {}
    t0, n = time.time(), 0
    for t in targets:
        for s, rows in facts.items():
            if s != t:
                base[(s, t)] = loglikelihoods(lm, scored_pairs(rows, s, t), f"lss_{s}")
                n += len(base[(s, t)])
    log(f"baseline: {n} log-likelihoods in {time.time() - t0:.0f}s")
    return base


def touches_neurons(lm) -> bool:
    """Whether ``lm``'s explicit-language setting intervenes on at least one neuron (a layer subset holding
    none of the language's neurons does not: its results are the baseline's, and need no forward)."""
    st = lm.intervention
    return st is not None and (st.per_request or st.intervention().n_neurons > 0)


def compute_matrix(lm, tasks: dict, targets: list[str], *, neurons, mode="set", value="p_max", layers=None,
                   limit=None, log=print, baseline: dict | None = None, ops=None, vectors=None) -> dict:
    """LSS(s, t) for every source task and target language, with one loaded ``lm``
    (a :class:`~lapeval.lm.LapeLM`; its intervention is cleared on return).

    ``ops``: an intervention spec (:func:`lapeval.intervention.operation.parse_ops`) replacing ``mode``/``value``, whose
    terms without languages act on t (``zero@en;set:p_max``). Per target t, t's neurons get the operation and obj_s, obj_t of every fact of every source s ≠ t are
    scored; the baseline of (s, t) is the same requests without intervention (:func:`paired_baseline`,
    computed here unless ``baseline`` gives it), so an intervention that changes nothing gives 0.
    """
    from ..metrics import lss

    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    if baseline is None:
        baseline = paired_baseline(lm, tasks, targets, limit=limit, log=log)
    missing = [(s, t) for t in targets for s in facts if s != t and (s, t) not in baseline]
    if missing:
        raise ValueError(f"the given baseline lacks the pairs {missing[:3]} (computed for other sources or targets?)")

    matrix: dict[str, dict[str, float]] = {s: {} for s in facts}
    margins: dict = {}  # {s: {t: {"ids": fact ids, "before": Δ⁰, "after": Δ¹}}}: what effects.py bootstraps
    n_items = {s: len(rows) for s, rows in facts.items()}
    for t in targets:
        t0 = time.time()
        if ops is not None:
            lm.set_intervention(neurons=neurons, lang=t, ops=ops, layers=layers, vectors=vectors)
        else:
            lm.set_intervention(neurons=neurons, lang=t, mode=mode, value=value, layers=layers, vectors=vectors)
        for s, rows in facts.items():
            if s == t:
                continue
            pairs = scored_pairs(rows, s, t)
            base = baseline[(s, t)]
            if set(pairs) != set(base):
                raise ValueError(f"the given baseline of ({s}, {t}) scored other requests (other facts or limit?)")
            new = loglikelihoods(lm, pairs, f"lss_{s}") if touches_neurons(lm) else base
            ids, before, after = [], [], []
            for i, d, p, delim in rows:
                if d.get(f"obj_{t}") in (None, ""):
                    continue
                a, b = (p, delim + d[f"obj_{t}"]), (p, delim + d[f"obj_{s}"])
                ids.append(i)
                if a == b:  # the same string: margin 0 before and after
                    before.append(0.0)
                    after.append(0.0)
                    continue
                before.append(base[a] - base[b])
                after.append(new[a] - new[b])
            matrix[s][t] = lss.lss(before, after)
            margins.setdefault(s, {})[t] = {"ids": ids, "before": before, "after": after}
        log(f"target {t}: {time.time() - t0:.0f}s")
    lm.clear_intervention()
    return {"matrix": matrix, **lss.summarize(matrix), "n_items": n_items, "sources": list(facts), "targets": targets,
            "margins": margins}


@contextmanager
def keeping_setting(lm):
    """Restore ``lm``'s own intervention setting after a block that switches it."""
    saved = lm.intervention
    try:
        yield lm
    finally:
        lm._lape = saved


def check_inputs(neurons, sources, targets, mode, value, layers, limit, facts=None, vectors=None):
    """Everything that can be checked before the model loads: languages, their facts, ``limit``, the mask
    and its languages, the operation (``mode=None``: the caller checks its own operations), the layers.
    With ``vectors`` (a residual-vectors path or object) instead of, or beside, ``neurons``, their languages
    (:func:`load_vectors`). Returns (sources, targets, mask or None)."""
    from ..intervention.operation import Operation, parse_layers
    from ..languages import parse_list
    from ..masks import NeuronMask

    srcs = parse_list(sources)
    tgts = parse_list(targets) if targets else srcs
    check_sources(srcs, facts)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"--limit {limit}: give a positive number of facts per source")
    if neurons is None and vectors is None:
        raise UsageError("give --neurons MASK (language neurons) or --vectors VEC (residual DiffMean vectors)")
    mask = None
    if neurons is not None:
        mask = neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser())
        for t in tgts:
            mask.code(t)  # one-line MaskError naming the mask's languages
    vecs = load_vectors(vectors, tgts) if vectors is not None else None
    if mode is not None:
        Operation.parse(mode, value)
    parse_layers(layers, (mask or vecs).n_layers)
    return srcs, tgts, mask


def load_vectors(vectors, targets: Sequence[str]):
    """The :class:`~lapeval.vectors.ResidualVectors` of ``vectors`` (a path or the object), every target checked
    to be one of its languages (one line each)."""
    from ..vectors import ResidualVectors

    vecs = vectors if isinstance(vectors, ResidualVectors) else ResidualVectors.load(Path(str(vectors)).expanduser())
    for t in targets:
        vecs.code(t)
    return vecs


def check_targets(tasks: dict, targets: Sequence[str], limit, where: str) -> None:
    """Every target needs objects in the facts of some other source; and some (s, t) must be off the
    diagonal. One line, before the model loads."""
    rows = {s: facts_of(task, limit) for s, task in tasks.items()}
    for t in targets:
        if not any(d.get(f"obj_{t}") not in (None, "") for s, rs in rows.items() if s != t for _, d, _, _ in rs):
            raise UsageError(f"target {t}: the facts ({where}) carry no {t} objects for the other sources, so LSS "
                             f"cannot score it: drop it from --targets")
    if not any(s != t for s in tasks for t in targets):
        raise UsageError("every (source, target) pair is on the diagonal: give at least two languages")


@contextmanager
def loaded_for_lss(model_or_lm, mask, facts, batch_size, dtype, device, sources, targets, limit):
    """(lm, model name, where the facts come from, the lss tasks) with ``facts`` in the environment and
    ``lm``'s own setting restored on exit; the facts are read and checked before the model loads."""
    if isinstance(model_or_lm, str):
        from ..models import check_device, check_dtype

        check_device(device)
        check_dtype(dtype)
    check_facts_reachable(sources, facts)
    with facts_env(facts) as where:
        tasks = load_lss_tasks(sources)
        check_targets(tasks, targets, limit, where)
        if isinstance(model_or_lm, str):
            lm, name = load_lape(model_or_lm, batch_size, dtype, device), model_or_lm
        else:
            lm, name = model_or_lm, getattr(model_or_lm, "_lape_name", None) or str(model_or_lm.pretrained)
        if mask is not None:
            from ..lm import check_mask

            check_mask(mask, lm.sites)
        with keeping_setting(lm):
            yield lm, name, where, tasks


def _provenance(name: str, mask, mode, value, layers, facts: str, limit, started: float, vectors=None) -> dict:
    from .. import __version__, models

    files = {"neurons": str(mask.path) if mask is not None and mask.path else None,
             "neurons_sha256": mask.sha256() if mask is not None and mask.path else None}
    if vectors is not None:
        files.update(vectors=str(vectors.path) if vectors.path else None,
                     vectors_sha256=vectors.sha256() if vectors.path else None)
    return dict(source="in-process (lape model)", model=name, **models.identity(name), **files, mode=mode, value=value,
                layers=layers or "all", facts=facts, limit=limit, baseline="paired: each (s, t) scored as the "
                "same requests in the same batches without intervention", lapeval_version=__version__,
                seconds=round(time.time() - started, 1))


def lss_matrix(model_or_lm, neurons, sources, targets=None, facts=None, *, mode: str = "set", value="p_max",
               layers=None, limit: int | None = None, batch_size: int = 8, dtype: str = "float32",
               device: str = "cpu", controls: int = 0, control_stats=None, vectors=None, ops=None, log=print) -> dict:
    """The LSS matrix of ``neurons`` (a mask path or :class:`~lapeval.masks.NeuronMask`) — what
    ``lapeval lss matrix`` prints and writes.

    ``model_or_lm``: a model name / folder / hub id (loaded with ``batch_size``, ``dtype``, ``device``) or a
    loaded :class:`~lapeval.lm.LapeLM` (its own setting is restored afterwards); ``sources``: languages of
    the ``lss_<s>`` prompts; ``targets``: amplified languages (default ``sources``); ``facts``: ``builtin``
    (lapeval's own facts), a folder in the MLAMA-dod-185 layout, or None (``$LAPEVAL_MLAMA_DIR``, else the
    hub); ``mode`` / ``value`` / ``layers``: the operation on t's neurons; ``limit``: first N facts per source;
    ``controls``: K random-neuron controls of the mask (seeds 0 … K−1, :func:`lapeval.control_mask`; matched on
    activation frequency with ``control_stats``, the mask's STATS file), each scored with the same operation on
    the same facts against the same paired baseline; ``vectors``: residual DiffMean vectors (``lapeval vectors``)
    steered with ``mode="add"``, ``value=α`` (``neurons=None``), or beside the mask for ``vec:`` terms; ``ops``:
    an intervention spec in place of ``mode`` / ``value`` (:func:`lapeval.intervention.operation.parse_ops`), whose
    terms without ``@LANGS`` act on t — ``zero@en;set:p_max``, or on a mixture-of-experts mask ``route:bias:2``
    (t's experts favoured) and ``route:ban@src;set:p_max``.

    LSS(s, t) = share of facts whose margin log P(obj_t | prompt_s) − log P(obj_s | prompt_s) grows
    strictly under the intervention, against the paired baseline (:func:`paired_baseline`): an
    intervention that changes no activation gives exactly 0, and any disruption about 0.5 — hence the controls.
    Returns ``{"matrix": {s: {t: LSS}}, "per_target": {t: mean over s ≠ t}, "mean_off_diagonal", "n_items",
    "sources", "targets", "effects" (:func:`lapeval.lss.effects.effects`: margin shift in nats and, with
    controls, control mean, real − control with its bootstrap interval, rank, chance-corrected LSS), "controls"
    (each control's seed, matrix, per_target, mean_off_diagonal), ...provenance}``.

    Example::

        res = lapeval.lss_matrix("gemma-3-270m", "neuron_masks/gemma-3-270m.safetensors", ["en", "fr", "zh"],
                                 facts="builtin", limit=20)
        res["mean_off_diagonal"], res["matrix"]["en"]["fr"]
    """
    from .effects import effects

    started = time.time()
    spec = None
    if ops is not None:
        from ..intervention.operation import parse_ops
        from ..intervention.setting import check_spec

        if neurons is None:
            raise UsageError("--ops: give --neurons MASK (vectors alone take --mode add --value α)")
        spec, mode, value = parse_ops(ops, "--ops"), None, None
    srcs, tgts, mask = check_inputs(neurons, sources, targets, mode, value, layers, limit, facts, vectors)
    if spec is not None:
        check_spec(spec, mask, tgts)
    vecs = load_vectors(vectors, tgts) if vectors is not None else None
    if controls and mask is None:
        raise UsageError("--controls: the controls are random-neuron masks; give --neurons MASK")
    if vecs is not None and mask is None:
        from ..intervention.operation import Operation, adds_vector

        if not adds_vector(Operation.parse(mode, value)):
            raise UsageError(f"--mode {mode} --value {value} on residual vectors: a vector term adds α · v, give "
                             "--mode add --value α")
    ctrl_masks = control_masks(mask, controls, control_stats)  # drawn before the model loads
    with loaded_for_lss(model_or_lm, mask, facts, batch_size, dtype, device, srcs, tgts, limit) as (lm, name, where, tasks):
        if vecs is not None:
            from ..sites import hidden_size_of

            vecs.check_model(len(lm.sites), hidden_size_of(lm.model))
        base = paired_baseline(lm, tasks, tgts, limit=limit, log=log)
        result = compute_matrix(lm, tasks, tgts, neurons=mask, mode=mode, value=value, layers=layers,
                                limit=limit, log=log, baseline=base, vectors=vecs, ops=spec)
        ctrl = [compute_matrix(lm, tasks, tgts, neurons=c, mode=mode, value=value, layers=layers, limit=limit,
                               log=lambda m: None, baseline=base, ops=spec) for c in ctrl_masks]
    margins = result.pop("margins")
    result["effects"] = effects(margins, result["n_items"], [c.pop("margins") for c in ctrl] or None)
    if ctrl_masks:
        result["controls"] = [{"seed": c.meta["control"]["seed"], "matching": c.meta["control"]["matching"],
                               "matrix": r["matrix"], "per_target": r["per_target"],
                               "mean_off_diagonal": r["mean_off_diagonal"]} for c, r in zip(ctrl_masks, ctrl)]
    result.update(_provenance(name, mask, mode, value, layers, where, limit, started, vecs))
    if spec is not None:
        result["ops"] = spec.label
    return result


def control_masks(mask, controls: int, control_stats=None) -> list:
    """K random-neuron controls of ``mask`` (seeds 0 … K−1), checked and drawn before any model loads."""
    if isinstance(controls, bool) or not isinstance(controls, int) or controls < 0:
        raise UsageError(f"--controls {controls!r}: give a number of control masks (0 for none; 3 or more to rank)")
    if not controls:
        if control_stats is not None:
            raise UsageError("--control-stats given without --controls K")
        return []
    from ..identification.controls import control_mask
    from ..identification.stats import Stats

    stats = control_stats if control_stats is None or isinstance(control_stats, Stats) else Stats.load(control_stats)
    return [control_mask(mask, seed=k, stats=stats) for k in range(controls)]


def lss_layers(model_or_lm, neurons, sources, targets=None, facts=None, *, mode: str = "set", value="p_max",
               limit: int | None = None, batch_size: int = 8, dtype: str = "float32", device: str = "cpu",
               out=None, controls: int = 0, control_stats=None, log=print) -> dict:
    """Per-layer LSS (paper 2's layer analysis) — what ``lapeval lss layers`` runs: for every layer k,
    the LSS matrix with only layer k's neurons of the target intervened, against one paired baseline.

        table[k][t] = mean_{s ≠ t} LSS_k(s, t),     n_neurons[k][t] = |N_k(t)|

    A (layer, target) without neurons is 0 by construction (nothing changes; no forward is run). Arguments
    as :func:`lss_matrix`; with ``out`` (a ``.json`` path) the result is written there, with a heatmap
    (``.png``) and a markdown table (``.md``) beside it. Returns ``{"layers", "targets", "table", "n_neurons",
    "matrices", "overall", ...provenance}``.

    Example::

        res = lapeval.lss_layers("gemma-3-270m", "neuron_masks/gemma-3-270m.safetensors", "en,fr,zh,ja",
                                 facts="builtin", limit=20, out="docs/lss-layers/gemma-3-270m.json")
        res["table"][17]["fr"]
    """
    from .effects import effects

    started = time.time()
    srcs, tgts, mask = check_inputs(neurons, sources, targets, mode, value, None, limit, facts)
    if out is not None:
        from .._io import check_writable

        if Path(out).suffix != ".json":
            raise UsageError(f"--out {out}: give a .json path (the .png and .md go beside it)")
        for path in (Path(out), Path(out).with_suffix(".png"), Path(out).with_suffix(".md")):
            check_writable(path, "--out")
    n_neurons = {k: {t: int(mask.per_layer(t)[k].numel()) for t in tgts} for k in range(mask.n_layers)}
    ctrl_masks = control_masks(mask, controls, control_stats)  # the same counts per layer and target
    with loaded_for_lss(model_or_lm, mask, facts, batch_size, dtype, device, srcs, tgts, limit) as (lm, name, where, tasks):
        base = paired_baseline(lm, tasks, tgts, limit=limit, log=log)
        matrices, table, overall, control_table, layer_effects = {}, {}, {}, {}, {}
        for k in range(mask.n_layers):
            t0 = time.time()
            res = compute_matrix(lm, tasks, tgts, neurons=mask, mode=mode, value=value, layers=str(k), limit=limit,
                                 log=lambda m: None, baseline=base)
            ctrl = [compute_matrix(lm, tasks, tgts, neurons=c, mode=mode, value=value, layers=str(k), limit=limit,
                                   log=lambda m: None, baseline=base) for c in ctrl_masks]
            matrices[k], overall[k] = res["matrix"], res["mean_off_diagonal"]
            table[k] = {t: res["per_target"].get(t, float("nan")) for t in tgts}
            n_items = res["n_items"]
            eff = effects(res.pop("margins"), n_items, [c.pop("margins") for c in ctrl] or None)
            layer_effects[k] = {"per_target": eff["per_target"], "overall": eff["overall"]}
            if ctrl:
                control_table[k] = {t: eff["per_target"].get(t, {}).get("control_mean", float("nan")) for t in tgts}
            log(f"layer {k}: mean LSS {overall[k]:.3f} ({sum(n_neurons[k].values())} neurons, {time.time() - t0:.0f}s)"
                + (f"; controls {eff['overall'].get('control_mean', float('nan')):.3f}" if ctrl else ""))
    prov = _provenance(name, mask, mode, value, None, where, limit, started)
    del prov["layers"]  # here: the list of layers, each intervened alone
    result = {"layers": list(range(mask.n_layers)), "sources": srcs, "targets": tgts, "table": table,
              "n_neurons": n_neurons, "overall": overall, "matrices": matrices, "effects": layer_effects,
              **({"controls": {"k": controls, "seeds": list(range(controls)), "table": control_table,
                               "matching": ctrl_masks[0].meta["control"]["matching"]}} if ctrl_masks else {}),
              "n_items": n_items,
              "statistic": "table[layer][t]: mean over sources s != t of LSS(s, t) with only that layer's neurons",
              **prov}
    if out is not None:
        write_layers(result, out)
    return result


def format_layers(result: dict) -> str:
    """Plain text: rows = layers, columns = targets, each cell ``LSS (neurons)``, with controls
    ``LSS/control (neurons)``."""
    tg, ctrl = result["targets"], (result.get("controls") or {}).get("table")
    w = 17 if ctrl else 11

    def cell(k, t) -> str:
        c = f"/{ctrl[k][t]:5.3f}" if ctrl else ""
        return f"{result['table'][k][t]:5.3f}{c} ({result['n_neurons'][k][t]:>3})"

    lines = ["layer " + " ".join(f"{t:>{w}}" for t in tg) + ("   all/control" if ctrl else "   all")]
    for k in result["layers"]:
        tail = f" {result['overall'][k]:5.3f}"
        if ctrl:
            tail += f"/{result['effects'][k]['overall'].get('control_mean', float('nan')):5.3f}"
        lines.append(f"{k:>5} " + " ".join(f"{cell(k, t):>{w}}" for t in tg) + tail)
    return "\n".join(lines)


def write_layers(result: dict, out) -> list[Path]:
    """``out`` (.json), its heatmap (.png: layers × targets, neuron counts in the cells) and markdown (.md)."""
    import math

    from .._io import json_safe, write_json, write_text
    from ..plot import heatmap

    js = Path(out)
    png, md = js.with_suffix(".png"), js.with_suffix(".md")
    write_json(js, json_safe(result))
    tg, layers = result["targets"], result["layers"]
    values = [[result["table"][k][t] for t in tg] for k in layers]
    heatmap(values, [str(k) for k in layers], tg, png,
            f"LSS with one layer's neurons ({result['mode']}:{result['value']}); mean over s ≠ t",
            fmt="{:.2f}", xlabel="amplified target language t", ylabel="layer", cmap="viridis")
    ctrl = (result.get("controls") or {}).get("table")
    num = lambda x: "–" if x is None or math.isnan(x) else f"{x:.3f}"  # noqa: E731
    rows = ["| layer | " + " | ".join(tg) + " | all |", "|---:|" + "---:|" * (len(tg) + 1)]
    for k in layers:
        cells = [num(result["table"][k][t]) + f" ({result['n_neurons'][k][t]}" + (
            f"; control {num(ctrl[k][t])})" if ctrl else ")") for t in tg]
        all_ = num(result["overall"][k]) + (
            f" (control {num(result['effects'][k]['overall'].get('control_mean'))})" if ctrl else "")
        rows.append(f"| {k} | " + " | ".join(cells) + f" | {all_} |")
    head = (f"# Per-layer LSS: {result['model']}, mask {Path(str(result['neurons'])).name}\n\n"
            f"Each cell: mean over sources s ≠ t of LSS(s, t) when only that layer's neurons of t get "
            f"{result['mode']}:{result['value']} (in brackets: how many neurons of t the layer holds; a layer "
            f"without any is 0 by construction"
            + (f"; control: the mean LSS of {result['controls']['k']} random-neuron controls with the same counts per "
               f"layer ({result['controls']['matching']}), against which LSS ≈ 0.5 means disruption, not language"
               if ctrl else "") + "). Facts per source: "
            + ", ".join(f"{s} {n}" for s, n in result["n_items"].items()) + f"; {result['seconds']:.0f} s.\n\n")
    write_text(md, head + "\n".join(rows) + "\n")
    return [js, png, md]


def lss_score(baseline, intervened, *, out=None, log=print) -> dict:
    """The LSS matrix from lm-eval sample logs of the ``lss_*`` tasks — what ``lapeval lss score`` prints:
    ``baseline`` a run without intervention, ``intervened`` ``{t: run with t's neurons amplified}`` (or the
    CLI's ``["t=RUN", ...]``); a run is a ``samples_lss_<s>*.jsonl`` file, an lm-eval output folder or a grid
    cell; ``out``: also write the result as JSON there (checked writable before anything is read).

    Each run's own record (``config.lape`` in the results JSON beside its samples) is checked: the
    baseline must have no intervention and the run given for t must have intervened on t alone; a run
    without a record is used with a one-line warning. Logs without any ``lss_*`` sample are refused.
    Returns ``{"matrix", "per_target", "mean_off_diagonal", ...}``.

    Example::

        lapeval.lss_score("out/base", {"fr": "out/intv_fr", "zh": "out/intv_zh"})["mean_off_diagonal"]
    """
    import warnings

    from .. import __version__
    from ..errors import LapevalWarning
    from ..languages import normalize
    from ..metrics import lss
    from ..results import NOT_RECORDED, ResultsError, run_intervention

    def read(path, label: str) -> dict:
        samples = lss.read_samples(path)
        if not any(samples.values()):
            raise ResultsError(f"{label}: no lss_* samples in it (an empty log?): run lm_eval with "
                               "--tasks lss_<s> --log_samples and give that file or folder")
        return samples

    def record(path, role: str, lang: str | None) -> None:
        iv = run_intervention(path)
        if iv is NOT_RECORDED:
            warnings.warn(f"{role} {path}: no results JSON beside it, so which neurons it amplified cannot be "
                          "checked", LapevalWarning)
        elif lang is None and iv is not None:
            raise UsageError(f"--baseline {path} was run with an intervention ({iv.get('label') or iv.get('mode')} "
                             f"on {', '.join(iv.get('languages') or ['?'])}): give a run without one")
        elif lang is not None and iv is None:
            raise UsageError(f"--intervened {lang}={path} was run without an intervention: give the run that "
                             f"amplified {lang}'s neurons")
        elif lang is not None and list(iv.get("languages") or []) != [lang]:
            got = ", ".join(iv.get("languages") or []) or str(iv.get("lang"))
            raise UsageError(f"--intervened {lang}={path} amplified {got}, not {lang}: pair each run with the "
                             f"language it amplified ({got}={path})")

    if out:
        from .._io import check_writable

        check_writable(out, "--out")
    if not isinstance(intervened, dict):
        pairs = {}
        for spec in [intervened] if isinstance(intervened, str) else intervened:
            lang, eq, path = str(spec).partition("=")
            if not eq or not lang or not path:
                raise UsageError(f"--intervened {spec!r}: write LANG=RUN, e.g. fr=out/intv_fr")
            pairs[lang] = path
        intervened = pairs
    runs = {}
    for lang, path in intervened.items():
        code = normalize(lang)
        record(path, "--intervened", code)
        runs[code] = read(path, f"--intervened {code}={path}")
    record(baseline, "--baseline", None)
    matrix = lss.score_logs(read(baseline, f"--baseline {baseline}"), runs)
    if not any(matrix.values()):
        raise ResultsError("no (source, target) pair off the diagonal in these logs: the intervened runs need "
                           "lss_<s> samples of other sources than their own language")
    result = {"matrix": matrix, **lss.summarize(matrix), "source": "sample logs", "baseline": str(baseline),
              "intervened": {k: str(v) for k, v in intervened.items()}, "lapeval_version": __version__}
    if out:
        from .._io import write_json

        write_json(out, result)
    return result

