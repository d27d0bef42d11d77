"""Neuron mask files: which neurons belong to which language, with the values to amplify them to.

A mask file is a pickle-free safetensors file. For every language ``L`` (in order) it holds

* ``L.layer``, ``L.neuron`` — int64 ``[n_L]``: the neurons (layer l, index j < d_ff), sorted by (l, j);
* ``L.p_max``, ``L.p_median`` — float32 ``[n_L]``, when activation statistics were available:
  p_max[L,l,j] = max_k m_L^(k)[l,j] and p_median = the lower median over k, where m_L^(k) is the mean
  activation of neuron (l, j) over the tokens of sentence k of language L (Rahmanisa et al. 2025).

Its safetensors metadata describes it: ``format`` (``lapeval.neuron_mask``), ``format_version``,
``languages`` (JSON list), ``n_layers``, ``d_ff``, and ``lapeval`` — a JSON object with the model id,
revision and architecture, the neuron site, the selection method and hyper-parameters, the corpus and
per-language token counts, and the lapeval version.

Masks of routed (mixture-of-experts) models (format_version 2, so that older lapeval refuses them) index
neurons flattened as the metadata's ``moe`` says (:func:`lapeval.moe.moe_meta`: expert-major,
index(e, j) = e·d_expert + j, shared FFNs after the experts, narrower layers padded) and may hold, per
language, its language-specific experts: ``L.expert_layer``, ``L.expert`` — int64 ``[m_L]``, sorted by
(layer, expert). Interventions act on these masks — neuron terms inside the experts, router terms
(``route:``) on the experts (:mod:`lapeval.intervention.hooks`) — through the lape model, lss, grid and
search-factor, and random controls are drawn for them, experts included (:mod:`lapeval.identification.controls`);
the reference formats are dense: they refuse them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from . import __version__
from ._io import save_safetensors, sha256_file, torch_save
from .errors import LapevalError
from .languages import PAPER1_LANGUAGES, PAPER2_LANGUAGES, normalize, parse_list

FORMAT = "lapeval.neuron_mask"
FORMAT_VERSION = 2  # the newest this lapeval reads; dense masks are still written as 1
_MOE_VERSION = 2
VALUE_KINDS = ("p_max", "p_median")


class MaskError(LapevalError, ValueError):
    """A mask file that cannot be used (missing, another format, the wrong model, a language it lacks)."""


class CorruptMaskError(MaskError):
    """A mask file, or a reference file being imported, whose contents cannot be a mask: non-finite values,
    impossible shapes or indices, wrong types. One line naming the file, the language (and layer) and the fix."""


# Sanity bounds checked before anything of a file's claimed size is allocated: far above any released
# model (Llama-3.1-405B: 126 layers × 53,248), far below what would exhaust memory.
MAX_LAYERS = 4096
MAX_NEURONS = 1 << 26  # n_layers × d_ff
_META_TYPES = {"site": dict, "selection": dict, "collect": dict, "n_tokens": dict, "n_sentences": dict,
               "d_ff_inferred": bool, "control": dict, "moe": dict, "expert_selection": dict}


def _check_shape(n_layers: int, d_ff: int, where: str, fix: str = "re-create the mask with lapeval identify or select") -> None:
    """A one-line :class:`CorruptMaskError` for a shape no model has (0 or negative, or beyond the bounds)."""
    if not (1 <= n_layers <= MAX_LAYERS and 1 <= d_ff and n_layers * d_ff <= MAX_NEURONS):
        raise CorruptMaskError(
            f"{where}: {n_layers} layers × {d_ff} FFN neurons is not the shape of a model (1 to {MAX_LAYERS} "
            f"layers, at most {MAX_NEURONS:,} neurons in all); {fix}"
        )


def _check_tensors(s: "LanguageNeurons", lang: str, where: str) -> None:
    """One language's tensors: 1-D, the same length, integer indices, finite floating-point values."""
    named = {"layer": s.layer, "neuron": s.neuron, **s.values}
    for kind, t in named.items():
        if t.dim() != 1:
            raise CorruptMaskError(f"{where}: {lang}.{kind} is a {t.dim()}-D tensor of shape {list(t.shape)}, "
                                   "not a list; re-create the mask with lapeval identify or select")
    if len({t.numel() for t in named.values()}) > 1:
        raise CorruptMaskError(f"{where}: the tensors of {lang} differ in length; re-create the mask with lapeval select")
    for kind in ("layer", "neuron"):
        if named[kind].is_floating_point() or named[kind].is_complex() or named[kind].dtype == torch.bool:
            raise CorruptMaskError(f"{where}: {lang}.{kind} holds {named[kind].dtype} values, not integer indices; "
                                   "re-create the mask with lapeval identify or select")
    for kind, v in s.values.items():
        if not v.is_floating_point():
            raise CorruptMaskError(f"{where}: {lang}.{kind} holds {v.dtype} values, not floating point; "
                                   "re-create the mask with lapeval identify or select")
        if not bool(torch.isfinite(v).all()):
            raise CorruptMaskError(f"{where}: {lang}.{kind} holds NaN or infinite values; re-create the mask with "
                                   "lapeval identify or select (its statistics must come from real activations)")


@dataclass
class LanguageNeurons:
    layer: torch.Tensor  # int64 [n]
    neuron: torch.Tensor  # int64 [n]
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> float32 [n]

    def __len__(self) -> int:
        return int(self.layer.numel())


@dataclass
class NeuronMask:
    languages: list[str]
    n_layers: int
    d_ff: int
    sets: dict[str, LanguageNeurons]
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    experts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # lang -> (layer, expert)

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def from_assignment(
        cls,
        assigned: torch.Tensor,
        languages: list[str],
        values: dict[str, torch.Tensor] | None = None,
        meta: dict | None = None,
        experts: torch.Tensor | None = None,
    ) -> "NeuronMask":
        """From a bool tensor ``[n_langs, n_layers, d_ff]`` (neuron (l, j) belongs to language i) and
        optional per-language value tensors of the same shape (``p_max``, ``p_median``); ``experts``: bool
        ``[n_langs, n_layers, E]`` (routed models: expert e of layer l belongs to language i)."""
        n_langs, n_layers, d_ff = assigned.shape
        if n_langs != len(languages):
            raise MaskError(f"{n_langs} assignment rows for {len(languages)} languages")
        sets = {}
        for i, lang in enumerate(languages):
            layer, neuron = torch.nonzero(assigned[i], as_tuple=True)  # row-major: sorted by (l, j)
            vals = {k: v[i][layer, neuron].to(torch.float32) for k, v in (values or {}).items()}
            sets[lang] = LanguageNeurons(layer.long(), neuron.long(), vals)
        by_lang = {}
        if experts is not None:
            for i, lang in enumerate(languages):
                layer, expert = torch.nonzero(experts[i], as_tuple=True)
                by_lang[lang] = (layer.long(), expert.long())
        return cls(list(languages), n_layers, d_ff, sets, dict(meta or {}), experts=by_lang)

    # ---- routed models ------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """Whether the neurons index a routed model's flattened experts (``moe`` metadata)."""
        return isinstance(self.meta.get("moe"), dict)

    def require_dense(self, what: str) -> None:
        """A one-line :class:`MaskError` when this is a routed model's mask; ``what`` says why it cannot be used."""
        if self.is_moe:
            moe = self.meta["moe"]
            src = f" {self.path}" if self.path else ""
            raise MaskError(f"mask{src} is a mixture-of-experts mask ({moe.get('experts')} experts × "
                            f"{moe.get('d_expert')} neurons per layer): {what}")

    def expert_assignment(self) -> torch.Tensor:
        """bool ``[n_langs, n_layers, E]``: expert e of layer l belongs to language i (the inverse of
        :meth:`from_assignment`'s ``experts``); routed masks only."""
        self.require_routed("it holds no experts")
        out = torch.zeros(len(self.languages), self.n_layers, int(self.meta["moe"]["experts"]), dtype=torch.bool)
        for i, lang in enumerate(self.languages):
            if lang in self.experts:
                layer, expert = self.experts[lang]
                out[i, layer, expert] = True
        return out

    def require_routed(self, what: str) -> None:
        """A one-line :class:`MaskError` when this is a dense model's mask; ``what`` says why it is needed."""
        if not self.is_moe:
            src = f" {self.path}" if self.path else ""
            raise MaskError(f"mask{src} is of a dense model: {what} (a mixture-of-experts model's mask from lapeval "
                            "identify holds them)")

    def expert_summary(self) -> dict:
        """Per language: its experts' total and count per layer (routed masks; {} otherwise)."""
        return {lang: {"total": int(layer.numel()),
                       "per_layer": torch.bincount(layer, minlength=self.n_layers).tolist()}
                for lang, (layer, _) in self.experts.items()}

    # ---- views ----------------------------------------------------------------------------------
    def code(self, lang: str) -> str:
        """This mask's own code for ``lang`` in any spelling (``jp``, ``jpn_Jpan``, ``Japanese`` → ``ja``);
        a one-line :class:`MaskError` listing the mask's languages when it has none."""
        code = lang if lang in self.sets else _try_normalize(lang)
        if code not in self.sets:
            raise MaskError(f"language {lang!r} is not in this mask file: it has {', '.join(self.languages)}")
        return code

    def _lang(self, lang: str) -> LanguageNeurons:
        return self.sets[self.code(lang)]

    def as_bool(self, lang: str) -> torch.Tensor:
        s = self._lang(lang)
        out = torch.zeros(self.n_layers, self.d_ff, dtype=torch.bool)
        out[s.layer, s.neuron] = True
        return out

    def per_layer(self, lang: str) -> list[torch.Tensor]:
        """Neuron indices of ``lang`` in each layer (a list of ``n_layers`` sorted int64 tensors)."""
        s = self._lang(lang)
        return [s.neuron[s.layer == l] for l in range(self.n_layers)]

    def values_per_layer(self, lang: str, kind: str) -> list[torch.Tensor]:
        s = self._lang(lang)
        if kind not in s.values:
            have = ", ".join(s.values) or "none"
            raise MaskError(f"mask file has no {kind} values for {lang} (it has: {have}); re-run identify with statistics")
        return [s.values[kind][s.layer == l] for l in range(self.n_layers)]

    def has_values(self, kind: str) -> bool:
        return all(kind in s.values for s in self.sets.values())

    def unique_neurons(self) -> int:
        union = torch.zeros(self.n_layers, self.d_ff, dtype=torch.bool)
        for s in self.sets.values():
            union[s.layer, s.neuron] = True
        return int(union.sum())

    def jaccard(self) -> torch.Tensor:
        """Pairwise language overlap |A∩B| / |A∪B| (``[n_langs, n_langs]``)."""
        b = torch.stack([self.as_bool(l).flatten() for l in self.languages]).float()
        inter = b @ b.T
        sizes = b.sum(1)
        union = sizes[:, None] + sizes[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))

    def summary(self) -> dict:
        return {
            "languages": list(self.languages),
            "n_layers": self.n_layers,
            "d_ff": self.d_ff,
            "unique_neurons": self.unique_neurons(),
            "per_language": {
                lang: {
                    "total": len(self.sets[lang]),
                    "per_layer": torch.bincount(self.sets[lang].layer, minlength=self.n_layers).tolist(),
                }
                for lang in self.languages
            },
            "values": [k for k in VALUE_KINDS if self.has_values(k)],
            **({"experts": self.expert_summary()} if self.is_moe else {}),
            "meta": self.meta,
        }

    def check_model(self, n_layers: int, d_ff: int, what: str = "the model") -> None:
        """One-line error when this mask does not fit a model's layers × FFN width."""
        if n_layers != self.n_layers or (d_ff != self.d_ff and not self.meta.get("d_ff_inferred")):
            src = f" ({self.path})" if self.path else ""
            raise MaskError(
                f"mask file{src} is for {self.n_layers} layers × {self.d_ff} FFN neurons but {what} has "
                f"{n_layers} × {d_ff}: use a mask identified on this model (lapeval identify)"
            )
        if self.meta.get("d_ff_inferred") and d_ff < self.d_ff:
            raise MaskError(f"mask file indexes neurons up to {self.d_ff - 1} but {what} has only {d_ff} per layer")

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {}
        for lang in self.languages:
            s = self.sets[lang]
            tensors[f"{lang}.layer"] = s.layer.to(torch.int64).contiguous()
            tensors[f"{lang}.neuron"] = s.neuron.to(torch.int64).contiguous()
            for k, v in s.values.items():
                tensors[f"{lang}.{k}"] = v.to(torch.float32).contiguous()
            if lang in self.experts:
                tensors[f"{lang}.expert_layer"] = self.experts[lang][0].to(torch.int64).contiguous()
                tensors[f"{lang}.expert"] = self.experts[lang][1].to(torch.int64).contiguous()
        meta = {**self.meta, "lapeval_version": __version__}
        header = {
            "format": FORMAT,
            "format_version": str(_MOE_VERSION if self.is_moe else 1),
            "languages": json.dumps(self.languages),
            "n_layers": str(self.n_layers),
            "d_ff": str(self.d_ff),
            "lapeval": json.dumps(meta, ensure_ascii=False, sort_keys=True),
        }
        save_safetensors(tensors, path, header)  # byte-reproducible: its sha256 keys grids and caches
        self.path, self.meta = path, meta
        self.__dict__.pop("_sha256", None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NeuronMask":
        path = Path(path)
        if not path.is_file():
            raise MaskError(f"mask file {path} does not exist: give the path of a .safetensors mask (see lapeval identify)")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # not safetensors at all
            raise MaskError(f"{path} is not a safetensors mask file ({e}); import reference .pth files with lapeval masks import") from None
        if header.get("format") != FORMAT:
            raise MaskError(f"{path} is not a lapeval neuron mask (format={header.get('format')!r}); import it with lapeval masks import")
        version = str(header.get("format_version", "0"))
        if not version.isdigit():
            raise MaskError(f"{path} is a corrupt mask file: format_version {version!r} is not a number")
        if int(version) > FORMAT_VERSION:
            raise MaskError(f"{path} has mask format {header['format_version']}, newer than this lapeval reads: upgrade lapeval")
        bad = f"{path} is a corrupt mask file"
        try:
            languages = json.loads(header["languages"])
            n_layers, d_ff = int(header["n_layers"]), int(header["d_ff"])
            meta = json.loads(header.get("lapeval", "{}"))
        except KeyError as e:
            raise CorruptMaskError(f"{bad}: its metadata lacks {e.args[0]!r}; re-save it with lapeval identify or select") from None
        except ValueError as e:  # json.JSONDecodeError too
            raise CorruptMaskError(f"{bad}: unreadable metadata ({str(e).splitlines()[0]}); re-save it with lapeval identify or select") from None
        if not (isinstance(languages, list) and all(isinstance(l, str) and l for l in languages) and languages):
            raise CorruptMaskError(f"{bad}: its 'languages' metadata is not a list of codes; re-save it with lapeval select")
        twice = sorted({l for l in languages if languages.count(l) > 1})
        if twice:
            raise CorruptMaskError(f"{bad}: its 'languages' metadata lists {', '.join(twice)} twice; re-save it with lapeval select")
        if not isinstance(meta, dict):
            raise CorruptMaskError(f"{bad}: its 'lapeval' metadata is not a JSON object; re-save it with lapeval select")
        wrong = [k for k, t in _META_TYPES.items() if k in meta and not isinstance(meta[k], t)]
        if wrong:
            k = wrong[0]
            raise CorruptMaskError(f"{bad}: its 'lapeval' metadata has a {type(meta[k]).__name__} under {k!r} where a "
                                   f"{_META_TYPES[k].__name__} belongs; re-save it with lapeval identify or select")
        _check_shape(n_layers, d_ff, bad)
        sets = {}
        for lang in languages:
            lacking = [k for k in (f"{lang}.layer", f"{lang}.neuron") if k not in tensors]
            if lacking:
                raise CorruptMaskError(f"{bad}: no {' / '.join(lacking)} tensor for {lang} (a language of its metadata); "
                                       "re-save it with lapeval identify or select")
            vals = {k: tensors[f"{lang}.{k}"] for k in VALUE_KINDS if f"{lang}.{k}" in tensors}
            s = LanguageNeurons(tensors[f"{lang}.layer"], tensors[f"{lang}.neuron"], vals)
            _check_tensors(s, lang, bad)
            s.layer, s.neuron = s.layer.long(), s.neuron.long()
            if len(s) and (int(s.layer.max()) >= n_layers or int(s.neuron.max()) >= d_ff or int(s.layer.min()) < 0
                           or int(s.neuron.min()) < 0):
                raise CorruptMaskError(f"{path}: {lang} indexes a neuron outside {n_layers} layers × {d_ff}; the file is corrupt")
            flat = s.layer * d_ff + s.neuron
            if len(s) > 1 and not bool((flat[1:] > flat[:-1]).all()):
                raise CorruptMaskError(f"{bad}: the neurons of {lang} are not sorted by (layer, neuron) without repeats; "
                                       "re-save it with lapeval select")
            sets[lang] = s
        experts = _load_experts(tensors, languages, n_layers, meta, bad)
        return cls(languages, n_layers, d_ff, sets, meta, path, experts)

    def sha256(self) -> str:
        """The sha256 of the mask's file, hashed once per object (a mask is not changed after loading or
        saving; :meth:`save` hashes anew)."""
        if self.path is None:
            raise MaskError("mask has not been saved to a file yet")
        memo = self.__dict__.get("_sha256")
        if memo is None or memo[0] != self.path:
            memo = self.__dict__["_sha256"] = (self.path, sha256_file(self.path))
        return memo[1]


def _load_experts(tensors: dict, languages: list[str], n_layers: int, meta: dict, bad: str) -> dict:
    """The ``L.expert_layer`` / ``L.expert`` pairs of a routed mask, checked: 1-D integer tensors of one length,
    layer < n_layers, expert < the metadata's ``moe.experts``, sorted by (layer, expert) without repeats."""
    out = {}
    for lang in languages:
        keys = (f"{lang}.expert_layer", f"{lang}.expert")
        if not any(k in tensors for k in keys):
            continue
        n_experts = meta.get("moe", {}).get("experts") if isinstance(meta.get("moe"), dict) else None
        if not all(k in tensors for k in keys) or not isinstance(n_experts, int):
            raise CorruptMaskError(f"{bad}: {lang} has expert tensors without both {' and '.join(keys)} and the "
                                   "moe.experts metadata; re-save it with lapeval select")
        layer, expert = tensors[keys[0]], tensors[keys[1]]
        if (layer.dim() != 1 or expert.shape != layer.shape or layer.is_floating_point()
                or expert.is_floating_point() or layer.dtype == torch.bool or expert.dtype == torch.bool):
            raise CorruptMaskError(f"{bad}: {lang}'s experts are not two integer lists of one length; re-save it "
                                   "with lapeval select")
        layer, expert = layer.long(), expert.long()
        if layer.numel() and (int(layer.min()) < 0 or int(layer.max()) >= n_layers or int(expert.min()) < 0
                              or int(expert.max()) >= n_experts):
            raise CorruptMaskError(f"{bad}: {lang} names an expert outside {n_layers} layers × {n_experts} experts")
        flat = layer * n_experts + expert
        if layer.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
            raise CorruptMaskError(f"{bad}: the experts of {lang} are not sorted by (layer, expert) without repeats")
        out[lang] = (layer, expert)
    return out


def _try_normalize(code: str) -> str:
    try:
        return normalize(code)
    except ValueError:
        return code


# ---- the reference repositories' files ------------------------------------------------------------
FORMATS = ("rucaibox", "lang-task-neuron")
DEFAULT_LANGUAGES = {"rucaibox": PAPER1_LANGUAGES, "lang-task-neuron": PAPER2_LANGUAGES}


def _load_pth(path: str | Path):
    if not Path(path).is_file():
        raise MaskError(f"{path} does not exist: give the reference's *.neuron.pth (or lape output) file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise MaskError(f"{path} cannot be read as a weights-only torch file ({str(e).splitlines()[0]})") from None


def import_reference(
    file: str | Path,
    format: str,
    languages: str | list[str] | None = None,
    d_ff: int | None = None,
    p_max: str | Path | None = None,
    p_median: str | Path | None = None,
    *,
    out: str | Path | None = None,
    model_id: str | None = None,
) -> NeuronMask:
    """Read a reference neuron file: a list (one entry per language) of per-layer index tensors, as written
    by RUCAIBox ``identify.py`` (``*.neuron.pth``) and by lang-task-neuron ``lape.py``. The latter's
    ``max.pt`` / ``median.pt`` ([n_langs, n_layers, d_ff]) can be given as p_max / p_median.
    ``out``: save the mask there too; ``model_id``: the model the file was made for, recorded in its metadata
    (``lapeval masks import FILE --format F --out OUT --model-id ID``).

    Example::

        mask = lapeval.import_reference("llama-2-7b.neuron.pth", "rucaibox", out="llama-2-7b.safetensors",
                                        model_id="meta-llama/Llama-2-7b-hf")
    """
    mask = _import_reference(file, format, languages, d_ff, p_max, p_median)
    if model_id:
        mask.meta["model_id"] = model_id
    if out is not None:
        mask.save(out)
    return mask


def _import_reference(path, fmt, languages, d_ff, p_max, p_median) -> NeuronMask:

    if fmt not in FORMATS:
        raise MaskError(f"unknown mask format {fmt!r}: use one of {', '.join(FORMATS)}")
    if d_ff is not None and d_ff < 1:
        raise MaskError(f"--d-ff {d_ff}: the FFN width of a model is a positive number")
    langs = parse_list(languages) if languages else list(DEFAULT_LANGUAGES[fmt])
    obj = _load_pth(path)
    if not (isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (list, tuple)) for x in obj)):
        raise MaskError(f"{path} is not a list of per-language lists of per-layer index tensors ({fmt} layout)")
    if len(obj) != len(langs):
        raise MaskError(
            f"{path} has {len(obj)} language entries but {len(langs)} languages were given ({','.join(langs)}); the "
            "reference drops trailing languages that got no neurons (method.md §8): pass --languages for the entries it has"
        )
    bad = f"{path} is a corrupt mask file ({fmt} layout)"
    n_layers = len(obj[0])
    for lang, per_layer in zip(langs, obj):
        if not per_layer:
            raise CorruptMaskError(f"{bad}: {lang} has no layers (an empty list); check --format and --languages")
        if len(per_layer) != n_layers:
            raise CorruptMaskError(f"{bad}: {lang} has {len(per_layer)} layers but {langs[0]} has {n_layers}")
    indices = {lang: [_index_tensor(t, lang, l, bad) for l, t in enumerate(per_layer)] for lang, per_layer in zip(langs, obj)}
    max_idx = max((int(t.max()) for per_layer in indices.values() for t in per_layer if t.numel()), default=-1)
    values_files = {k: v for k, v in (("p_max", p_max), ("p_median", p_median)) if v}
    full_values = {k: _load_pth(v) for k, v in values_files.items()}
    for k, v in full_values.items():
        if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[:2] != (len(langs), n_layers):
            raise MaskError(f"{values_files[k]} must be a tensor [{len(langs)}, {n_layers}, d_ff] of {k} values")
        if not v.is_floating_point():
            raise CorruptMaskError(f"{values_files[k]} holds {v.dtype}, not floating-point {k} values")
        d_ff = d_ff or int(v.shape[2])
    inferred = d_ff is None
    d_ff = d_ff or max_idx + 1
    if d_ff == 0:
        raise MaskError(f"{path} holds no neuron in any language, so the model's width is unknown: pass --d-ff")
    _check_shape(n_layers, d_ff, bad, "check the file, --format and --d-ff")  # before anything that size is touched
    if max_idx >= d_ff:
        raise MaskError(f"{path} indexes neuron {max_idx} but d_ff is {d_ff}")
    for k, v in full_values.items():
        if v.shape[2] != d_ff:
            raise MaskError(f"{values_files[k]} holds {v.shape[2]} {k} values per layer but d_ff is {d_ff}")
    sets = {}
    for i, lang in enumerate(langs):  # no dense [languages, layers, d_ff] tensor: memory follows the file
        per_layer = [t.unique() for t in indices[lang]]  # sorted, without repeats
        layer = torch.cat([torch.full_like(t, l) for l, t in enumerate(per_layer)])
        neuron = torch.cat(per_layer)
        vals = {k: v[i][layer, neuron].to(torch.float32) for k, v in full_values.items()}
        sets[lang] = LanguageNeurons(layer, neuron, vals)
        _check_tensors(sets[lang], lang, f"{bad} (with its {' / '.join(map(str, values_files.values()))})" if vals else bad)
    meta = {
        "selection": {"method": "lape", "source": f"imported from {fmt}", "file": Path(path).name},
        "imported_sha256": sha256_file(path),
        "d_ff_inferred": inferred,
    }
    return NeuronMask(list(langs), n_layers, d_ff, sets, meta)


def _index_tensor(t, lang: str, layer: int, bad: str) -> torch.Tensor:
    """One layer's neuron indices from a reference file, as int64: a 1-D integer tensor of indices >= 0, at
    most :data:`MAX_NEURONS` of them; anything else is a one-line :class:`CorruptMaskError`."""
    where = f"{bad}: {lang}, layer {layer}"
    if not isinstance(t, torch.Tensor):
        raise CorruptMaskError(f"{where} is a {type(t).__name__}, not an index tensor; check --format")
    if t.dim() != 1:
        raise CorruptMaskError(f"{where} is a {t.dim()}-D tensor of shape {list(t.shape)}, not a list of indices")
    if t.numel() > MAX_NEURONS:
        raise CorruptMaskError(f"{where} holds {t.numel():,} indices, more than any model's neurons")
    if t.is_floating_point():
        odd = t[~(t.isfinite() & (t == t.trunc()))]  # fractions, NaN, inf
        example = f" such as {odd[0].item():g}" if odd.numel() else ""
        raise CorruptMaskError(f"{where} holds {t.dtype} values{example}, not integer neuron indices")
    if t.is_complex() or t.dtype == torch.bool:
        raise CorruptMaskError(f"{where} holds {t.dtype} values, not integer neuron indices")
    if t.numel() and int(t.min()) < 0:
        raise CorruptMaskError(f"{where} holds index {int(t.min())}; neuron indices start at 0")
    return t.long()


def export_reference(file, out: str | Path, format: str = "rucaibox") -> list[Path]:
    """Write the reference layout of a mask (``file``: a :class:`NeuronMask` or its path) to ``out``: a list per
    language of per-layer int64 index tensors (``torch.save``). For lang-task-neuron also ``<stem>.max.pt`` /
    ``<stem>.median.pt`` holding the p values, zero elsewhere (``lapeval masks export FILE --out OUT``).

    Example::

        lapeval.export_reference("neuron_masks/gemma-3-270m.safetensors", "gemma.neuron.pth")
    """
    mask, path, fmt = file if isinstance(file, NeuronMask) else NeuronMask.load(file), out, format
    if fmt not in FORMATS:
        raise MaskError(f"unknown mask format {fmt!r}: use one of {', '.join(FORMATS)}")
    mask.require_dense(f"the {fmt} reference format holds dense FFN layers only, so it cannot be exported")
    path = Path(path)
    written = []
    torch_save([mask.per_layer(lang) for lang in mask.languages], path)
    written.append(path)
    if fmt == "lang-task-neuron":
        for kind, suffix in (("p_max", "max"), ("p_median", "median")):
            if not mask.has_values(kind):
                continue
            full = torch.zeros(len(mask.languages), mask.n_layers, mask.d_ff)
            for i, lang in enumerate(mask.languages):
                s = mask.sets[lang]
                full[i, s.layer, s.neuron] = s.values[kind]
            out = path.with_name(f"{path.stem}.{suffix}.pt")
            torch_save(full, out)
            written.append(out)
    return written
