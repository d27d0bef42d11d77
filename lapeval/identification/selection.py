"""Neuron selection: LAPE (Tang et al. 2024) and the language-activated baseline (Rahmanisa et al. 2025).

LAPE, exactly as the reference ``identify.py`` (docs/method.md §1.4–1.5), with k languages:

1. p_{l,j}(L) = over_zero_{l,j}(L) / n(L)                           (activation probability)
2. p̃_{l,j}(L) = p_{l,j}(L) / Σ_M p_{l,j}(M)   (0 where all are 0)  (L1-normalised over languages)
3. LAPE_{l,j} = −Σ_L p̃ ln p̃   (terms with p̃ = 0 count 0)          (natural log; range [0, ln k])
4. τ = the round(filter_rate·|F|)-th smallest value of F, the pooled p over languages × layers × neurons;
   a neuron with p ≤ τ in every language gets LAPE = +∞ (filtered out).
5. The round(top_rate · n_layers · d_ff) neurons of lowest LAPE, ranked over all layers, are selected.
6. bar = the round(activation_bar_ratio·|F|)-th smallest value of F; a selected neuron belongs to every
   language L with p_{l,j}(L) > bar (so a neuron may belong to several languages, or to none).

Differences from the reference, all deliberate: every language keeps its entry even with zero neurons
(the reference's ``bincount`` split drops trailing empty languages, method.md §8); probabilities are
float64 (the reference divides in float32); ties at the top-rate cut are broken by (layer, neuron) order,
where ``torch.topk`` leaves them unspecified.

Language-activated neurons of L: every neuron whose per-text mean activation is > 0 on all K texts of L,
i.e. p_min_{l,j}(L) > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass
class Selection:
    assigned: torch.Tensor  # bool [n_langs, n_layers, d_ff]
    selected: torch.Tensor  # bool [n_layers, d_ff]: chosen by the top-rate cut
    entropy: torch.Tensor  # float64 [n_layers, d_ff], +inf where filtered
    filter_threshold: float
    activation_bar: float
    params: dict


def activation_probability(over_zero: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """p [n_langs, n_layers, d_ff] = over_zero / n_tokens (float64)."""
    return over_zero.double() / n_tokens.double().view(-1, 1, 1)


def lape_entropy(p: torch.Tensor) -> torch.Tensor:
    """LAPE per neuron: entropy (natural log) of the L1-normalised probabilities over languages (dim 0)."""
    total = p.sum(0, keepdim=True)
    q = torch.where(total > 0, p / total.clamp(min=torch.finfo(p.dtype).tiny), torch.zeros_like(p))
    return -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(0)


def _kth_smallest(flat: torch.Tensor, rate: float) -> float:
    k = round(flat.numel() * rate)  # Python round, as the reference
    if not 1 <= k <= flat.numel():
        raise UsageError(f"rate {rate} selects rank {k} of {flat.numel()} values: use a rate in (0, 1]")
    return float(flat.kthvalue(k).values)


def select_lape(over_zero: torch.Tensor, n_tokens: torch.Tensor, top_rate: float = 0.01,
                filter_rate: float = 0.95, activation_bar_ratio: float = 0.95,
                valid: torch.Tensor | None = None) -> Selection:
    """LAPE selection (steps 1–6 above). ``valid``: bool [n_layers, d_ff], the units that exist (None: all);
    the others (a routed model's padding, :func:`lapeval.moe.moe_meta`) are left out of everything: of the
    pooled F behind τ and the bar, of the top-rate count round(top_rate · #valid), and of the selection."""
    if valid is not None:
        return _select_valid(over_zero, n_tokens, top_rate, filter_rate, activation_bar_ratio, valid)
    for name, v in (("top_rate", top_rate), ("filter_rate", filter_rate), ("activation_bar_ratio", activation_bar_ratio)):
        if not 0 < v <= 1:
            raise UsageError(f"{name}={v} is outside (0, 1]: pass a fraction such as 0.01 or 0.95")
    p = activation_probability(over_zero, n_tokens)
    n_langs, n_layers, d_ff = p.shape
    entropy = lape_entropy(p)
    flat = p.flatten()
    tau = _kth_smallest(flat, filter_rate)
    entropy = torch.where((p > tau).any(0), entropy, torch.full_like(entropy, float("inf")))
    n_select = round(n_layers * d_ff * top_rate)
    order = torch.sort(entropy.flatten(), stable=True).indices[:n_select]
    selected = torch.zeros(n_layers * d_ff, dtype=torch.bool)
    selected[order] = True
    selected = selected.view(n_layers, d_ff)
    bar = _kth_smallest(flat, activation_bar_ratio)
    assigned = (p > bar) & selected.unsqueeze(0)
    params = {"method": "lape", "top_rate": top_rate, "filter_rate": filter_rate,
              "activation_bar_ratio": activation_bar_ratio, "filter_threshold": tau, "activation_bar": bar}
    return Selection(assigned, selected, entropy, tau, bar, params)


def _select_valid(over_zero, n_tokens, top_rate, filter_rate, activation_bar_ratio, valid) -> Selection:
    """:func:`select_lape` on the valid units alone, scattered back into [n_langs, n_layers, d_ff]."""
    n_langs, n_layers, d_ff = over_zero.shape
    sub = select_lape(over_zero[:, valid].unsqueeze(1), n_tokens, top_rate, filter_rate, activation_bar_ratio)
    assigned = torch.zeros(n_langs, n_layers, d_ff, dtype=torch.bool)
    assigned[:, valid] = sub.assigned[:, 0]
    selected = torch.zeros(n_layers, d_ff, dtype=torch.bool)
    selected[valid] = sub.selected[0]
    entropy = torch.full((n_layers, d_ff), float("inf"), dtype=torch.float64)
    entropy[valid] = sub.entropy[0]
    return Selection(assigned, selected, entropy, sub.filter_threshold, sub.activation_bar, sub.params)


def valid_units(widths, size: int) -> torch.Tensor:
    """bool [len(widths), size]: unit i of layer l exists iff i < widths[l] (a routed model's real d_ff per
    layer, or its experts per layer E_l, 0 for a dense layer)."""
    return torch.arange(size).unsqueeze(0) < torch.tensor(widths, dtype=torch.int64).unsqueeze(1)


def select_experts(routed: torch.Tensor, n_tokens: torch.Tensor, layer_experts, top_rate: float = 0.01,
                   filter_rate: float = 0.95, activation_bar_ratio: float = 0.95) -> Selection:
    """Language-specific experts (docs/method §12): LAPE applied to the routing frequency

        r_{L,e}^(l) = routed[L, l, e] / n(L)      (the share of L's tokens whose top-k holds expert e)

    exactly as to neuron probabilities (:func:`select_lape` with r for p): entropy of the L1-normalised r
    over languages, the pooled ``filter_rate`` quantile of r as filter, the round(top_rate · #experts) experts of
    lowest entropy over all routed layers, each assigned to every language with r above the pooled
    ``activation_bar_ratio`` quantile. ``layer_experts[l]``: E of layer l (0 for a dense layer, left out)."""
    valid = valid_units(layer_experts, routed.shape[2])
    sel = select_lape(routed, n_tokens, top_rate, filter_rate, activation_bar_ratio, valid=valid)
    sel.params = {**sel.params, "of": "routing frequency r = routed / n_tokens"}
    return sel


def select_language_activated(act_min: torch.Tensor) -> Selection:
    """Neurons whose mean activation is > 0 on every kept text of the language (``act_min`` > 0)."""
    assigned = act_min > 0
    selected = assigned.any(0)
    return Selection(assigned, selected, torch.zeros(selected.shape, dtype=torch.float64), 0.0, 0.0,
                     {"method": "language_activated"})
