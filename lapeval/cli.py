"""The ``lapeval`` command. Each command group lives in ``lapeval/commands/<name>.py`` and exposes
``register(subparsers)``; its handlers parse arguments, call the library (the API of :mod:`lapeval`) and
print. Heavy imports (torch, transformers, lm_eval) happen inside the handlers, so ``lapeval --help`` stays
instant. A :class:`~lapeval.errors.LapevalError` (the user's input or environment) is printed as one line
with exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LapevalError

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lapeval", description=__doc__.split(".")[0] + ".")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lapeval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args.handler(args, extra) if getattr(args, "accepts_extra", False) else args.handler(args)
    except LapevalError as e:
        message = " ".join(str(e).split("\n"))
        print(f"lapeval {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
