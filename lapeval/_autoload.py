"""Make the plain ``lm_eval`` command find ``--model lape`` (lm-eval 0.4.13 has no plugin discovery).

The wheel installs this file as the top-level module ``_lapeval_autoload`` together with
``lapeval-lm-eval.pth``, whose one line calls :func:`install` at every Python start-up. So it must be
nearly free and must never fail:

* it imports nothing (not lm_eval, not torch, not even lapeval): it only puts a finder at the front of
  ``sys.meta_path`` that ignores every import except ``lm_eval.models``;
* when ``lm_eval.models`` (lm-eval's table of built-in models) is first imported, the finder lets it load
  normally and, right after it has run, registers ``lape`` as the lazy placeholder ``lapeval.lm:LapeLM``.
  Registering after the built-ins keeps them visible (a registry that is non-empty before
  ``lm_eval.models`` is imported hides them, docs/lm-eval-notes.md §1); the finder then removes itself.

``python -S`` skips ``.pth`` files; ``lapeval eval`` / ``python -m lapeval eval`` call :func:`register`
themselves. Newer lm-eval reads the ``lm_eval.models`` entry point that the package also declares.
"""

import sys

TARGET = "lm_eval.models"
MODEL_NAME = "lape"
MODEL_CLASS = "lapeval.lm:LapeLM"


def register() -> None:
    """Register ``lape`` in lm-eval's model registry (after its built-ins); idempotent."""
    import lm_eval.models  # noqa: F401  (the built-ins first)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_CLASS)


class _Finder:
    """A meta-path finder that only reacts to ``lm_eval.models``: it wraps that module's loader so that
    :func:`register` runs right after the module body."""

    _lapeval_autoload = True

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        _uninstall()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module):
            exec_module(module)
            try:
                register()
            except Exception:  # never break lm-eval itself
                pass

        loader.exec_module = exec_then_register
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_lapeval_autoload", False)]


def install() -> None:
    """Arrange for ``lape`` to be registered when lm-eval loads its models (see the module docstring)."""
    try:
        if TARGET in sys.modules:
            register()
        elif not any(getattr(f, "_lapeval_autoload", False) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
    except Exception:  # runs at interpreter start-up: must never raise
        pass
