"""LSS is exactly 0 when nothing changes (paired baseline), does not depend on the batch size, runs for any
language of a facts folder, per layer (paper 2's layer analysis), and in grids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_mask

import lapeval

FACTS_ES_SW = Path(__file__).resolve().parent / "data" / "facts_es_sw"


def _cells(res) -> list[float]:
    return [v for row in res["matrix"].values() for v in row.values()]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from lapeval.lm import LapeLM

    return LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=8)


@pytest.fixture()
def mask(tmp_path):
    return random_mask(tmp_path / "tiny.safetensors", seed=5, per_lang=14, langs=("en", "fr", "ja"))


@pytest.mark.parametrize("mode, value, layers", [("scale", 1, None), ("add", 0, None), ("set", "p_max", "0")])
def test_an_intervention_that_changes_nothing_gives_exactly_zero(tiny_lm, tmp_path, mode, value, layers):
    """scale 1 and add 0 run the hooks and change no activation; layer 0 holds none of the target's neurons
    in this mask. Every cell is exactly 0, at batch sizes 1, 8 and 32."""
    from lapeval.masks import NeuronMask

    path = random_mask(tmp_path / "m.safetensors", seed=5, per_lang=14, langs=("en", "fr", "ja"))
    if layers == "0":  # every neuron moved to layer 1, so that layer 0 holds none
        m = NeuronMask.load(path)
        assigned = torch.zeros(3, 2, 48, dtype=torch.bool)
        for i, l in enumerate(m.languages):
            assigned[i, 1, m.sets[l].neuron] = True
        path = NeuronMask.from_assignment(assigned, m.languages, {"p_max": torch.rand(3, 2, 48) + 2}).save(tmp_path / "l1.safetensors")
    for bs in (1, 8, 32):
        tiny_lm.batch_size_per_gpu = bs
        res = lapeval.lss_matrix(tiny_lm, str(path), ["en", "fr", "ja"],
                                 facts="builtin", mode=mode, value=value, layers=layers, limit=8, log=lambda _: None)
        assert _cells(res) and all(v == 0.0 for v in _cells(res)), (bs, res["matrix"])
    tiny_lm.batch_size_per_gpu = 8


def test_an_empty_neuron_set_gives_exactly_zero(tiny_lm, tmp_path):
    from lapeval.masks import NeuronMask

    assigned = torch.zeros(2, 2, 48, dtype=torch.bool)
    assigned[0, 1, :5] = True  # en has neurons, fr has none
    m = NeuronMask.from_assignment(assigned, ["en", "fr"], {"p_max": torch.rand(2, 2, 48) + 2}).save(tmp_path / "e.safetensors")
    res = lapeval.lss_matrix(tiny_lm, str(m), ["en", "fr"], facts="builtin", limit=8, log=lambda _: None)
    assert res["matrix"]["en"]["fr"] == 0.0


def test_a_real_effect_of_1e_4_is_still_counted(tiny_lm, mask):
    """add 1e-4 to the target's neurons: a real, tiny change of every margin; strict growth still counts it."""
    res = lapeval.lss_matrix(tiny_lm, str(mask), ["en", "fr", "ja"], facts="builtin", mode="add", value=1e-4,
                             limit=8, log=lambda _: None)
    assert any(v > 0 for v in _cells(res)), res["matrix"]


def test_p_max_matrix_does_not_depend_on_the_batch_size(tiny_lm, mask):
    got = []
    for bs in (1, 8, 32):
        tiny_lm.batch_size_per_gpu = bs
        got.append(lapeval.lss_matrix(tiny_lm, str(mask), ["en", "fr", "ja"], facts="builtin", limit=8,
                                      log=lambda _: None)["matrix"])
    tiny_lm.batch_size_per_gpu = 8
    assert got[0] == got[1] == got[2] and any(v > 0 for row in got[0].values() for v in row.values())


def test_search_factor_no_op_candidate_is_zero(tiny_lm, mask, tmp_path):
    doc = lapeval.search_factor(tiny_lm, str(mask), "en,fr,ja", candidates="scale:1,add:0,set:p_max", facts="builtin",
                                limit=6, out=tmp_path / "f.json", log=lambda _: None)
    assert doc["overall"]["scale:1"] == 0.0 and doc["overall"]["add:0"] == 0.0
    assert all(v == 0.0 for t in ("en", "fr", "ja") for v in (doc["table"]["scale:1"][t], doc["table"]["add:0"][t]))


# ---- any language of the facts --------------------------------------------------------------------------
def test_lss_for_languages_mlama_has_no_task_for(tiny_lm, tmp_path):
    m = random_mask(tmp_path / "es.safetensors", seed=2, per_lang=14, langs=("en", "es", "sw"))
    res = lapeval.lss_matrix(tiny_lm, str(m), ["en", "es", "sw"], facts=str(FACTS_ES_SW), limit=20, log=lambda _: None)
    assert set(res["matrix"]) == {"en", "es", "sw"} and res["n_items"] == {"en": 20, "es": 20, "sw": 20}
    assert all(0.0 <= v <= 1.0 for v in _cells(res)) and res["facts"] == str(FACTS_ES_SW)


@pytest.mark.parametrize("args, expect", [
    (["--languages", "en,de"], "no lss task for de: the facts folder"),
    (["--languages", "en,es", "--targets", "ja"], "language 'ja' is not in this mask file"),
    (["--languages", "en,es", "--facts", "/no/such/folder"], "no such folder"),
])
def test_missing_languages_are_one_line_errors_before_the_model_loads(tmp_path, capsys, args, expect):
    from lapeval.cli import main

    m = random_mask(tmp_path / "es.safetensors", langs=("en", "es", "sw"))
    base = ["lss", "matrix", "--model", str(tmp_path / "no-such-model"), "--neurons", str(m), "--facts", str(FACTS_ES_SW)]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err, err


def test_lss_tasks_for_the_literal_lm_eval(tmp_path, tiny_model_dir):
    from lapeval.cli import main

    out = tmp_path / "tasks"
    assert main(["lss", "tasks", "--facts", str(FACTS_ES_SW), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_lss_facts.yaml", "lss_en.yaml", "lss_es.yaml", "lss_sw.yaml"]
    env = {k: v for k, v in os.environ.items() if k != "LAPEVAL_MLAMA_DIR"}  # the tasks name their own folder
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                        f"pretrained={tiny_model_dir},dtype=float32", "--include_path", str(out), "--tasks", "lss_es",
                        "--limit", "3", "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "o"),
                        "--log_samples"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    from lapeval.metrics.lss import read_samples

    logged = read_samples(tmp_path / "o")
    assert set(logged) == {"es"} and len(logged["es"]) == 3 and set(logged["es"][0]["margin"]) == {"en", "sw"}


# ---- per-layer LSS -------------------------------------------------------------------------------------
def test_lss_layers_table_heatmap_and_zero_where_no_neurons(tiny_lm, tmp_path):
    from lapeval.masks import NeuronMask

    assigned = torch.zeros(3, 2, 48, dtype=torch.bool)
    assigned[0, 0, :6] = True   # en: layer 0 only
    assigned[1, 1, 6:12] = True  # fr: layer 1 only
    assigned[2, :, 12:16] = True  # ja: both
    m = NeuronMask.from_assignment(assigned, ["en", "fr", "ja"], {"p_max": torch.rand(3, 2, 48) * 4 + 4}).save(tmp_path / "l.safetensors")
    out = tmp_path / "layers" / "tiny.json"
    res = lapeval.lss_layers(tiny_lm, str(m), ["en", "fr", "ja"], facts="builtin", limit=8, out=out, log=lambda _: None)
    assert res["layers"] == [0, 1] and res["n_neurons"] == {0: {"en": 6, "fr": 0, "ja": 4}, 1: {"en": 0, "fr": 6, "ja": 4}}
    assert res["table"][1]["en"] == 0.0 and res["table"][0]["fr"] == 0.0  # no neurons there: 0 by construction
    assert res["table"][0]["en"] > 0 or res["table"][1]["fr"] > 0
    # each layer alone equals lss_matrix with layers=k
    alone = lapeval.lss_matrix(tiny_lm, str(m), ["en", "fr", "ja"], facts="builtin", layers="1", limit=8, log=lambda _: None)
    assert res["matrices"][1] == alone["matrix"]
    doc = json.loads(out.read_text())
    assert doc["n_neurons"]["1"]["fr"] == 6 and out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| layer | en | fr | ja | all |" in out.with_suffix(".md").read_text()


def test_lss_layers_command(tmp_path, tiny_model_dir, capsys):
    from lapeval.cli import main

    m = random_mask(tmp_path / "m.safetensors", seed=5, per_lang=14)
    assert main(["lss", "layers", "--model", str(tiny_model_dir), "--neurons", str(m), "--languages", "en,fr",
                 "--facts", "builtin", "--limit", "3", "--batch-size", "4", "--out", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["layer", "en", "fr", "all"] and len(out.splitlines()) == 3
    assert (tmp_path / "l.png").is_file()


# ---- grids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multiplex", ["off", "on"])
def test_grid_no_op_cells_give_exactly_zero_lss(tmp_path, tiny_model_dir, monkeypatch, multiplex):
    from conftest import require_shared

    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid

    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    m = random_mask(tmp_path / "m.safetensors", seed=5, per_lang=14)
    cfg = GridConfig(model=str(tiny_model_dir), neurons=str(m), targets=["en", "fr"], facts="builtin",
                     tasks=["lss_en", "lss_fr", "lss_ja", "flores_ppl_en"], interventions=["scale:1", "set:p_max"],
                     limit=6, batch_size=4, output=str(tmp_path / "g"), bootstrap_iters=0, ci_resamples=50,
                     multiplex=multiplex, model_args={"max_length": 1024})
    run_grid(cfg, log=lambda _: None)
    s = json.loads((tmp_path / "g" / "summary.json").read_text())
    noop = s["lss"]["scale:1"]
    assert all(v == 0.0 for row in noop["matrix"].values() for v in row.values()) and noop["mean_off_diagonal"] == 0.0
    assert s["lss"]["set:p_max"]["mean_off_diagonal"] > 0
    # the no-op cells' other metrics equal the baseline's too (same batches when not multiplexed)
    if multiplex == "off":
        assert s["results"]["scale:1/fr"]["flores_ppl_en"] == s["results"]["baseline"]["flores_ppl_en"]
