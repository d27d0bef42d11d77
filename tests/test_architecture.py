"""The house: floors by the method's stages (no import cycle, no import that runs upward), grids made before
the restructure resume with every cell reused and byte-identical keys, and a grid reads and hashes its mask
once per process."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

BEFORE = ROOT / "tests" / "data" / "grid-before"  # made at commit 34ce007 by its make.py


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "benchmarks" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_and_no_import_upward():
    g = _graph_module()
    edges = g.graph(ROOT / "lapeval")
    assert g.cycles(edges) == []
    assert g.upward(edges) == []
    # the floors are what the docs say: every stage has its folder, and the gate sits above the grid
    stages = {m: g.stage(m) for m in edges}
    assert {"identification", "intervention", "lss", "grid", "gate", "commands"} <= set(stages.values())
    assert stages["lapeval.gate"] == "gate" and stages["lapeval.lm"] == "backend"


def test_the_graph_finds_cycles_and_upward_imports(tmp_path):
    """The checker itself can fail: a made-up package with a cycle and an upward import."""
    g = _graph_module()
    pkg = tmp_path / "lapeval"
    (pkg / "grid").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "grid" / "__init__.py").write_text("")
    (pkg / "masks.py").write_text("def f():\n    from .grid.run import x\n")  # ground → grid: upward
    (pkg / "grid" / "run.py").write_text("from . import report\nx = 1\n")
    (pkg / "grid" / "report.py").write_text("from .run import x\n")  # run ↔ report: a cycle
    edges = g.graph(pkg)
    assert g.cycles(edges) == [["lapeval.grid.report", "lapeval.grid.run"]]
    assert g.upward(edges) == [("lapeval.masks", "lapeval.grid.run")]


def test_torch_free_modules_import_no_torch():
    """operation and setting never import through the torch module of the hooks (setting's module-level imports
    name hooks only for its types); the grid configuration and the gate load neither torch nor lm-eval."""
    import subprocess
    import sys

    code = ("import sys; import lapeval.intervention.operation, lapeval.grid.config, lapeval.gate, lapeval.lss.tasks; "
            "print(sorted(m for m in ('torch', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def _copy_before(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(BEFORE, work)
    return work


def test_a_grid_made_before_the_restructure_resumes_with_every_cell_reused(tmp_path, monkeypatch):
    """Cell keys, folders and grid.json are derived from each cell's Spec, byte-identical to the commit before:
    both grids of tests/data/grid-before (one model with composite, graded, scoped and layer-subset
    interventions; two models) are reused whole, and grid.json is rewritten byte for byte."""
    import lapeval.grid.run as run
    from lapeval.grid.config import GridConfig
    from lapeval.paths import FACTS_DIR

    work = _copy_before(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    monkeypatch.setattr(run, "load_tasks", lambda cfg: pytest.fail("a reused grid loads no task"))
    monkeypatch.setattr(run, "_run_cell", lambda *a, **k: pytest.fail("a cell was recomputed"))
    common = dict(tasks=["lss_en", "lss_fr"], limit=3, batch_size=4, device="cpu", bootstrap_iters=0, ci_resamples=50,
                  facts="builtin", targets=["en", "fr"], model_args={"max_length": 256})
    grids = {
        "one": dict(model="tiny", neurons="mask.safetensors", output="one", interventions=[
            "set:p_max", "scale:2@0", "zero@en;set:p_max", "add:2*p_max", {"ops": "set:p_max", "scope": "last"}]),
        "many": dict(models=[{"name": "a", "pretrained": "tiny"}, {"name": "b", "pretrained": "tiny", "neurons": None}],
                     neurons="mask.safetensors", output="many", interventions=["set:p_max@1"]),
    }
    for name, d in grids.items():
        jsons = sorted(p.relative_to(work) for p in (work / name).rglob("grid.json"))
        before = {p: (work / p).read_bytes() for p in jsons}
        status = run.run_grid(GridConfig.from_dict({**common, **d}), log=lambda m: None)
        assert status and set(status.values()) == {"reused"}, status
        for p in jsons:
            assert (work / p).read_bytes() == before[p], p
    assert len(json.loads((work / "one" / "grid.json").read_text())["cells"]) == 11


def test_a_grid_reads_and_hashes_its_mask_once(tmp_path, monkeypatch, tiny_model_dir):
    """Baseline + 2 cells on the tiny model, one process: the mask file is opened by safetensors once and
    sha256-hashed once (the loaded NeuronMask travels from the configuration to every cell's setting)."""
    import safetensors
    from conftest import random_mask

    from lapeval import _io, masks
    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid
    from lapeval.paths import FACTS_DIR

    mask = random_mask(tmp_path / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    reads, hashes = [], []
    real_open, real_hash = safetensors.safe_open, _io.sha256_file

    def counting_open(path, *a, **k):
        reads.append(Path(path).name)
        return real_open(path, *a, **k)

    def counting_hash(path, *a, **k):
        hashes.append(Path(path).name)
        return real_hash(path, *a, **k)

    monkeypatch.setattr(masks, "safe_open", counting_open)
    monkeypatch.setattr(masks, "sha256_file", counting_hash)
    cfg = GridConfig.from_dict(dict(model=str(tiny_model_dir), neurons=str(mask), targets=["en", "fr"],
                                    tasks=["lss_en", "lss_fr"], limit=2, batch_size=4, device="cpu",
                                    output=str(tmp_path / "g"), bootstrap_iters=0, ci_resamples=20,
                                    interventions=["set:p_max"], multiplex="on", model_args={"max_length": 256}))
    status = run_grid(cfg, log=lambda m: None)
    assert len(status) == 3 and set(status.values()) == {"ran"}
    assert reads.count("m.safetensors") == 1 and hashes.count("m.safetensors") == 1, (reads, hashes)
