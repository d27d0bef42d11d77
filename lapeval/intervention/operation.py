"""Interventions on language neurons and their one spelling.

A **term** is one operation on the neurons of some languages in some layers,
``MODE[:VALUE][@LANGS][@LAYERS]``: ``zero@en``, ``set:p_max@fr``, ``add:2*p_max@ja@10-17``, ``scale:2@0-5``
(a part after ``@`` made of digits, ``-`` and ``+`` is a layer subset; any other part names languages,
joined by ``+``: codes, ``all``, or a word resolved per request — ``self`` the task's language, ``src`` /
``tgt`` the source / target of a translation task). A term without languages takes the default of its
context: the ``lang=`` model argument, a grid cell's target, a search's target.

An **intervention spec** (:class:`Spec`) is one or more terms joined by ``;`` and applied together in one
forward, in the order written, each to the result of the previous one (so on a neuron that two terms share,
a later ``set``/``zero`` wins and a later ``scale``/``add`` composes), optionally with a **scope** — where in
the sequence the terms act (:data:`SCOPES`, formulas in :mod:`lapeval.intervention.hooks`)::

    zero@en;set:p_max@fr                  leave English, enter French (Gurgurov et al. 2025)
    add:2*p_max@tgt;scope:generation      push the target by twice its p_max, on generated tokens only

Two prefixes move a term off the neurons: ``vec:add:α`` adds α times the languages' residual vectors to the
decoder layers' outputs (``vectors=``, DiffMean), and on a mixture-of-experts mask ``route:ban`` /
``route:bias:β`` act on the router, on the languages' experts (``L.expert`` of the mask): ``ban`` sets their
logits to −∞ before top-k (no token is routed to them), ``bias:β`` adds β to their logits (docs/method §12).

A **value** is a number, a mask statistic (``p_max``, ``p_median``), a test-time statistic (``tt_max``,
``tt_p<q>``), or a factor times a statistic (``2*p_max``, also written ``2·p_max``); ``scale:α`` multiplies.

:func:`parse_ops` reads every form (string, mapping, list of terms) wherever a spec appears — ``lape`` model
arguments (``ops=``, or the one-term shorthand ``lang=/mode=/value=/layers=``), grid YAML, search-factor
candidates — and :attr:`Spec.label` writes the one canonical spelling used in provenance, cache keys, cell
ids and, through :func:`file_name`, folder names. Pure Python: no torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import LapevalError

MODES = ("zero", "set", "scale", "add")
ROUTE_MODES = ("ban", "bias")  # on a mixture-of-experts router: route:ban, route:bias:β
MASK_VALUES = ("p_max", "p_median")
SCOPES = ("all", "prompt", "generation", "last")
LANG_WORDS = ("self", "src", "tgt")  # languages resolved per request
_TT = re.compile(r"^tt_(max|p(\d+(?:\.\d+)?))$")
_FACTOR = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)\s*[*·]\s*(.+)$")
_LAYERS_PART = re.compile(r"^[\d\s+\-\[\]]+$")


class InterventionError(LapevalError, ValueError):
    """A bad intervention setting (mode, value, layers, languages): one line naming the fix."""


# ---- the operation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """``mode`` (zero | set | scale | add) with its ``value``: a float, ``p_max``/``p_median``,
    ``tt_max`` or ``tt_p<q>``, multiplied by ``factor`` (``add:2*p_max``: value p_max, factor 2; only with a
    statistic). Formulas in :mod:`lapeval.intervention.hooks`."""

    mode: str
    value: float | str | None = None
    factor: float = 1.0

    @classmethod
    def parse(cls, mode, value=None) -> "Operation":
        if mode is None or str(mode).strip() == "":
            raise InterventionError(f"mode= is required with neurons=: use one of {', '.join(MODES)}")
        m = str(mode).strip().lower()
        if m not in MODES:
            raise InterventionError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        factor, v = _parse_graded(value)
        if factor != 1.0 and m not in ("set", "add"):
            raise InterventionError(f"mode={m} takes no factor·statistic value (got {value!r}); "
                                    "a graded value goes with set or add, e.g. add:2*p_max")
        if m == "zero":
            if v not in (None, 0.0):
                raise InterventionError(f"mode=zero takes no value (got value={value!r}); use mode=set,value=... to set")
            return cls("zero", None)
        if v is None:
            hint = "a factor such as 2" if m == "scale" else "a number, p_max, p_median, tt_max or tt_p10"
            raise InterventionError(f"mode={m} needs value= ({hint})")
        if m == "scale" and not isinstance(v, float):
            raise InterventionError(f"mode=scale takes a numeric factor, not value={value!r}")
        return cls(m, v, factor)

    @classmethod
    def parse_route(cls, mode, value=None) -> "Operation":
        """A router operation (:data:`ROUTE_MODES`): ``ban`` (no value; the expert's logit → −∞) or ``bias`` with a
        finite number β (β added to the expert's logit)."""
        m = "" if mode is None else str(mode).strip().lower()
        if m not in ROUTE_MODES:
            raise InterventionError(f"unknown router operation {mode!r}: use route:ban or route:bias:β (e.g. route:bias:2)")
        v = _parse_value(value)
        if m == "ban":
            if v is not None:
                raise InterventionError(f"route:ban takes no value (got {value!r}); to favour or disfavour an expert "
                                        "write route:bias:β")
            return cls("ban", None)
        if not isinstance(v, float):
            raise InterventionError(f"route:bias needs a number β (got {value!r}), e.g. route:bias:2 or route:bias:-1")
        return cls("bias", v)

    @property
    def mask_values(self) -> str | None:
        """``p_max`` / ``p_median`` when the value comes from the mask file."""
        return self.value if self.value in MASK_VALUES else None

    @property
    def statistic(self) -> tuple[str, float] | None:
        """``("max", 0)`` for tt_max, ``("quantile", q)`` for tt_p<q>, None otherwise."""
        if not isinstance(self.value, str):
            return None
        m = _TT.match(self.value)
        if m is None:
            return None
        return ("max", 0.0) if m.group(1) == "max" else ("quantile", float(m.group(2)))

    @property
    def label(self) -> str:
        """The canonical spelling: ``zero``, ``set:p_max``, ``scale:2``, ``add:0.5``, ``add:2*p_max``."""
        if self.value is None:
            return self.mode
        graded = "" if self.factor == 1.0 else f"{format_value(self.factor)}*"
        return f"{self.mode}:{graded}{format_value(self.value)}"

    def __str__(self) -> str:
        return self.label


def format_value(v) -> str:
    """``2.0`` → ``2``, ``0.5`` → ``0.5``, ``p_max`` → ``p_max``."""
    return format(v, "g") if isinstance(v, float) else str(v)


def _parse_graded(value) -> tuple[float, float | str | None]:
    """``2*p_max`` / ``2·p_max`` → (2.0, "p_max"); anything else → (1.0, its value)."""
    if isinstance(value, str):
        m = _FACTOR.match(value.strip().lower())
        if m is not None:
            factor, base = float(m.group(1)), _parse_value(m.group(2))
            if not math.isfinite(factor):
                raise InterventionError(f"value={value!r}: the factor is not a finite number")
            if not isinstance(base, str):
                raise InterventionError(f"value={value!r}: a factor multiplies a statistic (p_max, p_median, "
                                        "tt_max, tt_p<q>); for a number write the product")
            return factor, base
    return 1.0, _parse_value(value)


def _parse_value(value) -> float | str | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise InterventionError(f"value={value!r} is not a number, p_max, p_median, tt_max or tt_p<q>")
    if isinstance(value, (int, float)):
        f = float(value)
        if not math.isfinite(f):
            raise InterventionError(f"value={value!r} is not a finite number")
        return f
    s = str(value).strip().lower()
    if s in MASK_VALUES:
        return s
    m = _TT.match(s)
    if m:
        if m.group(2) is not None and not 0 < float(m.group(2)) <= 100:
            raise InterventionError(f"value={value!r}: the percentile must be in (0, 100]")
        return s
    try:
        f = float(s)
    except ValueError:
        raise InterventionError(
            f"bad value={value!r}: use a number, p_max, p_median, tt_max (layer maximum) or tt_p10 (10th percentile)"
        ) from None
    if not math.isfinite(f):
        raise InterventionError(f"value={value!r} is not a finite number")
    return f


# ---- which neurons ---------------------------------------------------------------------------------
def parse_layers(spec, n_layers: int) -> tuple[int, ...] | None:
    """``None``/``all`` → every layer; an int, a list, or a string such as ``0-5``, ``0+3+17``, ``[2,3]``."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    if isinstance(spec, bool):
        raise InterventionError(f"bad layers={spec!r}: give layer numbers such as 0-5 or 0+3+17")
    if isinstance(spec, (int, float)):
        items = [spec]
    elif isinstance(spec, (list, tuple, set)):
        items = list(spec)
    else:
        items = [p for p in re.split(r"[+|;,\s]+", str(spec).strip().strip("[]()")) if p]
    out: set[int] = set()
    for item in items:
        try:
            if isinstance(item, str) and re.fullmatch(r"\d+\s*[-:]\s*\d+", item):
                lo, hi = (int(x) for x in re.split(r"[-:]", item))
                if hi < lo:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                f = float(item)
                if f != int(f):
                    raise ValueError
                out.add(int(f))
        except (ValueError, TypeError):
            raise InterventionError(f"bad layers={spec!r}: give layer numbers such as 0-5 or 0+3+17") from None
    bad = sorted(l for l in out if not 0 <= l < n_layers)
    if bad:
        raise InterventionError(f"layers={spec!r} names layer {bad[0]} but the model has layers 0..{n_layers - 1}")
    return tuple(sorted(out))


def layers_label(spec) -> str | None:
    """The canonical spelling of a layer subset, without checking it against a model: sorted, runs joined
    (``[17, 0, 1, 2]`` → ``0-2+17``); None for all layers."""
    chosen = parse_layers(spec, 1 << 30)
    if chosen is None:
        return None
    runs: list[list[int]] = []
    for l in chosen:
        if runs and l == runs[-1][1] + 1:
            runs[-1][1] = l
        else:
            runs.append([l, l])
    return "+".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# ---- terms and specs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    """One operation on the neurons of ``languages`` (None: the context's default; codes, ``all``, or one
    of :data:`LANG_WORDS`) in ``layers`` (a canonical layer label, None: all layers). ``site``: ``vec`` for
    a term on the residual stream (``vec:add:4@fr``: α · v_fr added to the decoder layers' outputs, with
    ``vectors=``); ``route`` for a term on a mixture-of-experts router, acting on the languages' experts
    (``route:ban@fr``: their logits to −∞ before top-k; ``route:bias:2@fr``: +2 on their logits); None for the
    default site (the neurons, or the residual stream when only ``vectors=`` is given)."""

    op: Operation
    languages: tuple[str, ...] | None = None
    layers: str | None = None
    site: str | None = None

    @property
    def label(self) -> str:
        """``set:p_max@fr``, ``zero@en+zh@0-5``, ``scale:2@0-5``, ``vec:add:4@fr``, ``route:ban@fr@10-17``
        (languages before layers)."""
        out = (f"{self.site}:" if self.site else "") + self.op.label
        if self.languages:
            out += "@" + "+".join(self.languages)
        return out + (f"@{self.layers}" if self.layers else "")


@dataclass(frozen=True)
class Spec:
    """An intervention: ``terms`` applied in order in one forward, where ``scope`` says (:data:`SCOPES`)."""

    terms: tuple[Term, ...]
    scope: str = "all"

    @property
    def label(self) -> str:
        """Terms joined by ``;``, then ``scope:<scope>`` unless it is ``all``: ``zero@en;set:p_max@fr``."""
        return ";".join([t.label for t in self.terms] + ([f"scope:{self.scope}"] if self.scope != "all" else []))

    @property
    def simple(self) -> bool:
        """One term on the default languages, everywhere: what ``mode=/value=/layers=`` alone can say."""
        return len(self.terms) == 1 and self.terms[0].languages is None and self.scope == "all"

    @property
    def per_request(self) -> bool:
        """Whether a term's languages depend on the request (``self``, ``src``, ``tgt``)."""
        return any(w in (t.languages or ()) for t in self.terms for w in LANG_WORDS)

    def with_defaults(self, languages=None, layers=None) -> "Spec":
        """Terms without languages get ``languages``, terms without layers get ``layers``."""
        langs = _languages(languages, "lang") if languages is not None and not isinstance(languages, tuple) else languages
        lay = layers_label(layers)
        return Spec(tuple(Term(t.op, t.languages or langs or None, t.layers or lay, t.site) for t in self.terms), self.scope)

    def __str__(self) -> str:
        return self.label


def _languages(text, what: str) -> tuple[str, ...]:
    """``en+zh`` / ``self`` / ``all`` / a list → canonical codes (words kept as they are)."""
    from ..languages import normalize, split_list

    items = split_list(text) if isinstance(text, str) else [str(x) for x in text]
    out = []
    for item in items:
        low = item.strip().lower()
        if low in (*LANG_WORDS, "all"):
            out.append(low)
        else:
            out.append(normalize(item))  # one-line LanguageError for a spelling that names no language
    if not out:
        raise InterventionError(f"{what}: empty language list: give codes joined by + (en+zh), all, self, src or tgt")
    words = [w for w in out if w in (*LANG_WORDS, "all")]
    if words and len(out) > 1:
        raise InterventionError(f"{what}: {words[0]} stands alone (not joined with other languages by +)")
    return tuple(dict.fromkeys(out))


def _split_parts(text: str, spec, what: str) -> tuple[str, str | None, str | None]:
    """``HEAD[@LANGS][@LAYERS]`` → (head, languages text or None, layers text or None), in either order."""
    head, *parts = text.split("@")
    langs = layers = None
    for part in parts:
        part = part.strip()
        if not part:
            raise InterventionError(f"{what} {spec!r}: empty part after @: write MODE[:VALUE][@LANGS][@LAYERS], "
                                    "e.g. set:p_max@fr@10-17")
        if _LAYERS_PART.match(part):
            if layers is not None:
                raise InterventionError(f"{what} {spec!r}: two layer subsets; give one (0-5+17)")
            layers = part
        else:
            if langs is not None:
                raise InterventionError(f"{what} {spec!r}: two language lists; join languages by + (en+zh)")
            langs = part
    return head, langs, layers


def _mode_value(head: str) -> tuple[str, str | None]:
    """``set:p_max`` / ``set=p_max`` → ("set", "p_max"); ``zero`` → ("zero", None)."""
    sep = min((i for i in (head.find(":"), head.find("=")) if i >= 0), default=-1)
    return (head[:sep], head[sep + 1:]) if sep >= 0 else (head, None)


def parse_term(spec, what: str = "intervention") -> Term:
    """One term: ``MODE[:VALUE][@LANGS][@LAYERS]``, a mapping ``{mode, value, lang, layers}``, a tuple
    ``(mode, value[, layers])`` or an :class:`Operation`. ``=`` is accepted for ``:`` (as in file names)."""
    if isinstance(spec, Term):
        return spec
    if isinstance(spec, Operation):
        return Term(spec)
    langs = None
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"mode", "value", "layers", "lang", "languages"})
        if unknown:
            raise InterventionError(f"{what} {spec}: unknown key(s) {', '.join(map(str, unknown))}; "
                                    f"use mode:, value:, lang: and layers:")
        if "mode" not in spec:
            raise InterventionError(f"{what} {spec}: needs mode: (zero, set, scale or add)")
        mode, value, layers = spec["mode"], spec.get("value"), spec.get("layers")
        langs = spec.get("lang", spec.get("languages"))
    elif isinstance(spec, tuple):
        if not 1 <= len(spec) <= 3:
            raise InterventionError(f"{what} {spec!r}: give (mode, value[, layers])")
        mode, value, layers = (*spec, None, None)[:3]
    elif isinstance(spec, str):
        text = spec.strip()
        if text.lower().startswith("vec:"):  # a term on the residual stream (vectors=)
            inner = parse_term(text[4:], what)
            if not adds_vector(inner.op):
                raise InterventionError(f"{what} {spec!r}: a vector term adds α · v: write vec:add:α (e.g. vec:add:4@fr)")
            return Term(inner.op, inner.languages, inner.layers, "vec")
        if text.lower().startswith("route:"):  # a term on the router (the languages' experts)
            head, langs, layers = _split_parts(text[6:], spec, what)
            mode, value = _mode_value(head)
            try:
                return Term(Operation.parse_route(mode, value), None if langs is None else _languages(langs, "languages"),
                            layers_label(layers), "route")
            except LapevalError as e:
                raise InterventionError(f"{what} {spec!r}: {e}") from None
        head, langs, layers = _split_parts(text, spec, what)
        mode, value = _mode_value(head)
    else:
        raise InterventionError(f"{what} {spec!r}: write MODE[:VALUE][@LANGS][@LAYERS], e.g. set:p_max@fr or "
                                f"scale:2@0-5, or a mapping with mode:/value:/lang:/layers:")
    try:
        op = Operation.parse(mode, value)
        return Term(op, None if langs is None else _languages(langs, "languages"), layers_label(layers))
    except LapevalError as e:
        if isinstance(spec, tuple):  # shown as its string form, ("scale", 2) as 'scale:2'
            spec = ":".join(str(x) for x in spec if x is not None)
        raise InterventionError(f"{what} {spec!r}: {e}") from None


def parse_scope(scope) -> str:
    s = "all" if scope is None or str(scope).strip() == "" else str(scope).strip().lower()
    if s not in SCOPES:
        raise InterventionError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    return s


def parse_ops(spec, what: str = "intervention", scope=None) -> Spec:
    """An intervention spec in any of its forms:

    * a string of terms joined by ``;`` with an optional ``scope:<scope>`` part:
      ``zero@en;set:p_max@fr;scope:generation``;
    * a mapping: one term (``{mode: set, value: p_max, lang: fr, layers: 0-5}``), or ``{ops: "...", scope: ...}``
      / ``{terms: [term, ...], scope: ...}``;
    * a list of terms (strings or mappings), a :class:`Term`, an :class:`Operation`, a ``(mode, value[,
      layers])`` tuple, or a :class:`Spec`.

    ``scope``: the scope when the spec names none (``scope=`` model argument). ``what`` names the spec in
    one-line errors (``candidate``, ``intervention``)."""
    if isinstance(spec, Spec):
        if scope is not None and parse_scope(scope) != spec.scope:
            return Spec(spec.terms, parse_scope(scope))
        return spec
    found_scope = None
    if isinstance(spec, dict) and ("ops" in spec or "terms" in spec):
        unknown = sorted(set(spec) - {"ops", "terms", "scope"})
        if unknown or ("ops" in spec and "terms" in spec):
            raise InterventionError(f"{what} {spec}: give ops: (a string or list of terms) or terms:, and scope:")
        inner = parse_ops(spec.get("ops", spec.get("terms")), what)
        found_scope = spec.get("scope")
        if found_scope is not None and inner.scope != "all":
            raise InterventionError(f"{what} {spec}: scope given twice")
        terms, found_scope = inner.terms, found_scope if found_scope is not None else inner.scope
    elif isinstance(spec, str):
        terms = []
        for part in (p.strip() for p in spec.split(";")):
            if not part:
                continue
            key, sep, val = part.partition(":") if ":" in part else part.partition("=")
            if sep and key.strip().lower() == "scope":
                if found_scope is not None:
                    raise InterventionError(f"{what} {spec!r}: scope given twice")
                found_scope = val
                continue
            terms.append(parse_term(part, what))
        terms = tuple(terms)
    elif isinstance(spec, list):
        terms = tuple(parse_term(t, what) for t in spec)
    else:
        terms = (parse_term(spec, what),)
    if not terms:
        raise InterventionError(f"{what} {spec!r}: no term: write MODE[:VALUE][@LANGS][@LAYERS] terms joined by ;")
    if found_scope is not None and scope is not None and parse_scope(found_scope) != parse_scope(scope):
        raise InterventionError(f"{what} {spec!r}: names scope {found_scope} but scope={scope} was given: give it once")
    try:
        sc = parse_scope(found_scope if found_scope is not None else scope)
    except InterventionError as e:
        raise InterventionError(f"{what} {spec!r}: {e}") from None
    return Spec(terms, sc)


def parse_spec(spec, what: str = "intervention") -> tuple[Operation, str | None]:
    """(operation, canonical layers) of a one-term spec on the default languages (``set:p_max``,
    ``scale:2@0-5``, ``{mode: set, value: p_max}``, ``("scale", 2)``); see :func:`parse_ops` for the rest."""
    s = parse_ops(spec, what)
    if not s.simple:
        raise InterventionError(f"{what} {spec!r}: one MODE[:VALUE][@LAYERS] is expected here (no languages, "
                                "no second term, no scope)")
    return s.terms[0].op, s.terms[0].layers


def spec_label(op: Operation, layers=None) -> str:
    """``set:p_max``, ``set:p_max@0-5``: the one label of an operation on a layer subset."""
    return Term(op, None, layers_label(layers)).label


def adds_vector(op: Operation) -> bool:
    """Whether ``op`` is what a residual-vector term can do: ``add:α`` with a number α (α · v is added)."""
    return op.mode == "add" and isinstance(op.value, float) and op.factor == 1.0


def require_target_term(spec: Spec) -> None:
    """Where a spec is applied per target language (grid cells, LSS targets, search-factor candidates), some
    term must name no languages, so that it acts on the target; one-line :class:`InterventionError` else."""
    if all(t.languages for t in spec.terms):
        raise InterventionError("every term names its languages, so no target is amplified: leave the target's "
                                "term without @LANGS (e.g. zero@en;set:p_max)")


def file_name(label: str) -> str:
    """A label as a file or folder name: ``:`` → ``=``, ``;`` (between terms) → ``~``, ``*`` (a factor) →
    ``x``, anything else outside ``[A-Za-z0-9=@+._~-]`` → ``_``. Injective on canonical labels, which hold
    none of ``=``, ``~`` or a bare ``x`` after a number."""
    return re.sub(r"[^A-Za-z0-9=@+._~-]", "_", label.replace(":", "=").replace(";", "~").replace("*", "x"))
