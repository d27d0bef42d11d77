"""The ``lape`` lm-eval model: identical to ``hf`` without an intervention, batch-size invariant in every
mode, ``lang=self`` routing, switching settings without reload, intervention-aware ``--use_cache``,
provenance, one-line errors, hooks gone after exceptions, and the command-line entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, require_shared

from lapeval.intervention.operation import InterventionError
from lapeval.masks import MaskError, NeuronMask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import CacheHook, CachingLM  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from lapeval.lm import LapeConfigError, LapeLM  # noqa: E402

MODES = [("zero", None), ("set", "p_max"), ("set", "p_median"), ("set", 2.5), ("scale", 3), ("add", "p_max"),
         ("add", -1.0), ("set", "tt_max"), ("add", "tt_max"), ("set", "tt_p10")]


@pytest.fixture(scope="module")
def tiny_mask(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(1)
    assigned = torch.rand(3, 2, 48, generator=g) < 0.15
    vals = {"p_max": 1 + 2 * torch.rand(3, 2, 48, generator=g), "p_median": torch.rand(3, 2, 48, generator=g)}
    path = tmp_path_factory.mktemp("mask") / "tiny.safetensors"
    return NeuronMask.from_assignment(assigned, ["en", "id", "vi"], vals).save(path)


@pytest.fixture(scope="module")
def lm(tiny_model_dir) -> LapeLM:
    return LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def hf(tiny_model_dir) -> HFLM:
    return HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4)


TEXTS = [("The cat sat", " on the mat", "xcopa_vi"), ("Kucing itu duduk di atas", " tikar dan", "xcopa_id"),
         ("Con mèo ngồi trên tấm thảm và", " nhìn những con chim", "xcopa_vi"), ("Le chat", " est assis", "xcopa_id"),
         ("Paka alikaa kwenye", " mkeka", "xcopa_id"), ("猫坐在垫子上，看着", "花园里的鸟", "xcopa_vi"),
         ("The cat sat on the mat and looked", " at the birds", "xcopa_id")]


def ll_requests(texts=TEXTS):
    return [Instance("loglikelihood", {}, (c, x), i, (t, i, 1)) for i, (c, x, t) in enumerate(texts)]


def gen_requests(texts=TEXTS, n=6):
    kw = {"until": ["\n"], "max_gen_toks": n, "do_sample": False}
    return [Instance("generate_until", {}, (c, dict(kw)), i, (t, i, 1)) for i, (c, _, t) in enumerate(texts)]


def run(model, bs, gen=True):
    model.batch_size_per_gpu = bs
    out = model.loglikelihood(ll_requests()), (model.generate_until(gen_requests()) if gen else None)
    return out


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---- no-op and batch invariance -------------------------------------------------------------------
def test_noop_is_hf(lm, hf, tiny_mask):
    want = run(hf, 4)
    lm.clear_intervention()
    assert run(lm, 4) == want  # exact: the same code path
    lm.set_intervention(neurons=tiny_mask, lang="all", mode="scale", value=1)
    assert run(lm, 4) == want  # scale by 1 through the hooks is exact too
    lm.clear_intervention()


@pytest.mark.parametrize("mode,value", MODES)
def test_batch_size_invariance_every_mode(lm, tiny_mask, mode, value):
    lm.set_intervention(neurons=str(tiny_mask), lang="self", mode=mode, value=value)
    (ll1, g1), (ll4, g4) = run(lm, 1), run(lm, 4)
    assert max(abs(a[0] - b[0]) for a, b in zip(ll1, ll4)) <= 1e-5
    assert g1 == g4
    lm.clear_intervention()
    base = run(lm, 4, gen=False)[0]
    assert max(abs(a[0] - b[0]) for a, b in zip(ll1, base)) > 1e-4  # it did intervene
    assert _hooks(lm.model) == 0


def test_self_routing_equals_per_language_runs(lm, tiny_mask):
    reqs = ll_requests()
    lm.batch_size_per_gpu = 4
    lm.set_intervention(neurons=tiny_mask, lang="self", mode="set", value="p_max")
    routed = lm.loglikelihood(reqs)
    for code, task in (("id", "xcopa_id"), ("vi", "xcopa_vi")):
        lm.set_intervention(neurons=tiny_mask, lang=code, mode="set", value="p_max")
        alone = lm.loglikelihood([r for r in reqs if r.task_name == task])
        assert [routed[i] for i, r in enumerate(reqs) if r.task_name == task] == alone
    assert lm.get_model_info()["lape"]["intervention"]["lang"] == ["vi"]
    # a task in a language the mask lacks, or in none: unmodified (as hf) and reported, never mixed in
    bad = [Instance("loglikelihood", {}, ("a", " b"), 0, ("xcopa_th", 0, 1)),
           Instance("loglikelihood", {}, ("a", " b"), 1, ("arc_easy", 0, 1))]
    lm.clear_intervention()
    plain = lm.loglikelihood(bad)
    lm.set_intervention(neurons=tiny_mask, lang="self", mode="zero")
    assert lm.loglikelihood(bad) == plain
    unmodified = lm.get_model_info()["lape"]["intervention"]["unmodified"]
    assert unmodified["xcopa_th"] == {"requests": 1, "reason": "th not in mask"}
    assert unmodified["arc_easy"]["requests"] == 1 and "lang_map=" in unmodified["arc_easy"]["reason"]
    with pytest.raises(MaskError, match=r"task xcopa_th is in th, which the mask has no neurons for \(it has: en, id, vi\)"):
        lm.intervention.language_of("xcopa_th")  # the strict form still explains
    with pytest.raises(LapeConfigError, match="names no language"):
        lm.intervention.language_of("arc_easy")
    lm.clear_intervention()


def test_switching_without_reload_and_provenance(lm, tiny_mask):
    lm.batch_size_per_gpu = 4
    lm.clear_intervention()
    base = lm.loglikelihood(ll_requests())
    lm.set_intervention(neurons=tiny_mask, lang="en+vi", mode="add", value="p_max", layers="1")
    changed = lm.loglikelihood(ll_requests())
    info = lm.get_model_info()["lape"]
    iv = info["intervention"]
    assert iv["neurons_sha256"] == NeuronMask.load(tiny_mask).sha256()
    assert (iv["languages"], iv["mode"], iv["value"], iv["layers"]) == (["en", "vi"], "add", "p_max", [1])
    assert info["lapeval_version"] and json.dumps(info)
    lm.clear_intervention()
    assert lm.loglikelihood(ll_requests()) == base != changed
    assert lm.get_model_info()["lape"]["intervention"] is None


def test_rows_api(lm, tiny_mask):
    """Several interventions as rows of one forward (grid cells)."""
    from lapeval.intervention.hooks import Intervention

    mask = NeuronMask.load(tiny_mask)
    ivs = [Intervention.from_mask(mask, [c], "set", "p_max") for c in ("id", "vi")]
    ids = lm.tok_encode("Kucing itu duduk di atas tikar")
    batch = torch.tensor([ids, ids, ids])
    with lm.apply(ivs, rows=[0, 1, -1]):
        rows = lm._model_call(batch)
    for k, iv in enumerate([ivs[0], ivs[1], None]):
        with lm.apply(iv):
            torch.testing.assert_close(rows[k], lm._model_call(batch[:1])[0], rtol=0, atol=1e-5)


# ---- caching --------------------------------------------------------------------------------------
def test_use_cache_is_intervention_aware(lm, tiny_mask, tmp_path, monkeypatch):
    lm.batch_size_per_gpu = 4
    calls = []
    real = HFLM.loglikelihood
    monkeypatch.setattr(HFLM, "loglikelihood", lambda self, r, **kw: calls.append(len(r)) or real(self, r, **kw))
    db = str(tmp_path / "cache.db")
    lm.set_intervention(neurons=tiny_mask, lang="id", mode="set", value="p_max")
    first = CachingLM(lm, db).loglikelihood(ll_requests())
    lm.set_intervention(neurons=tiny_mask, lang="id", mode="zero")
    zeroed = CachingLM(lm, db).loglikelihood(ll_requests())
    assert zeroed != first and calls == [7, 7]  # a different intervention never reads the other's answers
    lm.set_intervention(neurons=tiny_mask, lang="id", mode="set", value="p_max")
    assert CachingLM(lm, db).loglikelihood(ll_requests()) == first and calls == [7, 7]  # all hits
    # the CachingLM hook left on the instance does not cache later uncached runs
    cached = lm._lape_db
    n = len(cached)
    lm.set_intervention(neurons=tiny_mask, lang="vi", mode="zero")
    lm.loglikelihood(ll_requests())
    assert len(cached) == n
    # lang=self: the same request text in two languages' tasks gets each language's own answer
    twin = [Instance("loglikelihood", {}, ("Le chat", " est assis"), i, (t, i, 1)) for i, t in enumerate(["xcopa_id", "xcopa_vi"])]
    lm.set_intervention(neurons=tiny_mask, lang="self", mode="set", value="p_max")
    a = CachingLM(lm, db).loglikelihood(twin)
    b = CachingLM(lm, db).loglikelihood(twin)
    assert a == b and a[0] != a[1]
    lm.set_cache_hook(CacheHook(None))
    lm.clear_intervention()


# ---- errors and hygiene ---------------------------------------------------------------------------
def test_errors_are_one_line(lm, tiny_mask, tmp_path, tiny_model_dir):
    other = NeuronMask.from_assignment(torch.zeros(1, 3, 64, dtype=torch.bool), ["en"]).save(tmp_path / "o.safetensors")
    cases = [
        (dict(neurons=tiny_mask, lang="ja", mode="zero"), "it has en, id, vi"),
        (dict(neurons=tiny_mask, lang="klingon", mode="zero"), "it has en, id, vi"),
        (dict(neurons=other, lang="en", mode="zero"), "is for 3 layers × 64 FFN neurons but"),
        (dict(neurons=tiny_mask, lang="id", mode="amplify", value=2), "unknown mode"),
        (dict(neurons=tiny_mask, lang="id", mode="set", value="lots"), "bad value"),
        (dict(neurons=tiny_mask, lang="id", mode="set"), "needs value="),
        (dict(neurons=tmp_path / "nope.safetensors", lang="id", mode="zero"), "does not exist"),
        (dict(neurons=tiny_mask, mode="zero"), "needs lang="),
        (dict(lang="id", mode="zero"), "without neurons="),
        (dict(neurons=tiny_mask, lang="id", mode="zero", layers="7"), "layers 0..1"),
    ]
    for kw, text in cases:
        with pytest.raises((MaskError, InterventionError)) as e:
            lm.set_intervention(**kw)
        assert text in str(e.value) and "\n" not in str(e.value), (kw, str(e.value))
    with pytest.raises(MaskError, match="does not exist"):  # before the model is loaded
        LapeLM(pretrained=str(tiny_model_dir), neurons=str(tmp_path / "nope.safetensors"), lang="id", mode="zero")
    lm.clear_intervention()


def test_hooks_and_tap_gone_after_exception(lm, tiny_mask, monkeypatch):
    import lm_eval.models.huggingface as hfmod

    original_pad = hfmod.pad_and_concat
    lm.set_intervention(neurons=tiny_mask, lang="id", mode="set", value="tt_max")

    def boom(self, *a, **k):
        assert _hooks(self.model) > 0 and hfmod.pad_and_concat is not original_pad
        raise RuntimeError("boom")

    monkeypatch.setattr(HFLM, "_model_call", boom)
    with pytest.raises(RuntimeError, match="boom"):
        lm.loglikelihood(ll_requests())
    assert _hooks(lm.model) == 0 and hfmod.pad_and_concat is original_pad
    monkeypatch.setattr(HFLM, "_model_generate", boom)
    with pytest.raises(RuntimeError, match="boom"):
        lm.generate_until(gen_requests())
    assert _hooks(lm.model) == 0
    lm.clear_intervention()


# ---- plugin discovery and the command line --------------------------------------------------------
def _py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=300)


def test_autoload_registers_lazily_without_hiding_builtins():
    r = _py("import sys; import lapeval._autoload as a; a.install(); "
            "assert 'lm_eval' not in sys.modules and 'torch' not in sys.modules; "
            "from lm_eval.api.registry import get_model, model_registry; "
            "assert len(model_registry) == 0; import lm_eval.models; "  # lape only after the built-ins
            "assert 'lape' in model_registry and 'hf' in model_registry and 'torch' not in sys.modules; "
            "print(get_model('hf').__name__, get_model('lape').__name__, 'vllm' in model_registry)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["HFLM", "LapeLM", "True"]


def test_pth_line_never_fails():
    line = (ROOT / "lapeval" / "_autoload.pth").read_text()
    assert line.startswith("import ") and line.count("\n") == 1
    r = _py("import sys; sys.modules['_lapeval_autoload'] = None\n" + line)  # module missing: silent
    assert r.returncode == 0 and r.stderr == ""


def test_eval_argv_and_tasks_path():
    from lapeval.commands.eval import lm_eval_argv, tasks_path

    assert tasks_path().name == "tasks"
    assert lm_eval_argv(["--model", "lape", "--tasks", "x"], "/t") == ["run", "--model", "lape", "--tasks", "x", "--include_path", "/t"]
    assert lm_eval_argv(["ls", "tasks"], "/t") == ["ls", "tasks", "--include_path", "/t"]
    assert lm_eval_argv(["run", "--include_path", "/mine"], "/t") == ["run", "--include_path", "/mine"]


XCOPA_DOCS = [
    {"premise": "Barang itu dikemas dalam bungkus gelembung.", "choice1": "Barang itu rapuh.", "choice2": "Barang itu kecil.", "question": "cause", "label": 0},
    {"premise": "Saya kosongkan kantong saya.", "choice1": "Saya ambil tiket.", "choice2": "Saya temukan senjata.", "question": "effect", "label": 0},
    {"premise": "Anak itu menangis.", "choice1": "Dia jatuh.", "choice2": "Dia tertawa.", "question": "cause", "label": 0},
]


def _task_yaml(tmp_path) -> Path:
    data = tmp_path / "xcopa_id.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in XCOPA_DOCS))
    yaml = tmp_path / "local_xcopa.yaml"
    yaml.write_text(f"group: local_xcopa_test\ntask:\n  - task: xcopa_id\n    dataset_path: json\n    dataset_name: null\n"
                    f"    dataset_kwargs:\n      data_files:\n        test: {data}\n        validation: {data}\n")
    return yaml


def test_lapeval_eval_command(tmp_path, tiny_model_dir, tiny_mask):
    out = tmp_path / "out"
    args = ["eval", "--model", "lape", "--model_args",
            f"pretrained={tiny_model_dir},neurons={tiny_mask},lang=self,mode=set,value=p_max",
            "--tasks", str(_task_yaml(tmp_path)), "--device", "cpu", "--batch_size", "2", "--output_path", str(out)]
    r = subprocess.run([sys.executable, "-m", "lapeval", *args], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(out.rglob("results_*.json")).read_text())
    iv = res["config"]["lape"]["intervention"]
    assert iv["lang"] == "self" and iv["languages"] == ["id"] and iv["mode"] == "set" and iv["value"] == "p_max"
    assert iv["neurons_sha256"] == NeuronMask.load(tiny_mask).sha256()
    assert "xcopa_id" in res["results"]


def _lm_eval(tmp_path, model_args: str, *extra: str) -> subprocess.CompletedProcess:
    """The literal ``lm_eval --model lape`` command on the local XCOPA-style task."""
    lm_eval = Path(sys.executable).with_name("lm_eval")
    return subprocess.run([str(lm_eval), "--model", "lape", "--model_args", model_args, "--tasks",
                           str(_task_yaml(tmp_path)), "--device", "cpu", *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_literal_lm_eval_command(tmp_path, tiny_model_dir, tiny_mask):
    import importlib.util

    if importlib.util.find_spec("_lapeval_autoload") is None:
        pytest.skip("lapeval is not pip-installed here (no lapeval-lm-eval.pth)")
    out = tmp_path / "out"
    r = _lm_eval(tmp_path, f"pretrained={tiny_model_dir},neurons={tiny_mask},lang=id,mode=zero", "--output_path", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(next(out.rglob("results_*.json")).read_text())["config"]["lape"]["intervention"]["mode"] == "zero"


# ---- the real model -------------------------------------------------------------------------------
def real_mask(tmp_path_factory, n_layers=18, d_ff=2048) -> Path:
    committed = ROOT / "neuron_masks" / "gemma-3-270m.safetensors"
    if committed.is_file():
        return committed
    g = torch.Generator().manual_seed(0)
    assigned = torch.rand(3, n_layers, d_ff, generator=g) < 0.01
    vals = {"p_max": 0.5 + torch.rand(3, n_layers, d_ff, generator=g), "p_median": 0.2 * torch.rand(3, n_layers, d_ff, generator=g)}
    path = tmp_path_factory.mktemp("real_mask") / "provisional.safetensors"
    return NeuronMask.from_assignment(assigned, ["en", "id", "vi"], vals).save(path)


def xcopa_group(tmp_path, shared: Path, langs=("id", "vi")) -> Path:
    lines = ["group: lape_test_xcopa", "task:"]
    for l in langs:
        f = shared / "xcopa" / "data" / l / f"test.{l}.jsonl"
        lines += [f"  - task: xcopa_{l}", "    dataset_path: json", "    dataset_name: null", "    dataset_kwargs:",
                  "      data_files:", f"        test: {f}", f"        validation: {f}"]
    p = tmp_path / "xcopa_local.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def samples(model, yaml: Path, limit: int):
    """Per-sample responses of lm-eval's own xcopa task definitions, pointed at the local files."""
    import lm_eval.tasks
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    builtin = Path(lm_eval.tasks.__file__).parent / "xcopa"
    tm = TaskManager(include_defaults=False, include_path=[str(builtin), str(yaml.parent)])
    res = simple_evaluate(model=model, tasks=["lape_test_xcopa"], task_manager=tm, limit=limit, log_samples=True,
                          bootstrap_iters=0)
    return {t: [s["resps"] for s in sorted(v, key=lambda s: s["doc_id"])] for t, v in res["samples"].items()}


@pytest.mark.real
def test_real_lape_matches_hf_and_is_batch_invariant(real_model_dir, tmp_path, tmp_path_factory):
    shared = require_shared("xcopa", "data")
    yaml = xcopa_group(tmp_path, shared.parent.parent)
    hf = HFLM(pretrained=str(real_model_dir), device="cpu", batch_size=8)
    lape = LapeLM(pretrained="gemma-3-270m", device="cpu", batch_size=8)
    want = samples(hf, yaml, 6)
    assert samples(lape, yaml, 6) == want
    assert lape.generate_until(gen_requests(TEXTS[:4], n=8)) == hf.generate_until(gen_requests(TEXTS[:4], n=8))
    del hf
    mask = real_mask(tmp_path_factory)
    # scale=1 on every language's neurons: bit-identical (lang=self would regroup requests per language, so
    # batches, padding and hence float rounding would differ from hf's mixed batches)
    lape.set_intervention(neurons=mask, lang="all", mode="scale", value=1)
    assert samples(lape, yaml, 6) == want
    for mode, value in (("set", "p_max"), ("set", "tt_max"), ("zero", None)):
        lape.set_intervention(neurons=mask, lang="self", mode=mode, value=value)
        got = {}
        for bs in (1, 8):
            lape.batch_size_per_gpu = bs
            got[bs] = samples(lape, yaml, 4)
        for task in got[1]:
            a = [float(r[0][0]) for doc in got[1][task] for r in doc]
            b = [float(r[0][0]) for doc in got[8][task] for r in doc]
            # hf itself moves up to 1.7e-5 between batch sizes 1 and 8 here (fp32 CPU matmuls of other
            # shapes, benchmarks/lape_equivalence.py); interventions must not add batch dependence beyond that
            assert max(abs(x - y) for x, y in zip(a, b)) <= 5e-5, (mode, value, task)


def test_literal_lm_eval_command_with_ops_and_scope(tmp_path, tiny_model_dir, tiny_mask):
    """``ops=`` terms joined by ``;`` and ``scope=`` survive lm-eval's own comma/equals argument parsing."""
    import importlib.util

    if importlib.util.find_spec("_lapeval_autoload") is None:
        pytest.skip("lapeval is not pip-installed here (no lapeval-lm-eval.pth)")
    out = tmp_path / "out"
    r = _lm_eval(tmp_path, f"pretrained={tiny_model_dir},neurons={tiny_mask},lang=id,ops=zero@en;add:2*p_max,scope=last",
                 "--output_path", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    iv = json.loads(next(out.rglob("results_*.json")).read_text())["config"]["lape"]["intervention"]
    assert iv["label"] == "zero@en;add:2*p_max@id;scope:last" and iv["scope"] == "last"
    assert [(t["languages"], t["mode"], t.get("factor")) for t in iv["terms"]] == [(["en"], "zero", None),
                                                                                 (["id"], "add", 2.0)]
    bad = _lm_eval(tmp_path, f"pretrained={tiny_model_dir},neurons={tiny_mask},ops=explode@id")
    assert bad.returncode != 0
    assert "unknown mode 'explode'" in bad.stderr.strip().splitlines()[-1]  # lm-eval's last line names the fix
