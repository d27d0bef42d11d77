"""A grid's configuration and its cells, from YAML to the one :class:`~lapeval.intervention.operation.Spec`
each cell holds.

    cells = [baseline] + [(spec, t) for spec in interventions for t in targets]

An intervention is parsed once (:func:`~lapeval.intervention.operation.parse_ops`), here, into a Spec; a cell
is (target, Spec) and its id, folder, key and ``grid.json`` entry are derived from that Spec alone. The
derived forms are frozen: a one-term intervention on the target, in scope ``all``, keys as
``{target, mode, value, layers}`` (as every grid before composites wrote it), any other as
``{target, mode: null, value: null, layers: null, ops: <canonical label>}`` — so finished cells of older grids
are reused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from pathlib import Path

from .._io import printable, safe_name
from ..errors import LapevalError
from ..intervention.operation import (
    InterventionError,
    Spec,
    file_name,
    parse_ops,
    require_target_term,
)

FORMAT = "lapeval.grid"
CELL_NAME_MAX = 255  # bytes: every folder name a file system takes stays as it was
NEEDS = "a grid needs model: (or models:) and tasks: (in the YAML file or as --model / --tasks)"


class GridError(LapevalError, ValueError):
    """A bad grid configuration: one line naming the fix."""


@dataclass(frozen=True)
class Cell:
    """One grid cell: no intervention (``baseline``) or the intervention ``spec`` on one target language
    (``target``: a code, or ``self``; terms without ``@LANGS`` act on it)."""

    target: str | None = None
    spec: Spec | None = None
    control: int | None = None  # the seed of the random-neuron control mask the cell runs on (grid key controls:)

    @property
    def op(self) -> str:
        """The intervention without its target, in the one label of :mod:`lapeval.intervention.operation`:
        ``set:p_max``, ``zero``, ``scale:2@0-5``, ``zero@en;set:p_max;scope:generation``; on a control mask
        prefixed ``control<seed>:`` (``control0:set:p_max``)."""
        if self.target is None:
            return "baseline"
        return (f"{CONTROL}{self.control}:" if self.control is not None else "") + self.spec.label

    @property
    def per_request(self) -> bool:
        """Whether some requests of the cell get languages of their own (target self, src/tgt terms)."""
        return self.target == "self" or (self.spec is not None and self.spec.per_request)

    def key_fields(self) -> dict:
        """The cell in its key and in ``grid.json`` (frozen spellings, see the module docstring)."""
        fields_ = spec_fields(self.spec)
        return {"target": self.target, "mode": fields_.get("mode"), "value": fields_.get("value"),
                "layers": fields_.get("layers"), **({"ops": fields_["ops"]} if "ops" in fields_ else {}),
                **({"control": self.control} if self.control is not None else {})}

    @property
    def id(self) -> str:
        return "baseline" if self.target is None else f"{self.op}/{self.target}"

    @property
    def folder(self) -> str:
        """The cell's folder: its id as a file name (``set=p_max__fr``; ``:`` is not allowed on Windows); a
        name too long for a file system (a long composite label) keeps a prefix and a hash (:func:`safe_name`)."""
        return safe_name(file_name(self.id.replace("/", "__")), CELL_NAME_MAX)


CONTROL = "control"


def control_of(op: str) -> tuple[int, str] | None:
    """(seed, real intervention label) of a control cell's intervention label (``control2:set:p_max`` →
    (2, ``set:p_max``)); None for any other label."""
    head, sep, rest = str(op).partition(":")
    if sep and head.startswith(CONTROL) and head[len(CONTROL):].isdigit():
        return int(head[len(CONTROL):]), rest
    return None


def spec_fields(spec: Spec | None) -> dict:
    """A grid intervention as ``grid.json``'s configuration spells it: ``{mode, value, layers}`` for one term on
    the target in scope all (``value`` as written after ``MODE:``, e.g. ``2*p_max``), else ``{ops: label}``;
    the baseline (None) as ``{}``."""
    if spec is None:
        return {}
    if spec.simple:
        term = spec.terms[0]
        return {"mode": term.op.mode, "value": term.op.label.partition(":")[2] or None, "layers": term.layers}
    return {"ops": spec.label}


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
        name = check_model_name(str(d.get("name") or Path(pretrained.rstrip("/")).name), f"models[{i}]: ")
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
    interventions: list = field(default_factory=lambda: ["set:p_max"])  # parsed into Specs
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
    controls: int = 0  # K random-neuron controls (seeds 0..K-1) beside every (intervention, target) cell
    control_stats: str | None = None  # the mask's STATS: controls matched on activation frequency
    vectors: str | None = None  # residual DiffMean vectors (lapeval vectors): add:α terms act on them
    # tasks (names or globs) evaluated only where they are self-language: in the baseline and in the cells whose
    # target is the task's language (or self); costly generation tasks without their cross-language cells
    self_only: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Normalise and validate, whether built from YAML, from flags or directly in Python."""
        for key in ("tasks", "targets", "include_path", "self_only"):
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
            self.interventions = ["set:p_max"]
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
        elif not self.model:
            raise GridError(NEEDS)
        if self.name is not None:
            self.name = check_model_name(str(self.name))
        if not self.tasks:
            raise GridError(NEEDS)
        if self.parallel not in ("cells", "requests"):
            raise GridError(f"parallel: {self.parallel!r}: use cells (ranks split the cells) or requests "
                            "(lm-eval's data parallelism inside each cell)")
        for key in ("batch_size", "bootstrap_iters", "ci_resamples", "seed", "controls"):
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
        return cls(**{k: v for k, v in d.items() if v is not None})

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
        from ..languages import normalize
        from ..models import check_model

        if self.model:
            check_model(self.model, "model:")

        self.targets = [t.strip().lower() if t.strip().lower() == "self" else normalize(t) for t in self.targets]
        if self.models is not None:  # each model's own grid checks its mask (before anything loads)
            for e in self.model_entries():
                self.for_model(e)
            return
        if self.targets and not self.neurons and not self.vectors:
            raise GridError("targets: given without neurons: (the mask file whose languages are amplified) or "
                            "vectors: (residual DiffMean vectors)")
        if self.vectors:
            self._check_vectors()
        if self.controls < 0 or (self.controls and not self.neurons):
            raise GridError(f"controls: {self.controls}: give a number of random-neuron controls (0 for none) and "
                            "neurons: (the mask they are drawn from)")
        if self.control_stats and not self.controls:
            raise GridError("control_stats: given without controls: K")
        if self.neurons:
            from ..intervention.setting import check_spec
            from ..masks import MaskError

            mask = self.mask
            missing = [t for t in self.targets if t != "self" and t not in mask.languages]
            if missing:
                raise GridError(f"target(s) {', '.join(missing)} not in the mask (it has {', '.join(mask.languages)})")
            for spec in self.interventions:  # every term against the mask, before anything loads
                try:
                    check_spec(spec, mask, self.targets)
                except (MaskError, InterventionError) as e:
                    raise GridError(f"intervention {spec.label!r}: {e}") from None
            for k in range(self.controls):  # drawn (and their statistics checked) before anything loads
                try:
                    self.cell_mask(Cell(None, None, k))
                except LapevalError as e:
                    raise GridError(f"controls: {e}") from None

        from ..models import check_device

        check_device(self.device, "device:")
        if isinstance(self.multiplex, bool):  # YAML 1.1 reads the documented on / off as booleans
            self.multiplex = "on" if self.multiplex else "off"
        if self.multiplex not in ("auto", "on", "off"):
            raise GridError(f"multiplex: {self.multiplex!r}: use auto, on or off")
        from ..lss.tasks import check_sources, lss_source

        lss_sources = [s for t in self.tasks if (s := lss_source(t))]
        for pattern in self.self_only:
            hits = [t for t in self.tasks if fnmatchcase(t, pattern)]
            if not hits:
                raise GridError(f"self_only: {printable(pattern)!r} matches none of tasks: (give task names or globs "
                                "such as flores_mt_*)")
            if any(lss_source(t) for t in hits):
                raise GridError(f"self_only: {printable(pattern)!r} matches LSS tasks: LSS(s, t) is cross-language by "
                                "construction (s ≠ t); leave the lss_* tasks out of self_only")
        if lss_sources and self.targets and all(src == t for src in lss_sources for t in self.targets):
            raise GridError(f"tasks: LSS(s, t) scores a target t on sources s ≠ t, and every pair here is s = t "
                            f"({', '.join(sorted(set(lss_sources)))}): add lss_<s> tasks of other languages")
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
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ("models", "model", "model_args", "neurons", "name")}
        if self.control_stats or self.vectors:
            raise GridError("control_stats: / vectors: belong to one model; with models:, give them per model "
                            "(run one grid per model) or leave them out")
        d.update(controls=self.controls if entry.neurons else 0)
        d.update(model=entry.pretrained, model_args=dict(entry.model_args), neurons=entry.neurons, name=entry.name,
                 targets=list(self.targets) if entry.neurons else [], output=str(Path(self.output) / "models" / safe_name(entry.name)))
        try:
            return GridConfig(**d)
        except GridError as e:
            raise GridError(f"models: {entry.name}: {e}") from None

    # ---- cells ---------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """The baseline, every (intervention, target) cell, then (``controls: K``) the cells of interventions
        with neuron terms on each of the K control masks (a residual-vector intervention alone would run
        unchanged on a control mask)."""
        real = [Cell(t, spec) for spec in self.interventions for t in self.targets]
        on_neurons = [c for c in real if any(term.site != "vec" for term in c.spec.terms)]
        return [Cell(), *real, *(Cell(c.target, c.spec, k) for k in range(self.controls) for c in on_neurons)]

    @property
    def vector_set(self):
        """The grid's :class:`~lapeval.vectors.ResidualVectors` (None without ``vectors:``), read once."""
        if not self.vectors:
            return None
        if self.vectors not in _VECTORS:
            from ..vectors import ResidualVectors

            _VECTORS[self.vectors] = ResidualVectors.load(Path(self.vectors).expanduser())
        return _VECTORS[self.vectors]

    def _check_vectors(self) -> None:
        """Every target is a language of the vectors and every intervention a valid vector steering (``add:α``,
        or ``vec:add:α`` terms beside a mask), before anything loads."""
        from ..intervention.setting import build_setting

        try:
            vecs = self.vector_set
            for t in self.targets:
                if t != "self":
                    vecs.code(t)
            lang = next((t for t in self.targets if t != "self"), vecs.languages[0])
            for spec in self.interventions:
                build_setting(self.mask, lang, None, None, None, ops=spec, vectors=vecs)
        except LapevalError as e:
            raise GridError(f"vectors: {e}") from None

    def cell_mask(self, cell: Cell):
        """The mask a cell's intervention acts on: the grid's, or its control of seed ``cell.control`` (drawn
        once per process, :func:`lapeval.control_mask`)."""
        if cell.control is None:
            return self.mask
        from ..identification.controls import control_mask

        key = (id(self.mask), cell.control, self.control_stats)
        if key not in _CONTROLS:
            _CONTROLS[key] = control_mask(self.mask, seed=cell.control, stats=self.control_stats)
        return _CONTROLS[key]

    @property
    def mask(self):
        """The grid's :class:`~lapeval.masks.NeuronMask` (None without ``neurons:``), read once per process
        (:func:`load_mask`)."""
        return load_mask(self.neurons) if self.neurons else None

    def cell_key(self, cell: Cell, mask_sha: str | None) -> str:
        """What determines a cell's numbers; equal keys = a finished cell can be reused."""
        k = {"model": self.model, "model_args": self.model_args, "tasks": self.tasks, "limit": self.limit,
             "num_fewshot": self.num_fewshot, "seed": self.seed, "batch_size": self.batch_size,
             "bootstrap_iters": self.bootstrap_iters, "cell": cell.key_fields(),
             "neurons_sha256": mask_sha if cell.target else None, "facts": self.facts,
             "scoring": 2}  # 2: LSS tasks in a call of their own (split_lss)
        if self.vectors:  # grids without vectors keep the keys they always had
            k["vectors_sha256"] = self.vector_set.sha256() if cell.target else None
        if cell.control is not None:  # the control is drawn from the mask with this seed (and these statistics)
            k["control_stats_sha256"] = _file_sha256(self.control_stats) if self.control_stats else None
        if self.self_only:  # grids without self_only keep the keys they always had
            k["self_only"] = self.self_only
        return hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]

    def self_only_tasks(self, names) -> list[str]:
        """The tasks among ``names`` that ``self_only`` names (exactly or by glob)."""
        return [n for n in names if any(fnmatchcase(n, p) for p in self.self_only)]

    def to_dict(self) -> dict:
        """The configuration as ``grid.json`` records it (interventions in their :func:`spec_fields` form)."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        d["interventions"] = [spec_fields(x) for x in self.interventions]
        if not self.controls:  # grids without controls (or vectors) keep the grid.json they always had
            del d["controls"], d["control_stats"]
        if not self.vectors:
            del d["vectors"]
        if not self.self_only:
            del d["self_only"]
        return d


MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_model_name(name, where: str = "") -> str:
    """A model's ``name:`` (its folder ``models/<name>``, its leaderboard row), single- or multi-model alike:
    ``name`` itself, or a one-line :class:`GridError` saying what is accepted."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        shown = repr(name) if len(str(name)) <= 60 else f"{str(name)[:60]!r}… ({len(str(name))} characters)"
        raise GridError(f"{where}name {printable(shown)}: use 1 to 100 letters, digits and . _ - (not starting with "
                        ". or -): it names a folder and a leaderboard row")
    return name


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
    from ..languages import LangMap, LangMapError

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


def _parse_intervention(x) -> Spec:
    """Any spec of :func:`~lapeval.intervention.operation.parse_ops` (a string, a mapping, a Spec) → its
    :class:`Spec`, parsed here once for the whole run; some term must act on the cell's target."""
    try:
        spec = parse_ops(x)
        require_target_term(spec)
    except LapevalError as e:
        label = spec.label if "spec" in locals() else None
        raise GridError(f"intervention {label!r}: {e}" if label else str(e)) from None
    return spec


_MASKS: dict[tuple, object] = {}
_CONTROLS: dict[tuple, object] = {}
_VECTORS: dict[str, object] = {}
_HASHES: dict[tuple, str] = {}


def _file_sha256(path) -> str:
    """sha256 of a file, once per process for a given file state (cell keys ask for it once per cell)."""
    from .._io import sha256_file

    p = Path(str(path)).expanduser()
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(p)
    return _HASHES[key]


def load_mask(path):
    """The :class:`~lapeval.masks.NeuronMask` of ``path``, read once per process for a given file state
    (path, size, modification time): the grid's configurations, cells and model share one object. A missing
    file is a one-line :class:`GridError`."""
    from ..masks import NeuronMask

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise GridError(f"mask file {path} does not exist: run lapeval identify or fix neurons:")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MASKS:
        mask = NeuronMask.load(p)
        _MASKS[key] = mask
    return _MASKS[key]



