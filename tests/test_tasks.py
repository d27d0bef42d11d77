"""The task tree: generated and well-formed, names routable by language, data from the hub by default and
from a local copy when the environment names one, and every task run through the real ``lm_eval``
command (tiny model; Gemma-3-270m under ``-m real``)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, require_shared

from lapeval import languages, taskdata

TASKS = ROOT / "tasks"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _yamls() -> dict[Path, dict]:
    return {p: yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader) for p in sorted(TASKS.rglob("*.yaml"))}


def test_generated_files_are_up_to_date():
    r = subprocess.run([sys.executable, str(TASKS / "_generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lm_eval_indexes_every_task():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_defaults=False, include_path=str(TASKS))
    names = set(tm.all_tasks)
    expected = {f"lss_{c}" for c in ("en", "ja", "th")} | {"flores_mt_en-zh", "flores_mt_zh-en", "flores_ppl_sw",
                                                           "lang_steer_ta", "lss", "flores_mt", "flores_ppl", "lang_steer",
                                                           "lapeval_xcopa", "lapeval_xwinograd_ja", "lapeval_include_zh"}
    assert expected <= names
    assert len([n for n in names if n.startswith("flores_mt_")]) == 62


def test_task_names_route_to_their_language():
    """Every task and per-language group carries ``lapeval_language``, and :func:`task_language` finds it
    from the name alone (what ``lang=self`` uses)."""
    seen = 0
    for path, cfg in _yamls().items():
        members = cfg.get("task") if "group" in cfg else None
        if isinstance(members, list):  # groups: their override members are tagged
            for m in members:
                if isinstance(m, dict):
                    lang = m["metadata"]["lapeval_language"]
                    name = m.get("task") or m.get("group")
                    if name.startswith("include_base_44_"):  # INCLUDE subtasks: include_base_44_<language>_<domain>
                        name += "_stem"
                    assert languages.task_language(name) == lang, (path, name)
                    seen += 1
            if cfg["group"].count("_") >= 2 and cfg["group"].startswith("lapeval_"):
                assert languages.task_language(cfg["group"]) is not None, cfg["group"]
            continue
        lang = cfg["metadata"]["lapeval_language"]
        assert languages.task_language(cfg["task"]) == lang, (path, cfg["task"])
        seen += 1
    assert seen > 200


def test_hub_ids_are_lm_evals_own():
    """Without a local copy the loaders read the dataset lm-eval's own task names."""
    import lm_eval

    base = Path(lm_eval.__file__).parent / "tasks"
    assert f"dataset_path: {taskdata.HUB['xcopa']}" in (base / "xcopa" / "default_et.yaml").read_text()
    assert f"dataset_path: {taskdata.HUB['xwinograd']}" in (base / "xwinograd" / "xwinograd_common_yaml").read_text()
    assert f"dataset_path: {taskdata.HUB['include']}" in (base / "include" / "default" / "Indonesian" / "_indonesian_template_yaml").read_text()


@pytest.mark.parametrize("fn, kwargs, hub", [
    (taskdata.xcopa, {"lapeval_config": "id"}, ("cambridgeltl/xcopa", "id")),
    (taskdata.xwinograd, {"lapeval_config": "jp"}, ("Muennighoff/xwinograd", "jp")),
    (taskdata.include, {"lapeval_config": "Indonesian"}, ("CohereForAI/include-base-44", "Indonesian")),
    (taskdata.mlama, {"lapeval_lang": "en"}, ("inayarhmns/MLAMA-dod-185", "en")),
    (taskdata.flores_mt, {"lapeval_src": "en", "lapeval_tgt": "zh"}, ("openlanguagedata/flores_plus", "eng_Latn")),
])
def test_without_the_variable_the_hub_is_read(monkeypatch, fn, kwargs, hub):
    import datasets

    calls = []

    def fake(path, name=None, **kw):
        calls.append((path, name))
        raise ConnectionError("offline (test)")

    for var in taskdata.ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(ConnectionError):
        fn(**kwargs, pretrained="x", version=1.0)  # lm-eval passes metadata and model args too
    assert calls[0] == hub


def test_flores_plus_codes(monkeypatch):
    import datasets

    calls = []
    monkeypatch.delenv("LAPEVAL_FLORES_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: calls.append(name) or (_ for _ in ()).throw(ConnectionError()))
    for lang, code in (("zh", "cmn_Hans"), ("et", "ekk_Latn"), ("fr", "fra_Latn")):
        with pytest.raises(ConnectionError):
            taskdata.flores_sentences(lang)
        assert calls[-1] == code


def test_local_overrides_read_the_shared_layouts(monkeypatch):
    flores = require_shared("flores200_devtest")
    xcopa = require_shared("xcopa", "data")
    xw = require_shared("xwinograd")
    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(flores))
    monkeypatch.setenv("LAPEVAL_XCOPA_DIR", str(xcopa))
    monkeypatch.setenv("LAPEVAL_XWINOGRAD_DIR", str(xw))
    mt = taskdata.flores_mt(lapeval_src="en", lapeval_tgt="ja")
    assert list(mt) == ["devtest"] and len(mt["devtest"]) == 1012
    row = mt["devtest"][5]
    assert row["tgt_lang"] == "ja" and row["source"] == (flores / "devtest" / "eng_Latn.devtest").read_text().splitlines()[5]
    assert len(taskdata.flores_mono(lapeval_lang="sw")["devtest"]) == 1012
    x = taskdata.xcopa(lapeval_config="id")
    assert len(x["test"]) == 500 and len(x["validation"]) == 100
    assert len(taskdata.xwinograd(lapeval_config="jp")["test"]) == 959
    monkeypatch.setenv("LAPEVAL_XCOPA_DIR", str(flores))
    with pytest.raises(FileNotFoundError, match="LAPEVAL_XCOPA_DIR"):
        taskdata.xcopa(lapeval_config="id")


def test_steer_prompts_own_and_lcb(monkeypatch):
    monkeypatch.delenv("LAPEVAL_LCB_DIR", raising=False)
    own = taskdata.steer_prompts(lapeval_lang="ja")["test"]
    assert len(own) >= 30 and own[0]["question"].endswith("Answer in Japanese.") and own[0]["lang"] == "ja"
    lcb = require_shared("language_confusion", "test_sets")
    monkeypatch.setenv("LAPEVAL_LCB_DIR", str(lcb))
    fr = taskdata.steer_prompts(lapeval_lang="fr")["test"]
    assert len(fr) == 99 and fr[0]["source"] == "lcb/complex_prompts"
    en = taskdata.steer_prompts(lapeval_lang="en")["test"]  # no cross-lingual file: monolingual prompts
    assert len(en) == 100


# ------------------------------------------------------------------------------ INCLUDE fixture
DOMAINS = {"Applied Science": "Which tool measures voltage?", "Arts & Humanities": "Who painted a famous smile?",
           "Professional certification": "What does an auditor check?", "Social Science": "What is a census?",
           "STEM": "What is two plus three?"}


def write_include_fixture(root: Path) -> Path:
    """A few INCLUDE rows in the hub schema, for Indonesian, every domain lm-eval's subtasks filter on."""
    rows = []
    for i, (domain, q) in enumerate(DOMAINS.items()):
        for k in range(2):
            rows.append({"language": "Indonesian", "country": "Indonesia", "domain": domain, "subject": domain,
                         "regional_feature": "agnostic", "level": "test", "question": f"{q} ({k})",
                         "option_a": "satu", "option_b": "dua", "option_c": "tiga", "option_d": "lima",
                         "answer": (i + k) % 4})
    path = root / "Indonesian" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_include_override_keeps_lm_evals_prompt(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("LAPEVAL_INCLUDE_DIR", str(write_include_fixture(tmp_path / "include")))
    tm = TaskManager(include_path=str(TASKS))
    loaded = tm.load(["lapeval_include_id"])["tasks"]
    assert sorted(loaded) == sorted(f"include_base_44_indonesian_{d}" for d in
                                    ("applied_science", "arts_humanities", "professional_certification", "social_science", "stem"))
    stem = loaded["include_base_44_indonesian_stem"]
    docs = list(stem.test_docs())
    assert len(docs) == 2 and all(d["domain"] == "STEM" for d in docs)
    assert stem.doc_to_text(docs[0]) == "What is two plus three? (0)\nA. satu\nB. dua\nC. tiga\n D. lima\nAnswer:"  # lm-eval's, quirk and all
    assert stem.config.metadata["lapeval_language"] == "id"


# ------------------------------------------------------------------------- the real lm_eval command
def run_lm_eval(model_args: str, tasks: str, out: Path, env_extra: dict, limit: int = 3, extra=(), batch_size: int = 4) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DISABLE_MULTIPROC": "1", **env_extra}
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(TASKS), "--limit", str(limit), "--device", "cpu", "--batch_size", str(batch_size),
           "--output_path", str(out), "--log_samples", *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-4000:]
    (results,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    return json.loads(Path(results).read_text())


def _shared_env() -> dict:
    return {"LAPEVAL_FLORES_DIR": str(require_shared("flores200_devtest")),
            "LAPEVAL_XCOPA_DIR": str(require_shared("xcopa", "data")),
            "LAPEVAL_XWINOGRAD_DIR": str(require_shared("xwinograd")),
            "LAPEVAL_MLAMA_DIR": str(taskdata.FACTS_DIR)}


def test_every_kind_of_task_runs_in_lm_eval(tmp_path, tiny_model_dir):
    env = {**_shared_env(), "LAPEVAL_INCLUDE_DIR": str(write_include_fixture(tmp_path / "include"))}
    # max_length: the tiny byte-level tokenizer spells a Thai sentence in more than its 256 positions
    res = run_lm_eval(f"pretrained={tiny_model_dir},dtype=float32,max_length=1024",
                      "lss_en,flores_mt_en-fr,flores_mt_sw-en,flores_ppl_th,lang_steer_fr,lapeval_xcopa_id,lapeval_xwinograd_ja,lapeval_include_id",
                      tmp_path / "out", env, extra=["--gen_kwargs", "max_gen_toks=8"])
    r = res["results"]
    assert set(r["lss_en"]) >= {"margin,none", "src_top,none"}
    mt = r["flores_mt_en-fr"]
    assert isinstance(mt["bleu,none"], float) and isinstance(mt["chrfpp,none"], float)
    assert mt["bleu_signature,none"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "nw:2" in mt["chrfpp_signature,none"]
    assert isinstance(mt["spbleu,none"], float) or mt["spbleu,none"].startswith("unavailable: ")
    assert 0 <= r["flores_mt_sw-en"]["off_target,none"] <= 1
    assert r["flores_ppl_th"]["bits_per_byte,none"] > 0
    assert 0 <= r["lang_steer_fr"]["lang_match,none"] <= 1
    for name in ("xcopa_id", "xwinograd_jp", "include_base_44_indonesian_stem"):
        assert 0 <= r[name]["acc,none"] <= 1
    assert res["configs"]["xcopa_id"]["metadata"]["lapeval_language"] == "id"
    assert res["configs"]["xcopa_id"]["dataset_path"] == "cambridgeltl/xcopa"  # lm-eval's definition, data overridden
    from lm_eval.tasks.xcopa import utils as xcopa_utils

    (samples,) = glob.glob(str(tmp_path / "out" / "**" / "samples_xcopa_id_*.jsonl"), recursive=True)
    first = json.loads(Path(samples).read_text(encoding="utf-8").splitlines()[0])
    assert first["arguments"]["gen_args_0"]["arg_0"] == xcopa_utils.doc_to_text_id(first["doc"])  # lm-eval's prompt


def _sacrebleu_cli(hyps: list[str], refs: list[str], tmp: Path) -> dict:
    (tmp / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    exe = str(Path(sys.executable).parent / "sacrebleu")
    r = subprocess.run([exe, str(tmp / "ref.txt"), "-i", str(tmp / "hyp.txt"), "-m", "bleu", "chrf", "--chrf-word-order", "2",
                        "-w", "6"], capture_output=True, text=True, check=True)
    return {d["name"]: d for d in json.loads(r.stdout)}


@pytest.mark.real
def test_real_model_tasks_and_sacrebleu_cli(tmp_path, real_model_dir):
    """Gemma-3-270m through the real lm_eval command: translation metrics equal the sacrebleu CLI on the
    logged outputs, and the model prefers the source-language object in its own language."""
    res = run_lm_eval(f"pretrained={real_model_dir},dtype=float32", "flores_mt_en-fr,lss_fr", tmp_path / "out",
                      _shared_env(), limit=6, extra=["--gen_kwargs", "max_gen_toks=32"], batch_size=8)
    (samples,) = glob.glob(str(tmp_path / "out" / "**" / "samples_flores_mt_en-fr_*.jsonl"), recursive=True)
    rows = [json.loads(l) for l in Path(samples).read_text(encoding="utf-8").splitlines()]
    cli = _sacrebleu_cli([r["bleu"][1] for r in rows], [r["bleu"][0] for r in rows], tmp_path)
    mt = res["results"]["flores_mt_en-fr"]
    assert mt["bleu,none"] == pytest.approx(cli["BLEU"]["score"], abs=1e-5)
    assert mt["chrfpp,none"] == pytest.approx(cli["chrF2++"]["score"], abs=1e-5)
    assert mt["bleu_signature,none"] == cli["BLEU"]["signature"]
    assert mt["chrfpp,none"] > 15  # Gemma-3-270m does translate into French (19.7 on these items)
    assert res["results"]["lss_fr"]["src_top,none"] >= 0.5


def test_flores_ppl_scores_text_tokens_only_not_bos(tiny_model_dir, monkeypatch):
    """flores_ppl_<x> sums log P(sentence | BOS): equal to scoring the sentence directly, with no
    log P(BOS | BOS) term (which loglikelihood_rolling adds for tokenizers that prepend BOS)."""
    import math

    import torch
    from conftest import ROOT, require_shared
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    tm = TaskManager(include_defaults=False, include_path=str(ROOT / "tasks"))
    res = simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=["flores_ppl_fr"],
                          task_manager=tm, limit=3, device="cpu", batch_size=2, log_samples=True, bootstrap_iters=0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    total, n_bytes = 0.0, 0
    for sample in res["samples"]["flores_ppl_fr"]:
        text = sample["doc"]["text"]
        ids = torch.tensor([tok(text)["input_ids"]])  # [BOS, sentence tokens]
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(1, ids[0, 1:, None]).sum().item()
        assert sample["resps"][0][0][0] == pytest.approx(logp, abs=1e-3)
        total += logp
        n_bytes += len(text.encode("utf-8"))
    assert res["results"]["flores_ppl_fr"]["byte_perplexity,none"] == pytest.approx(math.exp(-total / n_bytes), rel=1e-4)
