"""lapeval: LAPE language-specific neurons, their amplification / deactivation, and LSS, inside lm-eval.

The public API (every name is imported on first use, so ``import lapeval`` loads neither torch nor lm_eval)::

    mask = lapeval.identify("gemma-3-270m", ["en", "fr"], lapeval.bundled_corpus(), out="m.safetensors")
    lm = lapeval.LapeLM(pretrained="gemma-3-270m", neurons=mask, lang="fr", mode="set", value="p_max")
    lapeval.lss_matrix(lm, mask, ["en", "fr"], facts="builtin")

=====================  =====================================================================================
identification         :func:`identify`, :func:`collect`, :func:`select`, :class:`NeuronMask`
interventions          :class:`Operation`, :func:`parse_ops` (→ :class:`Spec`), :func:`parse_spec`,
                       :class:`Intervention`, :class:`Composite`, :func:`intervene`
in lm-eval             :class:`LapeLM` (the ``lape`` model), :func:`tasks_path`
evaluation             :func:`lss_matrix`, :func:`search_factor`, :class:`GridConfig`, :func:`run_grid`,
                       :func:`check`
files and errors       :func:`committed_mask`, :func:`bundled_corpus`, :class:`LapevalError`
=====================  =====================================================================================
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "identify": "lapeval.identification",
    "collect": "lapeval.identification",
    "select": "lapeval.identification",
    "NeuronMask": "lapeval.masks",
    "Operation": "lapeval.operation",
    "parse_spec": "lapeval.operation",
    "parse_ops": "lapeval.operation",
    "Spec": "lapeval.operation",
    "Composite": "lapeval.intervene",
    "Intervention": "lapeval.intervene",
    "intervene": "lapeval.intervene",  # the module, callable as its intervene() (lapeval/_callable.py)
    "LapeLM": "lapeval.lm",
    "Setting": "lapeval.setting",
    "lss_matrix": "lapeval.lss",
    "lss_layers": "lapeval.lss",
    "search_factor": "lapeval.factor",
    "GridConfig": "lapeval.grid",
    "run_grid": "lapeval.grid",
    "check": "lapeval.check",  # the module, callable as its check()
    "tasks_path": "lapeval.paths",
    "committed_mask": "lapeval.paths",
    "bundled_corpus": "lapeval.paths",
    "LapevalError": "lapeval.errors",
}
_MODULES = {"intervene", "check"}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'lapeval' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    value = module if name in _MODULES else getattr(module, name)
    if name not in _MODULES:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
