"""``lapeval lss``: Language Steering Shift matrices (see :mod:`lapeval.metrics.lss`).

* ``lapeval lss score --baseline RUN --intervened fr=RUN [zh=RUN ...]``: LSS from lm-eval sample logs of
  the ``lss_*`` tasks (``--log_samples``), a baseline run and one run per amplified target language.
  RUN is a ``samples_lss_<s>_*.jsonl`` file or an output folder holding them.
* ``lapeval lss matrix --model gemma-3-270m --neurons MASK --languages en,fr,zh``: the whole matrix in
  one process with the ``lape`` model: the baseline margins once, then for each target t its neurons set
  (``--mode set --value p_max`` by default) and only the two objects (s and t) of every fact re-scored.
* ``lapeval lss facts-dir``: the folder of lapeval's own parallel facts (MLAMA-dod-185 layout), for
  ``LAPEVAL_MLAMA_DIR``.

Both print the s×t matrix, the per-target means over s ≠ t and the overall off-diagonal mean, and with
``--out`` write them as JSON.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("lss", help="Language Steering Shift: from lm-eval sample logs, or a whole matrix in one process")
    ls = p.add_subparsers(dest="lss_command", metavar="ACTION", required=True)

    sc = ls.add_parser("score", help="LSS from a baseline and intervened lm-eval sample logs of the lss_* tasks")
    sc.add_argument("--baseline", required=True, help="samples_lss_*.jsonl file or lm-eval output folder (no intervention)")
    sc.add_argument("--intervened", required=True, nargs="+", metavar="LANG=RUN",
                    help="per amplified target language: its samples file or output folder")
    sc.add_argument("--out", help="write the matrix and its means as JSON here")
    sc.set_defaults(handler=_score)

    mx = ls.add_parser("matrix", help="the whole LSS matrix in one process with the lape model")
    add_run_args(mx)
    mx.add_argument("--mode", default="set", help="intervention mode (default set)")
    mx.add_argument("--value", default="p_max", help="intervention value (default p_max)")
    mx.add_argument("--out", help="write the matrix, its means and the settings as JSON here")
    mx.set_defaults(handler=_matrix)

    fd = ls.add_parser("facts-dir", help="print the folder of lapeval's parallel facts (for LAPEVAL_MLAMA_DIR)")
    fd.set_defaults(handler=_facts_dir)


def add_run_args(p) -> None:
    """The options of an in-process LSS run (``lss matrix``, ``search-factor``): model, mask, languages,
    facts, sizes."""
    p.add_argument("--model", required=True, help="a known model name (gemma-3-270m), a local folder or a hub id")
    p.add_argument("--neurons", required=True, help="the neuron mask (.safetensors)")
    p.add_argument("--languages", required=True, help="source languages, comma-separated (lss_<s> tasks)")
    p.add_argument("--targets", help="amplified target languages (default: --languages)")
    p.add_argument("--layers", help="layers to intervene in (default all), e.g. 0-5 or 0+3+17")
    p.add_argument("--facts", help="'builtin' (lapeval's own facts) or a folder in the MLAMA-dod-185 layout; "
                                   "default $LAPEVAL_MLAMA_DIR, else the hub dataset")
    p.add_argument("--limit", type=int, help="first N facts per source language")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")


@contextmanager
def facts_env(spec: str | None):
    """While active, ``LAPEVAL_MLAMA_DIR`` points at ``--facts`` (``builtin``: lapeval's own facts; else a
    folder); without ``--facts`` the environment stays as it is. Yields where the facts come from."""
    from ..taskdata import ENV, FACTS_DIR

    var = ENV["mlama"]
    old = os.environ.get(var)
    if spec:
        os.environ[var] = str(FACTS_DIR if spec == "builtin" else Path(spec).expanduser())
    try:
        yield os.environ.get(var) or "hub:inayarhmns/MLAMA-dod-185"
    finally:
        if spec:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def _facts_dir(args) -> int:
    from ..taskdata import FACTS_DIR

    print(FACTS_DIR)
    return 0


def _report(result: dict, out: str | None) -> None:
    from .._io import write_json
    from ..metrics.lss import format_matrix

    print(format_matrix(result["matrix"], {"per_target": result["per_target"], "mean_off_diagonal": result["mean_off_diagonal"]}))
    if out:
        write_json(out, result)
        print(f"wrote {out}", file=sys.stderr)


def _score(args) -> int:
    from .. import __version__
    from ..cli import UsageError
    from ..languages import normalize
    from ..metrics import lss

    runs = {}
    for spec in args.intervened:
        if "=" not in spec:
            raise UsageError(f"--intervened {spec!r}: write LANG=RUN, e.g. fr=out/intv_fr")
        lang, path = spec.split("=", 1)
        runs[normalize(lang)] = lss.read_samples(path)
    matrix = lss.score_logs(lss.read_samples(args.baseline), runs)
    result = {"matrix": matrix, **lss.summarize(matrix), "source": "sample logs",
              "baseline": args.baseline, "intervened": dict(s.split("=", 1) for s in args.intervened),
              "lapeval_version": __version__}
    _report(result, args.out)
    return 0


def _matrix(args) -> int:
    from .. import __version__, languages
    from .._io import sha256_file

    sources = languages.parse_list(args.languages)
    targets = languages.parse_list(args.targets) if args.targets else sources
    started = time.time()
    with facts_env(args.facts) as facts:
        lm = load_lape(args.model, args.batch_size, args.dtype, args.device)
        tasks = load_lss_tasks(sources)
        result = compute_matrix(lm, tasks, targets, neurons=args.neurons, mode=args.mode, value=args.value,
                                layers=args.layers, limit=args.limit, log=lambda m: print(m, file=sys.stderr))
    result.update(source="in-process (lape model)", model=args.model, neurons=args.neurons,
                  neurons_sha256=sha256_file(args.neurons), mode=args.mode,
                  value=args.value, layers=args.layers or "all", facts=facts, limit=args.limit,
                  lapeval_version=__version__, seconds=round(time.time() - started, 1))
    _report(result, args.out)
    return 0


# ------------------------------------------------------------------------------------ building blocks
def load_lape(model: str, batch_size: int = 8, dtype: str = "float32", device: str = "cpu"):
    from ..lm import LapeLM

    return LapeLM(pretrained=model, batch_size=batch_size, dtype=dtype, device=device)


def load_lss_tasks(sources: list[str]) -> dict:
    """{s: the lm-eval task object lss_<s>} from lapeval's task folder (data as the env says)."""
    from lm_eval.tasks import TaskManager

    from .eval import tasks_path

    tm = TaskManager(include_defaults=False, include_path=str(tasks_path()))
    loaded = tm.load([f"lss_{s}" for s in sources])["tasks"]
    return {s: loaded[f"lss_{s}"] for s in sources}


def _facts(task, limit: int | None) -> list[tuple[int, dict, str, str]]:
    """(doc_id, doc, prompt, delimiter) of a loaded lss_<s> task: prompts come from the task itself."""
    docs = list(task.test_docs())[: limit or None]
    return [(i, d, task.doc_to_text(d), task.config.target_delimiter) for i, d in enumerate(docs)]


def _loglikelihoods(lm, pairs: list[tuple[str, str]], task_name: str) -> dict[tuple[str, str], float]:
    from lm_eval.api.instance import Instance

    unique = list(dict.fromkeys(pairs))
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=0, metadata=(task_name, i, 1))
            for i, p in enumerate(unique)]
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    return {p: float(r[0]) for p, r in zip(unique, out)}


def _need(facts: dict, targets: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per source s, the (prompt, continuation) pairs of the baseline: obj_l for l in {s} ∪ targets."""
    return {s: [(p, delim + d[f"obj_{l}"]) for _, d, p, delim in rows
                for l in [s, *targets] if d.get(f"obj_{l}") not in (None, "")]
            for s, rows in facts.items()}


def baseline_loglikelihoods(lm, tasks: dict, targets: list[str], *, limit=None, log=print) -> dict[tuple[str, str], float]:
    """log P(obj_l | prompt_s) with no intervention, for every source task s, its first ``limit`` facts and
    l in {s} ∪ targets: ``{(prompt, continuation): log-likelihood}``. Pass it to :func:`compute_matrix`
    (``baseline=``) to score several interventions against one baseline."""
    lm.clear_intervention()
    facts = {s: _facts(task, limit) for s, task in tasks.items()}
    need = _need(facts, targets)
    base: dict[tuple[str, str], float] = {}
    t0 = time.time()
    for s in facts:
        base.update(_loglikelihoods(lm, need[s], f"lss_{s}"))
    log(f"baseline: {len(base)} log-likelihoods in {time.time() - t0:.0f}s")
    return base


def compute_matrix(lm, tasks: dict, targets: list[str], *, neurons, mode="set", value="p_max", layers=None,
                   limit=None, log=print, baseline: dict | None = None) -> dict:
    """LSS(s, t) for every source task and target language, with one model instance.

    Baseline: log P(obj_l | prompt_s) for l in {s} ∪ targets, once (or ``baseline``, as returned by
    :func:`baseline_loglikelihoods` for the same tasks, targets and limit). Then, per target t, t's
    neurons switched on and only obj_s and obj_t re-scored for every source s ≠ t.
    """
    from ..metrics import lss

    lm.clear_intervention()
    facts = {s: _facts(task, limit) for s, task in tasks.items()}
    if baseline is None:
        base = baseline_loglikelihoods(lm, tasks, targets, limit=limit, log=log)
    else:
        base = baseline
        missing = [p for pairs in _need(facts, targets).values() for p in pairs if p not in base]
        if missing:
            raise ValueError(f"the given baseline lacks {len(missing)} of the needed log-likelihoods "
                             f"(computed for other sources, targets or limit?)")

    matrix: dict[str, dict[str, float]] = {s: {} for s in facts}
    n_items = {s: len(rows) for s, rows in facts.items()}
    for t in targets:
        t0 = time.time()
        lm.set_intervention(neurons=neurons, lang=t, mode=mode, value=value, layers=layers)
        for s, rows in facts.items():
            if s == t:
                continue
            rows_t = [(p, delim, d) for _, d, p, delim in rows if d.get(f"obj_{t}") not in (None, "")]
            pairs = [(p, delim + d[f"obj_{l}"]) for p, delim, d in rows_t for l in (s, t) if d[f"obj_{s}"] != d[f"obj_{t}"]]
            new = _loglikelihoods(lm, pairs, f"lss_{s}")
            before, after = [], []
            for p, delim, d in rows_t:
                a, b = (p, delim + d[f"obj_{t}"]), (p, delim + d[f"obj_{s}"])
                before.append(base[a] - base[b])
                after.append(new[a] - new[b] if a != b else before[-1])  # same string: margin 0 before and after
            matrix[s][t] = lss.lss(before, after)
        log(f"target {t}: {time.time() - t0:.0f}s")
    lm.clear_intervention()
    return {"matrix": matrix, **lss.summarize(matrix), "n_items": n_items, "sources": list(facts), "targets": targets}
