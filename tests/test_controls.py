"""Random-neuron controls (method.md §11): the control mask against a plain reference, byte-reproducible per
seed, frequency-matched with statistics; effect sizes against a plain-loop reference; LSS with controls on
the tiny model (shared baseline, a no-op is exactly 0 for the real set and every control)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from conftest import random_mask, require_shared

from lapeval.masks import MaskError, NeuronMask


def _real(tmp_path):
    return NeuronMask.load(random_mask(tmp_path / "real.safetensors", seed=5, per_lang=10, langs=("en", "fr", "ja")))


def _held(mask) -> torch.Tensor:
    held = torch.zeros(mask.n_layers, mask.d_ff, dtype=torch.bool)
    for s in mask.sets.values():
        held[s.layer, s.neuron] = True
    return held


def test_control_has_the_real_counts_values_and_no_real_neuron(tmp_path):
    from lapeval.identification.controls import control_mask

    real = _real(tmp_path)
    ctrl = control_mask(real, tmp_path / "c.safetensors", seed=3)
    held = _held(real)
    assert ctrl.languages == real.languages and (ctrl.n_layers, ctrl.d_ff) == (real.n_layers, real.d_ff)
    for lang in real.languages:
        r, c = real.sets[lang], ctrl.sets[lang]
        for l in range(real.n_layers):
            rl, cl = r.layer == l, c.layer == l
            assert int(rl.sum()) == int(cl.sum())  # the same count per layer
            assert not bool(held[l, c.neuron[cl]].any())  # never a neuron some language holds
            for kind in ("p_max", "p_median"):  # the same values, only on other neurons
                assert sorted(r.values[kind][rl].tolist()) == sorted(c.values[kind][cl].tolist())
    meta = NeuronMask.load(tmp_path / "c.safetensors").meta["control"]
    assert meta["of_sha256"] == real.sha256() and meta["seed"] == 3 and "no language holds" in meta["matching"]


def test_control_is_byte_reproducible_per_seed_and_differs_across_seeds(tmp_path):
    from lapeval.identification.controls import control_mask

    real = _real(tmp_path)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    a = control_mask(real, tmp_path / "a.safetensors", seed=7).path
    b = control_mask(tmp_path / "real.safetensors", tmp_path / "b.safetensors", seed=7).path
    c = control_mask(real, tmp_path / "c.safetensors", seed=8).path
    assert digest(a) == digest(b) and digest(a) != digest(c)
    with pytest.raises(MaskError, match="itself a control"):
        control_mask(a, seed=1)


def test_control_matched_on_activation_frequency(tmp_path):
    """With statistics every control neuron comes from its real neuron's per-layer frequency bin (a reference
    computed here with plain loops)."""
    from lapeval.identification.controls import control_mask
    from lapeval.identification.stats import Stats

    real = _real(tmp_path)
    g = torch.Generator().manual_seed(0)
    over_zero = torch.randint(0, 1000, (3, 2, 48), generator=g)
    stats = Stats(["en", "fr", "ja"], over_zero, torch.tensor([1000, 1000, 1000]))
    ctrl = control_mask(real, seed=2, stats=stats, bins=4)
    rate = over_zero.sum(0).double() / 3000
    bins = {}
    for l in range(2):  # plain reference: rank within the layer, ties by index, 4 equal bins
        order = sorted(range(48), key=lambda j: (float(rate[l, j]), j))
        for r, j in enumerate(order):
            bins[(l, j)] = r * 4 // 48
    moved = 0
    for lang in real.languages:
        rs, cs = real.sets[lang], ctrl.sets[lang]
        for l in range(2):
            want = sorted(bins[(l, int(j))] for j in rs.neuron[rs.layer == l])
            got = sorted(bins[(l, int(j))] for j in cs.neuron[cs.layer == l])
            moved += sum(abs(a - b) for a, b in zip(want, got))
    assert ctrl.meta["control"]["outside_own_bin"] == 0 and moved == 0
    assert "quantile bins" in ctrl.meta["control"]["matching"]


def test_masks_control_command_and_show(tmp_path, capsys):
    from lapeval.cli import main

    _real(tmp_path)
    out = tmp_path / "ctrl.safetensors"
    assert main(["masks", "control", str(tmp_path / "real.safetensors"), "--out", str(out), "--seed", "4"]) == 0
    assert main(["masks", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "control    of " in shown and "seed 4" in shown
    assert main(["masks", "control", str(tmp_path / "real.safetensors"), "--out", str(out), "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err


def _margins(rng, n, shift):
    """{s: {t: margins}} for sources en, fr over targets en, fr, ja: ``shift`` added to each after-margin."""
    out = {}
    for s in ("en", "fr"):
        out[s] = {}
        for t in ("en", "fr", "ja"):
            if s == t:
                continue
            before = [float(x) for x in rng.normal(size=n)]
            out[s][t] = {"ids": list(range(n)), "before": before,
                         "after": [b + shift + float(e) for b, e in zip(before, rng.normal(size=n))]}
    return out


def test_effects_against_plain_loops():
    import numpy as np

    from lapeval.lss.effects import effects

    rng = np.random.default_rng(0)
    real = _margins(rng, 12, 1.0)
    ctrls = [_margins(rng, 12, 0.0) for _ in range(3)]
    for c in ctrls:  # the same facts and baseline as the real set
        for s in c:
            for t in c[s]:
                c[s][t]["before"] = real[s][t]["before"]
    eff = effects(real, {"en": 12, "fr": 12}, ctrls, resamples=300)
    g = lambda m, s, t: [float(a > b) for a, b in zip(m[s][t]["after"], m[s][t]["before"])]  # noqa: E731
    cells = [(s, t) for s in real for t in real[s]]
    real_cells = [sum(g(real, s, t)) / 12 for s, t in cells]
    ctrl_each = [sum(sum(g(c, s, t)) / 12 for s, t in cells) / len(cells) for c in ctrls]
    o = eff["overall"]
    assert o["lss"] == pytest.approx(sum(real_cells) / len(cells))
    assert o["controls"] == pytest.approx(ctrl_each) and o["control_mean"] == pytest.approx(sum(ctrl_each) / 3)
    assert o["real_minus_control"] == pytest.approx(o["lss"] - o["control_mean"])
    assert o["rank"] == 1 + sum(c >= o["lss"] for c in ctrl_each) and o["of"] == 4
    assert o["chance_corrected"] == pytest.approx((o["lss"] - o["control_mean"]) / (1 - o["control_mean"]))
    shifts = [a - b for s, t in cells for a, b in zip(real[s][t]["after"], real[s][t]["before"])]
    assert o["shift"] == pytest.approx(sum(shifts) / len(shifts))
    lo, hi = o["ci"]
    assert lo <= o["real_minus_control"] <= hi and o["shift_ci"][0] <= o["shift"] <= o["shift_ci"][1]
    fr = eff["per_target"]["fr"]  # the column t = fr: only source en
    assert fr["lss"] == pytest.approx(sum(g(real, "en", "fr")) / 12) and fr["n_cells"] == 1
    # a control identical to the real set: difference exactly 0, interval [0, 0]
    same = effects(real, {"en": 12, "fr": 12}, [real], resamples=100)["overall"]
    assert same["real_minus_control"] == 0 and same["ci"] == [0.0, 0.0] and same["rank"] == 2


def test_lss_matrix_with_controls_on_the_tiny_model(tmp_path, tiny_model_dir):
    """K controls share the real set's paired baseline: with scale:1 (a no-op) every LSS is exactly 0, for the
    real set and each control; with set:p_max each control's overall LSS is the mean of its own matrix, and
    the effects' control mean is their mean."""
    import lapeval

    mask = random_mask(tmp_path / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    lm = lapeval.LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, max_length=256)
    noop = lapeval.lss_matrix(lm, mask, ["en", "ja"], ["fr", "ja"], facts="builtin", limit=4, mode="scale",
                              value=1, controls=2, log=lambda m: None)
    assert noop["mean_off_diagonal"] == 0 and [c["mean_off_diagonal"] for c in noop["controls"]] == [0, 0]
    assert noop["effects"]["overall"]["real_minus_control"] == 0
    res = lapeval.lss_matrix(lm, mask, ["en", "ja"], ["fr", "ja"], facts="builtin", limit=4, controls=2,
                             log=lambda m: None)
    assert [c["seed"] for c in res["controls"]] == [0, 1] and "margins" not in res
    o = res["effects"]["overall"]
    assert o["lss"] == pytest.approx(res["mean_off_diagonal"])
    assert o["controls"] == pytest.approx([c["mean_off_diagonal"] for c in res["controls"]])
    assert math.isfinite(o["shift"]) and o["of"] == 3
    json.dumps(res)  # the whole result is JSON


def test_lss_layers_reports_a_control_per_layer(tmp_path, tiny_model_dir):
    import lapeval

    mask = random_mask(tmp_path / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    lm = lapeval.LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, max_length=256)
    res = lapeval.lss_layers(lm, mask, ["en", "ja"], ["fr", "ja"], facts="builtin", limit=3, controls=1,
                             out=tmp_path / "layers.json", log=lambda m: None)
    assert set(res["controls"]["table"]) == {0, 1} and set(res["controls"]["table"][0]) == {"fr", "ja"}
    md = (tmp_path / "layers.md").read_text()
    assert "control" in md and "random-neuron controls" in md
    from lapeval.lss.matrix import format_layers

    assert "all/control" in format_layers(res)


def test_controls_are_checked_before_the_model_loads(tmp_path, capsys):
    from lapeval.cli import main

    mask = random_mask(tmp_path / "m.safetensors")
    rc = main(["lss", "matrix", "--model", str(tmp_path / "no-model"), "--neurons", str(mask), "--languages", "en,fr",
               "--facts", "builtin", "--controls", "-2"])
    err = capsys.readouterr().err
    assert rc == 2 and "--controls" in err and err.count("\n") == 1


def test_search_factor_with_controls(tmp_path, tiny_model_dir):
    import lapeval

    mask = random_mask(tmp_path / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    lm = lapeval.LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, max_length=256)
    doc = lapeval.search_factor(lm, mask, ["en", "ja"], ["fr", "ja"], facts="builtin", limit=3,
                                candidates="set:p_max,scale:1", controls=2, log=lambda m: None)
    assert doc["controls"]["k"] == 2 and set(doc["effects"]) == {"set:p_max", "scale:1"}
    noop = doc["effects"]["scale:1"]["overall"]
    assert noop["lss"] == 0 and noop["controls"] == [0, 0] and noop["real_minus_control"] == 0
    o = doc["effects"]["set:p_max"]["overall"]
    assert o["lss"] == pytest.approx(doc["overall"]["set:p_max"]) and len(o["controls"]) == 2


def test_grid_controls_cells_keys_and_leaderboard(tmp_path, tiny_model_dir, monkeypatch):
    """controls: 2 adds each (intervention, target) cell on two control masks, keyed apart and leaving the real
    cells' keys as a grid without controls has them; the summary pairs each intervention with its controls and
    the leaderboard scores LSS − controls (a no-op: 0 and 0)."""
    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid
    from lapeval.paths import FACTS_DIR

    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    mask = random_mask(tmp_path / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    base = dict(model=str(tiny_model_dir), neurons=str(mask), targets=["en", "fr"],
                tasks=["lss_en", "lss_fr", "flores_ppl_en", "flores_ppl_fr"], limit=3, batch_size=4, device="cpu",
                bootstrap_iters=0, ci_resamples=20, interventions=["set:p_max", "scale:1"],
                model_args={"max_length": 1024})
    plain = GridConfig.from_dict({**base, "output": str(tmp_path / "plain")})
    cfg = GridConfig.from_dict({**base, "output": str(tmp_path / "g"), "controls": 2})
    cells = cfg.cells()
    assert len(cells) == 1 + 4 + 8 and cells[:5] == plain.cells()
    ids = [c.id for c in cells]
    assert "control1:set:p_max/fr" in ids and cells[-1].folder == "control1=scale=1__fr"
    sha = cfg.mask.sha256()
    assert [cfg.cell_key(c, sha) for c in cells[:5]] == [plain.cell_key(c, sha) for c in plain.cells()]
    assert len({cfg.cell_key(c, sha) for c in cells}) == len(cells)
    assert "controls" not in plain.to_dict() and cfg.to_dict()["controls"] == 2
    run_grid(cfg, log=lambda m: None)
    s = json.loads((tmp_path / "g" / "summary.json").read_text())
    board = next(iter(s["leaderboard"]["models"].values()))
    assert board["interventions"] == ["set:p_max", "scale:1"]
    assert board["lss"]["scale:1"] == 0 and board["lss_control"]["scale:1"] == 0
    ctrl = [s["lss"][f"control{k}:set:p_max"]["mean_off_diagonal"] for k in range(2)]
    assert board["lss_control"]["set:p_max"] == pytest.approx(sum(ctrl) / 2)
    assert board["best"]["score"] == pytest.approx(max(board["lss"]["set:p_max"] - board["lss_control"]["set:p_max"], 0))
    assert "controls' LSS" in (tmp_path / "g" / "leaderboard.md").read_text()
    # effects beside each real intervention's LSS, from the sample logs: real − control paired over facts
    eff = s["lss"]["set:p_max"]["effects"]["overall"]
    assert eff["lss"] == pytest.approx(board["lss"]["set:p_max"]) and eff["of"] == 3
    assert eff["control_mean"] == pytest.approx(board["lss_control"]["set:p_max"])
    assert eff["real_minus_control"] == pytest.approx(eff["lss"] - eff["control_mean"])
    assert eff["ci"][0] <= eff["real_minus_control"] <= eff["ci"][1]
    noop = s["lss"]["scale:1"]["effects"]["overall"]
    assert noop["shift"] == 0 and noop["real_minus_control"] == 0 and noop["ci"] == [0.0, 0.0]
    assert "effects" not in s["lss"]["control0:set:p_max"]
    # every family's self Δ beside its controls', with a paired interval (a no-op on every cell: exactly 0)
    ppl = board["families"]["flores_ppl"]
    assert ppl["metric"] == "bits_per_byte"
    assert ppl["interventions"]["scale:1"]["self"]["minus_control"] == 0
    real = ppl["interventions"]["set:p_max"]["self"]
    lo, hi = real["minus_control_ci"]
    assert lo <= real["minus_control"] <= hi and real["minus_control"] == pytest.approx(real["delta"] - real["control_delta"])
    md = (tmp_path / "g" / "summary.md").read_text()
    assert "## Interventions beside their controls" in md
    assert "| intervention | LSS | margin shift (nats) | controls' LSS | LSS − controls | rank | chance-corrected |" in md
    assert "| scale:1 | 0.000 | +0.000 [+0.000, +0.000] |" in md
    rec = json.loads((tmp_path / "g" / "cells" / "control0=set=p_max__en" / "results.json").read_text())
    assert rec["config"]["model_args"]["control_seed"] == 0 and rec["lapeval_grid"]["control"] == 0
