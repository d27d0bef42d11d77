"""Leaderboards: several models in one grid (each loaded once), cells spread over ranks (job-array shards and
torchrun with gloo) with identical summaries, resume after a lost rank, the ranked leaderboard (md, csv,
JSON) and report.html in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import random_mask

from lapeval.grid.config import GridConfig, GridError
from lapeval.grid.run import run_grid
from lapeval.grid.shard import Shard, parse_shard, partition
from lapeval.taskdata import FACTS_DIR


# ---- the partition ----------------------------------------------------------------------------------------
def test_partition_is_balanced_contiguous_and_deterministic():
    costs = [1.0] * 6 + [4.0] * 3  # a small model's 6 cells, then a 4x costlier model's 3
    ranks = partition(costs, 2)
    assert ranks == partition(costs, 2) and ranks == sorted(ranks)  # contiguous: consecutive stretches
    load = [sum(c for c, r in zip(costs, ranks) if r == k) for k in range(2)]
    assert max(load) - min(load) <= 4.0  # within one cell of perfect balance
    assert partition([1.0] * 5, 1) == [0] * 5
    assert partition([1.0] * 8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert partition([1.0] * 3, 5) == [0, 2, 4]  # more ranks than cells: some idle, none twice
    models = ["a"] * 6 + ["b"] * 3
    per_rank = {k: {m for m, r in zip(models, ranks) if r == k} for k in range(2)}
    assert sum(len(v) for v in per_rank.values()) <= 3  # each model on as few ranks as possible


@pytest.mark.parametrize("spec,needle", [("3", "write I/N"), ("2/2", "index must be in 0..N-1"),
                                         ("a/b", "write I/N"), ("0/0", "index must be in 0..N-1")])
def test_shard_errors_are_one_line(spec, needle):
    from lapeval.errors import UsageError

    with pytest.raises(UsageError) as e:
        parse_shard(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert parse_shard("1/3") == Shard(1, 3, False) and not Shard(1, 3).leader and Shard(0, 1).leader


# ---- a multi-model grid on tiny models ---------------------------------------------------------------------
@pytest.fixture()
def data_env(monkeypatch):
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _config(tmp_path, model_dir, out: str) -> dict:
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    a = random_mask(masks / "a.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
    b = random_mask(masks / "b.safetensors", seed=5, per_lang=8, p_max_low=1.0, p_max_span=2.0)
    return {"models": [{"name": "alpha", "pretrained": str(model_dir), "neurons": str(a)},
                       {"name": "beta", "pretrained": str(model_dir), "neurons": str(b), "model_args": {"max_length": 512}},
                       {"name": "plain", "pretrained": str(model_dir), "neurons": None}],
            "tasks": ["lss_en", "lss_fr", "lss_ja"], "targets": ["en", "fr"], "interventions": ["set:p_max", "zero"],
            "limit": 3, "batch_size": 4, "device": "cpu", "output": str(tmp_path / out), "bootstrap_iters": 0,
            "ci_resamples": 200, "facts": "builtin", "model_args": {"max_length": 1024}}


def _summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    s["config"].pop("output")  # the only place the output folder shows
    return s


def test_multi_model_config(tmp_path, tiny_model_dir):
    cfg = GridConfig.from_dict(_config(tmp_path, tiny_model_dir, "g"))
    subs = [cfg.for_model(e) for e in cfg.model_entries()]
    assert [s.name for s in subs] == ["alpha", "beta", "plain"]
    assert [len(s.cells()) for s in subs] == [5, 5, 1]  # no mask: the baseline only
    assert subs[1].model_args == {"max_length": 512} and subs[0].model_args == {"max_length": 1024}
    assert Path(subs[0].output) == tmp_path / "g" / "models" / "alpha"
    keys = {(s.name, c.id): s.cell_key(c, "sha") for s in subs for c in s.cells()}
    # the model and its arguments are part of every cell's key: alpha's and plain's baselines are the same
    # computation (same model, same arguments, no mask), beta's is not (its own max_length)
    assert keys[("alpha", "baseline")] == keys[("plain", "baseline")] != keys[("beta", "baseline")]
    assert len(set(keys.values())) == 10
    d = _config(tmp_path, tiny_model_dir, "g")
    for bad, needle in [({"model": "x"}, "model: and models: both given"), ({"models": []}, "non-empty list"),
                        ({"models": [{"pretrained": "x", "name": "a"}, {"pretrained": "y", "name": "a"}]}, "names repeat"),
                        ({"models": [{"name": "a/b", "pretrained": "x"}]}, "names a folder"),
                        ({"models": [{"name": "a", "pretrained": "x", "neurons": str(tmp_path / "none.safetensors")}]},
                         "models: a: mask file"),
                        ({"models": [{"name": "a", "pretrained": "x", "cost": 0}]}, "cost"),
                        ({"parallel": "both"}, "parallel:")]:
        with pytest.raises(GridError) as e:
            GridConfig.from_dict({**d, **bad})
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.fixture()
def one_thread():
    """The torchrun ranks below run with OMP_NUM_THREADS=1; the in-process runs use one thread too, since a CPU
    matmul's sums are grouped by thread count and the summaries are compared bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_multi_model_grid_one_process_shards_resume_and_torchrun(tmp_path, tiny_model_dir, data_env, monkeypatch,
                                                                  one_thread):
    from lapeval import lm as lm_module

    loads = []
    real_init = lm_module.LapeLM.__init__

    def counting_init(self, *a, **kw):
        loads.append(kw.get("pretrained"))
        real_init(self, *a, **kw)

    monkeypatch.setattr(lm_module.LapeLM, "__init__", counting_init)
    one = GridConfig.from_dict(_config(tmp_path, tiny_model_dir, "one"))
    logs = []
    status = run_grid(one, log=logs.append)
    assert len(status) == 11 and set(status.values()) == {"ran"}
    assert len(loads) == 3  # each model loaded once
    assert sum("peak" in m and "after releasing it" in m for m in logs) == 3
    single = _summary(tmp_path / "one")
    lb = single["leaderboard"]
    assert [e["model"] for e in lb["ranking"]][-1] == "plain" and lb["models"]["plain"]["best"] is None
    assert {e["model"] for e in lb["ranking"]} == {"alpha", "beta", "plain"}
    for name in ("alpha", "beta"):
        best = lb["models"][name]["best"]
        assert best["by"] == "mean off-diagonal LSS"
        assert best["score"] == max(v for v in lb["models"][name]["lss"].values() if v is not None)
    assert set(single["results"]) == {f"{m}/{c}" for m in ("alpha", "beta") for c in
                                      ("baseline", "set:p_max/en", "set:p_max/fr", "zero/en", "zero/fr")} | {"plain/baseline"}
    for f in ("leaderboard.md", "leaderboard.csv", "report.html", "summary.md"):
        assert (tmp_path / "one" / f).is_file()
    md = (tmp_path / "one" / "leaderboard.md").read_text()
    assert md.count("\n| ") == 4 and "| 1 | " in md  # header + 3 models

    # a job array of two shards, then --summary-only: the same summary, byte for byte
    loads.clear()
    two = GridConfig.from_dict(_config(tmp_path, tiny_model_dir, "two"))
    s0 = run_grid(two, log=lambda m: None, shard="0/2")
    s1 = run_grid(two, log=lambda m: None, shard="1/2")
    assert set(s0) | set(s1) == set(status) and not set(s0) & set(s1)
    assert len(loads) <= 4  # 3 models over 2 ranks: at most one model is split
    assert not (tmp_path / "two" / "summary.json").exists()  # shards never write the shared summary
    from lapeval.cli import main

    assert main(["grid", "--summary-only", "--output", str(tmp_path / "two")]) == 0
    assert _summary(tmp_path / "two") == single
    assert (tmp_path / "two" / "leaderboard.md").read_bytes() == md.encode()

    # a rank lost mid-run: its unfinished cell is recomputed by a rerun of that shard, nothing else
    lost = sorted(s1)[0]
    model, cell = lost.split("/", 1)
    folder = tmp_path / "two" / "models" / model / "cells"
    victim = next(p for p in folder.iterdir() if json.loads((p / "results.json").read_text())["lapeval_grid"]["cell"] == cell)
    shutil.rmtree(victim)
    again = run_grid(two, log=lambda m: None, shard="1/2")
    assert [k for k, v in again.items() if v == "ran"] == [lost]
    assert main(["grid", "--summary-only", "--output", str(tmp_path / "two")]) == 0
    assert _summary(tmp_path / "two") == single

    # torchrun, 2 ranks, gloo: the same summary (rank 0 writes it after a barrier)
    d = _config(tmp_path, tiny_model_dir, "torchrun")
    cfg_path = tmp_path / "grid.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    env = {**os.environ, "LAPEVAL_MLAMA_DIR": str(FACTS_DIR), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "lapeval", "grid", str(cfg_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(tmp_path / "torchrun") == single
    ranks = json.loads((tmp_path / "torchrun" / "grid.json").read_text())["ranks"]
    assert ranks["count"] == 2 and {c.rsplit(":", 1)[1] for c in ranks["cells"]} == {"0", "1"}
    # parallel: requests — every rank takes part in every cell (on CPU lm-eval keeps each cell's requests on
    # one rank: HFLM splits requests over GPUs only); the summary is the same
    d = {**_config(tmp_path, tiny_model_dir, "requests"), "parallel": "requests"}
    d["models"] = d["models"][:1]
    cfg_path.write_text(yaml.safe_dump(d))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
                        "-m", "lapeval", "grid", str(cfg_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _summary(tmp_path / "requests")
    assert got["results"] == {k: v for k, v in single["results"].items() if k.startswith("alpha/")}
    assert json.loads((tmp_path / "requests" / "grid.json").read_text())["ranks"] is None


def test_check_accepts_multi_model_summaries(tmp_path, tiny_model_dir, data_env):
    from lapeval.cli import main

    d = _config(tmp_path, tiny_model_dir, "g")
    d["models"] = d["models"][:1] + d["models"][2:]
    d["interventions"] = ["zero"]
    run_grid(GridConfig.from_dict(d), log=lambda m: None)
    s = tmp_path / "g" / "summary.json"
    assert main(["check", str(s), "--against", str(s)]) == 0
    ref = json.loads(s.read_text())
    cell = "alpha/zero/fr"
    task = next(iter(ref["results"][cell]))
    key = next(k for k, v in ref["results"][cell][task].items() if isinstance(v, float) and "stderr" not in k)
    ref["results"][cell][task][key] += 1.0
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(ref))
    assert main(["check", str(s), "--against", str(moved)]) == 1


# ---- the page in a real browser -----------------------------------------------------------------------------
def _browser():
    """(chromium, chromedriver) paths and selenium, or a reason why not."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    if not chromium or not driver:
        return None, "no chromium / chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)"
    return (chromium, driver), ""


def test_report_html_sorts_in_headless_chromium(tmp_path):
    found, why = _browser()
    if found is None:
        if os.environ.get("LAPEVAL_REQUIRE_SHARED") == "1":
            pytest.fail(f"LAPEVAL_REQUIRE_SHARED=1 but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from lapeval.grid import leaderboard

    boards = {}
    for name, score, base in (("m-one", 0.4, 0.70), ("m-two", 0.9, 0.55), ("m-three", 0.4, 0.61), ("m-four", None, 0.5)):
        fam = {"xcopa": {"metric": "acc", "filter": "none", "higher_is_better": True, "baseline": base, "n_languages": 2,
                         "interventions": {"set:p_max": {"self": {"delta": 0.01, "ci": [-0.02, 0.04], "n": 2},
                                                         "cross": {"delta": -0.01, "ci": [-0.03, 0.01], "n": 2}}}}}
        best = None if score is None else {"intervention": "set:p_max", "score": score, "by": "mean off-diagonal LSS"}
        boards[name] = {"families": fam, "lss": {"set:p_max": score}, "best": best, "interventions": ["set:p_max"]}
    lb = leaderboard.build(boards)
    assert [(e["model"], e["rank"]) for e in lb["ranking"]] == [("m-two", 1), ("m-one", 2), ("m-three", 2), ("m-four", 4)]
    assert lb["ties"] == [["m-one", "m-three"]]
    page = tmp_path / "report.html"
    page.write_text(leaderboard.report_html(lb, {m: {"pretrained": m, "provenance": {}} for m in boards}, {}, "t"))
    assert "http" not in page.read_text().replace("http-equiv", "")  # self-contained: nothing fetched

    chromium, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(page.as_uri())
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG"
        table = browser.find_element(By.ID, "leaderboard")

        def models():
            return [tr.get_attribute("data-model") for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        assert models() == ["m-two", "m-one", "m-three", "m-four"]  # one row per model, ranked
        headers = table.find_elements(By.CSS_SELECTOR, "thead th")
        baseline = next(h for h in headers if h.text.startswith("xcopa acc baseline"))
        baseline.click()
        assert models() == ["m-four", "m-two", "m-three", "m-one"]  # ascending baseline
        baseline.click()
        assert models() == ["m-one", "m-three", "m-two", "m-four"]  # descending
        next(h for h in headers if h.text == "model").click()
        assert models() == sorted(boards)
    finally:
        browser.quit()
