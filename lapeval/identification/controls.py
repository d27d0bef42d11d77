"""Random-neuron controls of a mask (method.md §11): is an effect the language neurons', or any disruption's?

For every language L of a mask and every layer l, a control draws |N_L^(l)| neurons of layer l among those
no language of the mask holds,

    C_L^(l) ⊂ {j : j ∉ ∪_M N_M^(l)},      |C_L^(l)| = |N_L^(l)|,

and gives them N_L's values (``p_max`` / ``p_median``: the k-th real neuron of the layer, in index order, hands
its values to the k-th drawn one), so that only the neurons' identity differs. With the activation statistics
the draw is matched on activation frequency too: every neuron's overall firing rate
P(act > 0) = Σ_L over_zero_L / Σ_L n_L is cut into ``bins`` per-layer quantile bins, and each real neuron's
stand-in comes from its own bin (the nearest bin with free neurons when its own is exhausted), so that
controls are not mostly dead neurons.

Routed (mixture-of-experts) masks (method.md §12, :func:`lapeval.moe.moe_meta`) keep the rule for neurons,
with layer l's pool cut to its real width d_ff(l) = ``moe.layer_d_ff[l]`` (a padded position j ≥ d_ff(l)
never fires and is never drawn; the frequency bins are quantiles over those d_ff(l) neurons):

    C_L^(l) ⊂ {j < d_ff(l) : j ∉ ∪_M N_M^(l)}.

When the mask holds language-specific experts X_L^(l), the control draws as many experts among the E_l =
``moe.layer_experts[l]`` routed experts of layer l (0 for a dense layer) that no language holds,

    D_L^(l) ⊂ {e < E_l : e ∉ ∪_M X_M^(l)},      |D_L^(l)| = |X_L^(l)|,

matched with the statistics on the routing frequency r_e^(l) = Σ_L routed[L,l,e] / Σ_L n_L (the same
per-layer quantile bins over the E_l experts, the same nearest-bin rule); they are the control's experts.

One ``torch.Generator`` seeded with ``seed`` draws, in this order: the neurons of every language (the mask's
order) and layer (ascending), then the experts of every language and layer in the same order (so a mask's
neuron draw does not depend on its experts). The same seed gives the same file, byte for byte.
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


def routing_rate(stats) -> torch.Tensor:
    """[n_layers, E]: each routed expert's r_e^(l), the fraction of every token of every language of the
    statistics whose top-k holds it (routed models' statistics)."""
    return stats.routed.sum(0).double() / float(stats.n_tokens.sum())


def frequency_bins(rate: torch.Tensor, bins: int) -> torch.Tensor:
    """[n_layers, d_ff] int: each neuron's quantile bin (0 … bins−1) of the firing rate within its layer (ties
    broken by neuron index, so every bin of a layer holds d_ff / bins neurons)."""
    order = torch.argsort(rate, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(rate.shape[1]).expand_as(order).contiguous())
    return (rank * bins) // rate.shape[1]


def _bins_within(rate: torch.Tensor, widths: list[int], bins: int) -> torch.Tensor:
    """[n_layers, width] int: :func:`frequency_bins` of each layer's first ``widths[l]`` entries (its real
    neurons or routed experts), −1 beyond them (padding, never drawn). With every width full it is
    ``frequency_bins(rate, bins)``."""
    out = torch.full(rate.shape, -1, dtype=torch.long)
    for l, w in enumerate(widths):
        if w:
            out[l, :w] = frequency_bins(rate[l:l + 1, :w], bins)[0]
    return out


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


def _draw_sets(languages, units, free, bin_of, g, noun: str, pool: str):
    """Per language (in order) and layer (ascending): as many free units as the language holds in the layer.
    ``units``: per language (layer, index) int64 tensors; ``free``: bool [n_layers, width], the units a draw may
    take. Returns (assigned bool [n_langs, n_layers, width], [(language row, the real units' positions in its
    tensors in index order, the drawn indices in that order)], how many came from another bin)."""
    from ..masks import MaskError

    n_layers, width = free.shape
    assigned = torch.zeros(len(languages), n_layers, width, dtype=torch.bool)
    pairs, moved = [], 0
    for i, (lang, (layer, index)) in enumerate(zip(languages, units)):
        for l in range(n_layers):
            sel = torch.nonzero(layer == l).flatten()
            if not sel.numel():
                continue
            sel = sel[torch.argsort(index[sel], stable=True)]
            n_free = int(free[l].sum())
            if n_free < sel.numel():
                raise MaskError(f"layer {l}: {lang} holds {sel.numel()} {noun} but only {n_free} {pool} are held by "
                                "no language: too few to draw a control from")
            drawn, m = _draw(free[l], index[sel], None if bin_of is None else bin_of[l], g)
            moved += m
            assigned[i, l, drawn] = True
            pairs.append((i, sel, drawn))
    return assigned, pairs, moved


def _moe_layout(mask) -> tuple[list[int], list[int], int]:
    """A routed mask's (real width per layer, routed experts per layer, E) from its ``moe`` metadata, checked."""
    from ..masks import CorruptMaskError

    moe = mask.meta["moe"]
    widths, experts, n_experts = moe.get("layer_d_ff"), moe.get("layer_experts"), moe.get("experts")

    def ints(x, hi):
        return (isinstance(x, list) and len(x) == mask.n_layers
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi for v in x))

    if not (isinstance(n_experts, int) and n_experts >= 0 and ints(widths, mask.d_ff) and ints(experts, n_experts)):
        raise CorruptMaskError(f"{mask.path or 'this mask'}: its moe metadata lacks layer_d_ff / layer_experts for its "
                               f"{mask.n_layers} layers within {mask.d_ff} neurons and experts; re-save it with "
                               "lapeval identify or select")
    return widths, experts, n_experts


def control_mask(mask, out=None, *, seed: int = 0, stats=None, bins: int = DEFAULT_BINS):
    """A random-neuron control of ``mask`` (a :class:`~lapeval.masks.NeuronMask` or its path): per language and
    layer the same number of neurons, drawn with ``seed`` among neurons no language of the mask holds, carrying
    the language's values; with ``stats`` (a :class:`~lapeval.identification.stats.Stats` or STATS file of the
    same model) drawn within the same activation-frequency bin. A routed model's mask keeps its ``moe``
    metadata, never draws a padded neuron, and when it holds language-specific experts gets as many experts
    per language and layer among the routed experts no language holds (matched on routing frequency with
    ``stats``). Saved to ``out`` when given (``lapeval masks control MASK --out CTRL --seed N --stats STATS``);
    its metadata says it is a control, of which mask (sha256), with which seed and matching.

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
    if mask.meta.get("control"):
        raise MaskError(f"{mask.path or 'this mask'} is itself a control (of {mask.meta['control'].get('of_sha256', '?')[:12]}): "
                        "draw controls of the real mask")
    routed = mask.is_moe
    if routed:
        widths, layer_experts, n_experts = _moe_layout(mask)
    else:
        widths, layer_experts, n_experts = [mask.d_ff] * mask.n_layers, None, 0
    with_experts = routed and bool(mask.experts)
    for lang in mask.languages:  # selection never takes padding: a mask that does is not a model's
        s = mask.sets[lang]
        beyond = s.neuron >= torch.tensor(widths, dtype=torch.long)[s.layer]
        if bool(beyond.any()):
            k = int(torch.nonzero(beyond)[0])
            raise MaskError(f"layer {int(s.layer[k])}: {lang} holds neuron {int(s.neuron[k])}, a padded position beyond "
                            f"the layer's {widths[int(s.layer[k])]} real neurons: re-create the mask with lapeval identify")
    bin_of = expert_bin_of = None
    if stats is not None:
        from .stats import Stats

        if not isinstance(stats, Stats):
            stats = Stats.load(stats)
        if tuple(stats.over_zero.shape[1:]) != (mask.n_layers, mask.d_ff):
            raise UsageError(f"--stats: its {stats.over_zero.shape[1]} layers × {stats.over_zero.shape[2]} neurons do not "
                             f"match the mask's {mask.n_layers} × {mask.d_ff}: give the statistics of the mask's model")
        smoe = stats.meta.get("moe")
        if routed and isinstance(smoe, dict) and (smoe.get("layer_d_ff"), smoe.get("layer_experts")) != (widths, layer_experts):
            raise UsageError(f"--stats: its real widths per layer {smoe.get('layer_d_ff')} and routed experts "
                             f"{smoe.get('layer_experts')} are not the mask's {widths} and {layer_experts}: give the "
                             "statistics of the mask's model")
        bin_of = _bins_within(firing_rate(stats), widths, bins)
        if with_experts:
            if stats.routed is None or tuple(stats.routed.shape[1:]) != (mask.n_layers, n_experts):
                have = "no routed-expert counts" if stats.routed is None else \
                    f"routed counts for {stats.routed.shape[1]} layers × {stats.routed.shape[2]} experts"
                raise UsageError(f"--stats: it holds {have}, so the mask's {mask.n_layers} layers × {n_experts} experts "
                                 "cannot be matched on routing frequency: give the STATS file the mask was identified from")
            expert_bin_of = _bins_within(routing_rate(stats), layer_experts, bins)
    g = torch.Generator().manual_seed(seed)
    free = ~_union(mask) & (torch.arange(mask.d_ff) < torch.tensor(widths).view(-1, 1))
    units = [(mask.sets[lang].layer, mask.sets[lang].neuron) for lang in mask.languages]
    pool = "real (unpadded) neurons of the layer" if routed else "neurons"
    assigned, pairs, moved = _draw_sets(mask.languages, units, free, bin_of, g, "neurons", pool)
    kinds = [k for k in ("p_max", "p_median") if mask.has_values(k)]
    n = len(mask.languages)
    values = {k: torch.zeros(n, mask.n_layers, mask.d_ff, dtype=torch.float32) for k in kinds}
    for i, sel, drawn in pairs:
        l = int(mask.sets[mask.languages[i]].layer[sel[0]])
        for k in kinds:
            values[k][i, l, drawn] = mask.sets[mask.languages[i]].values[k][sel].float()
    meta = {k: v for k, v in mask.meta.items() if k not in ("control",)}
    meta["control"] = {
        "of_sha256": mask.sha256() if mask.path else None, "of": str(mask.path) if mask.path else None, "seed": seed,
        "matching": ("per layer, among the layer's real (unpadded) neurons no language holds" if routed else
                     "per layer, among neurons no language holds") + (
            f", within {bins} per-layer quantile bins of P(act > 0) from the statistics" if bin_of is not None else ""),
        "bins": bins if bin_of is not None else None, "outside_own_bin": moved if bin_of is not None else None,
    }
    experts = None
    if with_experts:  # after every neuron, from the same generator
        held = mask.expert_assignment().any(0)  # [n_layers, E]: held by some language
        routable = torch.arange(n_experts) < torch.tensor(layer_experts).view(-1, 1)
        empty = torch.zeros(0, dtype=torch.long)
        units = [mask.experts.get(lang, (empty, empty)) for lang in mask.languages]
        experts, _, e_moved = _draw_sets(mask.languages, units, ~held & routable, expert_bin_of, g, "experts",
                                         "routed experts of the layer")
        matched = expert_bin_of is not None
        meta["control"]["experts"] = {
            "matching": "per layer, among the layer's routed experts no language holds" + (
                f", within {bins} per-layer quantile bins of the routing frequency r_e from the statistics"
                if matched else ""),
            "bins": bins if matched else None, "outside_own_bin": e_moved if matched else None,
        }
    ctrl = NeuronMask.from_assignment(assigned, list(mask.languages), values or None, meta, experts=experts)
    if out is not None:
        ctrl.save(out)
    return ctrl
