"""Leaderboard grids: the baseline and every (intervention, target language) cell on every task, with ONE
model load and the tasks built once.

    cells = [baseline] + [(op, t) for op in interventions for t in targets]

Each cell switches the loaded ``lape`` model to its setting (``lm.set_intervention``; the baseline has
none, so it *is* lm-eval's ``hf``) and runs lm-eval's own ``evaluate`` on the task dictionary loaded
once. The output directory holds, per cell, ``cells/<cell>/results.json`` (lm-eval's results format with
``config.lape`` provenance and ``lapeval_grid``: the cell and its key) and ``samples_<task>.jsonl``;
``grid.json`` (the configuration and the cell list); and the summary of :mod:`lapeval.report`.

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

import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .errors import LapevalError
from .operation import InterventionError, Operation, file_name, format_value, parse_spec, spec_label

FORMAT = "lapeval.grid"


class GridError(LapevalError, ValueError):
    """A bad grid configuration: one line naming the fix."""


@dataclass(frozen=True)
class Cell:
    """One grid cell: no intervention (``baseline``) or an operation on one target language's neurons."""

    target: str | None = None
    mode: str | None = None
    value: str | None = None
    layers: str | None = None

    @property
    def op(self) -> str:
        """The intervention without its target, in the one label of :mod:`lapeval.operation`:
        ``set:p_max``, ``zero``, ``scale:2@0-5``."""
        if self.target is None:
            return "baseline"
        return spec_label(Operation.parse(self.mode, self.value), self.layers)

    @property
    def id(self) -> str:
        return "baseline" if self.target is None else f"{self.op}/{self.target}"

    @property
    def folder(self) -> str:
        """The cell's folder: its id as a file name (``set=p_max__fr``; ``:`` is not allowed on Windows)."""
        return file_name(self.id.replace("/", "__"))


def canonical_cell_id(cell_id: str) -> str:
    """Any spelling of a cell id (``set=p_max/fr``, as grids before the one label wrote it) → its id now
    (``set:p_max/fr``); ids that are not ``OP/TARGET`` come back unchanged."""
    op, sep, target = str(cell_id).rpartition("/")
    if not sep:
        return str(cell_id)
    try:
        return f"{spec_label(*parse_spec(op))}/{target}"
    except InterventionError:
        return str(cell_id)


@dataclass
class GridConfig:
    model: str
    tasks: list[str]
    targets: list[str] = field(default_factory=list)
    neurons: str | None = None
    interventions: list[dict] = field(default_factory=lambda: [{"mode": "set", "value": "p_max"}])
    model_args: dict = field(default_factory=dict)
    limit: float | None = None
    batch_size: int = 8
    device: str = "cpu"
    output: str = "out/grid"
    include_path: list[str] = field(default_factory=list)
    num_fewshot: int | None = None
    bootstrap_iters: int = 1000  # lm-eval's stderr bootstrap (for non-mean metrics)
    ci_resamples: int = 1000  # paired bootstrap of deltas to the baseline
    seed: int = 1234
    multiplex: str = "auto"  # auto (on for GPUs) | on | off
    facts: str | None = None  # LSS facts: builtin, a folder (<lang>/test.jsonl), or None ($LAPEVAL_MLAMA_DIR / hub)
    # {task or glob: language} for tasks no rule covers (the summary's self/cross split; given to the model)
    lang_map: dict | str | None = None

    def __post_init__(self) -> None:
        """Normalise and validate, whether built from YAML, from flags or directly in Python."""
        for key in ("tasks", "targets", "include_path"):
            v = getattr(self, key)
            if v is None:
                v = []
            if isinstance(v, str):
                v = [p.strip() for p in v.split(",") if p.strip()]
            if not isinstance(v, (list, tuple)):
                raise GridError(f"{key}: {v!r}: give a list (or a comma-separated string) of names")
            setattr(self, key, [str(x).strip() for x in v if str(x).strip()])
        if isinstance(self.model_args, str):
            self.model_args = _parse_kv(self.model_args)
        if self.model_args is None:
            self.model_args = {}
        if not isinstance(self.model_args, dict):
            raise GridError(f"model_args: {self.model_args!r}: give a mapping (dtype: bfloat16) or key=value,key=value")
        if "lang_map" in self.model_args:
            if self.lang_map is not None:
                raise GridError("lang_map: given both as a grid key and in model_args: give it once (lang_map:)")
            self.lang_map = self.model_args.pop("lang_map")
        self.lang_map = _parse_lang_map(self.lang_map)
        if self.interventions is None:
            self.interventions = [{"mode": "set", "value": "p_max", "layers": None}]
        self.interventions = [_parse_intervention(x) for x in _listify(self.interventions)]
        if not self.model or not self.tasks:
            raise GridError("a grid needs model: and tasks: (in the YAML file or as --model / --tasks)")
        for key in ("batch_size", "bootstrap_iters", "ci_resamples", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise GridError(f"{key}: {v!r} is not an integer")
        if self.num_fewshot is not None and (isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int)):
            raise GridError(f"num_fewshot: {self.num_fewshot!r} is not an integer")
        if self.limit is not None:
            if isinstance(self.limit, bool) or not isinstance(self.limit, (int, float)):
                raise GridError(f"limit: {self.limit!r}: give a number of documents (or a fraction < 1)")
            if self.limit >= 1:
                self.limit = int(self.limit)
        self.validate()

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> GridConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GridError(f"unknown grid setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
        d = {k: v for k, v in d.items() if v is not None}
        if "model" not in d or not d.get("tasks"):
            raise GridError("a grid needs model: and tasks: (in the YAML file or as --model / --tasks)")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict | None = None) -> GridConfig:
        d: dict = {}
        if path is not None:
            import yaml

            p = Path(path)
            if not p.is_file():
                raise GridError(f"grid file {p} does not exist: give a YAML file (see lapeval grid --help)")
            try:
                d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise GridError(f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(d, dict):
                raise GridError(f"{p} must hold a mapping of grid settings (model:, tasks:, ...)")
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(d)

    def validate(self) -> None:
        from .languages import normalize

        if self.targets and not self.neurons:
            raise GridError("targets: given without neurons: (the mask file whose languages are amplified)")
        self.targets = [normalize(t) for t in self.targets]
        if self.neurons:
            from .masks import NeuronMask

            if not Path(self.neurons).is_file():
                raise GridError(f"mask file {self.neurons} does not exist: run lapeval identify or fix neurons:")
            mask = NeuronMask.load(self.neurons)
            missing = [t for t in self.targets if t not in mask.languages]
            if missing:
                raise GridError(f"target(s) {', '.join(missing)} not in the mask (it has {', '.join(mask.languages)})")
            for iv in self.interventions:
                op = Operation.parse(iv["mode"], iv.get("value"))
                if op.mask_values and not mask.has_values(op.mask_values):
                    raise GridError(f"value {op.value} is not stored in {self.neurons} for every language: use a "
                                    "number, tt_max / tt_p10, or a mask identified with statistics")
        if self.multiplex not in ("auto", "on", "off"):
            raise GridError(f"multiplex: {self.multiplex!r}: use auto, on or off")
        from .lss import check_sources, lss_source

        lss_sources = [s for t in self.tasks if (s := lss_source(t))]
        if lss_sources:  # every LSS source has facts (before anything loads)
            try:
                check_sources(lss_sources, self.facts)
            except LapevalError as e:
                raise GridError(f"tasks: {e}") from None

    # ---- cells ---------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        out = [Cell()]
        for iv in self.interventions:
            for t in self.targets:
                out.append(Cell(t, iv["mode"], iv["value"], iv["layers"]))
        return out

    def cell_key(self, cell: Cell, mask_sha: str | None) -> str:
        """What determines a cell's numbers; equal keys = a finished cell can be reused."""
        k = {"model": self.model, "model_args": self.model_args, "tasks": self.tasks, "limit": self.limit,
             "num_fewshot": self.num_fewshot, "seed": self.seed, "batch_size": self.batch_size,
             "bootstrap_iters": self.bootstrap_iters, "cell": asdict(cell),
             "neurons_sha256": mask_sha if cell.target else None, "facts": self.facts,
             "scoring": 2}  # 2: LSS tasks in a call of their own (split_lss)
        return hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def _listify(x) -> list:
    if isinstance(x, str):
        return [p for p in re.split(r"[,\s]+", x) if p]
    if isinstance(x, dict):
        return [x]
    if not isinstance(x, (list, tuple)):
        raise GridError(f"interventions: {x!r}: give a list of MODE[:VALUE][@LAYERS] strings or mappings")
    return list(x)


def _parse_lang_map(spec) -> dict | None:
    """``lang_map:`` as a mapping or ``PATTERN:LANG;...`` → ``{pattern: code or None}`` (None when empty)."""
    from .languages import LangMap, LangMapError

    try:
        lmap = LangMap.parse(spec)
    except LangMapError as e:
        raise GridError(str(e)) from None
    return lmap.to_dict() if lmap else None


def _parse_kv(s: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        if "=" not in part:
            raise GridError(f"model_args {part!r}: write key=value pairs, e.g. dtype=float32")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _parse_intervention(x) -> dict:
    """``{mode: set, value: p_max, layers: 0-5}`` or ``"set:p_max"`` / ``"zero"`` / ``"scale:2@0-5"``
    (:func:`lapeval.operation.parse_spec`) → ``{mode, value, layers}`` in canonical spelling."""
    try:
        op, layers = parse_spec(x)
    except InterventionError as e:
        raise GridError(str(e)) from None
    return {"mode": op.mode, "value": None if op.value is None else format_value(op.value), "layers": layers}



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
    from .paths import tasks_path

    from .lss import facts_env, lss_source, lss_task_config

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


def run_grid(cfg: GridConfig, log=print, lm=None) -> dict:
    """Evaluate every unfinished cell, then write the summary. Returns {cell id: "ran" | "reused"}."""
    from tqdm.auto import tqdm

    from ._io import sha256_file, write_json
    from .report import write_summary

    out = Path(cfg.output)
    cells = cfg.cells()
    mask_sha = sha256_file(cfg.neurons) if cfg.neurons else None
    keys = {c.id: cfg.cell_key(c, mask_sha) for c in cells}
    write_json(out / "grid.json", {"format": FORMAT, "lapeval_version": __version__, "config": cfg.to_dict(),
                                   "neurons_sha256": mask_sha,
                                   "cells": [{"id": c.id, "folder": c.folder, **asdict(c), "key": keys[c.id]} for c in cells]})
    todo = [c for c in cells if not finished(out, c, keys[c.id])]
    status = {c.id: "reused" for c in cells if c not in todo}
    if status:
        log(f"grid: {len(status)} finished cell(s) reused, {len(todo)} to run")
    if todo:
        started = time.time()
        loaded = load_tasks(cfg)  # first: a bad task name fails before the model loads
        if lm is None:
            from .lm import LapeLM

            lm = LapeLM(pretrained=cfg.model, device=cfg.device, batch_size=cfg.batch_size, lang_map=cfg.lang_map,
                        **cfg.model_args)
        log(f"grid: model and {len(loaded['tasks'])} task(s) loaded in {time.time() - started:.0f}s")
        multiplex = cfg.multiplex == "on" or (cfg.multiplex == "auto" and str(lm.device).startswith("cuda"))
        bar = tqdm(todo, desc="grid cells", unit="cell")
        prefilled = None  # the intervention whose cells' answers the model holds
        try:
            for cell in bar:
                bar.set_postfix_str(cell.id)
                if multiplex and cell.target is not None and cell.op != prefilled:
                    # every cell of the intervention, finished ones too: the same batches as an uninterrupted run
                    lm.clear_prefill()
                    lm.prefill(_loglikelihood_requests(cfg, loaded),
                               [_setting(cfg, c) for c in cells if c.op == cell.op and c.target is not None])
                    prefilled = cell.op
                _run_cell(cfg, lm, loaded, cell, keys[cell.id], out)
                status[cell.id] = "ran"
        finally:
            lm.clear_intervention()
            lm.clear_prefill()
    write_summary(out, log=log)
    return status


def _setting(cfg: GridConfig, cell: Cell) -> dict:
    return {"neurons": cfg.neurons, "lang": cell.target, "mode": cell.mode, "value": cell.value, "layers": cell.layers}


def split_lss(loaded) -> tuple[dict | None, dict | None]:
    """The loaded tasks as (everything else, the LSS tasks), None for an empty part. LSS compares a cell's
    margins with the baseline's and counts any strict growth, so its requests are scored in their own
    lm-eval call in every cell: the same requests in the same batches whatever the other tasks or the
    multiplexing, and an intervention that changes nothing gives LSS exactly 0."""
    from .lss import lss_source

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

    from ._io import atomic_path

    if cell.target is None:
        lm.clear_intervention()
    else:
        lm.set_intervention(**_setting(cfg, cell))
    _seed(cfg.seed)
    t0 = time.time()
    res: dict = {}
    for part in filter(None, split_lss(loaded)):  # LSS in a call of its own (exactness; see split_lss)
        res = merge_results(res, evaluate(lm=lm, task_dict=part, limit=cfg.limit, bootstrap_iters=cfg.bootstrap_iters,
                                          log_samples=True, verbosity="WARNING"))
    samples = res.pop("samples", {})
    res["config"] = {"model": "lape", "model_args": {"pretrained": cfg.model, **cfg.model_args, **(
        {k: v for k, v in _setting(cfg, cell).items() if v is not None} if cell.target else {})},
        **lm.get_model_info(), "batch_size": cfg.batch_size, "device": cfg.device, "limit": cfg.limit,
        "bootstrap_iters": cfg.bootstrap_iters, "random_seed": 0, "numpy_seed": cfg.seed, "torch_seed": cfg.seed,
        "fewshot_seed": cfg.seed}
    res["lapeval_grid"] = {"cell": cell.id, "key": key, **asdict(cell), "seconds": round(time.time() - t0, 2)}
    res["date"] = t0
    add_env_info(res)
    add_tokenizer_info(res, lm)
    folder = out / "cells" / cell.folder
    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        with atomic_path(folder / f"samples_{task}.jsonl") as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n")
    with atomic_path(results_path(out, cell)) as tmp:  # last: its presence marks the cell finished
        Path(tmp).write_text(json.dumps(res, indent=1, default=handle_non_serializable, ensure_ascii=False),
                             encoding="utf-8")
