"""LAPE selection against an independent, plainly written implementation of the reference procedure."""

import math

import numpy as np
import pytest
import torch

from lapeval.identification.selection import (
    activation_probability,
    lape_entropy,
    select_language_activated,
    select_lape,
)


def plain_lape(over_zero, n_tokens, top_rate, filter_rate, bar_ratio):
    """The reference identify.py, step by step with Python loops (docs/method.md §1.4–1.5).
    Returns {language index: sorted list of (layer, neuron)}; ties at the cut go to the lower (layer, neuron)."""
    oz = np.asarray(over_zero, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64)
    k, L, D = oz.shape
    p = oz / n[:, None, None]
    pooled = sorted(p.flatten().tolist())
    tau = pooled[round(len(pooled) * filter_rate) - 1]
    bar = pooled[round(len(pooled) * bar_ratio) - 1]
    entropy = {}
    for l in range(L):
        for j in range(D):
            col = [p[i, l, j] for i in range(k)]
            total = sum(col)
            q = [c / total if total > 0 else 0.0 for c in col]
            h = -sum(x * math.log(x) for x in q if x > 0)
            if not any(c > tau for c in col):
                h = math.inf
            entropy[(l, j)] = h
    n_select = round(L * D * top_rate)
    chosen = sorted(entropy, key=lambda lj: (entropy[lj], lj))[:n_select]
    return {i: sorted(lj for lj in chosen if p[i, lj[0], lj[1]] > bar) for i in range(k)}


def as_dict(assigned):
    return {i: sorted(map(tuple, torch.nonzero(assigned[i]).tolist())) for i in range(assigned.shape[0])}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_reference_on_random_statistics(seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([1000, 1500, 800, 1200, 1000])
    # skewed probabilities so that some neurons are language-specific
    base = torch.rand(5, 3, 200, generator=g) ** 3
    over_zero = (base * n.view(-1, 1, 1)).round().long()
    for rates in [(0.01, 0.95, 0.95), (0.05, 0.9, 0.95), (0.03, 0.8, 0.7)]:
        sel = select_lape(over_zero, n, *rates)
        assert as_dict(sel.assigned) == plain_lape(over_zero, n, *rates)
        assert int(sel.selected.sum()) == round(3 * 200 * rates[0])


def test_ties_at_the_cut_and_a_language_with_no_neurons():
    g = torch.Generator().manual_seed(7)
    n = torch.tensor([500, 500, 500, 500])
    over_zero = (torch.rand(4, 2, 100, generator=g) * 200).long()
    over_zero[3] = 0  # the last language never fires: the reference would drop its entry
    # ten identical, very language-specific neurons: equal entropies straddling the 1 % cut (2 neurons)
    for j in range(10, 20):
        over_zero[:, 1, j] = torch.tensor([480, 3, 2, 0])
    sel = select_lape(over_zero, n, top_rate=0.01, filter_rate=0.95, activation_bar_ratio=0.95)
    ref = plain_lape(over_zero, n, 0.01, 0.95, 0.95)
    assert as_dict(sel.assigned) == ref
    assert as_dict(sel.assigned)[0] == [(1, 10), (1, 11)]  # lowest (layer, neuron) wins the tie
    assert sel.assigned.shape[0] == 4 and not sel.assigned[3].any()  # entry kept, empty


def test_filter_excludes_neurons_below_threshold_everywhere():
    n = torch.tensor([100, 100])
    over_zero = torch.zeros(2, 1, 100, dtype=torch.long)
    over_zero[0, 0, :] = 1  # everything weak and language-specific (entropy 0) ...
    over_zero[0, 0, 99] = 90  # ... except one strong neuron
    over_zero[1, 0, 98] = 90
    sel = select_lape(over_zero, n, top_rate=0.02, filter_rate=0.95, activation_bar_ratio=0.95)
    assert torch.isinf(sel.entropy[0, :98]).all() and sel.selected[0, 98:].all()


def test_entropy_and_probability_formulas():
    p = activation_probability(torch.tensor([[[5, 0]], [[5, 0]]]), torch.tensor([10, 20]))
    torch.testing.assert_close(p[:, 0, 0], torch.tensor([0.5, 0.25], dtype=torch.float64))
    h = lape_entropy(p)
    q = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    assert h[0, 0].item() == pytest.approx(float(-(q * q.log()).sum()))
    assert h[0, 1].item() == 0.0  # all-zero neuron: no NaN


@pytest.mark.parametrize("bad", [dict(top_rate=0), dict(filter_rate=1.5), dict(activation_bar_ratio=-0.1)])
def test_rates_outside_unit_interval_are_refused(bad):
    with pytest.raises(ValueError, match="outside"):
        select_lape(torch.ones(2, 1, 10, dtype=torch.long), torch.tensor([5, 5]), **bad)


def test_language_activated_selector():
    act_min = torch.tensor([[[0.1, -0.2, 0.0]], [[0.3, 0.2, -1.0]]])
    sel = select_language_activated(act_min)
    assert sel.assigned.tolist() == [[[True, False, False]], [[True, True, False]]]
