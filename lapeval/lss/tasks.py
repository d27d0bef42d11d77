"""The LSS tasks and their facts: where the facts come from (lapeval's own, a folder, the hub), the
``lss_<s>`` task configs for any language, and the (prompt, continuation) requests LSS scores (method.md §4).

A fact in source language s holds a prompt and its object in every language (``obj_<l>``); LSS(s, t)
scores obj_s and obj_t after prompt_s (:func:`scored_pairs`). :mod:`lapeval.lss.matrix` runs them.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..errors import UsageError

HUB_FACTS = "hub:inayarhmns/MLAMA-dod-185"


@contextmanager
def facts_env(spec: str | None):
    """While active, ``LAPEVAL_MLAMA_DIR`` points at ``facts`` (``builtin``: lapeval's own facts; else a
    folder); without ``facts`` the environment stays as it is. Yields where the facts come from."""
    from ..paths import FACTS_DIR
    from ..taskdata import ENV

    var = ENV["mlama"]
    old = os.environ.get(var)
    if spec:
        os.environ[var] = str(FACTS_DIR if spec == "builtin" else Path(spec).expanduser())
    try:
        yield os.environ.get(var) or HUB_FACTS
    finally:
        if spec:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def lss_sources() -> set[str]:
    """The source languages that have an ``lss_<s>`` task in lapeval's task folder (MLAMA-dod-185's)."""
    from ..paths import tasks_path

    return {p.stem[len("lss_"):] for p in tasks_path().rglob("lss_*.yaml")}


LSS_TASK = re.compile(r"lss_([A-Za-z]{2,3})")


def lss_source(task_name: str) -> str | None:
    """The source language of an ``lss_<s>`` task name, None for any other task."""
    m = LSS_TASK.fullmatch(str(task_name))
    return m.group(1) if m else None


def facts_location(spec: str | None) -> Path | None:
    """The local facts folder that ``spec`` (``--facts``) names — ``builtin``, a folder, or None for
    ``$LAPEVAL_MLAMA_DIR`` — or None when the facts come from the hub."""
    from ..paths import FACTS_DIR
    from ..taskdata import local_dir

    if spec:
        path = FACTS_DIR if spec == "builtin" else Path(spec).expanduser()
        if not path.is_dir():
            raise UsageError(f"--facts {spec}: no such folder; give 'builtin' or a folder holding <lang>/test.jsonl")
        return path
    return local_dir("mlama")


def facts_languages(folder: Path) -> list[str]:
    """The languages of a facts folder: its sub-folders that hold a test file."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_dir() and (any(p.glob("test*.jsonl")) or any(p.glob("test*.parquet"))))


def check_sources(sources: Sequence[str], facts: str | None = None) -> None:
    """Every source needs facts: a ``<s>/test.jsonl`` in the local facts folder, or, from the hub, one of
    MLAMA-dod-185's languages. One line, before anything loads."""
    folder = facts_location(facts)
    if folder is not None:
        have = set(facts_languages(folder))
        missing = [s for s in sources if s not in have]
        if missing:
            raise UsageError(f"no lss task for {', '.join(missing)}: the facts folder {folder} has no "
                             f"{missing[0]}/test.jsonl (it has {', '.join(sorted(have)) or 'no language'}); "
                             f"add the facts there, or drop the language")
        from ..taskdata import check_facts

        for s in sources:  # every row readable (one line naming file and row), before anything loads
            check_facts(folder, s)
        return
    known = lss_sources()
    missing = [s for s in sources if s not in known]
    if missing:
        raise UsageError(f"no lss task for {', '.join(missing)}: MLAMA-dod-185 on the hub has {', '.join(sorted(known))}; "
                         f"for other languages give --facts DIR with <lang>/test.jsonl")


def check_facts_reachable(sources: Sequence[str], facts: str | None = None) -> None:
    """Offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) with the facts on the hub and no local copy of
    them: one line naming the fix, before anything loads."""
    if facts_location(facts) is not None:
        return
    if hub_offline() and not _hub_cached(HUB_FACTS[4:]):
        raise UsageError(f"the facts of {', '.join(sources)} would come from the hub ({HUB_FACTS[4:]}), which is "
                         "unreachable offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): pass --facts DIR (MLAMA-dod-185 "
                         "layout) or --facts builtin, or set LAPEVAL_MLAMA_DIR")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off for datasets here (``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_cached(repo: str) -> bool:
    """Whether a hub dataset has a local copy in the hub or datasets cache (offline mode can then read it)."""
    try:
        from datasets import config as dconfig
        from huggingface_hub import constants
    except ImportError:
        return False
    owner, name = repo.split("/", 1)
    return ((Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}").is_dir()
            or (Path(dconfig.HF_DATASETS_CACHE) / f"{owner}___{name.lower()}").is_dir())


def lss_task_config(source: str, facts_dir: str | Path | None = None) -> dict:
    """The lm-eval task config of ``lss_<source>`` for any language: lapeval's LSS template with that
    config (and, when given, the facts folder baked in, so that the task needs no environment variable)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from ..paths import tasks_path

    cfg = load_yaml(tasks_path() / "lss" / "_lss_template_yaml")
    kwargs = {"lapeval_lang": source, **({"lapeval_facts_dir": str(facts_dir)} if facts_dir else {})}
    cfg.update(task=f"lss_{source}", dataset_name=source, dataset_kwargs=kwargs,
               metadata={"version": 1.0, "lapeval_language": source})
    return cfg


def load_lss_tasks(sources: Sequence[str]) -> dict:
    """{s: the lm-eval task object lss_<s>}: lapeval's own task where it ships one, else built on demand
    from the LSS template (:func:`lss_task_config`); data as the environment says."""
    from lm_eval.tasks import TaskManager

    from ..paths import tasks_path

    tm = TaskManager(include_defaults=False, include_path=str(tasks_path()))
    specs = [f"lss_{s}" if f"lss_{s}" in tm.all_tasks else lss_task_config(s) for s in sources]
    try:
        loaded = tm.load(specs)["tasks"]
    except ConnectionError as e:
        raise UsageError(f"the hub is unreachable for the facts ({str(e).splitlines()[0][:160]}): pass --facts DIR "
                         "or --facts builtin, or set LAPEVAL_MLAMA_DIR") from None
    return {s: loaded[f"lss_{s}"] for s in sources}


def write_lss_tasks(facts: str | Path, out: str | Path) -> list[Path]:
    """``lss_<s>.yaml`` for every language of the facts folder ``facts``, in ``out`` (for the literal
    ``lm_eval --include_path OUT --tasks lss_es``): each includes lapeval's LSS template and names its facts
    folder, plus a group ``lss_facts`` over them. Returns the files written."""
    import yaml

    from .._io import write_text
    from ..paths import tasks_path

    folder = facts_location(str(facts))
    langs = facts_languages(folder)
    if not langs:
        raise UsageError(f"{folder} holds no <lang>/test.jsonl: nothing to make tasks for")
    template = (tasks_path() / "lss" / "_lss_template_yaml").resolve()
    out = Path(out)
    written = []
    for s in langs:
        doc = {"include": str(template), "task": f"lss_{s}", "dataset_name": s,
               "dataset_kwargs": {"lapeval_lang": s, "lapeval_facts_dir": str(folder.resolve())},
               "metadata": {"version": 1.0, "lapeval_language": s}}
        path = out / f"lss_{s}.yaml"
        write_text(path, f"# made by lapeval lss tasks from {folder}\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        written.append(path)
    group = out / "_lss_facts.yaml"
    write_text(group, yaml.safe_dump({"group": "lss_facts", "task": [f"lss_{s}" for s in langs],
                                      "metadata": {"version": 1.0}}, sort_keys=False))
    return [*written, group]


def facts_of(task, limit: int | None) -> list[tuple[int, dict, str, str]]:
    """(doc_id, doc, prompt, delimiter) of a loaded lss_<s> task: prompts come from the task itself."""
    docs = list(task.test_docs())[: limit or None]
    return [(i, d, task.doc_to_text(d), task.config.target_delimiter) for i, d in enumerate(docs)]


def _rows_for(rows, t: str) -> list[tuple[str, str, dict]]:
    """(prompt, delimiter, doc) of the facts that carry a t object."""
    return [(p, delim, d) for _, d, p, delim in rows if d.get(f"obj_{t}") not in (None, "")]


def scored_pairs(rows, s: str, t: str) -> list[tuple[str, str]]:
    """The (prompt, continuation) requests that LSS(s, t) scores, in order: obj_s and obj_t of every fact of
    source s that has a t object (a fact whose two objects are spelled alike needs none: its margin is 0)."""
    return [(p, delim + d[f"obj_{l}"]) for p, delim, d in _rows_for(rows, t) for l in (s, t)
            if d[f"obj_{s}"] != d[f"obj_{t}"]]
