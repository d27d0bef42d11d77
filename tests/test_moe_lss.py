"""LSS, search-factor and grids on a routed model (issue 25): neuron and router terms of a mixture-of-experts
mask through ``lapeval lss matrix``, ``lapeval search-factor`` and ``lapeval grid`` on a tiny Qwen3-MoE —
a no-op scores exactly 0, the router terms move margins, and the three surfaces agree on the same spec."""

from __future__ import annotations

import json

import pytest
from test_moe import moe_dirs  # noqa: F401 (a fixture)
from test_moe_route import _expert_mask

from lapeval.cli import main


@pytest.fixture()
def routed(moe_dirs, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LAPEVAL_MLAMA_DIR", raising=False)
    path = moe_dirs("qwen3_moe")
    return path, _expert_mask(path, tmp_path / "moe.safetensors")


RUN = ["--languages", "en,id,vi", "--facts", "builtin", "--limit", "4", "--batch-size", "4"]


def _matrix(tmp_path, path, mask, name, *args):
    out = tmp_path / f"{name}.json"
    assert main(["lss", "matrix", "--model", str(path), "--neurons", str(mask), *RUN, *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_lss_matrix_takes_router_and_neuron_terms(routed, tmp_path, capsys):
    path, mask = routed
    noop = _matrix(tmp_path, path, mask, "noop", "--ops", "route:bias:0")
    assert noop["ops"] == "route:bias:0"
    assert all(v == 0.0 for row in noop["matrix"].values() for v in row.values())  # no-op LSS is exactly 0
    favour = _matrix(tmp_path, path, mask, "favour", "--ops", "route:bias:4")
    assert any(v > 0 for row in favour["matrix"].values() for v in row.values())
    ctrl = _matrix(tmp_path, path, mask, "ctrl", "--ops", "route:bias:4", "--controls", "2")
    assert ctrl["matrix"] == favour["matrix"] and len(ctrl["controls"]) == 2
    assert all(c["matrix"] != favour["matrix"] for c in ctrl["controls"])  # random experts, not the language's
    assert ctrl["effects"]["overall"]["control_mean"] is not None
    neurons = _matrix(tmp_path, path, mask, "neurons", "--mode", "set", "--value", "p_max")
    assert neurons.get("ops") is None and neurons["mode"] == "set"
    both = _matrix(tmp_path, path, mask, "both", "--ops", "route:ban@src;set:p_max")
    assert both["ops"] == "route:ban@src;set:p_max" and both["matrix"] != neurons["matrix"]
    capsys.readouterr()
    for args, words in ((["--ops", "route:ban", "--mode", "zero"], "--ops and --mode"),
                        (["--ops", "route:ban@xx"], "language"),
                        (["--ops", "set:tt_max"], "test-time statistics")):
        assert main(["lss", "matrix", "--model", str(path), "--neurons", str(mask), *RUN, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, args


def test_search_factor_and_grid_agree_with_lss_matrix(routed, tmp_path, capsys, monkeypatch):
    path, mask = routed
    want = _matrix(tmp_path, path, mask, "favour", "--ops", "route:bias:4", "--targets", "id,vi")
    out = tmp_path / "sf.json"
    assert main(["search-factor", "--model", str(path), "--neurons", str(mask), *RUN, "--targets", "id,vi",
                 "--sweep", "route:bias:1", "--alphas", "1,4", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["matrices"]["route:bias:4"] == want["matrix"]  # the swept α = 4 is the one-off route:bias:4
    from lapeval.lss.factor import graded_label

    assert doc["sweep"]["operation"] == "route:bias:1" and graded_label("route:bias:1") == "route:bias:α"
    assert "sweep route:bias:1: best α for id" in capsys.readouterr().out
    assert main(["search-factor", "--model", str(path), "--neurons", str(mask), *RUN, "--sweep", "route:ban"]) == 2
    assert "ban has no value to grade" in capsys.readouterr().err

    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid
    from lapeval.taskdata import FACTS_DIR

    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    cfg = GridConfig.from_dict({"model": str(path), "neurons": str(mask), "targets": ["id", "vi"],
                                "tasks": ["lss_en", "lss_id", "lss_vi"], "limit": 4, "batch_size": 4, "device": "cpu",
                                "output": str(tmp_path / "grid"), "bootstrap_iters": 0, "ci_resamples": 100,
                                "interventions": ["route:bias:4", "route:ban@en;set:p_max"], "controls": 1})
    ran = run_grid(cfg, log=lambda m: None)
    assert len(ran) == 9  # the baseline, 2 interventions × 2 targets, and each on one control mask
    lss = json.loads((tmp_path / "grid" / "summary.json").read_text())["lss"]
    assert lss["route:bias:4"]["matrix"] == want["matrix"]
    assert any(v > 0 for row in lss["route:ban@en;set:p_max"]["matrix"].values() for v in row.values())
