"""``lapeval grid``: one model load for baseline + (intervention × target) cells, per-cell results equal to
separate runs, resume after a kill, the summary (self vs cross, paired bootstrap, LSS, perplexity,
heatmaps), cells as batch rows, configuration errors; and the grid on the real model."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import random_mask, require_shared

from lapeval.grid.bootstrap import paired_bootstrap
from lapeval.grid.config import GridConfig, GridError
from lapeval.grid.run import run_grid
from lapeval.intervention.operation import file_name
from lapeval.taskdata import FACTS_DIR

LANGS = ["en", "fr", "ja"]


@pytest.fixture()
def data_env(monkeypatch):
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _mask(tmp_path) -> Path:
    return random_mask(tmp_path / "tiny.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)


TASKS = ["lss_en", "lss_fr", "lss_ja", "flores_ppl_en", "flores_ppl_fr"]  # (the tiny model holds 256 positions)


def _cfg(tmp_path, model_dir, mask, out="grid", **kw) -> GridConfig:
    d = {"model": str(model_dir), "neurons": str(mask), "targets": ["en", "fr"], "tasks": TASKS, "limit": 6,
         "batch_size": 4, "device": "cpu", "output": str(tmp_path / out), "bootstrap_iters": 0,
         "ci_resamples": 200, "interventions": ["set:p_max", "zero"], "model_args": {"max_length": 1024}}
    d.update(kw)
    return GridConfig.from_dict(d)


@pytest.fixture()
def lm(tiny_model_dir):
    from lapeval.lm import LapeLM

    return LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, max_length=1024)  # FLORES > 256 tiny tokens


def _task_results(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def test_grid_cells_equal_separate_runs_and_summary(tmp_path, tiny_model_dir, data_env, lm):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lapeval.paths import tasks_path

    mask = _mask(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir, mask)
    status = run_grid(cfg, log=lambda m: None, lm=lm)
    assert list(status) == ["baseline", "set:p_max/en", "set:p_max/fr", "zero/en", "zero/fr"]
    assert set(status.values()) == {"ran"}
    out = Path(cfg.output)

    # every cell equals a separate simple_evaluate of the same setting (on a fresh TaskManager)
    tm = TaskManager(include_defaults=False, include_path=str(tasks_path()))
    for cell_id, setting in [("baseline", None), ("zero/en", {"lang": "en", "mode": "zero"}),
                             ("set:p_max/fr", {"lang": "fr", "mode": "set", "value": "p_max"})]:
        lm.clear_intervention() if setting is None else lm.set_intervention(neurons=str(mask), **setting)
        sep = simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, limit=6, bootstrap_iters=0, log_samples=False,
                              verbosity="ERROR")["results"]
        folder = file_name(cell_id.replace("/", "__"))  # the cell's folder: its id as a file name
        got = _task_results(out / "cells" / folder / "results.json")
        for task in TASKS:
            for k, v in sep[task].items():
                if isinstance(v, float):
                    assert got[task][k] == v, (cell_id, task, k)
    lm.clear_intervention()

    res = json.loads((out / "cells" / "set=p_max__fr" / "results.json").read_text())  # noqa
    prov = res["config"]["lape"]["intervention"]
    assert prov["languages"] == ["fr"] and prov["mode"] == "set" and prov["value"] == "p_max"
    assert res["lapeval_grid"]["cell"] == "set:p_max/fr" and (out / "cells" / "set=p_max__fr" / "samples_lss_en.jsonl").is_file()

    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "lapeval.grid_summary" and not s["missing_cells"]
    assert set(s["lss"]) == {"set:p_max", "zero"}
    m = s["lss"]["set:p_max"]["matrix"]
    assert set(m) == {"en", "fr", "ja"} and set(m["ja"]) == {"en", "fr"} and set(m["fr"]) == {"en"}
    ppl = [t for t in s["tables"] if t["family"] == "flores_ppl" and t["metric"] == "word_perplexity" and t["intervention"] == "zero"][0]
    assert ppl["targets"] == ["en", "fr"] and ppl["columns"] == ["en", "fr"] and ppl["column_languages"] == ["en", "fr"]
    base_ppl = _task_results(out / "cells" / "baseline" / "results.json")["flores_ppl_fr"]["word_perplexity,none"]
    zero_fr = _task_results(out / "cells" / "zero__fr" / "results.json")["flores_ppl_fr"]["word_perplexity,none"]
    assert ppl["baseline"][1] == base_ppl and ppl["delta"][1][1] == pytest.approx(zero_fr - base_ppl)
    assert ppl["self_mean_delta"] == pytest.approx((ppl["delta"][0][0] + ppl["delta"][1][1]) / 2)
    assert ppl["cross_mean_delta"] == pytest.approx((ppl["delta"][0][1] + ppl["delta"][1][0]) / 2)
    for i in range(2):
        for j in range(2):
            lo, hi = ppl["ci_low"][i][j], ppl["ci_high"][i][j]
            assert lo <= hi
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("cell,intervention,target,task") and len(csv) == 1 + len(s["rows"])
    md = (out / "summary.md").read_text()
    assert "## LSS, set:p_max" in md and "self-language (diagonal) mean Δ" in md and "word_perplexity itself" in md
    pngs = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
    assert "lss_set=p_max.png" in pngs and any(p.startswith("zero_flores_ppl_word_perplexity") for p in pngs)


def test_resume_runs_only_missing_cells_and_gives_the_same_summary(tmp_path, tiny_model_dir, data_env, lm, monkeypatch):
    import lapeval.grid.run as grid

    mask = _mask(tmp_path)
    full = _cfg(tmp_path, tiny_model_dir, mask, out="full", interventions=["set:p_max"], tasks=TASKS[:3] + TASKS[4:])
    run_grid(full, log=lambda m: None, lm=lm)

    cfg = _cfg(tmp_path, tiny_model_dir, mask, out="killed", interventions=["set:p_max"], tasks=TASKS[:3] + TASKS[4:])
    real = grid._run_cell
    calls = []

    def killed_after_two(cfg_, lm_, loaded, cell, key, out):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-grid
        calls.append(cell.id)
        real(cfg_, lm_, loaded, cell, key, out)

    monkeypatch.setattr(grid, "_run_cell", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, log=lambda m: None, lm=lm)
    assert calls == ["baseline", "set:p_max/en"]
    assert not (Path(cfg.output) / "summary.json").exists()
    assert not list(Path(cfg.output).rglob("*.tmp*"))  # nothing half-written

    reran = []
    monkeypatch.setattr(grid, "_run_cell", lambda *a: (reran.append(a[3].id), real(*a)))
    status = run_grid(cfg, log=lambda m: None, lm=lm)
    assert reran == ["set:p_max/fr"] and status == {"baseline": "reused", "set:p_max/en": "reused", "set:p_max/fr": "ran"}
    a = json.loads((Path(full.output) / "summary.json").read_text())
    b = json.loads((Path(cfg.output) / "summary.json").read_text())
    a["config"].pop("output"), b["config"].pop("output")
    assert a == b

    # a changed setting invalidates finished cells
    changed = _cfg(tmp_path, tiny_model_dir, mask, out="killed", interventions=["set:p_max"], tasks=TASKS[:3] + TASKS[4:], limit=5)
    reran.clear()
    run_grid(changed, log=lambda m: None, lm=lm)
    assert reran == ["baseline", "set:p_max/en", "set:p_max/fr"]


def test_cells_as_batch_rows_equal_cell_by_cell(tmp_path, tiny_model_dir, data_env, lm):
    mask = _mask(tmp_path)
    kw = {"interventions": ["set:p_max", "set:tt_max"], "tasks": ["lss_en", "lss_fr", "flores_ppl_fr"], "limit": 4}
    plain = _cfg(tmp_path, tiny_model_dir, mask, out="plain", multiplex="off", **kw)
    rows = _cfg(tmp_path, tiny_model_dir, mask, out="rows", multiplex="on", **kw)
    run_grid(plain, log=lambda m: None, lm=lm)
    calls = []
    real = lm.prefill
    lm.prefill = lambda reqs, settings: calls.append(len(settings)) or real(reqs, settings)
    run_grid(rows, log=lambda m: None, lm=lm)
    del lm.prefill
    assert calls == [2, 2]  # one shared pass per intervention, two target cells each
    assert_same_cells(plain, rows)
    assert not lm._lape_memo  # cleared after the grid


def assert_same_cells(plain: GridConfig, rows: GridConfig) -> int:
    """Every metric of every cell of two grids agrees (up to batch-composition noise); returns how many
    intervened cells' metrics differ from the baseline's."""
    base = _task_results(Path(plain.output) / "cells" / "baseline" / "results.json")
    moved = 0
    for cell in plain.cells():
        a = _task_results(Path(plain.output) / "cells" / cell.folder / "results.json")
        b = _task_results(Path(rows.output) / "cells" / cell.folder / "results.json")
        for task in a:
            for k, v in a[task].items():
                if isinstance(v, float) and "stderr" not in k:
                    assert b[task][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (cell.id, task, k)
                    moved += cell.target is not None and v != pytest.approx(base[task][k], rel=1e-6)
    return moved


def test_prefill_rows_match_each_setting_alone(tiny_model_dir, tmp_path, lm):
    """Every row of a mixed batch sees exactly its own setting's neurons (float32: equal up to batch-composition noise)."""
    from lm_eval.api.instance import Instance

    mask = _mask(tmp_path)
    texts = [("The capital of France is", " Paris"), ("Le chat", " est noir"), ("", "東京は日本の首都です"),
             ("One two", " three four five six"), ("a", " b")]
    reqs = [Instance("loglikelihood", {}, t, i, ("lss_en", i, 1)) for i, t in enumerate(texts)]
    settings = [{"neurons": str(mask), "lang": "fr", "mode": "set", "value": "p_max"},
                {"neurons": str(mask), "lang": "ja", "mode": "zero"},
                {"neurons": str(mask), "lang": "en", "mode": "add", "value": "tt_max"}]
    alone = []
    for s in settings:
        lm.set_intervention(**s)
        alone.append(lm.loglikelihood(reqs, disable_tqdm=True))
    lm.clear_intervention()
    assert lm.prefill(reqs, settings) == len(reqs) * len(settings)
    for s, want in zip(settings, alone):
        lm.set_intervention(**s)
        got = lm.loglikelihood(reqs, disable_tqdm=True)
        for (g, gg), (w, ww) in zip(got, want):
            assert g == pytest.approx(w, rel=1e-5, abs=1e-5) and gg == ww
    lm.clear_intervention()
    lm.clear_prefill()


def test_paired_bootstrap_interval():
    from lapeval.grid.bootstrap import mean as _mean

    base = [0, 1] * 50
    cell = [1, 1] * 50
    lo, hi = paired_bootstrap(base, cell, _mean, 500)
    assert 0.38 < lo < 0.5 < hi < 0.62  # true delta 0.5, paired se 0.05
    same = paired_bootstrap(base, base, _mean, 200)
    assert same == (0.0, 0.0)


def test_config_errors(tmp_path, tiny_model_dir):
    mask = _mask(tmp_path)
    with pytest.raises(GridError, match="not in the mask"):
        _cfg(tmp_path, tiny_model_dir, mask, targets=["sw"])
    with pytest.raises(GridError, match="unknown grid setting"):
        GridConfig.from_dict({"model": "x", "tasks": ["a"], "taks": 1})
    with pytest.raises(GridError, match="needs model"):
        GridConfig.from_dict({"tasks": ["a"]})
    with pytest.raises(GridError, match="does not exist"):
        _cfg(tmp_path, tiny_model_dir, tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="mode"):
        _cfg(tmp_path, tiny_model_dir, mask, interventions=["explode:2"])
    with pytest.raises(GridError, match="targets: given without neurons"):
        GridConfig.from_dict({"model": "x", "tasks": ["a"], "targets": ["fr"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(GridError, match="not valid YAML"):
        GridConfig.load(bad)


def test_grid_cli_yaml_and_unknown_task(tmp_path, tiny_model_dir, data_env, capsys):
    from lapeval.cli import main

    mask = _mask(tmp_path)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nneurons: {mask}\ntargets: [fr]\ntasks: [lss_en, no_such_task]\n"
                   f"limit: 3\noutput: {tmp_path / 'o'}\nmodel_args: {{max_length: 1024}}\n")
    assert main(["grid", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task(s) no_such_task" in err[0]
    assert main(["grid", str(cfg), "--tasks", "lss_en,lss_fr", "--bootstrap-iters", "0"]) == 0
    assert (tmp_path / "o" / "summary.md").is_file()
    assert main(["grid", "--summary-only", "--output", str(tmp_path / "o")]) == 0


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.real
def test_real_model_grid(tmp_path, real_model_dir, monkeypatch):
    """Gemma-3-270m, committed mask: baseline + p_max for 2 targets over LSS, XCOPA, FLORES perplexity (the
    full example grid, 4 targets and translation too, is docs/grid-example)."""
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    monkeypatch.setenv("LAPEVAL_XCOPA_DIR", str(require_shared("xcopa", "data")))
    root = Path(__file__).resolve().parents[1]
    cfg = GridConfig.from_dict({
        "model": str(real_model_dir), "neurons": str(root / "neuron_masks" / "gemma-3-270m.safetensors"),
        "targets": ["zh", "fr"], "tasks": ["lss_en", "lss_zh", "lss_fr", "lapeval_xcopa_zh", "flores_ppl_zh"],
        "limit": 5, "batch_size": 8, "output": str(tmp_path / "real"), "bootstrap_iters": 0, "ci_resamples": 300})
    status = run_grid(cfg, log=lambda m: None)
    assert set(status.values()) == {"ran"} and len(status) == 3
    s = json.loads((tmp_path / "real" / "summary.json").read_text())
    lss = s["lss"]["set:p_max"]
    assert 0.0 <= lss["mean_off_diagonal"] <= 1.0 and set(lss["matrix"]) == {"en", "zh", "fr"}
    ppl = [t for t in s["tables"] if t["family"] == "flores_ppl" and t["metric"] == "word_perplexity"][0]
    assert all(v > 1 for v in ppl["baseline"])
    assert os.path.getsize(tmp_path / "real" / "heatmaps" / "lss_set=p_max.png") > 5000
    shutil.rmtree(tmp_path / "real")


def test_aggregations_are_found_for_the_paired_bootstrap():
    """Registered names resolve through lm-eval; lapeval's !function aggregations are recorded in results as
    source code and are found again by name and identical source; anything else gives None (no interval)."""
    import inspect

    from lm_eval.api.registry import get_aggregation

    from lapeval.grid.report import _aggregator
    from lapeval.metrics import translation

    cfg = {"metric_list": [{"metric": "acc", "aggregation": "mean"},
                           {"metric": "chrfpp", "aggregation": inspect.getsource(translation.chrfpp)},
                           {"metric": "odd", "aggregation": "def chrfpp(items):\n    return 0\n"}]}
    assert _aggregator(cfg, "acc") is get_aggregation("mean")
    assert _aggregator(cfg, "chrfpp") is translation.chrfpp
    assert _aggregator(cfg, "odd") is None and _aggregator(cfg, "missing") is None


# ---- composite, graded and scoped interventions as cells -------------------------------------------------
COMPOSITES = ["zero@en;set:p_max", "set:p_max;scope:generation", {"ops": "add:2*p_max", "scope": "last"},
              "zero@ja;scale:2@1"]


def test_composite_cells_ids_folders_and_keys(tmp_path, tiny_model_dir):
    import hashlib

    mask = _mask(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir, mask, interventions=["set:p_max", "add:2*p_max", *COMPOSITES])
    ids = [c.id for c in cfg.cells()]
    assert ids == ["baseline", "set:p_max/en", "set:p_max/fr", "add:2*p_max/en", "add:2*p_max/fr",
                   "zero@en;set:p_max/en", "zero@en;set:p_max/fr", "set:p_max;scope:generation/en",
                   "set:p_max;scope:generation/fr", "add:2*p_max;scope:last/en", "add:2*p_max;scope:last/fr",
                   "zero@ja;scale:2@1/en", "zero@ja;scale:2@1/fr"]
    folders = [c.folder for c in cfg.cells()]
    assert len(set(folders)) == len(folders) and "zero@en~set=p_max__fr" in folders
    assert "set=p_max~scope=generation__en" in folders and "add=2xp_max__fr" in folders
    keys = {c.id: cfg.cell_key(c, "sha") for c in cfg.cells()}
    assert len(set(keys.values())) == len(keys)
    # a one-term cell keys exactly as before composites existed (old grids resume)
    old = {"model": cfg.model, "model_args": cfg.model_args, "tasks": cfg.tasks, "limit": cfg.limit,
           "num_fewshot": cfg.num_fewshot, "seed": cfg.seed, "batch_size": cfg.batch_size,
           "bootstrap_iters": cfg.bootstrap_iters,
           "cell": {"target": "fr", "mode": "set", "value": "p_max", "layers": None},
           "neurons_sha256": "sha", "facts": cfg.facts, "scoring": 2}
    assert keys["set:p_max/fr"] == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    # YAML string and structured forms give the same cells
    same = _cfg(tmp_path, tiny_model_dir, mask, interventions=[
        {"terms": [{"mode": "zero", "lang": "en"}, {"mode": "set", "value": "p_max"}]}])
    assert [c.id for c in same.cells()][1:] == ["zero@en;set:p_max/en", "zero@en;set:p_max/fr"]


@pytest.mark.parametrize("iv,needle", [
    ("explode@fr", "unknown mode 'explode'"),
    ("zero@xx;set:p_max", "xx"),
    ("zero@sw;set:p_max", "it has en, fr, ja"),
    ("set:p_max@99", "names layer 99 but the model has layers 0..1"),
    ("zero@en;set:p_max@fr", "every term names its languages"),
    ("set:p_max;scope:often", "unknown scope"),
])
def test_composite_config_errors_before_anything_loads(tmp_path, tiny_model_dir, iv, needle):
    from lapeval.errors import LapevalError

    with pytest.raises(LapevalError) as e:
        _cfg(tmp_path, tiny_model_dir, _mask(tmp_path), interventions=[iv])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_multiplex_yaml_booleans(tmp_path, tiny_model_dir):
    mask = _mask(tmp_path)
    assert _cfg(tmp_path, tiny_model_dir, mask, multiplex=True).multiplex == "on"  # YAML reads on/off as booleans
    assert _cfg(tmp_path, tiny_model_dir, mask, multiplex=False).multiplex == "off"


def test_composite_cells_multiplexed_equal_cell_by_cell_and_self_target(tmp_path, tiny_model_dir, data_env, lm):
    """Composite and scoped cells as batch rows equal cell-by-cell runs; a target ``self`` cell gives each
    task its own language's neurons: its numbers are the diagonal of the per-target cells."""
    mask = _mask(tmp_path)
    kw = {"interventions": COMPOSITES, "tasks": ["lss_en", "flores_ppl_fr", "flores_ppl_en"], "limit": 3}
    plain = _cfg(tmp_path, tiny_model_dir, mask, out="plain", multiplex="off", **kw)
    rows = _cfg(tmp_path, tiny_model_dir, mask, out="rows", multiplex="on", **kw)
    run_grid(plain, log=lambda m: None, lm=lm)
    run_grid(rows, log=lambda m: None, lm=lm)
    moved = assert_same_cells(plain, rows)
    for cell in plain.cells():
        meta = json.loads((Path(plain.output) / "cells" / cell.folder / "results.json").read_text())
        if cell.target is not None:
            from lapeval.intervention.operation import parse_ops

            want = parse_ops(cell.op).with_defaults(languages=(cell.target,)).label  # the target filled in
            assert meta["config"]["lape"]["intervention"]["label"] == want, cell.id
    assert moved > 10
    self_cfg = _cfg(tmp_path, tiny_model_dir, mask, out="self", targets=["self"], multiplex="on",
                    interventions=["zero@ja;set:p_max;scope:generation"], tasks=["flores_ppl_fr", "flores_ppl_en"],
                    limit=3)
    per = _cfg(tmp_path, tiny_model_dir, mask, out="per", targets=["en", "fr"], multiplex="off",
               interventions=["zero@ja;set:p_max;scope:generation"], tasks=["flores_ppl_fr", "flores_ppl_en"], limit=3)
    run_grid(self_cfg, log=lambda m: None, lm=lm)
    run_grid(per, log=lambda m: None, lm=lm)
    (cell,) = [c for c in self_cfg.cells() if c.target]
    assert cell.id == "zero@ja;set:p_max;scope:generation/self"
    got = _task_results(Path(self_cfg.output) / "cells" / cell.folder / "results.json")
    for lang in ("en", "fr"):
        want = _task_results(Path(per.output) / "cells" / file_name(f"zero@ja;set:p_max;scope:generation__{lang}")
                             / "results.json")[f"flores_ppl_{lang}"]
        for k, v in want.items():
            if isinstance(v, float) and "stderr" not in k:
                assert got[f"flores_ppl_{lang}"][k] == pytest.approx(v, rel=1e-6), (lang, k)
    summary = json.loads((Path(self_cfg.output) / "summary.json").read_text())
    rows_self = [r for r in summary["rows"] if r["target"] == "self"]
    assert rows_self and all(r["self"] is True for r in rows_self)
    tables = [t for t in summary["tables"] if t["targets"] == ["self"]]  # a self cell is self-language, every column
    assert tables and all(t["n_self"] == len(t["columns"]) and t["n_cross"] == 0 for t in tables)


def test_self_only_tasks_run_only_in_their_own_language_cells(tmp_path, tiny_model_dir, data_env, lm):
    """self_only: flores_ppl_*: the baseline evaluates every task, a cell with target t only the self_only task in
    t (and every other task), with the numbers a grid without self_only gives; the summary has no cross-language
    entry for them, and changing self_only changes the cell keys (no stale reuse)."""
    mask = _mask(tmp_path)
    kw = {"interventions": ["set:p_max"], "tasks": ["lss_en", "lss_fr", "flores_ppl_en", "flores_ppl_fr"], "limit": 3}
    full = _cfg(tmp_path, tiny_model_dir, mask, out="full", **kw)
    only = _cfg(tmp_path, tiny_model_dir, mask, out="only", self_only=["flores_ppl_*"], **kw)
    run_grid(full, log=lambda m: None, lm=lm)
    run_grid(only, log=lambda m: None, lm=lm)
    for cell in only.cells():
        got = _task_results(Path(only.output) / "cells" / cell.folder / "results.json")
        want = _task_results(Path(full.output) / "cells" / cell.folder / "results.json")
        kept = {"lss_en", "lss_fr", "flores_ppl_en", "flores_ppl_fr"} if cell.target is None else \
            {"lss_en", "lss_fr", f"flores_ppl_{cell.target}"}
        assert set(got) == kept, cell.id
        for task in kept:
            assert got[task] == want[task], (cell.id, task)
    summary = json.loads((Path(only.output) / "summary.json").read_text())
    ppl = [t for t in summary["tables"] if t["family"] == "flores_ppl"]
    assert ppl and all(t["n_cross"] == 0 and t["n_self"] == 2 for t in ppl)
    assert only.cell_key(only.cells()[1], "x") != full.cell_key(full.cells()[1], "x")
    assert "self_only" not in full.to_dict() and only.to_dict()["self_only"] == ["flores_ppl_*"]


@pytest.mark.parametrize("self_only, expect", [
    (["flores_mt_*"], "matches none of tasks"),
    (["lss_*"], "LSS(s, t) is cross-language"),
])
def test_self_only_refuses_what_it_cannot_mean(tmp_path, tiny_model_dir, self_only, expect):
    with pytest.raises(GridError, match=re.escape(expect)):
        _cfg(tmp_path, tiny_model_dir, _mask(tmp_path), tasks=["lss_en", "flores_ppl_fr"], self_only=self_only)


def test_lss_tasks_with_only_diagonal_pairs_are_refused(tmp_path, tiny_model_dir):
    """targets [fr] with lss_fr alone: LSS has no pair s ≠ t to score (it used to crash the summary's heatmap)."""
    with pytest.raises(GridError, match=re.escape("every pair here is s = t (fr)")):
        _cfg(tmp_path, tiny_model_dir, _mask(tmp_path), targets=["fr"], tasks=["lss_fr", "flores_ppl_fr"])
    assert _cfg(tmp_path, tiny_model_dir, _mask(tmp_path), targets=["fr"], tasks=["lss_fr", "lss_en"]).targets == ["fr"]
