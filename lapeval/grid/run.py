"""Leaderboard grids: the baseline and every (intervention, target language) cell on every task, with ONE
model load and the tasks built once.

    cells = [baseline] + [(op, t) for op in interventions for t in targets]

An intervention is any spec of :mod:`lapeval.intervention.operation` — ``set:p_max``, ``add:2*p_max``,
``zero@en;set:p_max``, ``set:p_max;scope:generation`` (strings, or mappings ``{ops: ..., scope: ...}`` /
``{mode: ..., value: ..., layers: ...}``) — whose terms without ``@LANGS`` act on the cell's target. A
target ``self`` gives one cell per intervention in which each request gets its own task's language (the
self-language diagonal of every task in one cell).

Each cell switches the loaded ``lape`` model to its setting (``lm.set_intervention``; the baseline has
none, so it *is* lm-eval's ``hf``) and runs lm-eval's own ``evaluate`` on the task dictionary loaded
once. The output directory holds, per cell, ``cells/<cell>/results.json`` (lm-eval's results format with
``config.lape`` provenance and ``lapeval_grid``: the cell and its key) and ``samples_<task>.jsonl``;
``grid.json`` (the configuration and the cell list); and the summary of :mod:`lapeval.grid.report`.

Resume: a cell whose ``results.json`` carries the same key (model, model arguments, mask sha256, tasks,
limit, few-shot, seeds, the cell's intervention) is not recomputed; cell files are written atomically, so a
killed grid leaves only whole cells behind.

Cells as batch rows (``multiplex``): the log-likelihood requests of all cells of one intervention are
scored in one pass whose batches hold rows of several cells, each row with its own cell's neurons
(:meth:`lapeval.lm.LapeLM.prefill`); the cells' lm-eval runs then read those answers. The baseline is
never multiplexed (it stays bit-identical to ``hf``); multiplexed cells equal separate runs up to the
floating-point noise of a different batch composition (as lm-eval's own batch-size noise).

LSS is exact: the ``lss_*`` tasks are evaluated in an lm-eval call of their own in every cell and are never
multiplexed (:func:`split_lss`), so a cell scores exactly the baseline's LSS requests in exactly its
batches, and an intervention that changes no activation gives LSS 0.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from .config import FORMAT, Cell, GridConfig, GridError, spec_fields
from .memory import empty_cuda_cache, memory_now, memory_peak, memory_reset


# ---- running ------------------------------------------------------------------------------------
def results_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.folder / "results.json"


def finished(out: Path, cell: Cell, key: str) -> bool:
    p = results_path(out, cell)
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("lapeval_grid", {}).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


_TASK_MANAGERS: dict[tuple, object] = {}


def task_manager(include: list[str], defaults: bool):
    """A TaskManager over ``include`` (and lm-eval's ~15k built-in tasks when ``defaults``), built once per
    process: indexing the built-ins reads every YAML file (about 25 s on two cores)."""
    from lm_eval.tasks import TaskManager

    key = (tuple(include), defaults)
    if key not in _TASK_MANAGERS:
        _TASK_MANAGERS[key] = TaskManager(include_defaults=defaults, include_path=include if len(include) > 1 else include[0])
    return _TASK_MANAGERS[key]


def load_tasks(cfg: GridConfig):
    """The grid's tasks, loaded once: from lapeval's folder (and include_path) alone when they are all
    there, else with lm-eval's built-in index too; few-shot and seeds set as ``simple_evaluate`` does."""
    from ..lss.tasks import facts_env, lss_source, lss_task_config
    from ..paths import tasks_path

    include = [str(tasks_path()), *cfg.include_path]
    loaded = None
    tm = task_manager(include, defaults=False)

    def specs(tm) -> list:  # an lss_<s> that lapeval does not ship is built on demand from the LSS template
        return [lss_task_config(s) if t not in tm.all_tasks and (s := lss_source(t)) else t for t in cfg.tasks]

    with facts_env(cfg.facts):
        if all(isinstance(t, dict) or t in tm.all_tasks for t in specs(tm)):
            try:
                loaded = tm.load(specs(tm))
            except Exception:  # noqa: BLE001 - e.g. a lapeval group over a built-in task: index the built-ins too
                loaded = None
        if loaded is None:
            tm = task_manager(include, defaults=True)
            unknown = [t for t in specs(tm) if not isinstance(t, dict) and t not in tm.all_tasks]
            if unknown:
                raise GridError(f"unknown task(s) {', '.join(unknown)}: see `lapeval eval ls tasks` (or add include_path:)")
            loaded = tm.load(specs(tm))
    for task in loaded["tasks"].values():  # as simple_evaluate does
        if cfg.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=cfg.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=cfg.seed)
    return loaded


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_grid(cfg: GridConfig, log=print, lm=None, shard=None) -> dict:
    """Evaluate every unfinished cell of this process's share, then (on the leader) write the summary.
    Returns {cell id: "ran" | "reused"} (``<model>/<cell id>`` in a multi-model grid).

    ``shard``: a :class:`~lapeval.grid.shard.Shard`, ``"I/N"`` (a job-array task: its cells only, no summary —
    run ``lapeval grid --summary-only`` once all are done), or None: under ``torchrun`` / ``accelerate
    launch`` this process's rank (cells partitioned by :func:`lapeval.grid.shard.partition`, the summary written
    by rank 0 after a barrier), else every cell. With ``parallel: requests`` every rank runs every cell and
    lm-eval splits each cell's requests over the ranks (its own data parallelism)."""
    from .report import check_outputs
    from .shard import Shard, barrier, current, partition

    sh = shard if isinstance(shard, Shard) else current(shard)
    by_requests = cfg.parallel == "requests"
    if cfg.models is not None and lm is not None:
        raise GridError("a multi-model grid loads each of its models itself: call run_grid without lm=")
    subs = [cfg] if cfg.models is None else [cfg.for_model(e) for e in cfg.model_entries()]
    for sub in subs:  # before anything is computed or written
        check_outputs(sub.output)
    if any(not finished(Path(sub.output), c, sub.cell_key(c, sub.mask.sha256() if sub.neurons else None))
           for sub in subs for c in sub.cells()):
        check_tasks(cfg)  # an unknown task: one line, and nothing written
    with grid_lock(cfg):
        if cfg.models is not None:
            status = _run_models(cfg, log, sh, by_requests)
        else:
            cells = cfg.cells()
            ranks = [sh.index] * len(cells) if by_requests else partition([1.0] * len(cells), sh.count)
            status = _run_cells(cfg, log, lm, {c.id for c, r in zip(cells, ranks) if r == sh.index}, sh if by_requests else None)
        barrier(sh)
        if sh.leader:
            from .report import write_summary

            write_summary(Path(cfg.output), log=log)
        elif not sh.distributed:
            log(f"grid: shard {sh} done; once every shard has finished: lapeval grid --summary-only --output {cfg.output}")
    return status


LOCK = "grid.lock"


@contextmanager
def grid_lock(cfg: GridConfig):
    """Hold the output folder for this grid while it runs. The processes of one grid (torchrun ranks, job-array
    shards) share it; another grid started on the folder meanwhile is refused in one line (the two would
    overwrite each other's grid.json and summary). ``grid.lock`` says which grid holds it; the lock itself is
    the kernel's (``flock``), released when the process ends, however it ends."""
    import fcntl
    import hashlib
    import os
    import socket

    from .._io import output_error

    me = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cfg.output) / LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise output_error(path, e, "the grid's lock file") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: by this grid's other processes, or by another grid
            pass
        except OSError as e:  # a file system without locks (some network ones): run as before, and say so
            import warnings

            from ..errors import LapevalWarning

            warnings.warn(f"cannot lock {path} ({e.strerror or e}): a second grid started on {cfg.output} meanwhile "
                          "would not be refused", LapevalWarning)
            yield
            return
        else:  # alone: say which grid runs here
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"grid": me, "host": socket.gethostname(), "pid": os.getpid()}) + "\n")
            fh.flush()
        fcntl.flock(fh, fcntl.LOCK_SH)  # waits only while a starting process writes; then re-read
        fh.seek(0)
        try:
            holder = json.loads(fh.read() or "{}")
        except ValueError:
            holder = {}
        if holder.get("grid") != me:
            raise GridError(f"another grid is running in {cfg.output} (process {holder.get('pid', '?')} on "
                            f"{holder.get('host', '?')}, with another configuration): wait until it has finished, "
                            "or give this grid its own output folder")
        yield


def check_tasks(cfg: GridConfig) -> None:
    """Every task of the grid is one lm-eval knows (lapeval's, ``include_path``'s, its own; an ``lss_<s>`` is
    built on demand), from the task index alone: a one-line :class:`GridError` before anything is written."""
    from .._io import printable
    from ..lss.tasks import lss_source
    from ..paths import tasks_path

    include = [str(tasks_path()), *cfg.include_path]
    unknown = [t for t in cfg.tasks if t not in task_manager(include, False).all_tasks and not lss_source(t)]
    if unknown:
        unknown = [t for t in unknown if t not in task_manager(include, defaults=True).all_tasks]
    if unknown:
        raise GridError(f"unknown task(s) {printable(', '.join(unknown))}: see `lapeval eval ls tasks` (or add "
                        "include_path:)")


def warn_unmatched_lang_map(cfg: GridConfig, task_names) -> None:
    """A one-line warning for each ``lang_map`` pattern that names none of the grid's evaluated tasks."""
    import warnings

    from .._io import printable
    from ..errors import LapevalWarning
    from ..languages import LangMap

    for pattern in LangMap.parse(cfg.lang_map).unmatched(task_names):
        warnings.warn(f"lang_map: {printable(pattern)!r} matches none of the evaluated tasks "
                      f"({printable(', '.join(sorted(task_names)))}): check its spelling", LapevalWarning, stacklevel=2)


def _run_models(cfg: GridConfig, log, sh, by_requests: bool) -> dict:
    """Each model of a multi-model grid with cells in this shard: load it once, run its cells, release it
    before the next loads (peak memory: one model; logged per model)."""
    import gc

    from .._io import safe_name, write_json
    from .shard import partition

    subs = [(e, cfg.for_model(e)) for e in cfg.model_entries()]
    items = [(i, c) for i, (_, sub) in enumerate(subs) for c in sub.cells()]
    ranks = [sh.index] * len(items) if by_requests else partition([subs[i][0].cost for i, _ in items], sh.count)
    write_json(Path(cfg.output) / "grid.json", {
        "format": FORMAT, "lapeval_version": __version__, "config": cfg.to_dict(),
        "models": [{"name": e.name, "folder": f"models/{safe_name(e.name)}", "cells": [c.id for c in sub.cells()]} for e, sub in subs],
        "ranks": None if by_requests else {"count": sh.count, "cells": [f"{subs[i][0].name}/{c.id}:{r}" for (i, c), r in zip(items, ranks)]}})
    status: dict = {}
    for i, (e, sub) in enumerate(subs):
        mine = {c.id for (j, c), r in zip(items, ranks) if j == i and r == sh.index}
        if not mine:
            continue
        before = memory_reset()
        st = _run_cells(sub, log, None, mine, sh if by_requests else None)
        peak = memory_peak()
        gc.collect()
        empty_cuda_cache()
        after = memory_now()
        if any(v == "ran" for v in st.values()):
            log(f"grid: model {e.name}: peak {peak:.0f} MB resident ({before:.0f} MB before loading it), "
                f"{after:.0f} MB after releasing it")
        status.update({f"{e.name}/{k}": v for k, v in st.items()})
    return status


def _run_cells(cfg: GridConfig, log, lm, only: set[str], requests_shard=None) -> dict:
    """The unfinished cells among ``only`` of a one-model grid, with one model load (none when all are
    finished); ``requests_shard``: under ``parallel: requests``, every rank runs every cell (rank 0 writes)."""
    from tqdm.auto import tqdm

    from .._io import write_json

    out = Path(cfg.output)
    cells = cfg.cells()
    mask_sha = cfg.mask.sha256() if cfg.neurons else None
    keys = {c.id: cfg.cell_key(c, mask_sha) for c in cells}
    todo = [c for c in cells if c.id in only and not finished(out, c, keys[c.id])]
    status = {c.id: "reused" for c in cells if c.id in only and c not in todo}
    started = time.time()
    loaded = load_tasks(cfg) if todo else None  # first: tasks that do not load leave no grid.json
    if loaded is not None:
        check_self_only(cfg, loaded)
    write_json(out / "grid.json", {"format": FORMAT, "lapeval_version": __version__, "config": cfg.to_dict(),
                                   "neurons_sha256": mask_sha,
                                   "cells": [{"id": c.id, "folder": c.folder, **c.key_fields(), "key": keys[c.id]} for c in cells]})
    if requests_shard is not None:
        from .shard import barrier

        barrier(requests_shard)  # every rank has decided what to run before rank 0 writes a cell
    if status:
        log(f"grid: {len(status)} finished cell(s) reused, {len(todo)} to run")
    if todo:
        if cfg.lang_map:
            warn_unmatched_lang_map(cfg, list(loaded["tasks"]))
        if lm is None:
            from ..lm import LapeLM

            lm = LapeLM(pretrained=cfg.model, device=_rank_device(cfg.device), batch_size=cfg.batch_size,
                        lang_map=cfg.lang_map, **cfg.model_args)
            if requests_shard is None and lm.world_size > 1:
                # ranks split the cells: each evaluates its own cells alone (HFLM joined accelerate's group
                # on GPUs and would otherwise split every cell's requests with ranks running other cells)
                lm._rank, lm._world_size = 0, 1
        if cfg.vectors and any(c.target is not None for c in todo):
            from ..sites import hidden_size_of

            cfg.vector_set.check_model(len(lm.sites), hidden_size_of(lm.model), f"model {cfg.label}")
        if cfg.neurons and any(c.target is not None for c in todo):  # before the first cell, not after the baseline
            cfg.mask.check_model(len(lm.sites), lm.sites[0].d_ff, f"model {cfg.label}")
        log(f"grid: model and {len(loaded['tasks'])} task(s) loaded in {time.time() - started:.0f}s")
        multiplex = cfg.multiplex == "on" or (cfg.multiplex == "auto" and str(lm.device).startswith("cuda"))
        bar = tqdm(todo, desc="grid cells", unit="cell")
        prefilled = None  # the intervention whose cells' answers the model holds
        try:
            for cell in bar:
                bar.set_postfix_str(cell.id)
                if multiplex and cell.target is not None and not cell.per_request and cell.op != prefilled:
                    # every cell of the intervention, finished ones too: the same batches as an uninterrupted run
                    lm.clear_prefill()
                    lm.prefill(_loglikelihood_requests(cfg, loaded),
                               [_setting(cfg, c) for c in cells
                                if c.op == cell.op and c.target is not None and not c.per_request])
                    prefilled = cell.op
                _run_cell(cfg, lm, loaded, cell, keys[cell.id], out)
                status[cell.id] = "ran"
        finally:
            lm.clear_intervention()
            lm.clear_prefill()
    return status


def _rank_device(device: str) -> str:
    """``cuda`` → this rank's GPU (``cuda:$LOCAL_RANK``) under torchrun / accelerate; anything else as given."""
    import os

    if str(device) == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _setting(cfg: GridConfig, cell: Cell) -> dict:
    """The cell's ``set_intervention`` keywords: the grid's loaded mask and the cell's Spec, as they are."""
    return {"neurons": cfg.cell_mask(cell), "lang": cell.target, "ops": cell.spec, "vectors": cfg.vector_set}


def _recorded(cfg: GridConfig, cell: Cell) -> dict:
    """The cell's intervention as ``config.model_args`` of its results records it (the ``lape`` arguments that
    reproduce it: the mask path, the target, ``mode``/``value``/``layers`` or ``ops``)."""
    d = {"neurons": cfg.neurons, "vectors": cfg.vectors, "lang": cell.target, **spec_fields(cell.spec)}
    if cell.control is not None:  # reproduce with lapeval masks control NEURONS --seed K (--stats STATS)
        d.update(control_seed=cell.control, control_stats=cfg.control_stats)
    return {k: v for k, v in d.items() if v is not None}


def _language(cfg: GridConfig, task) -> str | None:
    from ..languages import task_language

    meta = task.get_config("metadata")
    return task_language(task.task_name, meta if isinstance(meta, dict) else None, cfg.lang_map)


def check_self_only(cfg: GridConfig, loaded) -> None:
    """Every task ``self_only`` names has a known language (else it could never be self-language): one line."""
    from .._io import printable

    for name in cfg.self_only_tasks(loaded["tasks"]):
        if _language(cfg, loaded["tasks"][name]) is None:
            raise GridError(f"self_only: task {printable(name)} names no language, so no cell is self-language for "
                            f"it: give it one with lang_map: {{{printable(name)}: CODE}} or leave it out of self_only")


def cell_part(cfg: GridConfig, loaded, cell: Cell) -> dict:
    """The loaded tasks a cell evaluates: all of them, but for a cell with a target language (``self``
    excepted) the ``self_only`` tasks of other languages left out, with any group holding one of them."""
    if not cfg.self_only or cell.target in (None, "self"):
        return loaded
    drop = {n for n in cfg.self_only_tasks(loaded["tasks"]) if _language(cfg, loaded["tasks"][n]) != cell.target}
    if not drop:
        return loaded
    groups = {g for g, grp in loaded.get("groups", {}).items()
              if not drop.intersection(t.task_name for t in grp.get_all_tasks())}
    return {"tasks": {n: t for n, t in loaded["tasks"].items() if n not in drop},
            "groups": {g: v for g, v in loaded.get("groups", {}).items() if g in groups},
            "group_map": {g: v for g, v in loaded.get("group_map", {}).items() if g in groups}}


def split_lss(loaded) -> tuple[dict | None, dict | None]:
    """The loaded tasks as (everything else, the LSS tasks), None for an empty part. LSS compares a cell's
    margins with the baseline's and counts any strict growth, so its requests are scored in their own
    lm-eval call in every cell: the same requests in the same batches whatever the other tasks or the
    multiplexing, and an intervention that changes nothing gives LSS exactly 0."""
    from ..lss.tasks import lss_source

    def is_lss(name: str) -> bool:
        return lss_source(name) is not None

    lss_groups = {g for g, grp in loaded.get("groups", {}).items()
                  if grp.get_all_tasks() and all(is_lss(t.task_name) for t in grp.get_all_tasks())}
    in_mixed = {t.task_name for g, grp in loaded.get("groups", {}).items() if g not in lss_groups
                for t in grp.get_all_tasks()}
    lss_tasks = {n for n in loaded["tasks"] if is_lss(n) and n not in in_mixed}
    def part(keep_tasks: set, keep_groups: set) -> dict | None:
        if not keep_tasks:
            return None
        return {"tasks": {n: t for n, t in loaded["tasks"].items() if n in keep_tasks},
                "groups": {n: g for n, g in loaded.get("groups", {}).items() if n in keep_groups},
                "group_map": {n: c for n, c in loaded.get("group_map", {}).items() if n in keep_groups}}

    return (part(set(loaded["tasks"]) - lss_tasks, set(loaded.get("groups", {})) - lss_groups),
            part(lss_tasks, lss_groups))


def merge_results(a: dict, b: dict) -> dict:
    """Two lm-eval ``evaluate`` results as one (their task-keyed sections joined)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = out[k] + v
        elif k not in out:
            out[k] = v
    return out


def _loglikelihood_requests(cfg: GridConfig, loaded) -> list:
    """The log-likelihood requests of every task but LSS (:func:`split_lss`), built as ``evaluate`` will
    build them again per cell."""
    requests = []
    rest = split_lss(loaded)[0]
    for task in (rest or {"tasks": {}})["tasks"].values():
        if task.get_config("output_type") in ("loglikelihood", "multiple_choice"):
            task.build_all_requests(limit=cfg.limit, rank=0, world_size=1)
            requests += [i for i in task.instances if i.request_type == "loglikelihood"]
    return requests


def _run_cell(cfg: GridConfig, lm, loaded, cell: Cell, key: str, out: Path) -> None:
    from lm_eval.evaluator import evaluate
    from lm_eval.loggers.utils import add_env_info, add_tokenizer_info
    from lm_eval.utils import handle_non_serializable

    from .._io import atomic_path
    from ..results import samples_path

    if cell.target is None:
        lm.clear_intervention()
    else:
        lm.set_intervention(**_setting(cfg, cell))
    _seed(cfg.seed)
    t0 = time.time()
    res: dict = {}
    for part in filter(None, split_lss(cell_part(cfg, loaded, cell))):  # LSS in a call of its own (see split_lss)
        got = evaluate(lm=lm, task_dict=part, limit=cfg.limit, bootstrap_iters=cfg.bootstrap_iters,
                       log_samples=True, verbosity="WARNING")
        if got is None:  # another rank of lm-eval's data parallelism (parallel: requests): rank 0 writes
            return
        res = merge_results(res, got)
    samples = res.pop("samples", {})
    res["config"] = {"model": "lape", "model_args": {"pretrained": cfg.model, **cfg.model_args,
                                                      **(_recorded(cfg, cell) if cell.target else {})},
        **lm.get_model_info(), "batch_size": cfg.batch_size, "device": cfg.device, "limit": cfg.limit,
        "bootstrap_iters": cfg.bootstrap_iters, "random_seed": 0, "numpy_seed": cfg.seed, "torch_seed": cfg.seed,
        "fewshot_seed": cfg.seed}
    res["lapeval_grid"] = {"cell": cell.id, "key": key, **cell.key_fields(), "seconds": round(time.time() - t0, 2)}
    res["date"] = t0
    add_env_info(res)
    add_tokenizer_info(res, lm)
    folder = out / "cells" / cell.folder
    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        with atomic_path(samples_path(folder, task)) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n")
    with atomic_path(results_path(out, cell)) as tmp:  # last: its presence marks the cell finished
        Path(tmp).write_text(json.dumps(res, indent=1, default=handle_non_serializable, ensure_ascii=False),
                             encoding="utf-8")
