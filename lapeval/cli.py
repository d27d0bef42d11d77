"""The ``lapeval`` command. Each command group lives in ``lapeval/commands/<name>.py`` and exposes
``register(subparsers)``; heavy imports (torch, transformers, lm_eval) happen inside the handlers, so
``lapeval --help`` stays instant. Errors the user can fix are printed as one line (exit 2)."""

from __future__ import annotations

import argparse
import importlib
import sys

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


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


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
    except (UsageError, ValueError, FileNotFoundError) as e:
        if isinstance(e, ValueError) and not _is_user_error(e):
            raise
        print(f"lapeval {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


def _is_user_error(e: Exception) -> bool:
    """Our own input errors (MaskError, UnsupportedModelError, language/corpus errors) subclass ValueError
    and carry a one-line message; other ValueErrors are bugs and keep their traceback."""
    return type(e).__module__.startswith("lapeval") or (type(e) is ValueError and "\n" not in str(e))


if __name__ == "__main__":
    sys.exit(main())
