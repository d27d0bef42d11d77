"""``lapeval search-factor`` / :func:`lapeval.factor.search_factor`: the amplification value chosen per target
language by LSS, on a tiny random model with a tiny mask and lapeval's builtin facts."""

from __future__ import annotations

import json
import math
import os

import pytest

from lapeval import factor
from lapeval.taskdata import FACTS_DIR
from conftest import random_mask

DEFAULT = ["set:p_max", "set:p_median", "set:tt_max", "add:tt_max", "set:tt_p10", "zero", "scale:2", "scale:5", "scale:10"]


def _mask(path, values=("p_max", "p_median")):
    return random_mask(path, values=values)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    from lapeval.lss import load_lape, load_lss_tasks

    old = os.environ.get("LAPEVAL_MLAMA_DIR")
    os.environ["LAPEVAL_MLAMA_DIR"] = str(FACTS_DIR)
    try:
        tasks = load_lss_tasks(["en", "fr", "ja"])
    finally:
        os.environ.pop("LAPEVAL_MLAMA_DIR") if old is None else os.environ.__setitem__("LAPEVAL_MLAMA_DIR", old)
    lm = load_lape(str(tiny_model_dir), batch_size=4)
    mask = _mask(tmp_path_factory.mktemp("mask") / "tiny.safetensors")
    return lm, tasks, mask


def test_default_candidates_and_parsing():
    assert [c.label for c in factor.default_candidates()] == DEFAULT
    assert [c.label for c in factor.build_candidates("set:p_max, zero", factor.parse_scales(""))] == ["set:p_max", "zero"]
    assert [c.label for c in factor.build_candidates(["set=p_max", ("scale", 2), "scale:2.0", "SET:P_MAX"], [2])] == \
        ["set:p_max", "scale:2"]  # spellings of one operation collapse to the first
    c = factor.parse_candidate("add:tt_max")
    assert (c.mode, c.value) == ("add", "tt_max") and factor.parse_candidate("zero").value is None
    assert factor.parse_scales("2, 0.5") == [2.0, 0.5]
    # ties go to the earlier candidate; NaN never wins
    assert factor._best([("a", 0.5), ("b", 0.7), ("c", 0.7), ("d", math.nan)]) == ("b", 0.7)
    assert factor._best([("a", math.nan)]) is None


def test_each_candidate_equals_compute_matrix_alone(setup):
    from lapeval.lss import compute_matrix

    lm, tasks, mask = setup
    targets = ["en", "fr", "ja"]
    logs = []
    res = factor.search(lm, tasks, targets, mask, factor.default_candidates(), limit=3, log=logs.append)
    assert res["candidates"] == DEFAULT and "zero" in res["candidates"] and "set:tt_p10" in res["candidates"]
    assert sum(m.startswith("baseline:") for m in logs) == 1  # the baseline once, for all candidates
    assert res["sources"] == ["en", "fr", "ja"] and res["n_items"] == {"en": 3, "fr": 3, "ja": 3}
    for c in factor.default_candidates():
        alone = compute_matrix(lm, tasks, targets, neurons=str(mask), mode=c.mode, value=c.value, limit=3, log=lambda m: None)
        assert res["matrices"][c.label] == alone["matrix"], c.label
        assert res["table"][c.label] == alone["per_target"], c.label
        assert res["overall"][c.label] == alone["mean_off_diagonal"], c.label
    assert any(v > 0 for m in res["matrices"].values() for row in m.values() for v in row.values())
    # the choice is the argmax of the table (first of the list on ties)
    for t in targets:
        col = [res["table"][c][t] for c in DEFAULT]
        i = col.index(max(col))
        assert res["best_per_target"][t]["candidate"] == DEFAULT[i] and res["best_per_target"][t]["lss"] == col[i]
    overall = [res["overall"][c] for c in DEFAULT]
    assert res["best_overall"]["candidate"] == DEFAULT[overall.index(max(overall))]
    b = res["best_overall"]
    assert factor.parse_candidate(b["candidate"]) == factor.parse_candidate((b["mode"], b["value"]))


def test_ties_go_to_the_earlier_candidate(setup):
    lm, tasks, mask = setup
    for order in (["add:0", "scale:1"], ["scale:1", "add:0"]):  # two no-ops: LSS 0 everywhere
        res = factor.search(lm, tasks, ["fr"], mask, order, limit=2, log=lambda m: None)
        assert res["table"] == {c: {"fr": 0.0} for c in order}
        assert res["best_per_target"]["fr"]["candidate"] == order[0] and res["best_overall"]["candidate"] == order[0]


def test_command_writes_beside_the_mask(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from lapeval.cli import main

    monkeypatch.delenv("LAPEVAL_MLAMA_DIR", raising=False)
    mask = _mask(tmp_path / "m" / "tiny.safetensors")
    rc = main(["search-factor", "--model", str(tiny_model_dir), "--neurons", str(mask), "--languages", "en,ja",
               "--targets", "fr,ja", "--candidates", "set:p_max,zero,set:tt_p10", "--scales", "3",
               "--facts", "builtin", "--limit", "2", "--batch-size", "4"])
    assert rc == 0
    assert "LAPEVAL_MLAMA_DIR" not in os.environ  # --facts set it for the run only
    js, md, png = (tmp_path / "m" / f"tiny.factor.{ext}" for ext in ("json", "md", "png"))
    doc = json.loads(js.read_text())
    assert doc["candidates"] == ["set:p_max", "zero", "set:tt_p10", "scale:3"]
    assert doc["sources"] == ["en", "ja"] and doc["targets"] == ["fr", "ja"] and doc["limit"] == 2
    assert doc["facts"] == str(FACTS_DIR) and len(doc["neurons_sha256"]) == 64 and doc["neurons"] == str(mask)
    assert set(doc["table"]) == set(doc["candidates"]) and set(doc["table"]["zero"]) == {"fr", "ja"}
    assert set(doc["best_per_target"]) == {"fr", "ja"} and doc["best_overall"]["candidate"] in doc["candidates"]
    assert doc["matrices"]["zero"]["en"].keys() == {"fr", "ja"} and "lapeval_version" in doc and "seconds" in doc
    text = md.read_text()
    assert "| candidate | fr | ja | all (s ≠ t) |" in text and "**" in text and "scale:3" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    best = doc["best_overall"]
    assert f"best overall: {best['candidate']} (LSS {best['lss']:.2f})" in out and str(js) in out
    # --out moves all three; default candidate list when --candidates is absent
    rc = main(["search-factor", "--model", str(tiny_model_dir), "--neurons", str(mask), "--languages", "en,fr",
               "--facts", "builtin", "--limit", "1", "--batch-size", "4", "--out", str(tmp_path / "o" / "f.json")])
    assert rc == 0 and json.loads((tmp_path / "o" / "f.json").read_text())["candidates"] == DEFAULT
    assert (tmp_path / "o" / "f.md").is_file() and (tmp_path / "o" / "f.png").is_file()


@pytest.mark.parametrize("extra, expect", [
    (["--candidates", "boost:2"], "candidate 'boost:2': unknown mode 'boost'"),
    (["--candidates", "set"], "candidate 'set': mode=set needs value="),
    (["--scales", "2,x"], "--scales: 'x' is not a number"),
    ([], "candidate 'set:p_median': mask"),  # the default list, on a mask without p_median
    (["--languages", "en,xx"], "unknown language 'xx'"),
    (["--targets", "ru"], "language 'ru' is not in this mask file"),
    (["--languages", "en,sw"], "no lss task for sw"),
    (["--layers", "7", "--candidates", "zero"], "names layer 7"),
])
def test_one_line_errors_before_loading_anything(tmp_path, capsys, extra, expect):
    from lapeval.cli import main

    mask = _mask(tmp_path / "pmax_only.safetensors", values=("p_max",))
    args = ["search-factor", "--model", str(tmp_path / "no-such-model"), "--neurons", str(mask), "--languages", "en,fr"]
    opts = dict(zip(args[1::2], args[2::2]))
    opts.update(zip(extra[::2], extra[1::2]))
    assert main(["search-factor", *[x for kv in opts.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err, err
    if "p_median" in expect:  # the fix: the same list without it
        assert "--candidates set:p_max,set:tt_max,add:tt_max,set:tt_p10,zero,scale:2,scale:5,scale:10," in err
    assert not list(tmp_path.glob("*.factor.*"))
