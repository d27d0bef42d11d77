"""Where the lapeval tasks get their data: the Hugging Face hub by default, a local copy when an
environment variable names one.

Every task in ``tasks/`` loads its data through one of the functions below, named in its YAML as
``custom_dataset: !function lapeval.taskdata.<name>``. lm-eval calls it as
``fn(**metadata, **dataset_kwargs)``; ``metadata`` holds the CLI ``--metadata`` and, on the command
line, every ``--model_args`` key as well, so each function takes ``**_`` and reads only its own
``lapeval_*`` keys (prefixed so that they never collide with a model argument).

Local copies (a relative path is taken from the current directory):

=========================  ==========================================================================
``LAPEVAL_FLORES_DIR``     FLORES-200 release layout: ``devtest/<code>.devtest`` (one sentence a line,
                           aligned across languages), optional ``dev/<code>.dev``; ``<code>`` is the
                           FLORES-200 code (``fra_Latn``, ``zho_Hans``).
``LAPEVAL_XCOPA_DIR``      the XCOPA repository's ``data/`` folder: ``<lang>/test.<lang>.jsonl`` and
                           ``<lang>/val.<lang>.jsonl`` (XCOPA config names: et ht id it qu sw ta th tr
                           vi zh).
``LAPEVAL_XWINOGRAD_DIR``  ``<config>.test.jsonl`` per XWinograd config (en fr jp pt ru zh), directly
                           in the folder or in its ``hf_format/`` sub-folder; fields ``sentence``
                           (with ``_``), ``option1``, ``option2``, ``answer`` ("1"/"2").
``LAPEVAL_INCLUDE_DIR``    ``<Language>/test.jsonl`` (or ``<Language>/test*.parquet``, as a snapshot of
                           the hub repository has) per INCLUDE language name (``Indonesian``); fields
                           ``question``, ``option_a`` … ``option_d``, ``answer`` (0-3), ``domain``.
``LAPEVAL_MLAMA_DIR``      ``<lang>/test.jsonl`` per language (ISO 639-1 config names, as on the hub);
                           rows ``template`` (with ``[X]``/``[Y]``) and ``sub_<l>``, ``obj_<l>`` for
                           every language ``l``. lapeval's own parallel facts ship in this layout:
                           ``lapeval lss facts-dir`` prints their folder.
``LAPEVAL_LCB_DIR``        Language Confusion Benchmark ``test_sets/`` folder (optional; the
                           ``lang_steer_*`` tasks use lapeval's own prompts without it).
=========================  ==========================================================================

Without the variable the same function loads the hub dataset that lm-eval's own task names
(``cambridgeltl/xcopa``, ``Muennighoff/xwinograd``, ``CohereForAI/include-base-44``), FLORES+
(``openlanguagedata/flores_plus``, gated: accept its terms and log in) or ``inayarhmns/MLAMA-dod-185``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

from . import languages
from .errors import InputFileError
from .paths import DATA_DIR, FACTS_DIR, STEER_PROMPTS  # noqa: F401 (re-exported)

HUB = {
    "xcopa": "cambridgeltl/xcopa",
    "xwinograd": "Muennighoff/xwinograd",
    "include": "CohereForAI/include-base-44",
    "flores": "openlanguagedata/flores_plus",
    "mlama": "inayarhmns/MLAMA-dod-185",
}
ENV = {
    "xcopa": "LAPEVAL_XCOPA_DIR",
    "xwinograd": "LAPEVAL_XWINOGRAD_DIR",
    "include": "LAPEVAL_INCLUDE_DIR",
    "flores": "LAPEVAL_FLORES_DIR",
    "mlama": "LAPEVAL_MLAMA_DIR",
    "lcb": "LAPEVAL_LCB_DIR",
}

# FLORES+ renamed a few FLORES-200 codes (individual-language ISO 639-3 codes instead of macrolanguages)
FLORES_PLUS_CODES = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", "est_Latn": "ekk_Latn", "tgl_Latn": "fil_Latn"}

class LocalDataError(InputFileError):
    """A local override names a folder that lacks the expected file."""


def local_dir(dataset: str) -> Path | None:
    """The folder named by the dataset's environment variable, or None when it is unset or empty."""
    value = os.environ.get(ENV[dataset], "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise LocalDataError(f"{ENV[dataset]}={value} is not a folder")
    return path


def _json_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset_dict(splits: dict[str, list[dict]]):
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def _files_dataset(files_by_split: dict[str, list[Path]]):
    """A DatasetDict from local jsonl/json/parquet files (one builder per format)."""
    import datasets

    out = {}
    for split, files in files_by_split.items():
        kind = "parquet" if files[0].suffix == ".parquet" else "json"
        out[split] = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    return datasets.DatasetDict(out)


def _split_files(root: Path, config: str, split: str, env: str) -> list[Path]:
    """``<root>/<config>/<split>.jsonl``, else ``<split>*.parquet|jsonl|json`` in that folder."""
    folder = root / config
    exact = folder / f"{split}.jsonl"
    if exact.is_file():
        return [exact]
    for pattern in (f"{split}*.parquet", f"{split}*.jsonl", f"{split}*.json"):
        found = sorted(Path(p) for p in glob.glob(str(folder / pattern)))
        if found:
            return found
    raise LocalDataError(f"{env}: no {split} file for {config!r} (looked for {exact} and {folder}/{split}*.parquet)")


def _hub(dataset: str, config: str, **kwargs):
    import datasets

    return datasets.load_dataset(HUB[dataset], config, **kwargs)


# ---------------------------------------------------------------------------------------------- tasks
def xcopa(lapeval_config: str, **_):
    """XCOPA config ``lapeval_config`` (validation + test)."""
    root = local_dir("xcopa")
    if root is None:
        return _hub("xcopa", lapeval_config)
    folder = root / lapeval_config
    splits = {"validation": folder / f"val.{lapeval_config}.jsonl", "test": folder / f"test.{lapeval_config}.jsonl"}
    if not splits["test"].is_file():
        raise LocalDataError(f"{ENV['xcopa']}: {splits['test']} not found (the XCOPA repository's data/ layout)")
    return _dataset_dict({name: _json_rows(p) for name, p in splits.items() if p.is_file()})


def xwinograd(lapeval_config: str, **_):
    """XWinograd config ``lapeval_config`` (test)."""
    root = local_dir("xwinograd")
    if root is None:
        return _hub("xwinograd", lapeval_config)
    for folder in (root, root / "hf_format"):
        path = folder / f"{lapeval_config}.test.jsonl"
        if path.is_file():
            return _dataset_dict({"test": _json_rows(path)})
    raise LocalDataError(f"{ENV['xwinograd']}: {lapeval_config}.test.jsonl not found in {root} or {root / 'hf_format'}")


def include(lapeval_config: str, **_):
    """INCLUDE (include-base-44) language ``lapeval_config`` (test)."""
    root = local_dir("include")
    if root is None:
        return _hub("include", lapeval_config)
    return _files_dataset({"test": _split_files(root, lapeval_config, "test", ENV["include"])})


def mlama(lapeval_lang: str, lapeval_facts_dir: str | None = None, **_):
    """The parallel facts for LSS, config ``lapeval_lang`` (test), each row tagged ``src_lang``; from
    ``lapeval_facts_dir`` when a task names its folder (tasks made by ``lapeval lss tasks``), else as
    ``LAPEVAL_MLAMA_DIR`` says, else the hub."""
    root = Path(lapeval_facts_dir).expanduser() if lapeval_facts_dir else local_dir("mlama")
    if root is None:
        ds = _hub("mlama", lapeval_lang)
    else:
        files = _split_files(root, lapeval_lang, "test", ENV["mlama"])
        ds = _files_dataset({"test": files})
        keep = facts_kept(files, lapeval_lang)
        if keep is not None and len(keep) < len(ds["test"]):
            ds["test"] = ds["test"].select(keep)
    return ds.map(lambda _: {"src_lang": lapeval_lang})


def check_facts(root: str | Path, lang: str) -> None:
    """Before anything loads: the local facts of ``lang`` under ``root`` can be read (see :func:`facts_kept`)."""
    facts_kept(_split_files(Path(root), lang, "test", ENV["mlama"]), lang)


def facts_kept(files: list[Path], lang: str) -> list[int] | None:
    """The rows of local facts files (``<lang>/test.jsonl``) to use, numbered as the dataset holds them (blank
    lines skipped); None for parquet files, which are not checked. A line that is not a JSON object, a row
    without ``template`` or ``sub_<lang>``, or no row at all is a one-line :class:`LocalDataError` naming the
    file and line; a row whose own object ``obj_<lang>`` is empty, and a repeat of an earlier row (apart
    from its ``id``), are left out with a one-line warning (LSS would score them against nothing, or twice)."""
    import warnings

    from .errors import LapevalWarning

    if any(f.suffix != ".jsonl" for f in files):
        return None
    keep, seen, empty, repeats, n_rows = [], {}, [], [], 0
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LocalDataError(f"facts file {path}: cannot read it as UTF-8 text ({e})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LocalDataError(f"facts file {path} line {n}: not JSON ({e.msg}); one fact per line") from None
            for key in ("template", f"sub_{lang}"):
                if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key]:
                    raise LocalDataError(f"facts file {path} line {n}: no {key!r} (every fact needs template, "
                                         f"sub_{lang} and obj_{lang} as text)")
            at, n_rows = (path, n), n_rows + 1
            if row.get(f"obj_{lang}") in (None, ""):
                empty.append(at)
                continue
            same = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True)
            if same in seen:
                repeats.append((at, seen[same]))
                continue
            seen[same] = at
            keep.append(n_rows - 1)
    if not keep:
        raise LocalDataError(f"facts file {files[0]}: {'no usable fact' if n_rows else 'no fact (it is empty)'}: "
                             f"give rows with template, sub_{lang} and obj_{lang}")
    said = []
    if empty:
        said.append(f"facts file {empty[0][0]}: {len(empty)} row(s) with an empty obj_{lang} left out (line "
                    f"{', '.join(str(n) for _, n in empty[:5])}{', ...' if len(empty) > 5 else ''})")
    if repeats:
        said.append(f"facts file {repeats[0][0][0]}: {len(repeats)} repeated row(s) left out (line "
                    f"{', '.join(f'{a[1]} = line {b[1]}' for a, b in repeats[:5])}{', ...' if len(repeats) > 5 else ''})")
    for text in said:
        if text not in _WARNED:  # once per process: the check before loading and the loader read the same file
            _WARNED.add(text)
            warnings.warn(text, LapevalWarning)
    return keep


_WARNED: set[str] = set()


def flores_sentences(lang: str, split: str = "devtest") -> list[str]:
    """The FLORES sentences of one language (any spelling the language table knows)."""
    code = languages.get(lang).flores
    root = local_dir("flores")
    if root is None:
        import datasets

        ds = datasets.load_dataset(HUB["flores"], FLORES_PLUS_CODES.get(code, code), split=split)
        return list(ds.sort("id")["text"])  # FLORES+ rows carry their sentence id: align on it
    path = root / split / f"{code}.{split}"
    if not path.is_file():
        raise LocalDataError(f"{ENV['flores']}: {path} not found (FLORES-200 layout: {split}/<code>.{split})")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _flores_splits() -> list[str]:
    root = local_dir("flores")
    if root is None:
        return ["dev", "devtest"]
    return [s for s in ("dev", "devtest") if (root / s).is_dir()]


def flores_mt(lapeval_src: str, lapeval_tgt: str, **_):
    """Aligned FLORES pairs ``lapeval_src`` → ``lapeval_tgt``: rows ``id``, ``source``, ``target``,
    ``src_lang``, ``tgt_lang`` (ISO codes); splits ``devtest`` and, where present, ``dev``."""
    src, tgt = languages.normalize(lapeval_src), languages.normalize(lapeval_tgt)
    splits = {}
    for split in _flores_splits():
        a, b = flores_sentences(src, split), flores_sentences(tgt, split)
        if len(a) != len(b):
            raise LocalDataError(f"FLORES {split}: {src} has {len(a)} sentences but {tgt} has {len(b)}")
        splits[split] = [
            {"id": i, "source": s, "target": t, "src_lang": src, "tgt_lang": tgt} for i, (s, t) in enumerate(zip(a, b))
        ]
    return _dataset_dict(splits)


def flores_mono(lapeval_lang: str, **_):
    """FLORES sentences of one language: rows ``id``, ``text``, ``lang``."""
    lang = languages.normalize(lapeval_lang)
    return _dataset_dict(
        {split: [{"id": i, "text": s, "lang": lang} for i, s in enumerate(flores_sentences(lang, split))]
         for split in _flores_splits()}
    )


def steer_prompts(lapeval_lang: str, **_):
    """Prompts asking for output in ``lapeval_lang``: rows ``id``, ``question``, ``lang``, ``source``.

    With ``LAPEVAL_LCB_DIR`` set: the Language Confusion Benchmark's cross-lingual prompts (English
    instructions that name the language) when it has the language, else its monolingual prompts (written
    in the language). Otherwise lapeval's own English questions, each followed by "Answer in <Language>."
    """
    lang = languages.get(lapeval_lang)
    root = local_dir("lcb")
    rows: list[dict] = []
    if root is not None:
        cross = sorted(root.glob(f"crosslingual/*/{lang.code}.csv"))
        files = cross or sorted(root.glob(f"monolingual/*/{lang.code}.csv"))
        for path in files:
            with open(path, encoding="utf-8", newline="") as f:
                for rec in csv.DictReader(f):
                    rows.append({"question": rec["prompt"].strip(), "source": f"lcb/{path.parent.name}"})
        if not rows:
            raise LocalDataError(f"{ENV['lcb']}: no prompts for {lang.code} under {root}")
    else:
        for rec in _json_rows(STEER_PROMPTS):
            rows.append({"question": f"{rec['question']} Answer in {lang.name}.", "source": "lapeval"})
    return _dataset_dict({"test": [{"id": i, "lang": lang.code, **r} for i, r in enumerate(rows)]})
