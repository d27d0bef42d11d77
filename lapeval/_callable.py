"""Modules that are also the function they are named after.

``lapeval.intervene`` and ``lapeval.check`` are both a module (``from lapeval.intervene import Operation``)
and, in the public API, a function (``with lapeval.intervene(model, iv): ...``,
``lapeval.check(results, reference)``). Python binds a package's attribute to its submodule once that is
imported, so the function cannot simply live beside it; instead the module object is given a ``__call__``
that runs the function of the same name.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let ``module_name`` (already in ``sys.modules``) be called as its function of the same name."""
    sys.modules[module_name].__class__ = _CallableModule
