"""Random-neuron controls of a mask (method.md §11): is an effect the language neurons', or any disruption's?

For every language L of a mask and every layer l, a control draws |N_L^(l)| neurons of layer l among those
no language of the mask holds,

    C_L^(l) ⊂ {j : j ∉ ∪_M N_M^(l)},      |C_L^(l)| = |N_L^(l)|,

and gives them N_L's values (``p_max`` / ``p_median``: the k-th real neuron of the layer, in index order, hands
its values to the k-th drawn one), so that only the neurons' identity differs. With the activation statistics
the draw is matched on activation frequency too: every neuron's overall firing rate
P(act > 0) = Σ_L over_zero_L / Σ_L n_L is cut into ``bins`` per-layer quantile bins, and each real neuron's
stand-in comes from its own bin (the nearest bin with free neurons when its own is exhausted), so that
controls are not mostly dead neurons. One ``torch.Generator`` seeded with ``seed`` draws every language and
layer in order: the same seed gives the same file, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError

DEFAULT_BINS = 10


def _union(mask) -> torch.Tensor:
    held = torch.zeros(mask.n_layers, mask.d_ff, dtype=torch.bool)
    for s in mask.sets.values():
        held[s.layer, s.neuron] = True
    return held


def firing_rate(stats) -> torch.Tensor:
    """[n_layers, d_ff]: each neuron's P(act > 0) over every token of every language of the statistics."""
    return stats.over_zero.sum(0).double() / float(stats.n_tokens.sum())


def frequency_bins(rate: torch.Tensor, bins: int) -> torch.Tensor:
    """[n_layers, d_ff] int: each neuron's quantile bin (0 … bins−1) of the firing rate within its layer (ties
    broken by neuron index, so every bin of a layer holds d_ff / bins neurons)."""
    order = torch.argsort(rate, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(rate.shape[1]).expand_as(order).contiguous())
    return (rank * bins) // rate.shape[1]


def _draw(free: torch.Tensor, want: torch.Tensor, bin_of: torch.Tensor | None, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """Neuron indices of one layer: one free neuron per entry of ``want`` (the real neurons, in index order), from
    the same frequency bin when ``bin_of`` is given. Returns (drawn indices, in ``want``'s order; how many came
    from another bin)."""
    candidates = torch.nonzero(free).flatten()
    if bin_of is None:
        pick = candidates[torch.randperm(candidates.numel(), generator=g)[: want.numel()]]
        return pick, 0
    taken = torch.zeros_like(free)
    out, moved = [], 0
    perm = candidates[torch.randperm(candidates.numel(), generator=g)]  # one shuffled order, walked per bin
    for j in want.tolist():
        b = int(bin_of[j])
        pool = perm[(bin_of[perm] == b) & ~taken[perm]]
        if not pool.numel():  # the nearest bin with a free neuron
            dist = (bin_of[perm] - b).abs().masked_fill(taken[perm], 1 << 30)
            pool = perm[dist == dist.min()]
            moved += 1
        out.append(int(pool[0]))
        taken[pool[0]] = True
    return torch.tensor(out, dtype=torch.long), moved


def control_mask(mask, out=None, *, seed: int = 0, stats=None, bins: int = DEFAULT_BINS):
    """A random-neuron control of ``mask`` (a :class:`~lapeval.masks.NeuronMask` or its path): per language and
    layer the same number of neurons, drawn with ``seed`` among neurons no language of the mask holds, carrying
    the language's values; with ``stats`` (a :class:`~lapeval.identification.stats.Stats` or STATS file of the
    same model) drawn within the same activation-frequency bin. Saved to ``out`` when given (``lapeval masks
    control MASK --out CTRL --seed N --stats STATS``); its metadata says it is a control, of which mask
    (sha256), with which seed and matching.

    Example::

        ctrl = lapeval.control_mask("neuron_masks/gemma-3-270m.safetensors", "ctrl0.safetensors", seed=0)
        ctrl.meta["control"]["of_sha256"]
    """
    from ..masks import MaskError, NeuronMask

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed {seed!r}: give a non-negative integer")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise UsageError(f"bins {bins!r}: give a positive integer")
    if not isinstance(mask, NeuronMask):
        mask = NeuronMask.load(Path(str(mask)).expanduser())
    mask.require_dense("random-neuron controls are drawn for dense FFN layers only so far (issue 25)")
    if mask.meta.get("control"):
        raise MaskError(f"{mask.path or 'this mask'} is itself a control (of {mask.meta['control'].get('of_sha256', '?')[:12]}): "
                        "draw controls of the real mask")
    bin_of = None
    if stats is not None:
        from .stats import Stats

        if not isinstance(stats, Stats):
            stats = Stats.load(stats)
        if tuple(stats.over_zero.shape[1:]) != (mask.n_layers, mask.d_ff):
            raise UsageError(f"--stats: its {stats.over_zero.shape[1]} layers × {stats.over_zero.shape[2]} neurons do not "
                             f"match the mask's {mask.n_layers} × {mask.d_ff}: give the statistics of the mask's model")
        bin_of = frequency_bins(firing_rate(stats), bins)
    held = _union(mask)
    g = torch.Generator().manual_seed(seed)
    n = len(mask.languages)
    assigned = torch.zeros(n, mask.n_layers, mask.d_ff, dtype=torch.bool)
    kinds = [k for k in ("p_max", "p_median") if mask.has_values(k)]
    values = {k: torch.zeros(n, mask.n_layers, mask.d_ff, dtype=torch.float32) for k in kinds}
    moved = 0
    for i, lang in enumerate(mask.languages):
        s = mask.sets[lang]
        for l in range(mask.n_layers):
            sel = torch.nonzero(s.layer == l).flatten()
            if not sel.numel():
                continue
            sel = sel[torch.argsort(s.neuron[sel], stable=True)]
            free = ~held[l]
            if int(free.sum()) < sel.numel():
                raise MaskError(f"layer {l}: {lang} holds {sel.numel()} neurons but only {int(free.sum())} neurons are "
                                "held by no language: too few to draw a control from")
            drawn, m = _draw(free, s.neuron[sel], None if bin_of is None else bin_of[l], g)
            moved += m
            assigned[i, l, drawn] = True
            for k in kinds:
                values[k][i, l, drawn] = s.values[k][sel].float()
    meta = {k: v for k, v in mask.meta.items() if k not in ("control",)}
    meta["control"] = {
        "of_sha256": mask.sha256() if mask.path else None, "of": str(mask.path) if mask.path else None, "seed": seed,
        "matching": "per layer, among neurons no language holds" + (
            f", within {bins} per-layer quantile bins of P(act > 0) from the statistics" if bin_of is not None else ""),
        "bins": bins if bin_of is not None else None, "outside_own_bin": moved if bin_of is not None else None,
    }
    ctrl = NeuronMask.from_assignment(assigned, list(mask.languages), values or None, meta)
    if out is not None:
        ctrl.save(out)
    return ctrl
