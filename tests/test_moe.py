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


def test_fired_per_expert_is_the_integer_count_in_chunks(monkeypatch):
    """The one-hot product equals compacting the kept rows and index_add_ of int64, bit for bit, also when the
    rows are cut into chunks (the float32-exact bound made small) and with NaN / ±0 activations."""
    from lapeval import moe

    g = torch.Generator().manual_seed(5)
    rows = torch.randn(37, 6, generator=g)
    rows[3, 1], rows[4, 2], rows[5] = float("nan"), -0.0, 0.0
    expert = torch.randint(0, 5, (37,), generator=g)
    keep = torch.rand(37, generator=g) > 0.3
    plain = torch.zeros(5, 6, dtype=torch.int64).index_add_(0, expert[keep], (rows[keep] > 0).to(torch.int64))
    assert torch.equal(moe._fired_per_expert(rows > 0, expert, keep, 5), plain) and plain.sum() > 0
    monkeypatch.setattr(moe, "_EXACT_ROWS", 9)
    assert torch.equal(moe._fired_per_expert(rows > 0, expert, keep, 5), plain)


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


# ---- identification end to end (collect → STATS → select → mask) -----------------------------------------
E2E = ("qwen3_moe", "qwen2_moe", "deepseek_v3")  # no shared expert; a shared expert; a dense first layer
LANGS = ["en", "fr", "zh"]
BUDGET, K, MAX_LEN = 240, 4, 48


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory, tiny_tokenizer):
    """Saved tiny routed models (vocab of the tiny tokenizer, float32, seeded) with the tokenizer, by family."""
    import transformers

    made = {}

    def make(family: str):
        if family not in made:
            cls_name, kwargs, *_ = FAMILIES[family]
            config = getattr(transformers, cls_name)(**{**_COMMON, **kwargs, "vocab_size": 400, "bos_token_id": 1,
                                                        "eos_token_id": 2, "pad_token_id": 0,
                                                        "max_position_embeddings": 256})
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
            if family == "deepseek_v3":
                for layer in model.model.layers[1:]:
                    layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            tiny_tokenizer.save_pretrained(path)
            made[family] = path
        return made[family]

    return make


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from test_stats import _write_corpus

    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root, LANGS)
    return root


def _activations(s, x_all, top):
    """Every token's activation [N, d_ff] of one layer from the parameters: act(W_gate,e x) at e·d_e + j when
    the token is routed to e, else 0; a shared FFN's act(gate_proj x) at its offset."""
    out = torch.zeros(x_all.shape[0], s.d_ff)
    for t in range(x_all.shape[0]):
        x = x_all[t]
        for e in (top[t] if top is not None else []):
            d = s.experts.gate_up_proj.shape[1] // 2
            out[t, e * s.d_expert:(e + 1) * s.d_expert] = s.experts.act_fn(s.experts.gate_up_proj[e][:d] @ x)
        for ffn, offset in zip(s.shared, s.shared_offsets):
            out[t, offset:offset + ffn.width] = ffn.container.act_fn(ffn.container.gate_proj(x))
    return out


def reference_stats(family, path, lang_file):
    """One sequence at a time, as collect cuts the text: over_zero / routed from slice 1's per-token reference
    (padded to the widest layer), and the per-text means of the first K sequences from :func:`_activations`."""
    import transformers

    from lapeval.identification.stats import sequences, special_prefix

    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sites = find_expert_sites(model)
    width, n_exp = max(s.d_ff for s in sites), max(s.n_experts for s in sites)
    texts = lang_file.read_text(encoding="utf-8").splitlines()
    prefix = len(special_prefix(tok))
    over = torch.zeros(len(sites), width, dtype=torch.int64)
    routed = torch.zeros(len(sites), n_exp, dtype=torch.int64)
    means = []
    for k, seq in enumerate(sequences(tok, texts, BUDGET, MAX_LEN)):
        ids = torch.tensor([seq])
        counted = torch.ones_like(ids, dtype=torch.bool)
        counted[0, :prefix] = False
        for l, (o, r) in enumerate(reference_counts(family, model, sites, ids, counted)):
            over[l, : o.numel()] += o
            routed[l, : r.numel()] += r
        if k < K:
            xs = _block_inputs(model, sites, ids)
            m = torch.zeros(len(sites), width)
            with torch.no_grad():
                for l, s in enumerate(sites):
                    top = s.router(xs[s.layer])[2].tolist() if s.n_experts else None
                    m[l, : s.d_ff] = _activations(s, xs[s.layer], top)[prefix:].mean(0)
            means.append(m)
    return over, routed, torch.stack(means), sites


def plain_expert_selection(routed, n_tokens, layer_experts, top_rate, rate):
    """LAPE on r = routed / n written out with lists (independent of selection.py): {lang index: {(l, e)}}."""
    import math

    n_langs = routed.shape[0]
    units = [(l, e) for l, n_e in enumerate(layer_experts) for e in range(n_e)]
    r = {u: [routed[i, u[0], u[1]].item() / n_tokens[i].item() for i in range(n_langs)] for u in units}
    pooled = sorted(v for u in units for v in r[u])
    tau = pooled[round(rate * len(pooled)) - 1]

    def entropy(ps):
        total = sum(ps)
        return -sum(p / total * math.log(p / total) for p in ps if p > 0) if total > 0 else 0.0

    scored = sorted((entropy(r[u]) if any(p > tau for p in r[u]) else math.inf, i, u) for i, u in enumerate(units))
    chosen = [u for _, _, u in scored[: round(top_rate * len(units))]]
    return {i: {u for u in chosen if r[u][i] > tau} for i in range(n_langs)}


@pytest.mark.parametrize("family", E2E)
def test_identify_counts_routed_neurons_and_experts(family, moe_dirs, corpus, tmp_path):
    import lapeval
    from lapeval.identification.stats import Stats
    from lapeval.masks import NeuronMask

    path = moe_dirs(family)
    out = tmp_path / "m.safetensors"
    mask = lapeval.identify(str(path), LANGS, f"files:{corpus}/{{lang}}.txt", max_tokens=BUDGET, n_sentences=K,
                            max_length=MAX_LEN, batch_size=3, top_rate=0.05, expert_top_rate=0.5, filter_rate=0.75,
                            activation_bar_ratio=0.75, out=out,
                            progress=False, log=lambda m: None)
    stats = Stats.load(tmp_path / "m.stats.safetensors")
    _, _, n_experts, d_expert, top_k, shared = FAMILIES[family]
    for i, lang in enumerate(LANGS):
        over, routed, means, sites = reference_stats(family, path, corpus / f"{lang}.txt")
        assert torch.equal(stats.over_zero[i], over), (lang, (stats.over_zero[i] - over).nonzero()[:5])
        assert torch.equal(stats.routed[i], routed)
        torch.testing.assert_close(stats.act["act_max"][i], means.max(0).values, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.act["act_median"][i], means.median(0).values, rtol=1e-5, atol=1e-6)
    assert stats.n_tokens.tolist() == [BUDGET] * 3
    widths = [s.d_ff for s in sites]
    assert stats.d_ff == max(widths) and stats.routed.shape == (3, 2, n_experts)
    # the mask: its metadata, its neurons inside each layer's real width, its values, its experts
    assert NeuronMask.load(out).meta["moe"] == mask.meta["moe"]
    moe = mask.meta["moe"]
    assert (moe["experts"], moe["d_expert"], moe["top_k"]) == (n_experts, d_expert, top_k)
    assert moe["shared"] == shared and moe["layer_d_ff"] == widths and "e·d_expert + j" in moe["flattening"]
    assert moe["layer_experts"] == [s.n_experts for s in sites]
    assert mask.d_ff == max(widths) and mask.is_moe
    real = sum(widths)
    assert mask.unique_neurons() == round(0.05 * real)
    for lang in LANGS:
        s = mask.sets[lang]
        assert bool((s.neuron < torch.tensor(widths)[s.layer]).all())  # never a padded neuron
        i = LANGS.index(lang)
        assert torch.equal(s.values["p_max"], stats.act["act_max"][i][s.layer, s.neuron])
    plain = plain_expert_selection(stats.routed, stats.n_tokens, moe["layer_experts"], 0.5, 0.75)
    for i, lang in enumerate(LANGS):
        layer, expert = mask.experts[lang]
        assert set(zip(layer.tolist(), expert.tolist())) == plain[i], lang
    assert sum(len(v) for v in plain.values()) > 0  # the test is not vacuous
    assert mask.meta["expert_selection"]["of"].startswith("routing frequency")


def test_identify_cli_show_and_refusals(moe_dirs, corpus, tmp_path, capsys):
    """The CLI on DeepSeek-V3 (a dense first layer): identify, masks show (text and JSON), export refused with
    one line; the mask drives the lape model, its neuron terms and its router terms."""
    import json

    from lapeval.cli import main
    from lapeval.identification.stats import Stats
    from lapeval.masks import NeuronMask

    path = moe_dirs("deepseek_v3")
    out = tmp_path / "ds.safetensors"
    rc = main(["identify", "--model", str(path), "--languages", ",".join(LANGS), "--corpus",
               f"files:{corpus}/{{lang}}.txt", "--max-tokens", str(BUDGET), "--n-sentences", str(K), "--max-length",
               str(MAX_LEN), "--top-rate", "0.05", "--expert-top-rate", "0.5", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "language-specific experts" in printed
    stats = Stats.load(tmp_path / "ds.stats.safetensors")
    over, routed, _, _ = reference_stats("deepseek_v3", path, corpus / "fr.txt")
    assert torch.equal(stats.over_zero[1], over) and torch.equal(stats.routed[1], routed)
    assert stats.routed[:, 0].sum() == 0 and bool((stats.routed[:, 1].sum(1) == 3 * stats.n_tokens).all())
    assert stats.over_zero[:, 0, 20:].sum() == 0  # layer 0 (dense, 20 wide) padded to 80 with neurons never firing
    mask = NeuronMask.load(out)
    assert mask.n_layers == 2 and mask.d_ff == 8 * 8 + 16

    assert main(["masks", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "experts    8 × d_expert 8, top-k 3" in text and "[[20], [16]]" in text and "[20, 80]" in text
    assert "e·d_expert + j" in text and "experts          per layer" in text
    assert main(["masks", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    for lang in LANGS:
        assert shown["experts"][lang]["per_layer"][0] == 0  # the dense layer has no experts
        assert shown["experts"][lang]["total"] == len(mask.experts[lang][0])
    assert shown["meta"]["moe"]["top_k"] == 3

    rc = main(["masks", "export", str(out), "--format", "rucaibox", "--out", str(tmp_path / "x.pth")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err and "mixture-of-experts" in err and not (tmp_path / "x.pth").exists()

    from lapeval.intervention.setting import build_setting

    setting = build_setting(str(out), "fr", "set", "p_max", None)  # interventions act on routed masks (slice 3)
    assert setting.intervention().n_neurons == len(mask.sets["fr"].neuron)
    routed = build_setting(str(out), "all", None, None, None, ops="route:bias:1")  # router terms (test_moe_route)
    assert routed.intervention().n_neurons == len({(int(a), int(b)) for l in LANGS for a, b in zip(*mask.experts[l])})

    from lapeval.lm import LapeLM

    lm = LapeLM(pretrained=str(path), device="cpu", batch_size=1, neurons=str(out), lang="fr", mode="zero")
    assert [s.n_experts for s in lm.sites] == [0, 8]


def test_a_mask_saved_with_experts_round_trips_and_a_corrupt_one_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from lapeval.masks import CorruptMaskError, NeuronMask

    assigned = torch.zeros(2, 2, 10, dtype=torch.bool)
    assigned[0, 1, 3] = assigned[1, 0, 7] = True
    experts = torch.zeros(2, 2, 4, dtype=torch.bool)
    experts[0, 1, 2] = experts[1, 1, 0] = experts[1, 1, 3] = True
    meta = {"moe": {"experts": 4, "d_expert": 2, "top_k": 1, "layer_experts": [0, 4], "shared": [[10], [2]],
                    "layer_d_ff": [10, 10]}}
    path = NeuronMask.from_assignment(assigned, ["en", "fr"], None, meta, experts=experts).save(tmp_path / "m.safetensors")
    back = NeuronMask.load(path)
    assert [(l.tolist(), e.tolist()) for l, e in back.experts.values()] == [([1], [2]), ([1, 1], [0, 3])]
    assert back.summary()["experts"]["fr"] == {"total": 2, "per_layer": [0, 2]}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert header["format_version"] == "2"
    tensors = load_file(str(path))
    tensors["fr.expert"] = torch.tensor([0, 9])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(CorruptMaskError, match="outside 2 layers × 4 experts"):
        NeuronMask.load(tmp_path / "bad.safetensors")


def test_routed_statistics_resume_after_a_kill(moe_dirs, tiny_tokenizer, tmp_path, monkeypatch):
    """A kill after the first language: the rerun reuses its part (routed counts and residual sums included)
    and ends equal to an uninterrupted run."""
    import transformers
    from test_stats import texts_for

    from lapeval.identification import stats as stats_mod

    model = transformers.AutoModelForCausalLM.from_pretrained(moe_dirs("qwen2_moe"), dtype=torch.float32).eval()
    langs = ["en", "fr"]
    texts_of = lambda lang: texts_for(langs.index(lang))
    cfg = stats_mod.CollectConfig(120, 3, 32, 512, 4)
    run = lambda out: stats_mod.collect(model, tiny_tokenizer, langs, texts_of, out, cfg, {"m": 1},
                                        progress=False, log=lambda m: None)
    clean = run(tmp_path / "clean.safetensors")
    real = stats_mod.collect_language

    def dies_on_fr(m, t, texts, c, sites=None, progress=None):
        texts = list(texts)
        if texts[0] == texts_for(1)[0]:
            raise KeyboardInterrupt
        return real(m, t, texts, c, sites, progress)

    monkeypatch.setattr(stats_mod, "collect_language", dies_on_fr)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run.safetensors")
    monkeypatch.setattr(stats_mod, "collect_language", real)
    resumed = run(tmp_path / "run.safetensors")
    assert clean.routed is not None and clean.resid_sum is not None
    for name in ("over_zero", "routed", "n_tokens", "resid_sum"):
        assert torch.equal(getattr(resumed, name), getattr(clean, name)), name
    for k in clean.act:
        assert torch.equal(resumed.act[k], clean.act[k])
    assert bool((clean.routed.sum(2) == 2 * clean.n_tokens.view(-1, 1)).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_site_names_the_block_of_router_and_experts(family):
    """``--site`` on a routed model names the block holding router and experts: the same sites as the structural
    search; a path to anything else (the experts' non-linearity, a missing module) is a one-line error."""
    from lapeval.moe import find_neuron_sites

    model = moe_model(family)
    found = find_expert_sites(model)
    routed = next(s for s in found if s.n_experts)
    block = routed.name.replace(f".{routed.layer}.", ".{layer}.", 1)
    named = find_neuron_sites(model, site=block)
    describe = lambda sites: [(s.layer, s.name, s.experts_name, s.router_name, s.act_name, s.n_experts, s.d_expert,  # noqa: E731
                               s.top_k, [(f.name, f.width) for f in s.shared]) for s in sites]
    assert describe(named) == describe(found)
    experts = routed.experts_name.replace(f".{routed.layer}.", ".{layer}.", 1)
    bad_experts = "has no module" if family == "deepseek_v3" else "no router beside them"  # its layer 0 is dense
    for pattern, words in ((experts, bad_experts), (block.replace("{layer}", "1"), "{layer}"),
                           (block + ".nothing", "has no module")):
        with pytest.raises(UnsupportedModelError) as e:
            find_neuron_sites(model, site=pattern)
        assert words in str(e.value) and "\n" not in str(e.value), pattern
