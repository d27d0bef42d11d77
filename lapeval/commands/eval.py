"""``lapeval eval ...``: lm-eval's own command line with ``--model lape`` available and lapeval's tasks added.

Takes exactly ``lm_eval``'s arguments (``run`` / ``ls`` / ``validate`` subcommands, or none = ``run``)
and adds ``--include_path <lapeval tasks>`` unless one is given (lm-eval 0.4.13 reads a single include
path). ``accelerate launch -m lapeval eval ...`` runs it data parallel. ``lapeval tasks-path`` prints
the tasks folder: the installed ``lapeval/tasks`` when present, else the checkout's ``tasks/``.
"""

from __future__ import annotations

import sys

from ..paths import tasks_path

LM_EVAL_SUBCOMMANDS = ("run", "ls", "validate")


def lm_eval_argv(extra: list[str], include: str | None = None) -> list[str]:
    """lm-eval's argv (without the program name) for ``lapeval eval EXTRA``."""
    args = list(extra)
    if not args or args[0] in ("-h", "--help"):
        return args or ["--help"]
    sub, rest = (args[0], args[1:]) if args[0] in LM_EVAL_SUBCOMMANDS else ("run", args)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in rest) and "-h" not in rest and "--help" not in rest:
        rest += ["--include_path", include or str(tasks_path())]
    return [sub, *rest]


def register(sub) -> None:
    p = sub.add_parser(
        "eval", add_help=False,
        help="run lm_eval with --model lape available and lapeval's tasks included (lm_eval's arguments)",
    )
    p.set_defaults(handler=_eval, accepts_extra=True)
    t = sub.add_parser("tasks-path", help="print the folder of lapeval's lm-eval task YAMLs (for --include_path)")
    t.set_defaults(handler=_tasks_path)


def _tasks_path(args) -> int:
    print(tasks_path())
    return 0


def output_path(argv: list[str]) -> str | None:
    """The value of lm-eval's ``--output_path`` / ``-o`` in ``argv`` (None when absent)."""
    for i, a in enumerate(argv):
        if a in ("--output_path", "-o") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--output_path="):
            return a.split("=", 1)[1]
    return None


def saved_since(path: str, started: float) -> bool:
    """Whether lm-eval wrote a results file for ``--output_path path`` at or after ``started``: ``path`` a
    ``.json`` name → ``<stem>_<date>.json`` beside it, else ``results_<date>.json`` under it."""
    from pathlib import Path

    p = Path(path)
    found = p.parent.glob(f"{p.stem}_*.json") if p.suffix == ".json" else (p.rglob("results_*.json") if p.is_dir() else [])
    return any(f.stat().st_mtime >= started - 1 for f in found)


def _eval(args, extra: list[str]) -> int:
    import os
    import time

    from .._io import check_writable
    from ..errors import OutputError

    try:  # the wheel installs lapeval/_autoload.py as this top-level module (beside its .pth)
        import _lapeval_autoload as autoload
    except ImportError:  # a plain checkout
        from .. import _autoload as autoload

    argv_lm = lm_eval_argv(extra)
    out = output_path(argv_lm) if argv_lm and argv_lm[0] == "run" and "--help" not in argv_lm and "-h" not in argv_lm else None
    if out:  # before the model loads: lm-eval itself only warns when it cannot save, and exits 0
        from pathlib import Path

        check_writable(out, "--output_path", directory=Path(out).suffix != ".json")
    autoload.register()
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv
    sys.argv = ["lm_eval", *argv_lm]
    started = time.time()
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse --help / errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    if out and int(os.environ.get("RANK", "0")) == 0 and not saved_since(out, started):
        raise OutputError(f"lm-eval could not save its results under --output_path {out} (its warning above says why): "
                          "free space or choose a writable location and rerun")
    return 0
