"""Residual-stream steering vectors per language and layer (DiffMean; method.md §11), as self-describing
safetensors files — the residual counterpart of :mod:`lapeval.masks`.

A file holds, per language L, ``v_L`` float32 ``[n_layers, hidden]``: v_L^(l) is added (times α) to the
output of decoder layer l. Metadata: ``format`` (``lapeval.residual_vectors``), ``languages`` (JSON list, the
file's order), ``n_layers``, ``hidden`` and ``lapeval`` (JSON: method, model, the statistics it came from and
their sha256, token counts). Saved byte-reproducibly, so a file's sha256 identifies it in every provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from . import __version__
from ._io import save_safetensors, sha256_file
from .errors import LapevalError
from .languages import normalize

FORMAT = "lapeval.residual_vectors"
MAX_ELEMENTS = 1 << 28  # n_languages × n_layers × hidden, checked before reading


class VectorsError(LapevalError, ValueError):
    """A vectors file that cannot be used (missing, another format, corrupt, a language it lacks)."""


@dataclass
class ResidualVectors:
    languages: list[str]
    vectors: dict[str, torch.Tensor]  # lang -> float32 [n_layers, hidden]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def hidden(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])

    def code(self, lang: str) -> str:
        """The file's code for ``lang`` (any spelling); one line naming the file's languages if absent."""
        if lang in self.vectors:
            return lang
        try:
            code = normalize(lang)
        except LapevalError:
            code = lang
        if code in self.vectors:
            return code
        where = f" {self.path}" if self.path else ""
        raise VectorsError(f"vectors{where} have no {lang}: use one of {', '.join(self.languages)}")

    def sha256(self) -> str:
        if self.path is None:
            raise VectorsError("vectors have not been saved to a file yet")
        memo = self.__dict__.get("_sha256")
        if memo is None or memo[0] != self.path:
            memo = self.__dict__["_sha256"] = (self.path, sha256_file(self.path))
        return memo[1]

    def check_model(self, n_layers: int, hidden: int, what: str = "the model") -> None:
        if (n_layers, hidden) != (self.n_layers, self.hidden):
            src = f" ({self.path})" if self.path else ""
            raise VectorsError(f"vectors{src} are for {self.n_layers} layers × hidden {self.hidden}, but {what} has "
                               f"{n_layers} × {hidden}: make them from that model's statistics (lapeval vectors)")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {f"v.{lang}": self.vectors[lang].to(torch.float32).contiguous() for lang in self.languages}
        header = {"format": FORMAT, "languages": json.dumps(self.languages), "n_layers": str(self.n_layers),
                  "hidden": str(self.hidden),
                  "lapeval": json.dumps({**self.meta, "lapeval_version": __version__}, ensure_ascii=False, sort_keys=True)}
        save_safetensors(tensors, path, header)
        self.path = path
        self.__dict__.pop("_sha256", None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ResidualVectors":
        path = Path(path)
        if not path.is_file():
            raise VectorsError(f"vectors file {path} does not exist: make it with lapeval vectors --stats STATS --out {path}")
        bad = f"{path} is a corrupt vectors file"
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise VectorsError(f"{path} is not a lapeval vectors file (format={header.get('format')!r}); "
                                       "make one with lapeval vectors")
                languages = json.loads(header["languages"])
                n_layers, hidden = int(header["n_layers"]), int(header["hidden"])
                meta = json.loads(header.get("lapeval", "{}"))
                if not (isinstance(languages, list) and languages and all(isinstance(l, str) for l in languages)
                        and len(set(languages)) == len(languages)) or not isinstance(meta, dict):
                    raise VectorsError(f"{bad}: its metadata must list distinct language codes; make it again")
                if not (n_layers >= 1 and hidden >= 1 and len(languages) * n_layers * hidden <= MAX_ELEMENTS):
                    raise VectorsError(f"{bad}: {n_layers} layers × hidden {hidden} is not a model's shape")
                if set(f.keys()) != {f"v.{l}" for l in languages}:
                    raise VectorsError(f"{bad}: its tensors do not match its languages; make it again")
                vectors = {l: f.get_tensor(f"v.{l}") for l in languages}
        except VectorsError:
            raise
        except (KeyError, ValueError) as e:
            raise VectorsError(f"{bad}: unreadable metadata ({str(e).splitlines()[0]}); make it again") from None
        except Exception as e:  # not safetensors at all
            raise VectorsError(f"{path} is not a safetensors vectors file ({str(e).splitlines()[0]})") from None
        for l, v in vectors.items():
            if tuple(v.shape) != (n_layers, hidden) or not v.is_floating_point() or not bool(torch.isfinite(v).all()):
                raise VectorsError(f"{bad}: v.{l} must be finite floats of shape [{n_layers}, {hidden}]; make it again")
        return cls(list(languages), {l: v.to(torch.float32) for l, v in vectors.items()}, meta, path)
