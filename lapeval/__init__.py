"""lapeval: LAPE language-specific neurons, their amplification / deactivation, and LSS, inside lm-eval.

The public API, one name per CLI command (every name is imported on first use, so ``import lapeval`` loads neither torch nor lm_eval)::

    mask = lapeval.identify("gemma-3-270m", ["en", "fr"], lapeval.bundled_corpus(), out="m.safetensors")
    lm = lapeval.LapeLM(pretrained="gemma-3-270m", neurons=mask, lang="fr", mode="set", value="p_max")
    lapeval.lss_matrix(lm, mask, ["en", "fr"], facts="builtin")

=====================  =====================================================================================
identification         :func:`identify`, :func:`collect`, :func:`select`, :class:`NeuronMask`,
                       :func:`import_reference`, :func:`export_reference`, :func:`control_mask`,
                       :func:`diffmean_vectors` (→ :class:`ResidualVectors`)
interventions          :class:`Operation`, :func:`parse_ops` (→ :class:`Spec`), :func:`parse_spec`,
                       :class:`Setting`, :class:`Intervention`, :class:`Composite`, :func:`intervene`
in lm-eval             :class:`LapeLM` (the ``lape`` model), :func:`tasks_path`
evaluation             :func:`lss_matrix`, :func:`lss_layers`, :func:`lss_score`, :func:`search_factor`,
                       :class:`GridConfig`, :func:`run_grid`, :func:`write_summary`, :func:`check`
files and errors       :func:`committed_mask`, :func:`bundled_corpus`, :func:`prepare`, :class:`LapevalError`
=====================  =====================================================================================
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    # identification
    "identify": "lapeval.identification.pipeline",
    "collect": "lapeval.identification.pipeline",
    "select": "lapeval.identification.pipeline",
    "NeuronMask": "lapeval.masks",
    "import_reference": "lapeval.masks",
    "control_mask": "lapeval.identification.controls",
    "diffmean_vectors": "lapeval.identification.vectors",
    "ResidualVectors": "lapeval.vectors",
    "export_reference": "lapeval.masks",
    # interventions
    "Operation": "lapeval.intervention.operation",
    "parse_spec": "lapeval.intervention.operation",
    "parse_ops": "lapeval.intervention.operation",
    "Spec": "lapeval.intervention.operation",
    "Setting": "lapeval.intervention.setting",
    "Composite": "lapeval.intervention.hooks",
    "Intervention": "lapeval.intervention.hooks",
    "intervene": "lapeval.intervention.hooks",
    # in lm-eval
    "LapeLM": "lapeval.lm",
    "tasks_path": "lapeval.paths",
    # evaluation
    "lss_matrix": "lapeval.lss.matrix",
    "lss_layers": "lapeval.lss.matrix",
    "lss_score": "lapeval.lss.matrix",
    "search_factor": "lapeval.lss.factor",
    "GridConfig": "lapeval.grid.config",
    "run_grid": "lapeval.grid.run",
    "write_summary": "lapeval.grid.report",
    "check": "lapeval.gate",
    # files, models and errors
    "committed_mask": "lapeval.paths",
    "bundled_corpus": "lapeval.paths",
    "prepare": "lapeval.models",
    "LapevalError": "lapeval.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'lapeval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
