"""Random controls of routed (mixture-of-experts) masks (method.md §11, §12): on masks identified on tiny seeded
routed models (Qwen3-MoE; DeepSeek-V3: a dense first layer narrower than the padded width, shared experts),
the control against a plain-loop reference of the draw (neurons of every language and layer, then experts),
never a held or padded neuron or expert, values carried over, byte-reproducible per seed, frequency-matched on
firing and routing rates, one-line refusals, and the CLI."""

from __future__ import annotations

import hashlib

import pytest
import torch
from test_moe import BUDGET, LANGS, MAX_LEN, K, corpus, moe_dirs  # noqa: F401 (the tiny routed models, the corpus)

from lapeval.errors import UsageError
from lapeval.masks import MaskError, NeuronMask

FAMILIES = ("qwen3_moe", "deepseek_v3")


@pytest.fixture(scope="module", params=FAMILIES)
def routed(request, moe_dirs, corpus, tmp_path_factory):  # noqa: F811
    """(mask path, STATS path) identified on the family's tiny model: about a quarter of the real neurons and
    of the routed experts, so that both kinds leave free units to draw from."""
    import lapeval

    out = tmp_path_factory.mktemp(f"ctrl-{request.param}") / "m.safetensors"
    lapeval.identify(str(moe_dirs(request.param)), LANGS, f"files:{corpus}/{{lang}}.txt", max_tokens=BUDGET,
                     n_sentences=K, max_length=MAX_LEN, batch_size=3, top_rate=0.25, expert_top_rate=0.3,
                     filter_rate=0.75, activation_bar_ratio=0.75, out=out, progress=False, log=lambda m: None)
    return out, out.with_name("m.stats.safetensors")


# ---- plain references ------------------------------------------------------------------------------
def _held_neurons(mask):
    return {(int(l), int(j)) for s in mask.sets.values() for l, j in zip(s.layer, s.neuron)}


def _held_experts(mask):
    return {(int(l), int(e)) for layer, expert in mask.experts.values() for l, e in zip(layer, expert)}


def _in_layer(layer, index, l):
    return sorted(int(j) for m, j in zip(layer.tolist(), index.tolist()) if m == l)


def plain_draw(mask, seed):
    """The unmatched control written with loops over the metadata: for each language, then layer, a shuffle
    (randperm of one generator) of the layer's unheld real neurons, the first |N_L^(l)| taken, the k-th real
    neuron's values to the k-th taken; then, from the same generator, the experts the same way among the
    layer's unheld routed experts. Returns ({lang: {(l, j): {kind: value}}}, {lang: {(l, e)}})."""
    moe = mask.meta["moe"]
    g = torch.Generator().manual_seed(seed)
    held = _held_neurons(mask)
    neurons = {}
    for lang in mask.languages:
        s, got = mask.sets[lang], {}
        for l in range(mask.n_layers):
            real = _in_layer(s.layer, s.neuron, l)
            if not real:
                continue
            free = [j for j in range(moe["layer_d_ff"][l]) if (l, j) not in held]
            drawn = [free[int(p)] for p in torch.randperm(len(free), generator=g)[: len(real)]]
            for j, d in zip(real, drawn):
                k = int(torch.nonzero((s.layer == l) & (s.neuron == j))[0])
                got[(l, d)] = {kind: float(v[k]) for kind, v in s.values.items()}
        neurons[lang] = got
    held_e = _held_experts(mask)
    experts = {}
    for lang in mask.languages:
        layer, expert = mask.experts[lang]
        experts[lang] = set()
        for l in range(mask.n_layers):
            real = _in_layer(layer, expert, l)
            if not real:
                continue
            free = [e for e in range(moe["layer_experts"][l]) if (l, e) not in held_e]
            experts[lang] |= {(l, free[int(p)]) for p in torch.randperm(len(free), generator=g)[: len(real)]}
    return neurons, experts


def plain_bins(rate, widths, bins):
    """{(l, j): bin}: rank of the rate among layer l's first widths[l] units (ties by index), bins equal slices."""
    out = {}
    for l, w in enumerate(widths):
        order = sorted(range(w), key=lambda j: (float(rate[l, j]), j))
        for r, j in enumerate(order):
            out[(l, j)] = r * bins // w
    return out


def _misplaced(want: list[int], got: list[int]) -> int:
    """How many of ``got`` have no partner of the same bin in ``want`` (multisets)."""
    left = list(want)
    n = 0
    for b in got:
        if b in left:
            left.remove(b)
        else:
            n += 1
    return n


# ---- the draw ---------------------------------------------------------------------------------------
def test_control_of_a_routed_mask_equals_the_plain_draw(routed, tmp_path):
    """(a) the same count of neurons and experts per language and layer, (b) none held by a language of the
    mask, none padded, (c) values carried over in order: all against :func:`plain_draw`; the control is still a
    routed mask with the mask's moe metadata."""
    from lapeval.identification.controls import control_mask

    mask_path, _ = routed
    mask = NeuronMask.load(mask_path)
    moe = mask.meta["moe"]
    assert sum(len(layer) for layer, _ in mask.experts.values()) > 0  # the mask holds experts
    ctrl = control_mask(mask, tmp_path / "c.safetensors", seed=3)
    back = NeuronMask.load(tmp_path / "c.safetensors")
    assert back.is_moe and back.meta["moe"] == moe and back.meta["control"]["of_sha256"] == mask.sha256()
    assert "real (unpadded) neurons" in back.meta["control"]["matching"]
    assert "routed experts no language holds" in back.meta["control"]["experts"]["matching"]
    neurons, experts = plain_draw(mask, 3)
    held, held_e = _held_neurons(mask), _held_experts(mask)
    for lang in mask.languages:
        s, c = mask.sets[lang], back.sets[lang]
        layer = mask.experts[lang][0]
        c_layer, c_expert = back.experts[lang]
        for l in range(mask.n_layers):  # (a)
            assert int((c.layer == l).sum()) == int((s.layer == l).sum())
            assert int((c_layer == l).sum()) == int((layer == l).sum())
        units = list(zip(c.layer.tolist(), c.neuron.tolist()))
        assert not set(units) & held and all(j < moe["layer_d_ff"][l] for l, j in units)  # (b)
        pairs = set(zip(c_layer.tolist(), c_expert.tolist()))
        assert not pairs & held_e and all(e < moe["layer_experts"][l] for l, e in pairs)
        assert set(units) == set(neurons[lang]) and pairs == experts[lang]  # the plain draw, in its order
        for k, u in enumerate(units):  # (c)
            for kind in ("p_max", "p_median"):
                assert float(c.values[kind][k]) == neurons[lang][u][kind]
        assert sorted(c.values["p_max"].tolist()) == sorted(s.values["p_max"].tolist())
    assert {k: (len(v.layer), v.layer.tolist()) for k, v in ctrl.sets.items()} == \
        {k: (len(v.layer), v.layer.tolist()) for k, v in back.sets.items()}
    if mask.meta["moe"]["layer_experts"][0] == 0:  # DeepSeek-V3: the draw reached the narrow dense layer
        assert any(int((c.layer == 0).sum()) for c in back.sets.values())


def test_routed_control_is_byte_reproducible_per_seed_and_differs_across_seeds(routed, tmp_path):
    """(d)"""
    from lapeval.identification.controls import control_mask

    mask_path, stats_path = routed
    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for stats in (None, stats_path):
        a = control_mask(mask_path, tmp_path / "a.safetensors", seed=5, stats=stats, bins=3).path
        b = control_mask(NeuronMask.load(mask_path), tmp_path / "b.safetensors", seed=5, stats=stats, bins=3).path
        assert digest(a) == digest(b)
    draws = [control_mask(mask_path, seed=s) for s in range(6)]
    neurons = {tuple(tuple(c.sets[l].neuron.tolist()) for l in LANGS) for c in draws}
    experts = {tuple(tuple(c.experts[l][1].tolist()) for l in LANGS) for c in draws}
    assert len(neurons) == 6 and len(experts) > 1
    with pytest.raises(MaskError, match="itself a control"):
        control_mask(tmp_path / "a.safetensors", seed=1)


def test_routed_control_matched_on_firing_and_routing_frequency(routed):
    """(e) with the statistics each drawn neuron is in its real neuron's per-layer bin of P(act > 0) over the
    layer's real neurons (the pairing read from the carried values) except for the neurons the metadata counts
    as moved; the drawn experts' bins of the routing frequency match the real experts' bins as a multiset up to
    the experts counted as moved, exactly where every bin has enough free experts. Two bins: the held experts
    are the most routed ones, and the tiny models have 6 and 8 experts per layer."""
    from lapeval.identification.controls import control_mask
    from lapeval.identification.stats import Stats

    mask_path, stats_path = routed
    mask, stats = NeuronMask.load(mask_path), Stats.load(stats_path)
    moe = mask.meta["moe"]
    bins = 2
    fire = stats.over_zero.sum(0).double() / float(stats.n_tokens.sum())
    route = stats.routed.sum(0).double() / float(stats.n_tokens.sum())
    nbin, ebin = plain_bins(fire, moe["layer_d_ff"], bins), plain_bins(route, moe["layer_experts"], bins)
    held_e = _held_experts(mask)
    free_e = {(l, b): sum(ebin[(l, e)] == b and (l, e) not in held_e for e in range(n))
              for l, n in enumerate(moe["layer_experts"]) for b in range(bins)}
    moved_n = matched_n = exact_e = 0
    for seed in range(4):
        ctrl = control_mask(mask, seed=seed, stats=stats, bins=bins)
        meta = ctrl.meta["control"]
        assert "quantile bins of P(act > 0)" in meta["matching"] and "routing frequency" in meta["experts"]["matching"]
        differ_n = misplaced_e = 0
        for lang in mask.languages:
            s, c = mask.sets[lang], ctrl.sets[lang]
            real_of = {}
            for l, j, v in zip(s.layer.tolist(), s.neuron.tolist(), s.values["p_max"].tolist()):
                assert (l, v) not in real_of  # the values identify the pairing
                real_of[(l, v)] = j
            for l, j, v in zip(c.layer.tolist(), c.neuron.tolist(), c.values["p_max"].tolist()):
                same = nbin[(l, j)] == nbin[(l, real_of[(l, v)])]
                differ_n += not same
                matched_n += same
            layer, expert = mask.experts[lang]
            c_layer, c_expert = ctrl.experts[lang]
            for l in range(mask.n_layers):
                want = [ebin[(l, e)] for e in _in_layer(layer, expert, l)]
                got = [ebin[(l, e)] for e in _in_layer(c_layer, c_expert, l)]
                misplaced_e += _misplaced(want, got)
                if want and all(free_e[(l, b)] >= want.count(b) for b in range(bins)):  # no bin runs out
                    assert sorted(got) == sorted(want)
                    exact_e += 1
        assert differ_n == meta["outside_own_bin"]
        assert misplaced_e <= meta["experts"]["outside_own_bin"]
        moved_n += meta["outside_own_bin"]
    assert matched_n > moved_n and exact_e > 0  # the test is not vacuous


# ---- refusals ----------------------------------------------------------------------------------------
def _with(mask, *, experts=None, neurons=None) -> NeuronMask:
    """A copy of ``mask`` with some languages' experts ({lang: [(l, e)]}) or neurons ({lang: [(l, j)]}) replaced
    (values of new neurons: 1.0)."""
    from lapeval.masks import LanguageNeurons

    def ints(units, i):
        return torch.tensor([u[i] for u in units], dtype=torch.long)

    sets, ex = dict(mask.sets), dict(mask.experts)
    for lang, units in (experts or {}).items():
        ex[lang] = (ints(units, 0), ints(units, 1))
    for lang, units in (neurons or {}).items():
        sets[lang] = LanguageNeurons(ints(units, 0), ints(units, 1),
                                     {k: torch.ones(len(units)) for k in mask.sets[lang].values})
    return NeuronMask(list(mask.languages), mask.n_layers, mask.d_ff, sets, dict(mask.meta), None, ex)


def test_too_few_free_experts_or_real_neurons_are_refused_in_one_line(routed):
    """(f) a language holding more experts than the layer's routed experts no language holds; one holding an
    expert of a dense layer; more neurons than a narrow layer's free real neurons (padding never makes up for
    them); a padded neuron."""
    from lapeval.identification.controls import control_mask

    mask = NeuronMask.load(routed[0])
    moe = mask.meta["moe"]
    l = max(range(mask.n_layers), key=lambda i: moe["layer_experts"][i])
    n_e = moe["layer_experts"][l]
    a, b, c = mask.languages
    many = _with(mask, experts={a: [(l, e) for e in range(n_e - 2)], b: [(l, n_e - 2)], c: [(l, n_e - 1)]})
    with pytest.raises(MaskError) as err:
        control_mask(many, seed=0)
    assert str(err.value) == (f"layer {l}: {a} holds {n_e - 2} experts but only 0 routed experts of the layer are "
                              "held by no language: too few to draw a control from")
    control_mask(_with(mask, experts={a: [(l, e) for e in range(n_e // 2)], b: [], c: []}), seed=0)  # n_e/2 free
    if moe["layer_experts"][0] == 0:  # DeepSeek-V3: layer 0 is dense, 20 real neurons of 80
        with pytest.raises(MaskError, match="^layer 0: fr holds 1 experts but only 0 routed experts"):
            control_mask(_with(mask, experts={"fr": [(0, 1)]}), seed=0)
        w = moe["layer_d_ff"][0]
        assert w < mask.d_ff
        narrow = _with(mask, neurons={a: [(0, j) for j in range(w // 2 + 1)], b: [], c: [(0, w - 1)]})
        with pytest.raises(MaskError) as err:
            control_mask(narrow, seed=0)
        assert str(err.value) == (f"layer 0: {a} holds {w // 2 + 1} neurons but only {w // 2 - 2} real (unpadded) "
                                  "neurons of the layer are held by no language: too few to draw a control from")
    padded = [(i, w) for i, w in enumerate(moe["layer_d_ff"]) if w < mask.d_ff]
    if padded:
        i, w = padded[0]
        with pytest.raises(MaskError) as err:
            control_mask(_with(mask, neurons={b: [(i, w)]}), seed=0)
        assert "\n" not in str(err.value) and f"layer {i}: {b} holds neuron {w}, a padded position" in str(err.value)


def test_statistics_of_another_model_or_without_routing_counts_are_refused(routed, tmp_path):
    """The STATS/mask shape check holds for routed statistics (over_zero has the padded width); statistics
    without routed counts cannot match experts."""
    from lapeval.identification.controls import control_mask
    from lapeval.identification.stats import Stats

    mask_path, stats_path = routed
    stats = Stats.load(stats_path)
    assert stats.over_zero.shape[1:] == (2, NeuronMask.load(mask_path).d_ff)
    control_mask(mask_path, seed=0, stats=stats_path)  # its own statistics pass the check
    wrong = Stats(stats.languages, stats.over_zero[:, :, :-1], stats.n_tokens, meta=stats.meta, routed=stats.routed)
    with pytest.raises(UsageError, match="do not match the mask's"):
        control_mask(mask_path, seed=0, stats=wrong)
    bare = Stats(stats.languages, stats.over_zero, stats.n_tokens, meta=stats.meta)
    with pytest.raises(UsageError) as err:
        control_mask(mask_path, seed=0, stats=bare)
    assert "\n" not in str(err.value) and "no routed-expert counts" in str(err.value)


# ---- the command line -------------------------------------------------------------------------------
def test_masks_control_and_show_on_a_routed_mask(routed, tmp_path, capsys):
    """(g)"""
    from lapeval.cli import main

    mask_path, stats_path = routed
    out = tmp_path / "ctrl.safetensors"
    assert main(["masks", "control", str(mask_path), "--out", str(out), "--seed", "1", "--stats", str(stats_path)]) == 0
    printed = capsys.readouterr().out
    ctrl, mask = NeuronMask.load(out), NeuronMask.load(mask_path)
    n_experts = sum(len(layer) for layer, _ in ctrl.experts.values())
    assert f"{n_experts} experts" in printed and "routing frequency" in printed
    assert ctrl.meta["control"]["seed"] == 1 and ctrl.meta["control"]["bins"] == 10
    assert main(["masks", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "control    of " in shown and "seed 1" in shown and "control    experts: per layer" in shown
    assert "experts          per layer" in shown and f"real d_ff per layer {mask.meta['moe']['layer_d_ff']}" in shown
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[shown.splitlines().index(
        next(x for x in shown.splitlines() if "experts          per layer" in x)) + 1:]}
    for lang in LANGS:  # each language's experts: its total, then its count per layer, as in the mask
        per_layer = torch.bincount(mask.experts[lang][0], minlength=mask.n_layers).tolist()
        assert rows[lang] == [str(len(mask.experts[lang][0]))] + [str(c) for c in per_layer]
