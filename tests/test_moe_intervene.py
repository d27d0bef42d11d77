"""Interventions inside routed experts (docs/method §12; issue 25, slice 3): zero / set / scale / add on the
neurons of every routed family × experts implementation against plain references (expert weights zeroed; a
per-token loop over the chosen experts), per-row routing, scopes, KV-cache generation, and the ``lape`` model
against lm-eval's ``hf`` model."""

from __future__ import annotations

import pytest
import torch
from test_moe import _COMMON, FAMILIES, IMPLEMENTATIONS, moe_model

from lapeval.intervention.hooks import Composite, Intervention, intervene
from lapeval.moe import find_expert_sites

VOCAB = _COMMON["vocab_size"]


def _ids(b=2, t=7, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _neurons(sites, frac=3, seed=5):
    """A third of every layer's neurons (routed and shared), sorted."""
    g = torch.Generator().manual_seed(seed)
    return {s.layer: torch.randperm(s.d_ff, generator=g)[: s.d_ff // frac].sort().values for s in sites}


def _values(neurons, seed=6):
    g = torch.Generator().manual_seed(seed)
    return {l: 0.5 + torch.rand(j.numel(), generator=g) for l, j in neurons.items()}


def _clean(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return hooks == 0 and all("_apply_gate" not in vars(m) for m in model.modules())


def _zero_weights(family, model, sites, neurons):
    """The plain reference of ``zero``: each selected neuron's gate row (and bias) set to 0, so that act(gate)
    = act(0) = 0 there (silu(0) = 0; GPT-OSS: 0 · σ(0) = 0)."""
    with torch.no_grad():
        for s in sites:
            j = neurons[s.layer]
            routed = j[j < s.d_routed]
            for e, k in zip((routed // s.d_expert).tolist(), (routed % s.d_expert).tolist()):
                if family == "gpt_oss":  # [E, hidden, 2·d_e], gate at the even columns
                    s.experts.gate_up_proj[e][:, 2 * k] = 0
                    s.experts.gate_up_proj_bias[e][2 * k] = 0
                else:  # [E, 2·d_e, hidden], gate in the first half
                    s.experts.gate_up_proj[e][k] = 0
            for ffn, offset in zip(s.shared, s.shared_offsets):
                local = j[(j >= offset) & (j < offset + ffn.width)] - offset
                ffn.container.gate_proj.weight[local] = 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_noop_is_exact_and_zero_equals_zeroed_weights(family, implementation):
    model = moe_model(family)
    model.set_experts_implementation(implementation)
    sites = find_expert_sites(model)
    ids, neurons = _ids(), _neurons(sites)
    with torch.no_grad():
        plain = model(ids).logits
        for mode, value in (("scale", 1.0), ("add", 0.0)):
            with intervene(model, Intervention.from_neurons(neurons, mode, value), sites=sites):
                assert torch.equal(model(ids).logits, plain), (mode, value)
        with intervene(model, Intervention.from_neurons(neurons, "zero"), sites=sites):
            zeroed = model(ids).logits
        assert _clean(model)
        _zero_weights(family, model, sites, neurons)
        reference = model(ids).logits
    assert (zeroed - plain).abs().max() > 1e-4  # it intervened
    torch.testing.assert_close(zeroed, reference, atol=1e-6, rtol=0)


# ---- set / add / scale against a per-token loop ---------------------------------------------------------
def _edit(a, mode, sel, vals, value):
    """The dense formula on one activation vector a [d] at the selected positions."""
    a = a.clone()
    if mode == "zero":
        a[sel] = 0
    elif mode == "scale":
        a[sel] = a[sel] * value
    elif mode == "set":
        a[sel] = vals
    else:
        a[sel] = a[sel] + vals
    return a


def _reference_forwards(site, mode, j, v, value):
    """Plain replacements of the experts' and shared FFNs' forwards: per token, per chosen expert,
    a = act(W_gate,e x) edited at the selected neurons, then W_down,e (a ⊙ W_up,e x) weighted and summed."""
    def edits(lo, width):
        keep = (j >= lo) & (j < lo + width)
        vals = None if v is None else (v[keep] if isinstance(v, torch.Tensor) else v)
        return j[keep] - lo, vals

    def experts_forward(hidden, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden)
        ex = site.experts
        for n in range(hidden.shape[0]):
            for slot, e in enumerate(top_k_index[n].tolist()):
                sel, vals = edits(e * site.d_expert, site.d_expert)
                gate, up = (ex.gate_up_proj[e] @ hidden[n]).chunk(2)
                a = _edit(ex.act_fn(gate), mode, sel, vals, value)
                out[n] += top_k_weights[n, slot] * (ex.down_proj[e] @ (a * up))
        return out

    def shared_forward(ffn, offset):
        def forward(x):
            sel, vals = edits(offset, ffn.width)
            c = ffn.container
            out = [c.down_proj(_edit(c.act_fn(c.gate_proj(xn)), mode, sel, vals, value) * c.up_proj(xn))
                   for xn in x.reshape(-1, x.shape[-1])]
            return torch.stack(out).reshape(*x.shape[:-1], -1)
        return forward

    return experts_forward, [(ffn.container, shared_forward(ffn, off)) for ffn, off in zip(site.shared, site.shared_offsets)]


@pytest.mark.parametrize("mode,value", [("set", "p_max"), ("add", "2*p_max"), ("scale", 3.0), ("set", 1.5)])
@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "mixtral"])
def test_operations_equal_a_per_token_loop(family, mode, value):
    model = moe_model(family)
    model.set_experts_implementation("grouped_mm")
    sites = find_expert_sites(model)
    ids, neurons = _ids(), _neurons(sites)
    values = _values(neurons)
    iv = Intervention.from_neurons(neurons, mode, value, values=values if isinstance(value, str) else None)
    with torch.no_grad():
        with intervene(model, iv, sites=sites):
            got = model(ids).logits
        plain = model(ids).logits
        factor = 2.0 if value == "2*p_max" else 1.0
        for s in sites:
            v = values[s.layer] * factor if isinstance(value, str) else (value if mode != "scale" else None)
            experts_forward, shared = _reference_forwards(s, mode, neurons[s.layer], v, value)
            if s.n_experts:
                s.experts.forward = experts_forward
            for container, forward in shared:
                container.forward = forward
        want = model(ids).logits
    assert (got - plain).abs().max() > 1e-4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- rows, scopes, cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
@pytest.mark.parametrize("family", ["qwen2_moe", "gpt_oss"])
def test_each_row_its_own_intervention_equals_one_row_runs(family, implementation):
    model = moe_model(family)
    model.set_experts_implementation(implementation)
    sites = find_expert_sites(model)
    ids = _ids(4, 6, seed=2)
    n_a, n_b = _neurons(sites, seed=7), _neurons(sites, seed=8)
    ivs = [Intervention.from_neurons(n_a, "zero"),
           Intervention.from_neurons(n_b, "set", "p_max", values=_values(n_b))]
    assert_rows_equal_one_row_runs(model, sites, ids, ivs, rows=[0, -1, 1, 0])


def assert_rows_equal_one_row_runs(model, sites, ids, ivs, rows):
    """Row b run under ``ivs[rows[b]]`` (−1: none) in one batch gives what it gives alone under that one."""
    with torch.no_grad():
        with intervene(model, ivs, rows=rows, sites=sites):
            batched = model(ids).logits
        for b, k in enumerate(rows):
            with intervene(model, None if k < 0 else ivs[k], sites=sites):
                alone = model(ids[b:b + 1]).logits[0]
            torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=0)
    assert _clean(model)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_scope_generation_leaves_the_prompt_and_cached_decoding_matches(family):
    model = moe_model(family)
    model.set_experts_implementation("grouped_mm")
    sites = find_expert_sites(model)
    neurons = _neurons(sites, frac=2)
    iv = Composite((Intervention.from_neurons(neurons, "set", "p_max", values=_values(neurons)),), "generation")
    ids = _ids(2, 8, seed=4)
    P = 5
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, iv, sites=sites) as session:
            session.set_prompt_length(P)
            scoped = model(ids).logits
            gen = {c: model.generate(ids[:, :P], max_new_tokens=5, do_sample=False, use_cache=c,
                                     pad_token_id=0) for c in (True, False)}
    # the prompt's positions are untouched (up to the rounding of per-expert matmuls whose row counts change
    # when later tokens are routed differently)
    torch.testing.assert_close(scoped[:, :P], plain[:, :P], atol=1e-6, rtol=0)
    assert (scoped[:, P:] - plain[:, P:]).abs().max() > 1e-4
    assert torch.equal(gen[True], gen[False])
    assert _clean(model)


def test_statistics_on_routed_layers_are_refused_in_one_line():
    from lapeval.intervention.operation import InterventionError

    model = moe_model("mixtral")
    sites = find_expert_sites(model)
    with pytest.raises(InterventionError) as e, intervene(model, Intervention.from_neurons(_neurons(sites), "set", "tt_max"),
                                                           sites=sites):
        pass
    assert "\n" not in str(e.value) and "top-k experts only" in str(e.value)
    assert _clean(model)


# ---- the lape model on routed models ------------------------------------------------------------------------
from test_moe import moe_dirs  # noqa: E402,F401 (the saved tiny routed models)

LL = [("The cat sat", " on the mat", "xcopa_id"), ("Kucing itu duduk di atas", " tikar dan", "xcopa_id"),
      ("Con mèo ngồi trên tấm thảm và", " nhìn những con chim", "xcopa_vi"), ("Le chat", " est assis", "xcopa_id"),
      ("The cat sat on the mat and looked", " at the birds", "xcopa_vi")]


def _requests():
    from lm_eval.api.instance import Instance

    ll = [Instance("loglikelihood", {}, (c, x), i, (t, i, 1)) for i, (c, x, t) in enumerate(LL)]
    kw = {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}
    gen = [Instance("generate_until", {}, (c, dict(kw)), i, (t, i, 1)) for i, (c, _, t) in enumerate(LL)]
    return ll, gen


def _moe_mask(path, out):
    """A routed mask of the saved model: random neurons of every layer's real width for en / id / vi, p_max."""
    import transformers

    from lapeval.masks import NeuronMask
    from lapeval.moe import moe_meta

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sites = find_expert_sites(model)
    width = max(s.d_ff for s in sites)
    g = torch.Generator().manual_seed(11)
    assigned = torch.rand(3, len(sites), width, generator=g) < 0.3
    for s in sites:
        assigned[:, s.layer, s.d_ff:] = False
    values = {"p_max": 0.5 + torch.rand(3, len(sites), width, generator=g)}
    return NeuronMask.from_assignment(assigned, ["en", "id", "vi"], values, {"moe": moe_meta(sites)}).save(out)


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss"])
def test_lape_on_a_routed_model(family, moe_dirs, tmp_path):  # noqa: F811
    from lm_eval.models.huggingface import HFLM

    from lapeval.lm import LapeLM

    path = moe_dirs(family)
    mask = _moe_mask(path, tmp_path / "m.safetensors")
    ll, gen = _requests()
    hf = HFLM(pretrained=str(path), device="cpu", batch_size=4)
    want = hf.loglikelihood(ll)
    lm = LapeLM(pretrained=str(path), device="cpu", batch_size=4, neurons=str(mask), lang="all", mode="scale", value=1)
    assert lm.loglikelihood(ll) == want  # a no-op through the hooks is exact
    lm.set_intervention(neurons=str(mask), lang="id", mode="add", value=0)
    assert lm.loglikelihood(ll) == want
    for spec in (dict(lang="id", mode="zero"), dict(lang="self", mode="set", value="p_max"),
                 dict(ops="zero@en;add:2*p_max@vi", scope="generation")):
        lm.set_intervention(neurons=str(mask), **spec)
        got = {}
        for bs in (1, 4):
            lm.batch_size_per_gpu = bs
            got[bs] = lm.loglikelihood(ll), lm.generate_until(gen)
        assert max(abs(a[0] - b[0]) for a, b in zip(got[1][0], got[4][0])) <= 1e-5, spec
        assert got[1][1] == got[4][1], spec
        assert max(abs(a[0] - b[0]) for a, b in zip(got[4][0], want)) > 1e-4, spec  # it intervened
    assert lm.describe_intervention()["intervention"]["label"] == "zero@en;add:2*p_max@vi;scope:generation"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_a_dense_mask_on_a_routed_model_and_statistics_are_refused(moe_dirs, tmp_path, tiny_model_dir):  # noqa: F811
    from lapeval.lm import LapeConfigError, LapeLM
    from lapeval.masks import MaskError, NeuronMask

    path = moe_dirs("deepseek_v3")
    mask = _moe_mask(path, tmp_path / "m.safetensors")
    with pytest.raises(LapeConfigError) as e:
        LapeLM(pretrained=str(path), device="cpu", neurons=str(mask), lang="en", mode="set", value="tt_max")
    assert "\n" not in str(e.value) and "top-k experts only" in str(e.value)
    dense = NeuronMask.from_assignment(torch.rand(1, 2, 80) < 0.1, ["en"]).save(tmp_path / "d.safetensors")
    lm = LapeLM(pretrained=str(path), device="cpu")
    with pytest.raises(MaskError) as e:
        lm.set_intervention(neurons=str(dense), lang="en", mode="zero")
    assert "\n" not in str(e.value) and "dense-FFN mask" in str(e.value)
    with pytest.raises(MaskError) as e:  # and a routed mask on a dense model
        LapeLM(pretrained=str(tiny_model_dir), device="cpu", neurons=str(mask), lang="en", mode="zero")
    assert "\n" not in str(e.value)
