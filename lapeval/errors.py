"""The one base class of every error a user can fix.

An error derived from :class:`LapevalError` carries a one-line message that names the problem and the fix;
the ``lapeval`` command prints it as ``lapeval COMMAND: error: MESSAGE`` and exits with status 2. Anything
else that escapes (a ``ValueError`` from torch, a ``KeyError`` in our code) is a bug and keeps its
traceback. Subclasses also derive from the built-in exception a Python caller would expect
(``ValueError`` for bad values, ``FileNotFoundError`` for missing inputs), so ``except ValueError`` in a
notebook keeps working.
"""

from __future__ import annotations


class LapevalError(Exception):
    """A problem with the user's input or environment, described in one line with its fix."""


class UsageError(LapevalError, ValueError):
    """A bad command-line argument or API keyword."""


class LanguageError(LapevalError, ValueError):
    """A language code or language list that lapeval cannot read."""


class InputFileError(LapevalError, FileNotFoundError):
    """An input file or folder that is missing or not of the expected kind."""


class MissingPackageError(LapevalError, RuntimeError):
    """An optional package that a feature needs is not installed: the message says what to pip install."""


class ModelLoadError(LapevalError, ValueError):
    """A model that cannot be found or loaded (bad name, dtype, folder)."""


class OutputError(LapevalError, OSError):
    """An output location that cannot be written (a directory in the way, read-only, full, no permission):
    the message names the path, what the system said and the fix."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." rendering
        return str(self.args[0]) if self.args else ""


class LapevalWarning(UserWarning):
    """Input that is used but is probably not what was meant (a corpus shorter than the token budget, ...);
    the ``lapeval`` command prints it as one line ``lapeval COMMAND: warning: MESSAGE``."""
