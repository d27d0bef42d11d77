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

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from .errors import UsageError
from .instances import loglikelihoods

HUB_FACTS = "hub:inayarhmns/MLAMA-dod-185"


@contextmanager
def facts_env(spec: str | None):
    """While active, ``LAPEVAL_MLAMA_DIR`` points at ``facts`` (``builtin``: lapeval's own facts; else a
    folder); without ``facts`` the environment stays as it is. Yields where the facts come from."""
    from .paths import FACTS_DIR
    from .taskdata import ENV

    var = ENV["mlama"]
    old = os.environ.get(var)
    if spec:
        os.environ[var] = str(FACTS_DIR if spec == "builtin" else Path(spec).expanduser())
    try:
        yield os.environ.get(var) or HUB_FACTS
    finally:
        if spec:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def lss_sources() -> set[str]:
    """The source languages that have an ``lss_<s>`` task in lapeval's task folder."""
    from .paths import tasks_path

    return {p.stem[len("lss_"):] for p in tasks_path().rglob("lss_*.yaml")}


def check_sources(sources: Sequence[str]) -> None:
    known = lss_sources()
    missing = [s for s in sources if s not in known]
    if missing:
        raise UsageError(f"no lss task for {', '.join(missing)}: source languages must be among {', '.join(sorted(known))}")


def load_lape(model: str, batch_size: int = 8, dtype: str = "float32", device: str = "cpu"):
    """A :class:`~lapeval.lm.LapeLM` without intervention."""
    from .lm import LapeLM

    return LapeLM(pretrained=model, batch_size=batch_size, dtype=dtype, device=device)


def load_lss_tasks(sources: Sequence[str]) -> dict:
    """{s: the lm-eval task object lss_<s>} from lapeval's task folder (data as the environment says)."""
    from lm_eval.tasks import TaskManager

    from .paths import tasks_path

    tm = TaskManager(include_defaults=False, include_path=str(tasks_path()))
    loaded = tm.load([f"lss_{s}" for s in sources])["tasks"]
    return {s: loaded[f"lss_{s}"] for s in sources}


def facts_of(task, limit: int | None) -> list[tuple[int, dict, str, str]]:
    """(doc_id, doc, prompt, delimiter) of a loaded lss_<s> task: prompts come from the task itself."""
    docs = list(task.test_docs())[: limit or None]
    return [(i, d, task.doc_to_text(d), task.config.target_delimiter) for i, d in enumerate(docs)]


def _need(facts: dict, targets: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per source s, the (prompt, continuation) pairs of the baseline: obj_l for l in {s} ∪ targets."""
    return {s: [(p, delim + d[f"obj_{l}"]) for _, d, p, delim in rows
                for l in [s, *targets] if d.get(f"obj_{l}") not in (None, "")]
            for s, rows in facts.items()}


def baseline_loglikelihoods(lm, tasks: dict, targets: list[str], *, limit=None, log=print) -> dict[tuple[str, str], float]:
    """log P(obj_l | prompt_s) with no intervention, for every source task s, its first ``limit`` facts and
    l in {s} ∪ targets: ``{(prompt, continuation): log-likelihood}``. Pass it to :func:`compute_matrix`
    (``baseline=``) to score several interventions against one baseline."""
    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    need = _need(facts, targets)
    base: dict[tuple[str, str], float] = {}
    t0 = time.time()
    for s in facts:
        base.update(loglikelihoods(lm, need[s], f"lss_{s}"))
    log(f"baseline: {len(base)} log-likelihoods in {time.time() - t0:.0f}s")
    return base


def compute_matrix(lm, tasks: dict, targets: list[str], *, neurons, mode="set", value="p_max", layers=None,
                   limit=None, log=print, baseline: dict | None = None) -> dict:
    """LSS(s, t) for every source task and target language, with one loaded ``lm``
    (a :class:`~lapeval.lm.LapeLM`; its intervention is cleared on return).

    Baseline: log P(obj_l | prompt_s) for l in {s} ∪ targets, once (or ``baseline``, as returned by
    :func:`baseline_loglikelihoods` for the same tasks, targets and limit). Then, per target t, t's
    neurons switched on and only obj_s and obj_t re-scored for every source s ≠ t.
    """
    from .metrics import lss

    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    if baseline is None:
        base = baseline_loglikelihoods(lm, tasks, targets, limit=limit, log=log)
    else:
        base = baseline
        missing = [p for pairs in _need(facts, targets).values() for p in pairs if p not in base]
        if missing:
            raise ValueError(f"the given baseline lacks {len(missing)} of the needed log-likelihoods "
                             f"(computed for other sources, targets or limit?)")

    matrix: dict[str, dict[str, float]] = {s: {} for s in facts}
    n_items = {s: len(rows) for s, rows in facts.items()}
    for t in targets:
        t0 = time.time()
        lm.set_intervention(neurons=neurons, lang=t, mode=mode, value=value, layers=layers)
        for s, rows in facts.items():
            if s == t:
                continue
            rows_t = [(p, delim, d) for _, d, p, delim in rows if d.get(f"obj_{t}") not in (None, "")]
            pairs = [(p, delim + d[f"obj_{l}"]) for p, delim, d in rows_t for l in (s, t) if d[f"obj_{s}"] != d[f"obj_{t}"]]
            new = loglikelihoods(lm, pairs, f"lss_{s}")
            before, after = [], []
            for p, delim, d in rows_t:
                a, b = (p, delim + d[f"obj_{t}"]), (p, delim + d[f"obj_{s}"])
                before.append(base[a] - base[b])
                after.append(new[a] - new[b] if a != b else before[-1])  # same string: margin 0 before and after
            matrix[s][t] = lss.lss(before, after)
        log(f"target {t}: {time.time() - t0:.0f}s")
    lm.clear_intervention()
    return {"matrix": matrix, **lss.summarize(matrix), "n_items": n_items, "sources": list(facts), "targets": targets}


@contextmanager
def keeping_setting(lm):
    """Restore ``lm``'s own intervention setting after a block that switches it."""
    saved = lm.intervention
    try:
        yield lm
    finally:
        lm._lape = saved


def lss_matrix(model_or_lm, neurons, sources, targets=None, facts=None, *, mode: str = "set", value="p_max",
               layers=None, limit: int | None = None, batch_size: int = 8, dtype: str = "float32",
               device: str = "cpu", log=print) -> dict:
    """The LSS matrix of ``neurons`` (a mask path or :class:`~lapeval.masks.NeuronMask`) — what
    ``lapeval lss matrix`` prints and writes.

    ``model_or_lm``: a model name / folder / hub id (loaded with ``batch_size``, ``dtype``, ``device``) or a
    loaded :class:`~lapeval.lm.LapeLM` (its own setting is restored afterwards); ``sources``: languages of
    the ``lss_<s>`` prompts; ``targets``: amplified languages (default ``sources``); ``facts``: ``builtin``
    (lapeval's own facts), a folder in the MLAMA-dod-185 layout, or None (``$LAPEVAL_MLAMA_DIR``, else the
    hub); ``mode`` / ``value`` / ``layers``: the operation on t's neurons; ``limit``: first N facts per source.

    LSS(s, t) = share of facts whose margin log P(obj_t | prompt_s) − log P(obj_s | prompt_s) grows
    strictly under the intervention. Returns ``{"matrix": {s: {t: LSS}}, "per_target": {t: mean over s ≠ t},
    "mean_off_diagonal", "n_items", "sources", "targets", ...provenance}``.

    Example::

        res = lapeval.lss_matrix("gemma-3-270m", "neuron_masks/gemma-3-270m.safetensors", ["en", "fr", "zh"],
                                 facts="builtin", limit=20)
        res["mean_off_diagonal"], res["matrix"]["en"]["fr"]
    """
    from . import __version__, models
    from .intervene import Operation, parse_layers
    from .languages import parse_list
    from .masks import NeuronMask

    started = time.time()
    srcs = parse_list(sources)
    tgts = parse_list(targets) if targets else srcs
    check_sources(srcs)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UsageError(f"--limit {limit}: give a positive number of facts per source")
    mask = neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser())
    from .intervene import _code

    for t in tgts:
        _code(mask, t)  # one-line MaskError naming the mask's languages
    Operation.parse(mode, value)
    parse_layers(layers, mask.n_layers)
    with facts_env(facts) as where:
        if isinstance(model_or_lm, str):
            lm, name = load_lape(model_or_lm, batch_size, dtype, device), model_or_lm
        else:
            lm, name = model_or_lm, getattr(model_or_lm, "_lape_name", None) or str(model_or_lm.pretrained)
        mask.check_model(len(lm.sites), lm.sites[0].d_ff)
        tasks = load_lss_tasks(srcs)
        with keeping_setting(lm):
            result = compute_matrix(lm, tasks, tgts, neurons=mask, mode=mode, value=value, layers=layers,
                                    limit=limit, log=log)
    result.update(source="in-process (lape model)", model=name, **models.identity(name),
                  neurons=str(mask.path) if mask.path else None,
                  neurons_sha256=mask.sha256() if mask.path else None, mode=mode, value=value,
                  layers=layers or "all", facts=where, limit=limit, lapeval_version=__version__,
                  seconds=round(time.time() - started, 1))
    return result
