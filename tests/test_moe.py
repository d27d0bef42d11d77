"""Mixture-of-experts neurons (docs/method §12): the structural finder on every routed family, and the counter
against a plain reference (a loop over tokens and experts from the parameters) in every experts
implementation that runs on the CPU, with padding excluded and the logits untouched."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from lapeval.moe import ExpertActivationCounter, expert_rows, find_expert_sites
from lapeval.sites import UnsupportedModelError, find_sites

H, VOCAB = 24, 61
_COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=32, hidden_act="silu")

# family -> (config class, its arguments, E, d_e, top_k, per layer: the always-on widths, E = 0 for a dense layer)
FAMILIES = {
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=20, moe_intermediate_size=8, num_experts=6,
                                         num_experts_per_tok=2, head_dim=6), 6, 8, 2, [[], []]),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=20, moe_intermediate_size=8, num_experts=6,
                                         num_experts_per_tok=2, shared_expert_intermediate_size=12),
                  6, 8, 2, [[12], [12]]),
    "mixtral": ("MixtralConfig", dict(intermediate_size=8, num_local_experts=4, num_experts_per_tok=2),
                4, 8, 2, [[], []]),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=8, num_experts=8, num_experts_per_tok=2), 8, 8, 2, [[], []]),
    "deepseek_v3": ("DeepseekV3Config", dict(intermediate_size=20, moe_intermediate_size=8, n_routed_experts=8,
                                             n_shared_experts=2, num_experts_per_tok=3, n_group=4, topk_group=2,
                                             first_k_dense_replace=1, q_lora_rank=12, kv_lora_rank=12,
                                             qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=6,
                                             num_key_value_heads=4, rope_scaling=None), 8, 8, 3, [[20], [16]]),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=8, num_local_experts=4, num_experts_per_tok=2, head_dim=6),
                4, 8, 2, [[], []]),
}
IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")  # all three run on the CPU in float32 (grouped_mm: not float64)


def moe_model(family: str, seed: int = 0):
    import transformers

    cls_name, kwargs, *_ = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**_COMMON, **kwargs})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if family == "deepseek_v3":  # a non-zero correction bias, so that the router's choice depends on it
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 7), generator=g)
    counted = torch.ones(2, 7, dtype=torch.bool)
    counted[0, 5:] = False  # right padding
    counted[1, :2] = False  # left padding
    return ids, counted


# ---- an independent reference ---------------------------------------------------------------------
def _block_inputs(model, sites, ids):
    """Each layer's routed-FFN block input [B·T, hidden], captured by a pre-hook that observes only."""
    got = {}

    def keep(layer, args):
        got.setdefault(layer, args[0].detach().reshape(-1, H))  # returns None: the hook never replaces the input

    handles = [s.block.register_forward_pre_hook(lambda m, a, i=s.layer: keep(i, a)) for s in sites]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return got


def _expert_fires(family, experts, e, x) -> torch.Tensor:
    """act(gate_e · x) > 0 for one token x, from the parameters: silu(W_gate x) for the concatenated
    [gate; up] layout, GPT-OSS's clamped g·σ(αg) on the even columns of x·W + b for its interleaved layout."""
    if family == "gpt_oss":
        g = (x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e])[0::2]
        g = g.clamp(max=experts.limit)
        return g * torch.sigmoid(experts.alpha * g) > 0
    d = experts.gate_up_proj.shape[1] // 2
    return torch.nn.functional.silu(experts.gate_up_proj[e][:d] @ x) > 0


def reference_counts(family, model, sites, ids, counted):
    """Plain loops: per counted token, the router's top-k, then each chosen expert's neurons; shared FFNs for
    every counted token. Returns per layer (over_zero, routed)."""
    xs = _block_inputs(model, sites, ids)
    flat = counted.reshape(-1).tolist()
    out = []
    with torch.no_grad():
        for s in sites:
            over = [0] * s.d_ff
            routed = [0] * s.n_experts
            x_all = xs[s.layer]
            top = s.router(x_all)[2].tolist() if s.n_experts else None
            for t, keep in enumerate(flat):
                if not keep:
                    continue
                x = x_all[t]
                for e in (top[t] if top else []):
                    routed[e] += 1
                    for j, f in enumerate(_expert_fires(family, s.experts, e, x).tolist()):
                        over[e * s.d_expert + j] += int(f)
                for ffn, offset in zip(s.shared, s.shared_offsets):
                    a = ffn.container.act_fn(ffn.container.gate_proj(x))
                    for j, f in enumerate((a > 0).tolist()):
                        over[offset + j] += int(f)
            out.append((torch.tensor(over, dtype=torch.int64), torch.tensor(routed, dtype=torch.int64)))
    return out


# ---- the finder ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_finder_reads_every_routed_family(family):
    _, _, n_experts, d_expert, top_k, shared = FAMILIES[family]
    sites = find_expert_sites(moe_model(family))
    assert [s.layer for s in sites] == [0, 1]
    for s, widths in zip(sites, shared):
        routed = not (family == "deepseek_v3" and s.layer == 0)  # first_k_dense_replace=1: layer 0 is dense
        assert (s.n_experts, s.d_expert, s.top_k) == ((n_experts, d_expert, top_k) if routed else (0, 0, 0))
        assert [f.width for f in s.shared] == widths
        assert s.d_ff == s.n_experts * s.d_expert + sum(widths)
        assert s.shared_offsets == [s.n_experts * s.d_expert + sum(widths[:i]) for i in range(len(widths))]
        if routed:
            assert s.router.weight.shape == (n_experts, H)
            assert s.transposed == (family == "gpt_oss")
            assert (s.act is None) == (family == "gpt_oss")  # GPT-OSS writes its activation inside _apply_gate
    assert sites[1].name == "model.layers.1.mlp"
    if family == "qwen2_moe":
        assert sites[1].shared[0].name == "model.layers.1.mlp.shared_expert.act_fn"
    with pytest.raises(UnsupportedModelError) as err:  # the dense finder never takes a shared expert for the FFN
        find_sites(moe_model(family))
    assert "\n" not in str(err.value) and "routed (mixture-of-experts) FFN" in str(err.value)


def test_a_dense_model_keeps_find_sites_and_is_refused_here():
    model = tiny_model("llama", dtype=torch.float32)
    assert [s.d_ff for s in find_sites(model)] == [48, 48]
    with pytest.raises(UnsupportedModelError) as err:
        find_expert_sites(model)
    assert "\n" not in str(err.value) and "no routed FFN" in str(err.value) and "find_sites" in str(err.value)


def test_row_orders_on_a_small_example():
    """3 tokens, k = 2, E = 3: the row order each implementation feeds its non-linearity."""
    top = torch.tensor([[2, 0], [0, 1], [2, 1]])
    tok, exp = expert_rows("batched_mm", top, 3)
    assert tok.tolist() == [0, 0, 1, 1, 2, 2] and exp.tolist() == [2, 0, 0, 1, 2, 1]
    tok, exp = expert_rows("eager", top, 3)  # expert 0: slot 0 (token 1), slot 1 (token 0); expert 1: slot 1...
    assert exp.tolist() == [0, 0, 1, 1, 2, 2] and tok.tolist() == [1, 0, 1, 2, 0, 2]
    tok, exp = expert_rows("grouped_mm", top, 3)
    assert exp.tolist() == [0, 0, 1, 1, 2, 2] and sorted(tok[:2].tolist()) == [0, 1]
    with pytest.raises(UnsupportedModelError, match="grouped_mm"):
        expert_rows("sonicmoe", top, 3)


# ---- the counter against the reference --------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_equal_the_plain_reference(family, implementation):
    model = moe_model(family)
    model.set_experts_implementation(implementation)
    sites = find_expert_sites(model)
    ids, counted = _batch()
    with torch.no_grad():
        plain = model(ids).logits
        with ExpertActivationCounter(sites) as counter:
            counter.set_batch(counted)
            hooked = model(ids).logits
    assert torch.equal(plain, hooked)  # the hooks only observe
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # removed on exit
    assert all("_apply_gate" not in vars(m) for m in model.modules())
    reference = reference_counts(family, model, sites, ids, counted)
    n_counted = int(counted.sum())
    for s, (over, routed), got_over, got_routed in zip(sites, reference, counter.over_zero, counter.routed):
        assert torch.equal(got_routed, routed), (s.layer, got_routed, routed)
        assert torch.equal(got_over, over), (s.layer, (got_over - over).nonzero().flatten())
        assert int(routed.sum()) == n_counted * s.top_k  # every counted token routed to k experts
        assert 0 < int(over.sum()) < n_counted * s.d_ff  # the test is not vacuous


def test_two_batches_add_up():
    """Counts accumulate across forwards; a batch counted twice counts double."""
    model = moe_model("qwen2_moe")
    sites = find_expert_sites(model)
    ids, counted = _batch()
    with torch.no_grad(), ExpertActivationCounter(sites) as counter:
        counter.set_batch(counted)
        model(ids)
        once = [t.clone() for t in counter.over_zero + counter.routed]
        model(ids)
    assert all(torch.equal(2 * a, b) for a, b in zip(once, counter.over_zero + counter.routed))


def test_an_unknown_experts_implementation_is_refused_and_hooks_are_removed():
    model = moe_model("mixtral")
    sites = find_expert_sites(model)
    ids, counted = _batch()
    model.config._experts_implementation_internal = "mystery"
    with (pytest.raises(UnsupportedModelError, match="grouped_mm"), torch.no_grad(),
          ExpertActivationCounter(sites) as counter):
        counter.set_batch(counted)
        model(ids)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_forward_that_bypasses_the_hooked_non_linearity_is_refused():
    """Rows the non-linearity module never saw are an error, not silently missing counts."""
    model = moe_model("olmoe")
    model.set_experts_implementation("batched_mm")
    sites = find_expert_sites(model)
    sites[1].experts.act_fn = torch.nn.SiLU()  # the forward now calls a module the counter does not hook
    ids, counted = _batch()
    with (pytest.raises(UnsupportedModelError, match="saw 0 rows"), torch.no_grad(),
          ExpertActivationCounter(sites) as counter):
        counter.set_batch(counted)
        model(ids)
