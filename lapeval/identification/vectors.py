"""DiffMean residual vectors from the activation statistics (method.md §11; CLaS-Bench's strongest baseline).

For decoder layer l and language L, with h^(l)(t) the layer's output (the residual stream) at a counted
token t of L's text (the same pass and the same tokens that count neuron activations)::

    μ_L^(l) = (1 / n_L) Σ_t h^(l)(t)                       (from ``resid_sum`` and ``n_tokens`` of the STATS)
    v_L^(l) = μ_L^(l) − (1 / (|𝓛| − 1)) Σ_{M ≠ L} μ_M^(l)

Steering adds α · v_L^(l) to h^(l) at the chosen layers and positions (``vectors=`` in the ``lape`` model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError


def diffmean_vectors(stats, out=None):
    """The DiffMean vector of every language of ``stats`` (a :class:`~lapeval.identification.stats.Stats` or a
    STATS file written by ``lapeval collect`` / ``identify``) at every layer, as
    :class:`~lapeval.vectors.ResidualVectors` (saved to ``out`` when given; ``lapeval vectors --stats STATS
    --out VEC``). Needs at least two languages. Means are taken in float64, the vectors stored in float32.

    Example::

        vec = lapeval.diffmean_vectors("out/gemma.stats.safetensors", out="gemma.vectors.safetensors")
        vec.vectors["fr"].shape        # [n_layers, hidden]
    """
    from .._io import sha256_file
    from ..vectors import ResidualVectors
    from .stats import Stats

    path = None
    if not isinstance(stats, Stats):
        path = Path(str(stats)).expanduser()
        stats = Stats.load(path)
    if stats.resid_sum is None:
        raise UsageError(f"{path or 'these statistics'} hold no residual sums (written before lapeval collected them): "
                         "collect again with lapeval collect / identify, which now records them in the same pass")
    if len(stats.languages) < 2:
        raise UsageError("DiffMean needs at least two languages in the statistics (each vector is a language's mean "
                         "minus the others')")
    mu = stats.resid_sum / stats.n_tokens.double().view(-1, 1, 1)  # [n_langs, n_layers, hidden]
    total = mu.sum(0)
    n = len(stats.languages)
    vectors = {lang: (mu[i] - (total - mu[i]) / (n - 1)).to(torch.float32) for i, lang in enumerate(stats.languages)}
    meta = {"method": "diffmean", "formula": "v_L = mu_L - mean_{M != L} mu_M (decoder-layer outputs, counted tokens)",
            "n_tokens": dict(zip(stats.languages, stats.n_tokens.tolist())),
            **{k: stats.meta[k] for k in ("model_id", "architecture", "corpus", "dtype") if k in stats.meta}}
    if path is not None:
        meta.update(stats=str(path), stats_sha256=sha256_file(path))
    vec = ResidualVectors(list(stats.languages), vectors, meta)
    if out is not None:
        vec.save(out)
    return vec
