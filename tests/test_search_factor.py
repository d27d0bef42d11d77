"""``lapeval search-factor`` / :func:`lapeval.lss.factor.search_factor`: the amplification value chosen per target
language by LSS, on a tiny random model with a tiny mask and lapeval's builtin facts."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import random_mask

from lapeval.lss import factor
from lapeval.taskdata import FACTS_DIR

DEFAULT = ["set:p_max", "set:p_median", "set:tt_max", "add:tt_max", "set:tt_p10", "zero", "scale:2", "scale:5", "scale:10"]


def _mask(path, values=("p_max", "p_median")):
    return random_mask(path, values=values)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    from lapeval.lss.matrix import load_lape
    from lapeval.lss.tasks import load_lss_tasks

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
    from lapeval.lss.matrix import compute_matrix

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


def test_composite_and_graded_candidates_equal_compute_matrix(setup):
    """A composite candidate (a term on the target plus one on a named language) and a graded one score
    exactly what compute_matrix gives for the same spec; alone, the one-term spec equals mode/value."""
    from lapeval.lss.matrix import compute_matrix

    lm, tasks, mask = setup
    cands = ["zero@en;set:p_max", "add:2*p_max", "set:p_max;scope:generation", "set:p_max"]
    res = factor.search(lm, tasks, ["fr", "ja"], mask, cands, limit=3, log=lambda m: None)
    assert res["candidates"] == cands
    for c in cands:
        alone = compute_matrix(lm, tasks, ["fr", "ja"], neurons=str(mask), ops=c, limit=3, log=lambda m: None)
        assert res["matrices"][c] == alone["matrix"], c
    plain = compute_matrix(lm, tasks, ["fr", "ja"], neurons=str(mask), mode="set", value="p_max", limit=3,
                           log=lambda m: None)
    assert res["matrices"]["set:p_max"] == plain["matrix"]
    # the en term acts (LSS itself is coarse on 3 facts: compare the log-likelihoods)
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, ("The capital of France is", " Paris"), 0, ("lss_en", 0, 1))]
    out = {}
    for spec in ("zero@en;set:p_max@fr", "set:p_max@fr"):
        lm.set_intervention(neurons=str(mask), ops=spec)
        out[spec] = lm.loglikelihood(reqs, disable_tqdm=True)[0][0]
    lm.clear_intervention()
    assert out["zero@en;set:p_max@fr"] != out["set:p_max@fr"]  # same batch: a no-op term would be bit-identical


def test_sweep_grades_one_operation_and_draws_the_curve(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from lapeval.cli import main

    monkeypatch.delenv("LAPEVAL_MLAMA_DIR", raising=False)
    assert [c.label for c in factor.sweep_candidates("add:p_max", "0.5,1,2")] == ["add:0.5*p_max", "add:p_max",
                                                                                    "add:2*p_max"]
    assert [c.label for c in factor.sweep_candidates("scale", [2, 4])] == ["scale:2", "scale:4"]
    assert [c.label for c in factor.sweep_candidates("zero@en;set:tt_max;scope:last", [3])] == \
        ["zero@en;set:3*tt_max;scope:last"]
    mask = _mask(tmp_path / "m" / "tiny.safetensors")
    rc = main(["search-factor", "--model", str(tiny_model_dir), "--neurons", str(mask), "--languages", "en,fr,ja",
               "--targets", "fr,ja", "--sweep", "add:p_max", "--alphas", "0.5,1,4", "--facts", "builtin",
               "--limit", "2", "--batch-size", "4"])
    assert rc == 0
    doc = json.loads((tmp_path / "m" / "tiny.factor.json").read_text())
    s = doc["sweep"]
    assert doc["candidates"] == ["add:0.5*p_max", "add:p_max", "add:4*p_max"] and s["alphas"] == [0.5, 1.0, 4.0]
    assert s["operation"] == "add:p_max" and set(s["curves"]) == {"fr", "ja"}
    for t, ys in s["curves"].items():
        assert ys == [doc["table"][c][t] for c in doc["candidates"]]
        best = max(range(3), key=lambda i: (ys[i], -i))
        assert s["best_alpha_per_target"][t]["alpha"] == s["alphas"][best]
    assert s["overall"] == [doc["overall"][c] for c in doc["candidates"]]
    assert (tmp_path / "m" / "tiny.factor.sweep.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "m" / "tiny.factor.md").read_text()
    assert s["graded"] == "add:α·p_max" and factor.graded_label("zero@en;scale:1@0-1") == "zero@en;scale:α@0-1"
    assert "## Sweep: add:α·p_max" in md and "| target | α=0.5 | α=1 | α=4 | best α |" in md
    assert "tiny.factor.sweep.png" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expect", [
    (["--sweep", "zero"], "zero has no value to grade"),
    (["--sweep", "add:2*p_max"], "without a factor"),
    (["--sweep", "add:p_max", "--alphas", "1,-2"], "give positive finite factors"),
    (["--alphas", "1,2"], "--alphas without --sweep"),
    (["--candidates", "zero@en;set:p_max@fr"], "every term names its languages"),
    (["--candidates", "zero@xx;set:p_max"], "xx"),
    (["--candidates", "zero@en;set:p_max@7"], "names layer 7"),
])
def test_sweep_and_composite_errors_before_loading_anything(tmp_path, capsys, extra, expect):
    from lapeval.cli import main

    mask = _mask(tmp_path / "m.safetensors")
    args = ["search-factor", "--model", str(tmp_path / "no-such-model"), "--neurons", str(mask), "--languages", "en,fr",
            *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err, err
    assert not list(tmp_path.glob("*.factor.*"))
