"""LSS: prompt construction, margins, the formula, scoring from lm-eval sample logs, the in-process matrix,
and lapeval's own parallel-facts set."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_mask

from lapeval.metrics import lss
from lapeval.taskdata import FACTS_DIR

ROOT = Path(__file__).resolve().parents[1]


def _doc(**extra):
    doc = {"template": "The capital of [X] is [Y]", "sub_en": "France", "obj_en": "Paris", "sub_fr": "La France",
           "obj_fr": "Paris", "sub_zh": "法国", "obj_zh": "巴黎", "src_lang": "en"}
    doc.update(extra)
    return doc


def test_prompt_deletes_y_with_its_space():
    assert lss.prompt(_doc()) == "The capital of France is"
    assert lss.prompt(_doc(template="[X]の首都は[Y]です", sub_ja="フランス"), "ja") == "フランスの首都はです"
    assert lss.prompt(_doc(template="[X] a pour capitale [Y]", src_lang="fr")) == "La France a pour capitale"


def test_choices_target_and_margins():
    doc = _doc()
    assert lss.doc_to_choice(doc) == ["Paris", "Paris", "巴黎"]
    assert lss.doc_to_target(doc) == 0
    out = lss.process_results(doc, [(-3.0, False), (-3.0, False), (-5.5, False)])
    assert out == {"margin": {"fr": 0.0, "zh": -2.5}, "src_top": 1}
    assert lss.mean_margin([out["margin"], {"fr": 1.0, "zh": 1.5}]) == pytest.approx(0.0)
    # the same string in another language ties with the source object: still the top one
    tie = lss.process_results(_doc(src_lang="fr"), [(-3.0, False), (-3.0, False), (-5.5, False)])
    assert tie == {"margin": {"en": 0.0, "zh": -2.5}, "src_top": 1}
    assert lss.process_results(doc, [(-3.0, False), (-2.0, False), (-5.5, False)])["src_top"] == 0


def test_worked_example_of_the_method():
    """method.md §4.2: s = id, t = en, margins before/after amplifying en → LSS 0.75."""
    assert lss.lss([-5.2, -3.1, -7.0, -0.4], [-1.0, -3.5, 2.3, 0.1]) == 0.75
    assert lss.lss([1.0, 2.0], [1.0, 2.0]) == 0.0  # a no-op intervention: ties never count
    assert math.isnan(lss.lss([], []))
    with pytest.raises(ValueError):
        lss.lss([1.0], [])


def test_summarize_excludes_the_diagonal():
    m = {"en": {"fr": 1.0, "zh": 0.5}, "fr": {"en": 0.5, "zh": 1.0}, "zh": {"en": 0.0, "fr": 0.5, "zh": 0.9}}
    s = lss.summarize(m)
    assert s["per_target"] == {"fr": 0.75, "zh": 0.75, "en": 0.25}
    assert s["mean_off_diagonal"] == pytest.approx(3.5 / 6)
    assert "mean off-diagonal LSS: 0.5833" in lss.format_matrix(m)


def _write_log(path: Path, src: str, margins: list[dict]):
    with open(path, "w", encoding="utf-8") as f:
        for i, m in enumerate(margins):
            f.write(json.dumps({"doc_id": i, "doc": {"src_lang": src}, "doc_hash": f"h{i}", "margin": m}) + "\n")


def test_score_logs_matches_the_formula(tmp_path):
    base, intv = tmp_path / "base", tmp_path / "fr"
    base.mkdir(), intv.mkdir()
    _write_log(base / "samples_lss_en_2026.jsonl", "en", [{"fr": -1.0}, {"fr": -2.0}, {"fr": 0.0}, {"fr": 3.0}])
    _write_log(intv / "samples_lss_en_2026.jsonl", "en", [{"fr": -0.5}, {"fr": -2.5}, {"fr": 0.0}, {"fr": 3.1}])
    m = lss.score_logs(lss.read_samples(base), {"fr": lss.read_samples(intv)})
    assert m == {"en": {"fr": 0.5}}
    # the command prints and writes the same
    out = tmp_path / "lss.json"
    from lapeval.cli import main

    assert main(["lss", "score", "--baseline", str(base), "--intervened", f"fr={intv}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["matrix"] == {"en": {"fr": 0.5}}


def test_score_logs_refuses_other_documents(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_log(a, "en", [{"fr": 1.0}])
    with open(b, "w") as f:
        f.write(json.dumps({"doc_id": 0, "doc": {"src_lang": "en"}, "doc_hash": "other", "margin": {"fr": 2.0}}) + "\n")
    with pytest.raises(ValueError, match="different documents"):
        lss.score_logs(lss.read_samples(a), {"fr": lss.read_samples(b)})


# ------------------------------------------------------------------------------------------ facts
def _facts():
    return {p.parent.name: [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines()]
            for p in sorted(FACTS_DIR.glob("*/test.jsonl"))}


def test_facts_set_is_parallel_and_large_enough():
    facts = _facts()
    assert len(facts) >= 8
    sizes = {len(rows) for rows in facts.values()}
    assert sizes == {len(facts["en"])} and len(facts["en"]) >= 40
    langs = set(facts)
    for lang, rows in facts.items():
        for i, row in enumerate(rows):
            assert row["template"].count("[X]") == 1 and row["template"].endswith(" [Y]"), (lang, row)
            for other in langs:
                assert row[f"sub_{other}"] and row[f"obj_{other}"]
                assert row[f"sub_{other}"] == facts["en"][i][f"sub_{other}"]  # the same fact in every config
    # objects differ across languages often enough for LSS to measure something
    distinct = sum(len({r[f"obj_{l}"] for l in langs}) > 3 for r in facts["en"])
    assert distinct >= 40


def test_facts_load_through_the_task_loader(monkeypatch):
    from lapeval import taskdata

    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    ds = taskdata.mlama(lapeval_lang="ja", pretrained="ignored", version=1.0)
    row = ds["test"][0]
    assert row["src_lang"] == "ja" and lss.prompt(row) == "フランスの首都は"


# --------------------------------------------------------- end to end: logs vs in-process vs direct
def _tiny_mask(tmp_path, model_dir):
    return random_mask(tmp_path / "tiny.safetensors")


def _direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Plain transformers: log P(continuation | context), tokens split as lm-eval does (whole string)."""
    whole = tok(context + continuation)["input_ids"]
    n_ctx = len(tok(context)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)[0]
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def _lm_eval(args: list[str], env: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "lapeval", "eval", *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_logs_equal_in_process_matrix_and_direct_scores(tmp_path, tiny_model_dir):
    """Baseline and intervened lm-eval runs (plain hf, and the lape model) scored from their logs give the
    same LSS as the in-process matrix; the logged baseline margins equal a direct transformers scoring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lapeval.lss.matrix import compute_matrix, load_lape
    from lapeval.lss.tasks import load_lss_tasks

    mask = _tiny_mask(tmp_path, tiny_model_dir)
    env = {**os.environ, "LAPEVAL_MLAMA_DIR": str(FACTS_DIR), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    common = ["--tasks", "lss_en,lss_ja", "--limit", "6", "--device", "cpu", "--batch_size", "4", "--log_samples"]
    _lm_eval(["--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32",
              "--output_path", str(tmp_path / "base"), *common], env)
    for t in ("fr", "ja"):
        _lm_eval(["--model", "lape", "--model_args",
                  f"pretrained={tiny_model_dir},dtype=float32,neurons={mask},lang={t},mode=set,value=p_max",
                  "--output_path", str(tmp_path / t), *common], env)
    base = lss.read_samples(tmp_path / "base")
    from_logs = lss.score_logs(base, {t: lss.read_samples(tmp_path / t) for t in ("fr", "ja")})

    os.environ["LAPEVAL_MLAMA_DIR"] = str(FACTS_DIR)
    try:
        lm = load_lape(str(tiny_model_dir), batch_size=4)
        in_process = compute_matrix(lm, load_lss_tasks(["en", "ja"]), ["fr", "ja"], neurons=str(mask), limit=6, log=lambda m: None)
    finally:
        del os.environ["LAPEVAL_MLAMA_DIR"]
    assert in_process["matrix"] == from_logs
    assert set(from_logs) == {"en", "ja"} and set(from_logs["en"]) == {"fr", "ja"} and set(from_logs["ja"]) == {"fr"}
    assert any(v > 0 for row in from_logs.values() for v in row.values())  # the intervention moved something

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    facts = _facts()["en"]
    for i in range(6):
        row = {**facts[i], "src_lang": "en"}
        p = lss.prompt(row)
        own = _direct_loglikelihood(model, tok, p, " " + row["obj_en"])
        for t in ("fr", "zh", "th"):
            direct = _direct_loglikelihood(model, tok, p, " " + row[f"obj_{t}"]) - own
            assert base["en"][i]["margin"][t] == pytest.approx(direct, abs=1e-3)


def test_matrix_command_writes_matrix_and_provenance(tmp_path, tiny_model_dir, monkeypatch):
    from lapeval.cli import main

    mask = _tiny_mask(tmp_path, tiny_model_dir)
    monkeypatch.delenv("LAPEVAL_MLAMA_DIR", raising=False)
    out = tmp_path / "m.json"
    rc = main(["lss", "matrix", "--model", str(tiny_model_dir), "--neurons", str(mask), "--languages", "en,ja",
               "--targets", "fr,ja", "--facts", "builtin", "--limit", "3", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["matrix"]["en"]) == {"fr", "ja"} and set(res["matrix"]["ja"]) == {"fr"}
    assert res["n_items"] == {"en": 3, "ja": 3} and res["value"] == "p_max" and len(res["neurons_sha256"]) == 64
    assert res["facts"] == str(FACTS_DIR)
    monkeypatch.delenv("LAPEVAL_MLAMA_DIR", raising=False)  # --facts set it for this process only


def test_facts_dir_command(capsys):
    from lapeval.cli import main

    assert main(["lss", "facts-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(FACTS_DIR)
