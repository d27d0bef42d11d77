"""``lapeval lss``: Language Steering Shift matrices (see :mod:`lapeval.metrics.lss`).

* ``lapeval lss score --baseline RUN --intervened fr=RUN [zh=RUN ...]``: LSS from lm-eval sample logs of
  the ``lss_*`` tasks (``--log_samples``), a baseline run and one run per amplified target language.
  RUN is a ``samples_lss_<s>_*.jsonl`` file or an output folder holding them.
* ``lapeval lss matrix --model gemma-3-270m --neurons MASK --languages en,fr,zh``: the whole matrix in
  one process with the ``lape`` model: for each target t its neurons set (``--mode set --value p_max`` by
  default) and the two objects (s and t) of every fact scored, against a baseline of the same requests in
  the same batches (an intervention that changes nothing gives exactly 0).
* ``lapeval lss layers ...``: the same with one layer's neurons at a time: a layer × target table.
* ``lapeval lss facts-dir``: the folder of lapeval's own parallel facts (MLAMA-dod-185 layout), for
  ``LAPEVAL_MLAMA_DIR``.

Both print the s×t matrix, the per-target means over s ≠ t and the overall off-diagonal mean, and with
``--out`` write them as JSON.
"""

from __future__ import annotations

import sys

from ..errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("lss", help="Language Steering Shift: from lm-eval sample logs, or a whole matrix in one process")
    ls = p.add_subparsers(dest="lss_command", metavar="ACTION", required=True)

    sc = ls.add_parser("score", help="LSS from a baseline and intervened lm-eval sample logs of the lss_* tasks")
    sc.add_argument("--baseline", required=True, help="samples_lss_*.jsonl file or lm-eval output folder (no intervention)")
    sc.add_argument("--intervened", required=True, nargs="+", metavar="LANG=RUN",
                    help="per amplified target language: its samples file or output folder")
    sc.add_argument("--out", help="write the matrix and its means as JSON here")
    sc.set_defaults(handler=_score)

    for name, help_, out_help, handler in (
            ("matrix", "the whole LSS matrix in one process with the lape model",
             "write the matrix, its means and the settings as JSON here", _matrix),
            ("layers", "per-layer LSS: each layer's neurons of the target alone (paper 2's layer analysis)",
             "write the table as JSON here (.json), with a heatmap (.png) and markdown (.md) beside it", _layers)):
        q = ls.add_parser(name, help=help_)
        add_run_args(q, layers=name == "matrix", vectors=name == "matrix")
        q.add_argument("--mode", help="intervention mode (default set)")
        q.add_argument("--value", help="intervention value (default p_max with set / add)")
        if name == "matrix":
            q.add_argument("--ops", help="an intervention spec instead of --mode/--value; terms without @LANGS act on "
                           "the target: zero@en;set:p_max, and on a mixture-of-experts mask route:bias:2 or "
                           "route:ban@src;set:p_max")
        q.add_argument("--out", help=out_help)
        add_control_args(q)
        q.set_defaults(handler=handler)

    tk = ls.add_parser("tasks", help="write lss_<s> task YAMLs for every language of a facts folder (for lm_eval --include_path)")
    tk.add_argument("--facts", required=True, help="a folder in the MLAMA-dod-185 layout: <lang>/test.jsonl, or 'builtin'")
    tk.add_argument("--out", required=True, help="the folder to write the task YAMLs into")
    tk.set_defaults(handler=_tasks)

    fd = ls.add_parser("facts-dir", help="print the folder of lapeval's parallel facts (for LAPEVAL_MLAMA_DIR)")
    fd.set_defaults(handler=_facts_dir)


def add_run_args(p, layers: bool = True, vectors: bool = False) -> None:
    """The options of an in-process LSS run (``lss matrix``, ``lss layers``, ``search-factor``): model, mask
    (or, with ``vectors``, residual vectors instead), languages, facts, sizes."""
    p.add_argument("--model", required=True, help="a known model name (gemma-3-270m), a local folder or a hub id")
    p.add_argument("--neurons", required=not vectors, help="the neuron mask (.safetensors)")
    if vectors:
        p.add_argument("--vectors", help="residual DiffMean vectors (lapeval vectors): steer with --mode add --value α "
                       "(alone, or beside --neurons for vec: terms)")
    p.add_argument("--languages", required=True, help="source languages, comma-separated (lss_<s> tasks)")
    p.add_argument("--targets", help="amplified target languages (default: --languages)")
    if layers:
        p.add_argument("--layers", help="layers to intervene in (default all), e.g. 0-5 or 0+3+17")
    p.add_argument("--facts", help="'builtin' (lapeval's own facts) or a folder in the MLAMA-dod-185 layout; "
                                   "default $LAPEVAL_MLAMA_DIR, else the hub dataset")
    p.add_argument("--limit", type=int, help="first N facts per source language")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")


def add_control_args(p) -> None:
    """``--controls K`` / ``--control-stats STATS``: random-neuron controls beside every LSS (method.md §11)."""
    p.add_argument("--controls", type=int, default=0, help="also score K random-neuron controls of the mask (seeds "
                   "0..K-1: per language and layer as many neurons, drawn among neurons no language holds, with the "
                   "same values) against the same baseline; LSS is a sign test, so disruption alone scores ~0.5")
    p.add_argument("--control-stats", default=None, help="the mask's STATS file: draw each control neuron within "
                   "the real neuron's activation-frequency bin")


def _facts_dir(args) -> int:
    from ..paths import FACTS_DIR

    print(FACTS_DIR)
    return 0


def _report(result: dict, out: str | None) -> None:
    from .._io import write_json
    from ..lss.effects import format_effects
    from ..metrics.lss import format_matrix

    print(format_matrix(result["matrix"], {"per_target": result["per_target"], "mean_off_diagonal": result["mean_off_diagonal"]}))
    if "effects" in result:
        print(format_effects(result["effects"]))
    if out:
        write_json(out, result)
        print(f"wrote {out}", file=sys.stderr)


def _score(args) -> int:
    from ..lss.matrix import lss_score

    _report(lss_score(args.baseline, args.intervened, out=args.out), None)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_kwargs(args) -> dict:
    """The keywords ``lss matrix`` and ``lss layers`` pass on unchanged (the API's names are the flags'; ``--mode``
    defaults to set, ``--value`` to p_max for set / add)."""
    if getattr(args, "ops", None) is not None and (args.mode is not None or args.value is not None):
        raise UsageError("--ops and --mode/--value both given: write the operation once, in --ops")
    mode = args.mode or "set"
    value = args.value if args.value is not None else "p_max" if mode.strip().lower() in ("set", "add") else None
    return dict(mode=mode, value=value, limit=args.limit, batch_size=args.batch_size, dtype=args.dtype,
                device=args.device, controls=args.controls, control_stats=args.control_stats,
                log=lambda m: print(m, file=sys.stderr))


def _matrix(args) -> int:
    from .._io import check_writable
    from ..lss.matrix import lss_matrix

    if args.out:
        check_writable(args.out, "--out")

    result = lss_matrix(args.model, args.neurons, args.languages, args.targets, args.facts, layers=args.layers,
                        vectors=args.vectors, ops=args.ops, **_run_kwargs(args))
    _report(result, args.out)
    return 0


def _layers(args) -> int:
    from ..lss.matrix import format_layers, lss_layers

    result = lss_layers(args.model, args.neurons, args.languages, args.targets, args.facts, out=args.out,
                        **_run_kwargs(args))
    print(format_layers(result))
    if args.out:
        print(f"wrote {args.out} and its .png / .md", file=sys.stderr)
    return 0


def _tasks(args) -> int:
    from ..lss.tasks import write_lss_tasks

    for path in write_lss_tasks(args.facts, args.out):
        print(path)
    return 0
