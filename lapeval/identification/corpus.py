"""Text to identify language neurons on: one stream of texts per language, described by a SPEC.

A SPEC is one or more sources joined by ``+`` (their texts are concatenated per language, in order):

* ``wikipedia[:DATE]`` — the hub dataset ``wikimedia/wikipedia``, config ``DATE.<lang>`` (default
  ``20231101``), field ``text``, streamed (the corpus of Tang et al. 2024).
* ``hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]`` — any hub dataset, streamed; ``{lang}`` / ``{flores}`` in CONFIG
  are replaced per language (e.g. ``hf:openlanguagedata/flores_plus:{flores}:dev:text``).
* ``flores:DIR[:SPLIT]`` — a FLORES-200 directory: ``DIR/SPLIT/<flores code>.SPLIT`` (default ``dev``: the
  ``flores_*`` tasks evaluate on ``devtest``, and asking for it here warns once that it overlaps them).
* ``ntrex:DIR`` — NTREX-128: ``DIR/NTREX-128/newstest2019-ref.<code>.txt`` (English: the ``src`` file).
* ``tico:DIR`` — TICO-19 test: ``DIR/tico19-test.<code>``.
* ``files:PATTERN`` — local files, ``{lang}`` (ISO 639-1) or ``{flores}`` in PATTERN; ``.txt`` is one text
  per line, ``.jsonl`` one JSON object per line with a ``text`` field.

Every text is yielded as it is read: nothing holds a whole corpus in memory.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import LapevalError, LapevalWarning
from ..languages import get as get_language


class CorpusError(LapevalError, ValueError):
    pass


@dataclass(frozen=True)
class Source:
    kind: str
    arg: str = ""
    rest: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join((self.kind, self.arg, *self.rest)).rstrip(":")

    @property
    def flores_split(self) -> str:
        """``dev`` unless the spec names a split: the ``flores_*`` tasks evaluate on ``devtest``."""
        return self.rest[0] if self.rest else "dev"

    # -- where a language's text is -------------------------------------------------------------
    def local_file(self, lang: str) -> Path | None:
        """The local file of ``lang`` for file-based sources (None: this source has no such language)."""
        L = get_language(lang)
        root = Path(self.arg)
        if self.kind == "flores":
            split = self.flores_split
            for p in (root / split / f"{L.flores}.{split}", root / f"{L.flores}.{split}"):
                if p.is_file():
                    return p
            return None
        if self.kind == "ntrex":
            base = root / "NTREX-128" if (root / "NTREX-128").is_dir() else root
            name = "newstest2019-src.eng.txt" if L.code == "en" else f"newstest2019-ref.{L.ntrex}.txt"
            return base / name if L.ntrex and (base / name).is_file() else None
        if self.kind == "tico":
            p = root / f"tico19-test.{L.tico}"
            return p if L.tico and p.is_file() else None
        if self.kind == "files":
            p = Path(_fill(self.arg, L))
            return p if p.is_file() else None
        return None

    def texts(self, lang: str) -> Iterator[str]:
        if self.kind in ("flores", "ntrex", "tico", "files"):
            path = self.local_file(lang)
            if path is not None:
                yield from _read_local(path)
            return
        yield from _read_hub(self, lang)


KINDS = ("wikipedia", "hf", "flores", "ntrex", "tico", "files")


def parse(spec: str) -> list[Source]:
    sources = []
    for part in (p.strip() for p in spec.split("+")):
        kind, _, rest = part.partition(":")
        if kind not in KINDS:
            raise CorpusError(
                f"unknown corpus source {part!r}: use {', '.join(k + ':...' for k in KINDS)} (join several with +)"
            )
        fields = rest.split(":") if rest else []
        if kind in ("flores", "ntrex", "tico", "files", "hf") and not fields:
            raise CorpusError(f"corpus source {kind!r} needs an argument, e.g. {kind}:PATH")
        src = Source(kind, fields[0] if fields else "", tuple(fields[1:]))
        if kind in ("flores", "ntrex", "tico") and not Path(src.arg).is_dir():
            raise CorpusError(f"corpus directory {src.arg} does not exist (from {part!r})")
        if kind == "flores":
            _check_flores_split(src, part)
        sources.append(src)
    if not sources:
        raise CorpusError("empty corpus spec: give e.g. ntrex:DIR+tico:DIR or wikipedia")
    return sources


_WARNED: set[str] = set()
DEVTEST_OVERLAP = ("identifying on FLORES devtest, which the flores_* tasks (flores_ppl, flores_mt, lang_steer "
                   "prompts) evaluate on: neurons found on the evaluation text; use flores:DIR (dev) for a clean split")


def _check_flores_split(src: Source, part: str) -> None:
    """``dev`` by default; ``devtest`` asked for explicitly warns once that it overlaps the evaluation."""
    split = src.flores_split
    if split == "devtest" and "devtest" not in _WARNED:
        import warnings

        _WARNED.add("devtest")
        warnings.warn(DEVTEST_OVERLAP, LapevalWarning, stacklevel=3)
    root = Path(src.arg)
    if not ((root / split).is_dir() or any(root.glob(f"*.{split}"))):
        raise CorpusError(f"{part}: no {split} split in {root} (looked for {root / split}/<code>.{split}); "
                          f"FLORES identification reads dev by default, as the flores_* tasks evaluate on devtest; "
                          f"name a split with flores:DIR:SPLIT")


def check_languages(sources: list[Source], languages: list[str]) -> None:
    """One-line error when some language has no text in any local source (hub sources are not probed)."""
    if any(s.kind in ("wikipedia", "hf") for s in sources):
        return
    missing = [lang for lang in languages if not any(s.local_file(lang) for s in sources)]
    if missing:
        spec = "+".join(map(str, sources))
        raise CorpusError(f"corpus {spec} has no text for {', '.join(missing)}: add a source that has them (e.g. +flores:DIR)")


SCAN_LIMIT = 256 << 20  # local files up to this size are read through before the model loads


def check_readable(sources: list[Source], languages: list[str]) -> None:
    """Read every local file of ``languages`` through once (up to :data:`SCAN_LIMIT` bytes each), so that a
    file that is not UTF-8 or a broken ``.jsonl`` line fails in one line before the model loads."""
    for src in sources:
        for lang in languages:
            p = src.local_file(lang)
            if p is not None and p.stat().st_size <= SCAN_LIMIT:
                for _ in _read_local(p):
                    pass


def texts(sources: list[Source], lang: str) -> Iterator[str]:
    """All texts of ``lang``, source after source, empty lines skipped."""
    for src in sources:
        for text in src.texts(lang):
            if text.strip():
                yield text


def _read_local(path: Path) -> Iterator[str]:
    """The texts of one local file; a line that is not UTF-8 or (``.jsonl``) not a JSON object with a
    ``text`` string is a one-line :class:`CorpusError` naming the file and line."""
    with open(path, "rb") as f:  # decoded line by line: an error names its line exactly
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{n} is not UTF-8 text (byte {raw[e.start]:#04x}): convert the file to "
                                  "UTF-8 (e.g. iconv -t utf-8)") from None
            if path.suffix != ".jsonl":
                yield line.rstrip("\r\n")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n} is not JSON ({e.msg}): a .jsonl corpus holds one JSON object "
                                  "per line with a 'text' field; fix or remove that line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise CorpusError(f"{path}:{n} has no 'text' field (a string): a .jsonl corpus holds one JSON object per "
                                  "line with a 'text' field")
            yield obj["text"]


def state(sources: list[Source], lang: str) -> list:
    """What ``lang``'s text is, for resume keys: per local source its file, size and modification time
    (an edited, replaced or added file changes it); hub sources by their spec (their revision is the hub's)."""
    out = []
    for src in sources:
        if src.kind in ("flores", "ntrex", "tico", "files"):
            p = src.local_file(lang)
            if p is not None:
                st = p.stat()
                out.append([str(src), str(p.resolve()), st.st_size, st.st_mtime_ns])
            else:
                out.append([str(src), None])
        else:
            out.append([str(src)])
    return out


def _fill(pattern: str, L) -> str:
    """``pattern`` with ``{lang}`` and ``{flores}`` filled; the FLORES code is only asked for when the
    pattern names it (a language outside lapeval's table has none: a one-line error then)."""
    return pattern.format(lang=L.code, flores=L.flores if "{flores" in pattern else "")


def _read_hub(src: Source, lang: str) -> Iterator[str]:
    from datasets import load_dataset

    L = get_language(lang)
    if src.kind == "wikipedia":
        name, config, split, field = "wikimedia/wikipedia", f"{src.arg or '20231101'}.{L.code}", "train", "text"
    else:
        name = src.arg
        config = _fill(src.rest[0], L) if len(src.rest) > 0 and src.rest[0] else None
        split = src.rest[1] if len(src.rest) > 1 else "train"
        field = src.rest[2] if len(src.rest) > 2 else "text"
    try:
        ds = load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise CorpusError(f"cannot stream {name} ({config}, {split}) from the hub: {str(e).splitlines()[0]}; "
                          "offline, use a local source (flores:/ntrex:/tico:/files:)") from None
    for row in ds:
        yield row[field]


def lid_filtered(texts, lang: str, threshold: float, counts: dict | None = None):
    """The texts of ``lang`` without those that fastText identifies as another language with probability ≥
    ``threshold`` (calibration text in the wrong language, e.g. English inside a Wikipedia dump). ``counts``
    gets ``{lang: {"read": n, "dropped": k}}`` as the texts stream by; a language losing most of its texts is
    warned about once (is it among the LID model's languages?)."""
    from ..metrics.lid import identify

    code = lang  # a lapeval code (parse_list), as identify() returns them
    c = (counts if counts is not None else {}).setdefault(code, {"read": 0, "dropped": 0})
    warned = False
    for text in texts:
        c["read"] += 1
        got, prob = identify(text)
        if got is not None and got != code and prob >= threshold:
            c["dropped"] += 1
            if not warned and c["read"] >= 20 and c["dropped"] > 0.8 * c["read"]:
                warnings.warn(f"--lid-filter drops most {lang} texts ({c['dropped']} of {c['read']}): is {lang} among "
                              "the language-ID model's languages?", LapevalWarning)
                warned = True
            continue
        yield text
