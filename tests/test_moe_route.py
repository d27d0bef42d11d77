"""Router interventions on mixture-of-experts models (docs/method §12; issue 25): ``route:ban`` (an expert's
logit to −∞ before top-k) and ``route:bias:β`` (+β on its logit) on every routed family × experts
implementation against a plain per-token reference of each family's routing rule, per-row routing, scopes,
KV-cache generation, one-line refusals, and the ``lape`` model against lm-eval's ``hf`` model."""

from __future__ import annotations

import math

import pytest
import torch
from test_moe import FAMILIES, IMPLEMENTATIONS, moe_dirs, moe_model  # noqa: F401 (moe_dirs: a fixture)
from test_moe_intervene import (
    LL,
    _clean,
    _ids,
    _requests,
    assert_rows_equal_one_row_runs,
)

from lapeval.intervention.hooks import Composite, Intervention, intervene
from lapeval.intervention.operation import InterventionError, Operation, parse_ops
from lapeval.moe import find_expert_sites


def _route(sites, mode, value=None, experts=(0, 1)):
    """A router term on ``experts`` of every routed layer."""
    op = Operation.parse_route(mode, value)
    return Intervention(op, {s.layer: torch.tensor(experts) for s in sites if s.n_experts}, {}, (), None, "route")


def _delta(n_experts, mode, value, experts):
    """The additive change of one layer's logits: −∞ on banned experts, β on biased ones, 0 elsewhere."""
    d = torch.zeros(n_experts)
    d[list(experts)] = -math.inf if mode == "ban" else float(value)
    return d


def _reference_router(family, router, delta):
    """A plain replacement of the router's forward: per token, the logits z = W x (+ b) plus ``delta``, then the
    family's routing rule written out — softmax then top-k (renormalised for Mixtral and where
    ``norm_topk_prob``), top-k then softmax (GPT-OSS), or sigmoid scores with the correction bias and grouped
    top-k (DeepSeek-V3), where a banned expert's choice score is −∞."""
    def forward(hidden):
        hidden = hidden.reshape(-1, router.weight.shape[1])
        ws, ids, zs = [], [], []
        for x in hidden:
            if family == "deepseek_v3":
                z = router.weight.float() @ x.float() + delta
                p = torch.sigmoid(z)
                choice = torch.where(torch.isneginf(delta), -math.inf, p + router.e_score_correction_bias)
                groups = choice.view(router.num_group, -1)
                best = groups.topk(2, dim=-1).values.sum(-1).topk(router.topk_group).indices
                kept = torch.full_like(groups, -math.inf)
                kept[best] = groups[best]
                idx = kept.flatten().topk(router.top_k).indices
                w = p[idx]
                if router.norm_topk_prob:
                    w = w / (w.sum() + 1e-20)
                w = w * router.routed_scaling_factor
            elif family == "gpt_oss":
                z = router.weight @ x + router.bias + delta
                top, idx = z.topk(router.top_k)
                w = torch.softmax(top, dim=0)
            else:
                z = router.weight @ x + delta
                top, idx = torch.softmax(z.float(), dim=-1).topk(router.top_k)
                w = top / top.sum() if family == "mixtral" or router.norm_topk_prob else top
            ws.append(w)
            ids.append(idx)
            zs.append(z)
        return torch.stack(zs), torch.stack(ws), torch.stack(ids)

    return forward


def _chosen(sites):
    """Record each routed layer's top_k_index as the experts receive it."""
    seen, handles = {}, []
    for s in sites:
        if s.n_experts:
            def hook(module, args, kwargs, layer=s.layer):
                index = next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and not t.is_floating_point())
                seen[layer] = index.clone()
            handles.append(s.experts.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ban_and_bias_equal_a_plain_routing_reference(family, implementation):
    model = moe_model(family)
    model.set_experts_implementation(implementation)
    sites = find_expert_sites(model)
    routed = [s for s in sites if s.n_experts]
    if family == "deepseek_v3":  # expert 0 so favoured by the correction bias that only a banned choice score keeps it out
        for s in routed:
            s.router.e_score_correction_bias[0] = 5.0
    ids = _ids(2, 7)
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.equal(plain, model(ids).logits)
        with intervene(model, _route(sites, "bias", 0.0)) as session:  # bias 0 through the hooks: exact
            assert session is not None and torch.equal(model(ids).logits, plain)
        for mode, value, experts in (("ban", None, (0, 1)), ("bias", 2.5, (2,)), ("bias", -3.0, (0, 3))):
            seen, handles = _chosen(sites)
            with intervene(model, _route(sites, mode, value, experts), sites=sites):
                got = model(ids).logits
            for h in handles:
                h.remove()
            assert _clean(model) and all("forward" not in vars(s.router) for s in routed)
            hit = torch.stack([torch.isin(seen[s.layer], torch.tensor(experts)).any(-1).float().mean() for s in routed])
            if mode == "ban":
                assert float(hit.max()) == 0.0  # no token reaches a banned expert
            elif value > 0:
                assert float(hit.min()) == 1.0  # every token reaches the favoured one
            originals = {s.layer: s.router.forward for s in routed}
            for s in routed:
                s.router.forward = _reference_router(family, s.router, _delta(s.n_experts, mode, value, experts))
            want = model(ids).logits
            for s in routed:
                del s.router.forward
            assert all(s.router.forward == originals[s.layer] for s in routed)
            assert (got - plain).abs().max() > 1e-4, (mode, value)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_each_row_its_own_router_term_equals_one_row_runs(family):
    model = moe_model(family)
    sites = find_expert_sites(model)
    ids = _ids(4, 6, seed=2)
    ivs = [_route(sites, "ban", None, (0, 1)),
           Composite((_route(sites, "bias", 2.0, (3,)), _route(sites, "ban", None, (1,))), "all")]
    assert_rows_equal_one_row_runs(model, sites, ids, ivs, rows=[0, -1, 1, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_scope_leaves_the_prompt_and_the_cache_changes_nothing(family):
    model = moe_model(family)
    model.set_experts_implementation("grouped_mm")
    sites = find_expert_sites(model)
    iv = Composite((_route(sites, "ban", None, (0, 1)), _route(sites, "bias", 3.0, (2,))), "generation")
    ids, P = _ids(2, 8, seed=4), 5
    with torch.no_grad():
        plain = model(ids).logits
        with intervene(model, iv, sites=sites) as session:
            session.set_prompt_length(P)
            scoped = model(ids).logits
            gen = {c: model.generate(ids[:, :P], max_new_tokens=6, do_sample=False, use_cache=c, pad_token_id=0)
                   for c in (True, False)}
        free = model.generate(ids[:, :P], max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(scoped[:, :P], plain[:, :P], atol=1e-6, rtol=0)
    assert (scoped[:, P:] - plain[:, P:]).abs().max() > 1e-4
    assert torch.equal(gen[True], gen[False])
    assert _clean(model) and all("forward" not in vars(s.router) for s in sites if s.n_experts)
    assert free.shape == gen[True].shape


def test_a_ban_leaving_too_few_experts_is_refused_in_one_line():
    model = moe_model("mixtral")  # 4 experts, top-2
    sites = find_expert_sites(model)
    with pytest.raises(InterventionError) as e, intervene(model, _route(sites, "ban", None, (0, 1, 2)), sites=sites):
        pass
    assert "\n" not in str(e.value) and "top-k = 2" in str(e.value)
    model = moe_model("deepseek_v3")  # 8 experts in 4 groups of 2, the best 2 groups kept, top-3
    sites = find_expert_sites(model)
    # two groups emptied: two whole groups remain, 4 experts, enough; one expert out of each of three groups:
    # 5 experts remain, but a group needs two to score, so only one group can be kept
    with intervene(model, _route(sites, "ban", None, (0, 1, 2, 3)), sites=sites):
        model(_ids())
    with pytest.raises(InterventionError) as e, intervene(model, _route(sites, "ban", None, (0, 2, 4)), sites=sites):
        pass
    assert "\n" not in str(e.value) and "grouped top-k" in str(e.value)
    assert _clean(model) and all("forward" not in vars(s.router) for s in sites if s.n_experts)


def test_router_terms_in_the_spec_grammar():
    s = parse_ops("zero@en;route:ban@en@1;route:bias=-1.5@fr+id;scope:generation")
    assert s.label == "zero@en;route:ban@en@1;route:bias:-1.5@fr+id;scope:generation"
    assert [t.site for t in s.terms] == [None, "route", "route"]
    assert parse_ops(s.label) == s
    for bad, words in (("route:ban:2", "takes no value"), ("route:bias", "needs a number"),
                       ("route:bias:p_max", "needs a number"), ("route:drop@fr", "route:ban or route:bias"),
                       ("route:ban@fr@en", "two language lists")):
        with pytest.raises(InterventionError) as e:
            parse_ops(bad)
        assert words in str(e.value) and "\n" not in str(e.value), bad


# ---- through the lape model -------------------------------------------------------------------------------
def _expert_mask(path, out):
    """A routed mask of the saved model with neurons (p_max) and experts for en / id / vi: en holds experts 0-1
    of every routed layer, id expert 2, vi experts 0 and 3."""
    import transformers

    from lapeval.masks import NeuronMask
    from lapeval.moe import moe_meta

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sites = find_expert_sites(model)
    width, n_experts = max(s.d_ff for s in sites), max(s.n_experts for s in sites)
    g = torch.Generator().manual_seed(11)
    assigned = torch.rand(3, len(sites), width, generator=g) < 0.2
    experts = torch.zeros(3, len(sites), n_experts, dtype=torch.bool)
    for s in sites:
        assigned[:, s.layer, s.d_ff:] = False
        if s.n_experts:
            experts[0, s.layer, [0, 1]] = True
            experts[1, s.layer, 2] = True
            experts[2, s.layer, [0, 3]] = True
    values = {"p_max": 0.5 + torch.rand(3, len(sites), width, generator=g)}
    return NeuronMask.from_assignment(assigned, ["en", "id", "vi"], values, {"moe": moe_meta(sites)},
                                      experts=experts).save(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_lape_router_terms_against_hf(family, moe_dirs, tmp_path):  # noqa: F811
    from lm_eval.models.huggingface import HFLM

    from lapeval.lm import LapeLM

    path = moe_dirs(family)
    mask = _expert_mask(path, tmp_path / "m.safetensors")
    ll, gen = _requests()
    hf = HFLM(pretrained=str(path), device="cpu", batch_size=4)
    want, want_gen = hf.loglikelihood(ll), hf.generate_until(gen)
    lm = LapeLM(pretrained=str(path), device="cpu", batch_size=4, neurons=str(mask), ops="route:bias:0@all")
    assert lm.loglikelihood(ll) == want and lm.generate_until(gen) == want_gen  # the no-op is exact
    for ops in ("zero@id", "route:ban@en", "route:bias:3@self", "zero@en;route:ban@en;scope:generation",
                "set:p_max@vi;route:bias:2@vi"):
        lm.set_intervention(neurons=str(mask), ops=ops)
        got = {}
        for bs in (1, 4):
            lm.batch_size_per_gpu = bs
            got[bs] = lm.loglikelihood(ll), lm.generate_until(gen)
        assert max(abs(a[0] - b[0]) for a, b in zip(got[1][0], got[4][0])) <= 1e-5, ops
        assert got[1][1] == got[4][1], ops
        changed = [abs(a[0] - b[0]) > 1e-4 for a, b in zip(got[4][0], want)]
        assert any(changed), ops  # it intervened (random weights: not every request's score moves by 1e-4)
    d = lm.describe_intervention()["intervention"]
    assert d["label"] == "set:p_max@vi;route:bias:2@vi"
    assert d["terms"][1]["site"] == "route" and d["terms"][1]["n_experts"] == {"vi": 2 * sum(
        1 for n in lm.sites if n.n_experts)}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())
    assert len(LL) == len(want)


def test_lape_router_terms_refused_in_one_line(moe_dirs, tmp_path, tiny_model_dir):  # noqa: F811
    from lapeval.lm import LapeConfigError, LapeLM
    from lapeval.masks import NeuronMask

    path = moe_dirs("mixtral")
    mask = _expert_mask(path, tmp_path / "m.safetensors")
    lm = LapeLM(pretrained=str(path), device="cpu")
    for ops, words in (("route:ban@en+vi", "fewer than top-k = 2"), ("route:ban@xx", "language")):
        with pytest.raises(Exception) as e:
            lm.set_intervention(neurons=str(mask), ops=ops)
        assert words in str(e.value) and "\n" not in str(e.value), ops
    bare = NeuronMask.load(mask)
    bare.experts = {}
    bare.save(tmp_path / "bare.safetensors")
    with pytest.raises(InterventionError) as e:
        lm.set_intervention(neurons=str(tmp_path / "bare.safetensors"), ops="route:ban@en")
    assert "no language-specific experts" in str(e.value) and "\n" not in str(e.value)
    dense = NeuronMask.from_assignment(torch.rand(1, 2, 80) < 0.1, ["en"]).save(tmp_path / "d.safetensors")
    with pytest.raises(LapeConfigError) as e:
        LapeLM(pretrained=str(tiny_model_dir), device="cpu", neurons=str(dense), ops="route:ban@en")
    assert "mixture-of-experts router" in str(e.value) and "\n" not in str(e.value)


def test_masks_plot_draws_each_languages_experts(moe_dirs, tmp_path, capsys):  # noqa: F811
    import matplotlib.image

    from lapeval.masks import NeuronMask

    mask = NeuronMask.load(_expert_mask(moe_dirs("qwen3_moe"), tmp_path / "m.safetensors"))
    held = mask.expert_assignment()
    assert held.shape == (3, 2, 6) and held[:, :, [0, 1]].sum() == 2 * 2 + 2  # en: 0-1, vi: 0 (2 layers each)
    assert NeuronMask.from_assignment(torch.zeros(3, 2, mask.d_ff, dtype=torch.bool), mask.languages,
                                      meta=mask.meta, experts=held).experts.keys() == mask.experts.keys()
    assert main_cli(["masks", "plot", str(mask.path), "--out", str(tmp_path / "m.png")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "m.png"), str(tmp_path / "m.experts.png")]
    img = matplotlib.image.imread(tmp_path / "m.experts.png")
    assert img.shape[0] > 100 and img.std() > 0.05  # drawn, not blank
    dense = NeuronMask.from_assignment(torch.rand(1, 2, 80) < 0.1, ["en"])
    with pytest.raises(Exception) as e:
        dense.expert_assignment()
    assert "dense model" in str(e.value) and "\n" not in str(e.value)


def main_cli(argv):
    from lapeval.cli import main

    return main(argv)
