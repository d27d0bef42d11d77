"""The ``lapeval`` command. Each command group lives in ``lapeval/commands/<name>.py`` and exposes
``register(subparsers)``; its handlers parse arguments, call the library (the API of :mod:`lapeval`) and
print. Heavy imports (torch, transformers, lm_eval) happen inside the handlers, so ``lapeval --help`` stays
instant. A :class:`~lapeval.errors.LapevalError` (the user's input or environment) is printed as one line
with exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import os
import sys
import warnings

from .errors import LapevalError, LapevalWarning

COMMAND_MODULES = (
    "lapeval.commands.models",
    "lapeval.commands.identify",
    "lapeval.commands.masks",
    "lapeval.commands.eval",
    "lapeval.commands.lss",
    "lapeval.commands.search_factor",
    "lapeval.commands.grid",
    "lapeval.commands.demo",
    "lapeval.commands.check",
    "lapeval.commands.vectors",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lapeval", description=__doc__.split(".")[0] + ".")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lapeval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# OSErrors that describe the machine, not a bug: said in one line wherever they escape from
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENOMEM}


def _one_line(message) -> str:
    return " ".join(str(message).split("\n"))


def _show_warning(message, category, filename, lineno, file=None, line=None, command: str = "") -> None:
    """lapeval's own warnings as one line ``lapeval COMMAND: warning: ...``; others as Python shows them."""
    if issubclass(category, LapevalWarning):
        print(f"lapeval {command}: warning: {_one_line(message)}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 success; 2 a problem with the input or the environment (one line
    on stderr naming it and the fix); 130 interrupted (Ctrl-C: finished work is kept, a rerun resumes);
    141 the reader of stdout went away (``lapeval masks show M | head``); anything else is a bug and keeps
    its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    prog = f"lapeval {args.command}"
    shown = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, command=args.command)
    try:
        rc = args.handler(args, extra) if getattr(args, "accepts_extra", False) else args.handler(args)
        sys.stdout.flush()
    except LapevalError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{chr(10) if sys.stderr.isatty() else ''}{prog}: interrupted; rerun to resume (finished work is kept)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader closed the pipe: say nothing more, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ConnectionError as e:  # the hub (or another server) cannot be reached: offline, proxy, outage
        print(f"{prog}: error: cannot reach the network ({_one_line(e)[:300]}): offline, give local data "
              "(a folder, --facts builtin, LAPEVAL_*_DIR) or run where the Hugging Face hub is reachable", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        from ._io import output_error

        print(f"{prog}: error: {_one_line(output_error(e.filename or '?', e, verb='use'))}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
