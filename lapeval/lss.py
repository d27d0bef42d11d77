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
import re
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
    """The source languages that have an ``lss_<s>`` task in lapeval's task folder (MLAMA-dod-185's)."""
    from .paths import tasks_path

    return {p.stem[len("lss_"):] for p in tasks_path().rglob("lss_*.yaml")}


LSS_TASK = re.compile(r"lss_([A-Za-z]{2,3})")


def lss_source(task_name: str) -> str | None:
    """The source language of an ``lss_<s>`` task name, None for any other task."""
    m = LSS_TASK.fullmatch(str(task_name))
    return m.group(1) if m else None


def facts_location(spec: str | None) -> Path | None:
    """The local facts folder that ``spec`` (``--facts``) names — ``builtin``, a folder, or None for
    ``$LAPEVAL_MLAMA_DIR`` — or None when the facts come from the hub."""
    from .paths import FACTS_DIR
    from .taskdata import local_dir

    if spec:
        path = FACTS_DIR if spec == "builtin" else Path(spec).expanduser()
        if not path.is_dir():
            raise UsageError(f"--facts {spec}: no such folder; give 'builtin' or a folder holding <lang>/test.jsonl")
        return path
    return local_dir("mlama")


def facts_languages(folder: Path) -> list[str]:
    """The languages of a facts folder: its sub-folders that hold a test file."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_dir() and (any(p.glob("test*.jsonl")) or any(p.glob("test*.parquet"))))


def check_sources(sources: Sequence[str], facts: str | None = None) -> None:
    """Every source needs facts: a ``<s>/test.jsonl`` in the local facts folder, or, from the hub, one of
    MLAMA-dod-185's languages. One line, before anything loads."""
    folder = facts_location(facts)
    if folder is not None:
        have = set(facts_languages(folder))
        missing = [s for s in sources if s not in have]
        if missing:
            raise UsageError(f"no lss task for {', '.join(missing)}: the facts folder {folder} has no "
                             f"{missing[0]}/test.jsonl (it has {', '.join(sorted(have)) or 'no language'}); "
                             f"add the facts there, or drop the language")
        return
    known = lss_sources()
    missing = [s for s in sources if s not in known]
    if missing:
        raise UsageError(f"no lss task for {', '.join(missing)}: MLAMA-dod-185 on the hub has {', '.join(sorted(known))}; "
                         f"for other languages give --facts DIR with <lang>/test.jsonl")


def check_facts_reachable(sources: Sequence[str], facts: str | None = None) -> None:
    """Offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) with the facts on the hub and no local copy of
    them: one line naming the fix, before anything loads."""
    if facts_location(facts) is not None:
        return
    if hub_offline() and not _hub_cached(HUB_FACTS[4:]):
        raise UsageError(f"the facts of {', '.join(sources)} would come from the hub ({HUB_FACTS[4:]}), which is "
                         "unreachable offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): pass --facts DIR (MLAMA-dod-185 "
                         "layout) or --facts builtin, or set LAPEVAL_MLAMA_DIR")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off for datasets here (``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_cached(repo: str) -> bool:
    """Whether a hub dataset has a local copy in the hub or datasets cache (offline mode can then read it)."""
    try:
        from datasets import config as dconfig
        from huggingface_hub import constants
    except ImportError:
        return False
    owner, name = repo.split("/", 1)
    return ((Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}").is_dir()
            or (Path(dconfig.HF_DATASETS_CACHE) / f"{owner}___{name.lower()}").is_dir())


def lss_task_config(source: str, facts_dir: str | Path | None = None) -> dict:
    """The lm-eval task config of ``lss_<source>`` for any language: lapeval's LSS template with that
    config (and, when given, the facts folder baked in, so that the task needs no environment variable)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from .paths import tasks_path

    cfg = load_yaml(tasks_path() / "lss" / "_lss_template_yaml")
    kwargs = {"lapeval_lang": source, **({"lapeval_facts_dir": str(facts_dir)} if facts_dir else {})}
    cfg.update(task=f"lss_{source}", dataset_name=source, dataset_kwargs=kwargs,
               metadata={"version": 1.0, "lapeval_language": source})
    return cfg


def load_lape(model: str, batch_size: int = 8, dtype: str = "float32", device: str = "cpu"):
    """A :class:`~lapeval.lm.LapeLM` without intervention."""
    from .lm import LapeLM

    return LapeLM(pretrained=model, batch_size=batch_size, dtype=dtype, device=device)


def load_lss_tasks(sources: Sequence[str]) -> dict:
    """{s: the lm-eval task object lss_<s>}: lapeval's own task where it ships one, else built on demand
    from the LSS template (:func:`lss_task_config`); data as the environment says."""
    from lm_eval.tasks import TaskManager

    from .paths import tasks_path

    tm = TaskManager(include_defaults=False, include_path=str(tasks_path()))
    specs = [f"lss_{s}" if f"lss_{s}" in tm.all_tasks else lss_task_config(s) for s in sources]
    try:
        loaded = tm.load(specs)["tasks"]
    except ConnectionError as e:
        raise UsageError(f"the hub is unreachable for the facts ({str(e).splitlines()[0][:160]}): pass --facts DIR "
                         "or --facts builtin, or set LAPEVAL_MLAMA_DIR") from None
    return {s: loaded[f"lss_{s}"] for s in sources}


def write_lss_tasks(facts: str | Path, out: str | Path) -> list[Path]:
    """``lss_<s>.yaml`` for every language of the facts folder ``facts``, in ``out`` (for the literal
    ``lm_eval --include_path OUT --tasks lss_es``): each includes lapeval's LSS template and names its facts
    folder, plus a group ``lss_facts`` over them. Returns the files written."""
    import yaml

    from ._io import write_text
    from .paths import tasks_path

    folder = facts_location(str(facts))
    langs = facts_languages(folder)
    if not langs:
        raise UsageError(f"{folder} holds no <lang>/test.jsonl: nothing to make tasks for")
    template = (tasks_path() / "lss" / "_lss_template_yaml").resolve()
    out = Path(out)
    written = []
    for s in langs:
        doc = {"include": str(template), "task": f"lss_{s}", "dataset_name": s,
               "dataset_kwargs": {"lapeval_lang": s, "lapeval_facts_dir": str(folder.resolve())},
               "metadata": {"version": 1.0, "lapeval_language": s}}
        path = out / f"lss_{s}.yaml"
        write_text(path, f"# made by lapeval lss tasks from {folder}\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        written.append(path)
    group = out / "_lss_facts.yaml"
    write_text(group, yaml.safe_dump({"group": "lss_facts", "task": [f"lss_{s}" for s in langs],
                                      "metadata": {"version": 1.0}}, sort_keys=False))
    return [*written, group]


def facts_of(task, limit: int | None) -> list[tuple[int, dict, str, str]]:
    """(doc_id, doc, prompt, delimiter) of a loaded lss_<s> task: prompts come from the task itself."""
    docs = list(task.test_docs())[: limit or None]
    return [(i, d, task.doc_to_text(d), task.config.target_delimiter) for i, d in enumerate(docs)]


def _rows_for(rows, t: str) -> list[tuple[str, str, dict]]:
    """(prompt, delimiter, doc) of the facts that carry a t object."""
    return [(p, delim, d) for _, d, p, delim in rows if d.get(f"obj_{t}") not in (None, "")]


def scored_pairs(rows, s: str, t: str) -> list[tuple[str, str]]:
    """The (prompt, continuation) requests that LSS(s, t) scores, in order: obj_s and obj_t of every fact of
    source s that has a t object (a fact whose two objects are spelled alike needs none: its margin is 0)."""
    return [(p, delim + d[f"obj_{l}"]) for p, delim, d in _rows_for(rows, t) for l in (s, t)
            if d[f"obj_{s}"] != d[f"obj_{t}"]]


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
                   limit=None, log=print, baseline: dict | None = None, ops=None) -> dict:
    """LSS(s, t) for every source task and target language, with one loaded ``lm``
    (a :class:`~lapeval.lm.LapeLM`; its intervention is cleared on return).

    ``ops``: an intervention spec (:func:`lapeval.operation.parse_ops`) replacing ``mode``/``value``, whose
    terms without languages act on t (``zero@en;set:p_max``). Per target t, t's neurons get the operation and obj_s, obj_t of every fact of every source s ≠ t are
    scored; the baseline of (s, t) is the same requests without intervention (:func:`paired_baseline`,
    computed here unless ``baseline`` gives it), so an intervention that changes nothing gives 0.
    """
    from .metrics import lss

    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    if baseline is None:
        baseline = paired_baseline(lm, tasks, targets, limit=limit, log=log)
    missing = [(s, t) for t in targets for s in facts if s != t and (s, t) not in baseline]
    if missing:
        raise ValueError(f"the given baseline lacks the pairs {missing[:3]} (computed for other sources or targets?)")

    matrix: dict[str, dict[str, float]] = {s: {} for s in facts}
    n_items = {s: len(rows) for s, rows in facts.items()}
    for t in targets:
        t0 = time.time()
        if ops is not None:
            lm.set_intervention(neurons=neurons, lang=t, ops=ops, layers=layers)
        else:
            lm.set_intervention(neurons=neurons, lang=t, mode=mode, value=value, layers=layers)
        for s, rows in facts.items():
            if s == t:
                continue
            pairs = scored_pairs(rows, s, t)
            base = baseline[(s, t)]
            if set(pairs) != set(base):
                raise ValueError(f"the given baseline of ({s}, {t}) scored other requests (other facts or limit?)")
            new = loglikelihoods(lm, pairs, f"lss_{s}") if touches_neurons(lm) else base
            before, after = [], []
            for p, delim, d in _rows_for(rows, t):
                a, b = (p, delim + d[f"obj_{t}"]), (p, delim + d[f"obj_{s}"])
                if a == b:  # the same string: margin 0 before and after
                    before.append(0.0)
                    after.append(0.0)
                    continue
                before.append(base[a] - base[b])
                after.append(new[a] - new[b])
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


def check_inputs(neurons, sources, targets, mode, value, layers, limit, facts=None):
    """Everything that can be checked before the model loads: languages, their facts, ``limit``, the mask
    and its languages, the operation (``mode=None``: the caller checks its own operations), the layers.
    Returns (sources, targets, mask)."""
    from .intervene import Operation, parse_layers
    from .languages import parse_list
    from .masks import NeuronMask

    srcs = parse_list(sources)
    tgts = parse_list(targets) if targets else srcs
    check_sources(srcs, facts)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"--limit {limit}: give a positive number of facts per source")
    mask = neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser())
    for t in tgts:
        mask.code(t)  # one-line MaskError naming the mask's languages
    if mode is not None:
        Operation.parse(mode, value)
    parse_layers(layers, mask.n_layers)
    return srcs, tgts, mask


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
        from .models import check_device, check_dtype

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
        mask.check_model(len(lm.sites), lm.sites[0].d_ff)
        with keeping_setting(lm):
            yield lm, name, where, tasks


def _provenance(name: str, mask, mode, value, layers, facts: str, limit, started: float) -> dict:
    from . import __version__, models

    return dict(source="in-process (lape model)", model=name, **models.identity(name),
                neurons=str(mask.path) if mask.path else None,
                neurons_sha256=mask.sha256() if mask.path else None, mode=mode, value=value,
                layers=layers or "all", facts=facts, limit=limit, baseline="paired: each (s, t) scored as the "
                "same requests in the same batches without intervention", lapeval_version=__version__,
                seconds=round(time.time() - started, 1))


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
    strictly under the intervention, against the paired baseline (:func:`paired_baseline`): an
    intervention that changes no activation gives exactly 0. Returns ``{"matrix": {s: {t: LSS}},
    "per_target": {t: mean over s ≠ t}, "mean_off_diagonal", "n_items", "sources", "targets",
    ...provenance}``.

    Example::

        res = lapeval.lss_matrix("gemma-3-270m", "neuron_masks/gemma-3-270m.safetensors", ["en", "fr", "zh"],
                                 facts="builtin", limit=20)
        res["mean_off_diagonal"], res["matrix"]["en"]["fr"]
    """
    started = time.time()
    srcs, tgts, mask = check_inputs(neurons, sources, targets, mode, value, layers, limit, facts)
    with loaded_for_lss(model_or_lm, mask, facts, batch_size, dtype, device, srcs, tgts, limit) as (lm, name, where, tasks):
        result = compute_matrix(lm, tasks, tgts, neurons=mask, mode=mode, value=value, layers=layers,
                                limit=limit, log=log)
    result.update(_provenance(name, mask, mode, value, layers, where, limit, started))
    return result


def lss_layers(model_or_lm, neurons, sources, targets=None, facts=None, *, mode: str = "set", value="p_max",
               limit: int | None = None, batch_size: int = 8, dtype: str = "float32", device: str = "cpu",
               out=None, log=print) -> dict:
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
    started = time.time()
    srcs, tgts, mask = check_inputs(neurons, sources, targets, mode, value, None, limit, facts)
    if out is not None:
        from ._io import check_writable

        if Path(out).suffix != ".json":
            raise UsageError(f"--out {out}: give a .json path (the .png and .md go beside it)")
        for path in (Path(out), Path(out).with_suffix(".png"), Path(out).with_suffix(".md")):
            check_writable(path, "--out")
    n_neurons = {k: {t: int(mask.per_layer(t)[k].numel()) for t in tgts} for k in range(mask.n_layers)}
    with loaded_for_lss(model_or_lm, mask, facts, batch_size, dtype, device, srcs, tgts, limit) as (lm, name, where, tasks):
        base = paired_baseline(lm, tasks, tgts, limit=limit, log=log)
        matrices, table, overall = {}, {}, {}
        for k in range(mask.n_layers):
            t0 = time.time()
            res = compute_matrix(lm, tasks, tgts, neurons=mask, mode=mode, value=value, layers=str(k), limit=limit,
                                 log=lambda m: None, baseline=base)
            matrices[k], overall[k] = res["matrix"], res["mean_off_diagonal"]
            table[k] = {t: res["per_target"].get(t, float("nan")) for t in tgts}
            n_items = res["n_items"]
            log(f"layer {k}: mean LSS {overall[k]:.3f} ({sum(n_neurons[k].values())} neurons, {time.time() - t0:.0f}s)")
    prov = _provenance(name, mask, mode, value, None, where, limit, started)
    del prov["layers"]  # here: the list of layers, each intervened alone
    result = {"layers": list(range(mask.n_layers)), "sources": srcs, "targets": tgts, "table": table,
              "n_neurons": n_neurons, "overall": overall, "matrices": matrices,
              "n_items": n_items,
              "statistic": "table[layer][t]: mean over sources s != t of LSS(s, t) with only that layer's neurons",
              **prov}
    if out is not None:
        write_layers(result, out)
    return result


def format_layers(result: dict) -> str:
    """Plain text: rows = layers, columns = targets, each cell ``LSS (neurons)``."""
    tg = result["targets"]
    lines = ["layer " + " ".join(f"{t:>11}" for t in tg) + "   all"]
    for k in result["layers"]:
        cells = [f"{result['table'][k][t]:5.3f} ({result['n_neurons'][k][t]:>3})" for t in tg]
        lines.append(f"{k:>5} " + " ".join(f"{c:>11}" for c in cells) + f" {result['overall'][k]:5.3f}")
    return "\n".join(lines)


def write_layers(result: dict, out) -> list[Path]:
    """``out`` (.json), its heatmap (.png: layers × targets, neuron counts in the cells) and markdown (.md)."""
    import math

    from ._io import json_safe, write_json, write_text
    from .plot import heatmap

    js = Path(out)
    png, md = js.with_suffix(".png"), js.with_suffix(".md")
    write_json(js, json_safe(result))
    tg, layers = result["targets"], result["layers"]
    values = [[result["table"][k][t] for t in tg] for k in layers]
    heatmap(values, [str(k) for k in layers], tg, png,
            f"LSS with one layer's neurons ({result['mode']}:{result['value']}); mean over s ≠ t",
            fmt="{:.2f}", xlabel="amplified target language t", ylabel="layer", cmap="viridis")
    rows = ["| layer | " + " | ".join(tg) + " | all |", "|---:|" + "---:|" * (len(tg) + 1)]
    for k in layers:
        cells = [("–" if math.isnan(result["table"][k][t]) else f"{result['table'][k][t]:.3f}")
                 + f" ({result['n_neurons'][k][t]})" for t in tg]
        rows.append(f"| {k} | " + " | ".join(cells) + f" | {result['overall'][k]:.3f} |")
    head = (f"# Per-layer LSS: {result['model']}, mask {Path(str(result['neurons'])).name}\n\n"
            f"Each cell: mean over sources s ≠ t of LSS(s, t) when only that layer's neurons of t get "
            f"{result['mode']}:{result['value']} (in brackets: how many neurons of t the layer holds; a layer "
            f"without any is 0 by construction). Facts per source: "
            + ", ".join(f"{s} {n}" for s, n in result["n_items"].items()) + f"; {result['seconds']:.0f} s.\n\n")
    write_text(md, head + "\n".join(rows) + "\n")
    return [js, png, md]


def lss_score(baseline, intervened: dict, *, log=print) -> dict:
    """The LSS matrix from lm-eval sample logs of the ``lss_*`` tasks — what ``lapeval lss score`` prints:
    ``baseline`` a run without intervention, ``intervened`` ``{t: run with t's neurons amplified}``; a run is
    a ``samples_lss_<s>*.jsonl`` file, an lm-eval output folder or a grid cell.

    Each run's own record (``config.lape`` in the results JSON beside its samples) is checked: the
    baseline must have no intervention and the run given for t must have intervened on t alone; a run
    without a record is used with a one-line warning. Logs without any ``lss_*`` sample are refused.
    Returns ``{"matrix", "per_target", "mean_off_diagonal", ...}``."""
    import warnings

    from . import __version__
    from .errors import LapevalWarning
    from .languages import normalize
    from .metrics import lss
    from .results import NOT_RECORDED, ResultsError, run_intervention

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
    return {"matrix": matrix, **lss.summarize(matrix), "source": "sample logs", "baseline": str(baseline),
            "intervened": {k: str(v) for k, v in intervened.items()}, "lapeval_version": __version__}

