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
FORMAT_VERSION = 1
VALUE_KINDS = ("p_max", "p_median")


class MaskError(LapevalError, ValueError):
    pass


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

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def from_assignment(
        cls,
        assigned: torch.Tensor,
        languages: list[str],
        values: dict[str, torch.Tensor] | None = None,
        meta: dict | None = None,
    ) -> "NeuronMask":
        """From a bool tensor ``[n_langs, n_layers, d_ff]`` (neuron (l, j) belongs to language i) and
        optional per-language value tensors of the same shape (``p_max``, ``p_median``)."""
        n_langs, n_layers, d_ff = assigned.shape
        if n_langs != len(languages):
            raise MaskError(f"{n_langs} assignment rows for {len(languages)} languages")
        sets = {}
        for i, lang in enumerate(languages):
            layer, neuron = torch.nonzero(assigned[i], as_tuple=True)  # row-major: sorted by (l, j)
            vals = {k: v[i][layer, neuron].to(torch.float32) for k, v in (values or {}).items()}
            sets[lang] = LanguageNeurons(layer.long(), neuron.long(), vals)
        return cls(list(languages), n_layers, d_ff, sets, dict(meta or {}))

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
        meta = {**self.meta, "lapeval_version": __version__}
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
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
            raise MaskError(f"{bad}: its metadata lacks {e.args[0]!r}; re-save it with lapeval identify or select") from None
        except ValueError as e:  # json.JSONDecodeError too
            raise MaskError(f"{bad}: unreadable metadata ({str(e).splitlines()[0]}); re-save it with lapeval identify or select") from None
        if not (isinstance(languages, list) and all(isinstance(l, str) for l in languages) and languages):
            raise MaskError(f"{bad}: its 'languages' metadata is not a list of codes; re-save it with lapeval select")
        if not isinstance(meta, dict):
            raise MaskError(f"{bad}: its 'lapeval' metadata is not a JSON object; re-save it with lapeval select")
        sets = {}
        for lang in languages:
            lacking = [k for k in (f"{lang}.layer", f"{lang}.neuron") if k not in tensors]
            if lacking:
                raise MaskError(f"{bad}: no {' / '.join(lacking)} tensor for {lang} (a language of its metadata); "
                                "re-save it with lapeval identify or select")
            vals = {k: tensors[f"{lang}.{k}"] for k in VALUE_KINDS if f"{lang}.{k}" in tensors}
            s = LanguageNeurons(tensors[f"{lang}.layer"].long(), tensors[f"{lang}.neuron"].long(), vals)
            if s.layer.shape != s.neuron.shape or any(v.shape != s.layer.shape for v in vals.values()):
                raise MaskError(f"{bad}: the tensors of {lang} differ in length")
            if len(s) and (int(s.layer.max()) >= n_layers or int(s.neuron.max()) >= d_ff or int(s.layer.min()) < 0
                           or int(s.neuron.min()) < 0):
                raise MaskError(f"{path}: {lang} indexes a neuron outside {n_layers} layers × {d_ff}; the file is corrupt")
            sets[lang] = s
        return cls(languages, n_layers, d_ff, sets, meta, path)

    def sha256(self) -> str:
        """The sha256 of the mask's file, hashed once per object (a mask is not changed after loading or
        saving; :meth:`save` hashes anew)."""
        if self.path is None:
            raise MaskError("mask has not been saved to a file yet")
        memo = self.__dict__.get("_sha256")
        if memo is None or memo[0] != self.path:
            memo = self.__dict__["_sha256"] = (self.path, sha256_file(self.path))
        return memo[1]


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
    path: str | Path,
    fmt: str,
    languages: str | list[str] | None = None,
    d_ff: int | None = None,
    p_max: str | Path | None = None,
    p_median: str | Path | None = None,
) -> NeuronMask:
    """Read a reference neuron file: a list (one entry per language) of per-layer index tensors, as written
    by RUCAIBox ``identify.py`` (``*.neuron.pth``) and by lang-task-neuron ``lape.py``. The latter's
    ``max.pt`` / ``median.pt`` ([n_langs, n_layers, d_ff]) can be given as p_max / p_median."""
    if fmt not in FORMATS:
        raise MaskError(f"unknown mask format {fmt!r}: use one of {', '.join(FORMATS)}")
    langs = parse_list(languages) if languages else list(DEFAULT_LANGUAGES[fmt])
    obj = _load_pth(path)
    if not (isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (list, tuple)) for x in obj)):
        raise MaskError(f"{path} is not a list of per-language lists of per-layer index tensors ({fmt} layout)")
    if len(obj) != len(langs):
        raise MaskError(
            f"{path} has {len(obj)} language entries but {len(langs)} languages were given ({','.join(langs)}); the "
            "reference drops trailing languages that got no neurons (method.md §8): pass --languages for the entries it has"
        )
    n_layers = len(obj[0])
    if any(len(x) != n_layers for x in obj):
        raise MaskError(f"{path}: language entries differ in their number of layers")
    max_idx = max((int(t.max()) for x in obj for t in x if torch.as_tensor(t).numel()), default=-1)
    values_files = {k: v for k, v in (("p_max", p_max), ("p_median", p_median)) if v}
    full_values = {k: _load_pth(v) for k, v in values_files.items()}
    for k, v in full_values.items():
        if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[:2] != (len(langs), n_layers):
            raise MaskError(f"{values_files[k]} must be a tensor [{len(langs)}, {n_layers}, d_ff] of {k} values")
        d_ff = d_ff or int(v.shape[2])
    inferred = d_ff is None
    d_ff = d_ff or max_idx + 1
    if max_idx >= d_ff:
        raise MaskError(f"{path} indexes neuron {max_idx} but d_ff is {d_ff}")
    assigned = torch.zeros(len(langs), n_layers, d_ff, dtype=torch.bool)
    for i, per_layer in enumerate(obj):
        for l, idx in enumerate(per_layer):
            assigned[i, l, torch.as_tensor(idx, dtype=torch.long)] = True
    meta = {
        "selection": {"method": "lape", "source": f"imported from {fmt}", "file": Path(path).name},
        "imported_sha256": sha256_file(path),
        "d_ff_inferred": inferred,
    }
    return NeuronMask.from_assignment(assigned, langs, {k: v.float() for k, v in full_values.items()}, meta)


def export_reference(mask: NeuronMask, path: str | Path, fmt: str = "rucaibox") -> list[Path]:
    """Write the reference layout: a list per language of per-layer int64 index tensors (``torch.save``).
    For lang-task-neuron also ``<stem>.max.pt`` / ``<stem>.median.pt`` holding the p values, zero elsewhere."""
    if fmt not in FORMATS:
        raise MaskError(f"unknown mask format {fmt!r}: use one of {', '.join(FORMATS)}")
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
