"""The intervention setting of a model, independent of any evaluation backend.

A :class:`Setting` is what the ``lape`` model arguments say — a mask, the languages whose neurons are
touched (explicit codes, ``all``, or ``self``: each request its own task's language), an
:class:`~lapeval.operation.Operation`, a layer subset — together with what every backend needs from it:

* the :class:`~lapeval.intervene.Intervention` of a language tuple (compiled once);
* per-request routing (:meth:`Setting.route`): which requests run under which languages' neurons; under
  ``lang=self`` a request whose task has no known language, or one the mask lacks, runs unmodified and is
  counted per task (``unmodified`` in :meth:`Setting.describe`), never given another language's neurons;
* provenance (:meth:`Setting.describe`, the ``config.lape`` of lm-eval's results JSON);
* the identity a cached answer is keyed on (:meth:`Setting.key`, :func:`cache_identity`).

lm-eval's HF model (:class:`lapeval.lm.LapeLM`) only adds what is specific to it: HFLM request methods,
padding taps and CachingLM's database; a second backend would reuse everything here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .intervene import Intervention, InterventionError, Operation, parse_layers
from .languages import LangMap, resolve_task, split_list
from .masks import MaskError, NeuronMask
from .operation import spec_label


class LapeConfigError(InterventionError):
    """A bad ``lape`` model argument: one line naming the fix."""


@dataclass
class Setting:
    """One intervention setting of the model: a mask, languages (or ``self``), an operation, layers."""

    mask: NeuronMask
    sha256: str
    lang: tuple[str, ...] | None  # None = self
    op: Operation
    layers: tuple[int, ...] | None
    lang_map: LangMap | None = None  # task name / glob → language, for lang=self
    _compiled: dict = field(default_factory=dict, repr=False)
    used: set = field(default_factory=set, repr=False)
    unmodified: dict = field(default_factory=dict, repr=False)  # lang=self: task → {"requests", "reason"}

    @property
    def label(self) -> str:
        """``set:p_max``, ``zero@0-5``: the operation and layers in the one spelling of :mod:`lapeval.operation`."""
        return spec_label(self.op, self.layers)

    def intervention(self, langs: tuple[str, ...]) -> Intervention:
        if langs not in self._compiled:
            self._compiled[langs] = Intervention.from_mask(self.mask, langs, self.op, layers=self.layers)
        self.used.update(langs)
        return self._compiled[langs]

    def key(self, langs: tuple[str, ...]) -> dict:
        """What determines the computation for requests run with ``langs`` (cache key, provenance)."""
        return {"neurons_sha256": self.sha256, "languages": list(langs), "mode": self.op.mode,
                "value": self.op.value, "layers": "all" if self.layers is None else list(self.layers)}

    def describe(self) -> dict:
        """Provenance (``config.lape.intervention``): the key, the mask, and under ``lang=self`` the
        languages requests were routed to and, per task, the requests that ran unmodified and why."""
        d = self.key(self.lang or ())
        d["lang"] = "self" if self.lang is None else list(self.lang)
        if self.lang is None:
            d["languages"] = sorted(self.used)
        d.update(label=self.label, neurons=str(self.mask.path) if self.mask.path else None,
                 mask_languages=list(self.mask.languages),
                 n_neurons={l: self.intervention((l,)).n_neurons for l in (self.lang or sorted(self.used))})
        if self.lang_map:
            d["lang_map"] = self.lang_map.to_dict()
        if self.lang is None:
            d["unmodified"] = {t: dict(v) for t, v in sorted(self.unmodified.items())}
        return d

    def self_language(self, task_name: str | None, metadata: Mapping | None = None) -> tuple[str | None, str]:
        """For ``lang=self``: (the mask's code of the language task ``task_name`` evaluates, "") or (None,
        why) when its language is unknown or not in the mask."""
        if not task_name:
            return None, "the request names no task"
        found = resolve_task(task_name, metadata, self.lang_map)
        if found.language is None:
            return None, f"no language known for this task ({found.reason}); lang_map= can name one"
        try:
            return self.mask.code(found.language), ""
        except MaskError:
            return None, f"{found.language} not in mask"

    def language_of(self, task_name: str | None, metadata: Mapping | None = None) -> str:
        """For ``lang=self``, strictly: the mask's code of the task's language, or a one-line error."""
        code, why = self.self_language(task_name, metadata)
        if code is not None:
            return code
        if why.endswith("not in mask"):
            raise MaskError(f"lang=self: task {task_name} is in {why.split()[0]}, which the mask has no neurons for "
                            f"(it has: {', '.join(self.mask.languages)}); run it with an explicit lang= or another mask")
        raise LapeConfigError(f"lang=self: task {task_name!r} names no language; give lang= explicitly for it "
                              "(or lang_map=)")

    def route(self, task_names: Sequence[str | None], metadata: Mapping[str, Mapping] | None = None,
              ) -> list[tuple[tuple[str, ...] | None, list[int]]]:
        """Requests (by their task names) grouped by the languages whose neurons they run with:
        ``[(languages, [request index, ...]), ...]``, sorted by languages; under ``lang=self`` the group
        ``None`` runs unmodified (its requests are counted in :attr:`unmodified`). ``metadata``: each task's
        config metadata by name (``lapeval_language``), where known."""
        if self.lang is not None:
            return [(self.lang, list(range(len(task_names))))]
        verdicts: dict[str | None, tuple[str | None, str]] = {}
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, task in enumerate(task_names):
            if task not in verdicts:
                verdicts[task] = self.self_language(task, (metadata or {}).get(task) if task else None)
            code, why = verdicts[task]
            groups.setdefault(None if code is None else (code,), []).append(i)
            if code is None:
                entry = self.unmodified.setdefault(str(task), {"requests": 0, "reason": why})
                entry["requests"] += 1
        return sorted(groups.items(), key=lambda g: (g[0] is not None, g[0] or ()))


def route(setting: Setting | None, task_names: Sequence[str | None], metadata: Mapping[str, Mapping] | None = None,
          ) -> list[tuple[tuple[str, ...] | None, list[int]]]:
    """:meth:`Setting.route`, with ``None`` (no intervention) as one group of every request."""
    if setting is None:
        return [(None, list(range(len(task_names))))]
    return setting.route(task_names, metadata)


def cache_identity(model: str, dtype: str, setting: Setting | None, langs: tuple[str, ...] | None) -> dict:
    """What a cached answer depends on besides the request: the model, its dtype, the intervention.

    Under ``lang=self`` the languages are those the request was routed to (after ``lang_map`` and the
    task's metadata), and None for a request that ran unmodified: routing enters every key through the
    languages actually applied, so a changed ``lang_map`` never reuses an answer computed otherwise."""
    return {"model": model, "dtype": dtype, "intervention": None if langs is None else setting.key(langs)}


def build_setting(neurons, lang, mode, value, layers, n_layers: int | None = None, d_ff: int | None = None,
                  lang_map=None) -> Setting | None:
    """Validate the ``lape`` arguments (one-line errors) and build the :class:`Setting`; None = no intervention.

    ``neurons``: a mask path or :class:`~lapeval.masks.NeuronMask`; ``lang``: a code, several (``en+zh``,
    a list), ``all`` or ``self``; ``mode`` / ``value``: :meth:`Operation.parse`; ``layers``: ``0-5``, ``0+3+17``
    or all; ``n_layers`` / ``d_ff``: the model's shape, checked against the mask when given; ``lang_map``:
    a :class:`~lapeval.languages.LangMap`, dict or ``PATTERN:LANG;...`` string (for ``lang=self``)."""
    lmap = LangMap.parse(lang_map)
    if neurons is None or (isinstance(neurons, str) and not neurons.strip()):
        given = [k for k, v in (("lang", lang), ("mode", mode), ("value", value), ("layers", layers)) if v is not None]
        if given:
            raise LapeConfigError(f"{'/'.join(given)}= given without neurons=: pass neurons=<mask .safetensors file>")
        return None
    mask = neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser())
    op = Operation.parse(mode, value)
    if n_layers is not None:
        mask.check_model(n_layers, d_ff)
    chosen = parse_layers(layers, mask.n_layers)
    if lang is None or (isinstance(lang, str) and not lang.strip()):
        raise LapeConfigError(f"neurons= needs lang=: one of {', '.join(mask.languages)}, several joined by +, all, or self")
    if isinstance(lang, str) and lang.strip().lower() == "self":
        langs = None
    elif isinstance(lang, str) and lang.strip().lower() == "all":
        langs = tuple(mask.languages)
    else:
        langs = tuple(dict.fromkeys(mask.code(l) for l in split_list(lang)))
        if not langs:
            raise LapeConfigError(f"empty lang=: use codes of this mask ({', '.join(mask.languages)})")
    sha = mask.sha256() if mask.path else "unsaved"
    setting = Setting(mask, sha, langs, op, chosen, lmap)
    if langs is not None:
        setting.intervention(langs)  # validates values (p_max present ...) now, not mid-run
    return setting
