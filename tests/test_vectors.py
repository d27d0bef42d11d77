"""DiffMean residual vectors (method.md §11): the residual means collected in the same pass as the neuron counts
(against a plain one-text-at-a-time reference, batch-invariant, resumed, summed), v_L = μ_L − mean_{M≠L} μ_M,
the vectors file, and steering with them in the lape model: α = 0 bit-identical to hf, batch 1 equals batch 8
in float64, scopes and per-request languages as for neurons, and composites mixing neuron and vector terms."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import random_mask, tiny_model
from test_stats import texts_for

from lapeval.identification.stats import (
    CollectConfig,
    Stats,
    collect,
    collect_language,
    sequences,
    special_prefix,
)
from lapeval.sites import decoder_layers, stack_of


def plain_residual_sums(model, tok, texts, budget) -> tuple[torch.Tensor, int]:
    """One text at a time: Σ over the counted (non-BOS) tokens of each decoder layer's output, in float64."""
    layers = decoder_layers(model)[1]
    prefix = len(special_prefix(tok))
    sums = None
    n = 0
    for seq in sequences(tok, texts, budget, max_length=10_000):
        outs = {}
        hs = [m.register_forward_hook(lambda mod, i, o, l=l: outs.__setitem__(l, o[0] if isinstance(o, tuple) else o))
              for l, m in enumerate(layers)]
        with torch.no_grad():
            stack_of(model)(torch.tensor([seq]))
        for h in hs:
            h.remove()
        s = torch.stack([outs[l][0, prefix:].double().sum(0) for l in range(len(layers))])
        sums = s if sums is None else sums + s
        n += len(seq) - prefix
    return sums, n


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_residual_sums_equal_a_plain_reference_at_any_batching(family, tiny_tokenizer):
    model = tiny_model(family, dtype=torch.float64)
    texts = texts_for(1)
    ref, n = plain_residual_sums(model, tiny_tokenizer, texts, 10**9)
    for bs, bt in [(1, 10**6), (5, 200), (64, 8192)]:
        st = collect_language(model, tiny_tokenizer, texts, CollectConfig(10**9, 3, 512, bt, bs, window=16))
        assert st.n_tokens == n
        torch.testing.assert_close(st.resid_sum, ref, rtol=1e-9, atol=1e-9)


def _stats(tmp_path, tok, langs=("en", "fr", "ja")) -> Stats:
    model = tiny_model("llama")
    texts_of = lambda lang: texts_for(langs.index(lang))  # noqa: E731
    return collect(model, tok, list(langs), texts_of, tmp_path / "s.safetensors", CollectConfig(300, 3, 64, 512, 8),
                   {"model_id": "tiny"}, progress=False, log=lambda *a: None)


def test_diffmean_formula_file_and_reproducibility(tmp_path, tiny_tokenizer):
    import lapeval
    from lapeval.cli import main
    from lapeval.vectors import ResidualVectors, VectorsError

    st = _stats(tmp_path, tiny_tokenizer)
    loaded = Stats.load(tmp_path / "s.safetensors")
    assert torch.equal(loaded.resid_sum, st.resid_sum) and loaded.resid_sum.dtype == torch.float64
    vec = lapeval.diffmean_vectors(tmp_path / "s.safetensors", out=tmp_path / "v.safetensors")
    mu = {l: st.resid_sum[i] / int(st.n_tokens[i]) for i, l in enumerate(st.languages)}
    for l in st.languages:  # v_L = μ_L − mean of the others
        others = torch.stack([mu[m] for m in st.languages if m != l]).mean(0)
        torch.testing.assert_close(vec.vectors[l].double(), mu[l] - others, rtol=1e-6, atol=1e-6)
    again = ResidualVectors.load(tmp_path / "v.safetensors")
    assert again.languages == ["en", "fr", "ja"] and again.meta["stats_sha256"] and again.meta["method"] == "diffmean"
    assert main(["vectors", "--stats", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "w.safetensors")]) == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "v.safetensors") == digest(tmp_path / "w.safetensors")
    with pytest.raises(VectorsError, match="have no de"):
        again.code("de")
    # statistics written before residual sums were collected: one line naming the fix
    old = Stats(st.languages, st.over_zero, st.n_tokens, st.act, st.n_sentences, st.meta)
    old.save(tmp_path / "old.safetensors")
    assert main(["vectors", "--stats", str(tmp_path / "old.safetensors"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


@pytest.fixture()
def vec_file(tmp_path, tiny_tokenizer, tiny_model_dir):
    from lapeval.identification.vectors import diffmean_vectors

    st = _stats(tmp_path, tiny_tokenizer)
    return diffmean_vectors(st, out=tmp_path / "v.safetensors").path


def _requests(n=8):
    from lapeval.instances import instances

    pairs = [(f"Le chat {i} est", " sur le tapis") for i in range(n)] + [("The cat sat", " on the mat")]
    return instances("loglikelihood", pairs, "lss_en")


def test_alpha_zero_is_bit_identical_to_hf_and_alpha_moves_the_scores(vec_file, tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    from lapeval.lm import LapeLM

    reqs = _requests()
    hf = [x[0] for x in HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4).loglikelihood(reqs)]
    lm = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, vectors=str(vec_file), lang="fr",
                mode="add", value=0)
    assert [x[0] for x in lm.loglikelihood(_requests())] == hf
    lm.set_intervention(vectors=str(vec_file), lang="fr", mode="add", value=4, layers="1")
    moved = [x[0] for x in lm.loglikelihood(_requests())]
    assert all(a != b for a, b in zip(moved, hf))
    d = lm.describe_intervention()["intervention"]
    assert d["vectors_sha256"] == hashlib.sha256(vec_file.read_bytes()).hexdigest() and d["label"] == "vec:add:4@1"
    with pytest.raises(Exception, match="adds α"):
        lm.set_intervention(vectors=str(vec_file), lang="fr", mode="set", value="p_max")


def test_vector_steering_is_batch_invariant_in_float64(vec_file, tiny_model_dir):
    from lapeval.lm import LapeLM

    out = {}
    for bs in (1, 8):
        lm = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=bs, dtype="float64", vectors=str(vec_file),
                    ops="add:3@fr;scope:prompt")
        out[bs] = [x[0] for x in lm.loglikelihood(_requests())]
    assert out[1] == pytest.approx(out[8], abs=1e-10)


def test_vector_terms_mix_with_neuron_terms_and_route_per_request(vec_file, tiny_model_dir, tmp_path):
    """zero@ja;vec:add:4@fr on a mask and vectors together equals applying the two in sequence by hand, and
    lang=self gives each task's own language's vector."""
    from lapeval.intervention.hooks import Composite, Intervention, intervene
    from lapeval.lm import LapeLM
    from lapeval.masks import NeuronMask
    from lapeval.vectors import ResidualVectors

    mask = random_mask(tmp_path / "m.safetensors")
    lm = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, dtype="float64", neurons=str(mask),
                vectors=str(vec_file), ops="zero@ja;vec:add:4@fr")
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad(), lm.apply(lm.intervention.intervention()):
        got = lm.model(ids).logits
    comp = Composite((Intervention.from_mask(NeuronMask.load(mask), ["ja"], "zero"),
                      Intervention.from_vectors(ResidualVectors.load(vec_file), ["fr"], "add", 4.0)))
    with torch.no_grad(), intervene(lm.model, comp, sites=lm.sites):
        ref = lm.model(ids).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with torch.no_grad():
        plain = lm.model(ids).logits
    assert not torch.equal(got, plain)
    selfish = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, vectors=str(vec_file), lang="self",
                     mode="add", value=2)
    groups = selfish.intervention.route(["lss_fr", "lss_ja", "arc_easy"])
    assert groups == [(None, [2]), (("fr",), [0]), (("ja",), [1])]


def test_lss_matrix_with_vectors_alpha_zero_is_exactly_zero(vec_file, tiny_model_dir, tmp_path, capsys):
    """lss matrix --vectors: α = 0 gives LSS exactly 0 everywhere (the paired baseline), α > 0 moves margins; the
    provenance names the vectors file and its sha256."""
    import json

    from lapeval.cli import main

    common = ["lss", "matrix", "--model", str(tiny_model_dir), "--vectors", str(vec_file), "--languages", "en,ja",
              "--targets", "fr,ja", "--facts", "builtin", "--limit", "4", "--batch-size", "4", "--mode", "add"]
    assert main([*common, "--value", "0", "--out", str(tmp_path / "a0.json")]) == 0
    zero = json.loads((tmp_path / "a0.json").read_text())
    assert zero["mean_off_diagonal"] == 0 and zero["vectors_sha256"] == hashlib.sha256(vec_file.read_bytes()).hexdigest()
    assert main([*common, "--value", "8", "--out", str(tmp_path / "a8.json")]) == 0
    moved = json.loads((tmp_path / "a8.json").read_text())
    assert moved["effects"]["overall"]["shift"] != 0 and moved["neurons"] is None
    assert main([*common[:-2], "--mode", "set", "--value", "p_max"]) == 2
    assert "adds α" in capsys.readouterr().err


def test_search_factor_sweeps_the_vector_strength(vec_file, tiny_model_dir, tmp_path, capsys):
    """search-factor --vectors --sweep add:1: the candidates are add:α on the vectors, each scoring what lss matrix
    --vectors gives for that α alone (same facts, same paired baseline); beside a mask, vec:add:1 grades the vector
    term only, and a candidate without neuron terms gets no neuron control."""
    import json

    from lapeval.cli import main
    from lapeval.lss import factor

    assert [c.label for c in factor.sweep_candidates("vec:add:1", "0.5,2")] == ["vec:add:0.5", "vec:add:2"]
    assert [c.label for c in factor.sweep_candidates("zero@ja;vec:add:2@1", [3])] == ["zero@ja;vec:add:6@1"]
    assert factor.graded_label("vec:add:1@0-1") == "vec:add:α@0-1" and factor.graded_label("add:2") == "add:α·2"
    common = ["--model", str(tiny_model_dir), "--vectors", str(vec_file), "--languages", "en,fr,ja", "--targets",
              "fr,ja", "--facts", "builtin", "--limit", "3", "--batch-size", "4"]
    out = tmp_path / "sweep.json"
    assert main(["search-factor", *common, "--sweep", "add:1", "--alphas", "0.5,8", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["candidates"] == ["add:0.5", "add:8"] and doc["neurons"] is None
    assert doc["vectors_sha256"] == hashlib.sha256(vec_file.read_bytes()).hexdigest()
    assert doc["sweep"]["graded"] == "add:α" and "vectors v.safetensors" in out.with_suffix(".md").read_text()
    assert main(["lss", "matrix", *common, "--mode", "add", "--value", "8", "--out", str(tmp_path / "m.json")]) == 0
    alone = json.loads((tmp_path / "m.json").read_text())
    assert doc["table"]["add:8"] == alone["per_target"] and doc["matrices"]["add:8"] == alone["matrix"]
    mask = random_mask(tmp_path / "mask.safetensors")
    both = tmp_path / "both.json"
    assert main(["search-factor", *common, "--neurons", str(mask), "--candidates", "set:p_max", "--sweep", "vec:add:1",
                 "--alphas", "4", "--controls", "1", "--out", str(both)]) == 0
    doc = json.loads(both.read_text())
    assert doc["candidates"] == ["vec:add:4", "set:p_max"]
    assert doc["effects"]["set:p_max"]["overall"]["control_mean"] is not None
    assert doc["effects"]["vec:add:4"]["overall"].get("control_mean") is None
    capsys.readouterr()
    assert main(["search-factor", *common, "--candidates", "set:p_max"]) == 2
    err = capsys.readouterr().err.strip()
    assert "adds α" in err and "\n" not in err, err


@pytest.mark.real
def test_vectors_and_controls_on_the_real_model(tmp_path, real_model_dir):
    """Gemma-3-270m: residual sums collected beside the counts, DiffMean vectors; α = 0 is hf bit for bit and
    α = 4 moves the log-likelihoods; an LSS matrix with a random-neuron control beside it."""
    from lm_eval.models.huggingface import HFLM

    import lapeval
    from lapeval.paths import committed_mask

    stats = lapeval.collect(str(real_model_dir), "en,fr", lapeval.bundled_corpus(), tmp_path / "s.safetensors",
                            max_tokens=300, n_sentences=4, device="cpu", progress=False, log=lambda m: None)
    assert stats.resid_sum.shape == (2, 18, 640)
    vec = lapeval.diffmean_vectors(tmp_path / "s.safetensors", out=tmp_path / "v.safetensors")
    torch.testing.assert_close(vec.vectors["en"], -vec.vectors["fr"])  # two languages: v_en = μ_en − μ_fr = −v_fr
    reqs = _requests(3)
    hf = [x[0] for x in HFLM(pretrained=str(real_model_dir), device="cpu", batch_size=4).loglikelihood(reqs)]
    lm = lapeval.LapeLM(pretrained=str(real_model_dir), device="cpu", batch_size=4, vectors=str(vec.path), lang="fr",
                        mode="add", value=0)
    assert [x[0] for x in lm.loglikelihood(_requests(3))] == hf
    lm.set_intervention(vectors=vec, lang="fr", mode="add", value=4, layers="6-11")
    assert all(a != b for a, b in zip([x[0] for x in lm.loglikelihood(_requests(3))], hf))
    res = lapeval.lss_matrix(lm, committed_mask(), ["en", "fr"], facts="builtin", limit=4, controls=1,
                             log=lambda m: None)
    o = res["effects"]["overall"]
    assert o["of"] == 2 and o["controls"] == [res["controls"][0]["mean_off_diagonal"]]
    assert o["control_mean"] is not None and 0 <= o["lss"] <= 1


def test_grid_with_vectors(vec_file, tiny_model_dir, tmp_path, monkeypatch):
    """grid vectors: steers every cell with α · v_t: add:0 gives LSS exactly 0 (the paired baseline), the cells
    record the vectors, keys name the vectors' sha256; a non-add intervention is refused before anything loads."""
    import json

    from lapeval.grid.config import GridConfig, GridError
    from lapeval.grid.run import run_grid
    from lapeval.paths import FACTS_DIR

    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    base = dict(model=str(tiny_model_dir), vectors=str(vec_file), targets=["fr"], tasks=["lss_en", "lss_ja"], limit=3,
                batch_size=4, device="cpu", bootstrap_iters=0, ci_resamples=20, model_args={"max_length": 256})
    cfg = GridConfig.from_dict({**base, "output": str(tmp_path / "g"), "interventions": ["add:0", "add:6@1"]})
    assert cfg.to_dict()["vectors"] == str(vec_file)
    status = run_grid(cfg, log=lambda m: None)
    assert set(status) == {"baseline", "add:0/fr", "add:6@1/fr"}
    s = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert s["lss"]["add:0"]["mean_off_diagonal"] == 0
    rec = json.loads((tmp_path / "g" / "cells" / "add=6@1__fr" / "results.json").read_text())
    assert rec["config"]["model_args"]["vectors"] == str(vec_file)
    assert rec["config"]["lape"]["intervention"]["vectors_sha256"] == hashlib.sha256(vec_file.read_bytes()).hexdigest()
    with pytest.raises(GridError, match="adds α"):
        GridConfig.from_dict({**base, "output": str(tmp_path / "h"), "interventions": ["set:p_max"]})
