"""``lapeval check``: the CI regression gate, on results in the exact shape lm-eval 0.4.13 writes (modelled on
benchmarks/results/real_tasks_gemma-3-270m.json) and on lapeval grid summaries. No model, no torch."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from lapeval.cli import main
from lapeval.gate import CheckError, Tolerance, check, load, parse_tolerances


def _task(name, sample_len=24, **metrics):
    """One task entry as lm-eval writes it: name, alias, sample_len, then metric/stderr pairs by filter."""
    entry = {"name": name, "alias": name, "sample_len": sample_len}
    for metric, (value, se) in metrics.items():
        entry[f"{metric},none"] = value
        entry[f"{metric}_stderr,none"] = se
    return entry


def lm_eval_results() -> dict:
    """A results_<datetime>.json of `lm_eval --model lape ... --tasks lss_en,flores_mt_en-fr,flores_ppl_en,
    lapeval_xcopa,lang_steer_fr`: numbers, "N/A" stderrs, string metrics, a group in `results` and `groups`."""
    xcopa_group = {"alias": "lapeval_xcopa", "name": "lapeval_xcopa", "sample_len": 48,
                   "acc,none": 0.5208333333333334, "acc_stderr,none": 0.07286873375552524,
                   "sample_count": {"acc,none": 48}}
    mt = _task("flores_mt_en-fr", bleu=(5.0300420030720625, "N/A"), chrfpp=(23.401019997709916, "N/A"),
               off_target=(0.7916666666666666, 0.08468112965594378))
    mt.update({"spbleu,none": "unavailable: sentencepiece is not installed", "spbleu_stderr,none": "N/A",
               "bleu_signature,none": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
               "bleu_signature_stderr,none": "N/A"})
    results = {
        "lss_en": _task("lss_en", margin=(-14.00137797707603, "N/A"), src_top=(1.0, 0.0)),
        "flores_mt_en-fr": mt,
        "flores_ppl_en": _task("flores_ppl_en", word_perplexity=(343.4472817448447, "N/A"),
                               byte_perplexity=(2.496984720069745, "N/A"), bits_per_byte=(1.320186992933305, "N/A")),
        "lang_steer_fr": _task("lang_steer_fr", lang_match=(0.0, 0.0)),
        "xcopa_id": _task("xcopa_id", acc=(0.4583333333333333, 0.10389457216622949)),
        "xcopa_sw": _task("xcopa_sw", acc=(0.5833333333333334, 0.10279899245732686)),
        "lapeval_xcopa": xcopa_group,
    }
    return {
        "results": results,
        "groups": {"lapeval_xcopa": copy.deepcopy(xcopa_group)},
        "group_subtasks": {"lapeval_xcopa": ["xcopa_id", "xcopa_sw"], "lss_en": [], "flores_mt_en-fr": []},
        "configs": {"xcopa_id": {"task": "xcopa_id", "dataset_path": "xcopa", "output_type": "multiple_choice"}},
        "versions": {"xcopa_id": 1.0, "xcopa_sw": 1.0, "lss_en": 1, "lapeval_xcopa": 1.0},
        "n-shot": {"xcopa_id": 0, "xcopa_sw": 0},
        "higher_is_better": {"xcopa_id": {"acc": True}, "flores_ppl_en": {"word_perplexity": False}},
        "n-samples": {"xcopa_id": {"original": 100, "effective": 24}},
        "config": {"model": "lape", "model_args": "pretrained=gemma-3-270m,neurons=m.safetensors,lang=id,mode=set,value=p_max",
                   "batch_size": 8, "limit": 24.0, "lape": {"mode": "set", "value": "p_max", "languages": ["id"]}},
        "git_hash": "0123abc", "date": 1767225600.0, "task_hashes": {},
        "model_source": "lape", "model_name": "gemma-3-270m", "model_name_sanitized": "gemma-3-270m",
        "start_time": 123.4, "end_time": 456.7, "total_evaluation_time_seconds": "333.3",
    }


N_METRICS = 12  # numeric metrics in lm_eval_results(), the group counted once


def grid_summary() -> dict:
    """A lapeval grid summary: lm-eval's `results` shape one level deeper, per grid cell."""
    base = {"xcopa_id": {"acc,none": 0.4583, "acc_stderr,none": 0.1039},
            "flores_ppl_fr": {"word_perplexity,none": 120.5, "word_perplexity_stderr,none": "N/A"}}
    steered = {"xcopa_id": {"acc,none": 0.5417, "acc_stderr,none": 0.1039},
               "flores_ppl_fr": {"word_perplexity,none": 180.25, "word_perplexity_stderr,none": "N/A"}}
    return {"format": "lapeval.grid_summary", "version": 1, "grid": {"set": ["p_max/fr"]},
            "cells": [{"id": "baseline"}, {"id": "set=p_max/fr"}],
            "results": {"baseline": base, "set=p_max/fr": steered}}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _failure_lines(stdout):
    return [l for l in stdout.splitlines() if l.startswith(("MOVED", "MISSING"))]


@pytest.fixture()
def ref(tmp_path):
    return _write(tmp_path / "ref" / "results_2026-01-01T00-00-00.000001.json", lm_eval_results())


# ------------------------------------------------------------------------------------------- flattening


def test_flatten_reads_lm_eval_shape(ref):
    m = load(ref).metrics
    assert len(m) == N_METRICS
    assert m[("", "xcopa_id", "acc", "none")] == (0.4583333333333333, 0.10389457216622949)
    assert m[("", "flores_ppl_en", "word_perplexity", "none")] == (343.4472817448447, None)  # "N/A"
    assert ("", "flores_mt_en-fr", "spbleu", "none") not in m  # a string, not a number
    assert not any(k[2] in ("alias", "name", "sample_len", "sample_count") or k[2].endswith("_stderr") for k in m)


# ----------------------------------------------------------------------------------------------- gating


def test_identical_results_pass(tmp_path, ref, capsys):
    res = _write(tmp_path / "res.json", lm_eval_results())
    rc, out, err = run(capsys, "check", res, "--against", ref)
    assert rc == 0, out + err
    assert out.splitlines()[-1] == f"lapeval check: all {N_METRICS} metrics within tolerance"
    assert not _failure_lines(out)


def test_perturbed_metric_fails_and_is_the_only_line(tmp_path, ref, capsys):
    ref_obj = lm_eval_results()
    ref_obj["results"]["xcopa_sw"]["acc_stderr,none"] = 0.01
    _write(ref, ref_obj)
    moved = copy.deepcopy(ref_obj)
    moved["results"]["xcopa_sw"]["acc,none"] -= 0.1
    res = _write(tmp_path / "res.json", moved)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 1
    lines = _failure_lines(out)
    assert len(lines) == 1, out
    assert lines[0].split()[:6] == ["MOVED", "xcopa_sw", "acc,none", "0.5833", "->", "0.4833"]
    assert "(Δ -0.1000, allowed ±0.0283)" in lines[0]  # 2·sqrt(0.01² + 0.01²)
    assert out.splitlines()[-1] == f"lapeval check: 1 of {N_METRICS} metrics moved beyond tolerance"


def test_move_within_k_stderr_passes_and_fails_with_k_zero(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    res_obj["results"]["xcopa_id"]["acc,none"] += 0.125  # 1/8, within 2·sqrt(2)·0.104 = 0.29
    res = _write(tmp_path / "res.json", res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 0, out
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--stderr-k", "0")
    assert rc == 1
    assert [l.split()[1] for l in _failure_lines(out)] == ["xcopa_id"]
    assert "allowed ±1e-06" in _failure_lines(out)[0]
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--stderr-k", "1")  # 1·0.147 > 0.125
    assert rc == 0, out


def test_stderr_term_needs_both_stderrs(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    res_obj["results"]["xcopa_id"]["acc,none"] += 0.125
    res_obj["results"]["xcopa_id"]["acc_stderr,none"] = "N/A"
    res = _write(tmp_path / "res.json", res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 1 and [l.split()[1] for l in _failure_lines(out)] == ["xcopa_id"]


def test_per_metric_and_default_tolerance(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    res_obj["results"]["flores_ppl_en"]["word_perplexity,none"] += 0.4  # no stderr ("N/A")
    res_obj["results"]["flores_mt_en-fr"]["bleu,none"] += 0.02
    res = _write(tmp_path / "res.json", res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 1
    assert sorted(l.split()[2] for l in _failure_lines(out)) == ["bleu,none", "word_perplexity,none"]
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--tolerance", "word_perplexity=0.5")
    assert rc == 1 and [l.split()[2] for l in _failure_lines(out)] == ["bleu,none"]
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--tolerance", "word_perplexity=0.5", "--tolerance", "0.05")
    assert rc == 0, out
    # the override is only for that metric: a bare 0.05 alone does not cover the perplexity
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--tolerance", "0.05")
    assert rc == 1 and [l.split()[2] for l in _failure_lines(out)] == ["word_perplexity,none"]
    # relative tolerance: 0.4 / 343 ≈ 0.12 %
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--rel-tolerance", "0.002", "--tolerance", "0.05")
    assert rc == 0, out


def test_patterns_and_later_override_wins():
    tol = parse_tolerances(["0.01", "*perplexity=2", "word_perplexity,none=0.5"])
    assert tol.abs_for("acc", "none") == 0.01
    assert tol.abs_for("byte_perplexity", "none") == 2.0
    assert tol.abs_for("word_perplexity", "none") == 0.5
    assert Tolerance(abs_tol=0, stderr_k=2).allowed("acc", "none", 0.5, 0.03, 0.04) == pytest.approx(0.1)


def test_missing_metric_fails_and_extra_metrics_are_counted(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    del res_obj["results"]["lang_steer_fr"]
    res_obj["results"]["xcopa_sw"]["acc_norm,none"] = 0.5  # only in results
    res_obj["results"]["xcopa_vi"] = _task("xcopa_vi", acc=(0.5, 0.1))
    res = _write(tmp_path / "res.json", res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 1
    lines = _failure_lines(out)
    assert len(lines) == 1 and lines[0].split()[:5] == ["MISSING", "lang_steer_fr", "lang_match,none", "0.0000", "->"]
    assert "(missing)" in lines[0]
    assert out.splitlines()[-1] == f"lapeval check: 1 of {N_METRICS} metrics missing in results (2 only in results)"
    # extra metrics alone never fail
    res_obj["results"]["lang_steer_fr"] = lm_eval_results()["results"]["lang_steer_fr"]
    _write(res, res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref)
    assert rc == 0 and not _failure_lines(out)
    assert out.splitlines()[-1] == f"lapeval check: all {N_METRICS} metrics within tolerance (2 only in results)"


def test_nan_equals_only_nan(tmp_path, capsys):
    a, b = lm_eval_results(), lm_eval_results()
    a["results"]["lss_en"]["margin,none"] = b["results"]["lss_en"]["margin,none"] = math.nan
    ra, rb = _write(tmp_path / "a.json", a), _write(tmp_path / "b.json", b)
    assert run(capsys, "check", ra, "--against", rb)[0] == 0
    b["results"]["lss_en"]["margin,none"] = -14.0
    _write(rb, b)
    rc, out, _ = run(capsys, "check", ra, "--against", rb, "--tolerance", "100")
    assert rc == 1 and [l.split()[1] for l in _failure_lines(out)] == ["lss_en"]


def test_tasks_and_metrics_filters(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    res_obj["results"]["flores_mt_en-fr"]["bleu,none"] += 3
    res = _write(tmp_path / "res.json", res_obj)
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--tasks", "xcopa_*", "--tasks", "lapeval_*")
    assert rc == 0 and out.splitlines()[-1] == "lapeval check: all 3 metrics within tolerance"
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--metrics", "chrfpp", "--metrics", "off_target,none")
    assert rc == 0 and out.splitlines()[-1] == "lapeval check: all 2 metrics within tolerance"
    rc, out, _ = run(capsys, "check", res, "--against", ref, "--metrics", "bleu")
    assert rc == 1 and out.splitlines()[-1] == "lapeval check: 1 of 1 metrics moved beyond tolerance"


def test_json_report(tmp_path, ref, capsys):
    res_obj = lm_eval_results()
    res_obj["results"]["xcopa_id"]["acc,none"] = 0.9
    res = _write(tmp_path / "res.json", res_obj)
    out_json = tmp_path / "report" / "check.json"
    rc, _, _ = run(capsys, "check", res, "--against", ref, "--json", out_json)
    assert rc == 1
    report = json.loads(out_json.read_text())
    assert report["format"] == "lapeval.check" and report["passed"] is False
    assert report["summary"] == {"compared": N_METRICS, "moved": 1, "missing": 0, "only_in_results": 0}
    row = next(r for r in report["metrics"] if r["status"] == "moved")
    assert (row["task"], row["metric"], row["filter"], row["result"]) == ("xcopa_id", "acc", "none", 0.9)
    assert row["allowed"] == pytest.approx(2 * math.sqrt(2) * 0.10389457216622949)
    assert report["tolerance"] == {"abs": 1e-6, "rel": 0.0, "stderr_k": 2.0, "per_metric": {}}
    assert not [p for p in out_json.parent.iterdir() if p.name.startswith(".")]  # atomic write, no leftovers


# ------------------------------------------------------------------------------------------- input kinds


def test_output_directory_picks_newest_results_file(tmp_path, ref, capsys):
    out_dir = tmp_path / "out" / "ci"
    old, new = lm_eval_results(), lm_eval_results()
    old["results"]["xcopa_id"]["acc,none"] = 0.0
    _write(out_dir / "gemma-3-270m" / "results_2026-01-01T10-00-00.000001.json", new)
    older = _write(out_dir / "gemma-3-270m" / "results_2025-12-31T23-59-59.999999.json", old)
    _write(out_dir / "gemma-3-270m" / "samples_xcopa_id_2026-01-02T00-00-00.jsonl", {"not": "results"})
    now = time.time()
    os.utime(older, (now + 60, now + 60))  # the name's datetime decides, not a touched mtime
    rc, out, _ = run(capsys, "check", out_dir, "--against", ref)
    assert rc == 0, out
    assert "results_2026-01-01T10-00-00.000001.json" in out.splitlines()[0]
    # a newer run in another model folder is taken over it
    _write(out_dir / "other-model" / "results_2026-02-01T00-00-00.000000.json", old)
    rc, out, _ = run(capsys, "check", out_dir, "--against", ref)
    assert rc == 1 and [l.split()[1] for l in _failure_lines(out)] == ["xcopa_id"]


def test_lm_eval_json_output_path_is_resolved(tmp_path, ref, capsys):
    # lm_eval --output_path out/ci.json writes out/ci_<datetime>.json
    _write(tmp_path / "out" / "ci_2026-01-01T10-00-00.000001.json", lm_eval_results())
    rc, out, _ = run(capsys, "check", tmp_path / "out" / "ci.json", "--against", ref)
    assert rc == 0 and "ci_2026-01-01T10-00-00.000001.json" in out.splitlines()[0]


def test_grid_summary_cells(tmp_path, capsys):
    ref = _write(tmp_path / "reference" / "grid.json", grid_summary())
    res_obj = grid_summary()
    res_obj["results"]["set=p_max/fr"]["flores_ppl_fr"]["word_perplexity,none"] = 150.0
    res_dir = tmp_path / "out" / "grid"
    _write(res_dir / "summary.json", res_obj)
    _write(res_dir / "baseline" / "gemma-3-270m" / "results_2026-01-01T00-00-00.json", lm_eval_results())
    flat = load(ref).metrics
    assert flat[("set=p_max/fr", "xcopa_id", "acc", "none")] == (0.5417, 0.1039)
    assert len(flat) == 4
    rc, out, _ = run(capsys, "check", res_dir, "--against", ref, "--tolerance", "word_perplexity=1")
    assert rc == 1
    assert "summary.json" in out.splitlines()[0]
    lines = _failure_lines(out)
    assert len(lines) == 1
    assert lines[0].split()[:4] == ["MOVED", "set=p_max/fr", "flores_ppl_fr", "word_perplexity,none"]
    assert "180.2500 -> 150.0000  (Δ -30.2500, allowed ±1.0000)" in lines[0]
    assert out.splitlines()[-1] == "lapeval check: 1 of 4 metrics moved beyond tolerance"
    rc, out, _ = run(capsys, "check", res_dir, "--against", ref, "--cells", "baseline")
    assert rc == 0 and out.splitlines()[-1] == "lapeval check: all 2 metrics within tolerance"
    # a cell missing from the results fails every metric it has
    del res_obj["results"]["set=p_max/fr"]
    _write(res_dir / "summary.json", res_obj)
    rc, out, _ = run(capsys, "check", res_dir, "--against", ref)
    assert rc == 1 and [l.split()[:2] for l in _failure_lines(out)] == [["MISSING", "set=p_max/fr"]] * 2


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, needle", [
    ("missing_file", "no such file or directory"),
    ("not_json", "not JSON"),
    ("no_results_key", "without a 'results' object"),
    ("empty_dir", "no results_*.json below this folder"),
    ("empty_reference", "no numeric metrics"),
    ("nothing_in_common", "nothing in common"),
    ("grid_vs_plain", "nothing in common"),
    ("bad_tolerance", "bad --tolerance"),
    ("negative_tolerance", "give a finite number >= 0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, ref, capsys, case, needle):
    res = _write(tmp_path / "res.json", lm_eval_results())
    extra = []
    if case == "missing_file":
        res = tmp_path / "nope.json"
    elif case == "not_json":
        res.write_text("<html>not json</html>")
    elif case == "no_results_key":
        _write(res, {"config": {}, "versions": {}})
    elif case == "empty_dir":
        res = tmp_path / "empty"
        res.mkdir()
    elif case == "empty_reference":
        _write(ref, {"results": {"xcopa_id": {"alias": "xcopa_id", "acc,none": "N/A"}}})
    elif case == "nothing_in_common":
        _write(res, {"results": {"xwinograd_en": {"acc,none": 0.5, "acc_stderr,none": 0.1}}})
    elif case == "grid_vs_plain":
        _write(res, grid_summary())
    elif case == "bad_tolerance":
        extra = ["--tolerance", "acc=lots"]
    elif case == "negative_tolerance":
        extra = ["--tolerance", "-0.1"]
    rc, out, err = run(capsys, "check", res, "--against", ref, *extra)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("lapeval check: error: ") and needle in err


def test_errors_are_value_errors_from_lapeval(tmp_path):
    with pytest.raises(CheckError) as e:
        check(tmp_path / "a.json", tmp_path / "b.json")
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- the real command


def test_real_command_exit_codes_and_no_heavy_imports(tmp_path, ref):
    res_obj = lm_eval_results()
    res = _write(tmp_path / "same.json", res_obj)
    res_obj["results"]["xcopa_id"]["acc,none"] = 0.9
    moved = _write(tmp_path / "moved.json", res_obj)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def lapeval(*argv):
        return subprocess.run([sys.executable, "-m", "lapeval", "check", *map(str, argv)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    p = lapeval(res, "--against", ref)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == f"lapeval check: all {N_METRICS} metrics within tolerance"
    p = lapeval(moved, "--against", ref)
    assert p.returncode == 1 and p.stdout.splitlines()[-1] == f"lapeval check: 1 of {N_METRICS} metrics moved beyond tolerance"
    p = lapeval(tmp_path / "absent.json", "--against", ref)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no such file" in p.stderr
    # the comparison itself is pure json/math: neither torch nor lm_eval is imported
    code = ("import sys; from lapeval.gate import check; from lapeval.commands import check as c; "
            f"cmp = check({str(moved)!r}, {str(ref)!r}); cmp.lines(); cmp.as_dict(); "
            "print(sorted(m for m in ('torch', 'lm_eval', 'numpy', 'transformers') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
