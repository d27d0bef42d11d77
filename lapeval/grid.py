"""Leaderboard grids: the baseline and every (intervention, target language) cell on every task, with ONE
model load and the tasks built once.

    cells = [baseline] + [(op, t) for op in interventions for t in targets]

An intervention is any spec of :mod:`lapeval.operation` — ``set:p_max``, ``add:2*p_max``,
``zero@en;set:p_max``, ``set:p_max;scope:generation`` (strings, or mappings ``{ops: ..., scope: ...}`` /
``{mode: ..., value: ..., layers: ...}``) — whose terms without ``@LANGS`` act on the cell's target. A
target ``self`` gives one cell per intervention in which each request gets its own task's language (the
self-language diagonal of every task in one cell).

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
from .operation import InterventionError, Operation, file_name, parse_ops, spec_label

FORMAT = "lapeval.grid"


class GridError(LapevalError, ValueError):
    """A bad grid configuration: one line naming the fix."""


@dataclass(frozen=True)
class Cell:
    """One grid cell: no intervention (``baseline``) or an intervention on one target language's neurons
    (``target``: a code, or ``self``). A one-term intervention is ``mode``/``value``/``layers`` (as every grid
    before composites wrote it, so their keys stay valid), any other its canonical label in ``ops``."""

    target: str | None = None
    mode: str | None = None
    value: str | None = None
    layers: str | None = None
    ops: str | None = None

    @property
    def op(self) -> str:
        """The intervention without its target, in the one label of :mod:`lapeval.operation`:
        ``set:p_max``, ``zero``, ``scale:2@0-5``, ``zero@en;set:p_max;scope:generation``."""
        if self.target is None:
            return "baseline"
        if self.ops is not None:
            return self.ops
        return spec_label(Operation.parse(self.mode, self.value), self.layers)

    @property
    def per_request(self) -> bool:
        """Whether some requests of the cell get languages of their own (target self, src/tgt terms)."""
        return self.target == "self" or (self.ops is not None and parse_ops(self.ops).per_request)

    def key_fields(self) -> dict:
        """The cell in its key: ``ops`` only when set (a one-term cell keys exactly as before)."""
        d = asdict(self)
        if d["ops"] is None:
            del d["ops"]
        return d

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
        return f"{parse_ops(op).label}/{target}"
    except LapevalError:
        return str(cell_id)


@dataclass(frozen=True)
class ModelEntry:
    """One model of a multi-model grid: its ``name`` (folders, leaderboard rows), ``pretrained`` (known name,
    folder or hub id), its own ``model_args`` and ``neurons`` mask (None: baseline only), and the expected
    ``cost`` of one of its cells relative to the others (default 1; e.g. 4 for a model four times slower),
    which balances the cells over ranks."""

    name: str
    pretrained: str
    model_args: tuple = ()
    neurons: str | None = None
    cost: float = 1.0

    @classmethod
    def parse(cls, d, defaults: dict, i: int) -> "ModelEntry":
        if isinstance(d, str):
            d = {"pretrained": d}
        if not isinstance(d, dict):
            raise GridError(f"models[{i}]: {d!r}: give a mapping with name:, pretrained:, model_args:, neurons:")
        unknown = sorted(set(d) - {"name", "pretrained", "model", "model_args", "neurons", "cost"})
        if unknown:
            raise GridError(f"models[{i}]: unknown key(s) {', '.join(unknown)}; use name, pretrained, model_args, "
                            "neurons, cost")
        pretrained = d.get("pretrained", d.get("model"))
        if not pretrained or not isinstance(pretrained, str):
            raise GridError(f"models[{i}]: needs pretrained: (a known name, a local folder or a hub id)")
        name = str(d.get("name") or Path(pretrained.rstrip("/")).name)
        if file_name(name) != name or name in ("", ".", ".."):
            raise GridError(f"models[{i}]: name {name!r}: use letters, digits and . _ - (it names a folder)")
        args = d.get("model_args") or {}
        if isinstance(args, str):
            args = _parse_kv(args)
        if not isinstance(args, dict):
            raise GridError(f"models[{i}] ({name}): model_args: give a mapping or key=value,key=value")
        neurons = d["neurons"] if "neurons" in d else defaults.get("neurons")
        if isinstance(neurons, str) and neurons.strip().lower() in ("", "none", "null"):
            neurons = None
        cost = d.get("cost", 1.0)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not cost > 0:
            raise GridError(f"models[{i}] ({name}): cost: {cost!r}: give a positive number")
        merged = {**defaults.get("model_args", {}), **args}
        return cls(name, pretrained, tuple(sorted(merged.items())), None if neurons is None else str(neurons),
                   float(cost))


@dataclass
class GridConfig:
    model: str | None = None
    tasks: list[str] = field(default_factory=list)
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
    # several models sharing targets, interventions and tasks: [{name, pretrained, model_args, neurons, cost}]
    models: list | None = None
    name: str | None = None  # the model's name in folders and leaderboards (default: model)
    parallel: str = "cells"  # cells: ranks split the cells | requests: lm-eval's data parallelism inside a cell

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
        if self.models is not None:
            if self.model:
                raise GridError("model: and models: both given: list every model under models: (name, pretrained, "
                                "model_args, neurons)")
            if not isinstance(self.models, list) or not self.models:
                raise GridError("models: give a non-empty list of {name, pretrained, model_args, neurons}")
            entries = [ModelEntry.parse(d, {"neurons": self.neurons, "model_args": self.model_args}, i)
                       for i, d in enumerate(self.models)]
            names = [e.name for e in entries]
            if len(set(names)) != len(names):
                raise GridError(f"models: names repeat ({', '.join(n for n in names if names.count(n) > 1)}): "
                                "give each entry its own name:")
            self.models = [{"name": e.name, "pretrained": e.pretrained, "model_args": dict(e.model_args),
                            "neurons": e.neurons, "cost": e.cost} for e in entries]
        elif not self.model or not self.tasks:
            raise GridError("a grid needs model: and tasks: (in the YAML file or as --model / --tasks)")
        if not self.tasks:
            raise GridError("a grid needs tasks: (in the YAML file or as --tasks)")
        if self.parallel not in ("cells", "requests"):
            raise GridError(f"parallel: {self.parallel!r}: use cells (ranks split the cells) or requests "
                            "(lm-eval's data parallelism inside each cell)")
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
        if ("model" not in d and "models" not in d) or not d.get("tasks"):
            raise GridError("a grid needs model: (or models:) and tasks: (in the YAML file or as --model / --tasks)")
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

        if self.models is not None:  # each model's own grid checks its mask (before anything loads)
            self.targets = [t.strip().lower() if t.strip().lower() == "self" else normalize(t) for t in self.targets]
            for e in self.model_entries():
                self.for_model(e)
            return

        if self.targets and not self.neurons:
            raise GridError("targets: given without neurons: (the mask file whose languages are amplified)")
        self.targets = [t.strip().lower() if t.strip().lower() == "self" else normalize(t) for t in self.targets]
        if self.neurons:
            from .masks import MaskError, NeuronMask

            if not Path(self.neurons).is_file():
                raise GridError(f"mask file {self.neurons} does not exist: run lapeval identify or fix neurons:")
            mask = NeuronMask.load(self.neurons)
            missing = [t for t in self.targets if t != "self" and t not in mask.languages]
            if missing:
                raise GridError(f"target(s) {', '.join(missing)} not in the mask (it has {', '.join(mask.languages)})")
            from .setting import check_spec

            for iv in self.interventions:  # every term against the mask, before anything loads
                spec = parse_ops(iv["ops"]) if "ops" in iv else parse_ops(iv)
                try:
                    check_spec(spec, mask)
                except (MaskError, InterventionError) as e:
                    raise GridError(f"intervention {spec.label!r}: {e}") from None
                for term in spec.terms:
                    op = term.op
                    if op.mask_values and not mask.has_values(op.mask_values):
                        raise GridError(f"value {op.value} is not stored in {self.neurons} for every language: use a "
                                        "number, tt_max / tt_p10, or a mask identified with statistics")

        from .models import check_device

        check_device(self.device, "device:")
        if isinstance(self.multiplex, bool):  # YAML 1.1 reads the documented on / off as booleans
            self.multiplex = "on" if self.multiplex else "off"
        if self.multiplex not in ("auto", "on", "off"):
            raise GridError(f"multiplex: {self.multiplex!r}: use auto, on or off")
        from .lss import check_sources, lss_source

        lss_sources = [s for t in self.tasks if (s := lss_source(t))]
        if lss_sources and "self" in self.targets:
            raise GridError("targets: self with LSS tasks: LSS(s, t) needs explicit targets t (list their codes)")
        if lss_sources:  # every LSS source has facts (before anything loads)
            try:
                check_sources(lss_sources, self.facts)
            except LapevalError as e:
                raise GridError(f"tasks: {e}") from None

    # ---- several models ------------------------------------------------------------------------
    def model_entries(self) -> list[ModelEntry]:
        """The models of a multi-model grid (``models:``), or this grid's one model."""
        if self.models is None:
            return [ModelEntry(self.label, self.model, tuple(sorted(self.model_args.items())), self.neurons)]
        return [ModelEntry(d["name"], d["pretrained"], tuple(sorted(d["model_args"].items())), d["neurons"], d["cost"])
                for d in self.models]

    @property
    def label(self) -> str:
        """The model's name in leaderboards: ``name:`` or the model."""
        return self.name or str(self.model)

    def for_model(self, entry: ModelEntry) -> "GridConfig":
        """The one-model grid of ``entry`` (its cells under ``<output>/models/<name>``): the shared targets
        (none for a model without a mask: baseline only), interventions and tasks."""
        d = {k: v for k, v in asdict(self).items() if k not in ("models", "model", "model_args", "neurons", "name")}
        d.update(model=entry.pretrained, model_args=dict(entry.model_args), neurons=entry.neurons, name=entry.name,
                 targets=list(self.targets) if entry.neurons else [], output=str(Path(self.output) / "models" / entry.name))
        try:
            return GridConfig(**d)
        except GridError as e:
            raise GridError(f"models: {entry.name}: {e}") from None

    # ---- cells ---------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        out = [Cell()]
        for iv in self.interventions:
            for t in self.targets:
                if "ops" in iv:
                    out.append(Cell(t, ops=iv["ops"]))
                else:
                    out.append(Cell(t, iv["mode"], iv["value"], iv["layers"]))
        return out

    def cell_key(self, cell: Cell, mask_sha: str | None) -> str:
        """What determines a cell's numbers; equal keys = a finished cell can be reused."""
        k = {"model": self.model, "model_args": self.model_args, "tasks": self.tasks, "limit": self.limit,
             "num_fewshot": self.num_fewshot, "seed": self.seed, "batch_size": self.batch_size,
             "bootstrap_iters": self.bootstrap_iters, "cell": cell.key_fields(),
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
    """Any spec of :func:`lapeval.operation.parse_ops` → ``{mode, value, layers}`` for one term on the target
    in scope all (``set:p_max``, ``scale:2@0-5``, ``add:2*p_max``), else ``{ops: canonical label}``."""
    try:
        spec = parse_ops(x)
    except LapevalError as e:
        raise GridError(str(e)) from None
    if spec.simple:
        op = spec.terms[0].op
        return {"mode": op.mode, "value": op.label.partition(":")[2] or None, "layers": spec.terms[0].layers}
    if all(t.languages for t in spec.terms):
        raise GridError(f"intervention {spec.label!r}: every term names its languages, so no target is amplified: "
                        "leave the target's term without @LANGS (e.g. zero@en;set:p_max)")
    return {"ops": spec.label}



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


def run_grid(cfg: GridConfig, log=print, lm=None, shard=None) -> dict:
    """Evaluate every unfinished cell of this process's share, then (on the leader) write the summary.
    Returns {cell id: "ran" | "reused"} (``<model>/<cell id>`` in a multi-model grid).

    ``shard``: a :class:`~lapeval.shard.Shard`, ``"I/N"`` (a job-array task: its cells only, no summary —
    run ``lapeval grid --summary-only`` once all are done), or None: under ``torchrun`` / ``accelerate
    launch`` this process's rank (cells partitioned by :func:`lapeval.shard.partition`, the summary written
    by rank 0 after a barrier), else every cell. With ``parallel: requests`` every rank runs every cell and
    lm-eval splits each cell's requests over the ranks (its own data parallelism)."""
    from .shard import Shard, barrier, current, partition

    sh = shard if isinstance(shard, Shard) else current(shard)
    by_requests = cfg.parallel == "requests"
    if cfg.models is not None:
        if lm is not None:
            raise GridError("a multi-model grid loads each of its models itself: call run_grid without lm=")
        status = _run_models(cfg, log, sh, by_requests)
    else:
        cells = cfg.cells()
        ranks = [sh.index] * len(cells) if by_requests else partition([1.0] * len(cells), sh.count)
        status = _run_cells(cfg, log, lm, {c.id for c, r in zip(cells, ranks) if r == sh.index}, sh if by_requests else None)
    barrier(sh)
    if sh.leader:
        if cfg.models is not None:
            from .report import write_models_summary

            write_models_summary(Path(cfg.output), cfg, log=log)
        else:
            from .report import write_summary

            write_summary(Path(cfg.output), log=log)
    elif not sh.distributed:
        log(f"grid: shard {sh} done; once every shard has finished: lapeval grid --summary-only --output {cfg.output}")
    return status


def _run_models(cfg: GridConfig, log, sh, by_requests: bool) -> dict:
    """Each model of a multi-model grid with cells in this shard: load it once, run its cells, release it
    before the next loads (peak memory: one model; logged per model)."""
    import gc

    from ._io import write_json
    from .shard import partition

    subs = [(e, cfg.for_model(e)) for e in cfg.model_entries()]
    items = [(i, c) for i, (_, sub) in enumerate(subs) for c in sub.cells()]
    ranks = [sh.index] * len(items) if by_requests else partition([subs[i][0].cost for i, _ in items], sh.count)
    write_json(Path(cfg.output) / "grid.json", {
        "format": FORMAT, "lapeval_version": __version__, "config": cfg.to_dict(),
        "models": [{"name": e.name, "folder": f"models/{e.name}", "cells": [c.id for c in sub.cells()]} for e, sub in subs],
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
        _empty_cuda_cache()
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

    from ._io import sha256_file, write_json

    out = Path(cfg.output)
    cells = cfg.cells()
    mask_sha = sha256_file(cfg.neurons) if cfg.neurons else None
    keys = {c.id: cfg.cell_key(c, mask_sha) for c in cells}
    write_json(out / "grid.json", {"format": FORMAT, "lapeval_version": __version__, "config": cfg.to_dict(),
                                   "neurons_sha256": mask_sha,
                                   "cells": [{"id": c.id, "folder": c.folder, **c.key_fields(), "key": keys[c.id]} for c in cells]})
    todo = [c for c in cells if c.id in only and not finished(out, c, keys[c.id])]
    status = {c.id: "reused" for c in cells if c.id in only and c not in todo}
    if requests_shard is not None:
        from .shard import barrier

        barrier(requests_shard)  # every rank has decided what to run before rank 0 writes a cell
    if status:
        log(f"grid: {len(status)} finished cell(s) reused, {len(todo)} to run")
    if todo:
        started = time.time()
        loaded = load_tasks(cfg)  # first: a bad task name fails before the model loads
        if lm is None:
            from .lm import LapeLM

            lm = LapeLM(pretrained=cfg.model, device=_rank_device(cfg.device), batch_size=cfg.batch_size,
                        lang_map=cfg.lang_map, **cfg.model_args)
            if requests_shard is None and lm.world_size > 1:
                # ranks split the cells: each evaluates its own cells alone (HFLM joined accelerate's group
                # on GPUs and would otherwise split every cell's requests with ranks running other cells)
                lm._rank, lm._world_size = 0, 1
        if cfg.neurons and any(c.target is not None for c in todo):  # before the first cell, not after the baseline
            from .masks import NeuronMask

            NeuronMask.load(cfg.neurons).check_model(len(lm.sites), lm.sites[0].d_ff, f"model {cfg.label}")
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


# ---- memory of this process (per model of a multi-model grid) ----------------------------------------
def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def memory_reset() -> float:
    """Reset the resident-memory peak (Linux ``clear_refs``; CUDA's peak too) and return the current MB."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001 - memory figures are informative only
        pass
    return memory_now()


def memory_now() -> float:
    return _proc_status("VmRSS") or 0.0


def memory_peak() -> float:
    """The resident peak (MB) since :func:`memory_reset`, ``ru_maxrss`` where /proc has none."""
    peak = _proc_status("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def _setting(cfg: GridConfig, cell: Cell) -> dict:
    """The cell's ``set_intervention`` keywords (and ``lape`` model arguments)."""
    if cell.ops is not None:
        return {"neurons": cfg.neurons, "lang": cell.target, "ops": cell.ops}
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
        got = evaluate(lm=lm, task_dict=part, limit=cfg.limit, bootstrap_iters=cfg.bootstrap_iters,
                       log_samples=True, verbosity="WARNING")
        if got is None:  # another rank of lm-eval's data parallelism (parallel: requests): rank 0 writes
            return
        res = merge_results(res, got)
    samples = res.pop("samples", {})
    res["config"] = {"model": "lape", "model_args": {"pretrained": cfg.model, **cfg.model_args, **(
        {k: v for k, v in _setting(cfg, cell).items() if v is not None} if cell.target else {})},
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
        with atomic_path(folder / f"samples_{task}.jsonl") as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n")
    with atomic_path(results_path(out, cell)) as tmp:  # last: its presence marks the cell finished
        Path(tmp).write_text(json.dumps(res, indent=1, default=handle_non_serializable, ensure_ascii=False),
                             encoding="utf-8")
