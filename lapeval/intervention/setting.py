"""The intervention setting of a model, independent of any evaluation backend.

A :class:`Setting` is what the ``lape`` model arguments say — a mask, the languages whose neurons are
touched (explicit codes, ``all``, or ``self``: each request its own task's language), an
:class:`~lapeval.intervention.operation.Operation`, a layer subset — together with what every backend needs from it:

* the :class:`~lapeval.intervention.hooks.Intervention` of a language tuple (compiled once);
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

from ..languages import LangMap, resolve_task, split_list, task_direction
from ..masks import MaskError, NeuronMask
from .hooks import Composite, Intervention
from .operation import (
    LANG_WORDS,
    InterventionError,
    Operation,
    Spec,
    Term,
    adds_vector,
    layers_label,
    parse_layers,
    parse_ops,
    require_target_term,
)


class LapeConfigError(InterventionError):
    """A bad ``lape`` model argument: one line naming the fix."""


@dataclass(frozen=True)
class SettingTerm:
    """A term with its languages resolved against the mask: codes, or one word of :data:`LANG_WORDS`
    (resolved per request), and its layers as indices (None: all)."""

    op: Operation
    languages: tuple[str, ...] | str
    layers: tuple[int, ...] | None
    site: str = "neuron"  # or "residual" (a vector term), or "route" (a router term, on the languages' experts)

    @property
    def per_request(self) -> bool:
        return isinstance(self.languages, str)


Resolution = tuple[tuple[str, ...], ...]  # per term, the languages whose neurons it touches
_SITE = {None: "neuron", "vec": "residual", "route": "route"}  # a spec term's site → the setting's
_SPEC_SITE = {v: k for k, v in _SITE.items()}  # and back (its spelling's prefix, Term.label)


@dataclass
class Setting:
    """One intervention setting of the model: a mask and the terms of an intervention spec (languages,
    operation, layers each), applied in ``scope``."""

    mask: NeuronMask | None
    sha256: str | None
    terms: tuple[SettingTerm, ...]
    scope: str = "all"
    lang_map: LangMap | None = None  # task name / glob → language, for self / src / tgt
    vectors: object | None = None  # ResidualVectors for residual terms (lapeval.vectors)
    _compiled: dict = field(default_factory=dict, repr=False)
    used: set = field(default_factory=set, repr=False)
    unmodified: dict = field(default_factory=dict, repr=False)  # per request: task → {"requests", "reason"}

    # ---- what it is ------------------------------------------------------------------------------
    @property
    def single(self) -> bool:
        """One term in scope ``all``: the one-operation setting of ``lang=/mode=/value=/layers=``."""
        return len(self.terms) == 1 and self.scope == "all"

    @property
    def per_request(self) -> bool:
        """Whether some term's languages come from each request's task (``self``, ``src``, ``tgt``)."""
        return any(t.per_request for t in self.terms)

    @property
    def fixed(self) -> Resolution | None:
        """The languages of every term when none depends on the request, else None."""
        return None if self.per_request else tuple(t.languages for t in self.terms)

    # the one-term view (lang=/mode=/layers=), kept for callers of the one-operation setting
    @property
    def lang(self) -> tuple[str, ...] | None:
        """The languages of a one-term setting; None under ``self`` (or for several terms)."""
        t = self.terms[0]
        return None if len(self.terms) > 1 or t.per_request else t.languages

    @property
    def op(self) -> Operation:
        return self.terms[0].op

    @property
    def layers(self) -> tuple[int, ...] | None:
        return self.terms[0].layers

    @property
    def label(self) -> str:
        """``set:p_max``, ``zero@0-5`` (one term), ``zero@en;set:p_max@fr;scope:generation``: the one spelling of
        :mod:`lapeval.intervention.operation` (a one-term setting without its languages, as before)."""
        if self.single:
            return Term(self.op, None, layers_label(self.layers), _SPEC_SITE[self.terms[0].site]).label
        return Spec(tuple(Term(t.op, (t.languages,) if isinstance(t.languages, str) else t.languages,
                               layers_label(t.layers), _SPEC_SITE[t.site])
                          for t in self.terms), self.scope).label

    def _resolution(self, langs) -> Resolution:
        if langs is None:
            langs = self.fixed
            if langs is None:
                raise LapeConfigError("this setting's languages depend on each request (self/src/tgt): route requests")
        langs = tuple(langs)
        if langs and all(isinstance(x, str) for x in langs):  # one term's languages
            if len(self.terms) != 1:
                raise LapeConfigError(f"give one language tuple per term ({len(self.terms)} terms)")
            langs = (langs,)
        if len(langs) != len(self.terms):
            raise LapeConfigError(f"give one language tuple per term ({len(self.terms)} terms)")
        return tuple(tuple(x) for x in langs)

    def intervention(self, langs=None) -> Intervention | Composite:
        """The compiled intervention for the resolved languages of every term (``("fr",)`` for one term; None
        for a setting whose languages are fixed). A one-term setting in scope ``all`` gives its
        :class:`Intervention`, anything else a :class:`Composite`."""
        res = self._resolution(langs)
        if res not in self._compiled:
            parts = tuple(self._compile(t, r) for t, r in zip(self.terms, res))
            self._compiled[res] = parts[0] if self.single else Composite(parts, self.scope)
        for r in res:
            self.used.update(r)
        return self._compiled[res]

    def _compile(self, t: SettingTerm, langs) -> Intervention:
        if t.site == "residual":
            return Intervention.from_vectors(self.vectors, langs, t.op, layers=t.layers)
        if t.site == "route":
            return Intervention.from_experts(self.mask, langs, t.op, layers=t.layers)
        return Intervention.from_mask(self.mask, langs, t.op, layers=t.layers)

    def key(self, langs=None) -> dict:
        """What determines the computation for requests run with ``langs`` (cache key, provenance). A
        one-term setting in scope all keeps the key it always had (old caches and grid cells stay valid)."""
        return self._key(self._resolution(langs))

    def _key(self, per_term) -> dict:
        """The key with each term's languages as given: codes, or (provenance only) a per-request word."""
        def term(t: SettingTerm, r) -> dict:
            d = {"languages": r if isinstance(r, str) else list(r), "mode": t.op.mode, "value": t.op.value,
                 "layers": "all" if t.layers is None else list(t.layers)}
            if t.op.factor != 1.0:
                d["factor"] = t.op.factor
            if t.site != "neuron":
                d["site"] = t.site
            return d

        files = {"neurons_sha256": self.sha256}
        if self.vectors is not None:  # neuron-only settings keep the key they always had
            files["vectors_sha256"] = self.vectors.sha256() if self.vectors.path else "unsaved"
        if self.single:
            return {**files, **term(self.terms[0], per_term[0])}
        return {**files, "terms": [term(t, r) for t, r in zip(self.terms, per_term)], "scope": self.scope}

    def describe(self) -> dict:
        """Provenance (``config.lape.intervention``): the key, the mask, the label and, when languages come from
        the requests, the languages they were routed to and, per task, the requests that ran unmodified."""
        def shown(t: SettingTerm):  # a one-term self setting lists the languages it was routed to
            if not t.per_request:
                return list(t.languages)
            return sorted(self.used) if self.single else t.languages

        def counts(t: SettingTerm) -> dict:
            langs = sorted(self.used) if t.per_request else t.languages
            return {l: self._compile(t, (l,)).n_neurons for l in langs}

        d = self._key([shown(t) for t in self.terms])
        if self.single:
            d["lang"] = self.terms[0].languages if self.terms[0].per_request else list(self.terms[0].languages)
        if self.mask is not None:
            d.update(label=self.label, neurons=str(self.mask.path) if self.mask.path else None,
                     mask_languages=list(self.mask.languages))
        else:
            d.update(label=self.label)
        if self.vectors is not None:
            d.update(vectors=str(self.vectors.path) if self.vectors.path else None,
                     vector_languages=list(self.vectors.languages))
        count_of = lambda t: "n_experts" if t.site == "route" else "n_neurons"  # noqa: E731
        if self.single:
            d[count_of(self.terms[0])] = counts(self.terms[0])
        else:
            for t, dt in zip(self.terms, d["terms"]):
                dt[count_of(t)] = counts(t)
        if self.lang_map:
            d["lang_map"] = self.lang_map.to_dict()
        if self.per_request:
            if not self.single:
                d["routed_languages"] = sorted(self.used)
            d["unmodified"] = {t: dict(v) for t, v in sorted(self.unmodified.items())}
        return d

    # ---- per request -----------------------------------------------------------------------------
    def self_language(self, task_name: str | None, metadata: Mapping | None = None) -> tuple[str | None, str]:
        """For ``self``: (the mask's code of the language task ``task_name`` evaluates, "") or (None, why)
        when its language is unknown or not in the mask."""
        if not task_name:
            return None, "the request names no task"
        found = resolve_task(task_name, metadata, self.lang_map)
        if found.language is None:
            return None, f"no language known for this task ({found.reason}); lang_map= can name one"
        return self._in_mask(found.language)

    def _in_mask(self, lang: str) -> tuple[str | None, str]:
        """The code of ``lang`` in the setting's mask and vectors (those it has), or (None, why)."""
        from ..vectors import VectorsError

        code = lang
        try:
            if self.mask is not None:
                code = self.mask.code(lang)
        except MaskError:
            return None, f"{lang} not in mask"
        try:
            if self.vectors is not None:
                code = self.vectors.code(code)
        except VectorsError:
            return None, f"{lang} not in vectors"
        return code, ""

    def _languages(self) -> list[str]:
        return list(self.mask.languages if self.mask is not None else self.vectors.languages)

    def word_language(self, word: str, task_name: str | None, metadata: Mapping | None = None) -> tuple[str | None, str]:
        """The language ``self`` / ``src`` / ``tgt`` names for a request of ``task_name``: (code, "") or (None, why).
        ``src`` / ``tgt`` are a translation task's sides (:func:`lapeval.languages.task_direction`); any other
        task's prompt is in its own language, which is then both (``zero@src;set:p_max`` on ``lss_fr``: leave
        French, the facts' language, for the target)."""
        if word == "self":
            return self.self_language(task_name, metadata)
        if not task_name:
            return None, "the request names no task"
        direction = task_direction(task_name, metadata)
        if direction is None:
            return self.self_language(task_name, metadata)
        return self._in_mask(direction[0] if word == "src" else direction[1])

    def language_of(self, task_name: str | None, metadata: Mapping | None = None) -> str:
        """For ``lang=self``, strictly: the mask's code of the task's language, or a one-line error."""
        code, why = self.self_language(task_name, metadata)
        if code is not None:
            return code
        if why.endswith("not in mask"):
            raise MaskError(f"lang=self: task {task_name} is in {why.split()[0]}, which the mask has no neurons for "
                            f"(it has: {', '.join(self._languages())}); run it with an explicit lang= or another mask")
        raise LapeConfigError(f"lang=self: task {task_name!r} names no language; give lang= explicitly for it "
                              "(or lang_map=)")

    def resolve(self, task_name: str | None, metadata: Mapping | None = None) -> tuple[Resolution | None, str]:
        """Every term's languages for a request of ``task_name``: (resolution, "") or (None, why not)."""
        out = []
        for t in self.terms:
            if not t.per_request:
                out.append(t.languages)
                continue
            code, why = self.word_language(t.languages, task_name, metadata)
            if code is None:
                return None, why if len(self.terms) == 1 else f"{t.languages}: {why}"
            out.append((code,))
        return tuple(out), ""

    def route(self, task_names: Sequence[str | None], metadata: Mapping[str, Mapping] | None = None,
              ) -> list[tuple[Resolution | tuple[str, ...] | None, list[int]]]:
        """Requests (by their task names) grouped by the languages their terms touch:
        ``[(languages, [request index, ...]), ...]``, sorted; a one-term setting's group is its language
        tuple (``("fr",)``), a composite's one tuple per term. When a term's languages come from the request
        (``self``/``src``/``tgt``) and cannot be found, the request runs unmodified (group ``None``) and is
        counted in :attr:`unmodified`: it never gets another language's neurons. ``metadata``: each task's
        config metadata by name (``lapeval_language``), where known."""
        if not self.per_request:
            key = self.fixed[0] if len(self.terms) == 1 else self.fixed
            return [(key, list(range(len(task_names))))]
        verdicts: dict[str | None, tuple[Resolution | None, str]] = {}
        groups: dict = {}
        for i, task in enumerate(task_names):
            if task not in verdicts:
                verdicts[task] = self.resolve(task, (metadata or {}).get(task) if task else None)
            res, why = verdicts[task]
            key = None if res is None else (res[0] if len(self.terms) == 1 else res)
            groups.setdefault(key, []).append(i)
            if res is None:
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


class MissingValuesError(MaskError):
    """A term takes its value from the mask (``p_max`` / ``p_median``) and the mask lacks it for some of the
    languages the term acts on: ``kind`` and ``languages`` say which."""

    def __init__(self, message: str, kind: str, languages: list[str]) -> None:
        super().__init__(message)
        self.kind, self.languages = kind, languages


def check_spec(spec: Spec, mask: NeuronMask, targets: Sequence[str] | None = None) -> None:
    """Everything about ``spec`` that can be checked against ``mask`` before any model loads — the one check
    of lapeval's three spec surfaces (``lape`` arguments, grid interventions, search-factor candidates):

    * with ``targets`` (the languages terms without ``@LANGS`` act on): some term acts on the target
      (:func:`~lapeval.intervention.operation.require_target_term`), and every target is in the mask;
    * every language a term names is in the mask, every layer subset fits its layers;
    * a router term (``route:``) has experts to act on (a mixture-of-experts mask holding them), and no term
      takes a test-time statistic on a routed model;
    * every value a term takes from the mask (``p_max`` / ``p_median``) is stored for each language the term
      acts on (named ones; ``all``: every language of the mask; none: ``targets``; ``self`` / ``src`` /
      ``tgt``: every language of the mask, as any may be routed to).

    One-line :class:`~lapeval.masks.MaskError` (:class:`MissingValuesError` for values) or
    :class:`InterventionError`."""
    codes = None
    if targets is not None:
        require_target_term(spec)
        codes = [mask.code(t) for t in targets if t != "self"]
    if mask.is_moe:
        _require_routable(spec, mask)
    for t in spec.terms:
        if t.site == "route" and not (mask.is_moe and mask.experts):
            where = f" {mask.path}" if mask.path else ""
            raise MaskError(f"{t.label}: mask{where} holds no language-specific experts (route: terms act on a "
                            "mixture-of-experts model's experts; lapeval identify on a routed model selects them)")
        named = [l for l in t.languages or () if l not in (*LANG_WORDS, "all")]
        for lang in named:
            mask.code(lang)
        if t.layers:
            parse_layers(t.layers, mask.n_layers)
        kind = t.op.mask_values
        if not kind:
            continue
        if named:
            langs = [mask.code(l) for l in named]
        elif t.languages is None and codes is not None and not (targets and "self" in targets):
            langs = codes
        else:
            langs = list(mask.languages)
        lacking = [l for l in langs if kind not in mask.sets[l].values]
        if lacking:
            where = f" {mask.path}" if mask.path else ""
            raise MissingValuesError(f"mask{where} has no {kind} values for {', '.join(lacking)}: use a number, "
                                     "tt_max / tt_p10, or a mask from lapeval identify, which stores p_max/p_median "
                                     "from the activation statistics", kind, lacking)


def _require_routable(spec: Spec, mask: NeuronMask) -> None:
    """On a mixture-of-experts mask, what acts on routed layers so far: neuron terms with a number, p_max or
    p_median (not test-time statistics), and router terms; one-line :class:`LapeConfigError` otherwise."""
    for t in spec.terms:
        if t.site is None and t.op.statistic:
            raise LapeConfigError(f"{t.op.label} on a mixture-of-experts mask: test-time statistics are not "
                                  "defined on routed layers (a token has activations in its top-k experts only); use a "
                                  "number, p_max or p_median")


def build_setting(neurons, lang, mode, value, layers, n_layers: int | None = None, d_ff: int | None = None,
                  lang_map=None, ops=None, scope=None, vectors=None, hidden: int | None = None) -> Setting | None:
    """Validate the ``lape`` arguments (one-line errors) and build the :class:`Setting`; None = no intervention.

    ``neurons``: a mask path or :class:`~lapeval.masks.NeuronMask`; ``vectors``: a residual-vectors path or
    :class:`~lapeval.vectors.ResidualVectors` (DiffMean; terms then add α · v to the decoder layers' outputs —
    every term when no mask is given, else the terms written ``vec:add:α``); ``ops``: an intervention spec
    (:func:`lapeval.intervention.operation.parse_ops`: ``zero@en;set:p_max@fr``), or else the one-term shorthand
    ``mode`` / ``value`` (:meth:`Operation.parse`); ``lang``: the languages of terms that name none — a code,
    several (``en+zh``, a list), ``all``, ``self``, ``src`` or ``tgt``; ``layers``: the layers of terms that
    name none (``0-5``, ``0+3+17``; default all); ``scope``: all | prompt | generation | last; ``n_layers`` /
    ``d_ff`` / ``hidden``: the model's shape, checked against the mask and vectors when given; ``lang_map``: a
    :class:`~lapeval.languages.LangMap`, dict or ``PATTERN:LANG;...`` string (for ``self``/``src``/``tgt``)."""
    lmap = LangMap.parse(lang_map)
    no_mask = neurons is None or (isinstance(neurons, str) and not neurons.strip())
    no_vec = vectors is None or (isinstance(vectors, str) and not vectors.strip())
    if no_mask and no_vec:
        given = [k for k, v in (("ops", ops), ("lang", lang), ("mode", mode), ("value", value), ("layers", layers),
                                ("scope", scope)) if v is not None]
        if given:
            raise LapeConfigError(f"{'/'.join(given)}= given without neurons=: pass neurons=<mask .safetensors file> "
                                  "(or vectors=<residual vectors file>)")
        return None
    if ops is not None and (mode is not None or value is not None):
        raise LapeConfigError("ops= and mode=/value= both given: write the operation once, in ops= "
                              "(terms MODE[:VALUE]@LANGS[@LAYERS] joined by ;)")
    try:
        spec = parse_ops(ops, "ops=", scope=scope) if ops is not None else None
    except InterventionError as e:
        raise LapeConfigError(str(e)) from None
    mask = None if no_mask else neurons if isinstance(neurons, NeuronMask) else NeuronMask.load(Path(str(neurons)).expanduser())
    if mask is not None and mask.is_moe:
        _require_routable(spec if spec is not None else parse_ops(Operation.parse(mode, value), scope=scope), mask)
    vecs = None
    if not no_vec:
        from ..vectors import ResidualVectors

        vecs = vectors if isinstance(vectors, ResidualVectors) else ResidualVectors.load(Path(str(vectors)).expanduser())
    if spec is None:
        spec = parse_ops(Operation.parse(mode, value), scope=scope)
    if n_layers is not None:
        if mask is not None:
            mask.check_model(n_layers, d_ff)
        if vecs is not None and hidden is not None:
            vecs.check_model(n_layers, hidden)
    source_layers = mask.n_layers if mask is not None else vecs.n_layers
    default_layers = parse_layers(layers, source_layers)
    default_langs = None if lang is None or (isinstance(lang, str) and not lang.strip()) else lang
    terms = []
    for t in spec.terms:
        where = "" if spec.simple else f"ops= term {t.label!r}: "
        site = "residual" if mask is None and t.site is None else _SITE[t.site]
        if site == "residual" and vecs is None:
            raise LapeConfigError(f"{where}a vec: term needs vectors=<residual vectors file> (lapeval vectors)")
        if site == "route" and (mask is None or not mask.is_moe):
            raise LapeConfigError(f"{where}{t.label} acts on a mixture-of-experts router: give neurons=<the routed "
                                  "model's mask> (lapeval identify on a mixture-of-experts model)")
        source = vecs if site == "residual" else mask
        if site == "residual" and not adds_vector(t.op):
            raise LapeConfigError(f"{where}{t.op.label} on residual vectors: a vector term adds α · v, write "
                                  "mode=add,value=α (or vec:add:α in ops=)")
        langs = t.languages
        if langs is None:
            if default_langs is None:
                if spec.simple:
                    raise LapeConfigError(f"{'neurons' if mask is not None else 'vectors'}= needs lang=: one of "
                                          f"{', '.join(source.languages)}, several joined by +, all, self (each "
                                          "task's language), src or tgt (a translation's sides)")
                raise LapeConfigError(f"{where}names no languages and no lang= is given: write it "
                                      f"{t.op.label}@LANG (one of {', '.join(source.languages)}, all, self, src, tgt)")
            langs = tuple(split_list(default_langs)) if isinstance(default_langs, str) else tuple(default_langs)
        words = [l.strip().lower() for l in langs]
        if len(words) == 1 and words[0] in LANG_WORDS:
            resolved: tuple[str, ...] | str = words[0]
        elif len(words) == 1 and words[0] == "all":
            resolved = tuple(source.languages)
        else:
            if any(w in (*LANG_WORDS, "all") for w in words):
                raise LapeConfigError(f"{where}{'/'.join(w for w in words if w in (*LANG_WORDS, 'all'))} stands alone "
                                      "(not joined with other languages by +)")
            resolved = tuple(dict.fromkeys(source.code(l) for l in langs))
            if not resolved:
                raise LapeConfigError(f"{where}empty lang=: use codes of this mask ({', '.join(source.languages)})")
        try:
            chosen = parse_layers(t.layers, source.n_layers) if t.layers is not None else default_layers
        except InterventionError as e:
            raise LapeConfigError(f"{where}{e}") from None
        terms.append(SettingTerm(t.op, resolved, chosen, site))
    sha = (mask.sha256() if mask.path else "unsaved") if mask is not None else None
    setting = Setting(mask, sha, tuple(terms), spec.scope, lmap, vecs)
    for t in setting.terms:  # validates values (p_max present ...) now, not mid-run
        if not t.per_request:
            setting._compile(t, t.languages)
        elif t.site == "neuron" and t.op.mask_values and not mask.has_values(t.op.mask_values):
            mask.values_per_layer(next(l for l in mask.languages if t.op.mask_values not in mask.sets[l].values),
                                  t.op.mask_values)
    return setting
